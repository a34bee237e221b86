//! Nodes: none left cordoned that was schedulable before (unless the trial's operator
//! cordoned it), and no ztunnel pod deleted while its node was schedulable.
//!
//! The second is judged in etcd's order of writes: each node write the audit log
//! answered carries the node's `spec.unschedulable` and its revision, each pod deletion
//! the pod and the revision of the deletion. The node's state at a deletion is the one
//! its last write before that revision left.

use std::collections::{BTreeMap, BTreeSet};

use super::audit::AuditEvent;
use super::{Actors, Invariant, Violation};

/// Nodes unschedulable `after` that were schedulable `before` (or did not exist yet),
/// other than those in `operator_cordoned`. `true` = unschedulable.
pub fn left_cordoned(
    before: &BTreeMap<String, bool>,
    after: &BTreeMap<String, bool>,
    operator_cordoned: &BTreeSet<String>,
) -> Vec<Violation> {
    after
        .iter()
        .filter(|(node, unschedulable)| {
            **unschedulable
                && before.get(*node) != Some(&true)
                && !operator_cordoned.contains(*node)
        })
        .map(|(node, _)| {
            Violation::new(
                Invariant::NothingLeftCordoned,
                format!("node {node} is left cordoned; it was schedulable before the trial"),
            )
        })
        .collect()
}

/// Each node's `spec.unschedulable` after each recorded write, by revision.
fn node_states(events: &[AuditEvent]) -> BTreeMap<String, BTreeMap<u64, bool>> {
    let mut out: BTreeMap<String, BTreeMap<u64, bool>> = BTreeMap::new();
    for e in events {
        if e.group.is_empty() && e.resource == "nodes" && e.subresource.is_none() && e.succeeded() {
            let Some(object) = &e.response_object else {
                continue;
            };
            // A deletion's answer is the node as deleted: nothing to judge after it.
            if e.verb == "delete" || object["kind"] != "Node" {
                continue;
            }
            let (Some(name), Some(rev)) =
                (object["metadata"]["name"].as_str(), e.response_revision())
            else {
                continue;
            };
            let unschedulable = object["spec"]["unschedulable"].as_bool().unwrap_or(false);
            out.entry(name.to_owned())
                .or_default()
                .insert(rev, unschedulable);
        }
    }
    out
}

/// Successful deletions, by `actors`, of pods in `namespace` carrying every label of
/// `labels`, at a moment the pod's node was schedulable (or of which the log holds no
/// state at all: unknown is not safe).
pub fn ztunnel_deleted_on_schedulable(
    events: &[AuditEvent],
    actors: &Actors,
    namespace: &str,
    labels: &BTreeMap<String, String>,
) -> Vec<Violation> {
    let nodes = node_states(events);
    let mut out = Vec::new();
    for e in events {
        if !(e.verb == "delete"
            && e.group.is_empty()
            && e.resource == "pods"
            && e.subresource.is_none()
            && e.namespace.as_deref() == Some(namespace)
            && e.succeeded()
            && actors.contains(&e.user))
        {
            continue;
        }
        let Some(pod) = &e.response_object else {
            out.push(Violation::new(
                Invariant::ZtunnelOnlyOnCordoned,
                format!(
                    "{} deleted pod {namespace}/{} and the audit log has no answer to judge it by (is the invariants' audit policy on?)",
                    e.user,
                    e.name.as_deref().unwrap_or("?")
                ),
            ));
            continue;
        };
        if pod["kind"] != "Pod" {
            out.push(Violation::new(
                Invariant::ZtunnelOnlyOnCordoned,
                format!(
                    "{} deleted pod {namespace}/{} and the API server answered a {} instead of the pod: cannot judge it",
                    e.user,
                    e.name.as_deref().unwrap_or("?"),
                    pod["kind"].as_str().unwrap_or("body without a kind")
                ),
            ));
            continue;
        }
        let matches = labels
            .iter()
            .all(|(k, v)| pod["metadata"]["labels"][k].as_str() == Some(v));
        if !matches {
            continue;
        }
        let name = pod["metadata"]["name"].as_str().unwrap_or("?");
        let Some(node) = pod["spec"]["nodeName"].as_str() else {
            continue; // Never scheduled: no node to protect.
        };
        let state = e.response_revision().and_then(|rev| {
            nodes
                .get(node)
                .and_then(|states| states.range(..rev).next_back())
                .map(|(_, unschedulable)| *unschedulable)
        });
        let problem = match state {
            Some(true) => continue,
            Some(false) => "was schedulable",
            None => "has no recorded state before it",
        };
        out.push(Violation::new(
            Invariant::ZtunnelOnlyOnCordoned,
            format!(
                "{} deleted ztunnel pod {namespace}/{name} at {} while node {node} {problem}",
                e.user, e.received
            ),
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::invariants::audit::read_events;
    use crate::invariants::audit::tests::line;

    fn node_write(id: &str, rev: u64, unschedulable: bool) -> String {
        line(json!({
            "auditID": id,
            "objectRef": { "resource": "nodes", "name": "n1" },
            "responseObject": { "kind": "Node",
                "metadata": { "name": "n1", "resourceVersion": rev.to_string() },
                "spec": { "unschedulable": unschedulable } },
        }))
    }

    fn ztunnel_delete(id: &str, rev: u64, user: &str) -> String {
        line(json!({
            "auditID": id, "verb": "delete",
            "user": { "username": user },
            "objectRef": { "resource": "pods", "namespace": "istio-system", "name": "ztunnel-a" },
            "responseObject": { "kind": "Pod",
                "metadata": { "name": "ztunnel-a", "resourceVersion": rev.to_string(),
                              "labels": { "app": "ztunnel" } },
                "spec": { "nodeName": "n1" } },
        }))
    }

    fn check(log: &[String]) -> Vec<Violation> {
        let events = read_events(log.join("\n").as_bytes()).expect("read");
        ztunnel_deleted_on_schedulable(
            &events,
            &Actors::from(["agent".to_owned()]),
            "istio-system",
            &BTreeMap::from([("app".to_owned(), "ztunnel".to_owned())]),
        )
    }

    #[test]
    fn a_ztunnel_deleted_after_the_cordon_is_fine_and_before_it_is_not() {
        let cordoned_first = [
            node_write("1", 10, false),
            node_write("2", 12, true),
            ztunnel_delete("3", 13, "agent"),
        ];
        assert_eq!(check(&cordoned_first), []);
        // The uncordon's revision comes first: the deletion saw a schedulable node, even
        // though both are in the log in another order.
        let uncordoned_first = [
            node_write("1", 10, true),
            ztunnel_delete("3", 15, "agent"),
            node_write("2", 14, false),
        ];
        let found = check(&uncordoned_first);
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(found[0].detail.contains("was schedulable"), "{found:?}");
    }

    #[test]
    fn only_the_judged_actors_and_known_states_count() {
        assert_eq!(
            check(&[node_write("1", 10, false), ztunnel_delete("2", 11, "kwok")]),
            []
        );
        let unknown = check(&[ztunnel_delete("2", 11, "agent")]);
        assert!(
            unknown[0].detail.contains("no recorded state"),
            "{unknown:?}"
        );
    }

    #[test]
    fn left_cordoned_spares_the_operators_and_the_already_cordoned() {
        let before = BTreeMap::from([
            ("a".to_owned(), false),
            ("b".to_owned(), true),
            ("c".to_owned(), false),
        ]);
        let after = BTreeMap::from([
            ("a".to_owned(), true),
            ("b".to_owned(), true),
            ("c".to_owned(), true),
            ("new".to_owned(), true),
        ]);
        let found = left_cordoned(&before, &after, &BTreeSet::from(["c".to_owned()]));
        let nodes: Vec<_> = found.iter().map(|v| v.detail.clone()).collect();
        assert_eq!(found.len(), 2, "{nodes:?}");
        assert!(nodes[0].contains("node a ") && nodes[1].contains("node new "));
    }
}
