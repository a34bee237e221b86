//! The shell around the node state machine: executes its actions on the cluster. Every
//! mutation first checks leadership, carries a precondition (resourceVersion or UID), and
//! never uncordons a node the rollout did not cordon.

use k8s_openapi::api::core::v1::{Node, Pod, Taint};
use kube::api::{DeleteParams, Patch, PatchParams, Preconditions};
use kube::{Api, Client};
use serde_json::json;

use crate::drain::eviction::uid_precondition_failed;
use crate::leader::{Leadership, NotLeader};

/// On a node we cordoned: the rollout that owns the node.
pub const OWNER_ANNOTATION: &str = "ztunnel-rollout.dev/rollout";
/// On a node we cordoned: whether it was unschedulable before (then it stays cordoned).
pub const WAS_UNSCHEDULABLE_ANNOTATION: &str = "ztunnel-rollout.dev/was-unschedulable";

/// On nodes still waiting for their turn: evicted pods land preferably on nodes already
/// done, so no application pod is disrupted twice by one rollout.
pub const WAITING_TAINT: &str = "ztunnel-rollout.dev/waiting";

/// The taints with ours added, or `None` if it is there already.
/// The taint's value names the rollout.
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
        .any(|t| t.key == WAITING_TAINT && t.value.as_deref() == Some(rollout))
}

/// The taints without ours, or `None` if it was not there.
pub fn without_waiting_taint(taints: &[Taint]) -> Option<Vec<Taint>> {
    taints.iter().any(|t| t.key == WAITING_TAINT).then(|| {
        taints
            .iter()
            .filter(|t| t.key != WAITING_TAINT)
            .cloned()
            .collect()
    })
}

#[derive(Debug, thiserror::Error)]
pub enum ActionError {
    #[error(transparent)]
    NotLeader(#[from] NotLeader),
    #[error("node {node} changed since it was read; read it again before cordoning")]
    Conflict { node: String },
    #[error("node {node} is owned by rollout {owner}, not {rollout}")]
    OwnedByOther {
        node: String,
        owner: String,
        rollout: String,
    },
    #[error("{action}: {source}")]
    Kube {
        action: String,
        #[source]
        source: kube::Error,
    },
}

/// The rollout that owns the node (has cordoned it), by our annotation.
fn owner(node: &Node) -> Option<&str> {
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

pub struct NodeActions {
    client: Client,
    leadership: Leadership,
}

impl NodeActions {
    pub fn new(client: Client, leadership: Leadership) -> Self {
        Self { client, leadership }
    }

    /// Records ownership and the node's prior schedulability, and cordons it (dropping
    /// our waiting taint, which a cordon supersedes) — in one patch, conditional on the
    /// node being unchanged since `observed` was read, so a cordon by someone else in
    /// between is never mistaken for ours.
    pub async fn record_and_cordon(
        &self,
        rollout: &str,
        observed: &Node,
        was_unschedulable: bool,
    ) -> Result<(), ActionError> {
        self.leadership.check()?;
        let name = observed.metadata.name.clone().unwrap_or_default();
        let mut patch = json!({
            "metadata": {
                "resourceVersion": observed.metadata.resource_version,
                "annotations": {
                    OWNER_ANNOTATION: rollout,
                    WAS_UNSCHEDULABLE_ANNOTATION: was_unschedulable.to_string(),
                },
            },
            "spec": { "unschedulable": true },
        });
        if let Some(taints) = without_waiting_taint(taints_of(observed)) {
            patch["spec"]["taints"] = json!(taints);
        }
        self.patch_node(&name, "cordoning", &patch).await
    }

    /// Removes our annotations and uncordons the node if `uncordon` and the node was
    /// schedulable before we cordoned it. A node we do not own is left as it is.
    /// `observed` (the watch's copy) saves a read when it shows our ownership and is
    /// current; otherwise, and after a Conflict, the node is read afresh.
    pub async fn release(
        &self,
        rollout: &str,
        node: &str,
        uncordon: bool,
        observed: Option<&Node>,
    ) -> Result<(), ActionError> {
        self.leadership.check()?;
        if let Some(observed) = observed.filter(|n| owner(n) == Some(rollout)) {
            match self.release_as_read(rollout, observed, uncordon).await {
                Err(ActionError::Conflict { .. }) => {}
                done => return done,
            }
        }
        let current = Api::<Node>::all(self.client.clone())
            .get(node)
            .await
            .map_err(|source| ActionError::Kube {
                action: format!("reading node {node}"),
                source,
            })?;
        self.release_as_read(rollout, &current, uncordon).await
    }

    /// `release` conditional on the node being as `read`.
    async fn release_as_read(
        &self,
        rollout: &str,
        read: &Node,
        uncordon: bool,
    ) -> Result<(), ActionError> {
        let node = read.metadata.name.clone().unwrap_or_default();
        match owner(read) {
            None => return Ok(()),
            Some(owner) if owner != rollout => {
                return Err(ActionError::OwnedByOther {
                    node,
                    owner: owner.to_owned(),
                    rollout: rollout.to_owned(),
                });
            }
            Some(_) => {}
        }
        let was_unschedulable = recorded_was_unschedulable(read, rollout).unwrap_or(true);
        let mut patch = json!({
            "metadata": {
                "resourceVersion": read.metadata.resource_version,
                "annotations": { OWNER_ANNOTATION: null, WAS_UNSCHEDULABLE_ANNOTATION: null },
            },
        });
        if uncordon && !was_unschedulable {
            patch["spec"] = json!({ "unschedulable": false });
        }
        self.patch_node(&node, "releasing", &patch).await
    }

    /// Adds (`waiting`) or removes our PreferNoSchedule taint, keeping every other taint;
    /// conditional on the node being unchanged since `observed` was read.
    pub async fn set_waiting_taint(
        &self,
        rollout: &str,
        observed: &Node,
        waiting: bool,
    ) -> Result<(), ActionError> {
        self.leadership.check()?;
        let name = observed.metadata.name.clone().unwrap_or_default();
        let taints = taints_of(observed);
        let changed = if waiting {
            with_waiting_taint(taints, rollout)
        } else {
            without_waiting_taint(taints)
        };
        let Some(taints) = changed else { return Ok(()) };
        let patch = json!({
            "metadata": { "resourceVersion": observed.metadata.resource_version },
            "spec": { "taints": taints },
        });
        self.patch_node(&name, "tainting", &patch).await
    }

    /// A merge patch carrying a resourceVersion: 409 means the node changed since it was
    /// read.
    async fn patch_node(
        &self,
        node: &str,
        verb: &str,
        patch: &serde_json::Value,
    ) -> Result<(), ActionError> {
        match Api::<Node>::all(self.client.clone())
            .patch(node, &PatchParams::default(), &Patch::Merge(patch))
            .await
        {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(s)) if s.code == 409 => Err(ActionError::Conflict {
                node: node.to_owned(),
            }),
            Err(source) => Err(ActionError::Kube {
                action: format!("{verb} node {node}"),
                source,
            }),
        }
    }

    /// Deletes the ztunnel pod with this UID; a pod already gone or replaced is fine.
    pub async fn delete_ztunnel_pod(
        &self,
        namespace: &str,
        name: &str,
        uid: &str,
    ) -> Result<(), ActionError> {
        self.leadership.check()?;
        let params = DeleteParams {
            preconditions: Some(Preconditions {
                uid: Some(uid.to_owned()),
                resource_version: None,
            }),
            ..Default::default()
        };
        match Api::<Pod>::namespaced(self.client.clone(), namespace)
            .delete(name, &params)
            .await
        {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(s))
                if s.code == 404 || (s.code == 409 && uid_precondition_failed(&s.message)) =>
            {
                Ok(())
            }
            Err(source) => Err(ActionError::Kube {
                action: format!("deleting ztunnel pod {namespace}/{name}"),
                source,
            }),
        }
    }
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
        assert_eq!(without_waiting_taint(&added), Some(vec![other.clone()]));
        assert_eq!(without_waiting_taint(&[other]), None);
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
