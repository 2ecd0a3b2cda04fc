#!/usr/bin/env bash
# Verify the bundled test data against the sha256 sums in tests/data/README.md.
set -euo pipefail
cd "$(dirname "$0")/../tests/data"
fail=0
while read -r dir file sum; do
  if ! echo "$sum  $dir/$file" | sha256sum -c --quiet - ; then fail=1; fi
done < <(awk '/^## /{d=$2; sub(/\/$/,"",d)} /sha256 `[0-9a-f]{64}`/{match($0,/`[^`]+`/); f=substr($0,RSTART+1,RLENGTH-2); match($0,/sha256 `[0-9a-f]+`/); s=substr($0,RSTART+8,64); print d, f, s}' README.md)
[ $fail -eq 0 ] && echo "test data: all sha256 sums match"
exit $fail
