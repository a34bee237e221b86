#!/usr/bin/env bash
# Runs each line of /tmp/ab/variants ("name seconds env... binary-or-SELF") as the agent
# for that many seconds, sampling its RSS split every 2 s, then execs the last line's one.
self=$1; shift
sample() { # pid name
  while kill -0 $1 2>/dev/null; do
    awk -v n=$2 -v t=$(date +%s) '/VmHWM|VmRSS|RssAnon|RssFile/{a[$1]=$2} END{print t, n, a["VmHWM:"], a["VmRSS:"], a["RssAnon:"], a["RssFile:"]}' /proc/$1/status 2>/dev/null >> /tmp/ab/rss.txt
    sleep 2
  done
}
mapfile -t lines < /tmp/ab/variants
last=$(( ${#lines[@]} - 1 ))
for i in "${!lines[@]}"; do
  read -r name secs envs bin <<<"${lines[$i]}"
  [[ $bin == SELF ]] && bin=$self
  [[ $envs == - ]] && envs=
  echo "$(date +%s) start $name $secs $envs $bin" >> /tmp/ab/log.txt
  if (( i == last )); then
    sample $$ $name &
    exec env $envs "$bin" "$@"
  fi
  env $envs "$bin" "$@" &
  pid=$!
  sample $pid $name &
  sleep "$secs"
  kill -TERM $pid; wait $pid
  echo "$(date +%s) stopped $name rc=$?" >> /tmp/ab/log.txt
  sleep 3
done
