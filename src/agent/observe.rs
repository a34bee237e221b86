//! What the agent watches: nodes, DaemonSet pods, DaemonSets, their ControllerRevisions
//! and the rollouts — each a cache fed by one watch, holding only what the decisions
//! read (a reflector store of trimmed objects; of pods, a few facts each); every change
//! wakes the reconcile loop; nothing is polled. The health gates read Deployments
//! (waypoints), PodDisruptionBudgets, namespaces and, where the Gateway API is installed,
//! Gateways. The sidecar migrations read the migrations, namespaces, Deployments,
//! StatefulSets, DaemonSets, injector webhooks and the pods' injected revisions, and
//! have their own wake-up.

use std::sync::{Arc, OnceLock};

use k8s_openapi::api::admissionregistration::v1::{MutatingWebhook, MutatingWebhookConfiguration};
use k8s_openapi::api::apps::v1::{
    ControllerRevision, DaemonSet, Deployment, DeploymentSpec, DeploymentStatus, StatefulSet,
    StatefulSetSpec,
};
use k8s_openapi::api::core::v1::{
    Namespace, Node, NodeSpec, NodeStatus, Pod, PodSpec, PodTemplateSpec,
};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, ObjectMeta};
use kube::runtime::reflector::Store;
use kube::runtime::watcher;
use kube::{Api, Client};
use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;

use super::pod_index::PodIndex;
use super::revisioned_pods::RevisionedPod;
use crate::api::sidecar_migration::SidecarMigration;
use crate::api::ztunnel_rollout::ZtunnelRollout;
use crate::watch_cache::{self, Watched};
use crate::watch_facts::{self, FactStore};
use ztunnel_rollout_core::labels::{INJECT_LABEL, RESTARTED_AT_ANNOTATION, REVISION_HASH_LABEL};

pub struct Observed {
    pub nodes: Store<Node>,
    /// Ticks after every node event (the passes rebuild what they derive from nodes).
    pub node_events: watch::Receiver<u64>,
    /// The facts of pods carrying a `controller-revision-hash` label: DaemonSet (and
    /// StatefulSet) pods, among them every ztunnel pod, but not the applications'
    /// Deployment pods.
    pub revisioned_pods: FactStore<Arc<RevisionedPod>>,
    pub revisioned_pod_events: watch::Receiver<u64>,
    /// A few facts of every pod: how many pods each node's drain would evict, which
    /// pods ztunnel proxies. Its events do not wake the loop (the counts only order the
    /// next starts).
    pub all_pods: PodIndex,
    pub daemon_sets: Store<DaemonSet>,
    pub revisions: Store<ControllerRevision>,
    pub rollouts: Store<ZtunnelRollout>,
    /// Deployments, trimmed to labels, replicas, strategy, template labels, the
    /// template's restart and injection annotations, and rollout progress.
    pub deployments: Store<Deployment>,
    /// StatefulSets, trimmed like Deployments (sidecar migrations restart them).
    pub stateful_sets: Store<StatefulSet>,
    pub migrations: Store<SidecarMigration>,
    /// Sidecar injector and revision-tag webhooks: labels and namespace selectors.
    pub webhooks: Store<MutatingWebhookConfiguration>,
    pub pdbs: Store<PodDisruptionBudget>,
    /// Ticks on every PDB event (the drains wait on it for freed disruptions).
    pub pdbs_changed: watch::Receiver<u64>,
    /// Namespaces' labels (ambient enrollment).
    pub namespaces: Store<Namespace>,
    /// Set once the Gateway API is found installed (checked at start).
    pub gateways: Arc<OnceLock<Store<Gateway>>>,
    /// Notified on every event of the watches the rollouts read.
    pub changed: Arc<Notify>,
    /// Notified on every event of the watches the sidecar migrations read.
    pub sidecar_changed: Arc<Notify>,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for Observed {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// A cache whose events wake the loops that read it.
fn spawn<K: Watched>(
    api: Api<K>,
    config: watcher::Config,
    trim: fn(&mut K),
    wake: Vec<Arc<Notify>>,
) -> (Store<K>, JoinHandle<()>) {
    let (store, _, task) = spawn_counted(api, config, trim, wake);
    (store, task)
}

/// Like `spawn`, with the count of the cache's events.
fn spawn_counted<K: Watched>(
    api: Api<K>,
    config: watcher::Config,
    trim: fn(&mut K),
    wake: Vec<Arc<Notify>>,
) -> (Store<K>, watch::Receiver<u64>, JoinHandle<()>) {
    watch_cache::spawn_counted(api, config, trim, waking(wake))
}

/// Wakes each of the loops reading a cache.
fn waking(wake: Vec<Arc<Notify>>) -> impl Fn() + Send + 'static {
    move || {
        for w in &wake {
            w.notify_one();
        }
    }
}

/// Keeps what the rollout reads: labels, annotations, versions, unschedulable, taints and
/// the Ready condition (at 2,000 nodes the rest was a sizeable part of the agent's memory).
fn trim_node(n: &mut Node) {
    n.metadata.managed_fields = None;
    n.spec = n.spec.take().map(|s| NodeSpec {
        unschedulable: s.unschedulable,
        taints: s.taints,
        ..Default::default()
    });
    n.status = n.status.take().map(|s| NodeStatus {
        conditions: s
            .conditions
            .map(|cs| cs.into_iter().filter(|c| c.type_ == "Ready").collect()),
        ..Default::default()
    });
}

/// A pod template's labels and the two annotations a sidecar migration reads.
fn trim_template(t: PodTemplateSpec) -> PodTemplateSpec {
    PodTemplateSpec {
        metadata: t.metadata.map(|m| ObjectMeta {
            labels: m.labels,
            annotations: m.annotations.map(|a| {
                a.into_iter()
                    .filter(|(k, _)| k == RESTARTED_AT_ANNOTATION || k == INJECT_LABEL)
                    .collect()
            }),
            ..Default::default()
        }),
        // Istio injects no sidecar into host-network pods.
        spec: t.spec.map(|s| PodSpec {
            host_network: s.host_network,
            containers: Vec::new(),
            ..Default::default()
        }),
    }
}

fn trim_deployment(d: &mut Deployment) {
    d.metadata.managed_fields = None;
    d.metadata.annotations = None;
    d.spec = d.spec.take().map(|s| DeploymentSpec {
        replicas: s.replicas,
        selector: s.selector,
        strategy: s.strategy,
        paused: s.paused,
        template: trim_template(s.template),
        ..Default::default()
    });
    d.status = d.status.take().map(|s| DeploymentStatus {
        available_replicas: s.available_replicas,
        ready_replicas: s.ready_replicas,
        replicas: s.replicas,
        updated_replicas: s.updated_replicas,
        observed_generation: s.observed_generation,
        ..Default::default()
    });
}

fn trim_stateful_set(d: &mut StatefulSet) {
    d.metadata.managed_fields = None;
    d.metadata.annotations = None;
    d.spec = d.spec.take().map(|s| StatefulSetSpec {
        replicas: s.replicas,
        selector: s.selector,
        update_strategy: s.update_strategy,
        template: trim_template(s.template),
        ..Default::default()
    });
}

fn trim_migration(m: &mut SidecarMigration) {
    m.metadata.managed_fields = None;
}

fn trim_webhooks(w: &mut MutatingWebhookConfiguration) {
    w.metadata.managed_fields = None;
    w.metadata.annotations = None;
    w.webhooks = w.webhooks.take().map(|hooks| {
        hooks
            .into_iter()
            .map(|h| MutatingWebhook {
                name: h.name,
                namespace_selector: h.namespace_selector,
                ..Default::default()
            })
            .collect()
    });
}

/// Keeps the status: the drains read `disruptionsAllowed` from this cache.
fn trim_pdb(p: &mut PodDisruptionBudget) {
    p.metadata.managed_fields = None;
    p.metadata.annotations = None;
    if let Some(s) = p.status.as_mut() {
        s.disrupted_pods = None;
        s.conditions = None;
    }
}

fn trim_namespace(n: &mut Namespace) {
    n.metadata.managed_fields = None;
    n.metadata.annotations = None;
    n.spec = None;
    n.status = None;
}

fn trim_gateway(g: &mut Gateway) {
    g.metadata.managed_fields = None;
    g.metadata.annotations = None;
    g.spec = GatewaySpec::default();
}

/// A Gateway API Gateway, as far as the waypoint gate reads it.
#[derive(
    kube::CustomResource,
    serde::Serialize,
    serde::Deserialize,
    Clone,
    Debug,
    Default,
    schemars::JsonSchema,
)]
#[kube(
    group = "gateway.networking.k8s.io",
    version = "v1",
    kind = "Gateway",
    namespaced,
    status = "GatewayStatus"
)]
pub struct GatewaySpec {
    #[serde(
        default,
        rename = "gatewayClassName",
        skip_serializing_if = "Option::is_none"
    )]
    pub gateway_class_name: Option<String>,
}

#[derive(serde::Serialize, serde::Deserialize, Clone, Debug, Default, schemars::JsonSchema)]
pub struct GatewayStatus {
    #[serde(default)]
    pub conditions: Vec<Condition>,
}

/// Aborts the task when dropped (with the task that owns it).
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Watches Gateways if the Gateway API is installed; checks once at start.
fn spawn_gateways(client: &Client, slot: Arc<OnceLock<Store<Gateway>>>) -> JoinHandle<()> {
    let client = client.clone();
    tokio::spawn(async move {
        use backon::{ExponentialBuilder, Retryable};
        let group = "gateway.networking.k8s.io";
        let find = || async {
            let groups = client.list_api_groups().await?;
            if !groups.groups.iter().any(|g| g.name == group) {
                return Ok(None);
            }
            client
                .list_api_group_resources(&format!("{group}/v1"))
                .await
                .map(Some)
        };
        let found = find
            .retry(ExponentialBuilder::default().with_max_times(5))
            .when(|e: &kube::Error| !matches!(e, kube::Error::Api(s) if s.code == 404))
            .await;
        match found {
            Ok(Some(list)) if list.resources.iter().any(|r| r.name == "gateways") => {
                let (store, task) = watch_cache::spawn(
                    Api::<Gateway>::all(client),
                    watch_cache::config(),
                    trim_gateway,
                    || {},
                );
                let _guard = AbortOnDrop(task);
                let _ = slot.set(store);
                std::future::pending::<()>().await;
            }
            Ok(_) => tracing::info!(
                "the Gateway API has no gateways resource: waypoint Gateways are not checked"
            ),
            Err(e) => {
                tracing::info!(error = %e, "the Gateway API is not installed: waypoint Gateways are not checked")
            }
        }
    })
}

fn trim_daemon_set(d: &mut DaemonSet) {
    d.metadata.managed_fields = None;
}

/// A revision's `data` is the whole pod template; only its number, owner and hash count.
fn trim_revision(r: &mut ControllerRevision) {
    r.metadata.managed_fields = None;
    r.data = None;
}

fn trim_rollout(r: &mut ZtunnelRollout) {
    r.metadata.managed_fields = None;
}

impl Observed {
    /// `rollout_selector` limits the agent to the rollouts and sidecar migrations it
    /// matches (a label selector), so several agents can share a cluster.
    pub fn start(client: &Client, rollout_selector: Option<&str>) -> Self {
        let changed = Arc::new(Notify::new());
        let sidecar_changed = Arc::new(Notify::new());
        let (nodes, node_events, t1) = spawn_counted(
            Api::<Node>::all(client.clone()),
            watch_cache::config(),
            trim_node,
            vec![changed.clone()],
        );
        let (revisioned_pods, revisioned_pod_events, t2) = watch_facts::spawn_counted(
            Api::<Pod>::all(client.clone()),
            watch_cache::config().labels(REVISION_HASH_LABEL),
            RevisionedPod::of,
            waking(vec![changed.clone()]),
        );
        let (all_pods, t6) = PodIndex::start(Api::<Pod>::all(client.clone()));
        let (daemon_sets, t3) = spawn(
            Api::<DaemonSet>::all(client.clone()),
            watch_cache::config(),
            trim_daemon_set,
            vec![changed.clone(), sidecar_changed.clone()],
        );
        let (revisions, t4) = spawn(
            Api::<ControllerRevision>::all(client.clone()),
            watch_cache::config(),
            trim_revision,
            vec![changed.clone()],
        );
        let rollout_config = match rollout_selector {
            Some(s) => watch_cache::config().labels(s),
            None => watch_cache::config(),
        };
        let rollout_config_for_migrations = rollout_config.clone();
        let (rollouts, t5) = spawn(
            Api::<ZtunnelRollout>::all(client.clone()),
            rollout_config,
            trim_rollout,
            vec![changed.clone()],
        );
        let (pdbs, pdbs_changed, t8) = watch_cache::spawn_counted(
            Api::<PodDisruptionBudget>::all(client.clone()),
            watch_cache::config(),
            trim_pdb,
            || {},
        );
        let SidecarStores {
            deployments,
            stateful_sets,
            namespaces,
            migrations,
            webhooks,
            tasks: sidecar_tasks,
        } = SidecarStores::start(client, rollout_config_for_migrations, &sidecar_changed);
        let gateways = Arc::new(OnceLock::new());
        let t10 = spawn_gateways(client, gateways.clone());
        Self {
            nodes,
            node_events,
            revisioned_pods,
            revisioned_pod_events,
            all_pods,
            daemon_sets,
            revisions,
            rollouts,
            deployments,
            stateful_sets,
            migrations,
            webhooks,
            pdbs,
            pdbs_changed,
            namespaces,
            gateways,
            changed,
            sidecar_changed,
            tasks: [t1, t2, t3, t4, t5, t6, t8, t10]
                .into_iter()
                .chain(sidecar_tasks)
                .collect(),
        }
    }

    /// Returns once every watch has listed its objects.
    pub async fn synced(&self) {
        let _ = self.nodes.wait_until_ready().await;
        self.revisioned_pods.synced().await;
        self.all_pods.synced().await;
        let _ = self.daemon_sets.wait_until_ready().await;
        let _ = self.revisions.wait_until_ready().await;
        let _ = self.rollouts.wait_until_ready().await;
        let _ = self.deployments.wait_until_ready().await;
        let _ = self.pdbs.wait_until_ready().await;
        let _ = self.namespaces.wait_until_ready().await;
    }

    /// Returns once the watches only the sidecar migrations read have listed their
    /// objects (never, while the SidecarMigration CRD is not installed; the rollouts do
    /// not wait for this). Call after [`Self::synced`] returned: a store's readiness
    /// wakes only one of several concurrent waiters.
    pub async fn sidecar_synced(&self) {
        let _ = self.stateful_sets.wait_until_ready().await;
        let _ = self.migrations.wait_until_ready().await;
        let _ = self.webhooks.wait_until_ready().await;
    }
}

/// The watches only sidecar migrations read (they wake `changed`).
struct SidecarStores {
    deployments: Store<Deployment>,
    stateful_sets: Store<StatefulSet>,
    namespaces: Store<Namespace>,
    migrations: Store<SidecarMigration>,
    webhooks: Store<MutatingWebhookConfiguration>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl SidecarStores {
    fn start(client: &Client, migration_config: watcher::Config, changed: &Arc<Notify>) -> Self {
        let (deployments, t7) = spawn(
            Api::<Deployment>::all(client.clone()),
            watch_cache::config(),
            trim_deployment,
            vec![changed.clone()],
        );
        let (namespaces, t9) = spawn(
            Api::<Namespace>::all(client.clone()),
            watch_cache::config(),
            trim_namespace,
            vec![changed.clone()],
        );
        let (stateful_sets, t11) = spawn(
            Api::<StatefulSet>::all(client.clone()),
            watch_cache::config(),
            trim_stateful_set,
            vec![changed.clone()],
        );
        let (migrations, t12) = spawn(
            Api::<SidecarMigration>::all(client.clone()),
            migration_config,
            trim_migration,
            vec![changed.clone()],
        );
        let (webhooks, t13) = spawn(
            Api::<MutatingWebhookConfiguration>::all(client.clone()),
            watch_cache::config(),
            trim_webhooks,
            vec![changed.clone()],
        );
        SidecarStores {
            deployments,
            stateful_sets,
            namespaces,
            migrations,
            webhooks,
            tasks: vec![t7, t9, t11, t12, t13],
        }
    }
}
