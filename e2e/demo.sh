#!/usr/bin/env bash
# The main job on the local simulated cluster: a real ztunnel rollout. Starts the local
# cluster with the demo scenario (12 simulated nodes in three zones, applications under
# PDBs), installs Istio as a user does — `istioctl install` (profile ambient: istiod,
# istio-cni and ztunnel, with Istio's OnDelete values), istiod on loopback, a waypoint
# rendered by istiod —, runs the preflight checks, upgrades ztunnel with istioctl (which
# then waits for every node), and lets the agent roll it out wave by wave (zone by zone,
# two nodes at a time): cordon, drain through the PDBs, replace ztunnel, wait for it to
# be Ready, uncordon. Progress is printed as it happens; the cluster stops at the end.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
"$root/e2e/build-control-plane.sh"
"$root/e2e/build-istio.sh"
cargo build --locked --quiet --bins

state=$(mktemp -d)
kubeconfig="$state/kubeconfig"
# The cluster's state (etcd data, certificates, logs) lives under "$state", removed on exit.
coproc CLUSTER { exec "$root/target/debug/local-cluster" up --demo --istio --nodes 12 --exit-on-stdin-eof --state-dir "$state/cluster" --kubeconfig-out "$kubeconfig" 2>"$state/local-cluster.log"; }
cluster_in=${CLUSTER[1]}
cluster_pid=$CLUSTER_PID
agent_pid=
istioctl_pid=
cleanup() {
  # Every step runs, whatever the one before it returns.
  set +e
  [ -n "$agent_pid" ] && kill "$agent_pid" 2>/dev/null && wait "$agent_pid" 2>/dev/null
  [ -n "$istioctl_pid" ] && kill "$istioctl_pid" 2>/dev/null && wait "$istioctl_pid" 2>/dev/null
  exec {cluster_in}>&- 2>/dev/null || true
  wait "$cluster_pid" 2>/dev/null || true
  rm -rf "$state"
}
trap cleanup EXIT
# One JSON line on stdout means ready.
if ! read -r -t 420 _ready <&"${CLUSTER[0]}"; then
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
kubectl -n istio-system get pods -o wide -L controller-revision-hash
echo
echo "== ztunnel-rollout preflight"
zr preflight || true
echo
echo "== installing the CRDs and the agent's namespace"
kubectl apply -f manifests/crd-ztunnelrollouts.json -f manifests/crd-sidecarmigrations.json -f manifests/namespace.json
kubectl wait --for=condition=Established crd/ztunnelrollouts.ztunnel-rollout.dev crd/sidecarmigrations.ztunnel-rollout.dev --timeout=60s
echo
# The same values as the install (local-cluster wrote its istioctl arguments), plus the
# new ztunnel tag. KWOK pulls no image: any tag will do.
mapfile -t install_args <"$state/cluster/istioctl-install.args"
echo "== upgrading ztunnel with istioctl: the same install with values.ztunnel.tag=1.31.1"
echo "   (OnDelete: istioctl changes the DaemonSet, no pod changes by itself, and istioctl waits"
echo "   until every node runs the new ztunnel: the agent's work)"
generation=$(kubectl -n istio-system get daemonset ztunnel -o jsonpath='{.metadata.generation}')
"$root/e2e/bin/istioctl" "${install_args[@]}" --set values.ztunnel.tag=1.31.1 --kubeconfig "$kubeconfig" >"$state/istioctl-upgrade.log" 2>&1 &
istioctl_pid=$!
# Until the DaemonSet controller saw istioctl's change; istioctl failing first is shown.
for _ in $(seq 240); do
  observed=$(kubectl -n istio-system get daemonset ztunnel -o jsonpath='{.status.observedGeneration}')
  [ "$observed" -gt "$generation" ] && break
  if ! kill -0 "$istioctl_pid" 2>/dev/null; then
    echo "istioctl ended before it changed the DaemonSet:" >&2
    cat "$state/istioctl-upgrade.log" >&2
    exit 1
  fi
  sleep 0.5
done
if [ "$observed" -le "$generation" ]; then
  echo "istioctl did not change the ztunnel DaemonSet within 120s:" >&2
  cat "$state/istioctl-upgrade.log" >&2
  exit 1
fi
kubectl -n istio-system get daemonset ztunnel -o custom-columns='NAME:.metadata.name,IMAGE:.spec.template.spec.containers[0].image,STRATEGY:.spec.updateStrategy.type,DESIRED:.status.desiredNumberScheduled,UP-TO-DATE:.status.updatedNumberScheduled'
echo
echo "== the rollout drains with deleteEmptyDirData: Istio's istiod pod keeps its certificates in an emptyDir"
echo "== starting the agent (leader election on ztunnel-rollout/ztunnel-rollout)"
"$root/target/debug/ztunnel-rollout" --kubeconfig "$kubeconfig" agent --metrics-address 127.0.0.1:0 --identity demo-agent &
agent_pid=$!
cat <<'ROLLOUT' | kubectl apply -f -
{
  "apiVersion": "ztunnel-rollout.dev/v1alpha1",
  "kind": "ZtunnelRollout",
  "metadata": { "name": "demo" },
  "spec": {
    "daemonSet": { "namespace": "istio-system", "name": "ztunnel" },
    "nodeSelector": { "matchLabels": { "local-cluster.ztunnel-rollout.dev/node-set": "demo" } },
    "waves": { "groupBy": "topology.kubernetes.io/zone", "maxUnavailable": 2 },
    "drain": { "deleteEmptyDirData": true },
    "health": { "soak": "1s", "interval": "1s", "bake": "2s" }
  }
}
ROLLOUT
kubectl wait ztunnelrollout/demo --for=jsonpath='{.status.phase}'=Complete --timeout=5m
echo
echo "== istioctl, which waited for ztunnel on every node, finishes"
status=0
wait "$istioctl_pid" || status=$?
istioctl_pid=
if [ "$status" -ne 0 ]; then
  echo "istioctl install failed (exit $status):" >&2
  cat "$state/istioctl-upgrade.log" >&2
  exit 1
fi
grep -E "✔|complete" "$state/istioctl-upgrade.log" || tail -n 3 "$state/istioctl-upgrade.log"
echo
echo "== the rollout"
kubectl get ztunnelrollouts -o wide
kubectl get ztunnelrollout demo -o jsonpath='{range .status.conditions[*]}{.type}={.status} ({.reason}): {.message}{"\n"}{end}'
echo
echo "== every ztunnel pod on the new revision, every node schedulable"
kubectl -n istio-system get pods -o wide -L controller-revision-hash
kubectl get nodes -L topology.kubernetes.io/zone
kubectl -n demo get pods -o wide
echo
echo "== the rollout's Events (waves, finished nodes, the waypoint warning)"
kubectl describe ztunnelrollout demo | sed -n '/^Events:/,$p'
echo
echo "== what the health gates saw on each node (Verified Events)"
kubectl get events -n default --field-selector reason=Verified -o custom-columns=NODE:.involvedObject.name,MESSAGE:.message
echo
echo "== the bakes: each node uncordoned, judged again on its returning pods for 2s, then released (Baking and Done Events, oldest first)"
kubectl get events -n default --sort-by=.eventTime -o custom-columns=TIME:.eventTime,NODE:.involvedObject.name,REASON:.reason,MESSAGE:.message |
  awk 'NR == 1 || $3 == "Baking" || $3 == "Done"'
