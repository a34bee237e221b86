//! `ztunnel-rollout preflight`: the runbook's guardrails checked against the cluster
//! before a rollout. The checks are `ztunnel_rollout_core::preflight::checks`
//! (re-exported here); [`snapshot`] reads the cluster, and [`istiod_versions`] asks each
//! istiod its version.

mod istiod_version;

pub use istiod_version::{IstiodUrl, istiod_versions};
pub use ztunnel_rollout_core::preflight::checks;

use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment};
use k8s_openapi::api::core::v1::{Namespace, Node, Pod};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::ListParams;
use kube::{Api, Client};

/// Reads what the checks need: the ztunnel and istio-cni DaemonSets (`namespace/name`
/// each) and every node, pod, PDB, Deployment, namespace and webhook configuration (one
/// list each). istiod's versions are read apart ([`istiod_versions`]).
pub async fn snapshot(
    client: &Client,
    (namespace, name): (&str, &str),
    (cni_namespace, cni_name): (&str, &str),
) -> Result<checks::Snapshot, kube::Error> {
    let lp = ListParams::default();
    Ok(checks::Snapshot {
        ztunnel_ref: format!("{namespace}/{name}"),
        ztunnel: Api::<DaemonSet>::namespaced(client.clone(), namespace)
            .get_opt(name)
            .await?,
        cni: Api::<DaemonSet>::namespaced(client.clone(), cni_namespace)
            .get_opt(cni_name)
            .await?,
        control_planes: Vec::new(),
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
