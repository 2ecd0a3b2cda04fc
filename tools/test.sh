#!/usr/bin/env bash
# Build (if needed) and run the whole test suite (ctest: unit, mpi, script, slurm, gpu labels;
# gpu tests report "skipped" on machines without a GPU).
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/check-data.sh
bash tools/build.sh
ctest --test-dir build --output-on-failure -j2 "$@"
