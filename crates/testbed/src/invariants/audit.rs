//! The API server's audit log, read as the checkers need it: one [`AuditEvent`] per
//! request (its `ResponseComplete` or `Panic` stage), with who sent it, from where, when
//! the server received and finished it, what it answered, and, where the audit policy
//! ([`invariants_policy`]) records them, the objects it took and gave.
//!
//! Nothing here trusts the agent: the user is the one the API server authenticated (or
//! the one it impersonated), the source address is the connection's.

use std::io::BufRead;

use k8s_openapi::jiff::Timestamp;
use serde_json::{Value, json};

/// One request, as the API server recorded it.
#[derive(Debug, Clone, PartialEq)]
pub struct AuditEvent {
    pub id: String,
    /// The impersonated user if there is one, else the authenticated user.
    pub user: String,
    /// The client's address as the API server saw it (the first of `sourceIPs`).
    pub source_ip: String,
    /// The client's own name for itself (`userAgent`; e.g. `kubectl/v1.36.3 …`): it
    /// tells apart clients that share a user, as a benchmark's tool and its harness do.
    pub user_agent: String,
    pub verb: String,
    pub group: String,
    pub resource: String,
    pub subresource: Option<String>,
    pub namespace: Option<String>,
    pub name: Option<String>,
    /// The HTTP status answered (0 when the server panicked or the log has none).
    pub code: u16,
    pub received: Timestamp,
    pub completed: Timestamp,
    pub request_object: Option<Value>,
    pub response_object: Option<Value>,
}

impl AuditEvent {
    /// A request that may change something (`create`, `update`, `patch`, `delete`,
    /// `deletecollection`).
    pub fn is_mutating(&self) -> bool {
        matches!(
            self.verb.as_str(),
            "create" | "update" | "patch" | "delete" | "deletecollection"
        )
    }

    /// Answered with success (2xx).
    pub fn succeeded(&self) -> bool {
        (200..300).contains(&self.code)
    }

    /// `resource` or `resource/subresource`.
    pub fn full_resource(&self) -> String {
        match &self.subresource {
            Some(sub) => format!("{}/{sub}", self.resource),
            None => self.resource.clone(),
        }
    }

    /// The etcd revision the answer carries (`metadata.resourceVersion` of the object
    /// written), when the policy recorded the answer.
    pub fn response_revision(&self) -> Option<u64> {
        self.response_object.as_ref().and_then(revision)
    }
}

/// `metadata.resourceVersion` as a number (the local cluster's single etcd makes these
/// one total order of writes).
pub fn revision(object: &Value) -> Option<u64> {
    object["metadata"]["resourceVersion"]
        .as_str()
        .and_then(|v| v.parse().ok())
}

#[derive(Debug, thiserror::Error)]
pub enum AuditLogError {
    #[error("reading the audit log: {0}")]
    Io(#[from] std::io::Error),
    #[error("audit event {id}: {field} is not a timestamp: {value:?}")]
    Timestamp {
        id: String,
        field: &'static str,
        value: String,
    },
}

/// The completed requests in `log`, in the log's order. A line that is not JSON (cut off
/// by a killed API server) is skipped; an event without an object reference (discovery,
/// `/healthz`) is kept with empty resource fields.
pub fn read_events(log: impl BufRead) -> Result<Vec<AuditEvent>, AuditLogError> {
    let mut out = Vec::new();
    for line in log.lines() {
        let line = line?;
        let Ok(ev) = serde_json::from_str::<Value>(&line) else {
            continue;
        };
        if !matches!(ev["stage"].as_str(), Some("ResponseComplete" | "Panic")) {
            continue;
        }
        out.push(parse(&ev)?);
    }
    Ok(out)
}

fn parse(ev: &Value) -> Result<AuditEvent, AuditLogError> {
    let id = ev["auditID"].as_str().unwrap_or_default().to_owned();
    let time = |field: &'static str| -> Result<Timestamp, AuditLogError> {
        let value = ev[field].as_str().unwrap_or_default();
        value.parse().map_err(|_| AuditLogError::Timestamp {
            id: id.clone(),
            field,
            value: value.to_owned(),
        })
    };
    let text = |v: &Value| v.as_str().map(str::to_owned);
    let object = &ev["objectRef"];
    let present = |v: &Value| (!v.is_null()).then(|| v.clone());
    Ok(AuditEvent {
        user: text(&ev["impersonatedUser"]["username"])
            .or_else(|| text(&ev["user"]["username"]))
            .unwrap_or_default(),
        source_ip: text(&ev["sourceIPs"][0]).unwrap_or_default(),
        user_agent: text(&ev["userAgent"]).unwrap_or_default(),
        verb: text(&ev["verb"]).unwrap_or_default(),
        group: text(&object["apiGroup"]).unwrap_or_default(),
        resource: text(&object["resource"]).unwrap_or_default(),
        subresource: text(&object["subresource"]),
        namespace: text(&object["namespace"]),
        name: text(&object["name"]),
        code: ev["responseStatus"]["code"].as_u64().unwrap_or(0) as u16,
        received: time("requestReceivedTimestamp")?,
        completed: time("stageTimestamp")?,
        request_object: present(&ev["requestObject"]),
        response_object: present(&ev["responseObject"]),
        id,
    })
}

/// An audit policy that records what the checkers read in full, and every other request
/// as metadata: the bodies of writes to nodes (not their status), to Leases in
/// `lease_namespace`, to PodDisruptionBudgets and their status, and of pod creations,
/// deletions, status writes and evictions. Node status and the nodes' own Leases (the simulated
/// kubelets' heartbeats) stay metadata, so the log stays small.
pub fn invariants_policy(lease_namespace: &str) -> Value {
    let writes = json!(["create", "update", "patch", "delete"]);
    json!({
        "apiVersion": "audit.k8s.io/v1",
        "kind": "Policy",
        "omitStages": ["RequestReceived"],
        "rules": [
            { "level": "RequestResponse", "verbs": writes,
              "resources": [{ "group": "", "resources": ["nodes", "pods", "pods/status", "pods/eviction"] }] },
            { "level": "RequestResponse", "verbs": writes,
              "resources": [{ "group": "policy",
                              "resources": ["poddisruptionbudgets", "poddisruptionbudgets/status"] }] },
            { "level": "RequestResponse", "verbs": writes, "namespaces": [lease_namespace],
              "resources": [{ "group": "coordination.k8s.io", "resources": ["leases"] }] },
            { "level": "Metadata" },
        ],
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// An audit log line as kube-apiserver writes it.
    pub fn line(fields: Value) -> String {
        let mut ev = json!({
            "kind": "Event", "apiVersion": "audit.k8s.io/v1", "level": "RequestResponse",
            "auditID": "a1", "stage": "ResponseComplete", "verb": "patch",
            "user": { "username": "system:admin" },
            "sourceIPs": ["127.0.0.2"],
            "userAgent": "ztunnel-rollout/0.1.0",
            "objectRef": { "resource": "nodes", "name": "n1", "apiVersion": "v1" },
            "responseStatus": { "code": 200 },
            "requestReceivedTimestamp": "2026-12-02T10:00:00.000100Z",
            "stageTimestamp": "2026-12-02T10:00:00.000300Z",
        });
        if let (Some(ev), Some(fields)) = (ev.as_object_mut(), fields.as_object()) {
            for (k, v) in fields {
                ev.insert(k.clone(), v.clone());
            }
        }
        ev.to_string()
    }

    #[test]
    fn reads_completed_requests_with_who_where_when_and_bodies() {
        let log = [
            line(json!({ "stage": "ResponseStarted" })),
            "{\"kind\":\"Event\",\"cut".to_owned(),
            line(json!({
                "impersonatedUser": { "username": "system:serviceaccount:ztunnel-rollout:ztunnel-rollout" },
                "responseObject": { "metadata": { "resourceVersion": "42" }, "spec": { "unschedulable": true } },
            })),
        ]
        .join("\n");
        let events = read_events(log.as_bytes()).expect("read");
        assert_eq!(events.len(), 1, "{events:?}");
        let e = &events[0];
        assert_eq!(
            e.user,
            "system:serviceaccount:ztunnel-rollout:ztunnel-rollout"
        );
        assert_eq!(e.source_ip, "127.0.0.2");
        assert_eq!(e.user_agent, "ztunnel-rollout/0.1.0");
        assert_eq!(e.full_resource(), "nodes");
        assert_eq!(e.name.as_deref(), Some("n1"));
        assert!(e.is_mutating() && e.succeeded());
        assert_eq!(e.response_revision(), Some(42));
        assert!(e.received < e.completed);
    }

    #[test]
    fn a_bad_timestamp_is_named() {
        let log = line(json!({ "stageTimestamp": "yesterday" }));
        let err = read_events(log.as_bytes()).expect_err("bad time");
        assert!(err.to_string().contains("stageTimestamp"), "{err}");
    }
}
