#!/usr/bin/env bash
# OpenSearch on 127.0.0.1:$OPENSEARCH_PORT, for the OpenSearch sink: a single node of OpenSearch
# $OPENSEARCH_VERSION built from its server jars on Maven Central (no distribution archive is
# served by a package registry) by the small launcher in opensearch/, data under $WEIR_RUN.
# Usage: opensearch.sh install|start|stop|status
source "$(dirname "$0")/lib.sh"

SRC=$STACK_DIR/opensearch
hash=$(cd "$SRC" && find . -path ./target -prune -o -type f -print | sort | xargs sha256sum | sha256sum | cut -c1-12)
OS_DIR=$WEIR_CACHE/opensearch-$OPENSEARCH_VERSION-$hash
OS_DATA=$WEIR_RUN/opensearch
OS_LOG=$WEIR_RUN/logs/opensearch.log

install() {
  [[ -f $OS_DIR/.installed ]] && return 0
  log "building the OpenSearch $OPENSEARCH_VERSION node from Maven Central into $OS_DIR"
  local build; build=$(mktemp -d)
  cp -r "$SRC"/. "$build"
  (cd "$build" && mvn -q -B package dependency:copy-dependencies -Dopensearch.version="$OPENSEARCH_VERSION" \
    -DincludeScope=runtime) >"$WEIR_CACHE/opensearch-install.log" 2>&1 \
    || { rm -rf "$build"; die "Maven could not build the OpenSearch node (log: $WEIR_CACHE/opensearch-install.log)"; }
  mkdir -p "$OS_DIR/lib"
  cp "$build"/target/weir-opensearch-node-1.jar "$build"/target/dependency/*.jar "$OS_DIR/lib/"
  rm -rf "$build"
  touch "$OS_DIR/.installed"
}

start() {
  install
  if is_running opensearch; then log "OpenSearch already running on 127.0.0.1:$OPENSEARCH_PORT"; return 0; fi
  port_open "$OPENSEARCH_PORT" && die "port $OPENSEARCH_PORT is taken by another process; set OPENSEARCH_PORT"
  mkdir -p "$OS_DATA"
  log "starting OpenSearch (log: $OS_LOG)"
  start_bg opensearch "$OS_LOG" java -Xms256m -Xmx512m -XX:+UseG1GC -cp "$OS_DIR/lib/*" \
    dev.weir.stack.OpenSearchNode "$OS_DATA" "$OPENSEARCH_PORT"
  wait_for opensearch 120 "$OS_LOG" healthy
  log "OpenSearch ready: http://127.0.0.1:$OPENSEARCH_PORT"
}

# The node answers and its cluster is at least yellow (a single node never has replicas).
healthy() {
  curl -fsS "http://127.0.0.1:$OPENSEARCH_PORT/_cluster/health?wait_for_status=yellow&timeout=1s" >/dev/null 2>&1
}

stop() { stop_bg opensearch; }

status() {
  if is_running opensearch && port_open "$OPENSEARCH_PORT"; then
    echo "opensearch up  http://127.0.0.1:$OPENSEARCH_PORT (OpenSearch $OPENSEARCH_VERSION)  log: $OS_LOG"
  else echo "opensearch down  log: $OS_LOG"; return 1; fi
}

case "${1:-}" in
  install|start|stop|status) "$1" ;;
  *) die "usage: opensearch.sh install|start|stop|status" ;;
esac
