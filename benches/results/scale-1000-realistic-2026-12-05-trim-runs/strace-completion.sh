#!/usr/bin/env bash
# Once the rollout has $1 nodes done, attaches strace to every thread of the agent for
# $2 seconds and records its memory system calls (brk, mmap, munmap, mprotect, madvise)
# with timestamps and each call's stack (-k): the code that made malloc take pages as
# the rollout completed. Then detaches; the agent runs on.
at=$1; secs=$2; out=$3
while true; do
  pid=$(pgrep -f "release/ztunnel-rollout agent" | tail -1)
  if [ -n "$pid" ] && tr '\0' '\n' < /proc/$pid/cmdline | grep -q -- --kubeconfig; then break; fi
  sleep 5
done
kc=$(tr '\0' '\n' < /proc/$pid/cmdline | grep -A1 -- --kubeconfig | tail -1)
echo "agent $pid kubeconfig $kc" > "$out.info"
while kill -0 "$pid" 2>/dev/null; do
  d=$(/work/main/e2e/bin/kubectl --kubeconfig "$kc" get ztunnelrollouts -A -o jsonpath='{.items[0].status.counts.done}' 2>/dev/null)
  if [ "${d:-0}" -ge "$at" ] 2>/dev/null; then
    echo "attached at $(date +%s.%N), done=$d" >> "$out.info"
    timeout -s INT "$secs" strace -f -tt -k -e trace=brk,mmap,munmap,mprotect,madvise -p "$pid" -o "$out" 2>> "$out.info"
    echo "detached at $(date +%s.%N)" >> "$out.info"
    exit 0
  fi
  sleep 2
done
