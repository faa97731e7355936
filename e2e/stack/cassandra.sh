#!/usr/bin/env bash
# Apache Cassandra on 127.0.0.1:$CASSANDRA_PORT (CQL), for the Cassandra sink: a single node of
# Cassandra $CASSANDRA_VERSION run from its jars on Maven Central (cassandra/pom.xml) with a
# minimal cassandra.yaml written here; data under $WEIR_RUN.
# Usage: cassandra.sh install|start|stop|status
source "$(dirname "$0")/lib.sh"

CASS_DIR=$WEIR_CACHE/cassandra-$CASSANDRA_VERSION
CASS_DATA=$WEIR_RUN/cassandra
CASS_LOG=$WEIR_RUN/logs/cassandra.log

install() {
  [[ -f $CASS_DIR/.installed ]] && return 0
  log "fetching Apache Cassandra $CASSANDRA_VERSION from Maven Central into $CASS_DIR"
  mkdir -p "$CASS_DIR/lib"
  (cd "$STACK_DIR/cassandra" && mvn -q -B dependency:copy-dependencies -Dcassandra.version="$CASSANDRA_VERSION" \
    -DincludeScope=runtime -DoutputDirectory="$CASS_DIR/lib") >"$WEIR_CACHE/cassandra-install.log" 2>&1 \
    || die "Maven could not fetch Cassandra (log: $WEIR_CACHE/cassandra-install.log)"
  touch "$CASS_DIR/.installed"
}

# The options Cassandra's own jvm17-server.options gives: the JDK internals it reaches into.
jvm_opens() {
  local e
  for e in java.base/jdk.internal.misc java.base/jdk.internal.ref java.base/sun.nio.ch \
    java.management.rmi/com.sun.jmx.remote.internal.rmi java.rmi/sun.rmi.registry java.rmi/sun.rmi.server \
    java.sql/java.sql; do printf -- '--add-exports %s=ALL-UNNAMED ' "$e"; done
  for e in java.base/java.lang.module java.base/jdk.internal.loader java.base/jdk.internal.ref \
    java.base/jdk.internal.reflect java.base/jdk.internal.math java.base/jdk.internal.module \
    java.base/jdk.internal.util.jar jdk.management/com.sun.management.internal java.base/sun.nio.ch \
    java.base/java.io java.base/java.nio java.base/java.util.concurrent java.base/java.util \
    java.base/java.util.concurrent.atomic java.base/java.lang java.base/java.math java.base/java.lang.reflect \
    java.base/java.net; do printf -- '--add-opens %s=ALL-UNNAMED ' "$e"; done
}

start() {
  install
  if is_running cassandra; then log "Cassandra already running on 127.0.0.1:$CASSANDRA_PORT"; return 0; fi
  port_open "$CASSANDRA_PORT" && die "port $CASSANDRA_PORT is taken by another process; set CASSANDRA_PORT"
  mkdir -p "$CASS_DATA"
  cat >"$CASS_DATA/cassandra.yaml" <<YAML
cluster_name: weir
num_tokens: 16
partitioner: org.apache.cassandra.dht.Murmur3Partitioner
commitlog_sync: periodic
commitlog_sync_period: 10000ms
endpoint_snitch: SimpleSnitch
seed_provider:
  - class_name: org.apache.cassandra.locator.SimpleSeedProvider
    parameters:
      - seeds: "127.0.0.1:$CASSANDRA_STORAGE_PORT"
listen_address: 127.0.0.1
rpc_address: 127.0.0.1
native_transport_port: $CASSANDRA_PORT
storage_port: $CASSANDRA_STORAGE_PORT
start_native_transport: true
data_file_directories: [$CASS_DATA/data]
commitlog_directory: $CASS_DATA/commitlog
saved_caches_directory: $CASS_DATA/saved_caches
hints_directory: $CASS_DATA/hints
cdc_raw_directory: $CASS_DATA/cdc_raw
YAML
  log "starting Cassandra (log: $CASS_LOG)"
  # shellcheck disable=SC2046
  start_bg cassandra "$CASS_LOG" java -Xms512m -Xmx1g -XX:+UseG1GC $(jvm_opens) \
    -Dcassandra.config="file://$CASS_DATA/cassandra.yaml" -Dcassandra-foreground=yes \
    -Dcassandra.storagedir="$CASS_DATA" -Dcassandra.jmx.local.port="$CASSANDRA_JMX_PORT" \
    -cp "$CASS_DIR/lib/*" org.apache.cassandra.service.CassandraDaemon
  # The CQL port opens once the node is up.
  wait_for cassandra 180 "$CASS_LOG" port_open "$CASSANDRA_PORT"
  log "Cassandra ready: 127.0.0.1:$CASSANDRA_PORT"
}

stop() { stop_bg cassandra; }

status() {
  if is_running cassandra && port_open "$CASSANDRA_PORT"; then
    echo "cassandra up  127.0.0.1:$CASSANDRA_PORT (Apache Cassandra $CASSANDRA_VERSION)  log: $CASS_LOG"
  else echo "cassandra down  log: $CASS_LOG"; return 1; fi
}

case "${1:-}" in
  install|start|stop|status) "$1" ;;
  *) die "usage: cassandra.sh install|start|stop|status" ;;
esac
