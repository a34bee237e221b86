//! Which ztunnel revision is current, and whether the DaemonSet lets us choose when its
//! pods are replaced.

use crate::labels::REVISION_HASH_LABEL;
use k8s_openapi::api::apps::v1::{ControllerRevision, DaemonSet};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RevisionError {
    #[error("DaemonSet {0} has no uid (not read from the API server?)")]
    NoUid(String),
    #[error(
        "DaemonSet {name} generation {generation} is not observed by the DaemonSet controller yet (observed {observed}); its current revision is not known"
    )]
    NotObserved {
        name: String,
        generation: i64,
        observed: i64,
    },
    #[error("DaemonSet {0} has no ControllerRevision yet")]
    NoRevision(String),
}

/// The hash of the DaemonSet's newest ControllerRevision: the one the DaemonSet
/// controller gives new pods. Pods whose `controller-revision-hash` differs are outdated.
pub fn current_revision_hash(
    ds: &DaemonSet,
    revisions: &[ControllerRevision],
) -> Result<String, RevisionError> {
    let name = format!(
        "{}/{}",
        ds.metadata.namespace.as_deref().unwrap_or_default(),
        ds.metadata.name.as_deref().unwrap_or_default()
    );
    let uid = ds
        .metadata
        .uid
        .as_deref()
        .ok_or_else(|| RevisionError::NoUid(name.clone()))?;
    let generation = ds.metadata.generation.unwrap_or(0);
    let observed = ds
        .status
        .as_ref()
        .and_then(|s| s.observed_generation)
        .unwrap_or(0);
    if observed < generation {
        return Err(RevisionError::NotObserved {
            name,
            generation,
            observed,
        });
    }
    revisions
        .iter()
        .filter(|r| {
            r.metadata
                .owner_references
                .iter()
                .flatten()
                .any(|o| o.controller == Some(true) && o.uid == uid)
        })
        .max_by_key(|r| r.revision)
        .and_then(|r| revision_hash(ds.metadata.name.as_deref().unwrap_or_default(), r))
        .ok_or(RevisionError::NoRevision(name))
}

fn revision_hash(ds_name: &str, r: &ControllerRevision) -> Option<String> {
    r.metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(REVISION_HASH_LABEL).cloned())
        .or_else(|| {
            r.metadata
                .name
                .as_deref()
                .and_then(|n| n.strip_prefix(&format!("{ds_name}-")))
                .map(str::to_owned)
        })
}

/// The DaemonSet's (by uid) ControllerRevisions with their hashes.
fn owned<'a>(
    ds_name: &str,
    ds_uid: &str,
    revisions: &'a [ControllerRevision],
) -> Vec<(&'a ControllerRevision, String)> {
    revisions
        .iter()
        .filter(|r| {
            r.metadata
                .owner_references
                .iter()
                .flatten()
                .any(|o| o.controller == Some(true) && o.uid == ds_uid)
        })
        .filter_map(|r| Some((r, revision_hash(ds_name, r)?)))
        .collect()
}

/// The name of the DaemonSet's ControllerRevision with `hash`.
pub fn revision_name(
    ds_name: &str,
    ds_uid: &str,
    hash: &str,
    revisions: &[ControllerRevision],
) -> Option<String> {
    owned(ds_name, ds_uid, revisions)
        .into_iter()
        .find(|(_, h)| h == hash)
        .and_then(|(r, _)| r.metadata.name.clone())
}

/// The ControllerRevision to roll back to from `current_hash`: the newest one of the
/// DaemonSet (by uid) older than the current one with another hash — what
/// `kubectl rollout undo` picks. Its name, or `None` when there is no history.
pub fn previous_revision(
    ds_name: &str,
    ds_uid: &str,
    current_hash: &str,
    revisions: &[ControllerRevision],
) -> Option<(String, String)> {
    let owned = owned(ds_name, ds_uid, revisions);
    let current = owned
        .iter()
        .filter(|(_, h)| h == current_hash)
        .map(|(r, _)| r.revision)
        .max()?;
    owned
        .into_iter()
        .filter(|(r, h)| r.revision < current && h != current_hash)
        .max_by_key(|(r, _)| r.revision)
        .and_then(|(r, h)| Some((r.metadata.name.clone()?, h)))
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StrategyVerdict {
    /// OnDelete: pods are replaced only when we delete them.
    OnDelete,
    /// RollingUpdate: the DaemonSet controller replaces pods itself and ignores our waves.
    RollingUpdateAllowed,
    RollingUpdateRefused(String),
}

/// Whether the rollout may proceed with this DaemonSet's update strategy.
pub fn strategy_verdict(ds: &DaemonSet, allow_rolling_update: bool) -> StrategyVerdict {
    let strategy = ds
        .spec
        .as_ref()
        .and_then(|s| s.update_strategy.as_ref())
        .and_then(|u| u.type_.as_deref())
        .unwrap_or("RollingUpdate");
    match (strategy, allow_rolling_update) {
        ("OnDelete", _) => StrategyVerdict::OnDelete,
        (_, true) => StrategyVerdict::RollingUpdateAllowed,
        (other, false) => StrategyVerdict::RollingUpdateRefused(format!(
            "DaemonSet update strategy is {other}: the DaemonSet controller replaces ztunnel pods itself, ignoring waves and drains. Set updateStrategy.type: OnDelete (Istio's recommended ztunnel upgrade procedure), or allow RollingUpdate explicitly in the rollout spec"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::apps::v1::{DaemonSetSpec, DaemonSetStatus, DaemonSetUpdateStrategy};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
    use std::collections::BTreeMap;

    fn ds(generation: i64, observed: i64, strategy: Option<&str>) -> DaemonSet {
        DaemonSet {
            metadata: ObjectMeta {
                name: Some("ztunnel".into()),
                namespace: Some("istio-system".into()),
                uid: Some("ds-uid".into()),
                generation: Some(generation),
                ..Default::default()
            },
            spec: Some(DaemonSetSpec {
                update_strategy: strategy.map(|s| DaemonSetUpdateStrategy {
                    type_: Some(s.into()),
                    rolling_update: None,
                }),
                ..Default::default()
            }),
            status: Some(DaemonSetStatus {
                observed_generation: Some(observed),
                ..Default::default()
            }),
        }
    }

    fn revision(hash: &str, number: i64, owner: &str) -> ControllerRevision {
        ControllerRevision {
            metadata: ObjectMeta {
                name: Some(format!("ztunnel-{hash}")),
                labels: Some(BTreeMap::from([(
                    REVISION_HASH_LABEL.to_owned(),
                    hash.to_owned(),
                )])),
                owner_references: Some(vec![OwnerReference {
                    kind: "DaemonSet".into(),
                    name: "ztunnel".into(),
                    uid: owner.into(),
                    controller: Some(true),
                    ..Default::default()
                }]),
                ..Default::default()
            },
            revision: number,
            data: None,
        }
    }

    #[test]
    fn the_newest_owned_revision_is_current() {
        let revs = [
            revision("aaa", 1, "ds-uid"),
            revision("ccc", 3, "ds-uid"),
            revision("zzz", 9, "other"),
            revision("bbb", 2, "ds-uid"),
        ];
        assert_eq!(
            current_revision_hash(&ds(3, 3, None), &revs),
            Ok("ccc".into())
        );
        let mut unlabelled = revision("ddd", 4, "ds-uid");
        unlabelled.metadata.labels = None;
        assert_eq!(
            current_revision_hash(&ds(3, 3, None), &[unlabelled]),
            Ok("ddd".into())
        );
    }

    #[test]
    fn a_rollback_goes_to_the_newest_older_revision_with_another_hash() {
        let revisions = [
            revision("a", 1, "ds-uid"),
            revision("b", 2, "ds-uid"),
            revision("c", 4, "ds-uid"),
            revision("x", 3, "other-uid"),
        ];
        assert_eq!(
            previous_revision("ztunnel", "ds-uid", "c", &revisions),
            Some(("ztunnel-b".into(), "b".into()))
        );
        assert_eq!(
            previous_revision("ztunnel", "ds-uid", "b", &revisions),
            Some(("ztunnel-a".into(), "a".into()))
        );
        assert_eq!(
            previous_revision("ztunnel", "ds-uid", "a", &revisions),
            None
        );
        assert_eq!(
            previous_revision("ztunnel", "ds-uid", "zz", &revisions),
            None
        );
        assert_eq!(
            revision_name("ztunnel", "ds-uid", "b", &revisions).as_deref(),
            Some("ztunnel-b")
        );
        assert_eq!(revision_name("ztunnel", "ds-uid", "x", &revisions), None);
    }

    #[test]
    fn an_unobserved_generation_or_no_revision_is_an_error() {
        let revs = [revision("aaa", 1, "ds-uid")];
        let err = current_revision_hash(&ds(4, 3, None), &revs).unwrap_err();
        assert!(
            err.to_string().contains("generation 4 is not observed"),
            "{err}"
        );
        let err =
            current_revision_hash(&ds(1, 1, None), &[revision("zzz", 1, "other")]).unwrap_err();
        assert_eq!(
            err,
            RevisionError::NoRevision("istio-system/ztunnel".into())
        );
    }

    #[test]
    fn rolling_update_needs_explicit_permission() {
        assert_eq!(
            strategy_verdict(&ds(1, 1, Some("OnDelete")), false),
            StrategyVerdict::OnDelete
        );
        assert_eq!(
            strategy_verdict(&ds(1, 1, Some("RollingUpdate")), true),
            StrategyVerdict::RollingUpdateAllowed
        );
        assert!(
            matches!(strategy_verdict(&ds(1, 1, None), false), StrategyVerdict::RollingUpdateRefused(m) if m.contains("OnDelete"))
        );
    }
}
