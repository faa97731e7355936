#!/usr/bin/env bash
# The CRDs of Argo CD (Application) and Flux (GitRepository, Kustomization, HelmRelease), taken
# from their Go modules, so the GitOps examples are checked by the local API server (server-side
# dry run) without installing either tool. helm-controller's module holds only the API types
# (its own module needs a newer Go): its CRD is generated from them with controller-gen, as
# Flux's build does.
# Usage: gitops.sh install | gitops.sh dir (prints the folder of the CRDs)
source "$(dirname "$0")/lib.sh"
ARGOCD_VERSION=${ARGOCD_VERSION:-v3.4.0}
FLUX_SOURCE_VERSION=${FLUX_SOURCE_VERSION:-v1.9.6}
FLUX_KUSTOMIZE_VERSION=${FLUX_KUSTOMIZE_VERSION:-v1.9.6}
FLUX_HELM_API_VERSION=${FLUX_HELM_API_VERSION:-v1.6.5}
CONTROLLER_TOOLS_VERSION=${CONTROLLER_TOOLS_VERSION:-v0.23.0}
CRDS=$WEIR_CACHE/gitops-crds-$ARGOCD_VERSION-$FLUX_SOURCE_VERSION-$FLUX_KUSTOMIZE_VERSION-$FLUX_HELM_API_VERSION

module_dir() { # MODULE@VERSION -> its folder in the module cache (downloaded once)
  go mod download -json "$1" | python3 -c 'import json, sys; j = json.load(sys.stdin); print(j.get("Dir") or sys.exit(j.get("Error")))'
}

install() {
  [[ -s $CRDS/done ]] && return 0
  log "taking the Argo CD and Flux CRDs from their Go modules"
  mkdir -p "$CRDS"
  (
    cd "$WEIR_CACHE"
    argo=$(module_dir "github.com/argoproj/argo-cd/v3@$ARGOCD_VERSION")
    source=$(module_dir "github.com/fluxcd/source-controller@$FLUX_SOURCE_VERSION")
    kustomize=$(module_dir "github.com/fluxcd/kustomize-controller@$FLUX_KUSTOMIZE_VERSION")
    cp "$argo/manifests/crds/application-crd.yaml" "$CRDS/argocd-application.yaml"
    cp "$source/config/crd/bases/source.toolkit.fluxcd.io_gitrepositories.yaml" "$CRDS/flux-gitrepository.yaml"
    cp "$kustomize/config/crd/bases/kustomize.toolkit.fluxcd.io_kustomizations.yaml" "$CRDS/flux-kustomization.yaml"
    local gen=$WEIR_CACHE/gitops-crdgen-$FLUX_HELM_API_VERSION-$CONTROLLER_TOOLS_VERSION
    mkdir -p "$gen"
    cd "$gen"
    printf 'module weir.dev/stack/fluxcrd\n\ngo %s\n' "$(go env GOVERSION | sed 's/^go//; s/\.[0-9]*$//')" >go.mod
    printf '//go:build tools\n\npackage tools\n\nimport (\n\t_ "github.com/fluxcd/helm-controller/api/v2"\n\t_ "sigs.k8s.io/controller-tools/cmd/controller-gen"\n)\n' >tools.go
    go get "github.com/fluxcd/helm-controller/api@$FLUX_HELM_API_VERSION" "sigs.k8s.io/controller-tools/cmd/controller-gen@$CONTROLLER_TOOLS_VERSION"
    go mod tidy
    go build -o controller-gen sigs.k8s.io/controller-tools/cmd/controller-gen
    rm -rf out
    ./controller-gen crd paths=github.com/fluxcd/helm-controller/api/v2 output:crd:dir=out
    cp out/helm.toolkit.fluxcd.io_helmreleases.yaml "$CRDS/flux-helmrelease.yaml"
  ) || die "taking the GitOps CRDs failed"
  chmod u+w "$CRDS"/*.yaml
  echo ok >"$CRDS/done"
}

case "${1:-}" in
  install) install ;;
  dir) echo "$CRDS" ;;
  *) die "usage: gitops.sh install|dir" ;;
esac
