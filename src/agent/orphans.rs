//! The orphan sweep: a rollout removed without its finalizer (`kubectl patch` of the
//! finalizers, a namespace or CRD deleted with `--force`) leaves the nodes it owned
//! cordoned and annotated for a rollout that no longer exists. Every
//! [`SWEEP_INTERVAL`], the leader lists the owners its watches do not know, reads each
//! one afresh (it may be another agent's), and releases the nodes of those that are
//! gone: annotations removed, uncordoned where the annotation says the rollout cordoned a
//! schedulable node (and nobody cordoned it again since), with an Event on the node.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use kube::api::Api;
use kube::{Client, ResourceExt};
use tokio::time::Instant;
use tracing::{info, info_span, warn};
use ztunnel_rollout_core::rollout::ownership::unknown_owners;
use ztunnel_rollout_core::rollout::pass::{CallDone, Outcome};

use super::effects::core_reference;
use super::events::EventSink;
use super::executor::{Executor, TaskKey, TaskKind};
use super::node_actions::{ActionError, NodeActions};
use super::observe::Observed;
use crate::api::ZtunnelRollout;

/// How often the leader looks for orphaned nodes.
pub const SWEEP_INTERVAL: Duration = Duration::from_secs(30);

/// The executor's owner key of the sweep's tasks.
const OWNER: &str = "orphan-sweep";

pub struct OrphanSweep {
    client: Client,
    actions: Arc<NodeActions>,
    events: EventSink,
    last: Option<Instant>,
}

impl OrphanSweep {
    pub fn new(client: Client, actions: Arc<NodeActions>, events: EventSink) -> Self {
        Self {
            client,
            actions,
            events,
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
            && now < last + SWEEP_INTERVAL
        {
            return last + SWEEP_INTERVAL;
        }
        self.last = Some(now);
        let known: HashSet<String> = rollouts.iter().map(|r| r.name_any()).collect();
        let nodes = observed.nodes.state();
        for (owner, nodes) in unknown_owners(nodes.iter().map(|n| n.as_ref()), &known) {
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
        now + SWEEP_INTERVAL
    }
}

/// Releases `nodes` if rollout `owner` no longer exists (read afresh).
async fn release_if_gone(
    client: &Client,
    actions: &NodeActions,
    events: &EventSink,
    owner: &str,
    nodes: &[String],
) {
    match Api::<ZtunnelRollout>::all(client.clone())
        .get_opt(owner)
        .await
    {
        Ok(Some(_)) => return, // Another agent's (a rollout selector this one does not watch).
        Ok(None) => {}
        Err(e) => {
            warn!(error = %e, "could not read the rollout that owns nodes; trying again at the next sweep");
            return;
        }
    }
    for node in nodes {
        // One try a sweep: a Conflict (the node changed) is tried at the next one.
        let note = match actions.release(owner, node, true, None).await {
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
