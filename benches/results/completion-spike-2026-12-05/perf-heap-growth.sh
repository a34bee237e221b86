#!/usr/bin/env bash
# Records, for the agent's whole run, every system call by which malloc takes more
# memory (brk for the main arena; mmap and mprotect for the other arenas and large
# blocks), each with its call stack (perf, DWARF unwinding): which code made the heap
# grow, and when. perf stops only at those calls, a few hundred a run, so the run is
# not slowed. Then `perf script -i $1` prints them.
out=$1
while true; do
  pid=$(pgrep -f "release/ztunnel-rollout agent" | tail -1)
  if [ -n "$pid" ] && tr '\0' '\n' < /proc/$pid/cmdline 2>/dev/null | grep -q -- --kubeconfig; then break; fi
  sleep 0.2
done
echo "agent $pid from $(date +%s.%N)" > "$out.info"
perf record -q -e syscalls:sys_enter_brk -e syscalls:sys_enter_mmap -e syscalls:sys_enter_mprotect \
  --call-graph dwarf,65528 -p "$pid" -o "$out" 2>> "$out.info"
echo "agent gone $(date +%s.%N)" >> "$out.info"
