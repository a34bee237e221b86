#!/usr/bin/env bash
# The command of this record, from the repository's root, with the RSS sampler beside it.
set -euo pipefail
out=${1:-/tmp/r400}
mkdir -p "$out"
"$(dirname "$0")/rss-sampler.sh" > "$out/rss.txt" 2>/dev/null &
sampler=$!
trap 'kill $sampler' EXIT
BENCH_RUNS=1 BENCH_NODES=1000 BENCH_PODS_PER_NODE=20 BENCH_MAX_UNAVAILABLE=10% \
  BENCH_NODE_AGENTS=1 BENCH_APP_NAMESPACES=25 BENCH_GATES=1 BENCH_STOP_AFTER_NODES=400 \
  BENCH_SCENARIO=scale-1000-realistic BENCH_RESULTS="$out/scale-1000-realistic.json" \
  cargo bench --locked --quiet --bench rollout > "$out/scale-1000-realistic.md" 2> "$out/bench.err"
