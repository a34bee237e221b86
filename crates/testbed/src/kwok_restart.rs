//! What the bed does around a KWOK start, so that a restarted KWOK behaves as restarted
//! kubelets do: it takes its nodes back at once and misses no pod.
//!
//! KWOK's holder identity is the host name and a random suffix drawn per process. In
//! some of its starts (it starts its controllers in the order it iterates a Go map; when
//! the node controllers come first, its pod controller honours leases) it plays a
//! node's pods only while it holds the node's lease, judged from its own cached copy of
//! the leases. Such an instance leaves every node alone until the leases its
//! predecessor renewed expire (`--node-lease-duration-seconds`, 40 s), and the pods it
//! resyncs when it takes a lease, or whose events arrive meanwhile, are skipped while
//! its copy still shows the old holder: the chaos campaign (CI seed 20261206,
//! 2026-12-04) saw three ztunnel pods, deleted by the agent 1 s after a KWOK restart,
//! stay Terminating until the trial's end. A kubelet restarted on its node renews its
//! own lease at once and syncs every pod it runs. So, around a start:
//!
//! 1. before it, the holders of the node leases are noted and the leases deleted
//!    ([`release_node_leases`]): the new instance creates and holds them at once;
//! 2. after it ([`resync_after_start`]), once every KWOK node's lease has a new holder
//!    that has renewed it once — a renewal is an update from KWOK's cached copy, so the
//!    copy then shows KWOK as the holder — every pod on a KWOK node that still needs a
//!    stage (deleted, or Pending) gets an annotation written, so that KWOK sees it
//!    again. With step 1 alone, `tests/bed_control.rs` still lost a deleted pod in 5 of
//!    21 runs (`benches/results/chaos-20261206-kwok-restart-2026-12-04/`).
//!
//! Each step is bounded; the caller skips them while the API server is down.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::jiff::Timestamp;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams};
use kube::{Api, Client};
use serde_json::json;

use super::control_plane::KWOK_NODE_ANNOTATION;

/// The namespace of the nodes' leases.
const NODE_LEASES: &str = "kube-node-lease";
/// How long step 1 may take.
const RELEASE_WITHIN: Duration = Duration::from_secs(10);
/// How long step 2 may take: the new instance renews a lease 10 s (a quarter of the
/// lease duration, with a little jitter) after it creates it.
pub const RESYNC_WITHIN: Duration = Duration::from_secs(45);
/// Written on the pods [`resync_after_start`] makes KWOK see again: the time, so that
/// each write changes the pod.
pub const RESYNC_ANNOTATION: &str = "local-cluster.ztunnel-rollout.dev/kwok-resync";

#[derive(Debug, thiserror::Error)]
pub enum KwokRestartError {
    #[error("{what}: {source}")]
    Api {
        what: String,
        source: Box<kube::Error>,
    },
    #[error("not within {0:?}: {1}")]
    Timeout(Duration, String),
}

fn api(what: impl Into<String>) -> impl FnOnce(kube::Error) -> KwokRestartError {
    let what = what.into();
    move |source| KwokRestartError::Api {
        what,
        source: Box::new(source),
    }
}

/// The holders of the node leases before the start: a lease held by one of them is
/// not the new instance's.
#[derive(Debug, Default, Clone)]
pub struct PreviousHolders(BTreeSet<String>);

/// Step 1: notes the holders of the node leases and deletes the leases (only KWOK
/// holds leases in the bed).
pub async fn release_node_leases(client: &Client) -> Result<PreviousHolders, KwokRestartError> {
    let leases: Api<Lease> = Api::namespaced(client.clone(), NODE_LEASES);
    let release = async {
        let held = leases
            .list(&ListParams::default())
            .await
            .map_err(api("listing the node leases"))?;
        let holders = held
            .items
            .iter()
            .filter_map(|l| l.spec.as_ref()?.holder_identity.clone())
            .collect();
        let (delete, all) = (DeleteParams::default(), ListParams::default());
        leases
            .delete_collection(&delete, &all)
            .await
            .map_err(api("deleting the node leases"))?;
        Ok(PreviousHolders(holders))
    };
    tokio::time::timeout(RELEASE_WITHIN, release)
        .await
        .unwrap_or_else(|_| {
            Err(KwokRestartError::Timeout(
                RELEASE_WITHIN,
                "noting and deleting the node leases".into(),
            ))
        })
}

/// Step 2: waits until every KWOK node's lease has a holder not in `previous` that has
/// renewed it once, then writes [`RESYNC_ANNOTATION`] on every pod of those nodes that
/// still needs a stage. Returns how many pods it wrote. All within [`RESYNC_WITHIN`].
pub async fn resync_after_start(
    client: &Client,
    previous: &PreviousHolders,
) -> Result<usize, KwokRestartError> {
    tokio::time::timeout(RESYNC_WITHIN, resync(client, previous))
        .await
        .unwrap_or_else(|_| {
            Err(KwokRestartError::Timeout(
                RESYNC_WITHIN,
                "the new KWOK holding and renewing every node's lease, then the pods' resync"
                    .into(),
            ))
        })
}

async fn resync(client: &Client, previous: &PreviousHolders) -> Result<usize, KwokRestartError> {
    let nodes: Api<Node> = Api::all(client.clone());
    let leases: Api<Lease> = Api::namespaced(client.clone(), NODE_LEASES);
    let kwok_nodes: BTreeSet<String> = nodes
        .list(&ListParams::default())
        .await
        .map_err(api("listing the nodes"))?
        .items
        .into_iter()
        .filter(|n| {
            n.metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(KWOK_NODE_ANNOTATION))
                .is_some_and(|v| v == "fake")
        })
        .filter_map(|n| n.metadata.name)
        .collect();
    // Each node's lease as first seen with a new holder: its renew time then.
    let mut created: BTreeMap<String, Option<Timestamp>> = BTreeMap::new();
    loop {
        let now = leases
            .list(&ListParams::default())
            .await
            .map_err(api("listing the node leases"))?;
        let mut renewed = 0;
        for lease in &now.items {
            let (Some(name), Some(spec)) = (&lease.metadata.name, &lease.spec) else {
                continue;
            };
            let new_holder = spec
                .holder_identity
                .as_ref()
                .is_some_and(|h| !previous.0.contains(h));
            if !new_holder || !kwok_nodes.contains(name) {
                continue;
            }
            let renew = spec.renew_time.as_ref().map(|t| t.0);
            let first = created.entry(name.clone()).or_insert(renew);
            if renew > *first {
                renewed += 1;
            }
        }
        if renewed == kwok_nodes.len() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let pods: Api<Pod> = Api::all(client.clone());
    let bound = pods
        .list(&ListParams::default().fields("spec.nodeName!="))
        .await
        .map_err(api("listing the bound pods"))?;
    let stamp = Timestamp::now().to_string();
    let mut written = 0;
    for pod in bound.items.iter().filter(|p| needs_a_stage(p, &kwok_nodes)) {
        let (Some(name), Some(namespace)) = (&pod.metadata.name, &pod.metadata.namespace) else {
            continue;
        };
        let touch = Patch::Merge(json!({
            "metadata": { "annotations": { RESYNC_ANNOTATION: stamp } }
        }));
        match Api::<Pod>::namespaced(client.clone(), namespace)
            .patch(name, &PatchParams::default(), &touch)
            .await
        {
            Ok(_) => written += 1,
            // Gone meanwhile: nothing left to play.
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(e) => return Err(api(format!("annotating pod {namespace}/{name}"))(e)),
        }
    }
    Ok(written)
}

/// A pod on a KWOK node that KWOK still has a stage to play for (the bed's stages:
/// created and Ready while Pending, gone once deleted without finalizers).
fn needs_a_stage(pod: &Pod, kwok_nodes: &BTreeSet<String>) -> bool {
    let on_kwok_node = pod
        .spec
        .as_ref()
        .and_then(|s| s.node_name.as_ref())
        .is_some_and(|n| kwok_nodes.contains(n));
    let pending = pod
        .status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .is_none_or(|p| p == "Pending");
    let deleted = pod.metadata.deletion_timestamp.is_some()
        && pod.metadata.finalizers.as_ref().is_none_or(Vec::is_empty);
    on_kwok_node && (deleted || pending)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(node: &str, phase: Option<&str>, deleted: bool, finalizers: &[&str]) -> Pod {
        serde_json::from_value(json!({
            "metadata": {
                "name": "p",
                "namespace": "demo",
                "deletionTimestamp": deleted.then_some("2026-12-04T20:00:00Z"),
                "finalizers": finalizers,
            },
            "spec": { "nodeName": node, "containers": [] },
            "status": { "phase": phase },
        }))
        .expect("pod")
    }

    #[test]
    fn only_pods_on_kwok_nodes_with_a_stage_left_are_resynced() {
        let kwok: BTreeSet<String> = ["node-000".to_owned()].into();
        let needs = |node, phase, deleted, finalizers: &[&str]| {
            needs_a_stage(&pod(node, phase, deleted, finalizers), &kwok)
        };
        assert!(needs("node-000", Some("Pending"), false, &[]));
        assert!(needs("node-000", None, false, &[]));
        assert!(needs("node-000", Some("Running"), true, &[]));
        assert!(!needs("node-000", Some("Running"), false, &[]));
        assert!(!needs("node-000", Some("Succeeded"), false, &[]));
        assert!(!needs("node-000", Some("Failed"), false, &[]));
        // KWOK's delete stage waits for the finalizers.
        assert!(!needs(
            "node-000",
            Some("Running"),
            true,
            &["example.com/keep"]
        ));
        assert!(!needs("node-999", Some("Pending"), false, &[]));
    }
}
