#!/usr/bin/env bash
# Interoperability, proven from outside: GPTQ checkpoints written by `hpcq export` (gptq and
# gptq_v2, symmetric and asymmetric, with and without act-order, 4, 8 and 3 bits, and one with
# per-module rules) loaded on the
# CPU by Hugging Face transformers (its GPTQ integration, gptqmodel's kernels) and by
# GPTQModel.load, their perplexity against `hpcq eval` of the .h5 result on the same windows
# (within 1e-3 relative); and the reverse: checkpoints written by GPTQModel itself read by
# `hpcq eval` (against transformers) and `hpcq compare`.
#
#   tools/interop-check.sh [--venv DIR] [--out DIR] [--windows K] [--only GLOB]
#
# --only GLOB: only the checkpoints whose name matches (e.g. 'w4-sym-*', 'rules-*').
#
# Installs its Python packages (pinned in tools/interop-requirements.txt, ~6 GB with torch)
# into a virtual environment (default ~/.cache/hpcq-interop-venv, kept for the next run).
# Needs the build (tools/build.sh). Prints a table (tools/interop_table.py); each cell is "ok"
# (within 1e-3), "refused" (the loader raised: its message is printed) or "WRONG" (loaded, other
# perplexity). Exit 1 when a cell differs from what README "Interoperability" records (EXPECT in
# tools/interop_table.py), so a loader that changes its behaviour is noticed; a known refusal
# that now loads is reported, not failed. transformers runs in float32, GPTQModel.load in
# float16 (its generic kernel refuses float32). About 20 minutes on 2 cores with the default 16
# windows (GPTQModel's float16 CPU kernels are slow), + 3 min to install the environment once.
# Not run in CI (time, and ~6 GB of wheels); its output is recorded in the README.
set -uo pipefail
cd "$(dirname "$0")/.."
VENV=${HQ_INTEROP_VENV:-$HOME/.cache/hpcq-interop-venv}
O=/tmp/hpcq-interop
K=16
ONLY='*'
while [ $# -gt 0 ]; do
  case "$1" in
  --venv) VENV=$2; shift 2 ;;
  --out) O=$2; shift 2 ;;
  --windows) K=$2; shift 2 ;;
  --only) ONLY=$2; shift 2 ;;
  -h | --help) sed -n '2,25p' "$0"; exit 0 ;;
  *) echo "interop-check: unknown option '$1' (see --help)" >&2; exit 2 ;;
  esac
done
R=$PWD; B=$R/build/hpcq; M=$R/tests/data/llama-sotu-5m; TOK=$M/wikitext2-test.i32
MPI=$(command -v mpirun || command -v mpiexec)
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_rmaps_base_oversubscribe=1
[ -x "$B" ] || { echo "interop-check: $B is missing; run tools/build.sh first" >&2; exit 2; }

setup_venv() {
  local want; want=$(sha256sum tools/interop-requirements.txt | cut -c1-16)
  [ -f "$VENV/.hpcq-req" ] && [ "$(cat "$VENV/.hpcq-req")" = "$want" ] && return 0
  echo "== installing the loaders into $VENV (tools/interop-requirements.txt)"
  rm -rf "$VENV" && python3 -m venv "$VENV" || return 1
  "$VENV/bin/pip" install -q --disable-pip-version-check -r tools/interop-requirements.txt || return 1
  # gptqmodel without its build-time requirements (maturin etc.: not needed to load or quantize on CPU)
  "$VENV/bin/pip" install -q --disable-pip-version-check --no-deps gptqmodel==7.7.0 || return 1
  echo "$want" > "$VENV/.hpcq-req"
}
setup_venv || { echo "interop-check: could not install the Python packages into $VENV" >&2; exit 2; }
PY="$VENV/bin/python"
rm -rf "$O" && mkdir -p "$O"

# ---- hpcq's side: quantize, export, eval ----
ppl_of() { "$B" eval --model "$1" --tokens "$TOK" --seqlen 256 --max-windows "$K" --json --quiet |
  sed -n 's/.*"perplexity":\([0-9.eE+-]*\).*/\1/p'; }
CKPTS=()
declare -A REF
for bits in 4 8 3; do
  for sym in asym sym; do
    for ao in 0 1; do
      n=w${bits}-${sym}-ao${ao}; f=()
      # shellcheck disable=SC2053
      [[ $n-gptq == $ONLY || $n-gptq_v2 == $ONLY ]] || continue
      [ $sym = sym ] && f+=(--sym); [ $ao = 1 ] && f+=(--act-order)
      "$MPI" -np 2 "$B" quantize --model "$M" --calib "$M/calib.i32" --out "$O/$n.h5" --quiet \
        --bits $bits --group-size 128 --nsamples 32 --seqlen 256 "${f[@]}" || exit 1
      p=$(ppl_of "$O/$n.h5")
      for fmt in gptq gptq_v2; do
        d=$O/$n-$fmt
        # shellcheck disable=SC2053
        [[ $n-$fmt == $ONLY ]] || continue
        if "$B" export "$O/$n.h5" --format gptq --checkpoint-format $fmt --out "$d" --quiet 2> "$d.err"; then
          CKPTS+=("$d"); REF[$d]=$p
        else
          echo "$(basename "$d"): hpcq export refused: $(head -c 200 "$d.err")"
        fi
      done
    done
  done
done
# per-module rules (quantization_config.dynamic): one 8-bit g32 linear, one skipped
d=$O/rules-w4-sym-gptq
# shellcheck disable=SC2053
[[ rules-w4-sym-gptq == $ONLY ]] && {
"$MPI" -np 2 "$B" quantize --model "$M" --calib "$M/calib.i32" --out "$O/rules.h5" --quiet --sym \
  --bits 4 --group-size 128 --nsamples 32 --seqlen 256 --rule 'model\.layers\.5\.mlp\.down_proj:bits=8,group_size=32' \
  --rule 'model\.layers\.0\.self_attn\.q_proj:skip=1' || exit 1
"$B" export "$O/rules.h5" --format gptq --out "$d" --quiet || exit 1
CKPTS+=("$d"); REF[$d]=$(ppl_of "$O/rules.h5"); }
# ---- GPTQModel's side: its own checkpoints, read by hpcq eval ----
for sym in asym sym; do
  d=$O/gptqmodel-w4-$sym; s=(); [ $sym = sym ] && s=(--sym)
  # shellcheck disable=SC2053
  [[ gptqmodel-w4-$sym == $ONLY ]] || continue
  # (in $O: GPTQModel writes a logs/ folder into the working directory)
  (cd "$O" && "$PY" "$R/tools/interop_check.py" --quantize "$M" "$d" --calib "$M/calib.i32" \
    --nsamples 32 --seqlen 256 --bits 4 "${s[@]}") > "$d.log" 2>&1 || { tail -5 "$d.log"; exit 1; }
  CKPTS+=("$d"); REF[$d]=$(ppl_of "$d")
done
[ ${#CKPTS[@]} -gt 0 ] || { echo "interop-check: no checkpoint matches --only '$ONLY'" >&2; exit 2; }
echo "== loading ${#CKPTS[@]} checkpoints with transformers and GPTQModel.load ($K windows of 256)"
(cd "$O" && "$PY" "$R/tools/interop_check.py" --tokens "$TOK" --seqlen 256 --windows "$K" "${CKPTS[@]}") \
  2> "$O/loaders.log" > "$O/loaders.jsonl" || { tail -20 "$O/loaders.log"; exit 1; }

for ck in "${CKPTS[@]}"; do printf '%s\t%s\n' "$ck" "${REF[$ck]}"; done > "$O/refs.tsv"
python3 tools/interop_table.py "$O/refs.tsv" "$O/loaders.jsonl"
