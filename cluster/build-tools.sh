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

K8S_VERSION="${K8S_VERSION:-v1.37.2}"
ETCD_VERSION="${ETCD_VERSION:-v3.6.16}"
HELM_VERSION="${HELM_VERSION:-v3.22.0}"
CACHE="${PACKGATE_CACHE:-$HOME/.cache/packgate}"
BIN="$CACHE/bin"
SRC="$CACHE/src"
export GOFLAGS="${GOFLAGS:--buildvcs=false} -trimpath"
export CGO_ENABLED=0

if [[ "${1:-}" == "--print-dir" ]]; then echo "$BIN"; exit 0; fi
mkdir -p "$BIN" "$SRC"

say() { printf '[build-tools %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

# Each tool lands at $BIN/<tool>-<version>; a stable symlink $BIN/<tool> points at it.
have() { [[ -x "$BIN/$1-$2" ]]; }
link() { ln -sfn "$1-$2" "$BIN/$1"; }

# go build with a heartbeat, so a cold build of many minutes shows it is alive.
go_build() {
  local out="$1"; shift
  local start=$SECONDS
  ( while sleep 60; do say "  ... still compiling $(basename "$out") ($(( (SECONDS - start) / 60 )) min)"; done ) &
  local beat=$!
  local rc=0
  go build -o "$out.tmp" "$@" || rc=$?
  kill "$beat" 2>/dev/null || true
  wait "$beat" 2>/dev/null || true
  [[ $rc -eq 0 ]] || { rm -f "$out.tmp"; say "FAILED: go build $*"; return $rc; }
  mv "$out.tmp" "$out"
  say "  built $(basename "$out") in $(( SECONDS - start )) s"
}

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

k8s_ldflags() {
  local pkg date
  date="$(date -u +%Y-%m-%dT%H:%M:%SZ)"
  local minor="${K8S_VERSION#v1.}"; minor="${minor%%.*}"
  for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    printf -- '-X %s.gitVersion=%s ' "$pkg" "$K8S_VERSION"
    printf -- '-X %s.gitMajor=1 -X %s.gitMinor=%s ' "$pkg" "$pkg" "$minor"
    printf -- '-X %s.gitTreeState=clean -X %s.buildDate=%s ' "$pkg" "$pkg" "$date"
  done
  printf -- '-s -w'
}

build_kubernetes() {
  local tools=(kube-apiserver kube-controller-manager kubectl) missing=()
  for t in "${tools[@]}"; do have "$t" "$K8S_VERSION" || missing+=("$t"); done
  if [[ ${#missing[@]} -gt 0 ]]; then
    say "building ${missing[*]} $K8S_VERSION"
    local dir="$SRC/kubernetes-$K8S_VERSION"
    mkdir -p "$dir"
    ( cd "$dir"
      if [[ ! -f go.mod ]]; then
        # k8s.io/kubernetes requires its staging modules at v0.0.0 and replaces them with local
        # paths, which a dependent module cannot see: replace each with its published version.
        local staged
        staged="$(go mod download -json "k8s.io/kubernetes@$K8S_VERSION" | sed -n 's/.*"GoMod": "\(.*\)",/\1/p')"
        { echo "module packgate.local/kubernetes-wrapper"
          echo
          echo "go 1.26"
          echo
          echo "replace ("
          sed -n 's#^\s*\(k8s.io/[a-z0-9-]*\) => ./staging/.*#\1#p' "$staged" |
            while read -r m; do echo "	$m => $m v0${K8S_VERSION#v1}"; done
          echo ")"
        } > go.mod
        cat > tools.go <<'GO'
//go:build tools

package tools

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
	_ "k8s.io/kubernetes/cmd/kubectl"
)
GO
        go get "k8s.io/kubernetes@$K8S_VERSION"
        go mod tidy
      fi
      local ldf; ldf="$(k8s_ldflags)"
      for t in "${missing[@]}"; do
        go_build "$BIN/$t-$K8S_VERSION" -tags selinux,notest,grpcnotrace -ldflags "$ldf" "k8s.io/kubernetes/cmd/$t"
      done
    )
  fi
  for t in "${tools[@]}"; do link "$t" "$K8S_VERSION"; done
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
