#!/usr/bin/env bash
# One-time setup on Debian/Ubuntu: redis-server (and the tools the tests use: docker-compose to
# validate the compose file, promtool to check the Prometheus config, GNU time for bench-memory), pnpm,
# and dependencies.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v redis-server >/dev/null || need_apt+=(redis-server)
command -v docker-compose >/dev/null || need_apt+=(docker-compose)
command -v promtool >/dev/null || need_apt+=(prometheus)
[ -x /usr/bin/time ] || need_apt+=(time) # scripts/bench-memory.ts reads peak RSS through it (its smoke test)
if [ ${#need_apt[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
  # Debian's prometheus package may start its own service on :9090; pdserve's tests run their own
  # Prometheus. Stop only that packaged service, and only when this script just installed it (never
  # a process of the same name that something else runs on this host).
  if [[ " ${need_apt[*]} " == *" prometheus "* ]]; then
    if [ -d /run/systemd/system ]; then
      $SUDO systemctl disable --now prometheus.service 2>/dev/null || true
    elif [ -x /etc/init.d/prometheus ]; then
      $SUDO /etc/init.d/prometheus stop >/dev/null 2>&1 || true
    fi
  fi
fi

if ! command -v pnpm >/dev/null || ! pnpm --version | grep -q '^10\.'; then
  npm i -g pnpm@10.34.8 >/dev/null
fi
# onnxruntime-node's install script only downloads optional CUDA binaries; the CPU and WebGPU
# execution providers ship inside the package.
export ONNXRUNTIME_NODE_INSTALL=skip ONNXRUNTIME_NODE_INSTALL_CUDA=skip
pnpm install --frozen-lockfile
