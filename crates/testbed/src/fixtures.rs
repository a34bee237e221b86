//! Objects the tests and the demo put into the local cluster: simulated nodes, a
//! ztunnel DaemonSet shaped like Istio's chart, waypoint Deployments as istiod renders
//! them, and application Deployments with PodDisruptionBudgets.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{
    DaemonSet, DaemonSetSpec, DaemonSetUpdateStrategy, Deployment, DeploymentSpec,
};
use k8s_openapi::api::core::v1::{
    Container, ContainerPort, HTTPGetAction, Namespace, Node, NodeStatus, PodSpec, PodTemplateSpec,
    Probe, Toleration, TopologySpreadConstraint,
};
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::{Patch, PatchParams};
use kube::{Api, Client, Resource};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::control_plane::KWOK_NODE_ANNOTATION;
use super::kwok_stages::{EXIT_AFTER_ANNOTATION, READY_AFTER_ANNOTATION};

pub const FIELD_MANAGER: &str = "local-cluster";
/// Label that ties fixtures to one test's nodes, so tests sharing a cluster stay apart.
pub const NODE_SET_LABEL: &str = "local-cluster.ztunnel-rollout.dev/node-set";
pub const ZONE_LABEL: &str = "topology.kubernetes.io/zone";
pub const POOL_LABEL: &str = "local-cluster.ztunnel-rollout.dev/pool";
pub use ztunnel_rollout_core::labels::{
    GATEWAY_NAME_LABEL, WAYPOINT_MANAGED_LABEL, WAYPOINT_MANAGED_VALUE,
};

fn labels<const N: usize>(pairs: [(&str, &str); N]) -> BTreeMap<String, String> {
    pairs
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

/// Creates or updates `obj` by server-side apply.
pub async fn apply<K>(api: &Api<K>, obj: &K) -> Result<K, kube::Error>
where
    K: Resource + Clone + Serialize + DeserializeOwned + std::fmt::Debug,
{
    let name = obj.meta().name.clone().unwrap_or_default();
    api.patch(
        &name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(obj),
    )
    .await
}

pub fn namespace(name: &str, extra_labels: BTreeMap<String, String>) -> Namespace {
    Namespace {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            labels: Some(extra_labels),
            ..Default::default()
        },
        ..Default::default()
    }
}

/// A node simulated by KWOK, with room for 110 pods.
pub fn node(name: &str, extra_labels: &BTreeMap<String, String>) -> Node {
    let mut node_labels = labels([
        ("kubernetes.io/hostname", name),
        ("kubernetes.io/os", "linux"),
        ("kubernetes.io/arch", "amd64"),
        ("type", "kwok"),
    ]);
    node_labels.extend(extra_labels.clone());
    let capacity: BTreeMap<String, Quantity> =
        [("cpu", "32"), ("memory", "256Gi"), ("pods", "110")]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), Quantity(v.to_owned())))
            .collect();
    Node {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            labels: Some(node_labels),
            annotations: Some(labels([(KWOK_NODE_ANNOTATION, "fake")])),
            ..Default::default()
        },
        status: Some(NodeStatus {
            allocatable: Some(capacity.clone()),
            capacity: Some(capacity),
            ..Default::default()
        }),
        ..Default::default()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpdateStrategy {
    OnDelete,
    RollingUpdate,
}

/// The ztunnel DaemonSet as Istio's chart renders it, reduced to what the rollout
/// observes. `ready_after` and `exit_after_seconds` set the simulated start-up and drain.
#[derive(Debug, Clone)]
pub struct ZtunnelFixture {
    pub namespace: String,
    pub name: String,
    pub version: String,
    pub strategy: UpdateStrategy,
    pub node_selector: BTreeMap<String, String>,
    pub ready_after: String,
    pub exit_after_seconds: f64,
}

impl ZtunnelFixture {
    pub fn new(namespace: &str, version: &str) -> Self {
        Self {
            namespace: namespace.to_owned(),
            name: "ztunnel".to_owned(),
            version: version.to_owned(),
            strategy: UpdateStrategy::OnDelete,
            node_selector: BTreeMap::new(),
            ready_after: "1s".to_owned(),
            exit_after_seconds: 1.0,
        }
    }

    pub fn daemonset(&self) -> DaemonSet {
        let selector = labels([("app", "ztunnel")]);
        let mut pod_labels = selector.clone();
        pod_labels.extend(labels([
            ("app.kubernetes.io/name", "ztunnel"),
            ("app.kubernetes.io/version", &self.version),
            ("sidecar.istio.io/inject", "false"),
            ("istio.io/dataplane-mode", "none"),
        ]));
        let exit_after = self.exit_after_seconds.to_string();
        let strategy = match self.strategy {
            UpdateStrategy::OnDelete => DaemonSetUpdateStrategy {
                type_: Some("OnDelete".to_owned()),
                rolling_update: None,
            },
            UpdateStrategy::RollingUpdate => DaemonSetUpdateStrategy {
                type_: Some("RollingUpdate".to_owned()),
                rolling_update: Some(k8s_openapi::api::apps::v1::RollingUpdateDaemonSet {
                    max_surge: Some(IntOrString::Int(1)),
                    max_unavailable: Some(IntOrString::Int(0)),
                }),
            },
        };
        DaemonSet {
            metadata: ObjectMeta {
                name: Some(self.name.clone()),
                namespace: Some(self.namespace.clone()),
                labels: Some(labels([
                    ("app", "ztunnel"),
                    ("app.kubernetes.io/version", &self.version),
                ])),
                ..Default::default()
            },
            spec: Some(DaemonSetSpec {
                selector: LabelSelector {
                    match_labels: Some(selector),
                    ..Default::default()
                },
                update_strategy: Some(strategy),
                template: PodTemplateSpec {
                    metadata: Some(ObjectMeta {
                        labels: Some(pod_labels),
                        annotations: Some(labels([
                            (READY_AFTER_ANNOTATION, &self.ready_after),
                            (EXIT_AFTER_ANNOTATION, &exit_after),
                            ("prometheus.io/port", "15020"),
                            ("prometheus.io/scrape", "true"),
                        ])),
                        ..Default::default()
                    }),
                    spec: Some(PodSpec {
                        node_selector: (!self.node_selector.is_empty())
                            .then(|| self.node_selector.clone()),
                        // Like the chart: stay on cordoned and tainted nodes.
                        tolerations: Some(vec![
                            Toleration {
                                effect: Some("NoSchedule".to_owned()),
                                operator: Some("Exists".to_owned()),
                                ..Default::default()
                            },
                            Toleration {
                                effect: Some("NoExecute".to_owned()),
                                operator: Some("Exists".to_owned()),
                                ..Default::default()
                            },
                            Toleration {
                                key: Some("CriticalAddonsOnly".to_owned()),
                                operator: Some("Exists".to_owned()),
                                ..Default::default()
                            },
                        ]),
                        priority_class_name: Some("system-node-critical".to_owned()),
                        termination_grace_period_seconds: Some(30),
                        containers: vec![Container {
                            name: "istio-proxy".to_owned(),
                            image: Some(format!(
                                "docker.io/istio/ztunnel:{}-distroless",
                                self.version
                            )),
                            args: Some(vec!["proxy".to_owned(), "ztunnel".to_owned()]),
                            ports: Some(vec![ContainerPort {
                                name: Some("ztunnel-stats".to_owned()),
                                container_port: 15020,
                                protocol: Some("TCP".to_owned()),
                                ..Default::default()
                            }]),
                            readiness_probe: Some(Probe {
                                http_get: Some(HTTPGetAction {
                                    path: Some("/healthz/ready".to_owned()),
                                    port: IntOrString::Int(15021),
                                    ..Default::default()
                                }),
                                ..Default::default()
                            }),
                            ..Default::default()
                        }],
                        ..Default::default()
                    }),
                },
                ..Default::default()
            }),
            ..Default::default()
        }
    }
}

/// A Deployment of `replicas` pods labelled `app=<name>`, placed with `node_selector`.
#[derive(Debug, Clone)]
pub struct AppFixture {
    pub namespace: String,
    pub name: String,
    pub replicas: i32,
    pub node_selector: BTreeMap<String, String>,
    pub extra_labels: BTreeMap<String, String>,
    pub exit_after_seconds: f64,
    pub termination_grace_period_seconds: i64,
    /// Spread the pods evenly over the nodes together with every pod these labels
    /// select in the namespace (a topology spread constraint sees no other namespace),
    /// other Deployments' included (put the labels in `extra_labels` too): a topology
    /// spread constraint by hostname, skew at most 1, the scheduler waits rather than
    /// break it, and cordoned or tainted nodes do not count (so a drained pod's
    /// replacement is not held for the node it left). Empty: the scheduler's own choice.
    pub spread_evenly_with: BTreeMap<String, String>,
}

impl AppFixture {
    pub fn new(namespace: &str, name: &str, replicas: i32) -> Self {
        Self {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            replicas,
            node_selector: BTreeMap::new(),
            extra_labels: BTreeMap::new(),
            exit_after_seconds: 1.0,
            termination_grace_period_seconds: 30,
            spread_evenly_with: BTreeMap::new(),
        }
    }

    /// An Istio waypoint Deployment, labelled as istiod renders it for Gateway `name`.
    pub fn waypoint(namespace: &str, name: &str) -> Self {
        let mut app = Self::new(namespace, name, 1);
        app.extra_labels = labels([
            (GATEWAY_NAME_LABEL, name),
            (WAYPOINT_MANAGED_LABEL, WAYPOINT_MANAGED_VALUE),
        ]);
        app
    }

    pub fn deployment(&self) -> Deployment {
        let selector = labels([("app", self.name.as_str())]);
        let mut pod_labels = selector.clone();
        pod_labels.extend(self.extra_labels.clone());
        let is_waypoint = self.extra_labels.contains_key(WAYPOINT_MANAGED_LABEL);
        Deployment {
            metadata: ObjectMeta {
                name: Some(self.name.clone()),
                namespace: Some(self.namespace.clone()),
                labels: Some(pod_labels.clone()),
                ..Default::default()
            },
            spec: Some(DeploymentSpec {
                replicas: Some(self.replicas),
                selector: LabelSelector {
                    match_labels: Some(selector),
                    ..Default::default()
                },
                template: PodTemplateSpec {
                    metadata: Some(ObjectMeta {
                        labels: Some(pod_labels),
                        annotations: Some(labels([(
                            EXIT_AFTER_ANNOTATION,
                            self.exit_after_seconds.to_string().as_str(),
                        )])),
                        ..Default::default()
                    }),
                    spec: Some(PodSpec {
                        node_selector: (!self.node_selector.is_empty())
                            .then(|| self.node_selector.clone()),
                        termination_grace_period_seconds: Some(
                            self.termination_grace_period_seconds,
                        ),
                        topology_spread_constraints: (!self.spread_evenly_with.is_empty()).then(
                            || {
                                vec![TopologySpreadConstraint {
                                    max_skew: 1,
                                    topology_key: "kubernetes.io/hostname".to_owned(),
                                    when_unsatisfiable: "DoNotSchedule".to_owned(),
                                    node_taints_policy: Some("Honor".to_owned()),
                                    label_selector: Some(LabelSelector {
                                        match_labels: Some(self.spread_evenly_with.clone()),
                                        ..Default::default()
                                    }),
                                    ..Default::default()
                                }]
                            },
                        ),
                        containers: vec![Container {
                            name: if is_waypoint { "istio-proxy" } else { "app" }.to_owned(),
                            image: Some(
                                if is_waypoint {
                                    "docker.io/istio/proxyv2:1.28.0"
                                } else {
                                    "registry.k8s.io/pause:3.10"
                                }
                                .to_owned(),
                            ),
                            ..Default::default()
                        }],
                        ..Default::default()
                    }),
                },
                ..Default::default()
            }),
            ..Default::default()
        }
    }
}

/// How much disruption a PodDisruptionBudget allows.
#[derive(Debug, Clone)]
pub enum Budget {
    MinAvailable(IntOrString),
    MaxUnavailable(IntOrString),
}

/// A PodDisruptionBudget named `name` over the pods labelled with `selector`.
pub fn pdb(
    namespace: &str,
    name: &str,
    selector: BTreeMap<String, String>,
    budget: Budget,
) -> PodDisruptionBudget {
    let (min_available, max_unavailable) = match budget {
        Budget::MinAvailable(v) => (Some(v), None),
        Budget::MaxUnavailable(v) => (None, Some(v)),
    };
    PodDisruptionBudget {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            namespace: Some(namespace.to_owned()),
            ..Default::default()
        },
        spec: Some(PodDisruptionBudgetSpec {
            selector: Some(LabelSelector {
                match_labels: Some(selector),
                ..Default::default()
            }),
            min_available,
            max_unavailable,
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The nodes of a demo or test cluster: `count` nodes spread round-robin over `zones`,
/// each labelled with its zone, a pool (`pool-<zone>`) and `node_set`.
pub fn zoned_nodes(prefix: &str, count: usize, zones: &[&str], node_set: &str) -> Vec<Node> {
    (0..count)
        .map(|i| {
            let zone = zones
                .get(i % zones.len().max(1))
                .copied()
                .unwrap_or("zone-a");
            let pool = format!("pool-{zone}");
            node(
                &format!("{prefix}{i:03}"),
                &labels([
                    (ZONE_LABEL, zone),
                    (POOL_LABEL, pool.as_str()),
                    (NODE_SET_LABEL, node_set),
                ]),
            )
        })
        .collect()
}

/// Puts the demo scenario into a cluster: `nodes` nodes in three zones, an OnDelete
/// ztunnel DaemonSet in `istio-system`, and a `demo` namespace with a waypoint and two
/// applications under PodDisruptionBudgets.
pub async fn apply_demo(
    client: &Client,
    nodes: usize,
    ztunnel_version: &str,
) -> Result<(), kube::Error> {
    apply_demo_with(client, nodes, Some(ztunnel_version)).await
}

/// The demo scenario; without a `ztunnel_version`, no fixture ztunnel DaemonSet and
/// no fixture waypoint: Istio's own come from `istioctl` (`local-cluster up --istio`).
pub async fn apply_demo_with(
    client: &Client,
    nodes: usize,
    ztunnel_version: Option<&str>,
) -> Result<(), kube::Error> {
    let zones = ["zone-a", "zone-b", "zone-c"];
    let node_api: Api<Node> = Api::all(client.clone());
    for n in zoned_nodes("node-", nodes, &zones, "demo") {
        apply(&node_api, &n).await?;
    }
    let ns_api: Api<Namespace> = Api::all(client.clone());
    apply(&ns_api, &namespace("istio-system", BTreeMap::new())).await?;
    apply(
        &ns_api,
        &namespace("demo", labels([("istio.io/dataplane-mode", "ambient")])),
    )
    .await?;
    // Everything stays on the demo's nodes, so tests can share this cluster
    // (ZTUNNEL_ROLLOUT_TEST_KUBECONFIG) without the demo's pods landing on theirs.
    let demo_nodes = labels([(NODE_SET_LABEL, "demo")]);
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), "demo");
    let pdbs: Api<PodDisruptionBudget> = Api::namespaced(client.clone(), "demo");
    if let Some(version) = ztunnel_version {
        let ds_api: Api<DaemonSet> = Api::namespaced(client.clone(), "istio-system");
        let mut ztunnel = ZtunnelFixture::new("istio-system", version);
        ztunnel.node_selector = demo_nodes.clone();
        apply(&ds_api, &ztunnel.daemonset()).await?;
        let mut waypoint = AppFixture::waypoint("demo", "waypoint");
        waypoint.node_selector = demo_nodes.clone();
        apply(&deployments, &waypoint.deployment()).await?;
    }
    for (name, replicas) in [("productpage", 3), ("reviews", 4)] {
        let mut app = AppFixture::new("demo", name, replicas);
        app.node_selector = demo_nodes.clone();
        apply(&deployments, &app.deployment()).await?;
        apply(
            &pdbs,
            &pdb(
                "demo",
                name,
                labels([("app", name)]),
                Budget::MaxUnavailable(IntOrString::Int(1)),
            ),
        )
        .await?;
    }
    Ok(())
}
