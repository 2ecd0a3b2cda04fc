# Shared helpers of the shell tests (source it): pass/fail counting, perplexity, attributes.
#   ok MSG / bad MSG        count and print a result
#   finish NAME             print the summary; exit status 0 only without failures
#   ppl MODEL [eval args]   perplexity of MODEL on the first $PPL_WINDOWS (16) windows of
#                           WikiText-2 (5M model)
#   attr FILE LINEAR NAME   one attribute of /linears/LINEAR
#   hq_tmpdir NAME          a fresh work dir in $T, removed on exit
# BIN (hpcq), M (the bundled model folder) and MPIEXEC default to what ctest passes.
: "${BIN:=${HQ_BIN:-build/hpcq}}" "${M:=${HQ_TESTDATA:-tests/data}/llama-sotu-5m}" "${MPIEXEC:=mpiexec}"
hq_tmpdir() { T=$(mktemp -d "/tmp/hq_$1.XXXXXX"); trap 'rm -rf "$T"' EXIT; }
pass=0; fail=0
ok() { echo "ok: $*"; pass=$((pass + 1)); }
bad() { echo "FAIL: $*"; fail=$((fail + 1)); }
finish() { echo "$1: $pass passed, $fail failed"; [ "$fail" -eq 0 ]; }
ppl() { local m=$1; shift
  "$BIN" eval --model "$m" --tokens "$M/wikitext2-test.i32" --seqlen 256 --max-windows "${PPL_WINDOWS:-16}" --json "$@" 2>/dev/null |
    sed -n 's/.*"perplexity":\([0-9.eE+-]*\).*/\1/p'; }
attr() { h5dump -a "/linears/$2/$3" "$1" 2>/dev/null | sed -n 's/.*(0): *\([0-9.eE+-]*\).*/\1/p'; }
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_rmaps_base_oversubscribe=1
