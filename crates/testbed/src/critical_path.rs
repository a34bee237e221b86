//! Whose time a rollout took: the tool's or the cluster's, read from the API server's
//! audit log (recorded with [`crate::invariants::audit::invariants_policy`], which keeps
//! the bodies of node, pod, pod-status, eviction and PodDisruptionBudget writes).
//!
//! A node's upgrade is a chain of steps; each step ends in something the API server
//! records, and the next step starts with the tool's next request. The time between the
//! two is the tool's: its watch seeing the change, its own work, and its request going
//! out. Everything else (pods exiting, the DaemonSet controller, the scheduler, KWOK's
//! simulated delays, the disruption controller) is the cluster's. Per node:
//!
//! 1. *slot → cordon*: from the moment the node's place in its wave was free to the
//!    tool's cordon. A wave of n nodes run b at a time has b places at its start (the
//!    previous wave's last uncordon; the run's start for the first wave), and each
//!    uncordon frees one: the wave's k-th cordon (from 0) takes a place at the start for
//!    k < b, else the (k − b)-th uncordon's, first freed first used. A place left free
//!    while the tool did something else is the tool's time;
//! 2. *drain*: for the pod that was gone last (the drain's own critical path), from the
//!    cordon to the tool's first eviction of it, plus, for each refused eviction, from
//!    the moment its budget allowed a disruption again to the tool's next try: the start
//!    of the stretch of budget status writes that allow one and still holds at the try
//!    (the refusal itself if the budget allowed one then: a refusal that was not the
//!    budget's, e.g. the API server's rate limits); nothing when the budget allowed none
//!    at the try (an early try is no delay). The budget's status writes include the
//!    evictions' own decrements (the API server writes them as requests). A refusal
//!    whose budget is not found counts whole, against the tool;
//! 3. *drained → ztunnel delete*: from that last pod gone to the tool's delete of the
//!    node's ztunnel pod;
//! 4. *ztunnel Ready → uncordon*: from the status write that made the new ztunnel pod
//!    Ready to the tool's uncordon.
//!
//! The critical path runs back from the last node released, each node to the one whose
//! release freed its place (a wave's first nodes: the previous wave's last). Its length
//! and the tool's part of it are what a benchmark reports. Times are the API server's: a
//! tool's request counts when received, a change when its write completed; the watch's
//! delivery is counted as the tool's, and so is the first node's wait from the run's
//! start (for the agent: its start and its leader election).

use std::collections::{BTreeMap, HashMap};

use k8s_openapi::jiff::Timestamp;
use serde_json::Value;

use crate::invariants::audit::AuditEvent;

/// One wave as the tool ran it: its nodes, and how many of them it may have out at once.
#[derive(Debug, Clone, PartialEq)]
pub struct Wave {
    pub nodes: Vec<String>,
    pub budget: usize,
}

/// The steps whose time is the tool's, in a node's order.
pub const STEPS: [&str; 4] = [
    "slot → cordon",
    "drain (the tool's waits)",
    "drained → ztunnel delete",
    "ztunnel Ready → uncordon",
];

/// What one node went through, as the API server recorded it.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeSteps {
    pub node: String,
    /// The tool's cordon (received).
    pub cordoned: Timestamp,
    /// The last pod the tool evicted from the node gone (its final delete completed);
    /// the cordon when it evicted none.
    pub drained: Timestamp,
    /// The tool's seconds in the drain (step 2).
    pub drain_tool_seconds: f64,
    /// The tool's delete of the node's ztunnel pod (received).
    pub ztunnel_deleted: Timestamp,
    /// The status write that made the node's new ztunnel pod Ready (completed).
    pub ztunnel_ready: Timestamp,
    /// The tool's uncordon (received).
    pub uncordoned: Timestamp,
}

impl NodeSteps {
    /// Steps 2 to 4 of the module's list, in seconds (step 1 needs the node before it).
    fn own_steps(&self) -> [f64; 3] {
        [
            self.drain_tool_seconds,
            seconds(self.drained, self.ztunnel_deleted),
            seconds(self.ztunnel_ready, self.uncordoned),
        ]
    }
}

/// The chain of nodes that set the run's length, and the tool's part of it.
#[derive(Debug, Clone, PartialEq)]
pub struct CriticalPath {
    /// First to last.
    pub nodes: Vec<String>,
    /// From the run's start to the last node's uncordon.
    pub seconds: f64,
    /// The tool's seconds along the path, by step ([`STEPS`]' order).
    pub tool_by_step: [f64; 4],
    /// The tool's seconds of each node on the path, by step (`nodes`' order).
    pub tool_by_node: Vec<[f64; 4]>,
}

impl CriticalPath {
    pub fn tool_seconds(&self) -> f64 {
        self.tool_by_step.iter().sum()
    }
}

/// Every node that went the whole way, and the critical path through them.
#[derive(Debug, Clone, PartialEq)]
pub struct Analysis {
    pub nodes: Vec<NodeSteps>,
    /// Per node (every node that went the whole way), the tool's seconds by step
    /// ([`STEPS`]' order).
    pub tool_by_node: Vec<[f64; 4]>,
    pub path: Option<CriticalPath>,
    /// Nodes the tool cordoned whose steps are not all in the log (never uncordoned, no
    /// ztunnel delete or new ztunnel Ready found) or that are in no wave: left out.
    pub left_out: Vec<String>,
}

fn seconds(from: Timestamp, to: Timestamp) -> f64 {
    to.duration_since(from).as_secs_f64().max(0.0)
}

type PodKey = (String, String);

fn pod_key(e: &AuditEvent) -> Option<PodKey> {
    Some((e.namespace.clone()?, e.name.clone()?))
}

fn object_of(e: &AuditEvent) -> Option<&Value> {
    e.response_object
        .as_ref()
        .filter(|o| o["kind"] == "Pod")
        .or(e.request_object.as_ref().filter(|o| o["kind"] == "Pod"))
}

fn ready(pod: &Value) -> bool {
    pod["status"]["conditions"].as_array().is_some_and(|c| {
        c.iter()
            .any(|c| c["type"] == "Ready" && c["status"] == "True")
    })
}

/// A budget's selector (`matchLabels`) and whether it allowed a disruption, write by
/// write, oldest first.
#[derive(Default)]
struct Timeline {
    selector: BTreeMap<String, String>,
    writes: Vec<(Timestamp, bool)>,
}

/// The status writes of the budgets (PodDisruptionBudgets), with their namespaces.
struct Budgets<'a> {
    timelines: Vec<(&'a str, Timeline)>,
}

impl Budgets<'_> {
    /// When the budget covering a pod (`namespace`, `labels`) last began to allow a
    /// disruption and still did at `next`, not before `refused`: the tool's wait for a
    /// refused eviction retried at `next` starts there. `next` itself when the budget
    /// allowed none then; `refused` when no budget covers the pod.
    fn allowed_since(
        &self,
        namespace: &str,
        labels: &BTreeMap<String, String>,
        refused: Timestamp,
        next: Timestamp,
    ) -> Timestamp {
        let Some((_, Timeline { writes, .. })) = self.timelines.iter().find(|(ns, t)| {
            *ns == namespace
                && !t.selector.is_empty()
                && t.selector.iter().all(|(k, v)| labels.get(k) == Some(v))
        }) else {
            return refused;
        };
        let before: Vec<&(Timestamp, bool)> = writes.iter().filter(|(t, _)| *t <= next).collect();
        match before.last() {
            None => refused,
            Some((_, false)) => next,
            Some(_) => {
                let since = before
                    .iter()
                    .rev()
                    .take_while(|(_, allowed)| *allowed)
                    .last()
                    .map_or(refused, |(t, _)| *t);
                since.max(refused)
            }
        }
    }
}

/// Reads `events` (one run's audit log) for the tool whose requests carry a user agent
/// starting with `tool` (`ztunnel-rollout/`, `kubectl/`), the ztunnel pods being those in
/// `ztunnel_namespace`, the run having started at `started` and gone through `waves` in
/// their order.
pub fn analyse(
    events: &[AuditEvent],
    tool: &str,
    ztunnel_namespace: &str,
    started: Timestamp,
    waves: &[Wave],
) -> Analysis {
    let mut events: Vec<&AuditEvent> = events
        .iter()
        .filter(|e| e.succeeded() || e.code == 429)
        .collect();
    events.sort_by_key(|e| e.completed);
    let by_tool = |e: &AuditEvent| e.user_agent.starts_with(tool);

    // Where each pod ran, its labels, when it was gone, when it was first Ready.
    let mut node_of: HashMap<PodKey, String> = HashMap::new();
    let mut labels_of: HashMap<PodKey, BTreeMap<String, String>> = HashMap::new();
    let mut gone: HashMap<PodKey, Timestamp> = HashMap::new();
    let mut ready_at: HashMap<PodKey, Timestamp> = HashMap::new();
    // The tool's evictions per pod: (received, completed, refused).
    let mut evictions: HashMap<PodKey, Vec<(Timestamp, Timestamp, bool)>> = HashMap::new();
    let mut ztunnel_deletes: Vec<(PodKey, Timestamp)> = Vec::new();
    let mut node_marks: BTreeMap<String, (Option<Timestamp>, Option<Timestamp>)> = BTreeMap::new();
    let mut budget_writes = Vec::new();
    for e in &events {
        match (e.group.as_str(), e.full_resource().as_str()) {
            ("", "pods" | "pods/status") => {
                let Some(key) = pod_key(e) else { continue };
                if let Some(pod) = object_of(e) {
                    if let Some(node) = pod["spec"]["nodeName"].as_str() {
                        node_of.insert(key.clone(), node.to_owned());
                    }
                    if let Ok(labels) = serde_json::from_value(pod["metadata"]["labels"].clone()) {
                        labels_of.insert(key.clone(), labels);
                    }
                    if e.subresource.is_some() && e.succeeded() && ready(pod) {
                        ready_at.entry(key.clone()).or_insert(e.completed);
                    }
                }
                if e.verb == "delete" && e.succeeded() {
                    gone.insert(key.clone(), e.completed);
                    if by_tool(e) && key.0 == ztunnel_namespace {
                        ztunnel_deletes.push((key, e.received));
                    }
                }
            }
            ("", "pods/eviction") if by_tool(e) && e.verb == "create" => {
                let Some(key) = pod_key(e) else { continue };
                evictions
                    .entry(key)
                    .or_default()
                    .push((e.received, e.completed, e.code == 429));
            }
            ("", "nodes") if by_tool(e) && e.succeeded() && e.verb != "delete" => {
                let (Some(name), Some(object)) = (&e.name, &e.response_object) else {
                    continue;
                };
                let unschedulable = object["spec"]["unschedulable"].as_bool() == Some(true);
                let marks = node_marks.entry(name.clone()).or_default();
                match (unschedulable, marks.0, marks.1) {
                    (true, None, _) => marks.0 = Some(e.received),
                    (false, Some(_), None) => marks.1 = Some(e.received),
                    _ => {}
                }
            }
            ("policy", "poddisruptionbudgets/status") if e.succeeded() => {
                if let (Some(ns), Some(name), Some(pdb)) =
                    (&e.namespace, &e.name, &e.response_object)
                {
                    budget_writes.push((ns.as_str(), name.as_str(), pdb, e.completed));
                }
            }
            _ => {}
        }
    }
    let mut timelines: BTreeMap<(&str, &str), Timeline> = BTreeMap::new();
    for (ns, name, pdb, time) in budget_writes {
        let allowed = pdb["status"]["disruptionsAllowed"].as_i64().unwrap_or(0) > 0;
        let timeline = timelines.entry((ns, name)).or_default();
        if let Ok(selector) = serde_json::from_value(pdb["spec"]["selector"]["matchLabels"].clone())
        {
            timeline.selector = selector;
        }
        timeline.writes.push((time, allowed));
    }
    let budgets = Budgets {
        timelines: timelines
            .into_iter()
            .map(|((ns, _), timeline)| (ns, timeline))
            .collect(),
    };
    let no_labels = BTreeMap::new();

    let in_waves: std::collections::HashSet<&str> = waves
        .iter()
        .flat_map(|w| w.nodes.iter().map(String::as_str))
        .collect();
    let mut left_out = Vec::new();
    let mut nodes = Vec::new();
    for (node, marks) in &node_marks {
        let (Some(cordoned), Some(uncordoned)) = *marks else {
            left_out.push(node.clone());
            continue;
        };
        if !in_waves.contains(node.as_str()) {
            left_out.push(node.clone());
            continue;
        }
        let on_node = |key: &PodKey| node_of.get(key) == Some(node);
        // The drain: the evicted pod gone last.
        let last = evictions
            .iter()
            .filter(|(key, tries)| on_node(key) && tries.iter().any(|(_, _, refused)| !refused))
            .filter_map(|(key, tries)| Some((key, tries, *gone.get(key)?)))
            .max_by_key(|(_, _, at)| *at);
        let (drained, drain_tool_seconds) = match last {
            None => (cordoned, 0.0),
            Some((key, tries, at)) => {
                let labels = labels_of.get(key).unwrap_or(&no_labels);
                let mut tool = tries.first().map_or(0.0, |t| seconds(cordoned, t.0));
                for pair in tries.windows(2) {
                    let ((_, refused_at, refused), (next, _, _)) = (pair[0], pair[1]);
                    if !refused {
                        continue;
                    }
                    tool += seconds(
                        budgets.allowed_since(&key.0, labels, refused_at, next),
                        next,
                    );
                }
                (at, tool)
            }
        };
        let Some((old, ztunnel_deleted)) = ztunnel_deletes
            .iter()
            .find(|(key, at)| on_node(key) && *at >= cordoned)
            .cloned()
        else {
            left_out.push(node.clone());
            continue;
        };
        // The new pod: on the node, of the deleted pod's DaemonSet (its `app` label; other
        // DaemonSets, istio-cni's, share the namespace), Ready after the delete.
        let app = |key: &PodKey| labels_of.get(key).and_then(|l| l.get("app"));
        let Some(ztunnel_ready) = ready_at
            .iter()
            .filter(|(key, at)| {
                key.0 == ztunnel_namespace
                    && **key != old
                    && on_node(key)
                    && app(key) == app(&old)
                    && **at >= ztunnel_deleted
            })
            .map(|(_, at)| *at)
            .min()
        else {
            left_out.push(node.clone());
            continue;
        };
        nodes.push(NodeSteps {
            node: node.clone(),
            cordoned,
            drained,
            drain_tool_seconds,
            ztunnel_deleted,
            ztunnel_ready,
            uncordoned,
        });
    }

    // Each node's place: when it was free, and the node whose release freed it (none for
    // the first wave's first places). Counted from every node the tool cordoned and
    // uncordoned, complete or not, so that a node left out still holds its place.
    let mut place: HashMap<&str, (Timestamp, Option<&str>)> = HashMap::new();
    let mut wave_start: (Timestamp, Option<&str>) = (started, None);
    // The waves in the order the tool ran them: by their first cordon.
    let first_cordon = |w: &Wave| {
        w.nodes
            .iter()
            .filter_map(|n| node_marks.get(n).and_then(|m| m.0))
            .min()
    };
    let mut ordered: Vec<&Wave> = waves.iter().collect();
    ordered.sort_by_key(|w| first_cordon(w));
    for wave in ordered {
        let marked: Vec<(&str, Timestamp, Timestamp)> = wave
            .nodes
            .iter()
            .filter_map(|n| match node_marks.get(n) {
                Some((Some(c), Some(u))) => Some((n.as_str(), *c, *u)),
                _ => None,
            })
            .collect();
        let mut cordons = marked.clone();
        cordons.sort_by_key(|(_, c, _)| *c);
        let mut releases = marked;
        releases.sort_by_key(|(_, _, u)| *u);
        let budget = wave.budget.max(1);
        for (k, (node, _, _)) in cordons.iter().enumerate() {
            let free = match k.checked_sub(budget) {
                None => wave_start,
                Some(r) => (releases[r].2, Some(releases[r].0)),
            };
            place.insert(node, free);
        }
        if let Some((node, _, released)) = releases.last() {
            wave_start = (*released, Some(node));
        }
    }
    let index: HashMap<&str, usize> = nodes
        .iter()
        .enumerate()
        .map(|(i, n)| (n.node.as_str(), i))
        .collect();
    let tool_by_node: Vec<[f64; 4]> = nodes
        .iter()
        .map(|n| {
            let free = place.get(n.node.as_str()).map_or(started, |p| p.0);
            let [drain, delete, uncordon] = n.own_steps();
            [
                seconds(free.max(started), n.cordoned),
                drain,
                delete,
                uncordon,
            ]
        })
        .collect();
    let path = nodes
        .iter()
        .enumerate()
        .max_by_key(|(_, n)| n.uncordoned)
        .map(|(last, n)| {
            let mut chain = vec![last];
            let mut at = n;
            while let Some(i) = place
                .get(at.node.as_str())
                .and_then(|p| p.1)
                .and_then(|freed_by| index.get(freed_by))
            {
                if chain.contains(i) {
                    break;
                }
                chain.push(*i);
                at = &nodes[*i];
            }
            chain.reverse();
            let mut tool_by_step = [0.0; 4];
            for i in &chain {
                for (sum, step) in tool_by_step.iter_mut().zip(tool_by_node[*i]) {
                    *sum += step;
                }
            }
            CriticalPath {
                nodes: chain.iter().map(|i| nodes[*i].node.clone()).collect(),
                seconds: seconds(started, n.uncordoned),
                tool_by_step,
                tool_by_node: chain.iter().map(|i| tool_by_node[*i]).collect(),
            }
        });
    Analysis {
        nodes,
        tool_by_node,
        path,
        left_out,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::invariants::audit::read_events;
    use crate::invariants::audit::tests::line;
    use serde_json::json;

    const TOOL: &str = "ztunnel-rollout/0.1.0";
    const KWOK: &str = "kwok/v0.8.0";

    fn at(ms: u64) -> String {
        let t = Timestamp::from_millisecond(1_800_000_000_000 + ms as i64).expect("time");
        t.to_string()
    }

    fn start() -> Timestamp {
        Timestamp::from_millisecond(1_800_000_000_000).expect("time")
    }

    /// One request received at `ms` and completed 1 ms later.
    fn request(ms: u64, agent: &str, verb: &str, object: Value, fields: Value) -> String {
        let mut f = json!({
            "auditID": format!("{ms}-{verb}-{}", object["name"]),
            "userAgent": agent,
            "verb": verb,
            "objectRef": object,
            "requestReceivedTimestamp": at(ms),
            "stageTimestamp": at(ms + 1),
        });
        if let (Some(f), Some(extra)) = (f.as_object_mut(), fields.as_object()) {
            for (k, v) in extra {
                f.insert(k.clone(), v.clone());
            }
        }
        line(f)
    }

    fn node_write(ms: u64, node: &str, unschedulable: bool) -> String {
        request(
            ms,
            TOOL,
            "patch",
            json!({ "resource": "nodes", "name": node }),
            json!({ "responseObject": { "kind": "Node", "spec": { "unschedulable": unschedulable } } }),
        )
    }

    fn pod(ns: &str, name: &str, node: &str, app: &str, ready: bool) -> Value {
        json!({
            "kind": "Pod",
            "metadata": { "name": name, "namespace": ns, "labels": { "app": app } },
            "spec": { "nodeName": node },
            "status": { "conditions": [{ "type": "Ready", "status": if ready { "True" } else { "False" } }] },
        })
    }

    fn pod_ref(ns: &str, name: &str, sub: Option<&str>) -> Value {
        let mut r = json!({ "resource": "pods", "namespace": ns, "name": name });
        if let Some(s) = sub {
            r["subresource"] = json!(s);
        }
        r
    }

    fn eviction(ms: u64, name: &str, refused: bool) -> String {
        request(
            ms,
            TOOL,
            "create",
            pod_ref("apps", name, Some("eviction")),
            json!({ "responseStatus": { "code": if refused { 429 } else { 201 } } }),
        )
    }

    fn gone(ms: u64, ns: &str, name: &str, node: &str, app: &str, agent: &str) -> String {
        request(
            ms,
            agent,
            "delete",
            pod_ref(ns, name, None),
            json!({ "responseObject": pod(ns, name, node, app, false) }),
        )
    }

    fn ready(ms: u64, name: &str, node: &str) -> String {
        request(
            ms,
            KWOK,
            "patch",
            pod_ref("istio-system", name, Some("status")),
            json!({ "responseObject": pod("istio-system", name, node, "ztunnel", true) }),
        )
    }

    fn budget_allows(ms: u64, app: &str, allowed: i64) -> String {
        request(
            ms,
            "kube-controller-manager/v1.36.3",
            "update",
            json!({ "apiGroup": "policy", "resource": "poddisruptionbudgets",
                    "subresource": "status", "namespace": "apps", "name": app }),
            json!({ "responseObject": {
                "kind": "PodDisruptionBudget",
                "spec": { "selector": { "matchLabels": { "app": app } } },
                "status": { "disruptionsAllowed": allowed },
            } }),
        )
    }

    /// One node from cordon to uncordon, `base` ms after the start: a pod evicted at
    /// +100, gone at +1,000, ztunnel deleted at +1,050, the new one Ready at +3,000,
    /// uncordoned at +3,020.
    fn node(base: u64, node: &str) -> Vec<String> {
        vec![
            node_write(base, node, true),
            eviction(base + 100, &format!("web-{node}"), false),
            gone(
                base + 1000,
                "apps",
                &format!("web-{node}"),
                node,
                "web",
                KWOK,
            ),
            gone(
                base + 1050,
                "istio-system",
                &format!("zt-{node}"),
                node,
                "ztunnel",
                TOOL,
            ),
            gone(
                base + 2000,
                "istio-system",
                &format!("zt-{node}"),
                node,
                "ztunnel",
                KWOK,
            ),
            ready(base + 3000, &format!("zt-new-{node}"), node),
            node_write(base + 3020, node, false),
        ]
    }

    fn wave(nodes: &[&str], budget: usize) -> Wave {
        Wave {
            nodes: nodes.iter().map(|n| n.to_string()).collect(),
            budget,
        }
    }

    fn analyse_waves(lines: Vec<String>, waves: &[Wave]) -> Analysis {
        let events = read_events(lines.join("\n").as_bytes()).expect("read");
        analyse(&events, "ztunnel-rollout/", "istio-system", start(), waves)
    }

    /// n1 alone, one at a time.
    fn analyse_lines(lines: Vec<String>) -> Analysis {
        analyse_waves(lines, &[wave(&["n1"], 1)])
    }

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 0.0015
    }

    #[test]
    fn a_node_s_steps_split_into_the_tool_s_and_the_cluster_s() {
        let a = analyse_lines(node(500, "n1"));
        assert_eq!(a.nodes.len(), 1);
        let [slot, drain, delete, uncordon] = a.tool_by_node[0];
        assert!(close(slot, 0.5), "{slot}");
        assert!(close(drain, 0.1), "{drain}");
        // Gone completes at +1,001; the delete is received at +1,050.
        assert!(close(delete, 0.049), "{delete}");
        assert!(close(uncordon, 0.019), "{uncordon}");
        let path = a.path.expect("path");
        assert_eq!(path.nodes, ["n1"]);
        assert!(close(path.seconds, 3.52), "{}", path.seconds);
        assert!(close(path.tool_seconds(), 0.5 + 0.1 + 0.049 + 0.019));
    }

    #[test]
    fn the_path_runs_back_through_the_releases_that_freed_each_node_s_place() {
        // Two at a time: n1 and n2 start; n3 takes the place n1 frees (3,020), n4 the
        // one n2 frees (3,220). n4 is released last: the path is n2, n4.
        let mut lines = node(0, "n1");
        lines.extend(node(200, "n2"));
        lines.extend(node(3100, "n3"));
        lines.extend(node(3300, "n4"));
        let a = analyse_waves(lines, &[wave(&["n1", "n2", "n3", "n4"], 2)]);
        assert!(a.left_out.is_empty(), "{:?}", a.left_out);
        let path = a.path.expect("path");
        assert_eq!(path.nodes, ["n2", "n4"]);
        // n2 waited 0.2 s from the start, n4 3,300 - 3,220 ms.
        assert!(
            close(path.tool_by_step[0], 0.2 + 0.08),
            "{:?}",
            path.tool_by_step
        );
        assert_eq!(path.tool_by_node.len(), 2);
        assert!(close(path.seconds, 6.32), "{}", path.seconds);
    }

    #[test]
    fn a_place_left_free_while_others_are_released_is_the_tool_s_time() {
        // Two at a time: n2's place is free from 3,220 ms, and n4 takes it only at
        // 6,300 (after n3's release at 6,120, the latest before it): 3.08 s are the
        // tool's, not 0.18.
        let mut lines = node(0, "n1");
        lines.extend(node(200, "n2"));
        lines.extend(node(3100, "n3"));
        lines.extend(node(6300, "n4"));
        let a = analyse_waves(lines, &[wave(&["n1", "n2", "n3", "n4"], 2)]);
        let path = a.path.expect("path");
        assert_eq!(path.nodes, ["n2", "n4"]);
        assert!(
            close(path.tool_by_step[0], 0.2 + 3.08),
            "{:?}",
            path.tool_by_step
        );
        assert!(close(path.seconds, 9.32), "{}", path.seconds);
    }

    #[test]
    fn a_wave_s_first_places_are_free_when_the_wave_before_is_done() {
        // Wave a (n1, n2 at once) ends with n2's release at 3,220; wave b's n3 starts
        // at 3,300: 0.08 s of the tool's, counted from n2's release, not n1's.
        let mut lines = node(0, "n1");
        lines.extend(node(200, "n2"));
        lines.extend(node(3300, "n3"));
        let a = analyse_waves(lines, &[wave(&["n1", "n2"], 2), wave(&["n3"], 1)]);
        let path = a.path.expect("path");
        assert_eq!(path.nodes, ["n2", "n3"]);
        assert!(
            close(path.tool_by_step[0], 0.2 + 0.08),
            "{:?}",
            path.tool_by_step
        );
    }

    /// The tool's drain time on n1 when its one pod's eviction is refused at +100 ms and
    /// retried at +800 (the pod gone at +1,500), with these budget status writes.
    fn drain_with_one_refusal(budget_writes: Vec<String>) -> f64 {
        let mut lines = budget_writes;
        lines.extend([
            node_write(0, "n1", true),
            eviction(100, "web-a", true),
            eviction(800, "web-a", false),
            gone(1500, "apps", "web-a", "n1", "web", KWOK),
        ]);
        lines.extend(node(0, "n1").into_iter().skip(3));
        let a = analyse_lines(lines);
        assert_eq!(a.nodes[0].drained.to_string(), at(1501));
        a.tool_by_node[0][1]
    }

    #[test]
    fn a_refused_eviction_counts_from_when_its_budget_allowed_again() {
        // 0.1 s to the first try, then 0.8 - 0.601 s after the budget allowed.
        let drain = drain_with_one_refusal(vec![budget_allows(600, "web", 1)]);
        assert!(close(drain, 0.1 + 0.199), "{drain}");
    }

    #[test]
    fn a_refusal_whose_budget_never_allowed_counts_whole_against_the_tool() {
        let drain = drain_with_one_refusal(vec![budget_allows(600, "other", 1)]);
        assert!(close(drain, 0.1 + 0.699), "{drain}");
    }

    #[test]
    fn a_refusal_while_the_budget_allowed_counts_whole_against_the_tool() {
        // The budget allowed a disruption before the refusal and still at the next try
        // (the refusal was not the budget's): the whole wait is the tool's.
        let drain = drain_with_one_refusal(vec![budget_allows(50, "web", 1)]);
        assert!(close(drain, 0.1 + 0.699), "{drain}");
    }

    #[test]
    fn a_refused_eviction_counts_from_the_last_time_its_budget_began_to_allow() {
        // Allowed, then none (another eviction took it), then allowed again at 600: the
        // wait counts from 601.
        let drain = drain_with_one_refusal(vec![
            budget_allows(50, "web", 1),
            budget_allows(300, "web", 0),
            budget_allows(600, "web", 1),
        ]);
        assert!(close(drain, 0.1 + 0.199), "{drain}");
    }

    #[test]
    fn a_try_while_the_budget_allows_none_is_no_delay_of_the_tool_s() {
        let drain = drain_with_one_refusal(vec![budget_allows(50, "web", 0)]);
        assert!(close(drain, 0.1), "{drain}");
    }

    #[test]
    fn another_daemonset_s_pod_ready_on_the_node_is_not_the_new_ztunnel() {
        let mut lines = node(0, "n1");
        // istio-cni's pod, same namespace, Ready between the delete and the new ztunnel.
        let cni = pod("istio-system", "cni-n1", "n1", "istio-cni-node", true);
        lines.insert(
            5,
            request(
                1500,
                KWOK,
                "patch",
                pod_ref("istio-system", "cni-n1", Some("status")),
                json!({ "responseObject": cni }),
            ),
        );
        let a = analyse_lines(lines);
        assert_eq!(a.nodes[0].ztunnel_ready.to_string(), at(3001));
    }

    #[test]
    fn a_node_that_did_not_go_the_whole_way_is_left_out() {
        let mut lines = node(0, "n1");
        lines.pop(); // never uncordoned
        let a = analyse_lines(lines);
        assert!(a.nodes.is_empty() && a.path.is_none(), "{a:?}");
        assert_eq!(a.left_out, ["n1"]);
    }

    #[test]
    fn a_node_in_no_wave_is_left_out() {
        let mut lines = node(0, "n1");
        lines.extend(node(100, "n2"));
        let a = analyse_lines(lines);
        assert_eq!(a.nodes.len(), 1);
        assert_eq!(a.left_out, ["n2"]);
    }

    #[test]
    fn another_client_s_node_steps_inside_the_tool_s_run_are_not_the_tool_s() {
        // kubectl takes n9 through the same steps while the tool runs n1 and n2 one at
        // a time: n9's release frees no place, and n9 is no node of the tool's.
        let mut lines = node(0, "n1");
        lines.extend(
            node(1000, "n9")
                .into_iter()
                .map(|l| l.replace(TOOL, "kubectl/v1.36.3")),
        );
        lines.extend(node(4100, "n2"));
        let a = analyse_waves(lines, &[wave(&["n1", "n2"], 1)]);
        let names: Vec<&str> = a.nodes.iter().map(|n| n.node.as_str()).collect();
        assert_eq!(names, ["n1", "n2"]);
        assert!(a.left_out.is_empty(), "{:?}", a.left_out);
        let path = a.path.expect("path");
        assert_eq!(path.nodes, ["n1", "n2"]);
        // n2's place is n1's, freed at 3,020 (not n9's at 4,020).
        assert!(close(a.tool_by_node[1][0], 1.08), "{:?}", a.tool_by_node);
    }
}
