#!/usr/bin/env bash
# promtool, built from Prometheus' Go module, to check and unit-test the chart's alert rules.
# Usage: promtool.sh install | promtool.sh run ARGS (a promtool command line)
source "$(dirname "$0")/lib.sh"
PROMETHEUS_VERSION=${PROMETHEUS_VERSION:-v0.316.0}
PROMTOOL=$WEIR_CACHE/promtool-$PROMETHEUS_VERSION/bin/promtool

install() {
  [[ -x $PROMTOOL ]] && return 0
  log "building promtool (Prometheus $PROMETHEUS_VERSION) from the Go module proxy"
  GOBIN=$(dirname "$PROMTOOL") go install "github.com/prometheus/prometheus/cmd/promtool@$PROMETHEUS_VERSION" \
    || die "go install github.com/prometheus/prometheus/cmd/promtool@$PROMETHEUS_VERSION failed"
}

case "${1:-}" in
  install) install ;;
  run)
    shift
    [[ -x $PROMTOOL ]] || die "$PROMTOOL is missing; run e2e/stack/promtool.sh install"
    exec "$PROMTOOL" "$@" ;;
  *) die "usage: promtool.sh install | promtool.sh run ARGS" ;;
esac
