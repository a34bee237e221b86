//! Two active rollouts never work on the same DaemonSet or the same nodes at once: each
//! would count the other's cordons as someone else's and start beside them, outside
//! either budget. The older one goes first (by creation time, then name); `trigger`
//! refuses to create a rollout over nodes an active one covers.

use k8s_openapi::api::core::v1::Node;

use super::pass::OtherRollout;
use crate::api::rollout::DaemonSetRef;

/// How `other` overlaps a rollout of `daemon_set` over `nodes`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Overlap {
    /// Both roll the same DaemonSet.
    SameDaemonSet,
    /// Both cover these nodes (the first few).
    Nodes(Vec<String>),
}

/// How many shared nodes an overlap names.
const NAMED: usize = 3;

/// Whether `other` (active or not) overlaps a rollout of `daemon_set` over `nodes`:
/// shared nodes first (the sharper reason), then the DaemonSet.
pub fn overlap<'a>(
    other: &OtherRollout,
    daemon_set: &DaemonSetRef,
    nodes: impl IntoIterator<Item = (&'a String, &'a Node)>,
) -> Option<Overlap> {
    let shared: Vec<String> = nodes
        .into_iter()
        .filter(|(_, n)| {
            other.nodes.as_ref().is_some_and(|s| {
                s.matches(n.metadata.labels.as_ref().unwrap_or(&Default::default()))
            })
        })
        .map(|(name, _)| name.clone())
        .take(NAMED)
        .collect();
    if !shared.is_empty() {
        return Some(Overlap::Nodes(shared));
    }
    (other.daemon_set == *daemon_set).then_some(Overlap::SameDaemonSet)
}

impl Overlap {
    /// "the same DaemonSet ns/name" or "nodes a, b, c".
    pub fn describe(&self, daemon_set: &DaemonSetRef) -> String {
        match self {
            Overlap::SameDaemonSet => format!(
                "the same DaemonSet {}/{}",
                daemon_set.namespace, daemon_set.name
            ),
            Overlap::Nodes(nodes) => format!("nodes {}", nodes.join(", ")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::label_selector::Selector;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
    use k8s_openapi::jiff::Timestamp;

    fn node(zone: &str) -> Node {
        Node {
            metadata: ObjectMeta {
                labels: Some([("zone".to_owned(), zone.to_owned())].into()),
                ..Default::default()
            },
            ..Default::default()
        }
    }

    fn other(selector: &str, ds: &str) -> OtherRollout {
        OtherRollout {
            name: "other".into(),
            created: Timestamp::UNIX_EPOCH,
            active: true,
            daemon_set: DaemonSetRef {
                namespace: "istio-system".into(),
                name: ds.into(),
            },
            nodes: Selector::parse(selector).ok(),
        }
    }

    #[test]
    fn shared_nodes_are_named_and_the_same_daemonset_overlaps_without_them() {
        let nodes: Vec<(String, Node)> = vec![
            ("a1".into(), node("a")),
            ("a2".into(), node("a")),
            ("b1".into(), node("b")),
        ];
        let ds = DaemonSetRef {
            namespace: "istio-system".into(),
            name: "ztunnel".into(),
        };
        let mine = nodes.iter().map(|(n, o)| (n, o));
        assert_eq!(
            overlap(&other("zone=a", "other-ds"), &ds, mine.clone()),
            Some(Overlap::Nodes(vec!["a1".into(), "a2".into()]))
        );
        let b_only = nodes.iter().filter(|(n, _)| n == "b1").map(|(n, o)| (n, o));
        assert_eq!(
            overlap(&other("zone=a", "ztunnel"), &ds, b_only.clone()),
            Some(Overlap::SameDaemonSet)
        );
        assert_eq!(overlap(&other("zone=a", "other-ds"), &ds, b_only), None);
    }
}
