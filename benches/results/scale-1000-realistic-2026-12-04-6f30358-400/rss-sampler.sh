#!/usr/bin/env bash
# every 2 s: time pid VmHWM VmRSS RssAnon RssFile (kB) of the agent
while true; do
  for pid in $(pgrep -f "release/ztunnel-rollout agent"); do
    awk -v p=$pid -v t=$(date +%s) '/VmHWM|VmRSS|RssAnon|RssFile/{a[$1]=$2} END{print t, p, a["VmHWM:"], a["VmRSS:"], a["RssAnon:"], a["RssFile:"]}' /proc/$pid/status 2>/dev/null
  done
  sleep 2
done
