#!/usr/bin/env bash
# The fault campaign (tests/chaos.rs, issue 20): TRIALS randomized trials from SEED on the
# local control plane, each with 2–3 faults of 17 kinds, judged by checkers that read the API
# server's audit log and state (crates/testbed/src/invariants). Prints one line per
# trial and a table per fault kind; writes every figure to target/chaos/chaos-SEED-TRIALS.json
# (CHAOS_RESULTS=path to write elsewhere). A failing trial replays with its own seed:
#   e2e/chaos.sh SEED 1
#
#   e2e/chaos.sh               # the short campaign e2e/test.sh also runs (6 trials)
#   e2e/chaos.sh 1000 60       # 60 trials from seed 1000
# Any 17 consecutive seeds draw every fault kind twice (tests/chaos.rs, Fault::planned).
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
"$root/e2e/build-control-plane.sh" >&2
cargo build --locked --quiet -p ztunnel-rollout-testbed --bin local-cluster
exec cargo test --locked --test chaos -- "$@"
