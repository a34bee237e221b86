//! Stage 11: where the rollout stands — an Event when its phase or reason changes, and
//! the status, written at most once per `status_interval` (phase changes at once) and
//! only when it changed.

use std::collections::BTreeMap;

use k8s_openapi::jiff::Timestamp;

use super::derived::along;
use super::effects::{About, Effect};
use super::memory::Memory;
use super::{Pass, View};
use crate::api::rollout::{MeshBreakerStatus, ZtunnelRolloutStatus};
use crate::rollout::node_machine::NodePhase;
use crate::rollout::status::{Standing, conditions, counts, node_statuses};

impl Pass<'_, '_> {
    pub(super) fn record(&mut self, standing: Standing) {
        if standing.phase.is_terminal() || !self.mesh_seen {
            // Ended, or a pass that stopped before deciding about the breaker (an
            // invalid spec, an overlap, the rollback's restore): it stops.
            self.stop_mesh_breaker();
        }
        let previous = self.mem.standing.as_ref();
        let changed =
            previous.is_none_or(|s| s.phase != standing.phase || s.reason != standing.reason);
        let phase_changed = previous.map(|s| s.phase) != Some(standing.phase);
        if changed {
            self.notice(
                About::Rollout,
                standing.degraded(),
                &standing.reason,
                standing.message.clone(),
            );
        }
        if phase_changed {
            self.mem.status.urgent = true;
        }
        self.mem.standing = Some(standing.clone());
        self.write_status(&standing);
        self.plan.standing = Some(standing);
    }

    /// The rollout's nodes per phase (metrics).
    pub(super) fn count_phases(&mut self, view: &View) {
        let mut phases: BTreeMap<NodePhase, i64> = NodePhase::ALL.iter().map(|p| (*p, 0)).collect();
        for (_, _, state) in along(view.nodes.iter(), &self.mem.nodes) {
            let phase = state.map_or(NodePhase::Pending, |s| s.phase());
            *phases.entry(phase).or_default() += 1;
        }
        self.plan.phases = Some(phases);
    }

    fn write_status(&mut self, standing: &Standing) {
        let now = self.now;
        let s = &self.mem.status;
        if s.in_flight {
            return; // Its outcome wakes the loop.
        }
        if !s.retry.due(now) {
            self.plan.wake(s.retry.at);
            return;
        }
        // Checked before building the status: at 1,000 nodes that is ~150 kB of copies,
        // and passes come many times a second.
        if !s.urgent
            && let Some(at) = s.written_at
            && now < at + self.config.status_interval
        {
            self.plan.wake(Some(at + self.config.status_interval));
            return;
        }
        let status = status_of(self.mem, self.snap.rollout.generation, standing, self.now);
        let s = &mut self.mem.status;
        s.urgent = false;
        if s.written.as_ref() == Some(&status) {
            return;
        }
        s.in_flight = true;
        self.plan
            .effects
            .push(Effect::WriteStatus(Box::new(status)));
    }
}

/// The status for `standing` from what `mem` knows.
fn status_of(
    mem: &Memory,
    generation: i64,
    standing: &Standing,
    now: Timestamp,
) -> ZtunnelRolloutStatus {
    let previous = mem
        .status
        .written
        .as_ref()
        .map(|s| s.conditions.as_slice())
        .unwrap_or_default();
    ZtunnelRolloutStatus {
        observed_generation: Some(generation),
        phase: Some(standing.phase.as_str().to_owned()),
        current_wave: mem.wave.clone(),
        target_revision: mem.target.clone(),
        cni: (mem.cni != Default::default()).then(|| mem.cni.clone()),
        conditions: conditions(previous, generation, now, standing),
        counts: counts(mem.total, mem.records().map(|(_, t)| t)),
        rollback: mem.rollback.clone(),
        next_window: mem.next_window.map(|t| t.to_string()),
        awaiting_approval: mem.awaiting_approval.clone(),
        finished_at: mem.finished_at.map(|t| {
            t.round(k8s_openapi::jiff::Unit::Second)
                .unwrap_or(t)
                .to_string()
        }),
        mesh_breaker: mem.mesh.baseline_at.map(|at| MeshBreakerStatus {
            baseline_at: at.to_string(),
            tripped_generation: mem.mesh.breach.as_ref().map(|(g, _)| *g),
            tripped: mem.mesh.breach.as_ref().map(|(_, why)| why.clone()),
        }),
        nodes: node_statuses(mem.records()),
    }
}

/// At shutdown: the status the write interval held back, if it differs from the one
/// written (a new leader resumes from it).
pub fn held_back_status(
    mem: &Memory,
    generation: i64,
    now: Timestamp,
) -> Option<ZtunnelRolloutStatus> {
    let standing = mem.standing.as_ref()?;
    if mem.status.in_flight {
        return None;
    }
    let status = status_of(mem, generation, standing, now);
    (mem.status.written.as_ref() != Some(&status)).then_some(status)
}
