//! No double eviction: each pod (by UID, from its creation in the audit log; by
//! namespace and name where the log has no creation) is evicted successfully at most once.

use std::collections::BTreeMap;

use super::audit::AuditEvent;
use super::{Actors, Invariant, Violation};

/// Pods evicted successfully more than once by `actors`.
pub fn evicted_twice(events: &[AuditEvent], actors: &Actors) -> Vec<Violation> {
    let mut ordered: Vec<&AuditEvent> = events.iter().filter(|e| e.succeeded()).collect();
    ordered.sort_by_key(|e| e.received);
    let mut uid_of: BTreeMap<(String, String), String> = BTreeMap::new();
    let mut evictions: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for e in ordered {
        let (Some(ns), Some(name)) = (&e.namespace, &e.name) else {
            continue;
        };
        if !e.group.is_empty() || e.resource != "pods" || e.verb != "create" {
            continue;
        }
        let pod = (ns.clone(), name.clone());
        match e.subresource.as_deref() {
            None => {
                if let Some(uid) = e
                    .response_object
                    .as_ref()
                    .and_then(|o| o["metadata"]["uid"].as_str())
                {
                    uid_of.insert(pod, uid.to_owned());
                }
            }
            Some("eviction") if actors.contains(&e.user) => {
                let id = match uid_of.get(&pod) {
                    Some(uid) => format!("{ns}/{name} (uid {uid})"),
                    None => format!("{ns}/{name}"),
                };
                evictions
                    .entry(id)
                    .or_default()
                    .push(format!("{} at {}", e.user, e.received));
            }
            Some(_) => {}
        }
    }
    evictions
        .into_iter()
        .filter(|(_, by)| by.len() > 1)
        .map(|(pod, by)| {
            Violation::new(
                Invariant::NoDoubleEviction,
                format!("pod {pod} evicted {} times: {}", by.len(), by.join(", ")),
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::invariants::audit::read_events;
    use crate::invariants::audit::tests::line;

    fn created(id: &str, uid: &str, ms: u64) -> String {
        line(json!({
            "auditID": id, "verb": "create", "responseStatus": { "code": 201 },
            "objectRef": { "resource": "pods", "namespace": "app", "name": "db-0" },
            "requestReceivedTimestamp": format!("2026-12-02T10:00:00.{ms:03}000Z"),
            "responseObject": { "metadata": { "uid": uid } },
        }))
    }

    fn evicted(id: &str, ms: u64) -> String {
        line(json!({
            "auditID": id, "verb": "create", "responseStatus": { "code": 201 },
            "user": { "username": "agent" },
            "objectRef": { "resource": "pods", "subresource": "eviction",
                           "namespace": "app", "name": "db-0" },
            "requestReceivedTimestamp": format!("2026-12-02T10:00:00.{ms:03}000Z"),
        }))
    }

    fn check(log: &[String]) -> Vec<Violation> {
        let events = read_events(log.join("\n").as_bytes()).expect("read");
        evicted_twice(&events, &Actors::from(["agent".to_owned()]))
    }

    #[test]
    fn a_pod_evicted_twice_is_caught_but_its_successor_by_the_same_name_is_another_pod() {
        let twice = [created("c", "u1", 1), evicted("e1", 10), evicted("e2", 20)];
        let found = check(&twice);
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(found[0].detail.contains("uid u1"), "{found:?}");
        let successor = [
            created("c1", "u1", 1),
            evicted("e1", 10),
            created("c2", "u2", 15),
            evicted("e2", 20),
        ];
        assert_eq!(check(&successor), []);
    }
}
