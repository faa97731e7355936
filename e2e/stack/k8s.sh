#!/usr/bin/env bash
# A real Kubernetes control plane on 127.0.0.1: etcd, kube-apiserver, kube-controller-manager
# and kube-scheduler built from their Go modules, kubectl from k8s.io/kubernetes too, serving
# certificates and kubeconfigs generated with openssl. There is no kubelet: the node agent
# (e2e/src/bin/node_agent.rs) runs Pods scheduled to its Node as local processes.
# Usage: k8s.sh install|start|stop|status|kubectl ARGS
source "$(dirname "$0")/lib.sh"

K8S_BIN=$WEIR_CACHE/k8s-$K8S_VERSION/bin
ETCD_BIN=$WEIR_CACHE/etcd-$ETCD_VERSION/bin/etcd
K8S_RUN=$WEIR_RUN/k8s
PKI=$K8S_RUN/pki
KUBECONFIG_ADMIN=$K8S_RUN/admin.kubeconfig
GO_VERSION=$(go env GOVERSION | sed 's/^go//; s/\.[0-9]*$//')

install() {
  install_k8s
  install_etcd
}

install_k8s() {
  # The stamp: binaries built before they carried their version (they reported v0.0.0) relink.
  [[ -x $K8S_BIN/kubectl && -x $K8S_BIN/kube-apiserver && -f $K8S_BIN/.versioned ]] && return 0
  log "building Kubernetes $K8S_VERSION (kube-apiserver, kube-controller-manager, kube-scheduler, kubectl) from the Go module proxy"
  local mod=$WEIR_CACHE/k8s-$K8S_VERSION/mod
  mkdir -p "$mod" "$K8S_BIN"
  (
    cd "$mod"
    local upstream
    upstream=$(go mod download -json "k8s.io/kubernetes@$K8S_VERSION" | python3 -c 'import json,sys; print(json.load(sys.stdin)["GoMod"])')
    python3 "$STACK_DIR/k8s/gomod.py" "$upstream" "$K8S_VERSION" "$GO_VERSION" >go.mod
    grep -E '^godebug' "$upstream" >>go.mod || true
    cat >tools.go <<'GO'
//go:build tools

package tools
GO
    go get "k8s.io/kubernetes/cmd/kube-apiserver@$K8S_VERSION" "k8s.io/kubernetes/cmd/kube-controller-manager@$K8S_VERSION" \
      "k8s.io/kubernetes/cmd/kube-scheduler@$K8S_VERSION" "k8s.io/kubernetes/cmd/kubectl@$K8S_VERSION"
    # The version stamps that Kubernetes' own build sets (hack/lib/version.sh), so /version and
    # `kubectl version` report $K8S_VERSION and charts' kubeVersion constraints can check it.
    local minor=${K8S_VERSION#v1.}
    minor=${minor%%.*}
    local ldflags=""
    for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
      ldflags+=" -X $pkg.gitVersion=$K8S_VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor -X $pkg.gitTreeState=clean"
    done
    go build -trimpath -ldflags "$ldflags" -o "$K8S_BIN/" k8s.io/kubernetes/cmd/kube-apiserver \
      k8s.io/kubernetes/cmd/kube-controller-manager k8s.io/kubernetes/cmd/kube-scheduler k8s.io/kubernetes/cmd/kubectl
    touch "$K8S_BIN/.versioned"
  ) || die "building Kubernetes $K8S_VERSION failed"
}

install_etcd() {
  [[ -x $ETCD_BIN ]] && return 0
  log "building etcd $ETCD_VERSION from the Go module proxy"
  local mod=$WEIR_CACHE/etcd-$ETCD_VERSION/mod
  mkdir -p "$mod" "$(dirname "$ETCD_BIN")"
  (
    cd "$mod"
    printf 'module weir.dev/stack/etcd\n\ngo %s\n' "$GO_VERSION" >go.mod
    go get "go.etcd.io/etcd/server/v3@$ETCD_VERSION"
    go build -trimpath -o "$ETCD_BIN" go.etcd.io/etcd/server/v3
  ) || die "building etcd $ETCD_VERSION failed"
}

case "${1:-}" in
  install) install ;;
  *) source "$STACK_DIR/k8s/run.sh"; "$@" ;;
esac
