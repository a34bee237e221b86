#!/usr/bin/env bash
# The project's test command: builds the local control plane if needed (Go, from the
# module proxy, pinned in e2e/versions.env), then runs every test. The integration tests
# start their own local clusters and stop them when they finish.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
"$root/e2e/build-control-plane.sh"
# tests/istio.rs installs Istio with istioctl and runs istiod (pilot-discovery).
"$root/e2e/build-istio.sh"
"$root/e2e/install-prometheus.sh"
# tests/image.rs checks and runs the image this writes (target/image/).
"$root/e2e/build-image.sh"
# tests/chart.rs runs real Helm.
"$root/e2e/build-helm.sh"
"$root/e2e/fetch-monitoring-crds.sh"
# The integration tests start local-cluster (the testbed crate's binary) from their own
# profile directory; build it even when "$@" selects only some tests.
cargo build --locked -p ztunnel-rollout-testbed --bin local-cluster
# Every test binary's cluster writes its API server's audit log there; after a full run
# (no arguments), rbac-audit checks the agent's requests in them against manifests/'s
# RBAC: every rule used, every request granted.
audit_dir="${CARGO_TARGET_DIR:-$root/target}/tmp/rbac-audit"
if [ $# -eq 0 ]; then rm -rf "$audit_dir"; fi
status=0
# Every test binary runs even when one fails: a failure does not hide the others, and
# rbac-audit reads every binary's audit log, not only those that ran before it.
cargo test --locked --no-fail-fast "$@" || status=$?
if [ $# -eq 0 ]; then
  cargo run --locked -q -p ztunnel-rollout-testbed --bin rbac-audit -- "$audit_dir" || status=1
fi
exit "$status"
