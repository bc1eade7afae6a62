#!/bin/bash
# The whole suite N times in a row with `stress-ng --cpu 2` beside it (issue 14's flakiness check):
# each run's pass/fail counts and duration go to stdout and to $OUT (default stress-suite.log).
#   bash scripts/stress-suite.sh [N]      # needs stress-ng (apt-get install stress-ng)
set -uo pipefail
cd "$(dirname "$0")/.."
n=${1:-5}
out=${OUT:-stress-suite.log}
command -v stress-ng >/dev/null || { echo "stress-ng is not installed (apt-get install stress-ng)" >&2; exit 2; }
green=0
for i in $(seq 1 "$n"); do
  stress-ng --cpu 2 --timeout 3600s --quiet &
  stress=$!
  start=$(date +%s)
  CI=true pnpm -s test > "/tmp/stress-suite-run-$i.log" 2>&1
  rc=$?
  kill "$stress" 2>/dev/null; wait "$stress" 2>/dev/null
  secs=$(( $(date +%s) - start ))
  counts=$(grep -E '^ℹ (tests|pass|fail|skipped) ' "/tmp/stress-suite-run-$i.log" | sed 's/^ℹ //' | tr '\n' ' ')
  line="$(date -u +%FT%TZ) run $i/$n rc=$rc ${secs}s $counts"
  echo "$line" | tee -a "$out"
  if [ "$rc" -ne 0 ]; then
    grep -E '^\s*✖' "/tmp/stress-suite-run-$i.log" | head -20 | tee -a "$out"
    echo "stopped: run $i failed after $green green runs (log: /tmp/stress-suite-run-$i.log)" | tee -a "$out"
    exit 1
  fi
  green=$((green + 1))
done
echo "$green green runs in a row" | tee -a "$out"
