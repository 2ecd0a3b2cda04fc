#!/usr/bin/env bash
# Strong/weak-scaling tables (markdown) and a plot (PNG) from the CSV that jobs/scaling.sbatch
# appends to. Needs only awk, sort and gnuplot (Debian: gnuplot-nox).
#
#   bench/scaling_report.sh scaling.csv [OUTDIR]     -> OUTDIR/scaling.md, OUTDIR/scaling.png
#
# Rows with status "ok" are grouped by (nsamples, ranks); repeated runs of a group are reduced to
# their median end-to-end time (hpcq's own "seconds"; wall_s adds the launch). Strong scaling:
# per nsamples, speedup T(R0)/T(R) and efficiency speedup/(R/R0) against the smallest rank count
# R0 of the group. Weak scaling: groups with the same nsamples per rank, efficiency T(R0)/T(R).
set -euo pipefail

csv=${1:?usage: scaling_report.sh scaling.csv [OUTDIR]}
outdir=${2:-$(dirname "$csv")}
[ -s "$csv" ] || { echo "scaling_report: $csv is missing or empty" >&2; exit 1; }
mkdir -p "$outdir"
md=$outdir/scaling.md
png=$outdir/scaling.png
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# 1. ok rows -> "nsamples ranks seconds nodes t_forward ... t_write rss ppl" (by column name).
awk -F, '
  NR == 1 { for (i = 1; i <= NF; i++) c[$i] = i
            split("nsamples ranks seconds nodes t_forward t_hessian t_allreduce t_cholesky t_gptq t_stats t_gather t_write peak_rss_mb_per_rank perplexity status", need, " ")
            for (k in need) if (!(need[k] in c)) { print "scaling_report: column " need[k] " missing" > "/dev/stderr"; exit 2 }
            next }
  $c["status"] == "ok" && $c["seconds"] != "" {
    printf "%s %s %s %s", $c["nsamples"], $c["ranks"], $c["seconds"], $c["nodes"]
    n = split("t_forward t_hessian t_allreduce t_cholesky t_gptq t_stats t_gather t_write peak_rss_mb_per_rank perplexity", f, " ")
    for (k = 1; k <= n; k++) printf " %s", ($c[f[k]] == "" ? "-" : $c[f[k]])
    printf "\n" }' "$csv" | sort -k1,1n -k2,2n -k3,3g >"$tmp/rows"
[ -s "$tmp/rows" ] || { echo "scaling_report: no successful runs in $csv" >&2; exit 1; }

# 2. median per (nsamples, ranks): the middle row of the time-sorted group (mean of the two
#    middle times for an even count; phases from the lower middle row); max RSS of the group.
awk '
  function flush(   m, t) {
    if (!n) return
    m = int((n + 1) / 2); t = (n % 2) ? T[m] : (T[m] + T[m + 1]) / 2
    print key, t, n, L[m], rss
  }
  { k = $1 " " $2
    if (k != key) { flush(); key = k; n = 0; rss = "-" }
    n++; T[n] = $3
    line = $4; for (i = 5; i <= 13; i++) line = line " " $i; line = line " " $14; L[n] = line
    if ($13 != "-" && (rss == "-" || $13 + 0 > rss + 0)) rss = $13 }
  END { flush() }' "$tmp/rows" >"$tmp/agg"
# agg: ns ranks t_med nruns nodes fwd hess allred chol gptq stats gather write rss_row ppl rss_max

fmt_table() { # stdin: agg lines of one group, in rank order; $1 = strong|weak
  awk -v mode="$1" '
    NR == 1 { r0 = $2; t0 = $3 }
    { sp = t0 / $3; eff = (mode == "strong") ? sp / ($2 / r0) : t0 / $3
      printf "| %d | %d | %d | %.2f | %.2fx | %.0f %% |", $2, $5, $4, $3, sp, 100 * eff
      for (i = 6; i <= 13; i++) printf " %s |", ($i == "-" ? "-" : sprintf("%.2f", $i))
      printf " %s | %s |\n", $16, ($15 == "-" ? "-" : sprintf("%.3f", $15)) }'
}
header='| ranks | nodes | runs | time (s) | speedup | efficiency | forward | hessian | allreduce | cholesky | gptq | stats | gather | write | peak RSS/rank (MB) | perplexity |
|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|'

{
  echo "# hpcq scaling report"
  echo
  echo "From \`$(basename "$csv")\` ($(wc -l <"$tmp/rows") successful runs; $(($(wc -l <"$csv") - 1)) rows). Time = median end-to-end"
  echo "seconds reported by hpcq (phase columns: seconds of the median run, max over ranks)."
  echo
  echo "## Strong scaling (fixed calibration set)"
  for ns in $(awk '{print $1}' "$tmp/agg" | sort -un); do
    echo
    echo "nsamples = $ns (speedup and efficiency against the smallest rank count)"
    echo
    echo "$header"
    awk -v ns="$ns" '$1 == ns' "$tmp/agg" | fmt_table strong
  done
  echo
  echo "## Weak scaling (fixed calibration windows per rank)"
  awk '$1 % $2 == 0 { print $1 / $2, $0 }' "$tmp/agg" | sort -k1,1n -k3,3n >"$tmp/weak"
  found=0
  for w in $(awk '{print $1}' "$tmp/weak" | sort -un); do
    [ "$(awk -v w="$w" '$1 == w' "$tmp/weak" | wc -l)" -ge 2 ] || continue
    found=1
    echo
    echo "nsamples per rank = $w (efficiency = T(smallest) / T(ranks))"
    echo
    echo "$header"
    awk -v w="$w" '$1 == w { $1 = ""; sub(/^ /, ""); print }' "$tmp/weak" | fmt_table weak
  done
  [ "$found" = 1 ] || { echo; echo "No weak-scaling pairs: use nsamples proportional to ranks (e.g. RANKS=\"1 2\", NSAMPLES=\"64 128\")."; }
} >"$md"

# 3. plot: time vs ranks (with ideal strong scaling) and strong-scaling efficiency.
awk '
  $1 != ns { if (NR > 1) printf "\n\n"; ns = $1; r0 = $2; t0 = $3; printf "# nsamples %s\n", ns }
  { printf "%s %s %s %s\n", $2, $3, t0 * r0 / $2, 100 * (t0 / $3) / ($2 / r0) }' "$tmp/agg" >"$tmp/plot.dat"
nblocks=$(awk '{print $1}' "$tmp/agg" | sort -u | wc -l)
titles=$(awk '{print $1}' "$tmp/agg" | sort -un | tr '\n' ' ')
rmax=$(awk 'BEGIN { m = 1 } $2 > m { m = $2 } END { print m }' "$tmp/agg")
term="pngcairo size 1100,450 font ',10'"
gnuplot -e 'set terminal' 2>&1 | grep -q pngcairo || term="png size 1100,450"
gnuplot <<EOF
set terminal $term
set output '$png'
set multiplot layout 1,2 title 'hpcq scaling ($(basename "$csv"))'
set grid
set key top right
set logscale xy 2
set xrange [0.8:$rmax * 1.25]
set xlabel 'MPI ranks'
set ylabel 'end-to-end time (s)'
set title 'time (solid) vs ideal (dashed)'
titles = '$titles'
plot for [i=0:$nblocks-1] '$tmp/plot.dat' index i using 1:2 with linespoints lw 2 pt 7 lc i+1 title 'nsamples '.word(titles, i+1), \
     for [i=0:$nblocks-1] '$tmp/plot.dat' index i using 1:3 with lines dt 2 lc i+1 notitle
unset logscale y
set yrange [0:110]
set ylabel 'strong-scaling efficiency (%)'
set title 'efficiency vs smallest rank count'
plot for [i=0:$nblocks-1] '$tmp/plot.dat' index i using 1:4 with linespoints lw 2 pt 7 lc i+1 title 'nsamples '.word(titles, i+1)
unset multiplot
EOF
echo "scaling_report: wrote $md and $png"
