"""Pass 2: live bytes by call stack at time T1 and T2 (s since attach); the largest growths."""
import sys, subprocess, collections
path, t1, t2 = sys.argv[1], float(sys.argv[2])*1000, float(sys.argv[3])*1000
top = int(sys.argv[4]) if len(sys.argv) > 4 else 25
f = subprocess.Popen(["zstd", "-dc", path], stdout=subprocess.PIPE, text=True, bufsize=1<<20).stdout
strings = [""]; traces = [(0, 0)]; ips = [None]; infos = []
live = collections.Counter()
snaps = {}
t = 0
for line in f:
    c = line[0]
    if c == '+':
        live[int(line[2:], 16)] += 1
    elif c == '-':
        live[int(line[2:], 16)] -= 1
    elif c == 'a':
        s, tr = line[2:].split(); infos.append((int(s, 16), int(tr, 16)))
    elif c == 'c':
        t = int(line[2:], 16)
        if 1 not in snaps and t >= t1: snaps[1] = live.copy()
        if 2 not in snaps and t >= t2: snaps[2] = live.copy(); break
    elif c == 's':
        strings.append(line[2:].rstrip('\n').split(' ', 1)[-1])
    elif c == 't':
        ip, parent = line[2:].split(); traces.append((int(ip, 16), int(parent, 16)))
    elif c == 'i':
        ips.append(line[2:].split())
if 2 not in snaps: snaps[2] = live
def frame(ipi):
    p = ips[ipi]
    if p is None: return "?"
    if len(p) >= 5:
        fn, fl, ln = strings[int(p[2],16)], strings[int(p[3],16)], int(p[4],16)
        return f"{fn[:110]}  {'/'.join(fl.split('/')[-3:])}:{ln}"
    if len(p) >= 3:
        return strings[int(p[2],16)][:110]
    return p[0]
def stack(tr, depth=14):
    out = []
    while tr and len(out) < depth:
        ip, parent = traces[tr]; out.append(frame(ip)); tr = parent
    return out
growth = collections.Counter(); counts = collections.Counter()
for i, (s, tr) in enumerate(infos):
    d = snaps[2].get(i, 0) - snaps[1].get(i, 0)
    if d: growth[tr] += d * s; counts[tr] += d
tot = sum(growth.values())
print(f"net growth {tot/1048576:.2f} MiB between {t1/1000}s and {t2/1000}s")
for tr, b in growth.most_common(top):
    print(f"\n{b/1048576:8.3f} MiB  {counts[tr]} allocs")
    for fr in stack(tr): print("     ", fr)
