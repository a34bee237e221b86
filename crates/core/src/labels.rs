//! Every label, annotation, taint and finalizer key the product reads or writes, in one
//! place: ours (`ztunnel-rollout.dev/…`), Kubernetes' and Istio's.

// Ours.
/// On a node a rollout cordoned: the rollout that owns the node.
pub const OWNER_ANNOTATION: &str = "ztunnel-rollout.dev/rollout";
/// On a node a rollout cordoned: whether it was unschedulable before (then it stays
/// cordoned when released).
pub const WAS_UNSCHEDULABLE_ANNOTATION: &str = "ztunnel-rollout.dev/was-unschedulable";
/// On a node a rollout cordoned: which cordon it is (the node's resourceVersion the
/// cordon was written over). Someone may uncordon the node and the rollout cordon it
/// again: the rollout gives up only the cordon that was lifted, never a later one.
pub const CORDON_ID_ANNOTATION: &str = "ztunnel-rollout.dev/cordon-id";
/// On nodes still waiting for their turn (PreferNoSchedule; the value names the
/// rollout): evicted pods land preferably on nodes already done, so no application pod
/// is disrupted twice by one rollout.
pub const WAITING_TAINT: &str = "ztunnel-rollout.dev/waiting";
/// On a rollout: removed only after every node it touched was released.
pub const FINALIZER: &str = "ztunnel-rollout.dev/cleanup";

// Kubernetes.
/// The DaemonSet (or StatefulSet) revision a pod was created from.
pub const REVISION_HASH_LABEL: &str = "controller-revision-hash";
/// Static (mirror) pods: the kubelet owns them; a drain never evicts them.
pub const MIRROR_POD_ANNOTATION: &str = "kubernetes.io/config.mirror";
/// What `kubectl rollout restart` sets on a pod template.
pub const RESTARTED_AT_ANNOTATION: &str = "kubectl.kubernetes.io/restartedAt";

// Istio.
/// Enrolls a pod (or its namespace) in ambient mode, or opts it out.
pub const DATAPLANE_MODE_LABEL: &str = "istio.io/dataplane-mode";
/// Namespace label: sidecar injection from the default revision.
pub const INJECTION_LABEL: &str = "istio-injection";
/// Namespace label: sidecar injection from a revision or tag; also on injector webhooks.
pub const REVISION_LABEL: &str = "istio.io/rev";
/// On a revision tag's webhook: the tag's name.
pub const TAG_LABEL: &str = "istio.io/tag";
/// On an injected pod: the revision its sidecar came from.
pub const REVISION_ANNOTATION: &str = "istio.io/rev";
/// On an injected pod: what the injector did (JSON, with `revision`).
pub const SIDECAR_STATUS_ANNOTATION: &str = "sidecar.istio.io/status";
/// Label or annotation `sidecar.istio.io/inject=false`: no sidecar for this pod.
pub const INJECT_LABEL: &str = "sidecar.istio.io/inject";
/// The label istiod puts on the waypoint Deployments it manages, and its value.
pub const WAYPOINT_MANAGED_LABEL: &str = "gateway.istio.io/managed";
pub const WAYPOINT_MANAGED_VALUE: &str = "istio.io-mesh-controller";
/// The label naming a waypoint Deployment's Gateway.
pub const GATEWAY_NAME_LABEL: &str = "gateway.networking.k8s.io/gateway-name";
