#!/usr/bin/env bash
# Fetches the Prometheus Operator's ServiceMonitor and PrometheusRule CRDs (from its Go
# module, at PROMETHEUS_OPERATOR_VERSION pinned in e2e/versions.env) into
# e2e/bin/monitoring-crds/, so that tests/chart.rs can have the API server validate the
# chart's ServiceMonitor and PrometheusRule. Does nothing when they are there already.
set -euo pipefail
e2e_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
bin_dir="${ZTUNNEL_ROLLOUT_E2E_BIN:-$e2e_dir/bin}"
# shellcheck source=versions.env
source "$e2e_dir/versions.env"
out="$bin_dir/monitoring-crds"
stamp="$out/.version"
if [[ -f "$stamp" && "$(cat "$stamp")" == "$PROMETHEUS_OPERATOR_VERSION" ]]; then
  echo "monitoring CRDs $PROMETHEUS_OPERATOR_VERSION are up to date in $out"
  exit 0
fi
command -v go >/dev/null || { echo "error: Go is required to fetch the monitoring CRDs" >&2; exit 1; }
dir=$(cd "$e2e_dir" && GOFLAGS=-mod=mod GOWORK=off go mod download -json \
  "github.com/prometheus-operator/prometheus-operator@$PROMETHEUS_OPERATOR_VERSION" |
  sed -n 's/^\s*"Dir": "\(.*\)",$/\1/p')
rm -rf "$out" && mkdir -p "$out"
for crd in servicemonitors prometheusrules; do
  cp "$dir/example/prometheus-operator-crd/monitoring.coreos.com_$crd.yaml" "$out/"
done
chmod -R u+w "$out"
echo "$PROMETHEUS_OPERATOR_VERSION" >"$stamp"
echo "monitoring CRDs $PROMETHEUS_OPERATOR_VERSION in $out"
