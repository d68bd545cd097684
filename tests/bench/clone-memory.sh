#!/usr/bin/env bash
# The resident memory of both nodes during one clone of the transfer benchmark's many-file
# tree: VmRSS sampled every 0.1 s, the receiver's split at its job's "verified; committing"
# log line (before: receiving, staging, fetching, verifying; after: the commit, which
# indexes the clone's files and takes its closing snapshot).
#
# Usage: tests/bench/clone-memory.sh FILES [DIR]   (DIR defaults to /dev/shm)
# Environment is passed on to the nodes (AIENV_STORE_CACHE_MIB, AIENV_TRANSFER_PLAN_WINDOW).
set -euo pipefail
files=${1:?usage: clone-memory.sh FILES [DIR]}
dir=${2:-/dev/shm}
cd "$(dirname "$0")/../.."
. tests/bench/sample-nodes.sh
start_bench "$files" "$dir"
cloned() { grep -qE '^1 ' "$log"; }
if sample_nodes "$bench" "$samples" cloned; then
  pkill -P "$bench" || true
  kill "$bench" 2>/dev/null || true
fi
wait "$bench" 2>/dev/null || true
pkill -f "aienv-bench" 2>/dev/null || true
for _ in $(seq 50); do pgrep -f "aienv-bench" >/dev/null || break; sleep 0.2; done
rm -rf "$dir"/aienv-bench-* 2>/dev/null || true
committing=$(sed 's/\x1b\[[0-9;]*m//g' "$log" | grep -m1 'verified; committing' | awk '{print $1}')
if [ -z "$committing" ]; then
  echo "the clone did not reach its commit; the benchmark said:" >&2
  tail -20 "$log" >&2
  exit 1
fi
at=$(date -d "$committing" +%s.%N)
awk -v at="$at" '
  { if ($1 < at) { if ($3 > before) before = $3 } else if ($3 > after) after = $3
    if ($2 > source) source = $2 }
  END { printf "receiver: %s MiB until the commit, %s MiB in it; source: %s MiB\n", before, after, source }
' "$samples"
grep -E '^round +cp|^1 ' "$log"
