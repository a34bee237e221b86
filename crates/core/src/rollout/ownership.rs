//! What a rollout writes on a node and reads back: the ownership annotations recorded
//! before it cordons (which rollout, and whether the node was unschedulable before), and
//! the PreferNoSchedule taint on nodes still waiting for their turn.

use k8s_openapi::api::core::v1::{Node, Taint};

use crate::labels::{
    CORDON_ID_ANNOTATION, OWNER_ANNOTATION, WAITING_TAINT, WAS_UNSCHEDULABLE_ANNOTATION,
};

fn is_waiting_taint_of(t: &Taint, rollout: &str) -> bool {
    t.key == WAITING_TAINT && t.value.as_deref() == Some(rollout)
}

/// The taints with `rollout`'s waiting taint added (the value names the rollout), or
/// `None` if a waiting taint is there already (its own, or another rollout's: only that
/// rollout removes it).
pub fn with_waiting_taint(taints: &[Taint], rollout: &str) -> Option<Vec<Taint>> {
    if taints.iter().any(|t| t.key == WAITING_TAINT) {
        return None;
    }
    let mut out = taints.to_vec();
    out.push(Taint {
        key: WAITING_TAINT.to_owned(),
        effect: "PreferNoSchedule".to_owned(),
        value: Some(rollout.to_owned()),
        time_added: None,
    });
    Some(out)
}

pub fn taints_of(node: &Node) -> &[Taint] {
    node.spec
        .as_ref()
        .and_then(|s| s.taints.as_deref())
        .unwrap_or_default()
}

/// Whether the node carries the waiting taint of `rollout`.
pub fn has_waiting_taint(node: &Node, rollout: &str) -> bool {
    taints_of(node)
        .iter()
        .any(|t| is_waiting_taint_of(t, rollout))
}

/// The rollout whose waiting taint the node carries.
pub fn waiting_taint_owner(node: &Node) -> Option<&str> {
    taints_of(node)
        .iter()
        .find(|t| t.key == WAITING_TAINT)
        .and_then(|t| t.value.as_deref())
}

/// The taints without `rollout`'s waiting taint, or `None` if it was not there (another
/// rollout's stays).
pub fn without_waiting_taint(taints: &[Taint], rollout: &str) -> Option<Vec<Taint>> {
    taints
        .iter()
        .any(|t| is_waiting_taint_of(t, rollout))
        .then(|| {
            taints
                .iter()
                .filter(|t| !is_waiting_taint_of(t, rollout))
                .cloned()
                .collect()
        })
}

/// The rollout that owns the node (has cordoned it), by our annotation.
pub fn owner(node: &Node) -> Option<&str> {
    node.metadata
        .annotations
        .as_ref()?
        .get(OWNER_ANNOTATION)
        .map(String::as_str)
}

/// `was_unschedulable` recorded on the node by `rollout`, if it owns the node.
pub fn recorded_was_unschedulable(node: &Node, rollout: &str) -> Option<bool> {
    if owner(node) != Some(rollout) {
        return None;
    }
    node.metadata
        .annotations
        .as_ref()?
        .get(WAS_UNSCHEDULABLE_ANNOTATION)
        .map(|v| v == "true")
}

/// The field manager the agent writes nodes as: the node's managedFields then say who
/// set `spec.unschedulable` last.
pub const FIELD_MANAGER: &str = "ztunnel-rollout";

/// Who set the node's `spec.unschedulable` last, by its managedFields (the newest entry
/// that owns the field), if they say.
pub fn unschedulable_set_by(node: &Node) -> Option<&str> {
    node.metadata
        .managed_fields
        .as_ref()?
        .iter()
        .filter(|m| {
            m.fields_v1.as_ref().is_some_and(|f| {
                f.0.get("f:spec")
                    .is_some_and(|spec| spec.get("f:unschedulable").is_some())
            })
        })
        .max_by_key(|m| m.time.as_ref().map(|t| t.0))
        .and_then(|m| m.manager.as_deref())
}

/// Someone other than the agent cordoned the node since the rollout did (its
/// managedFields say so): the cordon it carries now is theirs to lift, even if our
/// annotation says the rollout cordoned it (an uncordon and a cordon again, unseen
/// between two leaders).
pub fn cordoned_again_by_someone_else(node: &Node) -> Option<&str> {
    let unschedulable = node
        .spec
        .as_ref()
        .and_then(|s| s.unschedulable)
        .unwrap_or(false);
    unschedulable_set_by(node).filter(|m| unschedulable && *m != FIELD_MANAGER)
}

/// Nodes carrying the ownership annotation or the waiting taint of a rollout not among
/// `known`, by that rollout's name: candidates for the orphan sweep (a rollout removed
/// without its finalizer leaves its nodes so). `known` is what this agent watches; a
/// candidate's rollout is released only once a read finds it gone (it may be another
/// agent's).
pub fn unknown_owners<'a>(
    nodes: impl IntoIterator<Item = &'a Node>,
    known: &std::collections::HashSet<String>,
) -> std::collections::BTreeMap<String, Vec<String>> {
    let mut out: std::collections::BTreeMap<String, Vec<String>> = Default::default();
    for n in nodes {
        let name = n.metadata.name.clone().unwrap_or_default();
        let mut of: Vec<&str> = [owner(n), waiting_taint_owner(n)]
            .into_iter()
            .flatten()
            .filter(|o| !known.contains(*o))
            .collect();
        of.dedup();
        for o in of {
            out.entry(o.to_owned()).or_default().push(name.clone());
        }
    }
    out
}

/// Which cordon of its owner the node carries (absent on nodes cordoned by older
/// versions of the agent).
pub fn cordon_id(node: &Node) -> Option<&str> {
    node.metadata
        .annotations
        .as_ref()?
        .get(CORDON_ID_ANNOTATION)
        .map(String::as_str)
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
    use std::collections::BTreeMap;

    fn node(annotations: &[(&str, &str)]) -> Node {
        Node {
            metadata: ObjectMeta {
                annotations: Some(
                    annotations
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect::<BTreeMap<_, _>>(),
                ),
                ..Default::default()
            },
            ..Default::default()
        }
    }

    #[test]
    fn owners_and_waiting_taints_of_unknown_rollouts_are_sweep_candidates() {
        let named = |name: &str, mut n: Node| {
            n.metadata.name = Some(name.into());
            n
        };
        let owned = named("n1", node(&[(OWNER_ANNOTATION, "gone")]));
        let mut tainted = named("n2", node(&[]));
        tainted.spec = Some(k8s_openapi::api::core::v1::NodeSpec {
            taints: with_waiting_taint(&[], "gone"),
            ..Default::default()
        });
        let mut both = named("n3", node(&[(OWNER_ANNOTATION, "gone")]));
        both.spec.clone_from(&tainted.spec);
        let known_owner = named("n4", node(&[(OWNER_ANNOTATION, "live")]));
        let known = std::collections::HashSet::from(["live".to_owned()]);
        let found = unknown_owners([&owned, &tainted, &both, &known_owner], &known);
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found["gone"], ["n1", "n2", "n3"], "n3 once");
    }

    #[test]
    fn the_waiting_taint_is_added_and_removed_once_keeping_others() {
        let other = Taint {
            key: "dedicated".into(),
            value: Some("gpu".into()),
            effect: "NoSchedule".into(),
            time_added: None,
        };
        let added = with_waiting_taint(std::slice::from_ref(&other), "r1").unwrap();
        assert_eq!(added.len(), 2);
        assert_eq!(added[1].effect, "PreferNoSchedule");
        assert_eq!(added[1].value.as_deref(), Some("r1"));
        assert_eq!(with_waiting_taint(&added, "r1"), None, "added once");
        assert_eq!(
            without_waiting_taint(&added, "r1"),
            Some(vec![other.clone()])
        );
        assert_eq!(without_waiting_taint(&added, "r2"), None, "only its own");
        assert_eq!(with_waiting_taint(&added, "r2"), None, "nor over another's");
        assert_eq!(without_waiting_taint(&[other], "r1"), None);
    }

    #[test]
    fn only_the_owning_rollout_reads_the_record() {
        let n = node(&[
            (OWNER_ANNOTATION, "r1"),
            (WAS_UNSCHEDULABLE_ANNOTATION, "true"),
        ]);
        assert_eq!(recorded_was_unschedulable(&n, "r1"), Some(true));
        assert_eq!(recorded_was_unschedulable(&n, "r2"), None);
        let n = node(&[
            (OWNER_ANNOTATION, "r1"),
            (WAS_UNSCHEDULABLE_ANNOTATION, "false"),
        ]);
        assert_eq!(recorded_was_unschedulable(&n, "r1"), Some(false));
        assert_eq!(recorded_was_unschedulable(&node(&[]), "r1"), None);
    }
}
