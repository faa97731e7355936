#!/usr/bin/env bash
# `make demo`: on the running local stack, loads 100,000 generated payments into Kafka, runs the
# per-card 1-minute window job from examples/payments-kafka.yaml, and prints its results.
set -euo pipefail
source "$(dirname "$0")/stack/lib.sh"
KAFKA=$STACK_DIR/kafka.sh
WORKER=${CARGO_TARGET_DIR:-$WEIR_CACHE/target}/debug/weir-worker
[[ -x $WORKER ]] || die "$WORKER is missing; run make build"

# Every demo starts afresh: new topics and a new state folder.
for t in payments:6 payments-per-card-minute:6 payments-corrections:1 payments-dead-letters:1; do
  "$KAFKA" topics --delete --if-exists --topic "${t%%:*}" >/dev/null 2>&1 || true
  for _ in $(seq 1 30); do
    "$KAFKA" topics --create --if-not-exists --topic "${t%%:*}" --partitions "${t##*:}" >/dev/null 2>&1 && break
    sleep 1 # the deletion finishes in the background
  done
done
STATE=$(mktemp -d)

log "loading 100,000 payments into topic payments (examples/payments-loader.yaml)"
"$WORKER" run -f "$REPO_DIR/examples/payments-loader.yaml"

log "running examples/payments-kafka.yaml (admin: http://127.0.0.1:9249/metrics)"
JOB_LOG=$WEIR_RUN/logs/demo-job.log
"$WORKER" run -f "$REPO_DIR/examples/payments-kafka.yaml" --state-dir "$STATE" --admin-addr 127.0.0.1:9249 >"$JOB_LOG" 2>&1 &
job=$!
trap 'kill -TERM $job 2>/dev/null || true; rm -rf "$STATE"' EXIT
metric() { curl -sf http://127.0.0.1:9249/metrics | awk -v m="$1" '$1 ~ "^"m { s += $2 } END { print s + 0 }'; }
# Done when results are out and the input count has stopped growing with no lag left.
prev=-1
for _ in $(seq 1 120); do
  sleep 2
  kill -0 $job 2>/dev/null || { tail -20 "$JOB_LOG"; die "the job stopped (log: $JOB_LOG)"; }
  in=$(metric weir_records_in_total); out=$(metric weir_records_out_total); lag=$(metric weir_consumer_lag)
  [[ ${out%.*} -gt 0 && ${lag%.*} -eq 0 && ${in%.*} -eq $prev ]] && break
  prev=${in%.*}
done
echo
echo "== job metrics"
curl -sf http://127.0.0.1:9249/metrics | grep -E '^weir_(records_in|records_out|late_records|dead_letters|consumer_lag|busy)' | sort | head -30
echo
echo "== 10 results from topic payments-per-card-minute (key: card_id)"
"$KAFKA" consume --topic payments-per-card-minute --from-beginning --max-messages 10 \
  --property print.key=true --isolation-level read_committed --timeout-ms 20000 2>/dev/null || true
kill -TERM $job
wait $job || die "the job did not stop cleanly (log: $JOB_LOG)"
trap - EXIT
rm -rf "$STATE"
log "job stopped cleanly after committing its last epoch"
