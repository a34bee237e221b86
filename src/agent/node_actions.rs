//! The rollout's node calls, executed on the cluster. Every mutation first checks
//! leadership and carries a precondition (resourceVersion or UID); a cordon refuses a
//! node another rollout owns; a release never uncordons a node the rollout did not
//! cordon; a ztunnel pod is deleted only while its node is unschedulable.

use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{DeleteParams, Patch, PatchParams, Preconditions};
use kube::{Api, Client};
use serde_json::json;
use ztunnel_rollout_core::labels::{
    CORDON_ID_ANNOTATION, OWNER_ANNOTATION, WAS_UNSCHEDULABLE_ANNOTATION,
};
use ztunnel_rollout_core::rollout::ownership::{
    FIELD_MANAGER, cordon_id, cordoned_again_by_someone_else, owner, recorded_was_unschedulable,
    taints_of, with_waiting_taint, without_waiting_taint,
};
use ztunnel_rollout_core::rollout::pass::{CallDone, CallError};

use crate::drain::eviction::uid_precondition_failed;
use crate::kube_client::api_failure;
use crate::leader::{Leadership, NotLeader};

#[derive(Debug, thiserror::Error)]
pub enum ActionError {
    #[error(transparent)]
    NotLeader(#[from] NotLeader),
    #[error("node {node} changed since it was read; read it again")]
    Conflict { node: String },
    #[error("node {node} is owned by rollout {owner}, not {rollout}")]
    OwnedByOther {
        node: String,
        owner: String,
        rollout: String,
    },
    #[error("node {node} is schedulable: its ztunnel pod is not deleted")]
    Schedulable { node: String },
    #[error("node {0} not found")]
    NodeGone(String),
    #[error(transparent)]
    NoVersion(#[from] NoVersion),
    #[error("{action}: {source}")]
    Kube {
        action: String,
        #[source]
        source: kube::Error,
    },
}

impl ActionError {
    /// What the pass reads of the failure; `None` when this replica lost the lease (the
    /// outcome no longer matters).
    pub fn call_error(&self) -> Option<CallError> {
        Some(match self {
            ActionError::NotLeader(_) => return None,
            ActionError::NoVersion(_) => CallError::Unsent(self.to_string()),
            ActionError::Conflict { .. } => {
                CallError::Api(ztunnel_rollout_core::api_errors::ApiFailure::Status(
                    ztunnel_rollout_core::api_errors::ApiStatus {
                        code: 409,
                        reason: "Conflict".into(),
                        message: self.to_string(),
                        ..Default::default()
                    },
                ))
            }
            ActionError::OwnedByOther { owner, .. } => CallError::OwnedBy(owner.clone()),
            ActionError::Schedulable { .. } => CallError::Schedulable,
            ActionError::NodeGone(_) => CallError::NodeGone,
            ActionError::Kube { source, .. } => CallError::Api(api_failure(source)),
        })
    }
}

#[derive(Debug, thiserror::Error)]
#[error(
    "node {node} as read has no resourceVersion: a write from it could not be conditional on it, so none was sent; read it again"
)]
pub struct NoVersion {
    pub node: String,
}

pub struct NodeActions {
    client: Client,
    leadership: Leadership,
}

fn version(n: &Node) -> Vec<String> {
    n.metadata.resource_version.clone().into_iter().collect()
}

/// The resourceVersion a write decided on `read` is conditional on. A copy without one
/// is refused: in a merge patch a missing version would be `null`, which removes the
/// precondition instead of setting it.
fn precondition(read: &Node) -> Result<&str, NoVersion> {
    read.metadata
        .resource_version
        .as_deref()
        .ok_or_else(|| NoVersion {
            node: read.metadata.name.clone().unwrap_or_default(),
        })
}

impl NodeActions {
    pub fn new(client: Client, leadership: Leadership) -> Self {
        Self { client, leadership }
    }

    fn nodes(&self) -> Api<Node> {
        Api::all(self.client.clone())
    }

    async fn read(&self, node: &str) -> Result<Node, ActionError> {
        match self.nodes().get(node).await {
            Ok(n) => Ok(n),
            Err(kube::Error::Api(s)) if s.code == 404 => {
                Err(ActionError::NodeGone(node.to_owned()))
            }
            Err(source) => Err(ActionError::Kube {
                action: format!("reading node {node}"),
                source,
            }),
        }
    }

    /// Records ownership and the node's prior schedulability, and cordons it (dropping
    /// this rollout's waiting taint, which a cordon supersedes) — in one patch,
    /// conditional on the node being unchanged since `observed` was read, so a cordon by
    /// someone else in between is never mistaken for ours. A node another rollout owns
    /// is refused.
    pub async fn record_and_cordon(
        &self,
        rollout: &str,
        observed: &Node,
        was_unschedulable: bool,
    ) -> Result<CallDone, ActionError> {
        self.leadership.check()?;
        let name = observed.metadata.name.clone().unwrap_or_default();
        if let Some(other) = owner(observed).filter(|o| *o != rollout) {
            return Err(ActionError::OwnedByOther {
                node: name,
                owner: other.to_owned(),
                rollout: rollout.to_owned(),
            });
        }
        let mut patch = json!({
            "metadata": {
                "annotations": {
                    OWNER_ANNOTATION: rollout,
                    WAS_UNSCHEDULABLE_ANNOTATION: was_unschedulable.to_string(),
                    CORDON_ID_ANNOTATION: precondition(observed)?,
                },
            },
            "spec": { "unschedulable": true },
        });
        if let Some(taints) = without_waiting_taint(taints_of(observed), rollout) {
            patch["spec"]["taints"] = json!(taints);
        }
        self.patch_node(observed, "cordoning", patch).await?;
        Ok(CallDone::Applied {
            over: version(observed),
        })
    }

    /// Removes this rollout's annotations and uncordons the node if `uncordon` and the
    /// node was schedulable before the rollout cordoned it (as its annotation says). A
    /// node without our annotation is left as it is (`NotOwned`). `observed` (the
    /// watch's copy) saves a read when it shows our ownership and is current; otherwise,
    /// after a Conflict, and when the copy has no resourceVersion, the node is read
    /// afresh.
    pub async fn release(
        &self,
        rollout: &str,
        node: &str,
        uncordon: bool,
        observed: Option<&Node>,
    ) -> Result<CallDone, ActionError> {
        self.leadership.check()?;
        let mut over = Vec::new();
        if let Some(observed) = observed.filter(|n| owner(n) == Some(rollout)) {
            over.extend(version(observed));
            match self.release_as_read(rollout, observed, uncordon).await {
                Err(ActionError::Conflict { .. } | ActionError::NoVersion(_)) => {}
                Ok(CallDone::Applied { .. }) => return Ok(CallDone::Applied { over }),
                Ok(CallDone::LeftCordoned { by, .. }) => {
                    return Ok(CallDone::LeftCordoned { over, by });
                }
                done => return done,
            }
        }
        let current = self.read(node).await?;
        over.extend(version(&current));
        match self.release_as_read(rollout, &current, uncordon).await? {
            CallDone::Applied { .. } => Ok(CallDone::Applied { over }),
            CallDone::LeftCordoned { by, .. } => Ok(CallDone::LeftCordoned { over, by }),
            other => Ok(other),
        }
    }

    /// Releases `node` only as it was in `read` (a copy taken before the caller's own
    /// checks): a patch conditional on that version, no fresh read. A node changed since
    /// (another rollout of the same name cordoned it meanwhile) is a Conflict; a copy
    /// without a resourceVersion is refused (`NoVersion`), and the caller's next copy
    /// decides again.
    pub async fn release_exactly(
        &self,
        rollout: &str,
        read: &Node,
        uncordon: bool,
    ) -> Result<CallDone, ActionError> {
        self.leadership.check()?;
        self.release_as_read(rollout, read, uncordon).await
    }

    /// `release` conditional on the node being as `read`.
    async fn release_as_read(
        &self,
        rollout: &str,
        read: &Node,
        uncordon: bool,
    ) -> Result<CallDone, ActionError> {
        let node = read.metadata.name.clone().unwrap_or_default();
        match owner(read) {
            None => return Ok(CallDone::NotOwned),
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
                "annotations": {
                    OWNER_ANNOTATION: null,
                    WAS_UNSCHEDULABLE_ANNOTATION: null,
                    CORDON_ID_ANNOTATION: null,
                },
            },
        });
        let foreign = cordoned_again_by_someone_else(read).map(str::to_owned);
        if uncordon && !was_unschedulable && foreign.is_none() {
            patch["spec"] = json!({ "unschedulable": false });
        }
        self.leadership.check()?;
        self.patch_node(read, "releasing", patch).await?;
        let over = version(read);
        Ok(match foreign {
            Some(by) if uncordon && !was_unschedulable => CallDone::LeftCordoned { over, by },
            _ => CallDone::Applied { over },
        })
    }

    /// Adds (`waiting`) or removes this rollout's PreferNoSchedule taint, keeping every
    /// other taint; conditional on the node being unchanged since `observed` was read.
    /// A removal reads the node afresh when `observed` does not show the taint (the
    /// watch may not show a recent addition yet).
    pub async fn set_waiting_taint(
        &self,
        rollout: &str,
        observed: &Node,
        waiting: bool,
    ) -> Result<CallDone, ActionError> {
        self.leadership.check()?;
        let name = observed.metadata.name.clone().unwrap_or_default();
        let fresh;
        let read = if waiting || without_waiting_taint(taints_of(observed), rollout).is_some() {
            observed
        } else {
            fresh = self.read(&name).await?;
            &fresh
        };
        let taints = taints_of(read);
        let changed = if waiting {
            with_waiting_taint(taints, rollout)
        } else {
            without_waiting_taint(taints, rollout)
        };
        let Some(taints) = changed else {
            return Ok(CallDone::Applied { over: Vec::new() });
        };
        let patch = json!({ "spec": { "taints": taints } });
        self.patch_node(read, "tainting", patch).await?;
        Ok(CallDone::Applied {
            over: version(read),
        })
    }

    /// Marks `rollout`'s annotation `was-unschedulable=true`: someone uncordoned the node
    /// after the rollout cordoned it, so a cordon it has later is not the rollout's to
    /// undo. Only the cordon `cordon` (its id): a lagging watch may show an uncordon
    /// the rollout has cordoned the node again since, and that cordon stays the rollout's
    /// (`NotOwned` then, as for a node not ours). Read afresh; 409 if it changes meanwhile.
    pub async fn disown(
        &self,
        rollout: &str,
        node: &str,
        cordon: Option<&str>,
    ) -> Result<CallDone, ActionError> {
        self.leadership.check()?;
        let n = self.read(node).await?;
        if owner(&n) != Some(rollout) || cordon.is_some_and(|id| cordon_id(&n) != Some(id)) {
            return Ok(CallDone::NotOwned);
        }
        let patch = json!({
            "metadata": { "annotations": { WAS_UNSCHEDULABLE_ANNOTATION: "true" } },
        });
        self.patch_node(&n, "annotating", patch).await?;
        Ok(CallDone::Applied { over: version(&n) })
    }

    /// Uncordons the node for its bake and keeps it `rollout`'s: the annotation stays,
    /// marked `was-unschedulable=true`, so a cordon it gets later is never the rollout's
    /// to undo. Read afresh, conditional on that copy (409 if it changes meanwhile). A
    /// cordon someone else put on it since the rollout's stays (only the mark is
    /// written); a node without the annotation is left alone (`NotOwned`).
    pub async fn uncordon_for_bake(
        &self,
        rollout: &str,
        node: &str,
    ) -> Result<CallDone, ActionError> {
        self.leadership.check()?;
        let n = self.read(node).await?;
        match owner(&n) {
            None => return Ok(CallDone::NotOwned),
            Some(other) if other != rollout => {
                return Err(ActionError::OwnedByOther {
                    node: node.to_owned(),
                    owner: other.to_owned(),
                    rollout: rollout.to_owned(),
                });
            }
            Some(_) => {}
        }
        let mut patch = json!({
            "metadata": { "annotations": { WAS_UNSCHEDULABLE_ANNOTATION: "true" } },
        });
        let foreign = cordoned_again_by_someone_else(&n).map(str::to_owned);
        if foreign.is_none() {
            patch["spec"] = json!({ "unschedulable": false });
        }
        self.leadership.check()?;
        self.patch_node(&n, "uncordoning", patch).await?;
        let over = version(&n);
        Ok(match foreign {
            Some(by) => CallDone::LeftCordoned { over, by },
            None => CallDone::Applied { over },
        })
    }

    /// Reads the node afresh: does it carry `rollout`'s annotation? (A cordon's answer
    /// was lost.)
    pub async fn check(&self, rollout: &str, node: &str) -> Result<CallDone, ActionError> {
        let n = self.read(node).await?;
        Ok(match recorded_was_unschedulable(&n, rollout) {
            Some(was_unschedulable) => CallDone::Owned {
                was_unschedulable,
                unschedulable: n
                    .spec
                    .as_ref()
                    .and_then(|s| s.unschedulable)
                    .unwrap_or(false),
                version: n.metadata.resource_version.clone().unwrap_or_default(),
            },
            None => CallDone::NotOwned,
        })
    }

    /// `patch` as a merge patch conditional on `read`'s resourceVersion (every node write
    /// goes through here): 409 means the node changed since it was read.
    async fn patch_node(
        &self,
        read: &Node,
        verb: &str,
        mut patch: serde_json::Value,
    ) -> Result<(), ActionError> {
        patch["metadata"]["resourceVersion"] = json!(precondition(read)?);
        let node = read.metadata.name.as_deref().unwrap_or_default();
        match self
            .nodes()
            .patch(node, &field_manager(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(s)) if s.code == 409 => Err(ActionError::Conflict {
                node: node.to_owned(),
            }),
            Err(kube::Error::Api(s)) if s.code == 404 => {
                Err(ActionError::NodeGone(node.to_owned()))
            }
            Err(source) => Err(ActionError::Kube {
                action: format!("{verb} node {node}"),
                source,
            }),
        }
    }

    /// Deletes the node agent's (`what`: ztunnel's, istio-cni's) pod with this UID, only
    /// if `node` is unschedulable right now (read afresh: someone may have uncordoned it
    /// since the pass decided); a pod already gone or replaced is fine.
    pub async fn delete_node_agent_pod(
        &self,
        node: &str,
        what: &str,
        namespace: &str,
        name: &str,
        uid: &str,
    ) -> Result<CallDone, ActionError> {
        self.leadership.check()?;
        let current = self.read(node).await?;
        if !current
            .spec
            .as_ref()
            .and_then(|s| s.unschedulable)
            .unwrap_or(false)
        {
            return Err(ActionError::Schedulable {
                node: node.to_owned(),
            });
        }
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
            Ok(_) => Ok(CallDone::Applied { over: Vec::new() }),
            Err(kube::Error::Api(s))
                if s.code == 404 || (s.code == 409 && uid_precondition_failed(&s.message)) =>
            {
                Ok(CallDone::Applied { over: Vec::new() })
            }
            Err(source) => Err(ActionError::Kube {
                action: format!("deleting {what} pod {namespace}/{name}"),
                source,
            }),
        }
    }
}

/// Node writes as [`FIELD_MANAGER`]: the node's managedFields then tell whether
/// someone else set `spec.unschedulable` since the rollout did.
fn field_manager() -> PatchParams {
    PatchParams {
        field_manager: Some(FIELD_MANAGER.to_owned()),
        ..Default::default()
    }
}
