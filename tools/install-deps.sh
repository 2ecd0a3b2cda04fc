#!/usr/bin/env bash
# Install hpcq's build and test dependencies on Debian 12 (idempotent; needs root or sudo).
set -euo pipefail
PKGS=(build-essential pkgconf cmake openmpi-bin libopenmpi-dev libhdf5-openmpi-dev hdf5-tools
      libopenblas-dev liblapacke-dev libcjson-dev
      clang libclang-rt-14-dev      # clang + libFuzzer: the safetensors header fuzz test
      slurm-wlm munge gnuplot-nox   # the real Slurm tests; gnuplot for bench/scaling_report.sh
      iproute2 util-linux           # ip, nsenter, unshare: the two-node Slurm test's namespaces
      python3-numpy python3-h5py)   # numpy-only reference loader of the export test; h5py
                                    # doctors result files in tests/test_h5check.sh
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
# Python used by tests must have numpy and h5py (the system packages serve /usr/bin/python3; a
# python3 first on PATH from elsewhere gets them from PyPI).
# tools/hpcq_tokenize.py (calibration tokens from text) needs the tokenizer libraries and, for
# Parquet datasets, pyarrow.
for mod in numpy h5py tokenizers sentencepiece pyarrow; do
  if ! python3 -c "import $mod" 2>/dev/null; then
    # Debian's own python3 refuses pip installs (PEP 668) unless told
    python3 -m pip install -q "$mod" 2>/dev/null || python3 -m pip install -q --break-system-packages "$mod" ||
      { echo "cannot install $mod for $(command -v python3)"; exit 1; }
  fi
done
echo "dependencies: all installed"
