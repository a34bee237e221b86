//! What the rollouts keep of each pod labelled `controller-revision-hash`: DaemonSet
//! (and StatefulSet) pods, among them every ztunnel pod. The passes find each node's
//! ztunnel pods here, the metrics gate the new pod's IP and the connections gate the
//! old one's. A realistic node runs several DaemonSets (ztunnel, istio-cni, a network
//! proxy, a log agent): at 1,000 nodes their 4,000 pods as trimmed `Pod` objects were
//! ~17 MB of the agent's heap; these facts are a tenth of that.

use std::sync::Arc;

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::jiff::Timestamp;
use ztunnel_rollout_core::labels::REVISION_HASH_LABEL;
use ztunnel_rollout_core::object::ObjectMetaExt;
use ztunnel_rollout_core::rollout::node_machine::ZtunnelPod;

/// One revisioned pod, as the rollouts read it (shared: the passes' ztunnel index keeps
/// the same facts and skips a pod whose facts were not replaced since it looked).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RevisionedPod {
    pub name: String,
    pub uid: String,
    /// Uid of the controller owning it (the DaemonSet).
    pub controller_uid: Option<String>,
    pub node: Option<String>,
    pub revision_hash: Option<String>,
    pub ready: bool,
    pub terminating: bool,
    pub created: Timestamp,
    pub ip: Option<String>,
}

impl RevisionedPod {
    /// The pod's facts (a pod without a uid gets an empty one: the cache skips such
    /// objects before it asks).
    pub fn of(p: &Pod) -> Arc<Self> {
        Arc::new(Self {
            name: p.name_any(),
            uid: p.metadata.uid.clone().unwrap_or_default(),
            controller_uid: p.controller().map(|o| o.uid.clone()),
            node: p.spec.as_ref().and_then(|s| s.node_name.clone()),
            revision_hash: p.labels().get(REVISION_HASH_LABEL).cloned(),
            ready: p
                .status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True")),
            terminating: p.metadata.deletion_timestamp.is_some(),
            created: p
                .metadata
                .creation_timestamp
                .as_ref()
                .map_or(Timestamp::UNIX_EPOCH, |t| t.0),
            ip: p.status.as_ref().and_then(|s| s.pod_ip.clone()),
        })
    }

    /// Whether the DaemonSet with uid `ds_uid` controls it.
    pub fn owned_by(&self, ds_uid: &str) -> bool {
        self.controller_uid.as_deref() == Some(ds_uid)
    }

    /// As the node machine reads a ztunnel pod (`None` without a revision label).
    pub fn ztunnel_pod(&self) -> Option<ZtunnelPod> {
        Some(ZtunnelPod {
            name: self.name.clone(),
            uid: self.uid.clone(),
            revision_hash: self.revision_hash.clone()?,
            ready: self.ready,
            terminating: self.terminating,
            created: self.created,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_facts_of_a_revisioned_pod() {
        let p: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {
                "name": "ztunnel-abc", "namespace": "istio-system", "uid": "u1",
                "creationTimestamp": "2026-12-04T08:00:00Z",
                "labels": { "controller-revision-hash": "h2", "app": "ztunnel" },
                "ownerReferences": [
                    { "apiVersion": "v1", "kind": "Node", "name": "n1", "uid": "not-controller" },
                    { "apiVersion": "apps/v1", "kind": "DaemonSet", "name": "ztunnel", "uid": "ds", "controller": true }
                ]
            },
            "spec": { "nodeName": "n1", "containers": [] },
            "status": {
                "phase": "Running", "podIP": "10.0.0.7",
                "conditions": [
                    { "type": "PodScheduled", "status": "True" },
                    { "type": "Ready", "status": "True" }
                ]
            }
        }))
        .unwrap();
        let f = RevisionedPod::of(&p);
        assert_eq!(f.name, "ztunnel-abc");
        assert_eq!(f.uid, "u1");
        assert!(f.owned_by("ds") && !f.owned_by("not-controller"));
        assert_eq!(f.node.as_deref(), Some("n1"));
        assert_eq!(f.ip.as_deref(), Some("10.0.0.7"));
        assert!(f.ready && !f.terminating);
        let z = f.ztunnel_pod().unwrap();
        assert_eq!(z.revision_hash, "h2");
        assert_eq!(z.created, "2026-12-04T08:00:00Z".parse().unwrap());

        let mut going = p.clone();
        going.metadata.deletion_timestamp = going.metadata.creation_timestamp.clone();
        going.status.as_mut().unwrap().conditions.as_mut().unwrap()[1].status = "False".into();
        let f = RevisionedPod::of(&going);
        assert!(f.terminating && !f.ready);

        let mut unlabelled = p.clone();
        unlabelled.metadata.labels = None;
        assert!(RevisionedPod::of(&unlabelled).ztunnel_pod().is_none());

        // No controller and no creation time: owned by nobody, created at the epoch.
        let mut orphan = p;
        orphan.metadata.owner_references = None;
        orphan.metadata.creation_timestamp = None;
        let f = RevisionedPod::of(&orphan);
        assert!(f.controller_uid.is_none() && !f.owned_by("ds"));
        assert_eq!(f.created, Timestamp::UNIX_EPOCH);
    }
}
