#!/usr/bin/env bash
# The operational runbook's ztunnel upgrade as a careful operator scripts it with
# kubectl (the rollout benchmark's baseline). For each node: `kubectl drain` (which
# cordons), `kubectl delete` the node's ztunnel pod (which waits until it is gone), wait
# for the DaemonSet's new pod to be created and Ready (`kubectl wait`), uncordon. Needs
# a kubectl whose `wait` takes several --for conditions (1.32 or later; the benchmarks
# use the one pinned in e2e/versions.env).
#
#   e2e/runbook-baseline.sh [-P N] ZTUNNEL_NAMESPACE NODE...
#
# -P N upgrades N nodes at a time (xargs -P; default 1, node by node); a node that fails
# stops the run (no further node is started). Prints one line
# per node when it is done: the node, then the Unix time (seconds) at which each step
# ended: `NODE start T0 drained T1 old-gone T2 new-ready T3 uncordoned T4`.
# Uses `kubectl` from PATH (or $KUBECTL) and its usual configuration ($KUBECONFIG).
set -euo pipefail
kubectl=${KUBECTL:-kubectl}
parallel=1
if [ "${1:-}" = "-P" ]; then
  parallel=${2:?usage: runbook-baseline.sh [-P N] ZTUNNEL_NAMESPACE NODE...}
  shift 2
fi
case "$parallel" in '' | *[!0-9]* | 0*) echo "-P: '$parallel' is not a number of nodes (1 or more)" >&2; exit 2 ;; esac

if [ "${1:-}" = "--node" ]; then
  # One node (the unit xargs runs): NAMESPACE NODE.
  ns=$2 node=$3
  # A failed step ends this node with 255, which makes xargs start no further node.
  trap 'exit 255' ERR
  now() { date +%s.%N; }
  t0=$(now)
  "$kubectl" drain "$node" --ignore-daemonsets --delete-emptydir-data --timeout=10m >/dev/null
  t1=$(now)
  # Deletes the node's ztunnel pod and waits until it is gone.
  "$kubectl" -n "$ns" delete pod -l app=ztunnel --field-selector "spec.nodeName=$node" \
    --timeout=10m >/dev/null
  t2=$(now)
  # The DaemonSet controller creates the replacement once the old pod is gone.
  "$kubectl" -n "$ns" wait --for=create --for=condition=Ready pod -l app=ztunnel \
    --field-selector "spec.nodeName=$node" --timeout=10m >/dev/null
  t3=$(now)
  "$kubectl" uncordon "$node" >/dev/null
  t4=$(now)
  echo "$node start $t0 drained $t1 old-gone $t2 new-ready $t3 uncordoned $t4"
  exit 0
fi

ns=${1:?usage: runbook-baseline.sh [-P N] ZTUNNEL_NAMESPACE NODE...}
shift
[ "$#" -gt 0 ] || { echo "usage: runbook-baseline.sh [-P N] ZTUNNEL_NAMESPACE NODE..." >&2; exit 2; }
printf '%s\0' "$@" | KUBECTL="$kubectl" xargs -0 -n 1 -P "$parallel" "${BASH_SOURCE[0]}" --node "$ns"
