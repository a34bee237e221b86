//! The orphan sweep: a rollout removed without its finalizer (`kubectl patch` of the
//! finalizers, a namespace or CRD deleted with `--force`) leaves the nodes it owned
//! cordoned and annotated for a rollout that no longer exists. At the first pass of each
//! term and then every `--orphan-sweep-interval` (30 s), the leader lists the owners its
//! watches do not know, reads each one afresh (it may be another agent's), and releases
//! the nodes of those that are gone: annotations removed, uncordoned where the annotation says the rollout cordoned a
//! schedulable node (and nobody cordoned it again since), with an Event on the node.
//!
//! Careful, because a wrong release uncordons a node mid-sequence: "gone" is only the API
//! server's own NotFound for that very ztunnelrollout (a 404 from a proxy, or for a
//! resource version the server does not serve, is not); and each node is released as the
//! watch showed it before the rollout was read, so a node a re-created rollout of the same
//! name cordoned meanwhile is a Conflict, left for the next sweep (which finds the
//! rollout).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Node;
use kube::api::Api;
use kube::{Client, ResourceExt};
use tokio::time::Instant;
use tracing::{info, info_span, warn};
use ztunnel_rollout_core::rollout::ownership::{
    owner as ownership_owner, unknown_owners, waiting_taint_owner,
};
use ztunnel_rollout_core::rollout::pass::{CallDone, Outcome};

use super::effects::core_reference;
use super::events::EventSink;
use super::executor::{Executor, TaskKey, TaskKind};
use super::node_actions::{ActionError, NodeActions};
use super::observe::Observed;
use crate::api::ZtunnelRollout;

/// The executor's owner key of the sweep's tasks.
const OWNER: &str = "orphan-sweep";

pub struct OrphanSweep {
    client: Client,
    actions: Arc<NodeActions>,
    events: EventSink,
    interval: Duration,
    last: Option<Instant>,
}

impl OrphanSweep {
    pub fn new(
        client: Client,
        actions: Arc<NodeActions>,
        events: EventSink,
        interval: Duration,
    ) -> Self {
        Self {
            client,
            actions,
            events,
            interval,
            last: None,
        }
    }

    /// A new term sweeps at its first pass.
    pub fn reset(&mut self) {
        self.last = None;
    }

    /// Starts a sweep if one is due; returns when the next one is.
    pub fn maybe_sweep(
        &mut self,
        observed: &Observed,
        rollouts: &[Arc<ZtunnelRollout>],
        executor: &mut Executor<Outcome>,
    ) -> Instant {
        let now = Instant::now();
        if let Some(last) = self.last
            && now < last + self.interval
        {
            return last + self.interval;
        }
        self.last = Some(now);
        let known: HashSet<String> = rollouts.iter().map(|r| r.name_any()).collect();
        let watched = observed.nodes.state();
        let by_name: HashMap<&str, &Arc<Node>> = watched
            .iter()
            .filter_map(|n| Some((n.metadata.name.as_deref()?, n)))
            .collect();
        for (owner, names) in unknown_owners(watched.iter().map(|n| n.as_ref()), &known) {
            // The copies as the watch shows them now, before the rollout is read.
            let nodes: Vec<Arc<Node>> = names
                .iter()
                .filter_map(|n| by_name.get(n.as_str()).map(|n| Arc::clone(n)))
                .collect();
            let key = TaskKey {
                owner: OWNER.to_owned(),
                object: owner.clone(),
                kind: TaskKind::Call,
            };
            if executor.running(&key) {
                continue;
            }
            let (client, actions, events) = (
                self.client.clone(),
                self.actions.clone(),
                self.events.clone(),
            );
            let span = info_span!("orphans", rollout = %owner);
            executor.spawn(key, span, async move {
                release_if_gone(&client, &actions, &events, &owner, &nodes).await;
                None
            });
        }
        now + self.interval
    }
}

/// Whether `e` is the API server saying that ztunnelrollout `name` does not exist.
fn rollout_not_found(e: &kube::Error, name: &str) -> bool {
    match e {
        kube::Error::Api(s) => {
            s.code == 404
                && s.reason == "NotFound"
                && s.details.as_ref().is_some_and(|d| {
                    d.group == "ztunnel-rollout.dev"
                        && d.kind == "ztunnelrollouts"
                        && d.name == name
                })
        }
        _ => false,
    }
}

/// Releases `nodes` (as watched before this read) if rollout `owner` no longer exists.
async fn release_if_gone(
    client: &Client,
    actions: &NodeActions,
    events: &EventSink,
    owner: &str,
    nodes: &[Arc<Node>],
) {
    match Api::<ZtunnelRollout>::all(client.clone()).get(owner).await {
        Ok(_) => return, // Another agent's (a rollout selector this one does not watch).
        Err(e) if rollout_not_found(&e, owner) => {}
        Err(e) => {
            warn!(error = %e, "could not tell whether the rollout that owns nodes exists; trying again at the next sweep");
            return;
        }
    }
    for watched in nodes {
        let node = watched.name_any();
        let node = node.as_str();
        if waiting_taint_owner(watched) == Some(owner) && ownership_owner(watched) != Some(owner) {
            // Only its waiting taint is left: removed, conditional on this copy.
            match actions.set_waiting_taint(owner, watched, false).await {
                Ok(_) => info!(
                    node,
                    "removed the waiting taint of rollout {owner}, which no longer exists"
                ),
                Err(ActionError::NotLeader(_)) => return,
                Err(e) => {
                    warn!(node, error = %e, "could not remove an orphaned waiting taint; trying again at the next sweep")
                }
            }
            continue;
        }
        // One try a sweep: a Conflict (the node changed) is tried at the next one.
        let note = match actions.release_exactly(owner, watched, true).await {
            Ok(CallDone::Applied { .. }) => format!(
                "released: it was owned by rollout {owner}, which no longer exists; uncordoned unless it was cordoned before that rollout"
            ),
            Ok(CallDone::LeftCordoned { by, .. }) => format!(
                "released: it was owned by rollout {owner}, which no longer exists; left cordoned (field manager {by:?} cordoned it since)"
            ),
            Ok(_) => continue, // Released meanwhile.
            Err(ActionError::NotLeader(_)) => return,
            Err(e) => {
                warn!(node, error = %e, "could not release an orphaned node; trying again at the next sweep");
                continue;
            }
        };
        info!(node, "{note}");
        events.notice(
            "Release",
            &core_reference("Node", node, None),
            None,
            true,
            "ReleasedOrphan",
            note,
        );
    }
}
