//! What a pass reads: the watched state of the cluster as far as one rollout needs it.
//! The shell builds it from its watch caches; the simulation from its model.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use k8s_openapi::api::apps::v1::{ControllerRevision, DaemonSet};
use k8s_openapi::api::core::v1::Node;
use k8s_openapi::jiff::Timestamp;

use crate::api::rollout::{DaemonSetRef, RolloutSpec, ZtunnelRolloutStatus};
use crate::label_selector::Selector;
use crate::rollout::node_machine::ZtunnelPod;

/// Nodes by name.
pub type NodeMap = BTreeMap<String, Arc<Node>>;
/// The DaemonSet's ztunnel pods by node name.
pub type ZtunnelsByNode = HashMap<String, Vec<ZtunnelPod>>;
/// Pods a drain would evict, by node name.
pub type PodCounts = Arc<HashMap<String, usize>>;

pub struct Snapshot<'a> {
    pub rollout: RolloutView<'a>,
    pub daemon_set: Option<&'a DaemonSet>,
    /// ControllerRevisions (those of other owners are ignored).
    pub revisions: &'a [ControllerRevision],
    /// Every node. A new `Arc` when any node changed: what a pass derives from the
    /// nodes is kept while it is the same.
    pub nodes: &'a Arc<NodeMap>,
    pub ztunnels: &'a Arc<ZtunnelsByNode>,
    /// With `spec.cni`: the istio-cni DaemonSet, its revisions and pods.
    pub cni: Option<CniSnapshot<'a>>,
    pub pod_counts: &'a PodCounts,
    /// The other rollouts (overlaps).
    pub others: &'a [OtherRollout],
    pub lookups: &'a dyn Lookups,
    /// The node the agent runs on, if it knows (the downward API).
    pub agent_node: Option<&'a str>,
}

/// The istio-cni DaemonSet (`spec.cni`) as watched.
#[derive(Clone, Copy)]
pub struct CniSnapshot<'a> {
    pub daemon_set: Option<&'a DaemonSet>,
    /// Its ControllerRevisions (those of other owners are ignored).
    pub revisions: &'a [ControllerRevision],
    /// Its pods by node name.
    pub pods: &'a Arc<ZtunnelsByNode>,
}

/// The rollout object.
pub struct RolloutView<'a> {
    pub name: &'a str,
    pub uid: &'a str,
    pub generation: i64,
    pub created: Timestamp,
    pub spec: &'a RolloutSpec,
    /// Being deleted (the finalizer holds it).
    pub deleting: bool,
    pub finalizer: bool,
    /// The stored status, as watched.
    pub status: Option<&'a ZtunnelRolloutStatus>,
}

/// Another rollout, as far as overlaps go.
#[derive(Debug, Clone)]
pub struct OtherRollout {
    pub name: String,
    pub created: Timestamp,
    /// Not finished (a rollout being deleted or aborted still releases its nodes).
    pub active: bool,
    pub daemon_set: DaemonSetRef,
    /// Its node selector; `None` when it does not parse (it changes nothing then).
    pub nodes: Option<Selector>,
}

/// Facts computed only when a pass asks (they cost a walk over objects).
pub trait Lookups {
    /// Warnings about the waypoints `selector` picks (one replica, no PDB).
    fn waypoint_warnings(&self, selector: &Selector) -> Vec<String>;
}

/// Lookups that find nothing.
pub struct NoLookups;

impl Lookups for NoLookups {
    fn waypoint_warnings(&self, _: &Selector) -> Vec<String> {
        Vec::new()
    }
}
