#!/usr/bin/env bash
# bench/scaling_report.sh on a hand-made CSV whose answers are worked out by hand below:
# medians of repeated runs, speedup/efficiency against the smallest rank count, weak-scaling
# pairing by nsamples per rank, failed rows ignored, a PNG written.
set -euo pipefail
command -v gnuplot >/dev/null || { echo "SKIPPED: gnuplot not installed (Debian: gnuplot-nox)"; exit 77; }
tmp=$(mktemp -d /tmp/hq-scalerep.XXXXXX)
trap 'rm -rf "$tmp"' EXIT
H=job,array_index,date,host,ranks,nodes,tasks_per_node,nsamples,seqlen,method,bits,group_size,wall_s,seconds,t_forward,t_hessian,t_allreduce,t_cholesky,t_gptq,t_stats,t_gather,t_write,peak_rss_mb_per_rank,perplexity,status
cat >"$tmp/s.csv" <<CSV
$H
1,0,d,h,1,1,4,16,128,gptq,4,128,5,4.0,1,1,0,0.3,0.1,0.1,0,0.5,110.0,40.1,ok
1,1,d,h,2,1,4,16,128,gptq,4,128,3,2.9,.5,.6,.2,.3,.1,.1,.1,.5,100.0,40.2,ok
1,1,d,h,2,1,4,16,128,gptq,4,128,3,2.5,.5,.6,.2,.3,.1,.1,.1,.5,104.0,40.2,ok
1,1,d,h,2,1,4,16,128,gptq,4,128,3,2.7,.5,.6,.2,.3,.1,.1,.1,.5,101.0,40.2,ok
1,2,d,h,4,1,4,16,128,gptq,4,128,3,1.6,.5,.6,.2,.3,.1,.1,.1,.5,90.0,,ok
1,3,d,h,1,1,4,32,128,gptq,4,128,9,8.0,2,2,0,.3,.1,.1,0,.5,120.0,,ok
1,4,d,h,2,1,4,32,128,gptq,4,128,5,4.0,1,1,.2,.3,.1,.1,.1,.5,110.0,,ok
1,4,d,h,2,1,4,32,128,gptq,4,128,5,5.0,1,1,.2,.3,.1,.1,.1,.5,110.0,,ok
1,5,d,h,8,2,4,32,128,gptq,4,128,5,,,,,,,,,,,,failed(1)
CSV
bash "$HQ_SRC/bench/scaling_report.sh" "$tmp/s.csv" "$tmp/out" >/dev/null
md=$tmp/out/scaling.md
has_line() { grep -qF -- "$1" "$md" || { cat "$md"; echo "FAIL: missing line: $1"; exit 1; }; }
# nsamples 16: T(1)=4.0; T(2)=median(2.5,2.7,2.9)=2.7 -> 1.48x, 74 %; T(4)=1.6 -> 2.50x, 62 %
has_line "| 1 | 1 | 1 | 4.00 | 1.00x | 100 % |"
has_line "| 2 | 1 | 3 | 2.70 | 1.48x | 74 % | 0.50 | 0.60 | 0.20 | 0.30 | 0.10 | 0.10 | 0.10 | 0.50 | 104.0 | 40.200 |"
has_line "| 4 | 1 | 1 | 1.60 | 2.50x | 62 % |"
# nsamples 32: T(1)=8.0; T(2)=mean(4.0,5.0)=4.5 (even count) -> 1.78x, 89 %; the 8-rank row failed
has_line "| 2 | 1 | 2 | 4.50 | 1.78x | 89 % |"
grep -q '^| 8 |' "$md" && { echo "FAIL: failed row used"; exit 1; }
# weak, 16 per rank: 1x16 (4.0) -> 2x32 (4.5): 89 %
has_line "nsamples per rank = 16 "
has_line "| 2 | 1 | 2 | 4.50 | 0.89x | 89 % |"
# 8 per rank: only 2x16 (no 4x32 run) -> no weak table for it
grep -q "nsamples per rank = 8 " "$md" && { echo "FAIL: weak table without a pair"; exit 1; }
[ "$(head -c 8 "$tmp/out/scaling.png" | od -An -tx1 | tr -d ' \n')" = 89504e470d0a1a0a ] || { echo "FAIL: no PNG"; exit 1; }
# A CSV without successful rows is an error, not an empty report.
echo "$H" >"$tmp/empty.csv"
if bash "$HQ_SRC/bench/scaling_report.sh" "$tmp/empty.csv" "$tmp/o2" 2>/dev/null; then echo "FAIL: empty CSV accepted"; exit 1; fi
echo "PASS"
