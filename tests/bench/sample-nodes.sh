# Sourced by the memory scripts (clone-memory.sh, run-memory.sh): samples both nodes of the
# transfer benchmark.

# start_bench FILES DIR: runs the transfer benchmark's many-file run (one round, trees under
# DIR) in the background, from the repository's root: its output in $log, its process in
# $bench, and $samples for sample_nodes; both files go when the script exits.
start_bench() {
  log=$(mktemp) samples=$(mktemp)
  trap 'rm -f "$log" "$samples"' EXIT
  BENCH_FILES=$1 BENCH_ROUNDS=1 BENCH_DIRS=$2 cargo bench --bench transfer >"$log" 2>&1 &
  bench=$!
}

# VmRSS of process $1 in MiB (empty once it is gone).
rss() { awk '/^VmRSS/ { printf "%.0f", $2 / 1024 }' "/proc/$1/status" 2>/dev/null || true; }

# sample_nodes BENCH SAMPLES [DONE]: appends "time source-MiB receiver-MiB" to SAMPLES every
# 0.1 s while process BENCH runs, and returns early once the command DONE succeeds.
sample_nodes() {
  local bench=$1 samples=$2 done=${3:-false} source receiver
  while kill -0 "$bench" 2>/dev/null; do
    source=$(pgrep -f -- "--name bench-a" | head -1 || true)
    receiver=$(pgrep -f -- "--name bench-b" | head -1 || true)
    if [ -n "$receiver" ]; then
      echo "$(date +%s.%N) $(rss "$source") $(rss "$receiver")" >>"$samples"
    fi
    if "$done"; then
      return 0
    fi
    sleep 0.1
  done
}
