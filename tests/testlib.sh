# Shared helpers of the shell tests (source it): pass/fail counting, perplexity, attributes.
#   ok MSG / bad MSG        count and print a result
#   finish NAME             print the summary; exit status 0 only without failures
#   ppl MODEL [eval args]   perplexity of MODEL on the first $PPL_WINDOWS (16) windows of
#                           $PPL_SEQLEN (256) tokens of $PPL_TOKENS (WikiText-2 of the 5M
#                           model); eval's messages go to $PPL_ERR (/dev/null)
#   attr FILE LINEAR NAME   one attribute of /linears/LINEAR
#   within A B R            A > 0 and |A - B| / A <= R (numbers as awk reads them)
#   complete_result FILE    FILE is an hpcq result that hpcq inspect calls complete
#   term_caught PATTERN N   SIGTERM the N processes matching PATTERN once all have the handler
#   expect [--no-result FILE] [--no-file FILE] NAME STATUS PATTERN CMD...
#                           CMD (stdin /dev/null) exits with STATUS ("fail": any status but 0)
#                           within $EXPECT_TIMEOUT (120) s and its stderr matches the extended
#                           regexp PATTERN; its output stays in $T/out.txt and $T/err.txt. The
#                           FILE of --no-result / --no-file is removed first and must not be left
#                           as a complete hpcq result / must not be created at all.
#   expect_fail [options] NAME PATTERN CMD...   expect [options] NAME fail PATTERN CMD...
# BIN (hpcq), M (the bundled model folder) and MPIEXEC default to what ctest passes.
: "${BIN:=${HQ_BIN:-build/hpcq}}" "${M:=${HQ_TESTDATA:-tests/data}/llama-sotu-5m}" "${MPIEXEC:=mpiexec}"
hq_tmpdir() { T=$(mktemp -d "/tmp/hq_$1.XXXXXX"); trap 'rm -rf "$T"' EXIT; }
pass=0; fail=0
ok() { echo "ok: $*"; pass=$((pass + 1)); }
bad() { echo "FAIL: $*"; fail=$((fail + 1)); }
finish() { echo "$1: $pass passed, $fail failed"; [ "$fail" -eq 0 ]; }
ppl() { local m=$1; shift
  "$BIN" eval --model "$m" --tokens "${PPL_TOKENS:-$M/wikitext2-test.i32}" --seqlen "${PPL_SEQLEN:-256}" \
    --max-windows "${PPL_WINDOWS:-16}" --json "$@" 2>"${PPL_ERR:-/dev/null}" |
    sed -n 's/.*"perplexity":\([0-9.eE+-]*\).*/\1/p'; }
attr() { h5dump -a "/linears/$2/$3" "$1" 2>/dev/null | sed -n 's/.*(0): *\([0-9.eE+-]*\).*/\1/p'; }
within() { awk -v a="$1" -v b="$2" -v r="$3" 'BEGIN{d=(a-b)/a; if (d<0) d=-d; exit !(a>0 && d<=r)}'; }
# caught PID: the process has a handler for SIGTERM (bit 15 of SigCgt in /proc/PID/status)
caught() { local m; m=$(sed -n 's/^SigCgt:\s*//p' "/proc/$1/status" 2>/dev/null) && [ -n "$m" ] && (((16#$m >> 14) & 1)); }
# term_caught PATTERN N: SIGTERM the N processes whose command lines match PATTERN (pgrep -f) as
# soon as all N have a SIGTERM handler (they install it before creating their output), so a
# stop is requested at their first step however fast the machine
term_caught() {
  local ranks="" n p
  for _ in $(seq 1 3000); do
    ranks=$(pgrep -f "$1" | tr '\n' ' '); n=0
    for p in $ranks; do caught "$p" && n=$((n + 1)); done
    [ "$n" -ge "$2" ] && break; sleep 0.01
  done
  kill -TERM $ranks 2> /dev/null
}
complete_result() { [ -f "$1" ] && "$BIN" inspect "$1" 2>/dev/null | grep -q "(complete)"; }
expect() {
  local keep="" none="" name want pat rc
  while :; do
    case $1 in
      --no-result) keep=$2; rm -f "$keep"; shift 2 ;;
      --no-file) none=$2; rm -f "$none"; shift 2 ;;
      *) break ;;
    esac
  done
  name=$1 want=$2 pat=$3
  shift 3
  timeout "${EXPECT_TIMEOUT:-120}" "$@" >"$T/out.txt" 2>"$T/err.txt" </dev/null; rc=$?
  if [ -n "$keep" ] && complete_result "$keep"; then bad "$name: left a complete-looking $keep"; fi
  if [ -n "$none" ] && [ -e "$none" ]; then bad "$name: created $none"; fi
  if [ $rc -eq 124 ]; then bad "$name: hung (killed by timeout)"; return; fi
  if [ "$want" = fail ] && [ $rc -eq 0 ]; then bad "$name: exit 0, expected a failure"; return; fi
  if [ "$want" != fail ] && [ $rc -ne "$want" ]; then
    bad "$name: exit $rc, expected $want: $(head -c 300 "$T/err.txt")"; return
  fi
  if grep -qE -- "$pat" "$T/err.txt"; then ok "$name (exit $rc): $(grep -E -- "$pat" "$T/err.txt" | head -1 | cut -c1-160)"
  else bad "$name: message does not match /$pat/: $(head -c 300 "$T/err.txt")"; fi
}
expect_fail() {
  local o=()
  while [[ $1 == --no-* ]]; do o+=("$1" "$2"); shift 2; done
  expect ${o[@]+"${o[@]}"} "$1" fail "${@:2}"
}
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_rmaps_base_oversubscribe=1
