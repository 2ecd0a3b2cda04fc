#!/usr/bin/env bash
# Build (if needed) and run the whole test suite (ctest: unit, mpi, script, slurm, gpu labels;
# gpu tests report "skipped" on machines without a GPU).
#
#   tools/test.sh [ctest args]             the normal build in ./build
#   tools/test.sh --sanitize [ctest args]  the same suite built with AddressSanitizer and
#                                          UndefinedBehaviorSanitizer in ./build-asan (CI runs
#                                          both; any sanitizer report fails its test)
#
# Under the sanitizers (RelWithDebInfo, -fno-sanitize-recover=undefined: UB aborts):
#  - LeakSanitizer runs for the unit tests only. Every other test starts MPI, and Open MPI's
#    components are dlopen'ed and unloaded again in MPI_Finalize: what they allocate and keep
#    until exit is reported as leaks of an "<unknown module>" that no suppression can match, so
#    those tests run with detect_leaks=0 (heap overflows, use-after-free and UB still abort).
#  - fuzz_safetensors is left out: it is the same clang libFuzzer binary, built with
#    -fsanitize=fuzzer,address,undefined, in both builds; the normal pass already runs it.
#  - test_quality (README numbers: exact arithmetic of the normal build's flags) and
#    test_repro (the same script as test_repro_haswell, which runs, under the machine's
#    default OpenBLAS kernels, slower here) are left out; the byte-flip loop runs 80 + 12
#    variants instead of 400 + 40 (CI's time limit: the sanitizers make hpcq ~3x slower).
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/check-data.sh
if [ "${1:-}" != --sanitize ]; then
  bash tools/build.sh
  ctest --test-dir build --output-on-failure -j2 "$@"
  exit
fi
shift
B=build-asan
mkdir -p "$B"
cmake -S . -B "$B" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DHQ_CUDA=OFF -DHQ_WERROR=ON \
  "-DCMAKE_C_FLAGS=-fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined" \
  >"$B/build.log" 2>&1 || { cat "$B/build.log"; exit 1; }
cmake --build "$B" -j"$(nproc)" >>"$B/build.log" 2>&1 || { tail -60 "$B/build.log"; exit 1; }
echo "built: $B/hpcq with -fsanitize=address,undefined"
export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
rc=0
ASAN_OPTIONS=detect_leaks=1 ctest --test-dir "$B" --output-on-failure -j2 -L unit "$@" || rc=$?
HQ_DAMAGE_VARIANTS=80 HQ_DAMAGE_RESUME=12 ASAN_OPTIONS=detect_leaks=0 \
  ctest --test-dir "$B" --output-on-failure -j2 -LE unit \
  -E '^(fuzz_safetensors|test_quality|test_repro)$' "$@" || rc=$?
exit "$rc"
