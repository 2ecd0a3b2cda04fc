#!/usr/bin/env bash
# Install hpcq's build and test dependencies on Debian 12 (idempotent; needs root or sudo).
set -euo pipefail
PKGS=(build-essential pkgconf cmake openmpi-bin libopenmpi-dev libhdf5-openmpi-dev hdf5-tools
      libopenblas-dev liblapacke-dev libcjson-dev
      clang libclang-rt-14-dev      # clang + libFuzzer: the safetensors header fuzz test
      slurm-wlm munge gnuplot-nox   # the real single-node Slurm tests; gnuplot for bench/scaling_report.sh
      python3-numpy)                # numpy-only reference loader of the export test
missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO=sudo
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  # no systemd: keep package scripts from starting the Slurm/munge daemons
  made_policy=0
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' | $SUDO tee /usr/sbin/policy-rc.d >/dev/null
    $SUDO chmod 755 /usr/sbin/policy-rc.d; made_policy=1
  fi
  $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" ||
    { [ "$made_policy" = 0 ] || $SUDO rm -f /usr/sbin/policy-rc.d; exit 1; }
  [ "$made_policy" = 0 ] || $SUDO rm -f /usr/sbin/policy-rc.d
fi
# Python used by tests must have numpy (the system python3-numpy serves /usr/bin/python3; a
# python3 first on PATH from elsewhere gets it from PyPI).
if ! python3 -c 'import numpy' 2>/dev/null; then
  python3 -m pip install -q numpy || { echo "cannot install numpy for $(command -v python3)"; exit 1; }
fi
echo "dependencies: all installed"
