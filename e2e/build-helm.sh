#!/usr/bin/env bash
# Builds Helm from the Go module proxy, at HELM_VERSION pinned in e2e/versions.env, into
# e2e/bin/helm (git-ignored), for the chart's tests (tests/chart.rs). Does nothing when
# the binary there was built from the same pin. Needs only Go.
set -euo pipefail

e2e_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
bin_dir="${ZTUNNEL_ROLLOUT_E2E_BIN:-$e2e_dir/bin}"
work_dir="$e2e_dir/.build/helm"
# shellcheck source=versions.env
source "$e2e_dir/versions.env"

stamp="$bin_dir/helm.pins"
want="HELM_VERSION=$HELM_VERSION builder=$(sha256sum "${BASH_SOURCE[0]}" | cut -c1-16)"
if [[ -x "$bin_dir/helm" && -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
  echo "helm $HELM_VERSION is up to date in $bin_dir"
  exit 0
fi
command -v go >/dev/null || { echo "error: Go is required to build Helm" >&2; exit 1; }
export CGO_ENABLED=0 GOFLAGS=-mod=mod GOWORK=off
started=$(date +%s)
mkdir -p "$bin_dir"
rm -rf "$work_dir" && mkdir -p "$work_dir"
rm -f "$stamp"
printf 'module local/helm-build\n\ngo 1.24\n\nrequire helm.sh/helm/v3 %s\n' "$HELM_VERSION" >"$work_dir/go.mod"
echo "[build-helm] building helm $HELM_VERSION"
(cd "$work_dir" && go build -trimpath -ldflags "-s -w \
    -X helm.sh/helm/v3/internal/version.version=$HELM_VERSION" \
    -o "$bin_dir/helm" helm.sh/helm/v3/cmd/helm)
echo "$want" >"$stamp"
echo "[build-helm] done in $(( $(date +%s) - started ))s: $("$bin_dir/helm" version --short)"
