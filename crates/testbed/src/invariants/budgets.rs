//! PodDisruptionBudgets: no pod a budget covers is evicted or deleted by the judged
//! actors while that budget allows no disruption.
//!
//! Read from the audit log alone: the budgets' selectors from their writes, their
//! `status.disruptionsAllowed` from the disruption controller's status writes, the pods'
//! labels from their creations. A budget's allowance at a request is the last one written
//! before the API server received it; a status write still in flight then counts too (the
//! larger of the two), so a race never reads as a breach. An eviction lowers the
//! allowance without a status write of its own: a deletion is judged against the last
//! status less the evictions of covered pods since, and a budget whose status was never
//! written allows nothing (as the API server treats it). An eviction is judged against
//! the last status alone (the API server evicts a pod not Ready or not yet Running
//! beyond the allowance, which the log cannot show). A pod already evicted or deleted
//! once is terminating: removing it again disrupts nothing.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::jiff::Timestamp;
use serde_json::Value;
use ztunnel_rollout_core::label_selector::Selector;

use super::audit::AuditEvent;
use super::{Actors, Invariant, Violation};

type Key = (String, String);

fn key(namespace: &str, name: &str) -> Key {
    (namespace.to_owned(), name.to_owned())
}

struct Budget {
    selector: Option<Selector>,
    /// (received, completed, disruptionsAllowed) of each status written.
    allowances: Vec<(Timestamp, Timestamp, i64)>,
}

impl Budget {
    /// The allowance at `at`, and when the status it comes from was written.
    fn allowed_at(&self, at: Timestamp) -> Option<(i64, Timestamp)> {
        let last = self
            .allowances
            .iter()
            .filter(|(_, completed, _)| *completed <= at)
            .max_by_key(|(_, completed, _)| *completed);
        let done = last.map(|(_, _, n)| *n);
        let in_flight = self
            .allowances
            .iter()
            .filter(|(received, completed, _)| *received <= at && at < *completed)
            .map(|(_, _, n)| *n)
            .max();
        let since = last.map(|(_, completed, _)| *completed)?;
        done.max(in_flight).map(|n| (n, since))
    }
}

fn labels(object: &Value) -> BTreeMap<String, String> {
    serde_json::from_value(object["metadata"]["labels"].clone()).unwrap_or_default()
}

/// Evictions and deletions by `actors` of pods covered by a budget that allowed no
/// disruption when the API server received them.
pub fn disruptions_beyond_budget(events: &[AuditEvent], actors: &Actors) -> Vec<Violation> {
    let mut budgets: BTreeMap<Key, Budget> = BTreeMap::new();
    let mut pod_labels: BTreeMap<Key, BTreeMap<String, String>> = BTreeMap::new();
    let mut removed: BTreeSet<Key> = BTreeSet::new();
    // When each budget's covered pods were evicted.
    let mut evictions: BTreeMap<Key, Vec<Timestamp>> = BTreeMap::new();
    let mut out = Vec::new();
    let mut ordered: Vec<&AuditEvent> = events.iter().filter(|e| e.succeeded()).collect();
    ordered.sort_by_key(|e| e.received);
    // Every budget's writes first: a status written later than a removal can still have
    // been received before it.
    for e in &ordered {
        if e.group != "policy" || e.resource != "poddisruptionbudgets" || e.verb == "delete" {
            continue;
        }
        let (Some(object), Some(ns)) = (&e.response_object, &e.namespace) else {
            continue;
        };
        let Some(name) = object["metadata"]["name"].as_str() else {
            continue;
        };
        let budget = budgets.entry(key(ns, name)).or_insert(Budget {
            selector: None,
            allowances: Vec::new(),
        });
        if let Ok(ls) = serde_json::from_value::<LabelSelector>(object["spec"]["selector"].clone())
        {
            budget.selector = Selector::from_label_selector(&ls).ok();
        }
        if let Some(n) = object["status"]["disruptionsAllowed"].as_i64()
            && object["status"]["observedGeneration"].is_i64()
        {
            budget.allowances.push((e.received, e.completed, n));
        }
    }
    for e in &ordered {
        let (Some(ns), Some(name)) = (&e.namespace, &e.name) else {
            continue;
        };
        if !e.group.is_empty() || e.resource != "pods" {
            continue;
        }
        let pod = key(ns, name);
        let removal = match (e.verb.as_str(), e.subresource.as_deref()) {
            ("create", None) => {
                if let Some(object) = &e.response_object {
                    pod_labels.insert(pod.clone(), labels(object));
                    removed.remove(&pod);
                }
                continue;
            }
            ("create", Some("eviction")) => "evicted",
            ("delete", None) => "deleted",
            _ => continue,
        };
        let first = removed.insert(pod.clone());
        if !first || !actors.contains(&e.user) {
            continue;
        }
        let Some(labels) = e
            .response_object
            .as_ref()
            .filter(|o| o["kind"] == "Pod")
            .map(labels)
            .or_else(|| pod_labels.get(&pod).cloned())
        else {
            continue;
        };
        for ((bns, bname), budget) in &budgets {
            if bns != ns || !budget.selector.as_ref().is_some_and(|s| s.matches(&labels)) {
                continue;
            }
            let evicted = evictions.entry(key(bns, bname)).or_default();
            let beyond = match (removal, budget.allowed_at(e.received)) {
                ("evicted", allowed) => {
                    evicted.push(e.received);
                    allowed.is_some_and(|(n, _)| n <= 0)
                }
                (_, None) => true,
                (_, Some((n, since))) => {
                    let since_then = evicted.iter().filter(|t| **t >= since).count() as i64;
                    n - since_then <= 0
                }
            };
            if beyond {
                out.push(Violation::new(
                    Invariant::PdbRespected,
                    format!(
                        "{} {removal} pod {ns}/{name} at {} while PodDisruptionBudget {bns}/{bname} allowed no disruption",
                        e.user, e.received
                    ),
                ));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::invariants::audit::read_events;
    use crate::invariants::audit::tests::line;

    fn at(ms: u64) -> String {
        format!("2026-12-02T10:00:00.{ms:03}000Z")
    }

    fn budget_status(id: &str, received: u64, completed: u64, allowed: i64) -> String {
        line(json!({
            "auditID": id, "verb": "update",
            "user": { "username": "system:serviceaccount:kube-system:disruption-controller" },
            "objectRef": { "resource": "poddisruptionbudgets", "subresource": "status",
                           "apiGroup": "policy", "namespace": "app", "name": "web" },
            "requestReceivedTimestamp": at(received), "stageTimestamp": at(completed),
            "responseObject": { "kind": "PodDisruptionBudget",
                "metadata": { "name": "web", "namespace": "app" },
                "spec": { "selector": { "matchLabels": { "app": "web" } } },
                "status": { "disruptionsAllowed": allowed, "observedGeneration": 1 } },
        }))
    }

    fn pod_created(id: &str, name: &str) -> String {
        line(json!({
            "auditID": id, "verb": "create", "responseStatus": { "code": 201 },
            "objectRef": { "resource": "pods", "namespace": "app", "name": name },
            "requestReceivedTimestamp": at(1), "stageTimestamp": at(2),
            "responseObject": { "kind": "Pod",
                "metadata": { "name": name, "labels": { "app": "web" } } },
        }))
    }

    fn evicted(id: &str, name: &str, user: &str, received: u64) -> String {
        line(json!({
            "auditID": id, "verb": "create", "responseStatus": { "code": 201 },
            "user": { "username": user },
            "objectRef": { "resource": "pods", "subresource": "eviction",
                           "namespace": "app", "name": name },
            "requestReceivedTimestamp": at(received), "stageTimestamp": at(received + 1),
            "responseObject": { "kind": "Status", "status": "Success" },
        }))
    }

    fn deleted(id: &str, name: &str, user: &str, received: u64) -> String {
        line(json!({
            "auditID": id, "verb": "delete",
            "user": { "username": user },
            "objectRef": { "resource": "pods", "namespace": "app", "name": name },
            "requestReceivedTimestamp": at(received), "stageTimestamp": at(received + 1),
            "responseObject": { "kind": "Pod",
                "metadata": { "name": name, "labels": { "app": "web" } } },
        }))
    }

    fn check(log: &[String]) -> Vec<Violation> {
        let events = read_events(log.join("\n").as_bytes()).expect("read");
        disruptions_beyond_budget(&events, &Actors::from(["agent".to_owned()]))
    }

    #[test]
    fn an_eviction_within_the_budget_is_fine() {
        let log = [
            pod_created("p", "web-1"),
            budget_status("b", 10, 11, 1),
            evicted("e", "web-1", "agent", 20),
        ];
        assert_eq!(check(&log), []);
    }

    #[test]
    fn a_delete_through_a_blocking_budget_is_caught_and_names_both() {
        let log = [
            pod_created("p", "web-1"),
            budget_status("b", 10, 11, 0),
            deleted("d", "web-1", "agent", 20),
        ];
        let found = check(&log);
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(
            found[0].detail.contains("deleted pod app/web-1")
                && found[0].detail.contains("app/web"),
            "{found:?}"
        );
    }

    #[test]
    fn a_status_in_flight_is_given_the_benefit_and_other_actors_are_not_judged() {
        let racing = [
            pod_created("p", "web-1"),
            budget_status("b0", 5, 6, 0),
            budget_status("b1", 15, 25, 1),
            evicted("e", "web-1", "agent", 20),
        ];
        assert_eq!(check(&racing), []);
        let someone_else = [
            pod_created("p", "web-1"),
            budget_status("b", 10, 11, 0),
            deleted("d", "web-1", "kubectl", 20),
        ];
        assert_eq!(check(&someone_else), []);
    }

    #[test]
    fn a_delete_after_an_eviction_spent_the_allowance_is_caught() {
        let log = [
            pod_created("p1", "web-1"),
            pod_created("p2", "web-2"),
            budget_status("b", 10, 11, 1),
            evicted("e", "web-1", "agent", 20),
            deleted("d", "web-2", "agent", 25),
        ];
        let found = check(&log);
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(found[0].detail.contains("web-2"), "{found:?}");
    }

    #[test]
    fn a_delete_under_a_budget_without_status_is_caught() {
        let log = [
            pod_created("p", "web-1"),
            line(json!({
                "auditID": "b", "verb": "create", "responseStatus": { "code": 201 },
                "objectRef": { "resource": "poddisruptionbudgets", "apiGroup": "policy",
                               "namespace": "app", "name": "web" },
                "requestReceivedTimestamp": at(5), "stageTimestamp": at(6),
                "responseObject": { "kind": "PodDisruptionBudget",
                    "metadata": { "name": "web", "namespace": "app" },
                    "spec": { "selector": { "matchLabels": { "app": "web" } } } },
            })),
            deleted("d", "web-1", "agent", 20),
        ];
        assert_eq!(check(&log).len(), 1);
    }

    #[test]
    fn removing_a_terminating_pod_again_disrupts_nothing() {
        let log = [
            pod_created("p", "web-1"),
            budget_status("b", 10, 11, 1),
            evicted("e", "web-1", "agent", 20),
            budget_status("b2", 30, 31, 0),
            deleted("d", "web-1", "agent", 40),
        ];
        assert_eq!(check(&log), []);
    }
}
