#!/usr/bin/env bash
# waits for the agent, then attaches heaptrack once $1 nodes are done
want=$1
while true; do
  pid=$(pgrep -f "hp-target/release/ztunnel-rollout agent" | head -1)
  [ -n "$pid" ] && break
  sleep 5
done
kc=$(tr '\0' '\n' < /proc/$pid/cmdline | grep -A1 -- --kubeconfig | tail -1)
echo "agent $pid kubeconfig $kc" 
while true; do
  done_n=$(/work/main/e2e/bin/kubectl --kubeconfig "$kc" get ztunnelrollouts -A -o jsonpath='{.items[0].status.counts}' 2>/dev/null)
  echo "$(date +%s) $done_n"
  d=$(echo "$done_n" | python3 -c 'import json,sys
try: print(json.load(sys.stdin).get("done",0))
except Exception: print(0)')
  [ "$d" -ge "$want" ] && break
  kill -0 $pid || exit 1
  sleep 10
done
echo "attaching at $(date +%s) with $d done"
heaptrack -p $pid -o /tmp/hp/heaptrack.agent
echo "heaptrack ended $(date +%s)"
