# Figures of a partial scale-1000-realistic run, read from its API server audit log
# (stdin): the agent's requests from the rollout's creation on, by verb and resource;
# per node the agent finished, ztunnel Ready -> uncordon (the audit log's times).
import json, sys, collections
t0 = None
by_verb = collections.Counter()
ready = {}      # node -> first Ready status write (completed) of a new ztunnel pod
deleted = {}    # node -> the agent's delete of its ztunnel pod (received)
uncordon = {}   # node -> the agent's uncordon (received)
cordon = {}
for line in sys.stdin:
    try:
        e = json.loads(line)
    except ValueError:
        continue
    ua = e.get("userAgent", "")
    o = e.get("objectRef", {})
    res = o.get("resource", "") + ("/" + o["subresource"] if o.get("subresource") else "")
    if t0 is None:
        if e["verb"] == "create" and res == "ztunnelrollouts":
            t0 = e["requestReceivedTimestamp"]
        continue
    code = e.get("responseStatus", {}).get("code", 0)
    if ua.startswith("ztunnel-rollout/"):
        by_verb[e["verb"] + " " + res] += 1
        if res == "nodes" and e["verb"] == "patch" and code < 300:
            u = (e.get("responseObject") or {}).get("spec", {}).get("unschedulable")
            n = o.get("name")
            if u is True and n not in cordon:
                cordon[n] = e["requestReceivedTimestamp"]
            elif not u and n in cordon and n not in uncordon:
                uncordon[n] = e["requestReceivedTimestamp"]
        if res == "pods" and e["verb"] == "delete" and o.get("namespace") == "bench-rollout" and code < 300:
            pod = e.get("responseObject") or {}
            if pod.get("metadata", {}).get("labels", {}).get("app") == "ztunnel":
                deleted.setdefault(pod.get("spec", {}).get("nodeName"), e["requestReceivedTimestamp"])
    elif res == "pods/status" and o.get("namespace") == "bench-rollout" and code < 300:
        pod = e.get("responseObject") or {}
        if pod.get("metadata", {}).get("labels", {}).get("app") != "ztunnel":
            continue
        node = pod.get("spec", {}).get("nodeName")
        conds = pod.get("status", {}).get("conditions") or []
        if node in deleted and any(c.get("type") == "Ready" and c.get("status") == "True" for c in conds):
            ready.setdefault(node, e["stageTimestamp"])
from datetime import datetime
def ts(s):
    return datetime.fromisoformat(s.replace("Z", "+00:00")).timestamp()
lat = sorted(ts(uncordon[n]) - ts(ready[n]) for n in uncordon if n in ready and ready[n] >= deleted[n])
q = lambda p: lat[min(len(lat) - 1, int(p * len(lat)))]
done = len(uncordon)
all_req = sum(by_verb.values())
ev = by_verb["create pods/eviction"]
def spread(xs):
    xs = sorted(xs)
    return [xs[int(0.5 * (len(xs) - 1))], xs[int(0.95 * (len(xs) - 1))], xs[-1]] if xs else None
finished = [n for n in uncordon if n in ready and n in deleted]
print(json.dumps({
    "per_node_seconds_p50_p95_max": {
        "cordon_to_ztunnel_delete (the drain)": spread([ts(deleted[n]) - ts(cordon[n]) for n in finished]),
        "ztunnel_delete_to_new_ready": spread([ts(ready[n]) - ts(deleted[n]) for n in finished]),
        "whole_node": spread([ts(uncordon[n]) - ts(cordon[n]) for n in finished]),
    },
    "last_uncordon": max(uncordon.values()) if uncordon else None,
    "rollout_created": t0,
    "nodes_uncordoned": done,
    "nodes_cordoned": len(cordon),
    "agent_requests": all_req,
    "evictions": ev,
    "requests_per_node_besides_evictions_over_cordoned_nodes": (all_req - ev) / max(1, len(cordon)),
    "ready_to_uncordon_seconds_p50_p95_max": [q(0.5), q(0.95), lat[-1]] if lat else None,
    "ready_to_uncordon_nodes": len(lat),
    "requests_by_verb": dict(sorted(by_verb.items())),
}, indent=1))
