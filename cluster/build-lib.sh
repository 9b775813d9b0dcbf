# shellcheck shell=bash
# Why this exists: cluster/build-tools.sh (the control plane) and cluster/build-node.sh (the node)
# build from pinned Go modules into the same cache, the same way: versioned binaries behind stable
# symlinks, go build with a heartbeat, and Kubernetes commands from a wrapper module. This is that
# one way; both scripts source it (it runs nothing by itself but the shared set-up below).
#
# Sourced after `set -euo pipefail`; handles --print-dir for the sourcing script.

# The control plane and the node must run the same Kubernetes version.
K8S_VERSION="${K8S_VERSION:-v1.37.2}"
CACHE="${PACKGATE_CACHE:-$HOME/.cache/packgate}"
BIN="$CACHE/bin"
SRC="$CACHE/src"
export GOFLAGS="${GOFLAGS:--buildvcs=false} -trimpath"

if [[ "${1:-}" == "--print-dir" ]]; then echo "$BIN"; exit 0; fi
mkdir -p "$BIN" "$SRC"

BUILD_NAME="$(basename "$0" .sh)"
say() { printf '[%s %s] %s\n' "$BUILD_NAME" "$(date +%H:%M:%S)" "$*" >&2; }

# Each binary lands at $BIN/<name>-<version>; a stable symlink $BIN/<name> points at it (so, for
# one, containerd finds runc and its shim on PATH by their plain names).
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

# A field of `go mod download -json k8s.io/kubernetes@$K8S_VERSION` (Dir, GoMod, ...).
k8s_module_field() {
  go mod download -json "k8s.io/kubernetes@$K8S_VERSION" | sed -n "s/.*\"$1\": \"\(.*\)\",/\1/p"
}

# The version stamps `kube-* --version` reports, as the upstream release build sets them.
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

# build_k8s_commands DIR MODULE CMD...: build the k8s.io/kubernetes commands CMD (those missing
# from $BIN) in the wrapper module MODULE at DIR, then link them all. Each script has its own
# DIR, so the two never edit one go.mod.
build_k8s_commands() {
  local dir=$1 module=$2; shift 2
  local tools=("$@") missing=() t
  for t in "${tools[@]}"; do have "$t" "$K8S_VERSION" || missing+=("$t"); done
  if [[ ${#missing[@]} -gt 0 ]]; then
    say "building ${missing[*]} $K8S_VERSION"
    mkdir -p "$dir"
    ( cd "$dir"
      if [[ ! -f go.sum ]]; then
        # k8s.io/kubernetes requires its staging modules at v0.0.0 and replaces them with local
        # paths, which a dependent module cannot see: replace each with its published version.
        local staged
        staged="$(k8s_module_field GoMod)"
        { echo "module $module"
          echo
          echo "go 1.26"
          echo
          echo "replace ("
          sed -n 's#^\s*\(k8s.io/[a-z0-9-]*\) => ./staging/.*#\1#p' "$staged" |
            while read -r m; do echo "	$m => $m v0${K8S_VERSION#v1}"; done
          echo ")"
        } > go.mod
        { printf '//go:build tools\n\npackage tools\n\nimport (\n'
          printf '\t_ "k8s.io/kubernetes/cmd/%s"\n' $(printf '%s\n' "${tools[@]}" | LC_ALL=C sort)
          printf ')\n'
        } > tools.go
        go get "k8s.io/kubernetes@$K8S_VERSION"
        go mod tidy
      fi
      local ldf; ldf="$(k8s_ldflags)"
      for t in "${missing[@]}"; do
        CGO_ENABLED=0 go_build "$BIN/$t-$K8S_VERSION" -tags selinux,notest,grpcnotrace \
          -ldflags "$ldf" "k8s.io/kubernetes/cmd/$t"
      done
    )
  fi
  for t in "${tools[@]}"; do link "$t" "$K8S_VERSION"; done
}
