#!/usr/bin/env bash
# One whole run of the realistic bed as in ../scale-1000-realistic-2026-12-04-cc0ee86/run.sh
# (with its 2 s sampler), plus the 100 ms sampler of this record, and the agent's log kept.
set -euo pipefail
out=${1:?usage: run.sh OUTPUT_DIR}
here=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$out"
"$here/fine-rss-sampler.sh" "$out/rss-fine.txt" &
fine=$!
trap 'kill $fine 2>/dev/null || true' EXIT
bash "$here/../scale-1000-realistic-2026-12-04-cc0ee86/run.sh" "$out"
cp target/tmp/agent-bench-rollout-bench-a.log "$out/agent.log"
