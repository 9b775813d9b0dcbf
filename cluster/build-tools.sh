#!/usr/bin/env bash
# Why this exists: the tests and the demo run a real Kubernetes control plane, and this machine
# has no prebuilt binaries to download. We build etcd, kube-apiserver, kube-controller-manager,
# kubectl and helm from pinned Go modules, one wrapper module per upstream project so their
# dependency graphs never mix, and cache the results outside the checkout, keyed by version, so
# a fresh clone (and CI) reuses them.
#
# Usage: cluster/build-tools.sh            build what is missing, print the bin directory
#        cluster/build-tools.sh --print-dir print the bin directory only
set -euo pipefail

ETCD_VERSION="${ETCD_VERSION:-v3.6.16}"
HELM_VERSION="${HELM_VERSION:-v3.22.0}"
export CGO_ENABLED=0
# shellcheck source=cluster/build-lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/build-lib.sh"

build_etcd() {
  have etcd "$ETCD_VERSION" && { link etcd "$ETCD_VERSION"; return; }
  say "building etcd $ETCD_VERSION"
  local dir="$SRC/etcd-$ETCD_VERSION"
  mkdir -p "$dir"
  # go install refuses modules with replace directives; a wrapper module builds the main package.
  ( cd "$dir"
    [[ -f go.mod ]] || go mod init packgate.local/etcd-wrapper >/dev/null 2>&1
    go get "go.etcd.io/etcd/server/v3@$ETCD_VERSION"
    cat > tools.go <<'GO'
//go:build tools

package tools

import _ "go.etcd.io/etcd/server/v3"
GO
    go mod tidy >/dev/null 2>&1 || true
    go_build "$BIN/etcd-$ETCD_VERSION" -ldflags "-s -w" go.etcd.io/etcd/server/v3
  )
  link etcd "$ETCD_VERSION"
}

build_kubernetes() {
  build_k8s_commands "$SRC/kubernetes-$K8S_VERSION" packgate.local/kubernetes-wrapper \
    kube-apiserver kube-controller-manager kubectl
}

build_helm() {
  have helm "$HELM_VERSION" && { link helm "$HELM_VERSION"; return; }
  say "building helm $HELM_VERSION"
  local major="${HELM_VERSION%%.*}"
  local dir="$SRC/helm-$HELM_VERSION"
  mkdir -p "$dir"
  ( cd "$dir"
    [[ -f go.mod ]] || go mod init packgate.local/helm-wrapper >/dev/null 2>&1
    cat > tools.go <<GO
//go:build tools

package tools

import _ "helm.sh/helm/$major/cmd/helm"
GO
    go get "helm.sh/helm/$major@$HELM_VERSION"
    go mod tidy
    go_build "$BIN/helm-$HELM_VERSION" \
      -ldflags "-s -w -X helm.sh/helm/$major/internal/version.version=$HELM_VERSION -X helm.sh/helm/$major/internal/version.gitTreeState=clean" \
      "helm.sh/helm/$major/cmd/helm"
  )
  link helm "$HELM_VERSION"
}

start=$SECONDS
build_etcd
build_kubernetes
build_helm
say "all tools ready in $BIN ($(( SECONDS - start )) s)"
echo "$BIN"
