#!/usr/bin/env bash
# weir-workers.sh N WORKER MANIFEST STATE_DIR: runs a bounded job as N weir-worker processes
# (ordinals 0..N-1 of parallelism N, as the StatefulSet's Pods would), waits for all, and prints
# "processed R records in S s" for the whole job: from the earliest first record read to the
# last worker done (each worker reports its own time from its first record; its end is when it
# exits).
set -euo pipefail
n=$1 worker=$2 manifest=$3 state=$4
pids=()
for ((i = 0; i < n; i++)); do
  (
    out=$("$worker" pod --config "$manifest" --ordinal "$i" --parallelism "$n" --state-dir "$state/worker-$i" \
      --admin-addr 127.0.0.1:0 2>&1) || { echo "$out" >&2; exit 1; }
    end=$(date +%s.%N)
    line=$(grep -o 'processed [0-9]* records in [0-9.]* s' <<<"$out" | tail -1)
    echo "$end $line" >"$state/result-$i"
  ) &
  pids+=($!)
done
for p in "${pids[@]}"; do wait "$p"; done
cat "$state"/result-* | awk '
  { end = $1; recs += $3; secs = $6; s = end - secs
    if (NR == 1 || s < first) first = s
    if (NR == 1 || end > last) last = end }
  END { printf "weir-workers: processed %d records in %.3f s\n", recs, last - first }' >&2
