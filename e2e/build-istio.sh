#!/usr/bin/env bash
# Builds Istio's istioctl and pilot-discovery (istiod) from the Go module proxy, at
# ISTIO_MODULE_VERSION pinned in e2e/versions.env, into e2e/bin/ (git-ignored), and
# copies Istio's install manifests (charts, profiles) and the Gateway API CRDs
# (GATEWAY_API_VERSION, standard channel) from the modules' own files beside them.
# Does nothing when e2e/bin/ holds a build from the same pins. Needs only Go.
set -euo pipefail

e2e_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
bin_dir="${ZTUNNEL_ROLLOUT_E2E_BIN:-$e2e_dir/bin}"
work_dir="$e2e_dir/.build/istio"
# shellcheck source=versions.env
source "$e2e_dir/versions.env"

stamp="$bin_dir/istio.pins"
want="ISTIO_MODULE_VERSION=$ISTIO_MODULE_VERSION ISTIO_BUILD_VERSION=$ISTIO_BUILD_VERSION GATEWAY_API_VERSION=$GATEWAY_API_VERSION builder=$(sha256sum "${BASH_SOURCE[0]}" | cut -c1-16)"
present() {
  [[ -x "$bin_dir/istioctl" && -x "$bin_dir/pilot-discovery" && -d "$bin_dir/istio-manifests" && -d "$bin_dir/gateway-api-crds" ]]
}
if present && [[ -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
  echo "istioctl and pilot-discovery $ISTIO_BUILD_VERSION are up to date in $bin_dir"
  exit 0
fi
command -v go >/dev/null || { echo "error: Go is required to build Istio's istioctl and pilot-discovery" >&2; exit 1; }
export CGO_ENABLED=0 GOFLAGS=-mod=mod GOWORK=off
started=$(date +%s)
log() { echo "[build-istio $(( $(date +%s) - started ))s] $*"; }
mkdir -p "$bin_dir"
rm -rf "$work_dir" && mkdir -p "$work_dir"
rm -f "$stamp"

# Istio's go.mod has no replace lines, so a wrapper module that requires it resolves
# every dependency as Istio pinned it.
istio_mod=$(cd "$work_dir" && go mod download -json "istio.io/istio@$ISTIO_MODULE_VERSION" | sed -n 's/^\s*"GoMod": "\(.*\)",$/\1/p')
go_directive=$(sed -n 's/^go \([0-9.]*\)$/\1/p' "$istio_mod")
printf 'module local/istio-build\n\ngo %s\n\nrequire (\n\tistio.io/istio %s\n\tsigs.k8s.io/gateway-api %s\n)\n' \
  "$go_directive" "$ISTIO_MODULE_VERSION" "$GATEWAY_API_VERSION" >"$work_dir/go.mod"
version_flags="-X istio.io/istio/pkg/version.buildVersion=$ISTIO_BUILD_VERSION \
  -X istio.io/istio/pkg/version.buildGitRevision=${ISTIO_MODULE_VERSION##*-} \
  -X istio.io/istio/pkg/version.buildTag=$ISTIO_BUILD_VERSION \
  -X istio.io/istio/pkg/version.buildStatus=Clean \
  -X istio.io/istio/pkg/version.buildHub=docker.io/istio"
log "building istioctl and pilot-discovery from istio.io/istio@$ISTIO_MODULE_VERSION"
(cd "$work_dir" && go build -trimpath -ldflags "-s -w $version_flags" -o "$bin_dir/" \
    istio.io/istio/istioctl/cmd/istioctl istio.io/istio/pilot/cmd/pilot-discovery)

# Go's version selection takes the higher of Istio's requirement and the pin: the CRDs
# must be the pinned release.
gateway_version=$(cd "$work_dir" && go list -m -f '{{.Version}}' sigs.k8s.io/gateway-api)
if [[ "$gateway_version" != "$GATEWAY_API_VERSION" ]]; then
  echo "error: Istio requires sigs.k8s.io/gateway-api $gateway_version, above GATEWAY_API_VERSION=$GATEWAY_API_VERSION in e2e/versions.env: raise the pin" >&2
  exit 1
fi
istio_dir=$(cd "$work_dir" && go list -m -f '{{.Dir}}' istio.io/istio)
gateway_dir=$(cd "$work_dir" && go list -m -f '{{.Dir}}' sigs.k8s.io/gateway-api)
rm -rf "$bin_dir/istio-manifests" "$bin_dir/gateway-api-crds"
cp -r "$istio_dir/manifests" "$bin_dir/istio-manifests"
mkdir -p "$bin_dir/gateway-api-crds"
cp "$gateway_dir"/config/crd/standard/*.yaml "$bin_dir/gateway-api-crds/"
chmod -R u+w "$bin_dir/istio-manifests" "$bin_dir/gateway-api-crds"
echo "$want" >"$stamp"
log "done: $("$bin_dir/istioctl" version --remote=false 2>/dev/null | head -n 1) in $bin_dir"
