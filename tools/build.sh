#!/usr/bin/env bash
# Configure and build hpcq into ./build (CUDA backend too when nvcc is found).
set -euo pipefail
cd "$(dirname "$0")/.."
cmake -S . -B build -DHQ_WERROR=ON "$@" > build.log 2>&1 || { cat build.log; exit 1; }
cmake --build build -j"$(nproc)" >> build.log 2>&1 || { tail -60 build.log; exit 1; }
echo "built: build/hpcq ($(grep -o 'CUDA backend [A-Z]*' build.log | head -1))"
