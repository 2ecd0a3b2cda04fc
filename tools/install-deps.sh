#!/usr/bin/env bash
# Install hpcq's build and test dependencies on Debian 12 (idempotent; needs root or sudo).
set -euo pipefail
PKGS=(build-essential pkgconf cmake openmpi-bin libopenmpi-dev libhdf5-openmpi-dev hdf5-tools
      libopenblas-dev liblapacke-dev libcjson-dev
      clang libclang-rt-14-dev)   # clang + libFuzzer: the safetensors header fuzz test
missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO=sudo
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
echo "dependencies: all installed"
