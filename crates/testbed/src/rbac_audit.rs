//! The RBAC audit: the agent's real requests, from the API server's audit logs of the
//! whole integration suite (every test binary's cluster writes one, see
//! `tests/support`), against the rules `manifests/` grants the agent's ServiceAccount.
//! Every rule must be used by some request (verb, resource, and each resource name a
//! rule names), and every request must be granted by a rule: RBAC that is exactly what
//! the agent does, no more. `rbac-audit` (run by `e2e/test.sh` after the suite) prints
//! the verdict.
//!
//! A Role's grants count only in its namespace ([`Scope`]); the agent's ztunnel Role,
//! which `manifests/` puts in `istio-system`, is in each test's own namespace in the
//! tests, so it counts in any namespace (never for a cluster-scoped request). A request
//! the API server's RBAC refused (audit annotation `authorization.k8s.io/decision:
//! forbid`) is never granted, whatever the rules say.

use std::collections::{BTreeMap, BTreeSet};
use std::io::BufRead;

/// The directory under the cargo target's `tmp` that holds the audit logs.
pub const DIR: &str = "rbac-audit";

/// Where a role's grants apply.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Scope {
    /// A ClusterRole bound cluster-wide: everywhere.
    Cluster,
    /// A Role: requests in this namespace.
    Namespace(String),
    /// A Role whose namespace varies (the tests' ztunnel namespaces): any namespaced
    /// request.
    AnyNamespace,
}

/// One permission: API group, resource (`pods/eviction` for a subresource), verb, the
/// one resource name it is limited to, if any, and where it applies.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Grant {
    pub group: String,
    pub resource: String,
    pub verb: String,
    pub name: Option<String>,
    pub scope: Scope,
}

impl std::fmt::Display for Grant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let group = if self.group.is_empty() {
            "core"
        } else {
            &self.group
        };
        write!(f, "{} {}/{}", self.verb, group, self.resource)?;
        if let Some(n) = &self.name {
            write!(f, " named {n}")?;
        }
        match &self.scope {
            Scope::Cluster => Ok(()),
            Scope::Namespace(ns) => write!(f, " in {ns}"),
            Scope::AnyNamespace => write!(f, " in its namespace"),
        }
    }
}

/// A request as the audit log records it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Request {
    pub group: String,
    pub resource: String,
    pub verb: String,
    pub name: Option<String>,
    pub namespace: Option<String>,
    /// Refused by RBAC.
    pub forbidden: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    #[error("{what}: {source}")]
    Json {
        what: String,
        source: serde_json::Error,
    },
    #[error("{0}: not an RBAC role (no rules)")]
    NotARole(String),
}

/// The grants of a Role or ClusterRole (JSON, as `manifests/` holds them), applying in
/// `scope`.
pub fn grants(
    role: &serde_json::Value,
    what: &str,
    scope: &Scope,
) -> Result<Vec<Grant>, AuditError> {
    let rules = role["rules"]
        .as_array()
        .ok_or_else(|| AuditError::NotARole(what.to_owned()))?;
    let strings = |v: &serde_json::Value| -> Vec<String> {
        v.as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|s| s.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    };
    let mut out = Vec::new();
    for rule in rules {
        let names = strings(&rule["resourceNames"]);
        let names: Vec<Option<String>> = if names.is_empty() {
            vec![None]
        } else {
            names.into_iter().map(Some).collect()
        };
        for group in strings(&rule["apiGroups"]) {
            for resource in strings(&rule["resources"]) {
                for verb in strings(&rule["verbs"]) {
                    for name in &names {
                        out.push(Grant {
                            group: group.clone(),
                            resource: resource.clone(),
                            verb: verb.clone(),
                            name: name.clone(),
                            scope: scope.clone(),
                        });
                    }
                }
            }
        }
    }
    Ok(out)
}

/// The requests by `user` (as authenticated, or as impersonated) in one audit log, each
/// counted once (an event per stage shares its audit ID). Requests without an object
/// (discovery, `/version`) are left out: RBAC grants those to every authenticated user.
pub fn requests(log: impl BufRead, user: &str) -> Result<BTreeMap<Request, usize>, AuditError> {
    let mut seen = BTreeSet::new();
    let mut out = BTreeMap::new();
    for line in log.lines() {
        let line = line.map_err(|source| AuditError::Io {
            what: "reading an audit log".into(),
            source,
        })?;
        let Ok(ev) = serde_json::from_str::<serde_json::Value>(&line) else {
            continue; // A line cut by a killed API server.
        };
        let by = ev["impersonatedUser"]["username"]
            .as_str()
            .or_else(|| ev["user"]["username"].as_str());
        if by != Some(user) {
            continue;
        }
        let id = ev["auditID"].as_str().unwrap_or_default().to_owned();
        let object = &ev["objectRef"];
        let Some(resource) = object["resource"].as_str() else {
            continue;
        };
        if !seen.insert(id) {
            continue;
        }
        let resource = match object["subresource"].as_str() {
            Some(sub) => format!("{resource}/{sub}"),
            None => resource.to_owned(),
        };
        let request = Request {
            group: object["apiGroup"].as_str().unwrap_or_default().to_owned(),
            resource,
            verb: ev["verb"].as_str().unwrap_or_default().to_owned(),
            name: object["name"].as_str().map(str::to_owned),
            namespace: object["namespace"].as_str().map(str::to_owned),
            forbidden: ev["annotations"]["authorization.k8s.io/decision"] == "forbid",
        };
        *out.entry(request).or_insert(0) += 1;
    }
    Ok(out)
}

fn grants_request(g: &Grant, r: &Request) -> bool {
    !r.forbidden
        && g.group == r.group
        && g.resource == r.resource
        && g.verb == r.verb
        && g.name.as_ref().is_none_or(|n| r.name.as_ref() == Some(n))
        && match &g.scope {
            Scope::Cluster => true,
            Scope::Namespace(ns) => r.namespace.as_ref() == Some(ns),
            Scope::AnyNamespace => r.namespace.is_some(),
        }
}

/// What the audit found.
#[derive(Debug, Default, PartialEq)]
pub struct Verdict {
    /// Granted, never requested: broader than the agent needs.
    pub unused: Vec<Grant>,
    /// Requested, not granted by the rules, or refused by the API server's RBAC.
    pub ungranted: Vec<(Request, usize)>,
    /// Requests checked.
    pub requests: usize,
}

impl Verdict {
    pub fn passed(&self) -> bool {
        self.unused.is_empty() && self.ungranted.is_empty() && self.requests > 0
    }
}

pub fn audit(grants: &[Grant], requests: &BTreeMap<Request, usize>) -> Verdict {
    let unused = grants
        .iter()
        .filter(|g| !requests.keys().any(|r| grants_request(g, r)))
        .cloned()
        .collect();
    let ungranted = requests
        .iter()
        .filter(|(r, _)| !grants.iter().any(|g| grants_request(g, r)))
        .map(|(r, n)| (r.clone(), *n))
        .collect();
    Verdict {
        unused,
        ungranted,
        requests: requests.values().sum(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(id: &str, user: &str, verb: &str, object: serde_json::Value) -> String {
        serde_json::json!({
            "auditID": id,
            "stage": "ResponseComplete",
            "user": { "username": "admin" },
            "impersonatedUser": { "username": user },
            "verb": verb,
            "objectRef": object,
        })
        .to_string()
    }

    #[test]
    fn every_grant_must_be_used_and_every_request_granted() {
        let role = serde_json::json!({ "rules": [
            { "apiGroups": [""], "resources": ["nodes"], "verbs": ["get", "patch"] },
            { "apiGroups": ["apps"], "resources": ["daemonsets"], "resourceNames": ["ztunnel"], "verbs": ["patch"] },
            { "apiGroups": [""], "resources": ["pods/eviction"], "verbs": ["create"] },
        ]});
        let mut grants = grants(&role, "role", &Scope::Cluster).unwrap();
        assert_eq!(grants.len(), 4);
        let lease = serde_json::json!({ "rules": [
            { "apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["get"] },
        ]});
        grants.extend(super::grants(&lease, "lease", &Scope::Namespace("zr".into())).unwrap());
        let sa = "system:serviceaccount:zr:zr";
        let log = [
            event("1", sa, "get", serde_json::json!({ "resource": "nodes", "name": "n1" })),
            event("1", sa, "get", serde_json::json!({ "resource": "nodes", "name": "n1" })),
            event("2", sa, "patch", serde_json::json!({ "resource": "nodes", "name": "n1" })),
            event("3", sa, "patch", serde_json::json!({ "apiGroup": "apps", "resource": "daemonsets", "name": "other" })),
            event("4", sa, "create", serde_json::json!({ "resource": "pods", "subresource": "eviction", "name": "p" })),
            event("5", "someone-else", "delete", serde_json::json!({ "resource": "pods", "name": "p" })),
            event("6", sa, "get", serde_json::json!({})),
            // A lease in another namespace than the Role's.
            event("7", sa, "get", serde_json::json!({ "apiGroup": "coordination.k8s.io", "resource": "leases", "namespace": "other", "name": "l" })),
        ]
        .join("\n");
        let requests = requests(log.as_bytes(), sa).unwrap();
        assert_eq!(requests.values().sum::<usize>(), 5, "{requests:?}");
        let verdict = audit(&grants, &requests);
        assert!(!verdict.passed());
        // The DaemonSet patch went to another name, the lease read to another
        // namespace: those grants are unused, and those requests not granted.
        assert_eq!(
            verdict
                .unused
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>(),
            [
                "patch apps/daemonsets named ztunnel",
                "get coordination.k8s.io/leases in zr"
            ]
        );
        let refused: Vec<Option<&str>> = verdict
            .ungranted
            .iter()
            .map(|(r, _)| r.name.as_deref())
            .collect();
        assert_eq!(refused, [Some("other"), Some("l")]);
    }

    #[test]
    fn a_request_rbac_refused_is_never_granted() {
        let role = serde_json::json!({ "rules": [
            { "apiGroups": [""], "resources": ["nodes"], "verbs": ["patch"] },
        ]});
        let grants = grants(&role, "role", &Scope::Cluster).unwrap();
        let mut forbidden: serde_json::Value = serde_json::from_str(&event(
            "1",
            "sa",
            "patch",
            serde_json::json!({ "resource": "nodes", "name": "n" }),
        ))
        .unwrap();
        forbidden["annotations"] = serde_json::json!({ "authorization.k8s.io/decision": "forbid" });
        let requests = requests(forbidden.to_string().as_bytes(), "sa").unwrap();
        let verdict = audit(&grants, &requests);
        assert_eq!(verdict.unused.len(), 1);
        assert_eq!(verdict.ungranted.len(), 1);
        assert!(verdict.ungranted[0].0.forbidden);
    }

    #[test]
    fn an_audit_without_requests_fails() {
        assert!(!audit(&[], &BTreeMap::new()).passed());
    }
}
