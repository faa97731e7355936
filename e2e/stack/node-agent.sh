#!/usr/bin/env bash
# The test node agent (stands in for a kubelet): runs Pods scheduled to node weir-node-0 as
# processes; the image weir-worker maps to the worker binary of this workspace.
# Usage: node-agent.sh start|stop|status  (needs `cargo build -p weir-e2e -p weir-worker` first)
source "$(dirname "$0")/lib.sh"
TARGET=${CARGO_TARGET_DIR:-$WEIR_CACHE/target}/debug
AGENT_LOG=$WEIR_RUN/logs/node-agent.log

case "${1:-}" in
  start)
    is_running node-agent && { log "node agent already running"; exit 0; }
    [[ -x $TARGET/weir-node-agent ]] || die "$TARGET/weir-node-agent is missing; run make build"
    log "starting node agent (log: $AGENT_LOG)"
    KUBECONFIG=$WEIR_RUN/k8s/admin.kubeconfig start_bg node-agent "$AGENT_LOG" "$TARGET/weir-node-agent" \
      --node-name weir-node-0 --root "$WEIR_RUN/pods" --image "weir-worker=$TARGET/weir-worker" --image "weir-operator=$TARGET/weir-operator"
    wait_for node-agent 60 "$AGENT_LOG" bash -c \
      "'$STACK_DIR/k8s.sh' kubectl get node weir-node-0 -o jsonpath='{.status.conditions[?(@.type==\"Ready\")].status}' | grep -q True"
    log "node agent ready: Node weir-node-0" ;;
  stop) stop_bg node-agent ;;
  status)
    if is_running node-agent; then echo "node-agent up    node=weir-node-0  log: $AGENT_LOG"
    else echo "node-agent down  log: $AGENT_LOG"; exit 1; fi ;;
  *) die "usage: node-agent.sh start|stop|status" ;;
esac
