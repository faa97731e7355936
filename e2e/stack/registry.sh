#!/usr/bin/env bash
# A Schema Registry on 127.0.0.1:$REGISTRY_PORT, for `format: avro`: Apicurio Registry
# $APICURIO_VERSION, the application Maven Central serves whole (io.apicurio:apicurio-registry-app,
# classifier `all`, a Quarkus application), checked against Central's SHA-1 and kept in the
# cache. It serves the Confluent-compatible API under /apis/ccompat/v7, which is what the
# workers speak; its storage is an in-memory database, so a restart forgets every schema.
# Apicurio 3 needs Java 21 or newer: $REGISTRY_JAVA, else the newest JDK in /usr/lib/jvm.
# Usage: registry.sh install|start|stop|status
source "$(dirname "$0")/lib.sh"

ARTIFACT=apicurio-registry-app-$APICURIO_VERSION-all.tar.gz
URL=https://repo1.maven.org/maven2/io/apicurio/apicurio-registry-app/$APICURIO_VERSION/$ARTIFACT
REG_DIR=$WEIR_CACHE/apicurio-registry-$APICURIO_VERSION
REG_LOG=$WEIR_RUN/logs/registry.log

install() {
  [[ -f $REG_DIR/.installed ]] && return 0
  log "downloading Apicurio Registry $APICURIO_VERSION from Maven Central into $REG_DIR"
  local tmp; tmp=$(mktemp -d)
  curl -fsS --retry 3 -o "$tmp/$ARTIFACT" "$URL" || { rm -rf "$tmp"; die "could not download $URL"; }
  local want got
  want=$(curl -fsS --retry 3 "$URL.sha1" | cut -c1-40) || { rm -rf "$tmp"; die "could not download $URL.sha1"; }
  got=$(sha1sum "$tmp/$ARTIFACT" | cut -c1-40)
  [[ $want == "$got" ]] || { rm -rf "$tmp"; die "$ARTIFACT: SHA-1 $got, Maven Central says $want"; }
  rm -rf "$REG_DIR" && mkdir -p "$REG_DIR"
  tar xzf "$tmp/$ARTIFACT" -C "$REG_DIR"
  rm -rf "$tmp"
  touch "$REG_DIR/.installed"
}

# The first java that is version 21 or newer: $REGISTRY_JAVA, java on the PATH, then /usr/lib/jvm.
java21() {
  local j major
  for j in ${REGISTRY_JAVA:-} java /usr/lib/jvm/*/bin/java; do
    [[ -n $j ]] && command -v "$j" >/dev/null 2>&1 || continue
    major=$("$j" -XshowSettings:properties -version 2>&1 | sed -n 's/^ *java.specification.version = //p')
    if [[ ${major%%.*} =~ ^[0-9]+$ ]] && ((${major%%.*} >= 21)); then echo "$j"; return 0; fi
  done
  die "Apicurio Registry $APICURIO_VERSION needs Java 21 or newer; none found (set REGISTRY_JAVA)"
}

start() {
  install
  if is_running registry; then log "registry already running on 127.0.0.1:$REGISTRY_PORT"; return 0; fi
  port_open "$REGISTRY_PORT" && die "port $REGISTRY_PORT is taken by another process; set REGISTRY_PORT"
  local java; java=$(java21)
  log "starting Apicurio Registry $APICURIO_VERSION with $java (log: $REG_LOG)"
  # The management interface (health, metrics) gets its own loopback port, not Quarkus' 0.0.0.0:9000.
  start_bg registry "$REG_LOG" "$java" -Xms128m -Xmx384m \
    -Dquarkus.http.host=127.0.0.1 -Dquarkus.http.port="$REGISTRY_PORT" \
    -Dquarkus.management.host=127.0.0.1 -Dquarkus.management.port="$REGISTRY_MANAGEMENT_PORT" \
    -jar "$REG_DIR/quarkus-run.jar"
  wait_for registry 120 "$REG_LOG" healthy
  log "registry ready: http://127.0.0.1:$REGISTRY_PORT/apis/ccompat/v7"
}

healthy() { curl -fsS "http://127.0.0.1:$REGISTRY_PORT/apis/ccompat/v7/subjects" >/dev/null 2>&1; }

stop() { stop_bg registry; }

status() {
  if is_running registry && healthy; then
    echo "registry up  http://127.0.0.1:$REGISTRY_PORT/apis/ccompat/v7 (Apicurio Registry $APICURIO_VERSION)  log: $REG_LOG"
  else echo "registry down  log: $REG_LOG"; return 1; fi
}

case "${1:-}" in
  install|start|stop|status) "$1" ;;
  *) die "usage: registry.sh install|start|stop|status" ;;
esac
