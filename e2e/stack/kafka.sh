#!/usr/bin/env bash
# Apache Kafka in KRaft mode (combined broker + controller) on 127.0.0.1, from Maven Central jars.
# Usage: kafka.sh install|start|stop|status, and kafka.sh cluster ... (three brokers, below)
source "$(dirname "$0")/lib.sh"

KAFKA_HOME=$WEIR_CACHE/kafka-$KAFKA_VERSION
KAFKA_DATA=$WEIR_RUN/kafka
KAFKA_LOG=$WEIR_RUN/logs/kafka.log

install() {
  if [[ -f $KAFKA_HOME/.installed ]]; then return 0; fi
  log "installing Kafka $KAFKA_VERSION jars from Maven Central into $KAFKA_HOME"
  rm -rf "$KAFKA_HOME"
  mkdir -p "$KAFKA_HOME/libs"
  mvn -q -B -f "$STACK_DIR/kafka/pom.xml" -Dkafka.version="$KAFKA_VERSION" \
    dependency:copy-dependencies -DincludeScope=runtime -DoutputDirectory="$KAFKA_HOME/libs" \
    || die "Maven could not resolve org.apache.kafka:kafka_2.13:$KAFKA_VERSION"
  touch "$KAFKA_HOME/.installed"
}

# kafka_java CLASS ARGS...: runs a Kafka main class with the cached classpath.
kafka_java() {
  java -Xms256m -Xmx1g -cp "$KAFKA_HOME/libs/*" \
    -Dlog4j2.configurationFile="$STACK_DIR/kafka/log4j2.properties" "$@"
}

# A second listener for the fault suite's network partition: a worker in its own network
# namespace reaches the broker at $NETNS_KAFKA_IP (an address of the host's loopback, added when
# running as root), through a veth pair the test cuts and heals.
NETNS_KAFKA_IP=${NETNS_KAFKA_IP:-10.213.0.1}
NETNS_KAFKA_PORT=${NETNS_KAFKA_PORT:-9095}

# A third listener with TLS and SASL/PLAIN (user weir, password weir-secret), for the tests of
# Kafka security settings: a CA and the broker's certificate for 127.0.0.1, made with openssl.
KAFKA_SECURE_PORT=${KAFKA_SECURE_PORT:-9096}
KAFKA_TLS=$WEIR_RUN/kafka-tls

kafka_tls() {
  [[ -f $KAFKA_TLS/broker.pem ]] && return 0
  mkdir -p "$KAFKA_TLS"
  openssl req -x509 -newkey rsa:2048 -nodes -keyout "$KAFKA_TLS/ca.key" -out "$KAFKA_TLS/ca.crt" -days 3650 \
    -subj "/CN=weir-local-kafka-ca" 2>/dev/null
  openssl req -newkey rsa:2048 -nodes -keyout "$KAFKA_TLS/broker.key" -out "$KAFKA_TLS/broker.csr" \
    -subj "/CN=127.0.0.1" 2>/dev/null
  printf 'subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n' >"$KAFKA_TLS/broker.ext"
  openssl x509 -req -in "$KAFKA_TLS/broker.csr" -CA "$KAFKA_TLS/ca.crt" -CAkey "$KAFKA_TLS/ca.key" -CAcreateserial \
    -days 3650 -sha256 -extfile "$KAFKA_TLS/broker.ext" -out "$KAFKA_TLS/broker.crt" 2>/dev/null
  # Kafka's PEM key store: the PKCS#8 key, then the certificate chain.
  { openssl pkcs8 -topk8 -nocrypt -in "$KAFKA_TLS/broker.key"; cat "$KAFKA_TLS/broker.crt" "$KAFKA_TLS/ca.crt"; } >"$KAFKA_TLS/broker.pem"
}

write_config() {
  mkdir -p "$KAFKA_DATA"
  kafka_tls
  local listeners="PLAINTEXT://127.0.0.1:$KAFKA_PORT,SECURE://127.0.0.1:$KAFKA_SECURE_PORT"
  local advertised="PLAINTEXT://127.0.0.1:$KAFKA_PORT,SECURE://127.0.0.1:$KAFKA_SECURE_PORT"
  if [[ $EUID -eq 0 ]] && command -v ip >/dev/null; then
    ip addr show dev lo | grep -q " $NETNS_KAFKA_IP/" || ip addr add "$NETNS_KAFKA_IP/32" dev lo
    listeners+=",NETNS://$NETNS_KAFKA_IP:$NETNS_KAFKA_PORT"
    advertised+=",NETNS://$NETNS_KAFKA_IP:$NETNS_KAFKA_PORT"
  fi
  cat >"$KAFKA_DATA/server.properties" <<PROPS
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:$KAFKA_CONTROLLER_PORT
listeners=$listeners,CONTROLLER://127.0.0.1:$KAFKA_CONTROLLER_PORT
advertised.listeners=$advertised
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT,NETNS:PLAINTEXT,SECURE:SASL_SSL
listener.name.secure.sasl.enabled.mechanisms=PLAIN
listener.name.secure.plain.sasl.jaas.config=org.apache.kafka.common.security.plain.PlainLoginModule required user_weir="weir-secret";
listener.name.secure.ssl.keystore.type=PEM
listener.name.secure.ssl.keystore.location=$KAFKA_TLS/broker.pem
sasl.enabled.mechanisms=PLAIN
log.dirs=$KAFKA_DATA/logs
num.partitions=4
default.replication.factor=1
offsets.topic.replication.factor=1
offsets.topic.num.partitions=8
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=8
transaction.max.timeout.ms=900000
group.initial.rebalance.delay.ms=0
auto.create.topics.enable=false
log.retention.hours=168
log.segment.bytes=268435456
PROPS
}

start() {
  install
  if is_running kafka; then log "Kafka already running on 127.0.0.1:$KAFKA_PORT"; return 0; fi
  port_open "$KAFKA_PORT" && die "port $KAFKA_PORT is taken by another process; set KAFKA_PORT"
  write_config
  if [[ ! -f $KAFKA_DATA/logs/meta.properties ]]; then
    kafka_java kafka.tools.StorageTool format -t "$(kafka_java kafka.tools.StorageTool random-uuid)" \
      -c "$KAFKA_DATA/server.properties" >"$WEIR_RUN/kafka-format.log" 2>&1 \
      || die "Kafka storage format failed (log: $WEIR_RUN/kafka-format.log)"
  fi
  log "starting Kafka (log: $KAFKA_LOG)"
  # The command line names no file of this checkout, so another clone sharing the run folder
  # (CI, a second worktree) recognizes the running broker as its own.
  cp "$STACK_DIR/kafka/log4j2.properties" "$KAFKA_DATA/log4j2.properties"
  start_bg kafka "$KAFKA_LOG" java -Xms512m -Xmx1g -XX:+UseG1GC -cp "$KAFKA_HOME/libs/*" \
    -Dlog4j2.configurationFile="$KAFKA_DATA/log4j2.properties" -Dkafka.logs.dir="$WEIR_RUN/logs" \
    kafka.Kafka "$KAFKA_DATA/server.properties"
  wait_for kafka 90 "$KAFKA_LOG" topics --list
  log "Kafka ready: 127.0.0.1:$KAFKA_PORT"
}

# topics ARGS...: the kafka-topics tool against the local broker.
topics() { kafka_java org.apache.kafka.tools.TopicCommand --bootstrap-server "127.0.0.1:$KAFKA_PORT" "$@"; }

stop() { stop_bg kafka; }

# A three-broker cluster beside the single broker, for the fault suite's broker failover: nodes
# 1-3 (each a broker and a KRaft controller) on 127.0.0.1:$((CLUSTER_PORT + 2 * (n - 1))), their
# controllers one port up, with the durability settings of a production cluster: replication
# factor 3 and min.insync.replicas 2 for topics, consumer offsets and transaction state, so
# losing one broker is a failover, not an outage.
CLUSTER_PORT=${KAFKA_CLUSTER_PORT:-19092}
CLUSTER_DATA=$WEIR_RUN/kafka-cluster

cluster_brokers() { echo "127.0.0.1:$CLUSTER_PORT,127.0.0.1:$((CLUSTER_PORT + 2)),127.0.0.1:$((CLUSTER_PORT + 4))"; }

cluster_config() { # N
  local n=$1 port=$((CLUSTER_PORT + 2 * ($1 - 1)))
  local voters="1@127.0.0.1:$((CLUSTER_PORT + 1)),2@127.0.0.1:$((CLUSTER_PORT + 3)),3@127.0.0.1:$((CLUSTER_PORT + 5))"
  mkdir -p "$CLUSTER_DATA/n$n"
  cat >"$CLUSTER_DATA/n$n/server.properties" <<PROPS
process.roles=broker,controller
node.id=$n
controller.quorum.voters=$voters
listeners=PLAINTEXT://127.0.0.1:$port,CONTROLLER://127.0.0.1:$((port + 1))
advertised.listeners=PLAINTEXT://127.0.0.1:$port
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
log.dirs=$CLUSTER_DATA/n$n/logs
num.partitions=3
default.replication.factor=3
min.insync.replicas=2
offsets.topic.replication.factor=3
offsets.topic.num.partitions=8
transaction.state.log.replication.factor=3
transaction.state.log.min.isr=2
transaction.state.log.num.partitions=8
transaction.max.timeout.ms=900000
group.initial.rebalance.delay.ms=0
auto.create.topics.enable=false
unclean.leader.election.enable=false
PROPS
}

node_start() { # N
  local n=$1
  is_running "kafka-n$n" && return 0
  cp "$STACK_DIR/kafka/log4j2.properties" "$CLUSTER_DATA/log4j2.properties"
  start_bg "kafka-n$n" "$WEIR_RUN/logs/kafka-n$n.log" java -Xms256m -Xmx512m -XX:+UseG1GC -cp "$KAFKA_HOME/libs/*" \
    -Dlog4j2.configurationFile="$CLUSTER_DATA/log4j2.properties" -Dkafka.logs.dir="$WEIR_RUN/logs" \
    kafka.Kafka "$CLUSTER_DATA/n$n/server.properties"
}

node_stop() { stop_bg "kafka-n$1"; }

cluster_start() {
  install
  local n id
  if [[ ! -f $CLUSTER_DATA/n1/logs/meta.properties ]]; then
    id=$(kafka_java kafka.tools.StorageTool random-uuid)
    for n in 1 2 3; do
      cluster_config "$n"
      kafka_java kafka.tools.StorageTool format -t "$id" -c "$CLUSTER_DATA/n$n/server.properties" \
        >"$WEIR_RUN/kafka-cluster-format.log" 2>&1 || die "formatting node $n failed (log: $WEIR_RUN/kafka-cluster-format.log)"
    done
  fi
  log "starting the three-broker Kafka cluster ($(cluster_brokers))"
  for n in 1 2 3; do cluster_config "$n"; node_start "$n"; done
  wait_for kafka-n1 120 "$WEIR_RUN/logs/kafka-n1.log" cluster_ready
  log "Kafka cluster ready: $(cluster_brokers)"
}

# Every broker registered and the internal topics' replicas possible.
cluster_ready() {
  kafka_java org.apache.kafka.tools.BrokerApiVersionsCommand --bootstrap-server "$(cluster_brokers)" 2>/dev/null \
    | grep -c '^127.0.0.1:' | grep -qx 3
}

cluster_stop() { for n in 1 2 3; do node_stop "$n"; done; }

cluster_status() {
  local n
  for n in 1 2 3; do
    if is_running "kafka-n$n"; then echo "kafka-n$n up    127.0.0.1:$((CLUSTER_PORT + 2 * (n - 1)))"
    else echo "kafka-n$n down"; fi
  done
}

status() {
  if is_running kafka && port_open "$KAFKA_PORT"; then echo "kafka    up    127.0.0.1:$KAFKA_PORT (KRaft, $KAFKA_VERSION)  log: $KAFKA_LOG"
  else echo "kafka    down  log: $KAFKA_LOG"; return 1; fi
}

case "${1:-}" in
  install|start|stop|status) "$1" ;;
  cluster) case "${2:-}" in
      start|stop|status) "cluster_$2" ;;
      brokers) cluster_brokers ;;
      stop-node) node_stop "${3:?node 1-3}" ;;
      start-node) install; cluster_config "${3:?node 1-3}"; node_start "$3" ;;
      *) die "usage: kafka.sh cluster start|stop|status|brokers|stop-node N|start-node N" ;;
    esac ;;
  topics) shift; topics "$@" ;;
  consume) shift; kafka_java org.apache.kafka.tools.consumer.ConsoleConsumer --bootstrap-server "127.0.0.1:$KAFKA_PORT" "$@" ;;
  *) die "usage: kafka.sh install|start|stop|status|cluster ...|topics ARGS|consume ARGS" ;;
esac
