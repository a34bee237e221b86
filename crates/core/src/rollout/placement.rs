//! Whether a DaemonSet runs a pod on a node, as its controller decides: the pod
//! template's node selector, its required node affinity, and its tolerations of the
//! node's NoSchedule and NoExecute taints (with the tolerations the DaemonSet
//! controller adds to every daemon pod, such as `node.kubernetes.io/unschedulable`).
//! Nodes the ztunnel DaemonSet does not run on — Windows nodes under Istio's
//! `kubernetes.io/os: linux` selector, virtual nodes, nodes with taints ztunnel does not
//! tolerate — are skipped by a rollout and never touched.

use k8s_openapi::api::core::v1::{Node, NodeSelectorRequirement, PodSpec, Taint, Toleration};

use crate::rollout::node_machine::Placement;

/// Taints every daemon pod tolerates (the DaemonSet controller adds these tolerations).
const DAEMON_TOLERATED: [&str; 7] = [
    "node.kubernetes.io/not-ready",
    "node.kubernetes.io/unreachable",
    "node.kubernetes.io/disk-pressure",
    "node.kubernetes.io/memory-pressure",
    "node.kubernetes.io/pid-pressure",
    "node.kubernetes.io/unschedulable",
    "node.kubernetes.io/network-unavailable",
];

/// The node's taints that decide whether a daemon pod runs there: NoSchedule and
/// NoExecute ones, but for those every daemon pod tolerates (a cordon's
/// `node.kubernetes.io/unschedulable` among them).
pub fn judged_taints(node: &Node) -> impl Iterator<Item = &Taint> {
    node.spec
        .as_ref()
        .and_then(|s| s.taints.as_deref())
        .unwrap_or_default()
        .iter()
        .filter(|t| {
            matches!(t.effect.as_str(), "NoSchedule" | "NoExecute")
                && !DAEMON_TOLERATED.contains(&t.key.as_str())
        })
}

/// Whether the pods of a DaemonSet with pod `template` run on `node`, and if not, why.
pub fn placement(template: Option<&PodSpec>, node: &Node) -> Placement {
    let Some(spec) = template else {
        return Placement::Runs;
    };
    static NO_LABELS: std::collections::BTreeMap<String, String> =
        std::collections::BTreeMap::new();
    let labels = node.metadata.labels.as_ref().unwrap_or(&NO_LABELS);
    let name = node.metadata.name.as_deref().unwrap_or_default();
    for (key, value) in spec.node_selector.iter().flatten() {
        if labels.get(key) != Some(value) {
            return Placement::Excluded(format!("its nodeSelector {key}={value} does not match"));
        }
    }
    let terms = spec
        .affinity
        .as_ref()
        .and_then(|a| a.node_affinity.as_ref())
        .and_then(|na| {
            na.required_during_scheduling_ignored_during_execution
                .as_ref()
        })
        .map(|r| r.node_selector_terms.as_slice())
        .unwrap_or_default();
    if !terms.is_empty()
        && !terms.iter().any(|t| {
            t.match_expressions
                .iter()
                .flatten()
                .all(|r| requirement(r, labels.get(&r.key).map(String::as_str)))
                && t.match_fields
                    .iter()
                    .flatten()
                    .all(|r| r.key != "metadata.name" || requirement(r, Some(name)))
        })
    {
        return Placement::Excluded("its required node affinity does not match".into());
    }
    let tolerations = spec.tolerations.as_deref().unwrap_or_default();
    for taint in judged_taints(node) {
        if !tolerations.iter().any(|t| tolerates(t, taint)) {
            return Placement::Excluded(format!(
                "it does not tolerate the taint {}{}:{}",
                taint.key,
                taint
                    .value
                    .as_deref()
                    .map(|v| format!("={v}"))
                    .unwrap_or_default(),
                taint.effect
            ));
        }
    }
    Placement::Runs
}

/// One `matchExpressions` requirement against a label's value (`None`: no label).
fn requirement(r: &NodeSelectorRequirement, value: Option<&str>) -> bool {
    let values = r.values.as_deref().unwrap_or_default();
    match r.operator.as_str() {
        "In" => value.is_some_and(|v| values.iter().any(|x| x == v)),
        "NotIn" => value.is_none_or(|v| !values.iter().any(|x| x == v)),
        "Exists" => value.is_some(),
        "DoesNotExist" => value.is_none(),
        "Gt" | "Lt" => {
            let (Some(v), Some(bound)) = (
                value.and_then(|v| v.parse::<i64>().ok()),
                values.first().and_then(|b| b.parse::<i64>().ok()),
            ) else {
                return false;
            };
            if r.operator == "Gt" {
                v > bound
            } else {
                v < bound
            }
        }
        _ => false,
    }
}

fn tolerates(t: &Toleration, taint: &Taint) -> bool {
    if t.effect
        .as_deref()
        .is_some_and(|e| !e.is_empty() && e != taint.effect)
    {
        return false;
    }
    let exists = t.operator.as_deref() == Some("Exists");
    match t.key.as_deref() {
        None | Some("") => exists,
        Some(key) if key != taint.key => false,
        Some(_) if exists => true,
        Some(_) => {
            t.value.as_deref().unwrap_or_default() == taint.value.as_deref().unwrap_or_default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{
        Affinity, NodeAffinity, NodeSelector, NodeSelectorTerm, NodeSpec,
    };
    use std::collections::BTreeMap;

    fn node(labels: &[(&str, &str)], taints: Vec<Taint>) -> Node {
        let mut n = Node::default();
        n.metadata.name = Some("n1".into());
        n.metadata.labels = Some(
            labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        );
        n.spec = Some(NodeSpec {
            taints: Some(taints),
            ..Default::default()
        });
        n
    }

    fn taint(key: &str, value: Option<&str>, effect: &str) -> Taint {
        Taint {
            key: key.into(),
            value: value.map(str::to_owned),
            effect: effect.into(),
            time_added: None,
        }
    }

    fn toleration(key: Option<&str>, operator: &str, effect: Option<&str>) -> Toleration {
        Toleration {
            key: key.map(str::to_owned),
            operator: Some(operator.into()),
            effect: effect.map(str::to_owned),
            ..Default::default()
        }
    }

    /// What Istio's ztunnel chart renders.
    fn ztunnel() -> PodSpec {
        PodSpec {
            node_selector: Some(BTreeMap::from([(
                "kubernetes.io/os".to_owned(),
                "linux".to_owned(),
            )])),
            tolerations: Some(vec![
                toleration(None, "Exists", Some("NoSchedule")),
                toleration(Some("CriticalAddonsOnly"), "Exists", None),
                toleration(None, "Exists", Some("NoExecute")),
            ]),
            ..Default::default()
        }
    }

    #[test]
    fn istios_ztunnel_runs_on_linux_nodes_whatever_their_taints() {
        let linux = node(
            &[("kubernetes.io/os", "linux")],
            vec![
                taint("dedicated", Some("gpu"), "NoSchedule"),
                taint("node.kubernetes.io/unschedulable", None, "NoSchedule"),
            ],
        );
        assert_eq!(placement(Some(&ztunnel()), &linux), Placement::Runs);
        let windows = node(&[("kubernetes.io/os", "windows")], vec![]);
        assert!(matches!(
            placement(Some(&ztunnel()), &windows),
            Placement::Excluded(why) if why.contains("kubernetes.io/os=linux")
        ));
    }

    #[test]
    fn untolerated_taints_and_affinity_exclude_a_node() {
        let picky = PodSpec {
            tolerations: Some(vec![toleration(
                Some("dedicated"),
                "Equal",
                Some("NoSchedule"),
            )]),
            ..Default::default()
        };
        let mut t = toleration(Some("dedicated"), "Equal", Some("NoSchedule"));
        t.value = Some("gpu".into());
        let tolerant = PodSpec {
            tolerations: Some(vec![t]),
            ..Default::default()
        };
        let gpu = node(&[], vec![taint("dedicated", Some("gpu"), "NoSchedule")]);
        assert!(
            matches!(placement(Some(&picky), &gpu), Placement::Excluded(w) if w.contains("dedicated=gpu:NoSchedule"))
        );
        assert_eq!(placement(Some(&tolerant), &gpu), Placement::Runs);
        let soft = node(
            &[],
            vec![taint("dedicated", Some("gpu"), "PreferNoSchedule")],
        );
        assert_eq!(
            placement(Some(&picky), &soft),
            Placement::Runs,
            "only hard taints count"
        );

        let virtual_nodes_out = PodSpec {
            affinity: Some(Affinity {
                node_affinity: Some(NodeAffinity {
                    required_during_scheduling_ignored_during_execution: Some(NodeSelector {
                        node_selector_terms: vec![NodeSelectorTerm {
                            match_expressions: Some(vec![NodeSelectorRequirement {
                                key: "type".into(),
                                operator: "NotIn".into(),
                                values: Some(vec!["virtual-kubelet".into()]),
                            }]),
                            match_fields: None,
                        }],
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert!(matches!(
            placement(
                Some(&virtual_nodes_out),
                &node(&[("type", "virtual-kubelet")], vec![])
            ),
            Placement::Excluded(_)
        ));
        assert_eq!(
            placement(Some(&virtual_nodes_out), &node(&[("type", "kwok")], vec![])),
            Placement::Runs
        );
    }
}
