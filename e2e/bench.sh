#!/usr/bin/env bash
# Every benchmark scenario of BENCHMARKS.md: each run on a fresh local cluster (with
# the API server's audit log), one markdown table per run on stdout (progress on
# stderr), and one record per scenario (benches/results/SCENARIO.json, committed: the
# figures BENCHMARKS.md quotes; every run, and each number's median, min and max):
#
#   e2e/bench.sh [--runs N] [SCENARIO...]
#
#   default            drain runbook-20 agent-20-serial runbook-20-parallel agent-20-budget
#                      overhead failover-200 (about 75 minutes on 2 cores)
#   drain              one node's drain, ztunnel-rollout and kubectl drain, 5 alternating rounds
#   runbook-20         the runbook as a kubectl script, node by node (3 runs)
#   agent-20-serial    the agent, one node at a time (3 runs)
#   runbook-20-parallel  the kubectl script 5 nodes at a time (xargs -P 5) (3 runs)
#   agent-20-budget    the agent, maxUnavailable 25% = 5 nodes at a time (3 runs)
#   overhead           100 nodes / 2,000 pods, the agent (3 runs)
#   overhead-throttled the overhead scenario with the agent held to 0.1 of a core (a cgroup
#                      v1 CPU quota; needs root): how much of the run waits on the agent (3 runs)
#   runbook-overhead   the same 100 nodes by the kubectl script at the agent's concurrency
#                      (10% of each zone's nodes at once, zone after zone) (3 runs)
#   failover-200       two agents, the leader SIGKILLed a third of the way (10 runs)
#   scale-1000-light   1,000 nodes / 2,000 pods (3 runs, ~5 min each here)
#   scale-1000         1,000 nodes / 20,000 pods (setup alone > 30 min here: see BENCHMARKS.md)
#   scale-1000-resident  scale-1000-light plus 18,000 pods that stay on 1,000 other nodes
#   scale-1000-gates   scale-1000-light with the health gates on (ztunnel metrics, a PromQL query)
#   scale-1000-realistic  1,000 nodes as a real ambient node runs: ztunnel, istio-cni, a
#                      kube-proxy and a log agent (DaemonSets), 20 application pods per node
#                      (20,000, under PDBs, in 25 namespaces), the health gates on (3 runs,
#                      20–30 min each here with the setup)
#   scale-5000         5,000 nodes (Kubernetes' documented limit), ztunnel and one application
#                      pod on every node (spread evenly: the agent takes emptier nodes
#                      first); stopped once 500 nodes are done (the whole rollout outlasts
#                      a session on 2 cores): the figures are those 500 nodes' (3 runs,
#                      9–20 min each here with the setup, as the machine's speed goes)
#
# Every rollout run also reads the audit log for the critical path: the chain of nodes
# that set the run's length, and the tool's part of it (crates/testbed critical_path).
#
# Every rollout scenario runs 3 times by default (the 1,000- and 5,000-node ones too: a
# median and a spread, not one sample); --runs N overrides every scenario's number of
# runs (rounds, for drain), e.g. --runs 1 for a quick look. Simulated
# delays are KWOK stages (benches/rollout.rs): application pods exit 1 s after SIGTERM,
# ztunnel pods exit in 1 s, new ones are created in 0.1 s and Ready in 1 s.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"

runs=""
if [ "${1:-}" = "--runs" ]; then
  runs=${2:-}
  case "$runs" in '' | *[!0-9]* | 0) echo "--runs: '$runs' is not a number of runs (1 or more)" >&2; exit 2 ;; esac
  shift 2
fi

scenario() {
  case "$1" in
    drain)           echo "BENCH_RUNS=5" ;;
    runbook-20)      echo "BENCH_RUNS=3 BENCH_NODES=20 BENCH_PODS_PER_NODE=5 BENCH_MAX_UNAVAILABLE=1 BENCH_WAVES=one BENCH_MODE=runbook" ;;
    agent-20-serial) echo "BENCH_RUNS=3 BENCH_NODES=20 BENCH_PODS_PER_NODE=5 BENCH_MAX_UNAVAILABLE=1 BENCH_WAVES=one" ;;
    runbook-20-parallel) echo "BENCH_RUNS=3 BENCH_NODES=20 BENCH_PODS_PER_NODE=5 BENCH_MAX_UNAVAILABLE=25% BENCH_WAVES=one BENCH_MODE=runbook" ;;
    agent-20-budget) echo "BENCH_RUNS=3 BENCH_NODES=20 BENCH_PODS_PER_NODE=5 BENCH_MAX_UNAVAILABLE=25% BENCH_WAVES=one" ;;
    overhead)        echo "BENCH_RUNS=3 BENCH_NODES=100 BENCH_PODS_PER_NODE=20 BENCH_MAX_UNAVAILABLE=10%" ;;
    overhead-throttled) echo "BENCH_RUNS=3 BENCH_NODES=100 BENCH_PODS_PER_NODE=20 BENCH_MAX_UNAVAILABLE=10% BENCH_AGENT_CPU=0.1" ;;
    runbook-overhead) echo "BENCH_RUNS=3 BENCH_NODES=100 BENCH_PODS_PER_NODE=20 BENCH_MAX_UNAVAILABLE=10% BENCH_MODE=runbook" ;;
    failover-200)    echo "BENCH_RUNS=10 BENCH_NODES=200 BENCH_PODS_PER_NODE=2 BENCH_MODE=failover" ;;
    scale-1000-light) echo "BENCH_RUNS=3 BENCH_NODES=1000 BENCH_PODS_PER_NODE=2 BENCH_MAX_UNAVAILABLE=10%" ;;
    scale-1000)      echo "BENCH_RUNS=3 BENCH_NODES=1000 BENCH_PODS_PER_NODE=20 BENCH_MAX_UNAVAILABLE=10%" ;;
    scale-1000-resident) echo "BENCH_RUNS=3 BENCH_NODES=1000 BENCH_PODS_PER_NODE=2 BENCH_MAX_UNAVAILABLE=10% BENCH_RESIDENT_PODS=18000" ;;
    scale-1000-gates) echo "BENCH_RUNS=3 BENCH_NODES=1000 BENCH_PODS_PER_NODE=2 BENCH_MAX_UNAVAILABLE=10% BENCH_GATES=1" ;;
    scale-1000-realistic) echo "BENCH_RUNS=3 BENCH_NODES=1000 BENCH_PODS_PER_NODE=20 BENCH_MAX_UNAVAILABLE=10% BENCH_NODE_AGENTS=1 BENCH_APP_NAMESPACES=25 BENCH_GATES=1" ;;
    scale-5000)      echo "BENCH_RUNS=3 BENCH_NODES=5000 BENCH_PODS_PER_NODE=1 BENCH_MAX_UNAVAILABLE=10% BENCH_EVEN_SPREAD=1 BENCH_STOP_AFTER_NODES=500" ;;
    *) echo "unknown scenario $1 (drain, runbook-20, agent-20-serial, runbook-20-parallel, agent-20-budget, overhead, overhead-throttled, runbook-overhead, failover-200, scale-1000-light, scale-1000, scale-1000-resident, scale-1000-gates, scale-1000-realistic, scale-5000)" >&2; return 1 ;;
  esac
}

[ "$#" -gt 0 ] || set -- drain runbook-20 agent-20-serial runbook-20-parallel agent-20-budget overhead failover-200
for s in "$@"; do scenario "$s" >/dev/null; done  # refuse unknown names before running any
"$root/e2e/build-control-plane.sh" >&2
# The benchmarks start local-cluster from their own (release) profile directory.
cargo build --locked --quiet --release -p ztunnel-rollout-testbed --bin local-cluster
mkdir -p "$root/benches/results"
echo "# Benchmarks, $(date -u +%Y-%m-%d), $(nproc) cores, $(free -g | awk '/Mem:/ {print $2}') GiB, commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
for s in "$@"; do
  settings=$(scenario "$s")
  if [ -n "$runs" ]; then settings="$settings BENCH_RUNS=$runs"; fi
  echo >&2 "== $s: $settings"
  echo
  echo "## $s"
  bench=rollout
  if [ "$s" = drain ]; then bench=drain; fi
  # shellcheck disable=SC2086 # the settings are words
  env $settings BENCH_SCENARIO="$s" BENCH_RESULTS="$root/benches/results/$s.json" \
    cargo bench --locked --quiet --bench "$bench" | sed -n '/^run \|^| \|^$\|^over \|^Drain \|^Every \|^requests by verb/p'
done
