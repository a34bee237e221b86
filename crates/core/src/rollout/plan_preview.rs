//! What a rollout would do, computed without changing anything: its waves, the nodes in
//! the order they would start, what each node's drain would evict, and what would block
//! it (a PDB allowing no disruption, a pod under several PDBs, a single-replica workload,
//! a pod the drain refuses, a node whose ztunnel pod is missing or not Ready), and the
//! nodes it would skip because the ztunnel DaemonSet does not run on them. Pure: the CLI
//! feeds it the cluster's objects.

use std::collections::{BTreeMap, HashMap};

use crate::object::ObjectMetaExt;
use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::jiff::Timestamp;
use serde::Serialize;

use super::planner::{NodeObservation, NodeProgress, next, plan_waves};
use super::settings::RolloutSettings;
use crate::drain::budget::{allows_disruption, covering, describe, pdb_name};
use crate::drain::filter::{Disposition, classify};

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PlannedNode {
    pub name: String,
    /// Pods its drain would evict, `namespace/name`.
    pub evicts: Vec<String>,
    /// Pods it would leave (DaemonSet pods, skipped pods), with why.
    pub leaves: Vec<String>,
    /// What would stop or stall its drain.
    pub blockers: Vec<String>,
    /// Pods ztunnel proxies that the drain leaves on the node (DaemonSet and static
    /// pods enrolled in ambient mode): replacing ztunnel resets their connections.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub connections_reset: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PlannedWave {
    pub name: String,
    /// Nodes disrupted at once.
    pub budget: usize,
    /// In the order they would start.
    pub nodes: Vec<PlannedNode>,
}

/// A selected node the rollout skips: the ztunnel DaemonSet does not run on it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SkippedNode {
    pub name: String,
    pub why: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Plan {
    pub waves: Vec<PlannedWave>,
    pub blockers: usize,
    pub skipped: Vec<SkippedNode>,
}

fn pod_ready(p: &Pod) -> bool {
    p.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// Why a node the DaemonSet runs on would wait instead of starting: no live ztunnel pod
/// on it, or one that is not Ready.
fn ztunnel_blocker(node: &str, pods: &[&Pod], ds: &DaemonSet) -> Option<String> {
    let uid = ds.metadata.uid.as_deref();
    let live = pods.iter().find(|p| {
        p.metadata.deletion_timestamp.is_none()
            && p.owner_references()
                .iter()
                .any(|o| o.kind == "DaemonSet" && Some(o.uid.as_str()) == uid)
    });
    let why = match live {
        None => format!("no ztunnel pod on {node}"),
        Some(p) if !pod_ready(p) => format!("ztunnel pod {} is not Ready", key(p)),
        Some(_) => return None,
    };
    Some(format!(
        "{why}: the rollout does not cordon it; it waits up to ztunnelReadyTimeout, then fails the node"
    ))
}

fn key(p: &Pod) -> String {
    format!("{}/{}", p.namespace().unwrap_or_default(), p.name_any())
}

/// The controller that recreates the pod (`Kind/namespace/name`), if any.
fn owner(p: &Pod) -> Option<String> {
    p.owner_references()
        .iter()
        .find(|o| o.controller == Some(true))
        .map(|o| {
            format!(
                "{}/{}/{}",
                o.kind,
                p.namespace().unwrap_or_default(),
                o.name
            )
        })
}

/// The plan for `settings` over `nodes`, their `pods`, the cluster's `pdbs`, the
/// namespaces enrolled in ambient mode and the ztunnel DaemonSet (`None`: not found; no
/// node is skipped then).
pub fn preview(
    settings: &RolloutSettings,
    nodes: &[Node],
    pods: &[Pod],
    pdbs: &[PodDisruptionBudget],
    ambient_namespaces: &std::collections::BTreeSet<String>,
    ztunnel: Option<&DaemonSet>,
    now: Timestamp,
) -> Plan {
    let mut resets = crate::health::connections::resets_by_node(
        pods,
        ambient_namespaces,
        ztunnel.and_then(|d| d.metadata.uid.as_deref()),
    );
    let selected: Vec<&Node> = nodes
        .iter()
        .filter(|n| settings.nodes.matches(n.labels()))
        .collect();
    let mut on_node: HashMap<String, Vec<&Pod>> = HashMap::new();
    let mut replicas: BTreeMap<String, usize> = BTreeMap::new();
    for p in pods {
        if let Some(node) = p.spec.as_ref().and_then(|s| s.node_name.clone()) {
            on_node.entry(node).or_default().push(p);
        }
        if let Some(o) = owner(p).filter(|o| !o.starts_with("DaemonSet/")) {
            *replicas.entry(o).or_default() += 1;
        }
    }
    let mut planned: HashMap<String, PlannedNode> = HashMap::new();
    let mut observations = Vec::new();
    let mut skipped = Vec::new();
    let template = ztunnel
        .and_then(|d| d.spec.as_ref())
        .and_then(|s| s.template.spec.as_ref());
    for n in &selected {
        let name = n.name_any();
        if ztunnel.is_some()
            && let crate::rollout::node_machine::Placement::Excluded(why) =
                super::placement::placement(template, n)
        {
            skipped.push(SkippedNode {
                name,
                why: format!("the ztunnel DaemonSet does not run on it: {why}"),
            });
            continue;
        }
        let mut node = PlannedNode {
            name: name.clone(),
            evicts: Vec::new(),
            leaves: Vec::new(),
            blockers: Vec::new(),
            connections_reset: resets.remove(&name).unwrap_or_default(),
        };
        let here: &[&Pod] = on_node.get(&name).map(Vec::as_slice).unwrap_or_default();
        if let Some(ds) = ztunnel
            && let Some(blocker) = ztunnel_blocker(&name, here, ds)
        {
            node.blockers.push(blocker);
        }
        let mut pods: Vec<&&Pod> = here.iter().collect();
        pods.sort_by_key(|p| key(p));
        for p in pods {
            match classify(p, &settings.drain.filter, now) {
                Disposition::Evict { .. } | Disposition::AwaitTermination => {
                    node.evicts.push(key(p));
                    let budgets = covering(p, pdbs);
                    if budgets.len() > 1 {
                        let names: Vec<String> = budgets.iter().map(|b| pdb_name(b)).collect();
                        node.blockers.push(format!(
                            "{} is under several PDBs ({}): the Eviction API refuses it",
                            key(p),
                            names.join(", ")
                        ));
                    } else if !budgets.is_empty() && !allows_disruption(&budgets) {
                        node.blockers
                            .push(format!("{}: {}", key(p), describe(budgets[0])));
                    }
                    if let Some(o) = owner(p)
                        && replicas.get(&o) == Some(&1)
                    {
                        node.blockers.push(format!(
                            "{} is the only replica of {o}: it is down until rescheduled",
                            key(p)
                        ));
                    }
                }
                Disposition::Skip(why) => node.leaves.push(format!("{}: {why}", key(p))),
                Disposition::Refuse(why) => node
                    .blockers
                    .push(format!("{}: the drain refuses it: {why}", key(p))),
            }
        }
        observations.push(NodeObservation::pending(
            name.clone(),
            n.labels().get(&settings.waves.group_by).cloned(),
            node.evicts.len(),
        ));
        planned.insert(name, node);
    }
    // The start order within each wave is the planner's: simulate it node by node.
    let mut order: Vec<String> = Vec::new();
    let mut sim = observations.clone();
    while let super::planner::Decision::Start { nodes, .. } = next(&sim, &settings.waves) {
        if nodes.is_empty() {
            break;
        }
        for n in &nodes {
            if let Some(o) = sim.iter_mut().find(|o| &o.name == n) {
                o.progress = NodeProgress::Finished;
            }
            order.push(n.clone());
        }
    }
    let position: HashMap<&String, usize> = order.iter().enumerate().map(|(i, n)| (n, i)).collect();
    let waves: Vec<PlannedWave> = plan_waves(&observations, &settings.waves)
        .into_iter()
        .map(|w| {
            let budget = settings.waves.max_unavailable.budget(w.nodes.len());
            let mut nodes: Vec<PlannedNode> =
                w.nodes.iter().filter_map(|n| planned.remove(n)).collect();
            nodes.sort_by_key(|n| position.get(&n.name).copied().unwrap_or(usize::MAX));
            PlannedWave {
                name: w.name,
                budget,
                nodes,
            }
        })
        .collect();
    let blockers = waves
        .iter()
        .flat_map(|w| w.nodes.iter())
        .map(|n| n.blockers.len())
        .sum();
    Plan {
        waves,
        blockers,
        skipped,
    }
}

/// The table form.
pub fn render(plan: &Plan) -> String {
    let mut out = String::new();
    for w in &plan.waves {
        out.push_str(&format!(
            "WAVE {} ({} node(s), {} at a time)\n",
            w.name,
            w.nodes.len(),
            w.budget
        ));
        out.push_str(&format!(
            "  {:<4} {:<32} {:>6}  BLOCKERS\n",
            "#", "NODE", "EVICTS"
        ));
        for (i, n) in w.nodes.iter().enumerate() {
            out.push_str(&format!(
                "  {:<4} {:<32} {:>6}  {}\n",
                i + 1,
                n.name,
                n.evicts.len(),
                if n.blockers.is_empty() {
                    "-".to_owned()
                } else {
                    n.blockers.join("; ")
                }
            ));
            if !n.connections_reset.is_empty() {
                out.push_str(&format!(
                    "       stay on the node, connections reset when ztunnel is replaced: {}\n",
                    n.connections_reset.join(", ")
                ));
            }
        }
    }
    if !plan.skipped.is_empty() {
        out.push_str(&format!(
            "SKIPPED ({} node(s), never touched)\n",
            plan.skipped.len()
        ));
        for s in &plan.skipped {
            out.push_str(&format!("  {:<32} {}\n", s.name, s.why));
        }
    }
    out.push_str(&format!("{} blocker(s)\n", plan.blockers));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rollout::settings::settings;
    use k8s_openapi::api::policy::v1::PodDisruptionBudgetStatus;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
    use std::collections::BTreeMap as Map;
    use ztunnel_rollout_testbed::fixtures;

    fn node(name: &str, zone: &str) -> Node {
        fixtures::node(
            name,
            &Map::from([(fixtures::ZONE_LABEL.to_owned(), zone.to_owned())]),
        )
    }

    fn pod(name: &str, node: &str, app: &str, owner: &str) -> Pod {
        let mut p = Pod::default();
        p.metadata.name = Some(name.into());
        p.metadata.namespace = Some("shop".into());
        p.metadata.labels = Some(Map::from([("app".to_owned(), app.to_owned())]));
        p.metadata.owner_references = Some(vec![OwnerReference {
            kind: "ReplicaSet".into(),
            name: owner.into(),
            controller: Some(true),
            ..Default::default()
        }]);
        p.spec = Some(k8s_openapi::api::core::v1::PodSpec {
            node_name: Some(node.into()),
            ..Default::default()
        });
        p
    }

    fn pdb(name: &str, app: &str, allowed: i32) -> PodDisruptionBudget {
        let mut b = fixtures::pdb(
            "shop",
            name,
            Map::from([("app".to_owned(), app.to_owned())]),
            fixtures::Budget::MinAvailable(
                k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(1),
            ),
        );
        b.status = Some(PodDisruptionBudgetStatus {
            disruptions_allowed: Some(allowed),
            desired_healthy: Some(2),
            current_healthy: Some(2),
            expected_pods: Some(2),
            ..Default::default()
        });
        b
    }

    fn rollout_settings() -> RolloutSettings {
        settings(
            &serde_json::from_value(serde_json::json!({
                "waves": { "groupBy": fixtures::ZONE_LABEL, "maxUnavailable": 1 }
            }))
            .unwrap(),
        )
        .unwrap()
    }

    fn t() -> Timestamp {
        "2026-11-29T10:00:00Z".parse().unwrap()
    }

    #[test]
    fn waves_list_nodes_in_start_order_with_what_they_evict() {
        let nodes = [node("a1", "a"), node("a2", "a"), node("b1", "b")];
        let pods = [
            pod("web-1", "a1", "web", "web-rs"),
            pod("web-2", "a1", "web", "web-rs"),
            pod("web-3", "b1", "web", "web-rs"),
        ];
        let plan = preview(
            &rollout_settings(),
            &nodes,
            &pods,
            &[],
            &Default::default(),
            None,
            t(),
        );
        assert_eq!(plan.waves.len(), 2);
        let a: Vec<(&str, usize)> = plan.waves[0]
            .nodes
            .iter()
            .map(|n| (n.name.as_str(), n.evicts.len()))
            .collect();
        assert_eq!(a, [("a2", 0), ("a1", 2)], "fewest pods first");
        assert_eq!(plan.waves[1].nodes[0].evicts, ["shop/web-3"]);
        assert_eq!(plan.blockers, 0);
        assert!(render(&plan).contains("WAVE a (2 node(s), 1 at a time)"));
    }

    #[test]
    fn enrolled_pods_the_drain_leaves_are_listed_with_their_connections_reset() {
        let nodes = [node("a1", "a")];
        let log: Pod = serde_json::from_value(serde_json::json!({
            "metadata": { "name": "log-1", "namespace": "shop", "ownerReferences": [
                { "apiVersion": "apps/v1", "kind": "DaemonSet", "name": "log-agent", "uid": "l", "controller": true }
            ] },
            "spec": { "nodeName": "a1", "containers": [] },
        }))
        .unwrap();
        let pods = [log, pod("web-1", "a1", "web", "web-rs")];
        let ambient = std::collections::BTreeSet::from(["shop".to_owned()]);
        let plan = preview(&rollout_settings(), &nodes, &pods, &[], &ambient, None, t());
        let n = &plan.waves[0].nodes[0];
        assert_eq!(n.connections_reset, ["shop/log-1 (DaemonSet log-agent)"]);
        assert!(
            render(&plan).contains(
                "stay on the node, connections reset when ztunnel is replaced: shop/log-1 (DaemonSet log-agent)"
            ),
            "{}",
            render(&plan)
        );
        // Not enrolled: nothing to say.
        let plan = preview(
            &rollout_settings(),
            &nodes,
            &pods,
            &[],
            &Default::default(),
            None,
            t(),
        );
        assert!(plan.waves[0].nodes[0].connections_reset.is_empty());
    }

    #[test]
    fn blocking_budgets_overlapping_budgets_and_single_replicas_are_named() {
        let nodes = [node("a1", "a")];
        let pods = [
            pod("api-1", "a1", "api", "api-rs"),
            pod("api-2", "a1", "api", "api-rs"),
            pod("cart-1", "a1", "cart", "cart-rs"),
            pod("cart-2", "a1", "cart", "cart-rs"),
            pod("db-0", "a1", "db", "db-rs"),
        ];
        let pdbs = [
            pdb("api", "api", 0),
            pdb("cart-a", "cart", 1),
            pdb("cart-b", "cart", 1),
        ];
        let plan = preview(
            &rollout_settings(),
            &nodes,
            &pods,
            &pdbs,
            &Default::default(),
            None,
            t(),
        );
        let blockers = &plan.waves[0].nodes[0].blockers;
        assert!(
            blockers
                .iter()
                .any(|b| b.contains("shop/api-1: PDB shop/api allows 0 disruptions")),
            "{blockers:?}"
        );
        assert!(
            blockers.iter().any(|b| b.contains("shop/cart-1 is under several PDBs (shop/cart-a, shop/cart-b)")),
            "{blockers:?}"
        );
        assert!(
            blockers
                .iter()
                .any(|b| b.contains("shop/db-0 is the only replica of ReplicaSet/shop/db-rs")),
            "{blockers:?}"
        );
        assert_eq!(plan.blockers, blockers.len());
    }

    #[test]
    fn nodes_ztunnel_does_not_run_on_are_skipped_and_one_missing_its_pod_is_a_blocker() {
        let mut windows = node("w1", "a");
        windows
            .metadata
            .labels
            .get_or_insert_default()
            .insert("kubernetes.io/os".into(), "windows".into());
        let nodes = [node("a1", "a"), node("a2", "a"), windows];
        let mut f = fixtures::ZtunnelFixture::new("istio-system", "1.28.0");
        f.node_selector = Map::from([("kubernetes.io/os".to_owned(), "linux".to_owned())]);
        let mut ds = f.daemonset();
        ds.metadata.uid = Some("ds".into());
        let mut zt = pod("ztunnel-1", "a1", "ztunnel", "x");
        zt.metadata.owner_references = Some(vec![OwnerReference {
            kind: "DaemonSet".into(),
            uid: "ds".into(),
            controller: Some(true),
            ..Default::default()
        }]);
        zt.status = Some(k8s_openapi::api::core::v1::PodStatus {
            conditions: Some(vec![k8s_openapi::api::core::v1::PodCondition {
                type_: "Ready".into(),
                status: "True".into(),
                ..Default::default()
            }]),
            ..Default::default()
        });
        let plan = preview(
            &rollout_settings(),
            &nodes,
            &[zt],
            &[],
            &Default::default(),
            Some(&ds),
            t(),
        );
        assert_eq!(
            plan.skipped,
            [SkippedNode {
                name: "w1".into(),
                why: "the ztunnel DaemonSet does not run on it: its nodeSelector kubernetes.io/os=linux does not match".into()
            }]
        );
        let wave = &plan.waves[0];
        let names: Vec<&str> = wave.nodes.iter().map(|n| n.name.as_str()).collect();
        assert_eq!(names.len(), 2, "{names:?}");
        let a2 = wave.nodes.iter().find(|n| n.name == "a2").expect("a2");
        assert_eq!(
            a2.blockers,
            [
                "no ztunnel pod on a2: the rollout does not cordon it; it waits up to ztunnelReadyTimeout, then fails the node"
            ]
        );
        let a1 = wave.nodes.iter().find(|n| n.name == "a1").expect("a1");
        assert!(a1.blockers.is_empty(), "{:?}", a1.blockers);
        assert!(render(&plan).contains("SKIPPED (1 node(s), never touched)"));
    }
}
