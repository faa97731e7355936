# Shared settings and helpers for the local stack scripts. Sourced, never run.
# Everything installed lives under $WEIR_CACHE (outside the clone) so CI and fresh clones reuse it;
# everything running lives under $WEIR_RUN (pid files, logs, data), wiped by stack-down --purge.
set -euo pipefail

WEIR_CACHE=${WEIR_CACHE:-$HOME/.cache/weir}
WEIR_RUN=${WEIR_RUN:-$WEIR_CACHE/run}
STACK_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_DIR=$(cd "$STACK_DIR/../.." && pwd)

KAFKA_VERSION=${KAFKA_VERSION:-4.4.0}
KAFKA_PORT=${KAFKA_PORT:-9092}
KAFKA_CONTROLLER_PORT=${KAFKA_CONTROLLER_PORT:-9093}
VERSITYGW_VERSION=${VERSITYGW_VERSION:-v1.8.0}
S3_PORT=${S3_PORT:-7070}
S3_ACCESS_KEY=${S3_ACCESS_KEY:-weiradmin}
S3_SECRET_KEY=${S3_SECRET_KEY:-weirsecret}
S3_BUCKET=${S3_BUCKET:-weir}
K8S_VERSION=${K8S_VERSION:-v1.37.2}
ETCD_VERSION=${ETCD_VERSION:-v3.6.16}
# Helm, built from its Go module, for the chart's lint, template and install tests.
HELM_VERSION=${HELM_VERSION:-v3.22.0}
ETCD_PORT=${ETCD_PORT:-2379}
APISERVER_PORT=${APISERVER_PORT:-6443}
REDIS_PORT=${REDIS_PORT:-6379}
OPENSEARCH_VERSION=${OPENSEARCH_VERSION:-2.19.6}
OPENSEARCH_PORT=${OPENSEARCH_PORT:-9200}
CASSANDRA_VERSION=${CASSANDRA_VERSION:-5.0.6}
CASSANDRA_PORT=${CASSANDRA_PORT:-9042}
CASSANDRA_STORAGE_PORT=${CASSANDRA_STORAGE_PORT:-7000}
CASSANDRA_JMX_PORT=${CASSANDRA_JMX_PORT:-7199}
# The Schema Registry for `format: avro`: Apicurio Registry, its Confluent-compatible API.
APICURIO_VERSION=${APICURIO_VERSION:-3.3.3}
REGISTRY_PORT=${REGISTRY_PORT:-8081}
REGISTRY_MANAGEMENT_PORT=${REGISTRY_MANAGEMENT_PORT:-8082}

export GOPATH=${GOPATH:-$HOME/go}
export GOFLAGS=${GOFLAGS:--buildvcs=false}
mkdir -p "$WEIR_CACHE" "$WEIR_RUN"

log() { printf '[stack] %s\n' "$*" >&2; }
die() { printf '[stack] ERROR: %s\n' "$*" >&2; exit 1; }

# wait_for NAME TIMEOUT_S LOGFILE CMD...: polls CMD until it succeeds, or fails naming the log.
# When NAME has a pid file, a process that exits ends the wait at once.
wait_for() {
  local name=$1 timeout=$2 logfile=$3; shift 3
  local deadline=$((SECONDS + timeout)) pidfile=$WEIR_RUN/$1.pid
  until "$@" >/dev/null 2>&1; do
    if [[ -f $pidfile ]] && ! kill -0 "$(cat "$pidfile")" 2>/dev/null; then
      log "$name exited during start-up; last lines of $logfile:"
      tail -n 30 "$logfile" >&2 || true
      rm -f "$pidfile"
      die "$name failed to start (log: $logfile)"
    fi
    if ((SECONDS >= deadline)); then
      log "$name did not become healthy within ${timeout}s; last lines of $logfile:"
      tail -n 30 "$logfile" >&2 || true
      die "$name failed to start (log: $logfile)"
    fi
    sleep 0.5
  done
}

# is_running NAME: true when the pid file of NAME names a live process that is still the one
# started (a stale pid file from a killed session may name an unrelated, reused pid).
is_running() {
  local pidfile=$WEIR_RUN/$1.pid pid
  [[ -f $pidfile ]] || return 1
  pid=$(cat "$pidfile")
  kill -0 "$pid" 2>/dev/null || return 1
  [[ ! -f $WEIR_RUN/$1.cmd ]] || [[ "$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null)" == "$(cat "$WEIR_RUN/$1.cmd")" ]]
}

# start_bg NAME LOGFILE CMD...: starts CMD detached, records its pid.
start_bg() {
  local name=$1 logfile=$2; shift 2
  mkdir -p "$(dirname "$logfile")"
  setsid "$@" >"$logfile" 2>&1 </dev/null &
  echo $! >"$WEIR_RUN/$name.pid"
  printf '%s ' "$@" >"$WEIR_RUN/$name.cmd"
}

# stop_bg NAME: SIGTERM, then SIGKILL after 20 s.
stop_bg() {
  local name=$1 pidfile=$WEIR_RUN/$1.pid pid
  [[ -f $pidfile ]] || return 0
  pid=$(cat "$pidfile")
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 40); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
    kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true
  fi
  rm -f "$pidfile" "$WEIR_RUN/$name.cmd"
}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
