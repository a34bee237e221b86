//! Writing a custom resource's status: a server-side apply of the whole status, owned by
//! the agent's field manager, on the status subresource.

use kube::api::{Patch, PatchParams};
use kube::{Api, Client, Resource};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::json;

/// The field manager of every object the agent writes.
pub const FIELD_MANAGER: &str = "ztunnel-rollout";

/// Applies `status` to the cluster-scoped object `name` of kind `K`.
pub async fn apply_status<K>(
    client: &Client,
    name: &str,
    status: &impl Serialize,
) -> Result<(), kube::Error>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + std::fmt::Debug,
{
    let patch = json!({
        "apiVersion": K::api_version(&()),
        "kind": K::kind(&()),
        "status": status,
    });
    Api::<K>::all(client.clone())
        .patch_status(
            name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&patch),
        )
        .await
        .map(drop)
}
