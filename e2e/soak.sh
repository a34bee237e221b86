#!/usr/bin/env bash
# The deterministic fleet simulation (crates/core/src/sim) for as long as you like:
#
#   e2e/soak.sh                        # 100,000 seeds (~10 min on 2 cores)
#   e2e/soak.sh --seeds 1000000 --first-seed 500000
#   e2e/soak.sh --stop-at-first        # stop at the first failing seed
#   e2e/soak.sh --seed 4167            # replay one seed: violations, shrunk trace
#   SIM_TRACE_LINES=100000 e2e/soak.sh --seed 4167   # the whole trace
#
# The tests run 3,000 seeds (SIM_SEEDS, SIM_FIRST_SEED change that).
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
exec cargo run --locked --quiet --release -p ztunnel-rollout-core --features sim --example soak -- "$@"
