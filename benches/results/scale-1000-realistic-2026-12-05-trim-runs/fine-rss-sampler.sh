#!/usr/bin/env bash
# Every 100 ms, the agent's VmHWM, VmRSS and RssAnon (kB), printed only when one of them
# changed since the last line: "unix time with microseconds, pid, VmHWM, VmRSS, RssAnon".
# Bash builtins only (no fork per sample) so that the sampler costs the machine little.
out=$1
exec 3<> <(:)   # a pipe nobody writes to: read -t on it is a sleep without a fork
# The agent process may be replaced (a short-lived one first, a restart): follow whichever runs.
while true; do
  pid=$(pgrep -f "release/ztunnel-rollout agent" | head -1)
  if [ -z "$pid" ]; then read -r -t 1 -u 3 || true; continue; fi
  last=""
  while [ -r /proc/$pid/status ]; do
    hwm=""; rss=""; anon=""
    while read -r key value _; do
      case $key in
        VmHWM:) hwm=$value ;;
        VmRSS:) rss=$value ;;
        RssAnon:) anon=$value ;;
      esac
    done < /proc/$pid/status 2>/dev/null
    now="$hwm $rss $anon"
    if [ "$now" != "$last" ]; then
      echo "$EPOCHREALTIME $pid $now" >> "$out"
      last=$now
    fi
    read -r -t 0.1 -u 3 || true
  done
done
