//! The `ZtunnelRollout` custom resource: what to roll, over which nodes, in which waves,
//! and how carefully. The API server validates it (OpenAPI schema and CEL rules), so an
//! invalid spec is refused at `kubectl apply` time with a message naming the field.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde::{Deserialize, Serialize};

/// Go-style durations without sign: `90s`, `5m`, `1h30m`, `250ms`.
pub const DURATION_PATTERN: &str = r"^([0-9]+(\.[0-9]+)?(ms|s|m|h))+$";
/// A label key: optional DNS prefix and `/`, then a name.
pub const LABEL_KEY_PATTERN: &str = r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$";

/// Rolls the ztunnel DaemonSet's current revision out node by node, in waves.
#[derive(schemars::JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [{"rule": "has(self.cni) == has(oldSelf.cni) && (!has(self.cni) || self.cni == oldSelf.cni)", "message": "cni cannot be added, removed or changed: create a new rollout"}]))]
pub struct RolloutSpec {
    /// The ztunnel DaemonSet to roll out.
    #[serde(default)]
    pub daemon_set: DaemonSetRef,
    /// Istio's istio-cni node agent DaemonSet (`OnDelete`), e.g. istio-system/istio-cni-node:
    /// the node's istio-cni pod is replaced in the same drained window, before ztunnel,
    /// and must be Ready on its DaemonSet's current revision. Not replaced when omitted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cni: Option<DaemonSetRef>,
    /// Which nodes take part; all nodes when omitted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_selector: Option<LabelSelector>,
    pub waves: WavesSpec,
    #[serde(default)]
    pub drain: DrainSpec,
    /// How long a node's new ztunnel pod may take to become Ready.
    #[serde(default = "default_ztunnel_ready_timeout")]
    #[schemars(regex(pattern = r"^([0-9]+(\.[0-9]+)?(ms|s|m|h))+$"))]
    pub ztunnel_ready_timeout: String,
    /// Replace ztunnel also on nodes already on the current revision.
    #[serde(default)]
    pub cycle_current: bool,
    /// Proceed although the DaemonSet's update strategy is RollingUpdate (its controller
    /// then replaces pods itself, ignoring waves and drains).
    #[serde(default)]
    pub allow_rolling_update: bool,
    /// No new node starts while true; a node in progress reaches a safe point.
    #[serde(default)]
    pub paused: bool,
    /// Stop the rollout: cancel drains in progress, uncordon the nodes this rollout
    /// cordoned (never others), remove its annotations and taints. Final.
    #[serde(default)]
    pub abort: bool,
    /// What proves a node healthy before it is uncordoned, and what a failure does.
    #[serde(default)]
    pub health: HealthSpec,
    /// Nodes start only while one of these windows is open (any time when empty); a node
    /// in progress when a window closes finishes its sequence.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub maintenance_windows: Vec<MaintenanceWindowSpec>,
    /// Delete the rollout this long after it finished (Complete, RolledBack or
    /// Aborted), as Jobs' `ttlSecondsAfterFinished`; kept when omitted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub ttl_seconds_after_finished: Option<u32>,
    /// Waves approved to start (`ztunnel-rollout approve ROLLOUT --wave NAME`), for
    /// `waves.approval: Manual`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 256), extend("x-kubernetes-list-type" = "set"))]
    pub approved_waves: Vec<String>,
}

/// A weekly maintenance window in an IANA time zone; it may cross midnight (`end` not
/// after `start` ends it the next day).
#[derive(schemars::JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct MaintenanceWindowSpec {
    /// Days the window opens: Mon, Tue, ... (or Monday, ...).
    #[schemars(length(min = 1, max = 7))]
    pub days: Vec<String>,
    /// Local opening time, HH:MM (24-hour).
    #[schemars(regex(pattern = r"^([01][0-9]|2[0-3]):[0-5][0-9]$"))]
    pub start: String,
    /// Local closing time, HH:MM (24-hour).
    #[schemars(regex(pattern = r"^([01][0-9]|2[0-3]):[0-5][0-9]$"))]
    pub end: String,
    /// IANA time zone, e.g. Europe/Berlin; UTC when omitted.
    #[serde(default = "default_time_zone")]
    pub time_zone: String,
}

fn default_time_zone() -> String {
    "UTC".to_owned()
}

/// The health gates a node passes after its new ztunnel pod is Ready. Every gate fails
/// closed: an unreachable endpoint, a malformed answer or a query without data fails the
/// node unless `noData: Pass` says otherwise.
#[derive(schemars::JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "!has(self.meshQueries) || size(self.meshQueries) == 0 || has(self.prometheus)", "message": "meshQueries need prometheus (its url)"},
]))]
pub struct HealthSpec {
    /// How long a node must stay healthy, without a break, before it is Verified.
    #[serde(default = "default_soak")]
    #[schemars(regex(pattern = r"^([0-9]+(\.[0-9]+)?(ms|s|m|h))+$"))]
    pub soak: String,
    /// How often the gates are evaluated while a node soaks; at least 1s (each round
    /// scrapes and queries for every node being verified).
    #[serde(default = "default_interval")]
    #[schemars(
        regex(pattern = r"^([0-9]+(\.[0-9]+)?(ms|s|m|h))+$"),
        extend("x-kubernetes-validations" = [{"rule": "duration(self) >= duration('1s')", "message": "interval must be at least 1s"}])
    )]
    pub interval: String,
    /// A node whose gates have not all passed this long after its ztunnel pod became
    /// Ready fails (e.g. a waypoint that never becomes Ready again).
    #[serde(default = "default_gate_timeout")]
    #[schemars(regex(pattern = r"^([0-9]+(\.[0-9]+)?(ms|s|m|h))+$"))]
    pub timeout: String,
    /// What happens when more than `maxFailedNodes` nodes have failed.
    #[serde(default)]
    pub on_failure: FailurePolicy,
    /// Failed nodes tolerated before the failure policy applies (the circuit breaker).
    #[serde(default)]
    #[schemars(range(min = 0))]
    pub max_failed_nodes: u32,
    /// Uncordon a failed node (if the rollout cordoned it) instead of leaving it
    /// cordoned for inspection.
    #[serde(default)]
    pub uncordon_failed_nodes: bool,
    /// A check that gets no data (query without series, metric missing): `Fail` (the
    /// default) or `Pass`. Unreachable endpoints and malformed answers always fail.
    #[serde(default)]
    pub no_data: NoDataPolicy,
    #[serde(default)]
    pub waypoints: WaypointGateSpec,
    /// Scrape the node's ztunnel metrics endpoint. With it, the old ztunnel's metrics
    /// are also read after the drain: its pod is deleted once the connections it
    /// proxies have closed (see `connectionDrainTimeout`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ztunnel_metrics: Option<ZtunnelMetricsSpec>,
    /// After the drain, how long to wait at most for the connections still open through
    /// the node's old ztunnel (opened minus closed, from its metrics) to close before
    /// its pod is deleted, which resets them. Connections of pods the drain leaves on
    /// the node (DaemonSet and static pods) never close: they are not waited for. Only
    /// with `ztunnelMetrics`; `0s` does not wait.
    #[serde(default = "default_connection_drain_timeout")]
    #[schemars(regex(pattern = r"^([0-9]+(\.[0-9]+)?(ms|s|m|h))+$"))]
    pub connection_drain_timeout: String,
    /// Connections still open when ztunnel is to be replaced: `Proceed` (the default:
    /// replace it; a Warning Event and the node's status name the workloads whose
    /// connections are reset, with counts) or `Fail` (the node fails; its ztunnel is
    /// not replaced).
    #[serde(default)]
    pub on_open_connections: OpenConnectionsPolicy,
    /// PromQL checks against a Prometheus HTTP API.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prometheus: Option<PrometheusSpec>,
    /// Bake each node after its uncordon, while its pods come back: the node stays in
    /// phase `Baking` (out of the wave's budget; the next wave waits for it) until the
    /// same gates (ztunnel's proxies against the ambient pods now on the node, its
    /// failed connections, the Prometheus queries, the waypoints) have held for this
    /// long without a break. A failed check — or checks still not healthy `timeout`
    /// after the bake could have ended — cordons the node again and drains it, so its
    /// pods move to nodes known good; the node then fails and `onFailure` applies
    /// (Rollback includes it). Only for nodes the rollout uncordons; not during a
    /// rollback. Unset or `0s`: no bake.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^([0-9]+(\.[0-9]+)?(ms|s|m|h))+$"))]
    pub bake: Option<String>,
    /// The mesh-wide breaker: PromQL queries about the whole mesh (no `$node`), against
    /// `prometheus.url`, evaluated every `interval` from the first cordon to the end of
    /// the rollout; `maxIncrease` compares with the value just before the first cordon.
    /// A breach (or a query failing for `timeout`) applies `onFailure` — no new node
    /// starts; nodes in flight finish — with the query, value and threshold in the
    /// conditions and an Event. Changing the spec (a new generation) resets it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub mesh_queries: Vec<PrometheusQuery>,
}

impl Default for HealthSpec {
    fn default() -> Self {
        Self {
            soak: default_soak(),
            interval: default_interval(),
            timeout: default_gate_timeout(),
            on_failure: FailurePolicy::default(),
            max_failed_nodes: 0,
            uncordon_failed_nodes: false,
            no_data: NoDataPolicy::default(),
            waypoints: WaypointGateSpec::default(),
            ztunnel_metrics: None,
            connection_drain_timeout: default_connection_drain_timeout(),
            on_open_connections: OpenConnectionsPolicy::default(),
            prometheus: None,
            bake: None,
            mesh_queries: Vec::new(),
        }
    }
}

fn default_connection_drain_timeout() -> String {
    "30s".to_owned()
}

#[derive(
    schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default,
)]
pub enum OpenConnectionsPolicy {
    /// Replace ztunnel anyway; the reset connections are named.
    #[default]
    Proceed,
    /// Fail the node without replacing ztunnel.
    Fail,
}

fn default_soak() -> String {
    "0s".to_owned()
}

fn default_interval() -> String {
    "5s".to_owned()
}

fn default_gate_timeout() -> String {
    "5m".to_owned()
}

#[derive(
    schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default,
)]
pub enum FailurePolicy {
    /// No new node starts; the failed node stays as it is (see `uncordonFailedNodes`).
    #[default]
    Pause,
    /// Restore the DaemonSet's previous revision and roll the updated nodes back, wave
    /// by wave in reverse, through the same sequence.
    Rollback,
}

#[derive(
    schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default,
)]
pub enum NoDataPolicy {
    #[default]
    Fail,
    Pass,
}

#[derive(schemars::JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct WaypointGateSpec {
    /// Skip the waypoint gate.
    #[serde(default)]
    pub disabled: bool,
    /// Which Deployments are waypoints; Istio's managed waypoints
    /// (`gateway.istio.io/managed=istio.io-mesh-controller`) when omitted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<LabelSelector>,
}

#[derive(schemars::JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ZtunnelMetricsSpec {
    #[serde(default = "default_ztunnel_metrics_port")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: u16,
    /// Proxy counts must match the node's ambient pods (no pending proxies).
    #[serde(default = "default_true")]
    pub check_proxies: bool,
    /// Most failed connections per second over the soak: `istio_tcp_connections_failed_total`
    /// (ztunnel 1.29+), else connections closed with `response_flags` DENY or CONNECT.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0))]
    pub max_failed_connections_per_second: Option<f64>,
    /// Most connections closed per connection opened over the soak
    /// (`istio_tcp_connections_closed_total` / `…_opened_total`): a ztunnel tearing
    /// connections down closes many more than it opens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0))]
    pub max_closed_per_opened: Option<f64>,
}

fn default_ztunnel_metrics_port() -> u16 {
    15020
}

fn default_true() -> bool {
    true
}

#[derive(schemars::JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "!has(self.bearerToken) || self.url.startsWith('https://')", "message": "bearerToken needs an https:// url: the token would cross the network in clear text"},
    {"rule": "!has(self.tls) || self.url.startsWith('https://')", "message": "tls applies to an https:// url only"},
]))]
pub struct PrometheusSpec {
    /// Base URL of the Prometheus HTTP API, e.g. `http://prometheus.monitoring:9090`.
    #[schemars(extend("x-kubernetes-validations" = [{"rule": "self.startsWith('http://') || self.startsWith('https://')", "message": "url must start with http:// or https://"}]))]
    pub url: String,
    /// Sent as `Authorization: Bearer …` with every query (https URLs only): a key of a
    /// Secret in the agent's namespace (default key `token`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bearer_token: Option<SecretKeyRef>,
    /// The CA that signs Prometheus's certificate and a client certificate, from Secrets
    /// in the agent's namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<PrometheusTls>,
    /// Deadline for one query; at most 30s. A round of queries also ends at the gate's
    /// deadline (`timeout`).
    #[serde(default = "default_query_timeout")]
    #[schemars(
        regex(pattern = r"^([0-9]+(\.[0-9]+)?(ms|s|m|h))+$"),
        extend("x-kubernetes-validations" = [{"rule": "duration(self) <= duration('30s')", "message": "queryTimeout must be at most 30s"}])
    )]
    pub query_timeout: String,
    /// Per-node queries (`$node` is the node's name); may be empty when `meshQueries`
    /// are set.
    #[serde(default)]
    #[schemars(length(max = 32))]
    pub queries: Vec<PrometheusQuery>,
}

/// A key of a Secret in the agent's namespace (the agent reads Secrets only there, and
/// only those its Role names).
#[derive(schemars::JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeyRef {
    #[schemars(
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"),
        length(min = 1, max = 253)
    )]
    pub name: String,
    /// The key in the Secret's data; each field says its default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[-._a-zA-Z0-9]+$"), length(min = 1, max = 253))]
    pub key: Option<String>,
}

impl SecretKeyRef {
    /// The key, or `default` when none is set.
    pub fn key_or<'a>(&'a self, default: &'a str) -> &'a str {
        self.key.as_deref().unwrap_or(default)
    }
}

#[derive(schemars::JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct PrometheusTls {
    /// PEM CA certificates that sign Prometheus's serving certificate (default key
    /// `ca.crt`); they replace the system's CA certificates for this URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca: Option<SecretKeyRef>,
    /// A client certificate for mutual TLS: a `kubernetes.io/tls` Secret's `tls.crt`
    /// and `tls.key` (PEM).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_certificate: Option<SecretRef>,
}

/// A Secret in the agent's namespace.
#[derive(schemars::JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SecretRef {
    #[schemars(
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"),
        length(min = 1, max = 253)
    )]
    pub name: String,
}

fn default_query_timeout() -> String {
    "10s".to_owned()
}

/// A PromQL query returning one number; `$node` is replaced by the node's name.
#[derive(schemars::JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [{"rule": "has(self.max) != has(self.maxIncrease)", "message": "set exactly one of max and maxIncrease"}]))]
pub struct PrometheusQuery {
    #[schemars(length(min = 1, max = 63))]
    pub name: String,
    #[schemars(length(min = 1))]
    pub query: String,
    /// The value may be at most this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<f64>,
    /// The value may exceed its baseline — the same query evaluated just before the node
    /// was cordoned — by at most this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0))]
    pub max_increase: Option<f64>,
}

fn default_ztunnel_ready_timeout() -> String {
    "5m".to_owned()
}

#[derive(schemars::JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct DaemonSetRef {
    #[schemars(length(min = 1))]
    pub namespace: String,
    #[schemars(length(min = 1))]
    pub name: String,
}

impl Default for DaemonSetRef {
    fn default() -> Self {
        Self {
            namespace: "istio-system".to_owned(),
            name: "ztunnel".to_owned(),
        }
    }
}

#[derive(schemars::JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct WavesSpec {
    /// Node label whose values name the waves (e.g. `topology.kubernetes.io/zone`).
    /// Nodes without it form a last wave.
    #[schemars(regex(
        pattern = r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$"
    ))]
    pub group_by: String,
    /// Label values to roll first, in this order (each once); the other groups follow,
    /// sorted.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 256), extend("x-kubernetes-list-type" = "set"))]
    pub order: Vec<String>,
    /// Nodes of a wave disrupted at once: a count (≥ 1) or a percentage of the wave
    /// (1%–100%, rounded down, at least one node).
    #[schemars(extend("x-kubernetes-validations" = [{"rule": "type(self) == int ? self >= 1 : self.matches('^([1-9][0-9]?|100)%$')", "message": "maxUnavailable must be a count of at least 1 or a percentage from 1% to 100%"}]))]
    pub max_unavailable: IntOrString,
    /// Nodes in a first, canary wave.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub canary_nodes: Option<u32>,
    /// Whether a wave starts by itself or waits for `ztunnel-rollout approve`.
    #[serde(default)]
    pub approval: Approval,
}

#[derive(
    schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default,
)]
pub enum Approval {
    #[default]
    Automatic,
    Manual,
}

#[derive(schemars::JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct DrainSpec {
    /// Deadline for draining one node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^([0-9]+(\.[0-9]+)?(ms|s|m|h))+$"))]
    pub timeout: Option<String>,
    /// Grace period for evicted pods; each pod's own when omitted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub grace_period_seconds: Option<i64>,
    #[serde(default)]
    pub delete_empty_dir_data: bool,
    /// Evict pods that no controller recreates.
    #[serde(default)]
    pub force: bool,
    /// Pods matching this selector are left alone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub skip_pod_selector: Option<LabelSelector>,
    /// Do not wait for pods terminating longer than this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^([0-9]+(\.[0-9]+)?(ms|s|m|h))+$"))]
    pub skip_wait_for_delete_timeout: Option<String>,
}

#[derive(schemars::JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct ZtunnelRolloutStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_wave: Option<String>,
    /// The DaemonSet revision hash being rolled out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_revision: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    #[serde(default)]
    pub counts: NodeCounts,
    /// When the next maintenance window opens (RFC 3339), while none is open.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_window: Option<String>,
    /// The wave waiting for `ztunnel-rollout approve`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub awaiting_approval: Option<String>,
    /// With `spec.cni`: the istio-cni DaemonSet's revisions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cni: Option<CniStatus>,
    /// Set while (and after) the failure policy rolled the DaemonSet back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollback: Option<RollbackStatus>,
    /// When the rollout reached its terminal phase (RFC 3339): Complete, RolledBack or
    /// Aborted are final.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<String>,
    /// The mesh-wide breaker (with `health.meshQueries`): its baseline time and whether
    /// it tripped, kept here so that a new leader goes on from them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mesh_breaker: Option<MeshBreakerStatus>,
    /// Nodes that are not Pending, with their phase; compact for 1,000+ nodes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nodes: Vec<NodeStatus>,
}

#[derive(schemars::JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct MeshBreakerStatus {
    /// `maxIncrease` baselines are the values at this time (RFC 3339): just before the
    /// first cordon.
    pub baseline_at: String,
    /// The generation whose breaker tripped, and why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tripped_generation: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tripped: Option<String>,
}

#[derive(schemars::JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct RollbackStatus {
    /// The revision hash that failed.
    pub from: String,
    /// The previous revision hash, restored on the DaemonSet.
    pub to: String,
    /// The failure that triggered it.
    pub reason: String,
    /// The istio-cni DaemonSet's revisions (`spec.cni`), restored after ztunnel's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cni: Option<CniRollback>,
}

/// The istio-cni DaemonSet's revisions, as the rollout knows them (`spec.cni`).
#[derive(schemars::JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct CniStatus {
    /// The istio-cni revision hash being rolled out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_revision: Option<String>,
}

/// The istio-cni DaemonSet's part of a rollback.
#[derive(schemars::JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct CniRollback {
    /// Its revision hash when the rollback began.
    pub from: String,
    /// Its previous revision hash, restored.
    pub to: String,
}

#[derive(schemars::JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct NodeCounts {
    pub total: u32,
    pub done: u32,
    pub failed: u32,
    pub skipped: u32,
    /// Nodes out of service because of the rollout (cordoned, draining, being replaced
    /// or verified, evacuating after a failed bake).
    pub in_flight: u32,
    /// Nodes uncordoned and baking (`health.bake`), not released yet.
    #[serde(default)]
    pub baking: u32,
}

#[derive(schemars::JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct NodeStatus {
    pub name: String,
    pub phase: NodePhase,
    /// When the node entered its phase (RFC 3339); for a finished node, when it finished.
    pub since: String,
    /// When the rollout started on the node (cordoned it), RFC 3339.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub was_unschedulable: Option<bool>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
}

/// Where the node is in its sequence.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    serde::Serialize,
    serde::Deserialize,
    schemars::JsonSchema,
)]
pub enum NodePhase {
    Pending,
    Cordoned,
    Drained,
    ZtunnelReplaced,
    ZtunnelReady,
    Verified,
    /// Uncordoned, its pods coming back: the new ztunnel is judged on their traffic
    /// (`health.bake`) before the node is released.
    Baking,
    /// The bake failed: cordoned again and draining, so the pods move to nodes known
    /// good; then Failed.
    Evacuating,
    Done,
    Failed,
    Skipped,
}

impl NodePhase {
    pub const ALL: [NodePhase; 11] = [
        NodePhase::Pending,
        NodePhase::Cordoned,
        NodePhase::Drained,
        NodePhase::ZtunnelReplaced,
        NodePhase::ZtunnelReady,
        NodePhase::Verified,
        NodePhase::Baking,
        NodePhase::Evacuating,
        NodePhase::Done,
        NodePhase::Failed,
        NodePhase::Skipped,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            NodePhase::Pending => "Pending",
            NodePhase::Cordoned => "Cordoned",
            NodePhase::Drained => "Drained",
            NodePhase::ZtunnelReplaced => "ZtunnelReplaced",
            NodePhase::ZtunnelReady => "ZtunnelReady",
            NodePhase::Verified => "Verified",
            NodePhase::Baking => "Baking",
            NodePhase::Evacuating => "Evacuating",
            NodePhase::Done => "Done",
            NodePhase::Failed => "Failed",
            NodePhase::Skipped => "Skipped",
        }
    }

    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            NodePhase::Done | NodePhase::Failed | NodePhase::Skipped
        )
    }

    /// Between the cordon and the release: the node carries this rollout's annotation
    /// (while `Baking` it is back in service, but not released yet).
    pub fn in_flight(self) -> bool {
        !self.is_terminal() && self != NodePhase::Pending
    }

    /// Out of service because of the rollout: in flight, except baking (uncordoned).
    pub fn out_of_service(self) -> bool {
        self.in_flight() && self != NodePhase::Baking
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_status_of_a_thousand_node_rollout_fits_in_an_etcd_object() {
        let nodes = (0..1_000)
            .map(|i| NodeStatus {
                name: format!("ip-10-0-{}-{}.eu-west-1.compute.internal", i / 250, i % 250),
                phase: NodePhase::Failed,
                since: "2026-11-29T10:00:00Z".into(),
                started: Some("2026-11-29T09:58:00Z".into()),
                was_unschedulable: Some(false),
                message:
                    "drain failed: PDB payments/api allows 0 disruptions (needs 3 healthy, has 3)"
                        .into(),
            })
            .collect();
        let status = ZtunnelRolloutStatus {
            nodes,
            ..Default::default()
        };
        let bytes = serde_json::to_vec(&status).unwrap().len();
        // etcd's default request limit is 1.5 MiB; keep well below it even when every
        // node carries a long message.
        assert!(bytes < 512 * 1024, "status of 1,000 nodes is {bytes} bytes");
    }

    /// The API server's rules on the gate's durations say what the agent enforces.
    #[test]
    fn the_schema_bounds_the_gates_durations_as_the_agent_does() {
        use crate::duration::format_duration;
        use crate::health::rounds::{MAX_QUERY_TIMEOUT, MIN_INTERVAL};
        let schema = serde_json::to_value(schemars::schema_for!(RolloutSpec)).unwrap();
        let rule = |def: &str, field: &str| {
            schema["$defs"][def]["properties"][field]["x-kubernetes-validations"][0].clone()
        };
        assert_eq!(
            rule("HealthSpec", "interval"),
            serde_json::json!({
                "rule": format!("duration(self) >= duration('{}')", format_duration(MIN_INTERVAL)),
                "message": format!("interval must be at least {}", format_duration(MIN_INTERVAL)),
            })
        );
        assert_eq!(
            rule("PrometheusSpec", "queryTimeout"),
            serde_json::json!({
                "rule": format!("duration(self) <= duration('{}')", format_duration(MAX_QUERY_TIMEOUT)),
                "message": format!("queryTimeout must be at most {}", format_duration(MAX_QUERY_TIMEOUT)),
            })
        );
    }
}
