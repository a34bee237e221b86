#!/usr/bin/env bash
# Builds the local control plane (etcd, kube-apiserver, kube-controller-manager,
# kube-scheduler, kubectl, kwok) from the Go module proxy, at the versions pinned in
# e2e/versions.env, into e2e/bin/ (git-ignored). Does nothing when the binaries there
# were built from the same pins. Needs only Go (>= the version the pins require).
set -euo pipefail

e2e_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
versions_file="$e2e_dir/versions.env"
bin_dir="${ZTUNNEL_ROLLOUT_E2E_BIN:-$e2e_dir/bin}"
work_dir="$e2e_dir/.build"
# shellcheck source=versions.env
source "$versions_file"

components=(etcd kube-apiserver kube-controller-manager kube-scheduler kubectl kwok)
stamp="$bin_dir/.pins"
want=$(grep -E '^(KUBERNETES_VERSION|KUBERNETES_STAGING_VERSION|ETCD_VERSION|KWOK_VERSION)=' "$versions_file"; echo "builder=$(sha256sum "${BASH_SOURCE[0]}" | cut -c1-16)")

all_present() {
  for c in "${components[@]}"; do [[ -x "$bin_dir/$c" ]] || return 1; done
}
if [[ -f "$stamp" ]] && [[ "$(cat "$stamp")" == "$want" ]] && all_present; then
  echo "control plane binaries are up to date in $bin_dir"
  exit 0
fi

command -v go >/dev/null || { echo "error: Go is required to build the local control plane (https://go.dev/doc/install)" >&2; exit 1; }
export CGO_ENABLED=0 GOFLAGS=-mod=mod GOWORK=off
mkdir -p "$bin_dir" "$work_dir"
rm -f "$stamp"
started=$(date +%s)
log() { echo "[build-control-plane $(( $(date +%s) - started ))s] $*"; }

# Kubernetes: k8s.io/kubernetes replaces its staging modules with ./staging paths, which
# `go install` refuses; a wrapper module requires it and points every staging module at
# its published release instead. The list comes from the upstream go.mod itself.
build_kubernetes() {
  local mod="$work_dir/kubernetes"
  rm -rf "$mod" && mkdir -p "$mod"
  log "fetching k8s.io/kubernetes@$KUBERNETES_VERSION"
  local upstream_mod
  upstream_mod=$(cd "$mod" && go mod download -json "k8s.io/kubernetes@$KUBERNETES_VERSION" | sed -n 's/^\s*"GoMod": "\(.*\)",$/\1/p')
  local go_directive
  go_directive=$(sed -n 's/^go \([0-9.]*\)$/\1/p' "$upstream_mod")
  {
    echo "module local/kubernetes-build"
    echo
    echo "go $go_directive"
    echo
    echo "require k8s.io/kubernetes $KUBERNETES_VERSION"
    echo
    echo "replace ("
    sed -n 's#^\s*\(k8s.io/[a-z0-9-]*\) => ./staging/src/.*$#\t\1 => \1 '"$KUBERNETES_STAGING_VERSION"'#p' "$upstream_mod"
    echo ")"
  } >"$mod/go.mod"
  log "building kube-apiserver, kube-controller-manager, kube-scheduler, kubectl"
  (cd "$mod" && go build -trimpath -ldflags "-s -w \
      -X k8s.io/component-base/version.gitVersion=$KUBERNETES_VERSION \
      -X k8s.io/client-go/pkg/version.gitVersion=$KUBERNETES_VERSION \
      -X k8s.io/component-base/version.gitMajor=1 \
      -X k8s.io/component-base/version.gitMinor=$(echo "$KUBERNETES_VERSION" | cut -d. -f2)" \
      -o "$bin_dir/" \
      k8s.io/kubernetes/cmd/kube-apiserver \
      k8s.io/kubernetes/cmd/kube-controller-manager \
      k8s.io/kubernetes/cmd/kube-scheduler \
      k8s.io/kubernetes/cmd/kubectl)
}

# etcd: go.etcd.io/etcd/server/v3 also carries replace lines; a wrapper that requires
# it resolves its sibling modules (api, client, pkg) to their published releases.
build_etcd() {
  local mod="$work_dir/etcd"
  rm -rf "$mod" && mkdir -p "$mod"
  printf 'module local/etcd-build\n\ngo 1.24\n\nrequire go.etcd.io/etcd/server/v3 %s\n' "$ETCD_VERSION" >"$mod/go.mod"
  log "building etcd $ETCD_VERSION"
  (cd "$mod" && go build -trimpath -ldflags "-s -w" -o "$bin_dir/etcd" go.etcd.io/etcd/server/v3)
}

build_kwok() {
  local mod="$work_dir/kwok"
  rm -rf "$mod" && mkdir -p "$mod"
  printf 'module local/kwok-build\n\ngo 1.24\n\nrequire sigs.k8s.io/kwok %s\n' "$KWOK_VERSION" >"$mod/go.mod"
  log "building kwok $KWOK_VERSION"
  (cd "$mod" && go build -trimpath -ldflags "-s -w" -o "$bin_dir/kwok" sigs.k8s.io/kwok/cmd/kwok)
  # kwok v0.8 needs its stage definitions passed explicitly; keep the module's own copies.
  local kwok_dir
  kwok_dir=$(cd "$mod" && go list -m -f '{{.Dir}}' sigs.k8s.io/kwok)
  rm -rf "$bin_dir/kwok-stages" && mkdir -p "$bin_dir/kwok-stages"
  cp -r "$kwok_dir/kustomize/stage/." "$bin_dir/kwok-stages/"
  chmod -R u+w "$bin_dir/kwok-stages"
}

build_etcd
build_kwok
build_kubernetes
echo "$want" >"$stamp"
log "done: $(cd "$bin_dir" && echo "${components[*]}") in $bin_dir"
