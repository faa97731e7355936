#!/usr/bin/env bash
# `make demo`: on the running local stack, loads 100,000 generated payments into Kafka, installs
# the StreamJob CRD, starts the operator, applies examples/payments-kafka.yaml with kubectl, and
# shows the job as Kubernetes sees it (StreamJob, StatefulSet, Pods, Events), the workers'
# metrics and the results; then deletes the job, which stops its workers.
set -euo pipefail
source "$(dirname "$0")/stack/lib.sh"
KAFKA=$STACK_DIR/kafka.sh
TARGET=${CARGO_TARGET_DIR:-$WEIR_CACHE/target}/debug
for b in weir-worker weir-operator; do [[ -x $TARGET/$b ]] || die "$TARGET/$b is missing; run make build"; done
kubectl() { "$STACK_DIR/k8s.sh" kubectl "$@"; }
NS=weir-demo JOB=payments-kafka

# Every demo starts afresh: new topics, a new namespace.
kubectl delete namespace "$NS" --ignore-not-found --wait=true >/dev/null
for t in payments:6 payments-per-card-minute:6 payments-corrections:1 payments-dead-letters:1; do
  "$KAFKA" topics --delete --if-exists --topic "${t%%:*}" >/dev/null 2>&1 || true
  for _ in $(seq 1 30); do
    "$KAFKA" topics --create --if-not-exists --topic "${t%%:*}" --partitions "${t##*:}" >/dev/null 2>&1 && break
    sleep 1 # the deletion finishes in the background
  done
done

log "loading 100,000 payments into topic payments (examples/payments-loader.yaml)"
"$TARGET/weir-worker" run -f "$REPO_DIR/examples/payments-loader.yaml"

log "installing the StreamJob CRD and starting the operator (log: $WEIR_RUN/logs/demo-operator.log)"
kubectl apply --server-side --force-conflicts -f "$REPO_DIR/crds/streamjob.yaml" >/dev/null
kubectl wait --for=condition=established crd/streamjobs.weir.dev --timeout=60s >/dev/null
kubectl create namespace "$NS" >/dev/null
KUBECONFIG=$WEIR_RUN/k8s/admin.kubeconfig "$TARGET/weir-operator" --namespace "$NS" --api-addr 127.0.0.1:8080 >"$WEIR_RUN/logs/demo-operator.log" 2>&1 &
operator=$!
trap 'kubectl -n "$NS" delete streamjob --all --wait=false >/dev/null 2>&1 || true; kill $operator 2>/dev/null || true' EXIT

log "kubectl apply -f examples/payments-kafka.yaml"
kubectl -n "$NS" apply -f "$REPO_DIR/examples/payments-kafka.yaml"
for _ in $(seq 1 60); do
  [[ $(kubectl -n "$NS" get sj "$JOB" -o jsonpath='{.status.phase}') == Running ]] && break
  kill -0 $operator 2>/dev/null || { tail -5 "$WEIR_RUN/logs/demo-operator.log"; die "the operator stopped"; }
  sleep 2
done
[[ $(kubectl -n "$NS" get sj "$JOB" -o jsonpath='{.status.phase}') == Running ]] \
  || die "the job did not reach Running; kubectl -n $NS describe sj $JOB"

# The workers' admin servers listen on their Pod IPs; the sum over them is the job's.
metric() {
  local ip
  for ip in $(kubectl -n "$NS" get pods -l "weir.dev/job=$JOB" -o jsonpath='{.items[*].status.podIP}'); do
    curl -sf "http://$ip:9249/metrics" || true
  done | awk -v m="$1" '$1 ~ "^"m { s += $2 } END { print s + 0 }'
}
# Done when results are out and the input count has stopped growing with no lag left.
prev=-1
for _ in $(seq 1 120); do
  sleep 2
  in=$(metric weir_records_in_total); out=$(metric weir_records_out_total); lag=$(metric weir_consumer_lag)
  [[ ${out%.*} -gt 0 && ${lag%.*} -eq 0 && ${in%.*} -eq $prev ]] && break
  prev=${in%.*}
done
echo
echo "== kubectl -n $NS get streamjobs,statefulsets,pods"
kubectl -n "$NS" get streamjobs,statefulsets,pods
echo
echo "== events of the StreamJob"
kubectl -n "$NS" get events --field-selector "involvedObject.kind=StreamJob,involvedObject.name=$JOB" \
  -o custom-columns=TYPE:.type,REASON:.reason,MESSAGE:.message
echo
echo "== the job's metrics (summed over its workers): records in $in, out $out, lag $lag"
for ip in $(kubectl -n "$NS" get pods -l "weir.dev/job=$JOB" -o jsonpath='{.items[*].status.podIP}'); do
  curl -sf "http://$ip:9249/metrics" | grep -E '^weir_(records_out|late_records|dead_letters|busy)' | sed "s/^/$ip  /"
done
echo
echo "== the operator's REST API: GET /jobs/$JOB/metrics"
curl -sf "http://127.0.0.1:8080/jobs/$JOB/metrics?namespace=$NS" | python3 -m json.tool | head -40 || true
echo
echo "== 10 results from topic payments-per-card-minute (key: card_id), read_committed"
"$KAFKA" consume --topic payments-per-card-minute --from-beginning --max-messages 10 \
  --property print.key=true --isolation-level read_committed --timeout-ms 20000 2>/dev/null || true
log "kubectl delete streamjob $JOB: the workers commit, checkpoint and stop"
kubectl -n "$NS" delete sj "$JOB" >/dev/null
for _ in $(seq 1 60); do
  [[ -z $(kubectl -n "$NS" get pods -o name 2>/dev/null) ]] && break
  sleep 1
done
[[ -z $(kubectl -n "$NS" get pods -o name 2>/dev/null) ]] || die "the workers did not stop"
trap - EXIT
kill $operator
log "demo done: the job ran on Kubernetes, its workers stopped cleanly"
