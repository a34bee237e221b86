#!/usr/bin/env bash
# The operational runbook's ztunnel upgrade, as a script (the benchmark's baseline): for
# each node in turn, cordon, drain, delete the node's ztunnel pod, wait for the
# DaemonSet's new pod to be Ready, uncordon.
#
#   e2e/runbook-baseline.sh ZTUNNEL_NAMESPACE NODE...
#
# Uses `kubectl` from PATH (or $KUBECTL) and its usual configuration ($KUBECONFIG).
set -euo pipefail
kubectl=${KUBECTL:-kubectl}
ns=${1:?usage: runbook-baseline.sh ZTUNNEL_NAMESPACE NODE...}
shift
for node in "$@"; do
  "$kubectl" cordon "$node" >/dev/null
  "$kubectl" drain "$node" --ignore-daemonsets --delete-emptydir-data --timeout=10m >/dev/null
  "$kubectl" -n "$ns" delete pod -l app=ztunnel --field-selector "spec.nodeName=$node" --wait=false >/dev/null
  # The DaemonSet controller creates the new pod shortly: wait for it, then for Ready.
  deadline=$((SECONDS + 600))
  until "$kubectl" -n "$ns" wait pod -l app=ztunnel --field-selector "spec.nodeName=$node,status.phase=Running" \
      --for=condition=Ready --timeout=10s >/dev/null 2>&1 &&
    [ "$("$kubectl" -n "$ns" get pods -l app=ztunnel --field-selector "spec.nodeName=$node" \
      -o jsonpath='{range .items[?(@.metadata.deletionTimestamp)]}x{end}')" = "" ]; do
    if [ "$SECONDS" -ge "$deadline" ]; then
      echo "ztunnel on $node not Ready within 10 minutes" >&2
      exit 1
    fi
    sleep 1
  done
  "$kubectl" uncordon "$node" >/dev/null
  echo "$node done"
done
