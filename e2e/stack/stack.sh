#!/usr/bin/env bash
# The whole local stack: up|down|status|install. `down --purge` also deletes its data.
source "$(dirname "$0")/lib.sh"

COMPONENTS=(kafka s3 registry redis opensearch cassandra k8s node-agent)

case "${1:-}" in
  install)
    for c in kafka s3 registry redis opensearch cassandra k8s helm gitops schemathesis avro-client promtool; do "$STACK_DIR/$c.sh" install; done ;;
  up)
    started=$SECONDS
    for c in "${COMPONENTS[@]}"; do "$STACK_DIR/$c.sh" start; done
    log "stack up in $((SECONDS - started))s"
    "$0" status ;;
  down)
    for ((i = ${#COMPONENTS[@]} - 1; i >= 0; i--)); do "$STACK_DIR/${COMPONENTS[i]}.sh" stop; done
    "$STACK_DIR/kafka.sh" cluster stop
    if [[ ${2:-} == --purge ]]; then rm -rf "$WEIR_RUN"; log "removed $WEIR_RUN"; fi ;;
  status)
    rc=0
    for c in "${COMPONENTS[@]}"; do "$STACK_DIR/$c.sh" status || rc=1; done
    echo "env: export KUBECONFIG=$WEIR_RUN/k8s/admin.kubeconfig KAFKA_BROKERS=127.0.0.1:$KAFKA_PORT S3_ENDPOINT=http://127.0.0.1:$S3_PORT REDIS_URL=redis://127.0.0.1:$REDIS_PORT OPENSEARCH_URL=http://127.0.0.1:$OPENSEARCH_PORT CASSANDRA=127.0.0.1:$CASSANDRA_PORT SCHEMA_REGISTRY_URL=http://127.0.0.1:$REGISTRY_PORT/apis/ccompat/v7"
    exit $rc ;;
  *) die "usage: stack.sh install|up|down [--purge]|status" ;;
esac
