#!/usr/bin/env bash
cd /work/main
BENCH_RUNS=1 BENCH_NODES=1000 BENCH_PODS_PER_NODE=20 BENCH_MAX_UNAVAILABLE=10% BENCH_NODE_AGENTS=1 BENCH_APP_NAMESPACES=25 BENCH_GATES=1 BENCH_STOP_AFTER_NODES=400 BENCH_SCENARIO=scale-1000-realistic BENCH_RESULTS=/work/main/benches/results/scale-1000-realistic-2026-12-04-drain-trim-400/scale-1000-realistic-first-400.json cargo bench --locked --quiet --bench rollout > /tmp/r1000/out.md 2> /tmp/r1000/setup.txt
echo done > /tmp/r1000/finished
