//! Which PodDisruptionBudgets cover a pod, and how to say that one blocks it.

use std::collections::HashMap;

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;

use crate::label_selector::Selector;

/// `namespace/name` of a PDB.
pub fn pdb_name(pdb: &PodDisruptionBudget) -> String {
    format!(
        "{}/{}",
        pdb.metadata.namespace.as_deref().unwrap_or_default(),
        pdb.metadata.name.as_deref().unwrap_or_default()
    )
}

/// The PDBs in the pod's namespace whose selector matches it, sorted by name. A PDB with
/// a malformed or missing selector covers nothing, as in the disruption controller.
/// Reads the pod's namespace and labels, which the drain's trimmed pods keep
/// (`filter::keep_what_the_drain_reads`).
pub fn covering<'a>(
    pod: &Pod,
    pdbs: impl IntoIterator<Item = &'a PodDisruptionBudget>,
) -> Vec<&'a PodDisruptionBudget> {
    let labels = pod.metadata.labels.clone().unwrap_or_default();
    let mut out: Vec<&PodDisruptionBudget> = pdbs
        .into_iter()
        .filter(|pdb| pdb.metadata.namespace == pod.metadata.namespace)
        .filter(|pdb| {
            pdb.spec
                .as_ref()
                .and_then(|s| s.selector.as_ref())
                .and_then(|sel| Selector::from_label_selector(sel).ok())
                .is_some_and(|sel| sel.matches(&labels))
        })
        .collect();
    out.sort_by_key(|p| pdb_name(p));
    out
}

/// Whether every PDB covering the pod currently allows a disruption.
pub fn allows_disruption(covering: &[&PodDisruptionBudget]) -> bool {
    covering.iter().all(|pdb| {
        pdb.status
            .as_ref()
            .and_then(|s| s.disruptions_allowed)
            .unwrap_or(0)
            > 0
    })
}

/// e.g. `PDB payments/api allows 0 disruptions (needs 3 healthy, has 3)`.
pub fn describe(pdb: &PodDisruptionBudget) -> String {
    let status = pdb.status.as_ref();
    let allowed = status.and_then(|s| s.disruptions_allowed).unwrap_or(0);
    let needs = status.and_then(|s| s.desired_healthy).unwrap_or(0);
    let has = status.and_then(|s| s.current_healthy).unwrap_or(0);
    format!(
        "PDB {} allows {allowed} disruption{} (needs {needs} healthy, has {has})",
        pdb_name(pdb),
        if allowed == 1 { "" } else { "s" }
    )
}

/// Whether the PDB can never allow a disruption: it wants every pod it expects healthy
/// (`maxUnavailable: 0`, or `minAvailable` equal to the replicas).
pub fn never_allows(pdb: &PodDisruptionBudget) -> bool {
    let st = pdb.status.as_ref();
    let expected = st.and_then(|s| s.expected_pods).unwrap_or(0);
    let desired = st.and_then(|s| s.desired_healthy).unwrap_or(0);
    let allowed = st.and_then(|s| s.disruptions_allowed).unwrap_or(0);
    expected > 0 && allowed == 0 && desired >= expected
}

/// Why no drain of a node with `pods` can ever finish, checked before it is cordoned:
/// pods the drain refuses (no controller, emptyDir data), pods under several PDBs (the
/// Eviction API refuses them), pods under a PDB that can never allow a disruption.
/// Blockers that may clear (a budget waiting for replacements) are the drain's.
pub fn permanent_blockers(
    pods: &[Pod],
    pdbs: &[PodDisruptionBudget],
    opts: &super::filter::FilterOptions,
    now: jiff::Timestamp,
) -> Vec<String> {
    use super::filter::Disposition;
    let plan = super::filter::plan(pods, opts, now);
    let by_uid: HashMap<&str, &Pod> = pods
        .iter()
        .filter_map(|p| Some((p.metadata.uid.as_deref()?, p)))
        .collect();
    let mut out = Vec::new();
    for p in &plan.pods {
        let key = format!("{}/{}", p.namespace, p.name);
        match &p.disposition {
            Disposition::Refuse(why) => {
                out.push(format!("pod {key} is refused by the drain: {why}"))
            }
            Disposition::Evict { .. } => {
                let Some(pod) = by_uid.get(p.uid.as_str()) else {
                    continue;
                };
                let covering = covering(pod, pdbs);
                if covering.len() > 1 {
                    out.push(format!(
                        "pod {key} is covered by several PodDisruptionBudgets ({}); the Eviction API refuses it",
                        covering.iter().map(|b| pdb_name(b)).collect::<Vec<_>>().join(", ")
                    ));
                } else if let Some(b) = covering.iter().find(|b| never_allows(b)) {
                    out.push(format!(
                        "pod {key}: {} and can never allow one",
                        describe(b)
                    ));
                }
            }
            _ => {}
        }
    }
    out
}

/// Shares out the disruptions PDBs allow among pods waiting to retry an eviction, so that
/// when a budget frees N disruptions about N pods retry rather than all of them.
#[derive(Debug, Default)]
pub struct DisruptionClaims {
    /// Per PDB UID: the resourceVersion last seen and its allowed disruptions not yet
    /// claimed.
    unclaimed: HashMap<String, (String, i32)>,
}

impl DisruptionClaims {
    /// Claims one disruption from every covering PDB, or none if one has none left at its
    /// current resourceVersion. A pod covered by no PDB always may go.
    pub fn claim(&mut self, covering: &[&PodDisruptionBudget]) -> bool {
        let mut keys = Vec::new();
        for pdb in covering {
            let uid = pdb.metadata.uid.clone().unwrap_or_default();
            let version = pdb.metadata.resource_version.clone().unwrap_or_default();
            let allowed = pdb
                .status
                .as_ref()
                .and_then(|s| s.disruptions_allowed)
                .unwrap_or(0);
            let entry = self
                .unclaimed
                .entry(uid.clone())
                .or_insert_with(|| (version.clone(), allowed));
            if entry.0 != version {
                *entry = (version, allowed);
            }
            if entry.1 <= 0 {
                return false;
            }
            keys.push(uid);
        }
        for k in keys {
            if let Some(e) = self.unclaimed.get_mut(&k) {
                e.1 -= 1;
            }
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::policy::v1::{PodDisruptionBudgetSpec, PodDisruptionBudgetStatus};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
    use std::collections::BTreeMap;

    fn pdb(ns: &str, name: &str, app: &str, allowed: i32) -> PodDisruptionBudget {
        PodDisruptionBudget {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some(ns.into()),
                ..Default::default()
            },
            spec: Some(PodDisruptionBudgetSpec {
                selector: Some(LabelSelector {
                    match_labels: Some(BTreeMap::from([("app".into(), app.into())])),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            status: Some(PodDisruptionBudgetStatus {
                disruptions_allowed: Some(allowed),
                desired_healthy: Some(3),
                current_healthy: Some(3),
                ..Default::default()
            }),
        }
    }

    fn pod(ns: &str, app: &str) -> Pod {
        Pod {
            metadata: ObjectMeta {
                name: Some("p".into()),
                namespace: Some(ns.into()),
                labels: Some(BTreeMap::from([("app".into(), app.into())])),
                ..Default::default()
            },
            ..Default::default()
        }
    }

    #[test]
    fn covering_pdbs_are_those_of_the_namespace_that_select_the_pod() {
        let pdbs = [
            pdb("payments", "api-b", "api", 1),
            pdb("payments", "api-a", "api", 0),
            pdb("payments", "web", "web", 1),
            pdb("other", "api", "api", 1),
        ];
        let names: Vec<String> = covering(&pod("payments", "api"), &pdbs)
            .into_iter()
            .map(pdb_name)
            .collect();
        assert_eq!(names, ["payments/api-a", "payments/api-b"]);
        assert!(covering(&pod("payments", "db"), &pdbs).is_empty());
    }

    #[test]
    fn a_disruption_needs_every_covering_budget_to_allow_it() {
        let (open, closed) = (pdb("ns", "a", "x", 1), pdb("ns", "b", "x", 0));
        assert!(allows_disruption(&[&open]));
        assert!(!allows_disruption(&[&open, &closed]));
        assert!(allows_disruption(&[]));
    }

    #[test]
    fn claims_share_out_the_allowed_disruptions_per_version() {
        let mut two = pdb("ns", "web", "web", 2);
        two.metadata.uid = Some("u1".into());
        two.metadata.resource_version = Some("10".into());
        let mut claims = DisruptionClaims::default();
        assert!(claims.claim(&[&two]));
        assert!(claims.claim(&[&two]));
        assert!(
            !claims.claim(&[&two]),
            "only two disruptions were allowed at version 10"
        );
        two.metadata.resource_version = Some("11".into());
        two.status.as_mut().unwrap().disruptions_allowed = Some(1);
        assert!(claims.claim(&[&two]), "a new version brings new allowances");
        assert!(!claims.claim(&[&two]));
        assert!(claims.claim(&[]));
        let mut closed = pdb("ns", "db", "db", 0);
        closed.metadata.uid = Some("u2".into());
        two.metadata.resource_version = Some("12".into());
        assert!(
            !claims.claim(&[&two, &closed]),
            "every covering PDB must allow it"
        );
        assert!(claims.claim(&[&two]), "a refused claim takes nothing");
    }

    #[test]
    fn describes_a_blocking_budget() {
        assert_eq!(
            describe(&pdb("payments", "api", "api", 0)),
            "PDB payments/api allows 0 disruptions (needs 3 healthy, has 3)"
        );
    }
}
