#!/usr/bin/env bash
# The resident memory of both nodes over the transfer benchmark's whole many-file run
# (first snapshot, clone, sync after 1 %, no-change sync): VmRSS sampled every 0.1 s, each
# node's peak printed with the phase it fell in (the clone, or the sync and after), beside
# the benchmark's own lines for the clone and the sync.
#
# Usage: tests/bench/run-memory.sh FILES [DIR]   (DIR defaults to /dev/shm)
# Environment is passed on (BENCH_LOCAL_EDIT=1: the clone keeps a change of its own through
# the sync; AIENV_STORE_CACHE_MIB).
set -euo pipefail
files=${1:?usage: run-memory.sh FILES [DIR]}
dir=${2:-/dev/shm}
cd "$(dirname "$0")/../.."
. tests/bench/sample-nodes.sh
start_bench "$files" "$dir"
sample_nodes "$bench" "$samples"
wait "$bench" || { tail -20 "$log" >&2; exit 1; }
clean=$(sed 's/\x1b\[[0-9;]*m//g' "$log")
# The sync starts when the clone's row is printed: the first "transfer phases" line is the
# clone's, the second the sync's.
cloned=$(grep -m1 'transfer phases' <<<"$clean" | awk '{print $1}')
at=$(date -d "$cloned" +%s.%N)
awk -v at="$at" '
  { if ($1 < at) { if ($3 > rc) rc = $3; if ($2 > sc) sc = $2 }
    else { if ($3 > rs) rs = $3; if ($2 > ss) ss = $2 } }
  END { printf "receiver: %s MiB up to the end of the clone, %s MiB after (sync and no-change sync)\n", rc, rs
        printf "source: %s MiB, %s MiB\n", sc, ss }
' "$samples"
grep -E 'transfer phases|^round|^1 |aienv sync|no-change|peak resident' <<<"$clean" | cut -c1-240
