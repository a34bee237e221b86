//! Calls on a `ZtunnelRollout` object itself: reading it afresh at the start of a term,
//! its finalizer, its status, and its deletion after its retention.

use kube::api::{DeleteParams, Patch, PatchParams};
use kube::{Api, Client, ResourceExt};
use serde_json::json;
use ztunnel_rollout_core::api::rollout::ZtunnelRolloutStatus;
use ztunnel_rollout_core::api_errors::{ApiFailure, ApiStatus};
use ztunnel_rollout_core::labels::FINALIZER;

use super::status_patch::apply_status;
use crate::api::ZtunnelRollout;
use crate::kube_client::api_failure;
use crate::leader::{Leadership, NotLeader};

#[derive(Debug, thiserror::Error)]
pub enum ObjectError {
    #[error(transparent)]
    NotLeader(#[from] NotLeader),
    #[error("{0}")]
    Api(ApiFailure),
}

impl From<kube::Error> for ObjectError {
    fn from(e: kube::Error) -> Self {
        ObjectError::Api(api_failure(&e))
    }
}

fn api(client: &Client) -> Api<ZtunnelRollout> {
    Api::all(client.clone())
}

/// The rollout as stored now (the watch may not show the last leader's last write).
pub async fn read(client: &Client, name: &str) -> Result<Option<ZtunnelRollout>, ObjectError> {
    Ok(api(client).get_opt(name).await?)
}

/// Adds or removes the finalizer, conditional on the object as read just before.
pub async fn set_finalizer(
    client: &Client,
    leadership: &Leadership,
    name: &str,
    add: bool,
) -> Result<(), ObjectError> {
    leadership.check()?;
    let Some(current) = api(client).get_opt(name).await? else {
        // Gone: nothing to remove; nothing to add to (the rollout must not cordon).
        return if add {
            Err(ObjectError::Api(ApiFailure::Status(ApiStatus {
                code: 404,
                reason: "NotFound".into(),
                message: format!("rollout {name} not found"),
                ..Default::default()
            })))
        } else {
            Ok(())
        };
    };
    let has = current.finalizers().iter().any(|f| f == FINALIZER);
    if has == add {
        return Ok(());
    }
    let finalizers: Vec<String> = if add {
        current
            .finalizers()
            .iter()
            .cloned()
            .chain([FINALIZER.to_owned()])
            .collect()
    } else {
        current
            .finalizers()
            .iter()
            .filter(|f| *f != FINALIZER)
            .cloned()
            .collect()
    };
    let patch = json!({ "metadata": {
        "resourceVersion": current.metadata.resource_version,
        "finalizers": finalizers,
    }});
    leadership.check()?;
    api(client)
        .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    Ok(())
}

pub async fn write_status(
    client: &Client,
    leadership: &Leadership,
    name: &str,
    status: &ZtunnelRolloutStatus,
) -> Result<(), ObjectError> {
    leadership.check()?;
    apply_status::<ZtunnelRollout>(client, name, status).await?;
    Ok(())
}

/// Deletes the finished rollout (its retention passed); gone already is fine.
pub async fn delete(
    client: &Client,
    leadership: &Leadership,
    name: &str,
    uid: &str,
) -> Result<(), ObjectError> {
    leadership.check()?;
    let params = DeleteParams {
        preconditions: Some(kube::api::Preconditions {
            uid: Some(uid.to_owned()),
            resource_version: None,
        }),
        ..Default::default()
    };
    match api(client).delete(name, &params).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => Ok(()),
        Err(e) => Err(e.into()),
    }
}
