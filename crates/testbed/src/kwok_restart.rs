//! What the bed does around a KWOK restart, so that a restarted KWOK behaves as restarted
//! kubelets do: it takes its nodes back at once and misses no pod.
//!
//! KWOK's holder identity is the host name and a random suffix drawn per process, and
//! KWOK plays a node's pods only while it holds the node's lease — in about half of its
//! starts: whether its pod controller honours leases depends on the order, random per
//! process, in which it starts its controllers. Such an instance leaves every node alone
//! until the leases its predecessor renewed expire (`--node-lease-duration-seconds`,
//! 40 s), and a pod event it received meanwhile is never played (the chaos campaign, CI
//! seed 20261206, 2026-12-04: three ztunnel pods deleted by the agent 1 s after a KWOK
//! restart stayed Terminating until the trial's end; `tests/bed_control.rs`, three
//! restarts a run, lost a deleted pod in 2 of 2 runs). A kubelet restarted on its node renews its own lease
//! at once and syncs every pod it runs. So, around a start:
//!
//! 1. before it, the node leases are deleted ([`release_node_leases`]): the new
//!    instance creates and holds them at once;
//! 2. after it, once every KWOK node's lease exists again ([`resync_after_start`]), every
//!    pod on a KWOK node that still needs a stage (deleted, or not yet Running) gets an
//!    annotation written, so that KWOK, now holding the lease, sees it again — an event
//!    it got in the moment between its start and its leases was dropped (5 of 21 runs
//!    of `tests/bed_control.rs` with step 1 alone;
//!    `benches/results/chaos-20261206-kwok-restart-2026-12-04/`).
//!
//! Best effort, each step bounded: when the API server cannot answer (it is down), KWOK
//! still starts and takes the nodes when the leases expire.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{DeleteParams, ListParams, Patch, PatchParams};
use kube::{Api, Client};
use serde_json::json;

use super::control_plane::KWOK_NODE_ANNOTATION;

/// The namespace of the nodes' leases.
const NODE_LEASES: &str = "kube-node-lease";
/// How long deleting the leases may take.
const RELEASE_WITHIN: Duration = Duration::from_secs(10);
/// How long the new instance gets to hold every node's lease.
const HOLD_WITHIN: Duration = Duration::from_secs(30);
/// Written on the pods [`resync_after_start`] makes KWOK see again: the time, so that
/// each write changes the pod.
pub const RESYNC_ANNOTATION: &str = "local-cluster.ztunnel-rollout.dev/kwok-resync";

#[derive(Debug, thiserror::Error)]
pub enum KwokRestartError {
    #[error("{0}")]
    Api(#[from] kube::Error),
    #[error("not within {0:?}: {1}")]
    Timeout(Duration, String),
    #[error("no client for the API server: {0}")]
    Client(String),
}

/// Step 1: deletes every node lease (only KWOK holds leases in the bed).
pub async fn release_node_leases(client: &Client) -> Result<(), KwokRestartError> {
    let leases: Api<Lease> = Api::namespaced(client.clone(), NODE_LEASES);
    let (delete, all) = (DeleteParams::default(), ListParams::default());
    let release = leases.delete_collection(&delete, &all);
    match tokio::time::timeout(RELEASE_WITHIN, release).await {
        Ok(answer) => answer.map(|_| ()).map_err(KwokRestartError::from),
        Err(_) => Err(KwokRestartError::Timeout(
            RELEASE_WITHIN,
            "deleting the node leases".into(),
        )),
    }
}

/// Step 2: waits until every KWOK node has a lease again, then writes
/// [`RESYNC_ANNOTATION`] on every pod of those nodes that still needs a stage. Returns
/// how many pods it wrote.
pub async fn resync_after_start(client: &Client) -> Result<usize, KwokRestartError> {
    let nodes: Api<Node> = Api::all(client.clone());
    let leases: Api<Lease> = Api::namespaced(client.clone(), NODE_LEASES);
    let deadline = Instant::now() + HOLD_WITHIN;
    let kwok_nodes: BTreeSet<String> = nodes
        .list(&ListParams::default())
        .await?
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
    loop {
        let held: BTreeSet<String> = leases
            .list(&ListParams::default())
            .await?
            .items
            .into_iter()
            .filter(|l| l.spec.as_ref().is_some_and(|s| s.holder_identity.is_some()))
            .filter_map(|l| l.metadata.name)
            .collect();
        let missing = kwok_nodes.difference(&held).count();
        if missing == 0 {
            break;
        }
        if Instant::now() >= deadline {
            return Err(KwokRestartError::Timeout(
                HOLD_WITHIN,
                format!(
                    "{missing} of {} KWOK nodes without a lease",
                    kwok_nodes.len()
                ),
            ));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let pods: Api<Pod> = Api::all(client.clone());
    let bound = pods
        .list(&ListParams::default().fields("spec.nodeName!="))
        .await?;
    let stamp = k8s_openapi::jiff::Timestamp::now().to_string();
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
            Err(e) => return Err(e.into()),
        }
    }
    Ok(written)
}

/// A pod on a KWOK node that KWOK still has a stage to play for: deleted, or not yet
/// Running (the bed's stages: created, Ready, gone after deletion).
fn needs_a_stage(pod: &Pod, kwok_nodes: &BTreeSet<String>) -> bool {
    let on_kwok_node = pod
        .spec
        .as_ref()
        .and_then(|s| s.node_name.as_ref())
        .is_some_and(|n| kwok_nodes.contains(n));
    let running = pod
        .status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .is_some_and(|p| p == "Running");
    on_kwok_node && (pod.metadata.deletion_timestamp.is_some() || !running)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(node: &str, phase: Option<&str>, deleted: bool) -> Pod {
        serde_json::from_value(json!({
            "metadata": {
                "name": "p",
                "namespace": "demo",
                "deletionTimestamp": deleted.then_some("2026-12-04T20:00:00Z"),
            },
            "spec": { "nodeName": node, "containers": [] },
            "status": { "phase": phase },
        }))
        .expect("pod")
    }

    #[test]
    fn only_pods_on_kwok_nodes_with_a_stage_left_are_resynced() {
        let kwok: BTreeSet<String> = ["node-000".to_owned()].into();
        assert!(needs_a_stage(
            &pod("node-000", Some("Pending"), false),
            &kwok
        ));
        assert!(needs_a_stage(&pod("node-000", None, false), &kwok));
        assert!(needs_a_stage(
            &pod("node-000", Some("Running"), true),
            &kwok
        ));
        assert!(!needs_a_stage(
            &pod("node-000", Some("Running"), false),
            &kwok
        ));
        assert!(!needs_a_stage(
            &pod("node-999", Some("Pending"), false),
            &kwok
        ));
    }
}
