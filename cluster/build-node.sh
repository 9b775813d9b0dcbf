#!/usr/bin/env bash
# Why this exists: tests that need running pods join a real kubelet node to the local control
# plane, and this machine has no prebuilt container runtime. We build runc, containerd, the CNI
# plugins, kubelet, kube-scheduler, kube-proxy and the pause binary from pinned Go modules (pause
# from the kubernetes module's C source) and cache them outside the checkout, keyed by version,
# like cluster/build-tools.sh does for the control plane.
#
# Usage: cluster/build-node.sh              build what is missing, print the bin directory
#        cluster/build-node.sh --print-dir  print the bin directory only
set -euo pipefail

RUNC_VERSION="${RUNC_VERSION:-v1.5.3}"
CONTAINERD_VERSION="${CONTAINERD_VERSION:-v2.4.2}"
CNI_VERSION="${CNI_VERSION:-v1.10.0}"
# shellcheck source=cluster/build-lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/build-lib.sh"

# go install into a scratch directory, then move each binary to its versioned name.
go_install() { # go_install VERSION CGO TAGS LDFLAGS pkg@ver...
  local version=$1 cgo=$2 tags=$3 ldflags=$4; shift 4
  local out; out="$(mktemp -d "$CACHE/.build.XXXXXX")"
  local start=$SECONDS
  CGO_ENABLED=$cgo GOBIN="$out" go install -tags "$tags" -ldflags "$ldflags" "$@"
  local f
  for f in "$out"/*; do mv "$f" "$BIN/$(basename "$f")-$version"; link "$(basename "$f")" "$version"; done
  rmdir "$out"
  say "  built $(cd "$BIN" && ls -d -- *-"$version" | tr '\n' ' ')in $(( SECONDS - start )) s"
}

build_runc() {
  have runc "$RUNC_VERSION" && { link runc "$RUNC_VERSION"; return; }
  # runc is cgo (libcontainer/nsenter is C) and its seccomp support links libseccomp.
  if ! [[ -f /usr/include/seccomp.h ]]; then
    say "installing libseccomp-dev (apt-get)"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q libseccomp-dev >/dev/null
  fi
  say "building runc $RUNC_VERSION"
  go_install "$RUNC_VERSION" 1 "seccomp urfave_cli_no_docs" \
    "-s -w -X main.version=${RUNC_VERSION#v}" "github.com/opencontainers/runc@$RUNC_VERSION"
}

build_containerd() {
  local have_all=1 t
  for t in containerd ctr containerd-shim-runc-v2; do have "$t" "$CONTAINERD_VERSION" || have_all=0; done
  if [[ $have_all == 0 ]]; then
    say "building containerd $CONTAINERD_VERSION"
    local m=github.com/containerd/containerd/v2
    go_install "$CONTAINERD_VERSION" 0 "no_btrfs no_devmapper no_zfs urfave_cli_no_docs" \
      "-s -w -X $m/version.Version=$CONTAINERD_VERSION -X $m/version.Revision=module" \
      "$m/cmd/containerd@$CONTAINERD_VERSION" "$m/cmd/ctr@$CONTAINERD_VERSION" \
      "$m/cmd/containerd-shim-runc-v2@$CONTAINERD_VERSION"
  fi
  for t in containerd ctr containerd-shim-runc-v2; do link "$t" "$CONTAINERD_VERSION"; done
}

# CNI plugins live in their own directory: kubelet/containerd look them up by plain name there.
build_cni() {
  local dir="$CACHE/cni-$CNI_VERSION"
  [[ -x $dir/bridge && -x $dir/host-local && -x $dir/loopback && -x $dir/portmap ]] && return
  say "building CNI plugins $CNI_VERSION"
  local m=github.com/containernetworking/plugins start=$SECONDS
  mkdir -p "$dir.tmp"
  CGO_ENABLED=0 GOBIN="$dir.tmp" go install \
    -ldflags "-s -w -X $m/pkg/utils/buildversion.BuildVersion=$CNI_VERSION" \
    "$m/plugins/main/loopback@$CNI_VERSION" "$m/plugins/main/bridge@$CNI_VERSION" \
    "$m/plugins/ipam/host-local@$CNI_VERSION" "$m/plugins/meta/portmap@$CNI_VERSION"
  rm -rf "$dir" && mv "$dir.tmp" "$dir"
  say "  built CNI plugins in $(( SECONDS - start )) s"
}

build_kubernetes_node() {
  build_k8s_commands "$SRC/kubernetes-node-$K8S_VERSION" packgate.local/kubernetes-node-wrapper \
    kubelet kube-scheduler kube-proxy
}

# The sandbox ("pause") image's only binary, from the kubernetes module's own source.
build_pause() {
  have pause "$K8S_VERSION" && { link pause "$K8S_VERSION"; return; }
  local dir
  dir="$(k8s_module_field Dir)"
  gcc -Os -static -DVERSION="$K8S_VERSION" -o "$BIN/pause-$K8S_VERSION.tmp" "$dir/build/pause/linux/pause.c"
  strip "$BIN/pause-$K8S_VERSION.tmp"
  mv "$BIN/pause-$K8S_VERSION.tmp" "$BIN/pause-$K8S_VERSION"
  link pause "$K8S_VERSION"
}

# kube-proxy (iptables mode) programs Service rules with iptables-restore.
ensure_iptables() {
  command -v iptables-restore >/dev/null && return
  say "installing iptables (apt-get)"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q iptables >/dev/null
}

start=$SECONDS
ensure_iptables
build_runc
build_cni
build_containerd
build_pause
build_kubernetes_node
say "node binaries ready in $BIN ($(( SECONDS - start )) s)"
echo "$BIN"
