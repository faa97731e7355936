#!/usr/bin/env bash
# Confluent's Kafka client for Python with its Schema Registry serializers (PyPI), in a virtual
# environment of its own: the independent Avro and JSON Schema producer and consumer of the
# end-to-end tests (e2e/avro/avro_client.py).
# Usage: avro-client.sh install | avro-client.sh run ARGS (avro_client.py's arguments)
source "$(dirname "$0")/lib.sh"
CONFLUENT_KAFKA_VERSION=${CONFLUENT_KAFKA_VERSION:-2.16.1}
EXTRAS=avro,json,schemaregistry
VENV=$WEIR_CACHE/confluent-kafka-$CONFLUENT_KAFKA_VERSION-${EXTRAS//,/-}

install() {
  [[ -f $VENV/.installed ]] && return 0
  log "installing confluent-kafka[$EXTRAS] $CONFLUENT_KAFKA_VERSION from PyPI"
  rm -rf "$VENV"
  python3 -m venv "$VENV" && "$VENV/bin/pip" install -q "confluent-kafka[$EXTRAS]==$CONFLUENT_KAFKA_VERSION" \
    || { rm -rf "$VENV"; die "pip install confluent-kafka[$EXTRAS]==$CONFLUENT_KAFKA_VERSION failed"; }
  touch "$VENV/.installed"
}

case "${1:-}" in
  install) install ;;
  run)
    shift
    install
    exec "$VENV/bin/python" "$REPO_DIR/e2e/avro/avro_client.py" "$@" ;;
  *) die "usage: avro-client.sh install | avro-client.sh run ARGS" ;;
esac
