#!/usr/bin/env bash
# S3-compatible object storage on 127.0.0.1: Versity Gateway (Apache-2.0), built from its Go module,
# serving a local folder through its posix backend. A bucket ($S3_BUCKET) is created at start.
# Usage: s3.sh install|start|stop|status
source "$(dirname "$0")/lib.sh"

S3_BIN=$WEIR_CACHE/bin/versitygw-$VERSITYGW_VERSION
S3_DATA=$WEIR_RUN/s3
S3_LOG=$WEIR_RUN/logs/s3.log

install() {
  [[ -x $S3_BIN ]] && return 0
  log "building Versity Gateway $VERSITYGW_VERSION from the Go module proxy"
  mkdir -p "$WEIR_CACHE/bin"
  GOBIN=$WEIR_CACHE/gobin-versitygw go install "github.com/versity/versitygw/cmd/versitygw@$VERSITYGW_VERSION" \
    || die "go install github.com/versity/versitygw@$VERSITYGW_VERSION failed"
  mv "$WEIR_CACHE/gobin-versitygw/versitygw" "$S3_BIN"
}

start() {
  install
  if is_running s3; then log "S3 already running on 127.0.0.1:$S3_PORT"; return 0; fi
  port_open "$S3_PORT" && die "port $S3_PORT is taken by another process; set S3_PORT"
  mkdir -p "$S3_DATA/root" "$S3_DATA/meta"
  log "starting S3 server (log: $S3_LOG)"
  ROOT_ACCESS_KEY=$S3_ACCESS_KEY ROOT_SECRET_KEY=$S3_SECRET_KEY \
    start_bg s3 "$S3_LOG" "$S3_BIN" --port "127.0.0.1:$S3_PORT" posix --sidecar "$S3_DATA/meta" "$S3_DATA/root"
  wait_for s3 60 "$S3_LOG" port_open "$S3_PORT"
  create_bucket "$S3_BUCKET"
  log "S3 ready: http://127.0.0.1:$S3_PORT bucket=$S3_BUCKET"
}

# create_bucket NAME: a signed PUT Bucket through the S3 API (409 = it exists already).
create_bucket() {
  local empty_sha=e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855 code
  code=$(curl -s -o "$WEIR_RUN/s3-bucket.out" -w '%{http_code}' -X PUT -H "x-amz-content-sha256: $empty_sha" \
    --aws-sigv4 "aws:amz:us-east-1:s3" --user "$S3_ACCESS_KEY:$S3_SECRET_KEY" "http://127.0.0.1:$S3_PORT/$1")
  [[ $code == 200 || $code == 409 ]] || die "creating bucket $1 failed with HTTP $code: $(cat "$WEIR_RUN/s3-bucket.out")"
}

stop() { stop_bg s3; }

status() {
  if is_running s3 && port_open "$S3_PORT"; then
    echo "s3       up    http://127.0.0.1:$S3_PORT bucket=$S3_BUCKET key=$S3_ACCESS_KEY (versitygw $VERSITYGW_VERSION)  log: $S3_LOG"
  else echo "s3       down  log: $S3_LOG"; return 1; fi
}

case "${1:-}" in
  install|start|stop|status) "$1" ;;
  *) die "usage: s3.sh install|start|stop|status" ;;
esac
