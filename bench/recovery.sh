#!/usr/bin/env bash
# Recovery time after SIGKILL with about 1 GB of state (part of `make bench`).
#
# A worker builds keyed state from datagen payments (a 1-day tumbling window per payment id, so
# every event adds a key) with a checkpoint every 10 s, until its RocksDB state reaches
# BENCH_RECOVERY_STATE_MB (default 1024) and a checkpoint holds it. Then it is killed with
# SIGKILL and started again, twice:
#   local  - the same state folder (a container restarted in its Pod): RocksDB reopens it;
#   remote - an empty state folder (a new Pod or node): the checkpoint is downloaded first.
# Recovery time is from the restart to the worker processing new input again (its records-in
# counter passing the count it restored), with the time to readiness beside it.
# Env: BENCH_RECOVERY_STATE_MB, BENCH_RECOVERY_STORAGE (default file://<temp dir>; an s3://
# location uses the stack's S3 server).
set -euo pipefail
source "$(dirname "$0")/../e2e/stack/lib.sh"
WORKER=${CARGO_TARGET_DIR:-$WEIR_CACHE/target}/release/weir-worker
[[ -x $WORKER ]] || die "$WORKER is missing; run make release"
STATE_MB=${BENCH_RECOVERY_STATE_MB:-1024}
WORK=$(mktemp -d -p "$WEIR_CACHE" recovery.XXXXXX)
PORT=$((20000 + RANDOM % 20000))
pid=
cleanup() {
  # `|| true`: under `set -e` a killed worker's status (137) would become the script's.
  if [[ -n $pid ]]; then
    kill -9 "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  fi
  rm -rf "$WORK"
}
trap cleanup EXIT
# Interrupted or timed out: exit through the EXIT trap, so no gigabytes of state stay behind.
trap 'exit 130' INT
trap 'exit 143' TERM
STORAGE=${BENCH_RECOVERY_STORAGE:-file://$WORK/checkpoints}

cat >"$WORK/job.yaml" <<YAML
metadata: {name: bench-recovery}
spec:
  checkpointing: {interval: 10s, storage: "$STORAGE", retained: 2}
  pipeline:
    sources:
      payments:
        datagen: {kind: payments, seed: 5, keys: 100000, startTime: 1795564800000, eventRate: 10000}
        eventTime: {field: ts, maxOutOfOrderness: 5s}
    streams:
      by_payment:
        from: payments
        keyBy: [id]
        window: {tumbling: 1d}
        aggregate: {"n": "count(*)", total: "sum(amount)", merchant: "first(merchant_id)", last_status: "last(status)"}
    sinks:
      out: {from: by_payment, file: {path: $WORK/out.jsonl}}
YAML

metric() { # NAME [LABEL="VALUE"] -> the sum of its samples (with that label), 0 when unanswered
  { curl -fsS "http://127.0.0.1:$PORT/metrics" 2>/dev/null || true; } |
    awk -v m="$1" -v l="${2:-}" '{ n = $1; sub(/\{.*/, "", n) } n == m && index($1, l) {s += $2} END {printf "%.0f\n", s}'
}
start() {
  "$WORKER" run -f "$WORK/job.yaml" --state-dir "$WORK/state" --admin-addr "127.0.0.1:$PORT" \
    --max-cached-keys 100000 >>"$WORK/worker.log" 2>&1 &
  pid=$!
}
now_ms() { date +%s%3N; }

start
log "building ${STATE_MB} MiB of state (a key per payment), checkpointing every 10 s"
while :; do
  size=$(metric weir_state_size_bytes)
  ((size >= STATE_MB * 1024 * 1024)) && break
  kill -0 "$pid" 2>/dev/null || { tail -20 "$WORK/worker.log"; die "the worker stopped"; }
  sleep 2
done
# A checkpoint taken after the state reached the size.
done_before=$(metric weir_checkpoints_total 'outcome="completed"')
while (($(metric weir_checkpoints_total 'outcome="completed"') <= done_before)); do sleep 1; done
records=$(metric weir_records_in_total)
state_mb=$(($(metric weir_state_size_bytes) / 1024 / 1024))
stored_mb=$(du -sm "$WORK/checkpoints" 2>/dev/null | cut -f1 || echo "?")
echo "== recovery after SIGKILL: $state_mb MiB of state ($records events, 1 key each), checkpoint $stored_mb MiB in storage"

recover() { # LABEL
  kill -9 "$pid"
  wait "$pid" 2>/dev/null || true
  [[ $1 == remote ]] && rm -rf "$WORK/state"
  local t0 ready=0 t1 resumed_from
  t0=$(now_ms)
  start
  until curl -fsS "http://127.0.0.1:$PORT/readyz" >/dev/null 2>&1; do
    kill -0 "$pid" 2>/dev/null || { tail -20 "$WORK/worker.log"; die "the worker did not recover"; }
    sleep 0.05
  done
  ready=$(($(now_ms) - t0))
  # Processing again: the counter moves past what the restored positions account for.
  resumed_from=$(metric weir_records_in_total)
  while (($(metric weir_records_in_total) <= resumed_from)); do sleep 0.02; done
  t1=$(($(now_ms) - t0))
  awk -v l="$1" -v r="$ready" -v p="$t1" 'BEGIN {printf "%-8s ready in %6.2f s, processing again in %6.2f s\n", l, r / 1000, p / 1000}'
}
recover local
# Let a checkpoint complete before the next kill (the remote run downloads it).
c=$(metric weir_checkpoints_total 'outcome="completed"')
while (($(metric weir_checkpoints_total 'outcome="completed"') <= c)); do
  kill -0 "$pid" 2>/dev/null || die "the worker stopped before its next checkpoint; see $WORK/worker.log"
  sleep 1
done
recover remote
