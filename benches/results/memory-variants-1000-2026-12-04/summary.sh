#!/usr/bin/env bash
# Per variant of rss.txt (time variant VmHWM VmRSS RssAnon RssFile, kB): peak RSS and
# the largest anonymous and file parts seen, in MiB, and the number of 2 s samples.
awk '{ n=$2; if (!(n in h)) order[++k]=n
       if ($3>h[n]) h[n]=$3; if ($5>a[n]) a[n]=$5; if ($6>f[n]) f[n]=$6; c[n]++ }
     END { printf "| variant | peak RSS | anonymous | file | samples |\n|---|---|---|---|---|\n"
           for (i=1;i<=k;i++) { n=order[i]
             printf "| %s | %.1f | %.1f | %.1f | %d |\n", n, h[n]/1024, a[n]/1024, f[n]/1024, c[n] } }' "${1:-rss.txt}"
