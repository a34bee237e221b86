#!/usr/bin/env bash
cd /work/main
common="BENCH_RUNS=1 BENCH_NODES=40 BENCH_PODS_PER_NODE=10 BENCH_MAX_UNAVAILABLE=25% BENCH_WAVES=one BENCH_GATES=1 BENCH_NODE_AGENTS=1"
for round in 1 2; do
for kind in lto plain; do
  /tmp/sampler.sh /tmp/lto/rss-$kind-$round.txt & s=$!
  if [ $kind = lto ]; then w=/tmp/lto/wrap-lto.sh; else w=""; fi
  env $common AGENT_WRAPPER=$w BENCH_SCENARIO=ab-$kind BENCH_RESULTS=/tmp/lto/$kind-$round.json cargo bench --locked --quiet --bench rollout > /tmp/lto/$kind-$round.md 2> /tmp/lto/$kind-$round.err
  kill $s
done
done
echo done > /tmp/lto/finished
