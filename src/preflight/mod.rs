//! `ztunnel-rollout preflight`: the runbook's guardrails checked against the cluster
//! before a rollout. The checks are `ztunnel_rollout_core::preflight::checks`
//! (re-exported here); [`snapshot`] reads the cluster.

pub use ztunnel_rollout_core::preflight::checks;

use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment};
use k8s_openapi::api::core::v1::{Namespace, Node, Pod};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::ListParams;
use kube::{Api, Client};

/// Reads what the checks need: the ztunnel DaemonSet and every node, pod, PDB,
/// Deployment, namespace and MutatingWebhookConfiguration (one list each).
pub async fn snapshot(
    client: &Client,
    namespace: &str,
    name: &str,
) -> Result<checks::Snapshot, kube::Error> {
    let lp = ListParams::default();
    Ok(checks::Snapshot {
        ztunnel_ref: format!("{namespace}/{name}"),
        ztunnel: Api::<DaemonSet>::namespaced(client.clone(), namespace)
            .get_opt(name)
            .await?,
        nodes: Api::<Node>::all(client.clone()).list(&lp).await?.items,
        pods: Api::<Pod>::all(client.clone()).list(&lp).await?.items,
        pdbs: Api::<PodDisruptionBudget>::all(client.clone())
            .list(&lp)
            .await?
            .items,
        deployments: Api::<Deployment>::all(client.clone())
            .list(&lp)
            .await?
            .items,
        namespaces: Api::<Namespace>::all(client.clone()).list(&lp).await?.items,
        webhooks: Api::<MutatingWebhookConfiguration>::all(client.clone())
            .list(&lp)
            .await?
            .items,
        validating_webhooks: Api::<
            k8s_openapi::api::admissionregistration::v1::ValidatingWebhookConfiguration,
        >::all(client.clone())
        .list(&lp)
        .await?
        .items,
    })
}
