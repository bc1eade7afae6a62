#!/usr/bin/env bash
# Optional: gives ONNX Runtime's WebGPU execution provider a (software) adapter on a machine without a
# GPU, so packages/engine/test/webgpu.test.ts runs instead of skipping. Installs Mesa's lavapipe
# Vulkan driver (mesa-vulkan-drivers + libvulkan1) from Debian bookworm-backports (Mesa 25; bookworm's
# own Mesa 22 is too old for Dawn). It runs on the CPU and is slow: for correctness checks only.
# Idempotent: adds the bookworm-backports suite only when missing, installs only what is missing.
set -euo pipefail
start=$(date +%s)
SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
export DEBIAN_FRONTEND=noninteractive NEEDRESTART_SUSPEND=1 NEEDRESTART_MODE=a

if ! grep -Eq '^ID=debian' /etc/os-release || ! grep -Eq '^VERSION_CODENAME=bookworm' /etc/os-release; then
  echo "install-webgpu: this script targets Debian 12 (bookworm); install Mesa >= 24 lavapipe (mesa-vulkan-drivers) and libvulkan1 another way" >&2
  exit 1
fi

have_backports() {
  grep -rqsE '(^deb .*[[:space:]]bookworm-backports([[:space:]]|$))|(^Suites:.*[[:space:]]bookworm-backports([[:space:]]|$))' \
    /etc/apt/sources.list /etc/apt/sources.list.d/
}

# Installed already (lavapipe from backports, i.e. Mesa >= 24)? Then there is nothing to do.
mesa_version=$(dpkg-query -W -f='${Status} ${Version}\n' mesa-vulkan-drivers 2>/dev/null | awk '/install ok installed/ {print $4}' || true)
if [ -n "$mesa_version" ] && dpkg --compare-versions "$mesa_version" ge 24 \
  && dpkg-query -W -f='${Status}\n' libvulkan1 2>/dev/null | grep -q 'install ok installed'; then
  echo "install-webgpu: mesa-vulkan-drivers $mesa_version and libvulkan1 already installed ($(( $(date +%s) - start ))s)"
  exit 0
fi

if ! have_backports; then
  # Same mirror as the machine's existing Debian source.
  mirror=$(grep -rhsE '^URIs:[[:space:]]*[^[:space:]]+/debian/?$' /etc/apt/sources.list.d/ | head -n1 | awk '{print $2}')
  [ -n "$mirror" ] || mirror=$(grep -rhsE '^deb[[:space:]]+[^[:space:]]+/debian/?[[:space:]]+bookworm[[:space:]]' /etc/apt/sources.list /etc/apt/sources.list.d/ | head -n1 | awk '{print $2}')
  [ -n "$mirror" ] || mirror=http://deb.debian.org/debian
  echo "install-webgpu: adding bookworm-backports from $mirror"
  echo "deb $mirror bookworm-backports main" | $SUDO tee /etc/apt/sources.list.d/bookworm-backports.list >/dev/null
fi

$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends -t bookworm-backports mesa-vulkan-drivers libvulkan1 >/dev/null
echo "install-webgpu: installed mesa-vulkan-drivers $(dpkg-query -W -f='${Version}' mesa-vulkan-drivers) and libvulkan1 $(dpkg-query -W -f='${Version}' libvulkan1) in $(( $(date +%s) - start ))s"
