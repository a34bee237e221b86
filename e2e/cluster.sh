#!/usr/bin/env bash
# Starts the local cluster with the demo fixtures and keeps it running until Ctrl-C.
# Its admin kubeconfig is written to e2e/.state/kubeconfig:
#   KUBECONFIG=e2e/.state/kubeconfig e2e/bin/kubectl get nodes,pods -A
# Tests can use it instead of starting their own:
#   ZTUNNEL_ROLLOUT_TEST_KUBECONFIG=e2e/.state/kubeconfig cargo test
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
"$root/e2e/build-control-plane.sh"
exec cargo run --locked --quiet -p ztunnel-rollout-testbed --bin local-cluster -- up --demo --kubeconfig-out "$root/e2e/.state/kubeconfig" "$@"
