#!/usr/bin/env bash
# The main job on the bundled 5M-parameter model.
set -euo pipefail
cd "$(dirname "$0")/.."
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
./build/hpcq layer --model tests/data/llama-sotu-5m --calib tests/data/llama-sotu-5m/calib.i32 --block 0 --linear mlp.down_proj
