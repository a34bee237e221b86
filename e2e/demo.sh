#!/usr/bin/env bash
# The main job on the local simulated cluster. Until the rollout agent exists this starts
# the cluster with the demo fixtures (simulated nodes in three zones, an OnDelete ztunnel
# DaemonSet, a waypoint, applications under PDBs), lists the nodes with their ztunnel
# pods, and stops the cluster.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
"$root/e2e/build-control-plane.sh"
exec cargo run --locked --quiet --bin local-cluster -- demo "$@"
