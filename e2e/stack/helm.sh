#!/usr/bin/env bash
# Helm, built from its Go module (helm.sh/helm/v3), for the chart's tests; runs against the
# local stack's API server.
# Usage: helm.sh install (builds it) | helm.sh run ARGS (a helm command line, e.g. run install ...)
source "$(dirname "$0")/lib.sh"
HELM=$WEIR_CACHE/helm-$HELM_VERSION/bin/helm

install() {
  [[ -x $HELM ]] && return 0
  log "building Helm $HELM_VERSION from the Go module proxy"
  GOBIN=$(dirname "$HELM") go install -trimpath "helm.sh/helm/v3/cmd/helm@$HELM_VERSION" \
    || die "go install helm.sh/helm/v3/cmd/helm@$HELM_VERSION failed"
}

case "${1:-}" in
  install) install ;;
  run)
    shift
    [[ -x $HELM ]] || die "$HELM is missing; run e2e/stack/helm.sh install"
    KUBECONFIG=${KUBECONFIG:-$WEIR_RUN/k8s/admin.kubeconfig} exec "$HELM" "$@" ;;
  *) die "usage: helm.sh install | helm.sh run ARGS" ;;
esac
