//! Split brain: no agent replica changes anything while another holds the Lease.
//!
//! Replicas are told apart by the address the API server saw them connect from (each
//! runs behind its own proxy bound to its own loopback address), not by anything the
//! agent says. The Lease's holders come from the audit log's successful Lease writes, in
//! the order the API server finished them. A replica holds the Lease from a write naming
//! it until `leaseDurationSeconds` after that write finished, unless a later write names
//! another holder first: a lease that lapsed is nobody's, even if no one took it over. A
//! replica's write counts against it when the API server received it while the replica
//! did not hold the Lease. Lease writes themselves are the election, and Events change
//! nothing: both are left out.

use std::collections::BTreeMap;

use k8s_openapi::jiff::Timestamp;

use super::audit::AuditEvent;
use super::{Invariant, Violation};

/// The Lease the replicas elect with, and who each replica is by source address.
#[derive(Debug, Clone)]
pub struct Election {
    pub namespace: String,
    pub lease: String,
    /// Source address → the identity the replica writes into the Lease.
    pub replicas: BTreeMap<String, String>,
}

/// (finished at, holder, held until) of each Lease write, in order.
fn holders(events: &[AuditEvent], election: &Election) -> Vec<(Timestamp, String, Timestamp)> {
    let mut out: Vec<(Timestamp, String, Timestamp)> = events
        .iter()
        .filter(|e| {
            e.group == "coordination.k8s.io"
                && e.resource == "leases"
                && e.namespace.as_deref() == Some(election.namespace.as_str())
                && e.name.as_deref() == Some(election.lease.as_str())
                && e.verb != "delete"
                && e.succeeded()
        })
        .filter_map(|e| {
            let spec = &e.response_object.as_ref()?["spec"];
            let holder = spec["holderIdentity"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            let duration = spec["leaseDurationSeconds"].as_i64().unwrap_or(0);
            let until = e
                .completed
                .checked_add(k8s_openapi::jiff::SignedDuration::from_secs(duration))
                .unwrap_or(e.completed);
            Some((e.completed, holder, until))
        })
        .collect();
    out.sort_by_key(|(t, _, _)| *t);
    out
}

/// Successful writes by a replica received while it did not hold the Lease.
pub fn writes_without_lease(events: &[AuditEvent], election: &Election) -> Vec<Violation> {
    let holders = holders(events, election);
    // The holder at `t`, and whether its lease had lapsed by then.
    let holder_at = |t: Timestamp| {
        holders
            .iter()
            .take_while(|(done, _, _)| *done <= t)
            .last()
            .map(|(_, h, until)| (h.as_str(), t > *until))
    };
    events
        .iter()
        .filter(|e| e.is_mutating() && e.succeeded())
        .filter(|e| !matches!(e.resource.as_str(), "leases" | "events"))
        .filter_map(|e| {
            let identity = election.replicas.get(&e.source_ip)?;
            let at = holder_at(e.received);
            let held = at.is_some_and(|(h, lapsed)| h == identity.as_str() && !lapsed);
            (!held).then(|| {
                Violation::new(
                    Invariant::NoSplitBrain,
                    format!(
                        "replica {identity} ({}) did {} {} {} at {} while the Lease {}/{} was held by {}",
                        e.source_ip,
                        e.verb,
                        e.full_resource(),
                        e.name.as_deref().unwrap_or(""),
                        e.received,
                        election.namespace,
                        election.lease,
                        match at {
                            Some(("", _)) | None => "nobody".to_owned(),
                            Some((h, true)) => format!("nobody ({h}'s lease had lapsed)"),
                            Some((h, false)) => h.to_owned(),
                        }
                    ),
                )
            })
        })
        .collect()
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

    fn lease(id: &str, from: &str, holder: &str, completed: u64) -> String {
        line(json!({
            "auditID": id, "verb": "update", "sourceIPs": [from],
            "objectRef": { "resource": "leases", "apiGroup": "coordination.k8s.io",
                           "namespace": "ztunnel-rollout", "name": "leader" },
            "requestReceivedTimestamp": at(completed - 1), "stageTimestamp": at(completed),
            "responseObject": { "spec": { "holderIdentity": holder, "leaseDurationSeconds": 1 } },
        }))
    }

    fn cordon(id: &str, from: &str, received: u64) -> String {
        line(json!({
            "auditID": id, "sourceIPs": [from],
            "requestReceivedTimestamp": at(received), "stageTimestamp": at(received + 1),
        }))
    }

    fn check(log: &[String]) -> Vec<Violation> {
        let events = read_events(log.join("\n").as_bytes()).expect("read");
        writes_without_lease(
            &events,
            &Election {
                namespace: "ztunnel-rollout".into(),
                lease: "leader".into(),
                replicas: BTreeMap::from([
                    ("127.0.0.2".to_owned(), "a".to_owned()),
                    ("127.0.0.3".to_owned(), "b".to_owned()),
                ]),
            },
        )
    }

    #[test]
    fn the_holder_writes_and_a_deposed_replica_resuming_is_caught() {
        let log = [
            lease("l1", "127.0.0.2", "a", 10),
            cordon("c1", "127.0.0.2", 20),
            lease("l2", "127.0.0.3", "b", 30),
            cordon("c2", "127.0.0.3", 40),
            // a, paused through b's takeover, resumes and writes.
            cordon("c3", "127.0.0.2", 50),
        ];
        let found = check(&log);
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(
            found[0].detail.contains("replica a") && found[0].detail.contains("held by b"),
            "{found:?}"
        );
    }

    #[test]
    fn a_write_after_the_holders_lease_lapsed_is_caught_though_nobody_took_over() {
        // Leases of 1 s: a's write at 0.5 s is held, its write 1.2 s after the
        // renewal is not.
        let log = [
            lease("l1", "127.0.0.2", "a", 10),
            cordon("c1", "127.0.0.2", 500),
            line(json!({
                "auditID": "c2", "sourceIPs": ["127.0.0.2"],
                "requestReceivedTimestamp": "2026-12-02T10:00:01.210000Z",
                "stageTimestamp": "2026-12-02T10:00:01.211000Z",
            })),
        ];
        let found = check(&log);
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(
            found[0].detail.contains("a's lease had lapsed"),
            "{found:?}"
        );
    }

    #[test]
    fn a_write_before_any_election_or_from_an_unknown_address_is_judged_as_it_should_be() {
        let found = check(&[
            cordon("c0", "127.0.0.2", 5),
            lease("l1", "127.0.0.2", "a", 10),
        ]);
        assert!(found[0].detail.contains("held by nobody"), "{found:?}");
        assert_eq!(check(&[cordon("c0", "127.0.0.9", 5)]), []);
    }
}
