#!/usr/bin/env bash
# Every rollout benchmark scenario of BENCHMARKS.md, one local cluster each, one table
# each (markdown, on stdout; progress on stderr) and one record each
# (benches/results/SCENARIO.json, committed: the figures BENCHMARKS.md quotes):
#
#   e2e/bench.sh [SCENARIO...]      # default: overhead runbook-20 agent-20-serial agent-20-budget failover-200
#   e2e/bench.sh scale-1000-light   # 1,000 nodes / 2,000 pods (~10 min)
#   e2e/bench.sh scale-1000         # 1,000 nodes / 20,000 pods (setup alone > 30 min here: see BENCHMARKS.md)
#   e2e/bench.sh scale-1000-resident  # scale-1000-light plus 18,000 pods that stay on 1,000 other nodes
#   e2e/bench.sh scale-1000-gates  # scale-1000-light with the health gates on (ztunnel metrics, a PromQL query)
#
# Simulated delays are KWOK stages (benches/rollout.rs): application pods exit 1 s after
# SIGTERM, ztunnel pods exit in 1 s, new ones are created in 0.1 s and Ready in 1 s.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
"$root/e2e/build-control-plane.sh" >&2
# The benchmarks start local-cluster from their own (release) profile directory.
cargo build --locked --quiet --release -p ztunnel-rollout-testbed --bin local-cluster

scenario() {
  case "$1" in
    overhead)        echo "BENCH_NODES=100 BENCH_PODS_PER_NODE=20 BENCH_MAX_UNAVAILABLE=10%" ;;
    runbook-20)      echo "BENCH_NODES=20 BENCH_PODS_PER_NODE=5 BENCH_MODE=runbook" ;;
    agent-20-serial) echo "BENCH_NODES=20 BENCH_PODS_PER_NODE=5 BENCH_MAX_UNAVAILABLE=1 BENCH_WAVES=one" ;;
    agent-20-budget) echo "BENCH_NODES=20 BENCH_PODS_PER_NODE=5 BENCH_MAX_UNAVAILABLE=25% BENCH_WAVES=one" ;;
    failover-200)    echo "BENCH_NODES=200 BENCH_PODS_PER_NODE=2 BENCH_MODE=failover" ;;
    scale-1000-light) echo "BENCH_NODES=1000 BENCH_PODS_PER_NODE=2 BENCH_MAX_UNAVAILABLE=10%" ;;
    scale-1000)      echo "BENCH_NODES=1000 BENCH_PODS_PER_NODE=20 BENCH_MAX_UNAVAILABLE=10%" ;;
    scale-1000-resident) echo "BENCH_NODES=1000 BENCH_PODS_PER_NODE=2 BENCH_MAX_UNAVAILABLE=10% BENCH_RESIDENT_PODS=18000" ;;
    scale-1000-gates) echo "BENCH_NODES=1000 BENCH_PODS_PER_NODE=2 BENCH_MAX_UNAVAILABLE=10% BENCH_GATES=1" ;;
    *) echo "unknown scenario $1 (overhead, runbook-20, agent-20-serial, agent-20-budget, failover-200, scale-1000-light, scale-1000, scale-1000-resident, scale-1000-gates)" >&2; return 1 ;;
  esac
}

[ "$#" -gt 0 ] || set -- overhead runbook-20 agent-20-serial agent-20-budget failover-200
for s in "$@"; do scenario "$s" >/dev/null; done  # refuse unknown names before running any
mkdir -p "$root/benches/results"
echo "# Rollout benchmarks, $(date -u +%Y-%m-%d), $(nproc) cores, $(free -g | awk '/Mem:/ {print $2}') GiB"
for s in "$@"; do
  echo >&2 "== $s: $(scenario "$s")"
  echo
  echo "## $s"
  env $(scenario "$s") BENCH_RESULTS="$root/benches/results/$s.json" \
    cargo bench --quiet --bench rollout | sed -n '/^| figure/,$p'
done
