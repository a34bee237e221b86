#!/usr/bin/env python3
"""Sums heaptrack_print's peak report (-p 1 -s 400) by the first frame of this
repository's code; with --type FRAME, splits FRAME's share by the first k8s-openapi
object type on its stacks (the rest: the stores' maps, keys and strings).
Usage: by_source.py REPO < heaptrack-print-peaks.txt"""
import collections, os, re, sys

repo = sys.argv[1]
split = sys.argv[sys.argv.index("--type") + 1] if "--type" in sys.argv else None
size = re.compile(r"^\s*([0-9.]+)([KMG]?) (?:peak memory )?consumed over")
frame = re.compile(r"^\s*at (\S+):(\d+)$")
openapi_type = re.compile(r"k8s-openapi-[^/]+/src/v1_\d+/(.+)$")
unit = {"": 1e-6, "K": 1e-3, "M": 1.0, "G": 1e3}


def ours(path):
    return not path.startswith("/") and os.path.exists(os.path.join(repo, path))


# A header ("X peak memory consumed over N calls from") gives the innermost frames, down
# to where the call tree branches; each caller entry after it ("Y consumed over ...")
# continues the stack. A header without caller entries counts by its own frames.
groups, current = [], None
for line in sys.stdin:
    m = size.match(line)
    if m:
        mb = float(m.group(1)) * unit[m.group(2)]
        if "peak memory" in line:
            current = {"mb": mb, "frames": [], "callers": []}
            groups.append(current)
            target = current["frames"]
        elif current is not None:
            caller = [mb, []]
            current["callers"].append(caller)
            target = caller[1]
        continue
    f = frame.match(line)
    if f and current is not None:
        target.append((f.group(1), f.group(2)))

stacks = []
for g in groups:
    if g["callers"]:
        stacks += [(mb, g["frames"] + frames) for mb, frames in g["callers"]]
    else:
        stacks.append((g["mb"], g["frames"]))

by_source, by_type = collections.Counter(), collections.Counter()
for mb, frames in stacks:
    first = next((f"{p}:{n}" for p, n in frames if ours(p)), None)
    if first is None:
        rel = next((f"{p}:{n}" for p, n in frames if not p.startswith("/")), "(no frame)")
        first = f"{rel} (a dependency's)"
    by_source[first] += mb
    if split and first == split:
        kind = next((m.group(1) for p, _ in frames
                     if (m := openapi_type.search(p))), None)
        by_type[kind or "other (maps, strings, kube-runtime)"] += mb
print(f"heap at its peak, by the first frame of our code; MB (total {sum(by_source.values()):.2f})")
for k, v in by_source.most_common(40):
    print(f"{v:7.2f}  {k}")
if split:
    print(f"\nof which {split}, by object type; MB")
    for k, v in by_type.most_common(20):
        print(f"{v:7.2f}  {k}")
