//! What the node machine sees of a node: the watched node and ztunnel pods, with this
//! term's own writes laid over them while the watches do not show them yet (stage 2
//! forgets a write once they do).

use std::borrow::Cow;
use std::sync::Arc;

use k8s_openapi::api::core::v1::Node;

use super::memory::{LostCordon, NodeState, Wrote};
use super::{Pass, View};
use crate::rollout::node_machine::{CniFacts, NodeFacts, NodePhase, Owner, Placement, ZtunnelPod};
use crate::rollout::ownership::{has_waiting_taint, owner, recorded_was_unschedulable};

/// The node's `spec.unschedulable`.
pub fn unschedulable(n: &Node) -> bool {
    n.spec
        .as_ref()
        .and_then(|s| s.unschedulable)
        .unwrap_or(false)
}

/// The node's Ready condition is True.
pub fn node_ready(n: &Node) -> bool {
    n.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// The node as this rollout knows it: the watched copy, and our last write over it if the
/// watch does not show it yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NodeView {
    pub unschedulable: bool,
    /// `Some(was_unschedulable)` when this rollout owns the node.
    pub ours: Option<bool>,
    pub waiting_taint: bool,
}

/// Our write the watched copy `n` does not show yet, if any.
pub fn unseen<'a>(state: Option<&'a NodeState>, n: &Node) -> Option<&'a Wrote> {
    let e = state?.expect.as_ref()?;
    let version = n.metadata.resource_version.as_deref()?;
    e.over.iter().any(|v| v == version).then_some(&e.wrote)
}

/// What a node's watched copy says for one rollout, before this term's writes the watch
/// does not show yet. Read once per copy and kept while the copy is (see
/// `Derived::marks`): passes read it for every node, and reading the annotations and
/// taints of 1,000 node objects on every pass was a sixth of the agent's CPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Marks {
    pub unschedulable: bool,
    /// `Some(was_unschedulable)` when this rollout owns the node.
    pub ours: Option<bool>,
    pub waiting_taint: bool,
    /// Another rollout owns the node.
    pub others: bool,
}

impl Marks {
    pub fn of(rollout: &str, n: &Node) -> Self {
        let ours = recorded_was_unschedulable(n, rollout);
        Self {
            unschedulable: unschedulable(n),
            ours,
            waiting_taint: has_waiting_taint(n, rollout),
            others: ours.is_none() && owner(n).is_some_and(|o| o != rollout),
        }
    }
}

pub fn node_view(rollout: &str, n: &Node, state: Option<&NodeState>) -> NodeView {
    overlay(Marks::of(rollout, n), n, state)
}

/// The node as this rollout knows it from its marks `m` (read from `n`).
pub fn overlay(m: Marks, n: &Node, state: Option<&NodeState>) -> NodeView {
    let mut v = NodeView {
        unschedulable: m.unschedulable,
        ours: m.ours,
        waiting_taint: m.waiting_taint,
    };
    if state.is_none_or(|s| s.expect.is_none()) {
        return v;
    }
    match unseen(state, n) {
        Some(Wrote::Cordon { was_unschedulable }) => {
            v.unschedulable = true;
            v.ours = Some(*was_unschedulable);
            v.waiting_taint = false;
        }
        Some(Wrote::Release { uncordoned }) => {
            v.ours = None;
            if *uncordoned {
                v.unschedulable = false;
            }
        }
        Some(Wrote::WaitingTaint(waiting)) => v.waiting_taint = *waiting,
        Some(Wrote::Disown) if v.ours.is_some() => v.ours = Some(true),
        Some(Wrote::Uncordon) => {
            v.unschedulable = false;
            if v.ours.is_some() {
                v.ours = Some(true);
            }
        }
        Some(Wrote::Disown) => {}
        Some(Wrote::Read {
            was_unschedulable,
            unschedulable,
        }) => {
            v.ours = Some(*was_unschedulable);
            v.unschedulable = *unschedulable;
        }
        None => {}
    }
    v
}

impl Pass<'_, '_> {
    /// Stage 2: forgets the writes the watches show now (or whose object is gone), and
    /// notes a cordon of ours that is gone: once someone uncordoned a node in the
    /// rollout's sequence, a cordon it has later is someone else's unless the rollout
    /// cordons it again (the machine does before its ztunnel is replaced), so the
    /// rollout never uncordons it.
    pub(super) fn forget_seen_writes(&mut self) {
        let nodes = self.snap.nodes;
        let ztunnels = self.snap.ztunnels;
        let rollout = self.snap.rollout.name;
        for (name, state) in self.mem.nodes.iter_mut() {
            if (state.phase().in_flight() || state.phase() == NodePhase::Failed)
                && state.call.is_none()
                && let Some(n) = nodes.get(name)
            {
                let v = node_view(rollout, n, Some(state));
                if v.ours == Some(false) && !v.unschedulable {
                    state.disown = Some(LostCordon {
                        id: crate::rollout::ownership::cordon_id(n).map(str::to_owned),
                    });
                }
            }
            if state.expect.is_some() {
                let shown = match nodes.get(name) {
                    None => true,
                    Some(n) => unseen(Some(state), n).is_none(),
                };
                if shown {
                    state.expect = None;
                }
            }
            if let Some(uid) = &state.deleted_pod {
                let running_in = |by_node: &super::ZtunnelsByNode| {
                    by_node
                        .get(name)
                        .is_some_and(|pods| pods.iter().any(|p| p.uid == *uid && !p.terminating))
                };
                let running =
                    running_in(ztunnels) || self.snap.cni.is_some_and(|c| running_in(c.pods));
                if !running {
                    state.deleted_pod = None;
                }
            }
        }
    }

    /// What the node machine sees of `node` (`n`: the watched node, if it exists, and
    /// its marks if the caller has them).
    pub(super) fn facts(
        &self,
        view: &View,
        node: &str,
        n: Option<&Arc<Node>>,
        marks: Option<Marks>,
    ) -> NodeFacts<'_> {
        let state = self.mem.nodes.get(node);
        let name = self.name();
        let (unschedulable, owner) = match n {
            None => (false, Owner::Nobody),
            Some(n) => {
                let m = marks.unwrap_or_else(|| Marks::of(name, n));
                let v = overlay(m, n, state);
                let owner = match (v.ours, m.others.then(|| owner(n)).flatten()) {
                    (Some(was_unschedulable), _) => Owner::Us { was_unschedulable },
                    (None, Some(other)) => Owner::Other(other.to_owned()),
                    _ => Owner::Nobody,
                };
                (v.unschedulable, owner)
            }
        };
        let deleted = state.and_then(|s| s.deleted_pod.as_deref());
        let cni = view.cni.as_ref().map(|c| {
            let pods =
                terminating_if_deleted(self.snap.cni.and_then(|s| s.pods.get(node)), deleted);
            // Where istio-cni runs matters only where it has no pod.
            let placement = match n {
                Some(n) if pods.is_empty() => {
                    crate::rollout::placement::placement(c.template.as_ref(), n)
                }
                _ => Placement::Runs,
            };
            CniFacts {
                pods,
                placement,
                replaced_at: state.and_then(|s| s.cni_deleted_at),
            }
        });
        NodeFacts {
            exists: n.is_some(),
            unschedulable,
            owner,
            ztunnel_pods: terminating_if_deleted(self.snap.ztunnels.get(node), deleted),
            placement: view.placement.get(node).cloned().unwrap_or(Placement::Runs),
            cni,
            drain: state.map_or(
                crate::rollout::node_machine::DrainProgress::NotStarted,
                |s| s.drain.clone(),
            ),
            verification: state.map_or(
                crate::rollout::node_machine::GateProgress::NotStarted,
                |s| s.gates.clone(),
            ),
            connections: state.map_or(
                crate::rollout::node_machine::ConnectionsProgress::NotStarted,
                |s| s.connections.clone(),
            ),
            recordons: state.map_or(0, |s| s.recordons),
            waiting_for_ztunnel_since: state.and_then(|s| s.waiting_for_ztunnel_since),
        }
    }

    /// The watched node `node` (in the rollout, or anywhere in the cluster).
    pub(super) fn watched(&self, view: &View, node: &str) -> Option<Arc<Node>> {
        view.nodes
            .get(node)
            .or_else(|| self.snap.nodes.get(node))
            .cloned()
    }
}

/// A node's pods as watched, with the pod this term deleted (`deleted`, by UID)
/// terminating whether or not the watch shows it yet.
fn terminating_if_deleted<'a>(
    pods: Option<&'a Vec<ZtunnelPod>>,
    deleted: Option<&str>,
) -> Cow<'a, [ZtunnelPod]> {
    match (pods, deleted) {
        (None, _) => Cow::Borrowed(&[]),
        (Some(pods), None) => Cow::Borrowed(pods.as_slice()),
        (Some(pods), Some(deleted)) => pods
            .iter()
            .map(|p| ZtunnelPod {
                terminating: p.terminating || p.uid == deleted,
                ..p.clone()
            })
            .collect(),
    }
}
