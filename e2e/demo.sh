#!/usr/bin/env bash
# The main job on the local simulated cluster, as far as it exists today: the rollout
# agent is not built yet, so this starts the local cluster with the demo scenario
# (simulated nodes in three zones, an OnDelete ztunnel DaemonSet, a waypoint,
# applications under PDBs), shows its nodes and ztunnel pods, runs the preflight checks,
# drains one node with `ztunnel-rollout drain` (evictions through PDBs, live report),
# uncordons it, and stops the cluster.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
"$root/e2e/build-control-plane.sh"
cargo build --locked --quiet --bins

state=$(mktemp -d)
kubeconfig="$state/kubeconfig"
coproc CLUSTER { exec "$root/target/debug/local-cluster" up --demo --exit-on-stdin-eof --kubeconfig-out "$kubeconfig" 2>"$state/local-cluster.log"; }
cluster_in=${CLUSTER[1]}
cleanup() {
  exec {cluster_in}>&- 2>/dev/null || true
  wait "$CLUSTER_PID" 2>/dev/null || true
  rm -rf "$state"
}
trap cleanup EXIT
# One JSON line on stdout means ready.
if ! read -r -t 180 _ready <&"${CLUSTER[0]}"; then
  echo "the local cluster did not start:" >&2
  cat "$state/local-cluster.log" >&2
  exit 1
fi

kubectl() { "$root/e2e/bin/kubectl" --kubeconfig "$kubeconfig" "$@"; }
zr() { "$root/target/debug/ztunnel-rollout" --kubeconfig "$kubeconfig" "$@"; }

echo "== waiting for ztunnel on every node and the demo workloads"
nodes=$(kubectl get nodes --no-headers | wc -l)
kubectl -n istio-system wait daemonset/ztunnel --for=jsonpath='{.status.numberReady}'="$nodes" --timeout=120s
kubectl -n demo rollout status deployment/productpage deployment/reviews deployment/waypoint --timeout=120s
echo
echo "== nodes and their ztunnel pods"
kubectl get nodes -L topology.kubernetes.io/zone
kubectl -n istio-system get pods -o wide -L app.kubernetes.io/version,controller-revision-hash
echo
echo "== ztunnel-rollout preflight"
zr preflight || true
echo
node=$(kubectl -n demo get pods -l app=reviews -o jsonpath='{.items[0].spec.nodeName}')
echo "== ztunnel-rollout drain $node"
zr drain "$node" --timeout 2m
echo
echo "== where the demo pods run now"
kubectl -n demo get pods -o wide
kubectl uncordon "$node"
echo
echo "The rollout agent (cordon, drain, replace ztunnel, verify, uncordon, wave by wave) is next; see README.md."
