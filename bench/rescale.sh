#!/usr/bin/env bash
# Rescale time with about 1 GB of state (part of `make bench`): how long a job processes
# nothing while its worker count changes, done as the operator does it for a rescale: every
# worker gets SIGTERM at once (each commits, checkpoints and exits), and the new count starts
# on empty state folders (new Pods), each restoring its partitions' last checkpoints from
# storage, exactly once (Kafka transactions, the new owner fences the old one).
#
# A 4-partition topic of payments (loaded once, kept for later runs) is read by 2 workers that
# key a 1-day tumbling window by payment id (every event a new key) until the whole topic is
# read and checkpointed: BENCH_RESCALE_EVENTS (default 13,000,000, about 1 GiB of RocksDB state).
# More input is produced, then the job goes 2 -> 4 and 4 -> 2 workers. Each step is timed from
# the SIGTERM to every new worker processing new input (its first record read), with the time
# until the last old worker exited and until every new one was ready.
# Env: BENCH_RESCALE_EVENTS, BENCH_RESCALE_STORAGE (default file://<temp dir>; an s3://
# location uses the stack's S3 server).
set -euo pipefail
source "$(dirname "$0")/../e2e/stack/lib.sh"
WORKER=${CARGO_TARGET_DIR:-$WEIR_CACHE/target}/release/weir-worker
[[ -x $WORKER ]] || die "$WORKER is missing; run make release"
port_open "$KAFKA_PORT" || die "Kafka is not running; make stack-up"
BROKERS=127.0.0.1:$KAFKA_PORT
EVENTS=${BENCH_RESCALE_EVENTS:-13000000}
MORE=40000
PARTITIONS=4
TOPIC=bench-rescale-payments-$EVENTS-p$PARTITIONS
WORK=$(mktemp -d -p "$WEIR_CACHE" rescale.XXXXXX)
RUN=$(date +%s)
declare -A PIDS=()
stop_all() {
  local p
  for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  PIDS=()
}
cleanup() {
  stop_all
  "$STACK_DIR/kafka.sh" topics --delete --topic "bench-rescale-out-$RUN" >/dev/null 2>&1 || true
  rm -rf "$WORK"
}
trap cleanup EXIT
# Interrupted or timed out: exit through the EXIT trap, so no gigabytes of state stay behind.
trap 'exit 130' INT
trap 'exit 143' TERM
STORAGE=${BENCH_RESCALE_STORAGE:-file://$WORK/checkpoints}

# load N SEED: N payments into the topic, keyed by card (a Weir job: datagen to Kafka).
load() {
  cat >"$WORK/load.yaml" <<YAML
metadata: {name: bench-rescale-load}
spec:
  pipeline:
    sources: {gen: {datagen: {kind: payments, count: $1, seed: $2, keys: 100000, startTime: 1795564800000, eventRate: 10000}}}
    streams: {keyed: {from: gen, keyBy: [card_id]}}
    sinks: {k: {from: keyed, kafka: {brokers: "$BROKERS", topic: $TOPIC, properties: {compression.type: lz4}}}}
YAML
  "$WORKER" run -f "$WORK/load.yaml" >>"$WORK/load.log" 2>&1 || { tail -20 "$WORK/load.log"; die "loading $TOPIC failed"; }
}
if ! "$STACK_DIR/kafka.sh" topics --describe --topic "$TOPIC" >/dev/null 2>&1; then
  log "loading $EVENTS payments into $TOPIC ($PARTITIONS partitions)"
  "$STACK_DIR/kafka.sh" topics --create --topic "$TOPIC" --partitions $PARTITIONS >/dev/null
  load "$EVENTS" 5 || { "$STACK_DIR/kafka.sh" topics --delete --topic "$TOPIC" >/dev/null 2>&1; exit 1; }
fi
"$STACK_DIR/kafka.sh" topics --create --topic "bench-rescale-out-$RUN" --partitions $PARTITIONS >/dev/null

# A fresh consumer group per run, read from the earliest offset; results (none fire within the
# run: the windows are a day long) go to Kafka exactly once.
cat >"$WORK/job.yaml" <<YAML
metadata: {name: bench-rescale-$RUN}
spec:
  epochInterval: 200ms
  checkpointing: {interval: 10s, storage: "$STORAGE", retained: 2}
  pipeline:
    sources:
      payments:
        kafka: {brokers: "$BROKERS", topic: $TOPIC, startFrom: earliest}
        schema: {id: string, card_id: string, merchant_id: string, amount: double, status: string, country: string, ts: timestamp}
        eventTime: {field: ts, maxOutOfOrderness: 5s}
    streams:
      by_payment:
        from: payments
        keyBy: [id]
        window: {tumbling: 1d}
        aggregate: {"n": "count(*)", total: "sum(amount)", merchant: "first(merchant_id)", last_status: "last(status)"}
    sinks:
      out: {from: by_payment, kafka: {brokers: "$BROKERS", topic: bench-rescale-out-$RUN}}
YAML

port() { echo $((PORT_BASE + $1)); }
PORT_BASE=$((20000 + RANDOM % 20000))
metric() { # ORDINAL NAME [LABEL="VALUE"] -> the sum of its samples (with that label), 0 when unanswered
  { curl -fsS "http://127.0.0.1:$(port "$1")/metrics" 2>/dev/null || true; } |
    awk -v m="$2" -v l="${3:-}" '{ n = $1; sub(/\{.*/, "", n) } n == m && index($1, l) {s += $2} END {printf "%.0f\n", s}'
}
# start N: N workers, each on a new, empty state folder (a new Pod).
GEN=0
start() {
  local i
  GEN=$((GEN + 1))
  for ((i = 0; i < $1; i++)); do
    WEIR_ORDINAL=$i WEIR_PARALLELISM=$1 WEIR_CONFIG=$WORK/job.yaml WEIR_STATE_DIR=$WORK/state-$GEN-$i \
      WEIR_ADMIN_ADDR=127.0.0.1:$(port "$i") "$WORKER" pod >>"$WORK/worker-$GEN-$i.log" 2>&1 &
    PIDS[$i]=$!
  done
}
alive() { # ORDINAL
  kill -0 "${PIDS[$1]}" 2>/dev/null || { tail -20 "$WORK/worker-$GEN-$1.log"; die "worker $1 stopped"; }
}
now_ms() { date +%s%3N; }
total() { # NAME [LABEL] -> over the running workers
  local i s=0
  for i in "${!PIDS[@]}"; do s=$((s + $(metric "$i" "$@"))); done
  echo $s
}

start 2
log "2 workers read $EVENTS payments (a key each), checkpointing every 10 s"
t0=$(now_ms)
while (($(total weir_records_in_total) < EVENTS)) || (($(total weir_consumer_lag) > 0)); do
  for i in "${!PIDS[@]}"; do alive "$i"; done
  sleep 2
done
read_s=$((($(now_ms) - t0) / 1000))
# A checkpoint of every partition after the input was read.
before=$(total weir_checkpoints_total 'outcome="completed"')
while (($(total weir_checkpoints_total 'outcome="completed"') < before + PARTITIONS)); do sleep 1; done
state_mb=$(($(total weir_state_size_bytes) / 1024 / 1024))
echo "== rescale with $state_mb MiB of state ($EVENTS events read by 2 workers in ${read_s} s, 1 key each), storage ${STORAGE%%://*}"

# rescale TO SEED: SIGTERM to every worker at once; once they exited, more input (produced
# while no worker runs, not timed: in production it keeps arriving) and TO workers on empty
# folders, timed until each processes that input.
rescale() {
  local to=$1 from=${#PIDS[@]} t0 exited ready i p
  t0=$(now_ms)
  for p in "${PIDS[@]}"; do kill -TERM "$p"; done
  for p in "${PIDS[@]}"; do wait "$p" || die "a worker failed to stop cleanly; see $WORK"; done
  exited=$(($(now_ms) - t0))
  PIDS=()
  load $MORE "$2"
  t0=$(now_ms)
  start "$to"
  # A new process counts records from 0: its first record read is processing again.
  declare -A readied=() processing=()
  ready=0
  while ((${#processing[@]} < to)); do
    for ((i = 0; i < to; i++)); do
      alive "$i"
      if [[ -z ${readied[$i]:-} ]] && curl -fsS "http://127.0.0.1:$(port "$i")/readyz" >/dev/null 2>&1; then
        readied[$i]=1
        ((${#readied[@]} == to)) && ready=$(($(now_ms) - t0))
      fi
      [[ -z ${processing[$i]:-} ]] && (($(metric "$i" weir_records_in_total) > 0)) && processing[$i]=1
    done
    sleep 0.02
  done
  awk -v f="$from" -v t="$to" -v e="$exited" -v r="$ready" -v p="$(($(now_ms) - t0))" 'BEGIN {
    printf "%d -> %d workers: no processing for %5.2f s (old workers exited in %5.2f s; new ones ready in %5.2f s, all processing again %5.2f s after their start)\n",
      f, t, (e + p) / 1000, e / 1000, r / 1000, p / 1000 }'
}
rescale 4 6
while (($(total weir_consumer_lag) > 0)); do sleep 1; done
rescale 2 7
