#!/usr/bin/env bash
# Redis on 127.0.0.1:$REDIS_PORT, for the Redis sink: the Debian package's redis-server (on the
# PATH, or unpacked into the cache from the Debian archive when it cannot be installed), no
# persistence (the data lives as long as the stack).
# Usage: redis.sh install|start|stop|status
source "$(dirname "$0")/lib.sh"

REDIS_DIR=$WEIR_CACHE/redis
REDIS_DATA=$WEIR_RUN/redis
REDIS_LOG=$WEIR_RUN/logs/redis.log

# The redis-server to run: the system's, else the one unpacked into the cache.
redis_bin() {
  if command -v redis-server >/dev/null; then command -v redis-server
  elif [[ -x $REDIS_DIR/usr/bin/redis-server ]]; then echo "$REDIS_DIR/usr/bin/redis-server"
  else return 1; fi
}

install() {
  redis_bin >/dev/null && return 0
  if [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null; then
    log "installing redis-server from the Debian archive"
    apt-get install -y --no-install-recommends redis-server >"$WEIR_CACHE/redis-install.log" 2>&1 \
      || { apt-get update >>"$WEIR_CACHE/redis-install.log" 2>&1 \
        && apt-get install -y --no-install-recommends redis-server >>"$WEIR_CACHE/redis-install.log" 2>&1; } \
      || die "apt-get install redis-server failed (log: $WEIR_CACHE/redis-install.log)"
  else
    # Without root: the package and the libraries it links, unpacked into the cache.
    log "unpacking redis-server from the Debian archive into $REDIS_DIR"
    local tmp; tmp=$(mktemp -d)
    (cd "$tmp" && apt-get download redis-server redis-tools liblzf1 libjemalloc2) >"$WEIR_CACHE/redis-install.log" 2>&1 \
      || die "apt-get download redis-server failed (log: $WEIR_CACHE/redis-install.log)"
    mkdir -p "$REDIS_DIR"
    for deb in "$tmp"/*.deb; do dpkg -x "$deb" "$REDIS_DIR"; done
    rm -rf "$tmp"
  fi
  redis_bin >/dev/null || die "redis-server is still missing after the install"
}

start() {
  install
  if is_running redis; then log "Redis already running on 127.0.0.1:$REDIS_PORT"; return 0; fi
  port_open "$REDIS_PORT" && die "port $REDIS_PORT is taken by another process; set REDIS_PORT"
  mkdir -p "$REDIS_DATA"
  log "starting Redis (log: $REDIS_LOG)"
  LD_LIBRARY_PATH=$REDIS_DIR/usr/lib/x86_64-linux-gnu${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH} \
    start_bg redis "$REDIS_LOG" "$(redis_bin)" --bind 127.0.0.1 --port "$REDIS_PORT" --dir "$REDIS_DATA" \
    --save "" --appendonly no --daemonize no --protected-mode yes
  # redis-server rewrites its command line (its process title), so the pid alone identifies it.
  rm -f "$WEIR_RUN/redis.cmd"
  wait_for redis 30 "$REDIS_LOG" port_open "$REDIS_PORT"
  log "Redis ready: redis://127.0.0.1:$REDIS_PORT"
}

stop() { stop_bg redis; }

status() {
  if is_running redis && port_open "$REDIS_PORT"; then
    echo "redis    up    redis://127.0.0.1:$REDIS_PORT ($("$(redis_bin)" --version | awk '{print $3}'))  log: $REDIS_LOG"
  else echo "redis    down  log: $REDIS_LOG"; return 1; fi
}

case "${1:-}" in
  install|start|stop|status) "$1" ;;
  *) die "usage: redis.sh install|start|stop|status" ;;
esac
