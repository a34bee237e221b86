//! The failure policy's rollback: restore the DaemonSet's previous ControllerRevision,
//! as `kubectl rollout undo` does (the revision's data is a strategic merge patch of the
//! pod template). The nodes then go back through the same safe sequence, waves reversed.

use k8s_openapi::api::apps::v1::{ControllerRevision, DaemonSet};
use kube::api::{Patch, PatchParams};
use kube::{Api, Client};

use crate::leader::{Leadership, NotLeader};

#[derive(Debug, thiserror::Error)]
pub enum UndoError {
    #[error(transparent)]
    NotLeader(#[from] NotLeader),
    #[error("ControllerRevision {namespace}/{name} has no data to restore")]
    NoData { namespace: String, name: String },
    #[error("{action}: {source}")]
    Kube {
        action: String,
        #[source]
        source: kube::Error,
    },
}

impl UndoError {
    /// An API blip (connection, 5xx, throttling), not a refusal of the restore.
    pub fn is_transient(&self) -> bool {
        match self {
            UndoError::Kube { source, .. } => crate::kube_client::api_failure(source)
                .fault()
                .is_transient(),
            _ => false,
        }
    }
}

/// Patches DaemonSet `namespace/name` with ControllerRevision `revision`'s template.
pub async fn undo(
    client: &Client,
    leadership: &Leadership,
    namespace: &str,
    name: &str,
    revision: &str,
) -> Result<(), UndoError> {
    leadership.check()?;
    let kube = |action: String| move |source| UndoError::Kube { action, source };
    let rev = Api::<ControllerRevision>::namespaced(client.clone(), namespace)
        .get(revision)
        .await
        .map_err(kube(format!(
            "reading ControllerRevision {namespace}/{revision}"
        )))?;
    let data = rev.data.ok_or_else(|| UndoError::NoData {
        namespace: namespace.to_owned(),
        name: revision.to_owned(),
    })?;
    leadership.check()?;
    Api::<DaemonSet>::namespaced(client.clone(), namespace)
        .patch(name, &PatchParams::default(), &Patch::Strategic(data.0))
        .await
        .map_err(kube(format!(
            "restoring DaemonSet {namespace}/{name} to ControllerRevision {revision}"
        )))?;
    Ok(())
}
