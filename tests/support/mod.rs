//! Test support: one local cluster per test binary (or the one named by
//! `ZTUNNEL_ROLLOUT_TEST_KUBECONFIG`), and per test an isolated namespace and node set.
#![allow(dead_code)]

pub mod agent;
pub mod audit;
pub mod fault_proxy;
pub mod helm;
pub mod history;
pub mod istio;
pub mod prometheus;
pub mod tls_prometheus;

use std::collections::BTreeMap;
use std::collections::HashMap;
use std::path::PathBuf;
use std::process::{Child, ChildStdin};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Namespace, Node, Pod};
use kube::ResourceExt;
use kube::api::{DeleteParams, ListParams, PostParams};
use kube::runtime::wait::await_condition;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client};
use ztunnel_rollout_testbed::control_plane::client_for;
use ztunnel_rollout_testbed::fixtures::{self, NODE_SET_LABEL};
pub use ztunnel_rollout_testbed::supervisor::{self, Supervisor};

/// Names a kubeconfig of an already running test cluster (from `local-cluster up`) to use
/// instead of starting one.
pub const KUBECONFIG_ENV: &str = "ZTUNNEL_ROLLOUT_TEST_KUBECONFIG";

pub struct SharedCluster {
    pub kubeconfig: PathBuf,
    /// Pids of the control plane's processes (empty for an external cluster).
    pub pids: Vec<u32>,
    // Held, never written: the supervisor stops the cluster when this pipe closes,
    // which happens however this process ends (normal exit, panic, signal).
    _supervisor: Option<(Child, ChildStdin)>,
}

static CLUSTER: OnceLock<Result<SharedCluster, String>> = OnceLock::new();

/// Starts `local-cluster up` (built beside this test binary) as a child of this process;
/// returns once it is ready.
pub fn start_supervisor(tag: &str, extra_args: &[&str]) -> Result<Supervisor, String> {
    let log_dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    supervisor::start(&local_cluster_binary()?, &log_dir, tag, extra_args)
}

/// `target/tmp/rbac-audit/<test binary>.log`.
fn rbac_audit_log() -> Result<PathBuf, String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let stem = exe
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .ok_or("no test binary name")?;
    // `name-<hash>`: the name alone, so a rebuilt binary overwrites its last log.
    let name = stem.rsplit_once('-').map_or(stem.as_str(), |(n, _)| n);
    Ok(PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(ztunnel_rollout_testbed::rbac_audit::DIR)
        .join(format!("{name}.log")))
}

/// `local-cluster` is the testbed crate's binary: cargo builds it into the same profile
/// directory as this test when the workspace's tests are built (`cargo test`,
/// `e2e/test.sh`).
fn local_cluster_binary() -> Result<PathBuf, String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let profile_dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .ok_or("no profile directory above the test binary")?;
    let binary = profile_dir.join("local-cluster");
    if binary.exists() {
        Ok(binary)
    } else {
        Err(format!(
            "{} is missing: build it with `cargo build -p ztunnel-rollout-testbed` (e2e/test.sh does)",
            binary.display()
        ))
    }
}

fn start_shared() -> Result<SharedCluster, String> {
    if let Some(kubeconfig) = std::env::var_os(KUBECONFIG_ENV) {
        return Ok(SharedCluster {
            kubeconfig: kubeconfig.into(),
            pids: Vec::new(),
            _supervisor: None,
        });
    }
    // Every request of this binary's tests, for the RBAC audit (`e2e/test.sh` runs
    // `rbac-audit` over them after the suite): one file per test binary.
    let audit_log = rbac_audit_log()?;
    let s = start_supervisor(
        "shared",
        &["--audit-log-path", &audit_log.to_string_lossy()],
    )?;
    let kubeconfig = s.ready["kubeconfig"]
        .as_str()
        .ok_or("no kubeconfig in ready line")?
        .into();
    let pids = s.ready["pids"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|p| p.as_u64())
                .map(|p| p as u32)
                .collect()
        })
        .unwrap_or_default();
    Ok(SharedCluster {
        kubeconfig,
        pids,
        _supervisor: Some((s.child, s.stdin)),
    })
}

/// The test binary's cluster, started on first use. Panics (fails the test) with the
/// reason, including how to build the control plane when it is missing.
pub fn cluster() -> &'static SharedCluster {
    match CLUSTER.get_or_init(start_shared) {
        Ok(c) => c,
        Err(e) => panic!("{e}"),
    }
}

/// A client for the shared cluster, bound to the calling test's runtime.
pub async fn client() -> Client {
    client_for(&cluster().kubeconfig)
        .await
        .expect("kube client for the test cluster")
}

static UNIQUE: Mutex<u32> = Mutex::new(0);

fn unique_suffix() -> String {
    let mut n = UNIQUE.lock().unwrap_or_else(|e| e.into_inner());
    *n += 1;
    format!("{}-{}", std::process::id() % 100_000, *n)
}

/// The agent's Role for the ztunnel DaemonSet (`manifests::ztunnel_role`) in
/// `namespace`, where this test's ztunnel DaemonSet lives, bound to the agent's
/// ServiceAccount: as `manifests/` grants it in `istio-system`.
pub async fn grant_ztunnel_role(client: &Client, namespace: &str) {
    use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
    use ztunnel_rollout::api::manifests::{self, NAME, NAMESPACE, Ztunnel};
    let z = Ztunnel {
        namespace: namespace.to_owned(),
        ..Ztunnel::default()
    };
    let role: Role = serde_json::from_value(manifests::ztunnel_role(&z)).expect("the ztunnel Role");
    let role_name = role.metadata.name.clone().unwrap_or_default();
    fixtures::apply(&Api::<Role>::namespaced(client.clone(), namespace), &role)
        .await
        .expect("apply the agent's ztunnel Role");
    let binding: RoleBinding = serde_json::from_value(serde_json::json!({
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "RoleBinding",
        "metadata": { "name": role_name, "namespace": namespace },
        "roleRef": { "apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": role_name },
        "subjects": [{ "kind": "ServiceAccount", "name": NAME, "namespace": NAMESPACE }],
    }))
    .expect("the ztunnel RoleBinding");
    fixtures::apply(
        &Api::<RoleBinding>::namespaced(client.clone(), namespace),
        &binding,
    )
    .await
    .expect("apply the agent's ztunnel RoleBinding");
}

/// One test's slice of the cluster: a namespace and nodes labelled with a node set of
/// their own. Removed when dropped, also when the test panics.
pub struct TestEnv {
    pub client: Client,
    pub namespace: String,
    pub node_set: String,
    pub nodes: Vec<String>,
    /// More namespaces of this test ([`TestEnv::create_namespace`]), removed with it.
    pub extra_namespaces: Vec<String>,
}

pub const WAIT: Duration = Duration::from_secs(60);

impl TestEnv {
    /// `nodes` simulated nodes over zones a/b/c, all Ready when this returns.
    pub async fn new(name: &str, nodes: usize) -> TestEnv {
        let client = client().await;
        let id = format!("{name}-{}", unique_suffix());
        let ns_api: Api<Namespace> = Api::all(client.clone());
        fixtures::apply(&ns_api, &fixtures::namespace(&id, BTreeMap::new()))
            .await
            .expect("create the test namespace");
        grant_ztunnel_role(&client, &id).await;
        let mut env = TestEnv {
            client,
            namespace: id.clone(),
            node_set: id.clone(),
            nodes: Vec::new(),
            extra_namespaces: Vec::new(),
        };
        env.add_nodes(nodes).await;
        env
    }

    /// Adds `count` more nodes to this test's set and waits until they are Ready.
    pub async fn add_nodes(&mut self, count: usize) -> Vec<String> {
        let node_api: Api<Node> = Api::all(self.client.clone());
        let prefix = format!("{}-", self.node_set);
        let all = fixtures::zoned_nodes(
            &prefix,
            self.nodes.len() + count,
            &["a", "b", "c"],
            &self.node_set,
        );
        let mut added = Vec::new();
        for node in all.into_iter().skip(self.nodes.len()) {
            let name = node.metadata.name.clone().unwrap_or_default();
            fixtures::apply(&node_api, &node)
                .await
                .expect("create node");
            added.push(name);
        }
        for name in &added {
            tokio::time::timeout(WAIT, await_condition(node_api.clone(), name, node_ready))
                .await
                .unwrap_or_else(|_| panic!("node {name} not Ready within {WAIT:?}"))
                .expect("watch node");
        }
        self.nodes.extend(added.clone());
        added
    }

    /// Creates namespace `<env namespace>-<suffix>` with `labels`; removed with the env.
    pub async fn create_namespace(&mut self, suffix: &str, labels: &[(&str, &str)]) -> String {
        let name = format!("{}-{suffix}", self.namespace);
        let labels = labels
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        fixtures::apply(
            &Api::<Namespace>::all(self.client.clone()),
            &fixtures::namespace(&name, labels),
        )
        .await
        .unwrap_or_else(|e| panic!("create namespace {name}: {e}"));
        self.extra_namespaces.push(name.clone());
        name
    }

    /// Selector that places pods on this test's nodes only.
    pub fn node_selector(&self) -> BTreeMap<String, String> {
        BTreeMap::from([(NODE_SET_LABEL.to_owned(), self.node_set.clone())])
    }

    pub fn node_list_params(&self) -> ListParams {
        ListParams::default().labels(&format!("{NODE_SET_LABEL}={}", self.node_set))
    }
}

pub fn node_ready(node: Option<&Node>) -> bool {
    node.and_then(|n| n.status.as_ref())
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

impl Drop for TestEnv {
    fn drop(&mut self) {
        let kubeconfig = cluster().kubeconfig.clone();
        let mut namespaces = vec![self.namespace.clone()];
        namespaces.extend(self.extra_namespaces.iter().cloned());
        let selector = format!("{NODE_SET_LABEL}={}", self.node_set);
        // Drop cannot await; clean up on a thread with a runtime of its own.
        let cleanup = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            rt.block_on(async move {
                let client = client_for(&kubeconfig)
                    .await
                    .map_err(std::io::Error::other)?;
                for namespace in namespaces {
                    let _ = Api::<Namespace>::all(client.clone())
                        .delete(&namespace, &DeleteParams::default())
                        .await;
                }
                let _ = Api::<Node>::all(client)
                    .delete_collection(
                        &DeleteParams::default(),
                        &ListParams::default().labels(&selector),
                    )
                    .await;
                Ok::<_, std::io::Error>(())
            })
        });
        let _ = cleanup.join();
    }
}

/// Waits by watch until `cond` holds for `name`, failing the test after [`WAIT`].
pub async fn wait_for<K, C>(api: &Api<K>, name: &str, what: &str, cond: C) -> Option<K>
where
    K: kube::Resource + Clone + std::fmt::Debug + serde::de::DeserializeOwned + Send + 'static,
    K::DynamicType: Default + Eq + std::hash::Hash + Clone,
    C: kube::runtime::wait::Condition<K>,
{
    wait_within(api, name, what, WAIT, cond).await
}

/// Waits by watch until `cond` holds for `name`, failing after `within`.
pub async fn wait_within<K, C>(
    api: &Api<K>,
    name: &str,
    what: &str,
    within: Duration,
    cond: C,
) -> Option<K>
where
    K: kube::Resource + Clone + std::fmt::Debug + serde::de::DeserializeOwned + Send + 'static,
    K::DynamicType: Default + Eq + std::hash::Hash + Clone,
    C: kube::runtime::wait::Condition<K>,
{
    let started = std::time::Instant::now();
    let out = tokio::time::timeout(within, await_condition(api.clone(), name, cond))
        .await
        .unwrap_or_else(|_| panic!("{what}: not within {within:?}"))
        .unwrap_or_else(|e| panic!("{what}: watch failed: {e}"));
    eprintln!("{what}: {:?}", started.elapsed());
    out
}

pub fn deployment_available(
    n: i32,
) -> impl kube::runtime::wait::Condition<k8s_openapi::api::apps::v1::Deployment> {
    move |d: Option<&k8s_openapi::api::apps::v1::Deployment>| {
        d.and_then(|d| d.status.as_ref()).is_some_and(|s| {
            s.available_replicas == Some(n)
                && s.replicas == Some(n)
                && s.updated_replicas == Some(n)
        })
    }
}

/// `count` nodes in zones a/b/c labelled as node set `set` (named `prefix` + number), and
/// a namespace named `set`. Returns the node names.
pub async fn node_set(client: &Client, prefix: &str, count: usize, set: &str) -> Vec<String> {
    node_set_shaped(client, prefix, count, set, |_, _| {}).await
}

/// [`node_set`], with `shape(k, node)` applied to the `k`-th node before it is created.
/// The nodes are applied server-side and forced: a field `shape` sets is this test's to
/// keep (a node applied again without `spec.podCIDR` would ask to clear a field that
/// cannot be cleared once set).
pub async fn node_set_shaped(
    client: &Client,
    prefix: &str,
    count: usize,
    set: &str,
    shape: impl Fn(usize, &mut Node),
) -> Vec<String> {
    let nodes: Api<Node> = Api::all(client.clone());
    let mut names = Vec::new();
    for (k, mut n) in fixtures::zoned_nodes(prefix, count, &["a", "b", "c"], set)
        .into_iter()
        .enumerate()
    {
        shape(k, &mut n);
        names.push(n.name_any());
        fixtures::apply(&nodes, &n).await.expect("node");
    }
    Api::<Namespace>::all(client.clone())
        .create(
            &PostParams::default(),
            &fixtures::namespace(set, Default::default()),
        )
        .await
        .expect("namespace");
    names
}

/// Sets `spec.unschedulable` (cordon / uncordon) as a test step.
pub async fn set_unschedulable(client: &Client, node: &str, value: bool) {
    Api::<Node>::all(client.clone())
        .patch(
            node,
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(serde_json::json!({ "spec": { "unschedulable": value } })),
        )
        .await
        .expect("patch node");
}

/// Applies Deployment `name` (pods labelled `app=<name>`, on this test's nodes, exiting
/// `exit_after_seconds` after SIGTERM) and PDBs over it, and waits until the Deployment is
/// available and the disruption controller has counted its pods for every PDB.
pub async fn apply_app(
    env: &TestEnv,
    name: &str,
    replicas: i32,
    budgets: &[(&str, fixtures::Budget)],
    exit_after_seconds: f64,
) {
    use k8s_openapi::api::apps::v1::Deployment;
    use k8s_openapi::api::policy::v1::PodDisruptionBudget;
    let mut app = fixtures::AppFixture::new(&env.namespace, name, replicas);
    app.node_selector = env.node_selector();
    app.exit_after_seconds = exit_after_seconds;
    let deployments: Api<Deployment> = Api::namespaced(env.client.clone(), &env.namespace);
    fixtures::apply(&deployments, &app.deployment())
        .await
        .expect("apply deployment");
    let pdbs: Api<PodDisruptionBudget> = Api::namespaced(env.client.clone(), &env.namespace);
    for (pdb_name, budget) in budgets {
        let selector = BTreeMap::from([("app".to_owned(), name.to_owned())]);
        let pdb = fixtures::pdb(&env.namespace, pdb_name, selector, budget.clone());
        fixtures::apply(&pdbs, &pdb).await.expect("apply pdb");
    }
    wait_for(
        &deployments,
        name,
        &format!("{name} available"),
        deployment_available(replicas),
    )
    .await;
    let several = budgets.len() > 1;
    for (pdb_name, _) in budgets {
        wait_for(
            &pdbs,
            pdb_name,
            &format!("PDB {pdb_name} observed"),
            move |p: Option<&PodDisruptionBudget>| {
                // A pod under several PDBs makes the disruption controller count it for one of
                // them only, so "observed" is all that can be asked of each.
                p.is_some_and(|p| {
                    let status = p.status.as_ref();
                    status.and_then(|s| s.observed_generation) == p.metadata.generation
                        && (several || status.is_some_and(|s| s.current_healthy == Some(replicas)))
                })
            },
        )
        .await;
    }
}

pub fn daemonset_ready(
    n: i32,
) -> impl kube::runtime::wait::Condition<k8s_openapi::api::apps::v1::DaemonSet> {
    move |ds: Option<&k8s_openapi::api::apps::v1::DaemonSet>| {
        ds.and_then(|d| d.status.as_ref()).is_some_and(|s| {
            s.desired_number_scheduled == n
                && s.number_ready == n
                && s.updated_number_scheduled == Some(n)
        })
    }
}

/// Applies a ztunnel DaemonSet (version 1.28.0, `strategy`) on this test's nodes and
/// waits until it is Ready on all of them. Returns the fixture, to change and re-apply.
pub async fn apply_ztunnel(
    env: &TestEnv,
    strategy: fixtures::UpdateStrategy,
) -> fixtures::ZtunnelFixture {
    use k8s_openapi::api::apps::v1::DaemonSet;
    let mut ztunnel = fixtures::ZtunnelFixture::new(&env.namespace, "1.28.0");
    ztunnel.node_selector = env.node_selector();
    ztunnel.strategy = strategy;
    let ds_api: Api<DaemonSet> = Api::namespaced(env.client.clone(), &env.namespace);
    fixtures::apply(&ds_api, &ztunnel.daemonset())
        .await
        .expect("apply ztunnel");
    let n = env.nodes.len() as i32;
    wait_for(
        &ds_api,
        "ztunnel",
        &format!("ztunnel Ready on {n} nodes"),
        daemonset_ready(n),
    )
    .await;
    ztunnel
}

/// Another holder takes Lease `name` for an hour, as a replica that won it would.
pub async fn take_lease(env: &TestEnv, name: &str, holder: &str) {
    use k8s_openapi::api::coordination::v1::Lease;
    let leases: Api<Lease> = Api::namespaced(env.client.clone(), &env.namespace);
    let mut lease = leases.get(name).await.expect("lease");
    let spec = lease.spec.as_mut().expect("spec");
    spec.holder_identity = Some(holder.to_owned());
    spec.lease_duration_seconds = Some(3600);
    spec.renew_time = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime(
        k8s_openapi::jiff::Timestamp::now(),
    ));
    leases
        .replace(name, &kube::api::PostParams::default(), &lease)
        .await
        .expect("take the lease");
}

/// Fails the test unless `leadership` stops counting itself leader within `within`.
pub async fn until_not_leader(leadership: &ztunnel_rollout::leader::Leadership, within: Duration) {
    let deadline = tokio::time::Instant::now() + within;
    while leadership.is_leader() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "still acting as leader after losing the lease"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Whether the pod is Ready and not terminating.
pub fn available(pod: &Pod) -> bool {
    pod.metadata.deletion_timestamp.is_none()
        && pod
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// Watches the namespace's pods and records, per `app` label, the fewest available
/// pods seen at any moment.
pub fn sample_available(
    env: &TestEnv,
) -> (
    Arc<Mutex<HashMap<String, usize>>>,
    tokio::task::JoinHandle<()>,
) {
    let minimum = Arc::new(Mutex::new(HashMap::new()));
    let api: Api<Pod> = Api::namespaced(env.client.clone(), &env.namespace);
    let seen = minimum.clone();
    let task = tokio::spawn(async move {
        let (reader, writer) = kube::runtime::reflector::store();
        let mut stream = std::pin::pin!(watcher(api, watcher::Config::default()).reflect(writer));
        let mut synced = false;
        while let Some(ev) = stream.next().await {
            synced |= matches!(ev, Ok(watcher::Event::InitDone));
            if !synced {
                continue;
            }
            let mut counts: HashMap<String, usize> = HashMap::new();
            for p in reader.state() {
                let app = p.labels().get("app").cloned().unwrap_or_default();
                let entry = counts.entry(app).or_insert(0);
                if available(&p) {
                    *entry += 1;
                }
            }
            let mut min = seen.lock().expect("lock");
            for (app, n) in counts {
                let m = min.entry(app).or_insert(n);
                *m = (*m).min(n);
            }
        }
    });
    (minimum, task)
}

/// Waits by watch for an Event (events.k8s.io, in `default`, where Events about
/// cluster-scoped objects go) about object `regarding` with `reason`; returns its note.
pub async fn wait_for_event(
    client: &Client,
    regarding: &str,
    reason: &str,
    note_contains: &str,
) -> String {
    use k8s_openapi::api::events::v1::Event;
    let api: Api<Event> = Api::namespaced(client.clone(), "default");
    let matches = |e: &Event| {
        e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(regarding)
            && e.reason.as_deref() == Some(reason)
            && e.note
                .as_deref()
                .unwrap_or_default()
                .contains(note_contains)
    };
    let found = tokio::time::timeout(WAIT, async {
        let mut stream =
            std::pin::pin!(watcher(api.clone(), watcher::Config::default()).applied_objects());
        while let Some(e) = stream.next().await {
            if let Ok(e) = e
                && matches(&e)
            {
                return Some(e.note.unwrap_or_default());
            }
        }
        None
    })
    .await;
    match found {
        Ok(Some(note)) => note,
        _ => panic!("no Event {reason} about {regarding} saying {note_contains:?} within {WAIT:?}"),
    }
}

/// Moves the ztunnel DaemonSet to version 1.28.1 (OnDelete: no pod changes by itself)
/// and returns the new revision hash once the DaemonSet controller has recorded it.
pub async fn upgrade_ztunnel(
    client: &Client,
    namespace: &str,
    ztunnel: fixtures::ZtunnelFixture,
) -> String {
    upgrade_ztunnel_to(client, namespace, ztunnel, "1.28.1").await
}

/// Moves the ztunnel DaemonSet to `version` (see [`upgrade_ztunnel`]).
pub async fn upgrade_ztunnel_to(
    client: &Client,
    namespace: &str,
    mut ztunnel: fixtures::ZtunnelFixture,
    version: &str,
) -> String {
    use k8s_openapi::api::apps::v1::DaemonSet;
    ztunnel.version = version.into();
    let ds_api: Api<DaemonSet> = Api::namespaced(client.clone(), namespace);
    fixtures::apply(&ds_api, &ztunnel.daemonset())
        .await
        .expect("upgrade ztunnel");
    observed_revision(client, namespace, "ztunnel").await
}

/// DaemonSet `name`'s current revision hash, once its controller observed its latest
/// generation.
pub async fn observed_revision(client: &Client, namespace: &str, name: &str) -> String {
    use k8s_openapi::api::apps::v1::{ControllerRevision, DaemonSet};
    let ds_api: Api<DaemonSet> = Api::namespaced(client.clone(), namespace);
    let ds = wait_for(
        &ds_api,
        name,
        &format!("new {name} revision observed"),
        |d: Option<&DaemonSet>| {
            d.is_some_and(|d| {
                d.status.as_ref().and_then(|s| s.observed_generation) == d.metadata.generation
            })
        },
    )
    .await
    .expect("ds");
    let revisions = Api::<ControllerRevision>::namespaced(client.clone(), namespace)
        .list(&ListParams::default())
        .await
        .expect("revisions")
        .items;
    ztunnel_rollout_core::rollout::revision::current_revision_hash(&ds, &revisions)
        .expect("current revision")
}

/// Pins a one-replica `blocker` Deployment to `node` under a PDB that allows no
/// disruption, and waits until the PDB counts it: that node's drain cannot finish.
/// A pod on `node` under a PodDisruptionBudget that can never allow a disruption
/// (`minAvailable: 1` of 1): the agent refuses the node before cordoning it.
pub async fn pin_unevictable_pod(env: &TestEnv, node: &str) {
    use k8s_openapi::api::apps::v1::Deployment;
    use k8s_openapi::api::policy::v1::PodDisruptionBudget;
    use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
    let mut blocker = fixtures::AppFixture::new(&env.namespace, "blocker", 1);
    blocker.node_selector =
        BTreeMap::from([("kubernetes.io/hostname".to_owned(), node.to_owned())]);
    let deployments: Api<Deployment> = Api::namespaced(env.client.clone(), &env.namespace);
    fixtures::apply(&deployments, &blocker.deployment())
        .await
        .expect("blocker");
    wait_for(
        &deployments,
        "blocker",
        "blocker available",
        deployment_available(1),
    )
    .await;
    let pdbs: Api<PodDisruptionBudget> = Api::namespaced(env.client.clone(), &env.namespace);
    let selector = BTreeMap::from([("app".to_owned(), "blocker".to_owned())]);
    let budget = fixtures::Budget::MinAvailable(IntOrString::Int(1));
    fixtures::apply(
        &pdbs,
        &fixtures::pdb(&env.namespace, "blocker", selector, budget),
    )
    .await
    .expect("blocker pdb");
    wait_for(
        &pdbs,
        "blocker",
        "blocker PDB observed",
        |p: Option<&PodDisruptionBudget>| {
            p.and_then(|p| p.status.as_ref())
                .is_some_and(|s| s.current_healthy == Some(1))
        },
    )
    .await;
}

/// Holds `node`'s drain with a blocker that may clear: a PodDisruptionBudget
/// (`minAvailable: 1`) over a pod on `node` and a replacement that never gets scheduled,
/// so it allows no disruption now, but is not one that can never allow any (the agent
/// refuses those before it cordons).
pub async fn hold_drain_on(env: &TestEnv, node: &str) {
    use k8s_openapi::api::apps::v1::Deployment;
    use k8s_openapi::api::policy::v1::PodDisruptionBudget;
    use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
    let deployments: Api<Deployment> = Api::namespaced(env.client.clone(), &env.namespace);
    for (name, target) in [("held", node), ("held-spare", "no-such-node")] {
        let mut app = fixtures::AppFixture::new(&env.namespace, name, 1);
        app.node_selector =
            BTreeMap::from([("kubernetes.io/hostname".to_owned(), target.to_owned())]);
        app.extra_labels = BTreeMap::from([("held-by".to_owned(), "pdb".to_owned())]);
        fixtures::apply(&deployments, &app.deployment())
            .await
            .expect("held app");
    }
    wait_for(
        &deployments,
        "held",
        "held available",
        deployment_available(1),
    )
    .await;
    let pdbs: Api<PodDisruptionBudget> = Api::namespaced(env.client.clone(), &env.namespace);
    let selector = BTreeMap::from([("held-by".to_owned(), "pdb".to_owned())]);
    let budget = fixtures::Budget::MinAvailable(IntOrString::Int(1));
    fixtures::apply(
        &pdbs,
        &fixtures::pdb(&env.namespace, "held", selector, budget),
    )
    .await
    .expect("held pdb");
    wait_for(
        &pdbs,
        "held",
        "held PDB observed: 1 of 2 healthy",
        |p: Option<&PodDisruptionBudget>| {
            p.and_then(|p| p.status.as_ref())
                .is_some_and(|s| s.current_healthy == Some(1) && s.expected_pods == Some(2))
        },
    )
    .await;
}

/// Whether `node` is cordoned now.
pub async fn is_cordoned(client: &Client, node: &str) -> bool {
    Api::<Node>::all(client.clone())
        .get(node)
        .await
        .expect("node")
        .spec
        .and_then(|s| s.unschedulable)
        .unwrap_or(false)
}

/// [`cli`] off the test's runtime thread: for commands that last (`--wait` until the
/// agent is done) while the test's runtime serves something they need.
pub async fn cli_async(args: &[&str]) -> (i32, String, String) {
    let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        cli(&args)
    })
    .await
    .expect("the CLI thread")
}

/// Runs the `ztunnel-rollout` CLI against the test cluster: exit code, stdout, stderr.
pub fn cli(args: &[&str]) -> (i32, String, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ztunnel-rollout"))
        .arg("--kubeconfig")
        .arg(&cluster().kubeconfig)
        .args(args)
        .output()
        .expect("run the CLI");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Each node's live ztunnel pod (pods being deleted left out), by `what` of it.
async fn ztunnel_pods(env: &TestEnv, what: impl Fn(Pod) -> String) -> BTreeMap<String, String> {
    pods_by_node(env, "app=ztunnel", what).await
}

/// Each node's live pod of `env`'s namespace matching `labels` (pods being deleted left
/// out), by `what` of it.
pub async fn pods_by_node(
    env: &TestEnv,
    labels: &str,
    what: impl Fn(Pod) -> String,
) -> BTreeMap<String, String> {
    Api::<Pod>::namespaced(env.client.clone(), &env.namespace)
        .list(&ListParams::default().labels(labels))
        .await
        .expect("pods")
        .items
        .into_iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .map(|p| {
            let node = p.spec.as_ref().and_then(|s| s.node_name.clone());
            (node.unwrap_or_default(), what(p))
        })
        .collect()
}

/// The revision hash of each node's ztunnel pod (pods being deleted left out).
pub async fn ztunnel_hashes(env: &TestEnv) -> BTreeMap<String, String> {
    ztunnel_pods(env, revision_hash).await
}

/// A DaemonSet pod's `controller-revision-hash`.
pub fn revision_hash(p: Pod) -> String {
    p.metadata
        .labels
        .and_then(|l| l.get("controller-revision-hash").cloned())
        .unwrap_or_default()
}

/// The UID of each node's live ztunnel pod (not being deleted).
pub async fn ztunnel_pods_by_node(env: &TestEnv) -> BTreeMap<String, String> {
    ztunnel_pods(env, |p| p.metadata.uid.unwrap_or_default()).await
}

/// A refusal injected at the API server: a ValidatingAdmissionPolicy and its binding,
/// both named `name`, denying the writes its `matchConstraints` select unless the CEL
/// expression `allowed` holds. Policies are cluster-scoped: name them after the test's
/// namespace and select only the test's own objects. Removed by
/// [`DenyingPolicy::remove`], or when dropped (also when the test panics).
pub struct DenyingPolicy {
    client: Client,
    pub name: String,
    /// The API server's count of this policy's denials when it was installed.
    baseline: u64,
    removed: bool,
}

impl DenyingPolicy {
    pub async fn install(
        client: &Client,
        name: &str,
        match_constraints: serde_json::Value,
        allowed: &str,
    ) -> DenyingPolicy {
        use k8s_openapi::api::admissionregistration::v1::{
            ValidatingAdmissionPolicy, ValidatingAdmissionPolicyBinding,
        };
        let baseline = policy_denials(client, name).await;
        let policy: ValidatingAdmissionPolicy = serde_json::from_value(serde_json::json!({
            "apiVersion": "admissionregistration.k8s.io/v1",
            "kind": "ValidatingAdmissionPolicy",
            "metadata": { "name": name },
            "spec": {
                "failurePolicy": "Fail",
                "matchConstraints": match_constraints,
                "validations": [{
                    "expression": allowed,
                    "message": format!("refused by the test's policy {name}"),
                }],
            },
        }))
        .expect("a ValidatingAdmissionPolicy");
        let binding: ValidatingAdmissionPolicyBinding = serde_json::from_value(serde_json::json!({
            "apiVersion": "admissionregistration.k8s.io/v1",
            "kind": "ValidatingAdmissionPolicyBinding",
            "metadata": { "name": name },
            "spec": { "policyName": name, "validationActions": ["Deny"] },
        }))
        .expect("a ValidatingAdmissionPolicyBinding");
        fixtures::apply(&Api::all(client.clone()), &policy)
            .await
            .unwrap_or_else(|e| panic!("create ValidatingAdmissionPolicy {name}: {e}"));
        fixtures::apply(&Api::all(client.clone()), &binding)
            .await
            .unwrap_or_else(|e| panic!("create ValidatingAdmissionPolicyBinding {name}: {e}"));
        DenyingPolicy {
            client: client.clone(),
            name: name.to_owned(),
            baseline,
            removed: false,
        }
    }

    /// The policy takes effect asynchronously: repeats `probe` (a dry-run of the write
    /// under test; validating admission runs for dry-run requests) until this policy
    /// denies it, failing the test after [`WAIT`]. Returns the denial's message.
    pub async fn wait_enforced<F, Fut>(&self, mut probe: F) -> String
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<(), kube::Error>>,
    {
        let marker = format!("ValidatingAdmissionPolicy '{}'", self.name);
        let deadline = tokio::time::Instant::now() + WAIT;
        let mut tries = 0;
        loop {
            tries += 1;
            let outcome = probe().await;
            if let Err(kube::Error::Api(status)) = &outcome
                && status.message.contains(&marker)
            {
                eprintln!("policy {} enforced after {tries} probe(s)", self.name);
                return status.message.clone();
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "policy {} not enforced within {WAIT:?}: {tries} dry-run probe(s), the last: {outcome:?}",
                self.name
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Requests this policy denied since it was installed (dry-run probes included), as
    /// the API server counts them (`apiserver_validating_admission_policy_check_total`).
    pub async fn denials(&self) -> u64 {
        policy_denials(&self.client, &self.name).await - self.baseline
    }

    pub async fn remove(mut self) {
        delete_policy(&self.client, &self.name).await;
        self.removed = true;
    }
}

async fn delete_policy(client: &Client, name: &str) {
    use k8s_openapi::api::admissionregistration::v1::{
        ValidatingAdmissionPolicy, ValidatingAdmissionPolicyBinding,
    };
    let dp = DeleteParams::default();
    let bindings: Api<ValidatingAdmissionPolicyBinding> = Api::all(client.clone());
    let policies: Api<ValidatingAdmissionPolicy> = Api::all(client.clone());
    for result in [
        bindings.delete(name, &dp).await.map(drop),
        policies.delete(name, &dp).await.map(drop),
    ] {
        match result {
            Ok(()) => {}
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => panic!("delete the policy {name}: {e}"),
        }
    }
}

/// The API server's count of requests policy `name` denied.
async fn policy_denials(client: &Client, name: &str) -> u64 {
    let request = http::Request::get("/metrics")
        .body(Vec::new())
        .expect("a request");
    let text = client
        .request_text(request)
        .await
        .expect("the API server's metrics");
    let series = format!("policy=\"{name}\"");
    text.lines()
        .filter(|l| l.starts_with("apiserver_validating_admission_policy_check_total{"))
        .filter(|l| l.contains(&series) && l.contains("enforcement_action=\"deny\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

impl Drop for DenyingPolicy {
    fn drop(&mut self) {
        if self.removed {
            return;
        }
        let kubeconfig = cluster().kubeconfig.clone();
        let name = self.name.clone();
        // Drop cannot await; remove it on a thread with a runtime of its own.
        let cleanup = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            rt.block_on(async move {
                let client = client_for(&kubeconfig)
                    .await
                    .map_err(std::io::Error::other)?;
                delete_policy(&client, &name).await;
                Ok::<_, std::io::Error>(())
            })
        });
        let _ = cleanup.join();
    }
}

/// The events.k8s.io Events with `reason` that `keep` picks, oldest first, from
/// `default`, where Events about cluster-scoped objects go.
pub async fn events_with_reason(
    client: &Client,
    reason: &str,
    keep: impl Fn(&k8s_openapi::api::events::v1::Event) -> bool,
) -> Vec<k8s_openapi::api::events::v1::Event> {
    use k8s_openapi::api::events::v1::Event;
    let mut events: Vec<Event> = Api::<Event>::namespaced(client.clone(), "default")
        .list(&ListParams::default())
        .await
        .expect("list Events")
        .items
        .into_iter()
        .filter(|e| e.reason.as_deref() == Some(reason) && keep(e))
        .collect();
    events.sort_by_key(|e| e.event_time.as_ref().map(|t| t.0));
    events
}
