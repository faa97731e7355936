#!/usr/bin/env bash
# Apache Kafka in KRaft mode (combined broker + controller) on 127.0.0.1, from Maven Central jars.
# Usage: kafka.sh install|start|stop|status
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

write_config() {
  mkdir -p "$KAFKA_DATA"
  cat >"$KAFKA_DATA/server.properties" <<PROPS
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:$KAFKA_CONTROLLER_PORT
listeners=PLAINTEXT://127.0.0.1:$KAFKA_PORT,CONTROLLER://127.0.0.1:$KAFKA_CONTROLLER_PORT
advertised.listeners=PLAINTEXT://127.0.0.1:$KAFKA_PORT
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
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

status() {
  if is_running kafka && port_open "$KAFKA_PORT"; then echo "kafka    up    127.0.0.1:$KAFKA_PORT (KRaft, $KAFKA_VERSION)  log: $KAFKA_LOG"
  else echo "kafka    down  log: $KAFKA_LOG"; return 1; fi
}

case "${1:-}" in
  install|start|stop|status) "$1" ;;
  topics) shift; topics "$@" ;;
  consume) shift; kafka_java org.apache.kafka.tools.consumer.ConsoleConsumer --bootstrap-server "127.0.0.1:$KAFKA_PORT" "$@" ;;
  *) die "usage: kafka.sh install|start|stop|status|topics ARGS|consume ARGS" ;;
esac
