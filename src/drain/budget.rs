//! Which PodDisruptionBudgets cover a pod, and how to say that one blocks it.

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
    fn describes_a_blocking_budget() {
        assert_eq!(
            describe(&pdb("payments", "api", "api", 0)),
            "PDB payments/api allows 0 disruptions (needs 3 healthy, has 3)"
        );
    }
}
