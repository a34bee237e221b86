"""Pass 1 over a heaptrack data file (zstd text): heap and RSS over time, every second."""
import sys, subprocess
f = subprocess.Popen(["zstd", "-dc", sys.argv[1]], stdout=subprocess.PIPE, text=True, bufsize=1<<20).stdout
sizes = []  # allocInfo index -> size
heap = 0
t = 0
last = -1
rss = 0
page = 4096
peak = (0, 0)
for line in f:
    c = line[0]
    if c == '+':
        heap += sizes[int(line[2:], 16)]
        if heap > peak[0]: peak = (heap, t)
    elif c == '-':
        heap -= sizes[int(line[2:], 16)]
    elif c == 'a':
        s, _ = line[2:].split()
        sizes.append(int(s, 16))
    elif c == 'c':
        t = int(line[2:], 16)
        if t // 1000 != last:
            last = t // 1000
            print(f"{t/1000:.0f} heap {heap/1048576:.2f} MiB rss {rss*page/1048576:.2f} MiB", flush=True)
    elif c == 'R':
        rss = int(line[2:], 16)
    elif c == 'I':
        page = int(line[2:].split()[0], 16)
print("peak", peak[0]/1048576, "MiB at", peak[1]/1000, "s")
