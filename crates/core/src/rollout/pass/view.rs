//! Stages 5 to 8: what the rollout rolls out and over which nodes (or why it cannot), the
//! overlap with other rollouts, the DaemonSet's restore during a rollback, one-time
//! warnings and the reaction to a new DaemonSet revision.

use std::collections::HashMap;
use std::sync::Arc;

use k8s_openapi::jiff::SignedDuration;

use super::Pass;
use super::derived::{Waves, along};
use super::effects::{About, Effect};
use super::snapshot::NodeMap;
use crate::object::ObjectMetaExt;
use crate::rollout::node_machine::{self, Placement, Target};
use crate::rollout::placement::placement;
use crate::rollout::planner::{self, NodeObservation, WavePolicy};
use crate::rollout::revision::{
    StrategyVerdict, current_revision_hash, revision_name, strategy_verdict,
};
use crate::rollout::settings::RolloutSettings;
use crate::rollout::status::{RolloutPhase, Standing};

/// A rollback's DaemonSet restore is sent again when the watch has not shown it after
/// this long, at most `MAX_UNDO_ATTEMPTS` times.
const UNDO_RESEND: SignedDuration = SignedDuration::from_secs(10);
pub(super) const MAX_UNDO_ATTEMPTS: u32 = 5;
/// Restores that met an API blip (connection, 5xx, throttling), retried with backoff
/// (capped at 30 s: about a quarter of an hour) before the rollback gives up.
pub(super) const MAX_UNDO_BLIPS: u32 = 30;

/// Everything the later stages read, gathered once.
pub(super) struct View {
    pub settings: Arc<RolloutSettings>,
    /// The wave policy (reversed during a rollback).
    pub policy: WavePolicy,
    pub target: Target,
    pub ds_namespace: String,
    pub ds_name: String,
    pub ds_uid: String,
    /// With `spec.cni`: the istio-cni DaemonSet.
    pub cni: Option<CniView>,
    /// The DaemonSet is RollingUpdate and the spec allows it.
    pub rolling_update: bool,
    /// The rollout's nodes: the selected ones and those it started outside the
    /// selection.
    pub nodes: Arc<NodeMap>,
    /// The layout version of `nodes` (what is derived from them is kept while it is
    /// the same).
    pub layout: u64,
    /// The marks of `nodes`, in their order.
    pub marks: Arc<Vec<super::facts::Marks>>,
    pub placement: Arc<HashMap<String, Placement>>,
    pub waves: Arc<Waves>,
    /// What the planner sees of `nodes` (in the same order).
    pub observations: Vec<NodeObservation>,
}

/// The istio-cni DaemonSet (`spec.cni`).
pub(super) struct CniView {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    /// Its pod template, for where it runs.
    pub template: Option<k8s_openapi::api::core::v1::PodSpec>,
}

/// A DaemonSet a rollback restores.
struct Restore<'a> {
    namespace: &'a str,
    name: &'a str,
    uid: &'a str,
    from: &'a str,
    to: &'a str,
    revisions: &'a [k8s_openapi::api::apps::v1::ControllerRevision],
}

fn blocked(reason: &str, message: String) -> Standing {
    Standing {
        phase: RolloutPhase::Blocked,
        reason: reason.to_owned(),
        message,
    }
}

impl Pass<'_, '_> {
    /// Stage 5.
    pub(super) fn view(&mut self) -> Result<View, Standing> {
        let snap = self.snap;
        let spec = snap.rollout.spec;
        let settings = self
            .mem
            .derived
            .settings(spec)
            .map_err(|e| blocked("InvalidSpec", e.to_string()))?;
        if let Some(prometheus) = &settings.health.prometheus {
            crate::health::url_policy::check_prometheus_url(
                &prometheus.url,
                &self.config.allowed_prometheus_url_prefixes,
            )
            .map_err(|e| {
                blocked(
                    "PrometheusURLNotAllowed",
                    format!("spec.health.prometheus.url: {e}"),
                )
            })?;
        }
        if let Some((namespace, name)) = &self.config.ztunnel_daemon_set {
            let asked = &spec.daemon_set;
            if (&asked.namespace, &asked.name) != (namespace, name) {
                return Err(blocked(
                    "DaemonSetNotAllowed",
                    format!(
                        "spec.daemonSet {}/{}: this agent may replace the pods of {namespace}/{name} only (--ztunnel-daemonset; the chart's ztunnel.namespace and ztunnel.daemonSet); nothing is changed",
                        asked.namespace, asked.name
                    ),
                ));
            }
        }
        let mut policy = settings.waves.clone();
        if self.mem.rollback.is_some() {
            // Waves in reverse; a node failing during the rollback stops it (the rollout
            // could not say every updated node runs the restored revision).
            policy.reverse = true;
            policy.max_failed = 0;
        }
        let ds_ref = &spec.daemon_set;
        let ds = snap.daemon_set.ok_or_else(|| {
            blocked(
                "DaemonSetNotFound",
                format!(
                    "DaemonSet {}/{} not found: nothing is changed until it exists",
                    ds_ref.namespace, ds_ref.name
                ),
            )
        })?;
        let rolling_update = match strategy_verdict(ds, spec.allow_rolling_update) {
            StrategyVerdict::OnDelete => false,
            StrategyVerdict::RollingUpdateAllowed => true,
            StrategyVerdict::RollingUpdateRefused(message) => {
                return Err(blocked("RollingUpdateStrategy", message));
            }
        };
        let hash = current_revision_hash(ds, snap.revisions).map_err(|e| Standing {
            phase: RolloutPhase::Pending,
            reason: "WaitingForDaemonSet".into(),
            message: e.to_string(),
        })?;
        let ds_uid = ds.metadata.uid.clone().unwrap_or_default();
        let cni = self.cni_view()?;
        let selected = self.mem.derived.selected(snap.nodes, &settings.nodes);
        // Nodes this rollout already started stay in even if their labels changed.
        let started_elsewhere: Vec<String> = along(self.mem.nodes.iter(), &selected)
            .filter(|(_, s, n)| n.is_none() && s.phase() != node_machine::NodePhase::Pending)
            .map(|(node, _, _)| node.clone())
            .collect();
        let nodes = self
            .mem
            .derived
            .nodes(&selected, snap.nodes, started_elsewhere);
        let layout = self.mem.derived.layout(&nodes);
        let marks = self.mem.derived.marks(&nodes, snap.rollout.name);
        let template = ds.spec.as_ref().and_then(|s| s.template.spec.as_ref());
        let placement = self.mem.derived.placement(
            &nodes,
            layout,
            &ds_uid,
            ds.metadata.generation.unwrap_or(0),
            |n| placement(template, n),
        );
        let group_by = &policy.group_by;
        let observations = self
            .mem
            .derived
            .take_observations(layout, snap.pod_counts, group_by)
            .unwrap_or_else(|| {
                nodes
                    .iter()
                    .map(|(node, n)| {
                        let mut o = NodeObservation::pending(
                            node.clone(),
                            n.labels().get(group_by).cloned(),
                            snap.pod_counts.get(node).copied().unwrap_or(0),
                        );
                        o.not_ready = !super::facts::node_ready(n);
                        o
                    })
                    .collect()
            });
        let waves = self.mem.derived.waves(layout, &policy, || {
            let waves = planner::plan_waves(&observations, &policy);
            let wave_of = waves
                .iter()
                .flat_map(|w| w.nodes.iter().map(|n| (n.clone(), w.name.clone())))
                .collect();
            Waves { waves, wave_of }
        });
        Ok(View {
            target: Target {
                revision_hash: hash,
                cycle_current: spec.cycle_current,
                ztunnel_ready_timeout: settings.ztunnel_ready_timeout,
                uncordon_failed: settings.health.uncordon_failed_nodes,
                rolling_back_from: self
                    .mem
                    .rollback
                    .as_ref()
                    .filter(|r| r.from != r.to)
                    .map(|r| r.from.clone()),
                connections_gate: settings.health.connection_drain.map(|c| c.policy),
                bake: settings.health.bake.is_some(),
                cni: cni.as_ref().map(|(_, hash)| node_machine::CniTarget {
                    revision_hash: hash.clone(),
                    rolling_back_from: self
                        .mem
                        .rollback
                        .as_ref()
                        .and_then(|r| r.cni.as_ref())
                        .map(|c| c.from.clone()),
                }),
            },
            policy,
            settings,
            ds_namespace: ds_ref.namespace.clone(),
            ds_name: ds_ref.name.clone(),
            ds_uid,
            cni: cni.map(|(view, _)| view),
            rolling_update,
            nodes,
            layout,
            marks,
            placement,
            waves,
            observations,
        })
    }

    /// With `spec.cni`: the istio-cni DaemonSet and its current revision hash, or why
    /// the rollout cannot go on (nothing is changed until it can).
    fn cni_view(&self) -> Result<Option<(CniView, String)>, Standing> {
        let Some(cni_ref) = &self.snap.rollout.spec.cni else {
            return Ok(None);
        };
        let allowed = match &self.config.cni_daemon_set {
            Some((namespace, name)) => (&cni_ref.namespace, &cni_ref.name) == (namespace, name),
            None => self.config.ztunnel_daemon_set.is_none(),
        };
        if !allowed {
            let may = match &self.config.cni_daemon_set {
                Some((namespace, name)) => format!("the pods of {namespace}/{name} only"),
                None => "no istio-cni pods".to_owned(),
            };
            return Err(blocked(
                "CniDaemonSetNotAllowed",
                format!(
                    "spec.cni {}/{}: this agent may replace {may} (--cni-daemonset; the chart's ztunnel.namespace and ztunnel.cniDaemonSet); nothing is changed",
                    cni_ref.namespace, cni_ref.name
                ),
            ));
        }
        let snap = self.snap.cni.as_ref();
        let Some(ds) = snap.and_then(|c| c.daemon_set) else {
            return Err(blocked(
                "CniDaemonSetNotFound",
                format!(
                    "spec.cni: DaemonSet {}/{} not found: nothing is changed until it exists",
                    cni_ref.namespace, cni_ref.name
                ),
            ));
        };
        if let StrategyVerdict::RollingUpdateRefused(_) | StrategyVerdict::RollingUpdateAllowed =
            strategy_verdict(ds, false)
        {
            return Err(blocked(
                "CniRollingUpdateStrategy",
                format!(
                    "spec.cni: DaemonSet {}/{} does not use updateStrategy OnDelete: its controller would replace istio-cni pods itself, on nodes not drained. Install istio-cni with updateStrategy.type: OnDelete (with istioctl, an overlay on components.cni.k8s), or remove spec.cni",
                    cni_ref.namespace, cni_ref.name
                ),
            ));
        }
        let revisions = snap.map_or(&[][..], |c| c.revisions);
        let hash = current_revision_hash(ds, revisions).map_err(|e| Standing {
            phase: RolloutPhase::Pending,
            reason: "WaitingForCniDaemonSet".into(),
            message: format!("spec.cni: {e}"),
        })?;
        Ok(Some((
            CniView {
                namespace: cni_ref.namespace.clone(),
                name: cni_ref.name.clone(),
                uid: ds.metadata.uid.clone().unwrap_or_default(),
                template: ds.spec.as_ref().and_then(|s| s.template.spec.clone()),
            },
            hash,
        )))
    }

    /// Stage 6: an older active rollout over the same DaemonSet or nodes goes first; this
    /// one changes nothing until it is finished (nodes it already started finish their
    /// sequence).
    pub(super) fn overlap(&mut self, view: &View) -> Option<Standing> {
        let snap = self.snap;
        let me = (snap.rollout.created, snap.rollout.name);
        let spec = snap.rollout.spec;
        let first = snap
            .others
            .iter()
            .filter(|o| o.active && (o.created, o.name.as_str()) < me)
            .find_map(|o| {
                crate::rollout::overlap::overlap(
                    o,
                    &spec.daemon_set,
                    view.nodes.iter().map(|(n, o)| (n, o.as_ref())),
                )
                .map(|how| format!("{} ({})", o.name, how.describe(&spec.daemon_set)))
            })?;
        // Nodes it already started (before the other one appeared) finish their sequence.
        if self.mem.nodes.values().any(|s| s.phase().in_flight()) {
            self.step_in_flight(view);
        }
        Some(Standing {
            phase: RolloutPhase::Blocked,
            reason: "OverlapsRollout".into(),
            message: format!(
                "overlaps rollout {first}, which started first: no node starts until it is finished"
            ),
        })
    }

    /// Stage 7: during a rollback, restore the DaemonSet's previous revision (then, with
    /// `spec.cni`, istio-cni's) and wait until the watch shows it, sending the restore
    /// again (a bounded number of times) if it never arrives.
    pub(super) fn undo(&mut self, view: &View) -> Option<Standing> {
        let rollback = self.mem.rollback.clone()?;
        // `from == to`: a rollback of istio-cni alone (ztunnel was not replaced).
        if rollback.from != rollback.to && view.target.revision_hash == rollback.from {
            let ztunnel = Restore {
                namespace: &view.ds_namespace,
                name: &view.ds_name,
                uid: &view.ds_uid,
                from: &rollback.from,
                to: &rollback.to,
                revisions: self.snap.revisions,
            };
            return Some(self.restore(&ztunnel, false, &rollback.reason));
        }
        let (Some(cni), Some(c), Some(t)) = (&rollback.cni, &view.cni, &view.target.cni) else {
            return None;
        };
        if t.revision_hash != cni.from {
            return None;
        }
        let restore = Restore {
            namespace: &c.namespace,
            name: &c.name,
            uid: &c.uid,
            from: &cni.from,
            to: &cni.to,
            revisions: self.snap.cni.map_or(&[][..], |s| s.revisions),
        };
        Some(self.restore(&restore, true, &rollback.reason))
    }

    /// One DaemonSet's restore (`cni`: istio-cni's, which has its own count of attempts).
    fn restore(&mut self, r: &Restore, cni: bool, reason: &str) -> Standing {
        let now = self.now;
        let undo = if cni {
            &mut self.mem.cni_undo
        } else {
            &mut self.mem.undo
        };
        let due = !undo.in_flight
            && undo.retry.due(now)
            && undo.sent_at.is_none_or(|at| now >= at + UNDO_RESEND);
        if due && (undo.attempts >= MAX_UNDO_ATTEMPTS || undo.blips >= MAX_UNDO_BLIPS) {
            let why = match &undo.retry.error {
                Some(refused) => format!("the last one failed: {refused}"),
                None => "is something, e.g. a GitOps controller, setting it back?".to_owned(),
            };
            return Standing {
                phase: RolloutPhase::Paused,
                reason: crate::rollout::status::NODE_FAILED.into(),
                message: format!(
                    "rolling back: DaemonSet {}/{} still shows revision {} after {} restores to revision {} ({why}); the nodes the rollout cordoned stay cordoned: fix the DaemonSet, or abort the rollout (which releases them)",
                    r.namespace,
                    r.name,
                    r.from,
                    undo.attempts + undo.blips,
                    r.to
                ),
            };
        }
        if due {
            match revision_name(r.name, r.uid, r.to, r.revisions) {
                Some(revision) => {
                    undo.in_flight = true;
                    undo.attempts += 1;
                    self.plan.effects.push(Effect::UndoDaemonSet {
                        namespace: r.namespace.to_owned(),
                        name: r.name.to_owned(),
                        revision,
                        cni,
                    });
                }
                None => {
                    return Standing {
                        phase: RolloutPhase::Paused,
                        reason: crate::rollout::status::NODE_FAILED.into(),
                        message: format!(
                            "rolling back: DaemonSet {}/{}'s revision {} is gone; restore the DaemonSet by hand, or abort the rollout",
                            r.namespace, r.name, r.to
                        ),
                    };
                }
            }
        }
        self.plan.wake(Some(now + UNDO_RESEND));
        Standing {
            phase: RolloutPhase::RollingBack,
            reason: "RollingBack".into(),
            message: format!(
                "restoring DaemonSet {}/{} to revision {} (after: {reason})",
                r.namespace, r.name, r.to
            ),
        }
    }

    /// Stage 8: warnings given once a term.
    pub(super) fn warn_once(&mut self, view: &View) {
        if !self.mem.warned_waypoints {
            self.mem.warned_waypoints = true;
            if let Some(selector) = &view.settings.health.waypoint_selector {
                let warnings = self.snap.lookups.waypoint_warnings(selector);
                if !warnings.is_empty() {
                    // One Event for all of them, not one per waypoint.
                    self.notice(About::Rollout, true, "WaypointAtRisk", warnings.join("; "));
                }
            }
        }
        if view.rolling_update && !self.mem.warned_rolling_update {
            self.mem.warned_rolling_update = true;
            self.notice(
                About::Rollout,
                true,
                "RollingUpdateAllowed",
                "the DaemonSet's update strategy is RollingUpdate: its controller replaces ztunnel pods itself, ignoring waves and drains (allowed by spec.allowRollingUpdate)".into(),
            );
        }
    }

    /// Finished nodes go again, and nodes past their drain have their pods replaced
    /// again (a target revision changed).
    fn go_again(&mut self) {
        let mut again = Vec::new();
        for (n, s) in self.mem.nodes.iter_mut() {
            if s.call.is_some() {
                s.retarget = true; // Once its outcome is recorded.
            } else if let Some(step) = node_machine::retarget(&s.tracked.record) {
                again.push((n.clone(), step));
            }
        }
        for (node, step) in again {
            self.apply_step(&node, step);
        }
    }

    /// Stage 8: the DaemonSet moved to another revision while the rollout runs (a new
    /// version, or the rollback's restore): finished nodes go again.
    pub(super) fn retarget(&mut self, view: &View) {
        let hash = &view.target.revision_hash;
        if let Some(previous) = self.mem.target.clone().filter(|t| t != hash) {
            self.notice(
                About::Rollout,
                false,
                "TargetRevisionChanged",
                format!(
                    "DaemonSet revision changed from {previous} to {hash}: finished nodes are rolled again"
                ),
            );
            self.go_again();
        }
        self.mem.target = Some(hash.clone());
        if let Some(t) = &view.target.cni {
            let hash = &t.revision_hash;
            if let Some(previous) = self.mem.cni.target_revision.clone().filter(|p| p != hash) {
                self.notice(
                    About::Rollout,
                    false,
                    "TargetRevisionChanged",
                    format!(
                        "istio-cni DaemonSet revision changed from {previous} to {hash}: finished nodes are rolled again"
                    ),
                );
                self.go_again();
            }
            self.mem.cni.target_revision = Some(hash.clone());
        }
        // A node the rollout got somewhere with and no longer selects (deleted,
        // relabelled) still counts: done, skipped and failed never add up to more than
        // the total. One it never started does not.
        self.mem.total = view.nodes.len()
            + self
                .mem
                .records()
                .filter(|(n, t)| {
                    !view.nodes.contains_key(*n)
                        && t.record.phase != node_machine::NodePhase::Pending
                })
                .count();
    }
}
