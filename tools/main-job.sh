#!/usr/bin/env bash
# The main job on the bundled 5M-parameter Llama, what hpcq is for, end to end (~1 min on 2
# cores): GPTQ W4 g128 on 2 MPI ranks into one HDF5 file (progress lines), hpcq inspect, RTN
# for comparison, FP / RTN / GPTQ perplexity on WikiText-2, hpcq export to a GPTQ checkpoint,
# and a table of it all. Files under $HQ_MAIN_OUT (default /tmp/hpcq-main-job).
set -euo pipefail
cd "$(dirname "$0")/.."
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_rmaps_base_oversubscribe=1
export OPENBLAS_NUM_THREADS=1 OMP_NUM_THREADS=1
B=./build/hpcq; M=tests/data/llama-sotu-5m; O=${HQ_MAIN_OUT:-/tmp/hpcq-main-job}
MPI=$(command -v mpirun || command -v mpiexec)
mkdir -p "$O"
W=400 # WikiText-2 windows of 256 tokens for the perplexities (102,000 predicted tokens)
say() { printf '\n== %s\n' "$*"; }

say "1. GPTQ W4 g128 on 2 ranks: $M -> $O/gptq.h5 (128 calibration windows of 256 tokens)"
"$MPI" -np 2 "$B" quantize --model "$M" --calib "$M/calib.i32" --out "$O/gptq.h5" --overwrite \
  --bits 4 --group-size 128 --nsamples 128 --seqlen 256
say "2. what the file holds (hpcq inspect, first rows and the totals)"
"$B" inspect "$O/gptq.h5" > "$O/inspect.txt"
head -8 "$O/inspect.txt" | cut -c1-150
echo "   ... $(grep -c '^model\.' "$O/inspect.txt") linears in all; full table in $O/inspect.txt"
tail -1 "$O/inspect.txt"
say "3. round-to-nearest at the same settings, for comparison"
"$MPI" -np 2 "$B" quantize --model "$M" --out "$O/rtn.h5" --overwrite --method rtn --bits 4 --group-size 128 --quiet
echo "wrote $O/rtn.h5"
say "4. perplexity on WikiText-2 (the first $W windows of 256 tokens; not seen in training)"
ppl() { "$B" eval --model "$1" --tokens "$M/wikitext2-test.i32" --seqlen 256 --max-windows $W --json 2>/dev/null |
  sed -n 's/.*"perplexity":\([0-9.eE+-]*\).*/\1/p' | awk '{ printf "%.3f", $1 }'; }
fp=$(ppl "$M"); rtn=$(ppl "$O/rtn.h5"); gptq=$(ppl "$O/gptq.h5")
echo "FP $fp, RTN $rtn, GPTQ $gptq"
say "5. export to a GPTQ checkpoint (the layout transformers / GPTQModel / vLLM read)"
"$B" export "$O/gptq.h5" --format gptq --checkpoint-format gptq_v2 --out "$O/gptq-checkpoint" --overwrite
ck=$(ppl "$O/gptq-checkpoint")
echo "hpcq eval of the checkpoint: $ck (the .h5: $gptq; the same codes, scales and zeros)"
rel() { awk -v a="$1" -v f="$fp" 'BEGIN { printf "%+.2f %%", 100 * (a / f - 1) }'; }
mb() { du -sm "$1" | cut -f1; }
say "summary"
cat <<EOF
| model | WikiText-2 perplexity ($W x 256) | vs FP | on disk |
|---|---|---|---|
| FP (bf16 safetensors)      | $fp | | $(mb "$M/model.safetensors") MB |
| RTN W4 g128                | $rtn | $(rel "$rtn") | $(mb "$O/rtn.h5") MB (.h5) |
| GPTQ W4 g128 (2 ranks)     | $gptq | $(rel "$gptq") | $(mb "$O/gptq.h5") MB (.h5) |
| the exported checkpoint    | $ck | $(rel "$ck") | $(mb "$O/gptq-checkpoint") MB (GPTQ safetensors) |

GPTQ should sit closer to FP than RTN. Next: README "Usage" (mpirun/srun, options),
jobs/ (Slurm batch scripts), docs/readme/ (how each part works).
EOF
