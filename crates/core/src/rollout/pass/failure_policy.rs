//! More nodes failed than `spec.health.maxFailedNodes` tolerates: pause the rollout, or
//! (`onFailure: Rollback`) restore the DaemonSet's previous revision once nothing is in
//! flight and take the updated nodes back through the same sequence, waves in reverse.

use k8s_openapi::jiff::SignedDuration;

use super::effects::About;
use super::memory::Undo;
use super::{Pass, View};
use crate::api::rollout::{CniRollback, RollbackStatus};
use crate::rollout::node_machine::{self, NodePhase};
use crate::rollout::revision::previous_revision;
use crate::rollout::status::{MESH_QUERY_FAILED, NO_NEW_NODE, RolloutPhase, Standing, counts};

impl Pass<'_, '_> {
    /// Failed nodes beyond `maxFailedNodes` (`reason` NodeFailed) or the mesh-wide
    /// breaker (MeshQueryFailed) stop the rollout: `why`.
    pub(super) fn failure_policy(&mut self, view: &View, why: String, reason: &str) -> Standing {
        let remedy = if reason == MESH_QUERY_FAILED {
            "; nodes in flight finish. To go on once the mesh is healthy, change the spec (a new generation resets the breaker, e.g. raise the query's threshold), or abort the rollout"
        } else {
            "; to go on past the failed nodes raise spec.health.maxFailedNodes (failed nodes stay cordoned for inspection until the rollout ends: uncordon them when done), or abort the rollout (it releases them)"
        };
        let pause = |extra: &str| Standing {
            phase: RolloutPhase::Paused,
            reason: reason.into(),
            message: format!("{why}{NO_NEW_NODE}{extra}{remedy}"),
        };
        if !view.settings.health.rollback {
            return pause("");
        }
        if self.mem.rollback.is_some() {
            return pause(" (the rollback itself failed)");
        }
        // With `spec.cni`, what the rollout replaced decides what goes back: istio-cni if
        // it replaced istio-cni pods; ztunnel unless it replaced istio-cni pods alone (a
        // rollout for istio-cni must not downgrade a ztunnel it never touched).
        let cni = match (&view.cni, &view.target.cni) {
            (Some(c), Some(t))
                if self
                    .replaced_by_this_rollout(self.snap.cni.map(|s| s.pods), &t.revision_hash) =>
            {
                match previous_revision(
                    &c.name,
                    &c.uid,
                    &t.revision_hash,
                    self.snap.cni.map_or(&[][..], |s| s.revisions),
                ) {
                    Some((_, to)) => Some(CniRollback {
                        from: t.revision_hash.clone(),
                        to,
                    }),
                    None => {
                        return pause(
                            " (onFailure is Rollback, but the istio-cni DaemonSet, whose pods the rollout replaced, has no previous revision)",
                        );
                    }
                }
            }
            _ => None,
        };
        let ztunnel_replaced =
            self.replaced_by_this_rollout(Some(self.snap.ztunnels), &view.target.revision_hash);
        let to = if cni.is_some() && !ztunnel_replaced {
            // istio-cni alone: ztunnel stays where it is (`from == to`).
            view.target.revision_hash.clone()
        } else {
            let Some((_, to)) = previous_revision(
                &view.ds_name,
                &view.ds_uid,
                &view.target.revision_hash,
                self.snap.revisions,
            ) else {
                return pause(
                    " (onFailure is Rollback, but the DaemonSet has no previous revision)",
                );
            };
            to
        };
        let in_flight = counts(self.mem.total, self.mem.records().map(|(_, t)| t)).in_flight;
        if in_flight > 0 {
            return Standing {
                phase: RolloutPhase::RollingBack,
                reason: "RollbackPending".into(),
                message: format!(
                    "{why}. Rolling back to revision {to} once the {in_flight} node(s) in flight finish"
                ),
            };
        }
        self.notice(
            About::Rollout,
            true,
            "RollbackStarted",
            format!(
                "restoring DaemonSet revision {to} and rolling the updated nodes back, waves in reverse: {why}"
            ),
        );
        let failed: Vec<String> = self
            .mem
            .nodes
            .iter()
            .filter(|(_, s)| s.phase() == NodePhase::Failed)
            .map(|(n, _)| n.clone())
            .collect();
        let failed_hash = view.target.revision_hash.clone();
        for node in failed {
            let n = self.watched(view, &node);
            let facts = self.facts(view, &node, n.as_ref(), None);
            let record = self.mem.nodes[&node].tracked.record.clone();
            let failed_ztunnel = (to != failed_hash).then_some(failed_hash.as_str());
            let failed_cni = cni.as_ref().map(|c| c.from.as_str());
            if let Some(step) = node_machine::roll_back(&record, &facts, failed_ztunnel, failed_cni)
            {
                self.apply_step(&node, step);
            }
        }
        let rollback = RollbackStatus {
            from: failed_hash,
            to: to.clone(),
            reason: why,
            cni,
        };
        let message = format!(
            "restoring DaemonSet revision {to} (after: {})",
            rollback.reason
        );
        self.mem.rollback = Some(rollback);
        self.mem.undo = Undo::default();
        self.mem.cni_undo = Undo::default();
        self.plan
            .wake(Some(self.now + SignedDuration::from_millis(10)));
        Standing {
            phase: RolloutPhase::RollingBack,
            reason: "RollingBack".into(),
            message,
        }
    }
}

impl Pass<'_, '_> {
    /// Whether a node of this rollout runs a pod (of `pods`, by node) on `hash` created
    /// since the rollout was: one it replaced (read from the pods, so a new leader knows
    /// it too).
    fn replaced_by_this_rollout(
        &self,
        pods: Option<&std::sync::Arc<super::ZtunnelsByNode>>,
        hash: &str,
    ) -> bool {
        let Some(pods) = pods else {
            return false;
        };
        let since = self.snap.rollout.created;
        self.mem.nodes.keys().any(|node| {
            pods.get(node).is_some_and(|ps| {
                ps.iter()
                    .any(|p| !p.terminating && p.revision_hash == hash && p.created >= since)
            })
        })
    }
}

impl Pass<'_, '_> {
    /// Stage 9: the mesh-wide breaker runs while the rollout does, for its current
    /// generation (a spec change restarts it, with the trip forgotten), and stops during
    /// a rollback.
    pub(super) fn mesh_breaker(&mut self, view: &View) {
        self.mesh_seen = true;
        let generation = self.snap.rollout.generation;
        let wanted = !view.settings.health.mesh_queries.is_empty()
            && view.settings.health.prometheus.is_some()
            && self.mem.rollback.is_none()
            && self
                .mem
                .mesh
                .breach
                .as_ref()
                .is_none_or(|(g, _)| *g != generation);
        let running = self.mem.mesh.running;
        if running.is_some() && (!wanted || running != Some(generation)) {
            self.plan.effects.push(super::Effect::CancelMesh);
            self.mem.mesh.running = None;
        }
        if wanted && self.mem.mesh.running.is_none() {
            // Baselines: just before the first cordon (now, if none happened yet), the
            // same for every generation and leader (it is in the status).
            let first = *self.mem.mesh.baseline_at.get_or_insert_with(|| {
                self.mem
                    .nodes
                    .values()
                    .filter_map(|s| s.tracked.started)
                    .min()
                    .unwrap_or(self.now)
            });
            self.plan
                .effects
                .push(super::Effect::Mesh(Box::new(super::MeshRequest {
                    settings: view.settings.health.clone(),
                    baseline_at: first,
                    generation,
                })));
            self.mem.mesh.running = Some(generation);
        }
    }

    /// Whether new nodes wait for the breaker's first round of this generation.
    pub(super) fn mesh_breaker_unproven(&self) -> bool {
        self.mem.mesh.running == Some(self.snap.rollout.generation)
            && self.mem.mesh.held != Some(self.snap.rollout.generation)
    }

    /// The rollout ended: its breaker stops.
    pub(super) fn stop_mesh_breaker(&mut self) {
        if self.mem.mesh.running.take().is_some() {
            self.plan.effects.push(super::Effect::CancelMesh);
        }
    }
}
