//! Rollout benchmark: simulated nodes in 3 zones with application pods under PDBs, a
//! ztunnel upgrade done by the agent, by the runbook's kubectl script, or by two agents of
//! which the leader is killed mid-way. Prints a table per run of what was measured: total time
//! against the critical-path lower bound implied by the simulated (KWOK) delays,
//! per-phase node durations, reaction latency (as the benchmark's watches see it, and
//! from the audit log: the node's new ztunnel made Ready → the uncordon's arrival, which
//! leaves out how late the API server's watches deliver), evictions per pod, API requests (from the
//! API server's audit log), the agent's peak memory and CPU, the status size, and the
//! critical path read from the audit log: the chain of nodes that set the run's length
//! and the tool's part of it (`ztunnel_rollout_testbed::critical_path`).
//!
//! Run: `cargo bench --bench rollout` (after e2e/build-control-plane.sh), or every
//! scenario of BENCHMARKS.md with `e2e/bench.sh`. Settings (environment):
//! - `BENCH_NODES` (200), `BENCH_PODS_PER_NODE` (2), `BENCH_MAX_UNAVAILABLE` (`10%`),
//! - `BENCH_WAVES`: `zones` (one wave per zone, the default) or `one`,
//! - `BENCH_MODE`: `agent` (default), `runbook` (e2e/runbook-baseline.sh: wave after
//!   wave, as many nodes of a wave at once as `BENCH_MAX_UNAVAILABLE` allows the agent),
//!   `failover` (two agents; the leader is SIGKILLed once a third of the nodes are done),
//! - `BENCH_RUNS` (1): runs, each on a fresh cluster; the result file has every run and
//!   each number's median, min and max,
//! - `BENCH_RESIDENT_PODS` (0): bare pods that stay on as many nodes again outside the
//!   rollout, for the agent's memory with many pods in the cluster,
//! - `BENCH_NODE_AGENTS` (0): with 1, istio-cni, a kube-proxy and a log agent run as
//!   DaemonSets with a pod on every node (none of them moved),
//! - `BENCH_APP_NAMESPACES` (1): namespaces the application Deployments spread over,
//! - `BENCH_EVEN_SPREAD` (0): with 1, every node gets `BENCH_PODS_PER_NODE` application
//!   pods exactly (a topology spread constraint over all of them; it counts one
//!   namespace's pods, so it needs `BENCH_APP_NAMESPACES=1`); otherwise the
//!   scheduler places them as it likes (about that many). The agent drains the nodes
//!   with fewest pods first, so with one pod a node an uneven spread means a first
//!   stretch of empty nodes,
//! - `BENCH_AGENT_CPU` (none): the agent's CPU limited to this many cores (a cgroup; the
//!   leader only, from its election on; the runbook script is not limited),
//! - `BENCH_STOP_AFTER_NODES` (none): the agent's run ends once this many nodes are
//!   done, for clusters whose whole rollout outlasts a session here (5,000 nodes); the
//!   figures cover those nodes (the bound is theirs; requests per node divide by the
//!   nodes started; no critical path, but the tool's steps per node from the audit
//!   log, the slot's wait aside), the rest stay where the stop found them and go with
//!   the cluster,
//! - `BENCH_GATES` (0): with 1, the health gates are on: every node's new ztunnel is
//!   scraped at its pod IP (the nodes get pod CIDRs in 127.0.0.0/8, and the bench serves
//!   simulated ztunnel metrics on each ztunnel pod's IP as the pod appears) and one
//!   PromQL query per node goes to a simulated Prometheus API.

#[path = "../tests/support/mod.rs"]
mod support;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::apps::v1::{ControllerRevision, DaemonSet, Deployment};
use k8s_openapi::api::core::v1::{Namespace, Node, Pod};
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use k8s_openapi::jiff::Timestamp;
use kube::api::{ListParams, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, ResourceExt};
use support::agent::{self as agent_support, Agent, TEST_LABEL};
use ztunnel_rollout::api::ZtunnelRollout;
use ztunnel_rollout_core::api::rollout::NodePhase;
use ztunnel_rollout_core::rollout::planner::{self, MaxUnavailable, NodeObservation, WavePolicy};
use ztunnel_rollout_core::rollout::settings::max_unavailable;
use ztunnel_rollout_testbed::control_plane::client_for;
use ztunnel_rollout_testbed::critical_path;
use ztunnel_rollout_testbed::fixtures::{
    self, AppFixture, Budget, NODE_SET_LABEL, ZONE_LABEL, ZtunnelFixture,
};
use ztunnel_rollout_testbed::run_record;

const ZONES: [&str; 3] = ["a", "b", "c"];
const REPLICAS: usize = 40;
/// Simulated delays (KWOK stages), in seconds.
const APP_EXIT: f64 = 1.0;
const ZTUNNEL_EXIT: f64 = 1.0;
const ZTUNNEL_CREATED: f64 = 0.1;
const ZTUNNEL_READY: f64 = 1.0;
/// The health gates' settings with `BENCH_GATES=1`, in seconds.
const GATE_INTERVAL: f64 = 1.0;
const GATE_SOAK: f64 = 2.0;
const TAG: &str = "bench-rollout";
/// The label every application pod carries with `BENCH_EVEN_SPREAD=1`, to spread them
/// evenly together.
const SPREAD_LABEL: &str = "bench-spread";

#[derive(Debug, Clone, Copy, PartialEq)]
enum Mode {
    Agent,
    Runbook,
    Failover,
}

struct Params {
    nodes: usize,
    pods_per_node: usize,
    max_unavailable: String,
    one_wave: bool,
    mode: Mode,
    /// Pods that stay where they are, on as many nodes again that the rollout does not
    /// select: the agent watches every pod and node, so they weigh on its memory
    /// without the cost of moving them (`BENCH_RESIDENT_PODS`).
    resident_pods: usize,
    /// Health gates on (`BENCH_GATES=1`).
    gates: bool,
    /// What a real ambient node runs besides ztunnel (`BENCH_NODE_AGENTS=1`): istio-cni,
    /// a kube-proxy and a log agent, a DaemonSet each, with a pod on every node.
    node_agents: bool,
    /// Namespaces the applications spread over (`BENCH_APP_NAMESPACES`, 1: the
    /// benchmark's own). The controllers that scan a namespace's pods on every change
    /// (ReplicaSets', the disruption controller) cost what one namespace holds.
    app_namespaces: usize,
    /// Exactly `pods_per_node` application pods on every node (`BENCH_EVEN_SPREAD=1`).
    even_spread: bool,
    /// Runs, each on a fresh cluster (`BENCH_RUNS`).
    runs: usize,
    /// The agent's CPU limited to this many cores (`BENCH_AGENT_CPU`, e.g. `0.1`), by a
    /// cgroup (v1's cpu controller) of its own: how much of the run waits on the agent.
    agent_cpu: Option<f64>,
    /// Stop once this many nodes are done (`BENCH_STOP_AFTER_NODES`; agent mode only).
    stop_after: Option<usize>,
}

fn params() -> Params {
    let var = |k: &str, d: &str| std::env::var(k).unwrap_or_else(|_| d.to_owned());
    let number = |k: &str, d: &str| {
        var(k, d)
            .parse::<usize>()
            .unwrap_or_else(|e| panic!("{k}: {e}"))
    };
    let p = Params {
        runs: run_record::runs_from_env(1),
        nodes: number("BENCH_NODES", "200"),
        pods_per_node: number("BENCH_PODS_PER_NODE", "2"),
        max_unavailable: var("BENCH_MAX_UNAVAILABLE", "10%"),
        one_wave: match var("BENCH_WAVES", "zones").as_str() {
            "zones" => false,
            "one" => true,
            other => panic!("BENCH_WAVES: {other:?} is not zones or one"),
        },
        resident_pods: number("BENCH_RESIDENT_PODS", "0"),
        gates: number("BENCH_GATES", "0") == 1,
        node_agents: number("BENCH_NODE_AGENTS", "0") == 1,
        app_namespaces: number("BENCH_APP_NAMESPACES", "1").max(1),
        even_spread: number("BENCH_EVEN_SPREAD", "0") == 1,
        agent_cpu: std::env::var("BENCH_AGENT_CPU").ok().map(|v| {
            v.parse::<f64>()
                .ok()
                .filter(|c| *c > 0.0 && c.is_finite())
                .unwrap_or_else(|| panic!("BENCH_AGENT_CPU: {v:?} is not a number of cores"))
        }),
        stop_after: std::env::var("BENCH_STOP_AFTER_NODES").ok().map(|v| {
            v.parse::<usize>()
                .ok()
                .filter(|n| *n > 0)
                .unwrap_or_else(|| {
                    panic!("BENCH_STOP_AFTER_NODES: {v:?} is not a number of nodes (1 or more)")
                })
        }),
        mode: match var("BENCH_MODE", "agent").as_str() {
            "agent" => Mode::Agent,
            "runbook" => Mode::Runbook,
            "failover" => Mode::Failover,
            other => panic!("BENCH_MODE: {other:?} is not agent, runbook or failover"),
        },
    };
    assert!(
        !p.even_spread || p.app_namespaces == 1,
        "BENCH_EVEN_SPREAD=1 needs BENCH_APP_NAMESPACES=1: a topology spread constraint counts the pods of its own namespace only"
    );
    if let Some(n) = p.stop_after {
        assert!(
            n <= p.nodes && p.mode == Mode::Agent,
            "BENCH_STOP_AFTER_NODES={n}: needs BENCH_MODE=agent and at most BENCH_NODES={} nodes",
            p.nodes
        );
    }
    p
}

fn budget(p: &Params) -> MaxUnavailable {
    let v = match p.max_unavailable.parse::<i32>() {
        Ok(n) => IntOrString::Int(n),
        Err(_) => IntOrString::String(p.max_unavailable.clone()),
    };
    max_unavailable(&v).unwrap_or_else(|e| panic!("BENCH_MAX_UNAVAILABLE: {e}"))
}

/// Nodes, ztunnel (upgraded, OnDelete), Deployments of 40 replicas under 25% PDBs.
/// Returns the target revision hash and the node names.
async fn scenario(client: &Client, p: &Params) -> (String, Vec<String>) {
    let gates = p.gates;
    let names = support::node_set_shaped(client, "r-", p.nodes, TAG, |k, node| {
        if gates {
            node.spec.get_or_insert_default().pod_cidr = Some(pod_cidr(k));
        }
    })
    .await;
    let selector = BTreeMap::from([(NODE_SET_LABEL.to_owned(), TAG.to_owned())]);
    let mut ztunnel = ZtunnelFixture::new(TAG, "1.28.0");
    ztunnel.node_selector = selector.clone();
    ztunnel.exit_after_seconds = ZTUNNEL_EXIT;
    ztunnel.ready_after = format!("{ZTUNNEL_READY}s");
    let ds_api: Api<DaemonSet> = Api::namespaced(client.clone(), TAG);
    fixtures::apply(&ds_api, &ztunnel.daemonset())
        .await
        .expect("ztunnel");
    support::wait_within(
        &ds_api,
        "ztunnel",
        "ztunnel Ready on every node",
        Duration::from_secs(900),
        support::daemonset_ready(p.nodes as i32),
    )
    .await;
    let setup = Instant::now();
    if p.node_agents {
        node_agents(client, p.nodes).await;
        eprintln!(
            "node agents on every node after {:.1}s",
            setup.elapsed().as_secs_f64()
        );
    }
    let app_namespace = |i: usize| {
        if p.app_namespaces == 1 {
            TAG.to_owned()
        } else {
            format!("{TAG}-apps-{}", i % p.app_namespaces)
        }
    };
    if p.app_namespaces > 1 {
        let namespaces: Api<Namespace> = Api::all(client.clone());
        for i in 0..p.app_namespaces {
            fixtures::apply(
                &namespaces,
                &fixtures::namespace(&app_namespace(i), BTreeMap::new()),
            )
            .await
            .expect("namespace");
        }
    }
    let total = p.nodes * p.pods_per_node;
    let count = total.div_ceil(REPLICAS);
    let mut sizes = Vec::new();
    for i in 0..count {
        let name = format!("app-{i}");
        let namespace = app_namespace(i);
        let replicas = REPLICAS.min(total - i * REPLICAS) as i32;
        let mut app = AppFixture::new(&namespace, &name, replicas);
        app.node_selector = selector.clone();
        app.exit_after_seconds = APP_EXIT;
        if p.even_spread {
            let all_apps = BTreeMap::from([(SPREAD_LABEL.to_owned(), TAG.to_owned())]);
            app.extra_labels.extend(all_apps.clone());
            app.spread_evenly_with = all_apps;
        }
        fixtures::apply(
            &Api::namespaced(client.clone(), &namespace),
            &app.deployment(),
        )
        .await
        .expect("app");
        let pdb = fixtures::pdb(
            &namespace,
            &name,
            BTreeMap::from([("app".to_owned(), name.clone())]),
            Budget::MaxUnavailable(IntOrString::String("25%".into())),
        );
        fixtures::apply(&Api::namespaced(client.clone(), &namespace), &pdb)
            .await
            .expect("pdb");
        sizes.push((namespace, name, replicas));
    }
    for (i, (namespace, name, replicas)) in sizes.iter().enumerate() {
        if i % 50 == 0 {
            eprintln!(
                "{i} of {} Deployments available after {:.1}s",
                sizes.len(),
                setup.elapsed().as_secs_f64()
            );
        }
        let deployments: Api<Deployment> = Api::namespaced(client.clone(), namespace);
        support::wait_within(
            &deployments,
            name,
            name,
            Duration::from_secs(3600),
            support::deployment_available(*replicas),
        )
        .await;
    }
    if p.resident_pods > 0 {
        resident_pods(client, p).await;
    }
    ztunnel.version = "1.28.1".into();
    fixtures::apply(&ds_api, &ztunnel.daemonset())
        .await
        .expect("upgrade");
    support::wait_within(
        &ds_api,
        "ztunnel",
        "new ztunnel revision observed",
        Duration::from_secs(60),
        |d: Option<&DaemonSet>| {
            d.is_some_and(|d| {
                d.status.as_ref().and_then(|s| s.observed_generation) == d.metadata.generation
            })
        },
    )
    .await;
    let ds = ds_api.get("ztunnel").await.expect("ds");
    let revisions = Api::<ControllerRevision>::namespaced(client.clone(), TAG)
        .list(&ListParams::default())
        .await
        .expect("revisions")
        .items;
    let hash = ztunnel_rollout_core::rollout::revision::current_revision_hash(&ds, &revisions)
        .expect("hash");
    (hash, names)
}

/// The DaemonSets a real ambient node runs besides ztunnel, a pod on every node, none
/// of them moved by the rollout: istio-cni (in ztunnel's namespace), a kube-proxy (in
/// kube-system) and a log agent (in its own namespace). Their pods stay on a drained
/// node, as DaemonSet pods do, and weigh on every watch of pods.
async fn node_agents(client: &Client, nodes: usize) {
    fixtures::apply(
        &Api::<Namespace>::all(client.clone()),
        &fixtures::namespace("logging", BTreeMap::new()),
    )
    .await
    .expect("namespace");
    for (namespace, name) in [
        (TAG, "istio-cni-node"),
        ("kube-system", "kube-proxy"),
        ("logging", "log-agent"),
    ] {
        let ds: DaemonSet = serde_json::from_value(serde_json::json!({
            "metadata": { "name": name, "namespace": namespace, "labels": { "app": name } },
            "spec": {
                "selector": { "matchLabels": { "app": name } },
                "updateStrategy": { "type": "OnDelete" },
                "template": {
                    "metadata": { "labels": { "app": name } },
                    "spec": {
                        "nodeSelector": { NODE_SET_LABEL: TAG },
                        "tolerations": [{ "operator": "Exists" }],
                        "priorityClassName": "system-node-critical",
                        "containers": [{ "name": name, "image": "registry.k8s.io/pause:3.10" }],
                    },
                },
            },
        }))
        .expect("DaemonSet");
        let api: Api<DaemonSet> = Api::namespaced(client.clone(), namespace);
        fixtures::apply(&api, &ds).await.expect("node agent");
        support::wait_within(
            &api,
            name,
            "a pod on every node",
            Duration::from_secs(1800),
            support::daemonset_ready(nodes as i32),
        )
        .await;
    }
}

/// Node `k`'s pod CIDR: 127.(100 + k / 256).(k % 256).0/26 (62 addresses: a node's 24
/// pods of the realistic scenario and those a drain moves there), so KWOK gives its
/// pods addresses the bench can serve on. Part of the node as it is created: set by a
/// later patch, KWOK sometimes had not seen it when the node's first ztunnel pod came
/// and gave that pod an address from its own range (21 of 1,000 nodes, 2026-12-04).
fn pod_cidr(k: usize) -> String {
    format!("127.{}.{}.0/26", 100 + k / 256, k % 256)
}

/// What the gates read: ztunnel metrics served on every ztunnel pod's IP, port 15020,
/// as the pods appear (a watch), and a Prometheus API answering 0 to every query.
/// Dropped at the end of a run, it stops its listeners too: the next run's pods get the
/// same addresses, and a listener left over would answer for them.
struct GateEndpoints {
    server: Arc<support::prometheus::ZtunnelMetricsServer>,
    /// Aborted with the endpoints (and with the watch, its listeners).
    _tasks: AbortAll,
    /// Pod addresses that could not be served (the run fails: the agent's gates would
    /// have read something else, or nothing).
    unserved: Arc<std::sync::Mutex<Vec<String>>>,
}

/// Tasks aborted when dropped (a JoinHandle dropped leaves its task running).
struct AbortAll(Vec<tokio::task::JoinHandle<()>>);

impl Drop for AbortAll {
    fn drop(&mut self) {
        for t in &self.0 {
            t.abort();
        }
    }
}

impl GateEndpoints {
    async fn start(client: &Client) -> Self {
        let server = Arc::new(support::prometheus::ZtunnelMetricsServer::start(&[]).await);
        server.set_body(
            "prometheus",
            r#"{"status":"success","data":{"resultType":"scalar","result":[1,"0"]}}"#,
        );
        let pods: Api<Pod> = Api::namespaced(client.clone(), TAG);
        let s = server.clone();
        let unserved = Arc::new(std::sync::Mutex::new(Vec::new()));
        let failed = unserved.clone();
        let watch = tokio::spawn(async move {
            let mut bound = std::collections::HashSet::new();
            // Aborting the watch drops this, which stops every listener.
            let mut listeners = AbortAll(Vec::new());
            let config = watcher::Config::default().labels("app=ztunnel");
            let mut stream =
                std::pin::pin!(watcher(pods, config).default_backoff().applied_objects());
            while let Some(event) = stream.next().await {
                // The watcher goes on after an error (it relists, with backoff).
                let Ok(p) = event else { continue };
                let ip = p.status.as_ref().and_then(|s| s.pod_ip.clone());
                let node = p.spec.as_ref().and_then(|s| s.node_name.clone());
                let (Some(ip), Some(node)) = (ip, node) else {
                    continue;
                };
                let Ok(ip) = ip.parse::<std::net::IpAddr>() else {
                    continue;
                };
                if bound.insert(ip) {
                    let address = std::net::SocketAddr::new(ip, 15020);
                    match s.listen(address, &node).await {
                        Ok(task) => listeners.0.push(task),
                        Err(e) => {
                            let what = format!("{node}'s ztunnel metrics on {address}: {e}");
                            eprintln!("cannot serve {what}");
                            failed.lock().expect("lock").push(what);
                        }
                    }
                }
            }
            // Never, short of an abort: no pod appearing later would be served.
            failed
                .lock()
                .expect("lock")
                .push("the ztunnel pod watch ended".to_owned());
        });
        Self {
            server,
            _tasks: AbortAll(vec![watch]),
            unserved,
        }
    }

    /// Fails the run if a ztunnel pod's metrics could not be served.
    fn assert_all_served(&self) {
        let unserved = self.unserved.lock().expect("lock").clone();
        assert!(
            unserved.is_empty(),
            "{} ztunnel pods' metrics were not served, e.g. {}",
            unserved.len(),
            unserved.first().map(String::as_str).unwrap_or_default()
        );
    }

    fn prometheus_url(&self) -> String {
        format!("http://{}/metrics/prometheus", self.server.address)
    }
}

/// `p.resident_pods` bare pods bound to `p.nodes` nodes outside the rollout's node set
/// (no scheduler, no controller), created 32 at a time.
async fn resident_pods(client: &Client, p: &Params) {
    const RESIDENT: &str = "bench-resident";
    let started = Instant::now();
    support::node_set(client, "s-", p.nodes, RESIDENT).await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), RESIDENT);
    futures::stream::iter(0..p.resident_pods)
        .for_each_concurrent(32, |i| {
            let pods = pods.clone();
            let node = format!("s-{:03}", i % p.nodes);
            async move {
                let pod: Pod = serde_json::from_value(serde_json::json!({
                    "metadata": { "name": format!("resident-{i}"), "labels": { "app": "resident" } },
                    "spec": {
                        "nodeName": node,
                        "containers": [{ "name": "app", "image": "resident" }],
                    },
                }))
                .expect("pod");
                pods.create(&PostParams::default(), &pod)
                    .await
                    .expect("resident pod");
            }
        })
        .await;
    eprintln!(
        "{} resident pods on {} other nodes created in {:.1}s",
        p.resident_pods,
        p.nodes,
        started.elapsed().as_secs_f64()
    );
}

fn peak_rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0)
}

fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit_once(") ")
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // utime and stime are fields 14 and 15 (1-based), 11 and 12 after the comm field.
    (ticks(11) + ticks(12)) / 100.0
}

/// p50, p95 and max of `v` (seconds), as text.
fn spread(mut v: Vec<f64>) -> String {
    if v.is_empty() {
        return "-".into();
    }
    v.sort_by(f64::total_cmp);
    let at = |q: f64| v[((v.len() - 1) as f64 * q).round() as usize];
    format!("{:.2} / {:.2} / {:.2} s", at(0.5), at(0.95), at(1.0))
}

/// What two watches see: when each node's new ztunnel pod is first Ready, and when the
/// node is uncordoned after having been cordoned.
#[derive(Default)]
struct Reactions {
    ready: HashMap<String, Instant>,
    uncordoned: HashMap<String, Instant>,
}

fn watch_reactions(
    client: &Client,
    target: &str,
) -> (Arc<Mutex<Reactions>>, Vec<tokio::task::JoinHandle<()>>) {
    let seen = Arc::new(Mutex::new(Reactions::default()));
    let pods: Api<Pod> = Api::namespaced(client.clone(), TAG);
    let target = target.to_owned();
    let s1 = seen.clone();
    let t1 = tokio::spawn(async move {
        let mut stream = std::pin::pin!(
            watcher(pods, watcher::Config::default().labels("app=ztunnel"))
                .default_backoff()
                .applied_objects()
        );
        while let Some(event) = stream.next().await {
            let Ok(p) = event else { continue }; // the watcher recovers by itself
            if p.labels().get("controller-revision-hash") == Some(&target) && support::available(&p)
            {
                let node = p.spec.and_then(|s| s.node_name).unwrap_or_default();
                s1.lock()
                    .expect("lock")
                    .ready
                    .entry(node)
                    .or_insert_with(Instant::now);
            }
        }
    });
    let nodes: Api<Node> = Api::all(client.clone());
    let s2 = seen.clone();
    let t2 = tokio::spawn(async move {
        let config = watcher::Config::default().labels(&format!("{NODE_SET_LABEL}={TAG}"));
        let mut stream = std::pin::pin!(watcher(nodes, config).default_backoff().applied_objects());
        let mut cordoned = std::collections::HashSet::new();
        while let Some(event) = stream.next().await {
            let Ok(n) = event else { continue }; // the watcher recovers by itself
            let name = n.name_any();
            if n.spec.as_ref().and_then(|s| s.unschedulable) == Some(true) {
                cordoned.insert(name);
            } else if cordoned.remove(&name) {
                s2.lock()
                    .expect("lock")
                    .uncordoned
                    .entry(name)
                    .or_insert_with(Instant::now);
            }
        }
    });
    (seen, vec![t1, t2])
}

/// Per-phase durations of every node from the agent's Events on the Nodes (their
/// `eventTime` has microseconds): drain, ztunnel replacement to Ready, verification,
/// release, and the whole node.
async fn phase_durations(client: &Client, rollout: &str) -> Vec<(&'static str, Vec<f64>)> {
    let events = Api::<Event>::namespaced(client.clone(), "default")
        .list(&ListParams::default())
        .await
        .expect("events")
        .items;
    let mut at: HashMap<(String, String), Timestamp> = HashMap::new();
    for e in events {
        let node = e
            .regarding
            .as_ref()
            .and_then(|r| r.name.clone())
            .unwrap_or_default();
        let from_us = e
            .note
            .as_deref()
            .is_some_and(|n| n.starts_with(&format!("{rollout}: ")));
        if let (true, Some(reason), Some(time)) = (from_us, e.reason.clone(), e.event_time.as_ref())
        {
            at.insert((node, reason), time.0);
        }
    }
    let nodes: std::collections::BTreeSet<String> = at.keys().map(|(n, _)| n.clone()).collect();
    let span = |from: &str, to: &str| -> Vec<f64> {
        nodes
            .iter()
            .filter_map(|n| {
                let a = at.get(&(n.clone(), from.to_owned()))?;
                let b = at.get(&(n.clone(), to.to_owned()))?;
                Some(b.duration_since(*a).as_secs_f64())
            })
            .collect()
    };
    vec![
        ("cordon → drained", span("Cordoned", "Drained")),
        (
            "drained → new ztunnel Ready",
            span("Drained", "ZtunnelReady"),
        ),
        ("Ready → verified", span("ZtunnelReady", "Verified")),
        ("verified → uncordoned", span("Verified", "Done")),
        ("whole node", span("Cordoned", "Done")),
    ]
}

/// The least time the health gates keep a node after its new ztunnel is Ready: a first
/// scrape, one interval to a second (a rate needs two), then the soak.
fn gates_least(p: &Params) -> f64 {
    if p.gates {
        GATE_INTERVAL + GATE_SOAK
    } else {
        0.0
    }
}

/// The critical path implied by the simulated delays and the gates' least time:
/// batches of `budget` nodes, wave after wave, each batch one node's path. The bound,
/// the batches, one node's path.
fn lower_bound(p: &Params, budget: MaxUnavailable) -> (f64, usize, f64) {
    let path = APP_EXIT + ZTUNNEL_EXIT + ZTUNNEL_CREATED + ZTUNNEL_READY + gates_least(p);
    let waves: Vec<usize> = if p.one_wave {
        vec![p.nodes]
    } else {
        ZONES
            .iter()
            .enumerate()
            .map(|(z, _)| (0..p.nodes).filter(|i| i % ZONES.len() == z).count())
            .collect()
    };
    // The runbook script runs at the same concurrency (xargs -P), so the same bound.
    // Stopped after n nodes: the waves' batches up to the n-th node.
    let mut left = p.stop_after.unwrap_or(p.nodes);
    let batches: usize = waves
        .iter()
        .map(|n| {
            let taken = left.min(*n);
            left -= taken;
            taken.div_ceil(budget.budget(*n))
        })
        .sum();
    (batches as f64 * path, batches, path)
}

/// How long planning takes for `p.nodes` nodes with none started (the pure planner).
fn planning_time(p: &Params, budget: MaxUnavailable) -> Duration {
    let nodes: Vec<NodeObservation> = (0..p.nodes)
        .map(|i| {
            let zone = Some(ZONES[i % 3].to_owned());
            NodeObservation::pending(format!("node-{i:05}"), zone, i % 23)
        })
        .collect();
    let policy = WavePolicy {
        group_by: ZONE_LABEL.into(),
        order: vec![],
        max_unavailable: budget,
        canary: None,
        max_failed: 0,
        reverse: false,
    };
    let started = Instant::now();
    let rounds = 100;
    for _ in 0..rounds {
        std::hint::black_box(planner::next(&nodes, &policy));
    }
    started.elapsed() / rounds
}

/// The timestamp at the start of an agent log line.
fn log_time(line: &str) -> Option<Timestamp> {
    line.split_whitespace().next()?.parse().ok()
}

/// One run's figures: the table as printed, the numbers of the result file, the API
/// requests by verb.
struct Run {
    table: Vec<(String, String)>,
    numbers: serde_json::Map<String, serde_json::Value>,
    requests: BTreeMap<String, usize>,
}

/// The nodes of each wave: all at once with `BENCH_WAVES=one`, else zone by zone (node
/// i is in zone i mod 3, as `fixtures::zoned_nodes` places them).
fn wave_nodes(p: &Params, nodes: &[String]) -> Vec<Vec<String>> {
    if p.one_wave {
        return vec![nodes.to_vec()];
    }
    (0..ZONES.len())
        .map(|z| {
            nodes
                .iter()
                .enumerate()
                .filter(|(i, _)| i % ZONES.len() == z)
                .map(|(_, n)| n.clone())
                .collect()
        })
        .collect()
}

/// One per-node duration of `who` (script or agent): its median as the number
/// `WHO_LABEL_p50_seconds`, its p50 / p95 / max as the table's row `ROW: LABEL`.
fn per_node(
    numbers: &mut serde_json::Map<String, serde_json::Value>,
    table: &mut Vec<(String, String)>,
    who: &str,
    row: &str,
    label: &str,
    values: Vec<f64>,
) {
    let median = run_record::Spread::of(&values).map_or(f64::NAN, |s| s.median);
    numbers.insert(format!("{who}_{}_p50_seconds", slug(label)), median.into());
    table.push((format!("{row}: {label} (p50 / p95 / max)"), spread(values)));
}

/// The run's audit log (from `offset`, up to `until`: a stopped run's agent goes on
/// until it is stopped) read for the tool's steps (`critical_path`).
fn audit_analysis(
    (audit_log, offset): (&Path, u64),
    tool: &str,
    (started, until): (Timestamp, Timestamp),
    waves: &[critical_path::Wave],
) -> critical_path::Analysis {
    use std::io::{BufReader, Seek, SeekFrom};
    let mut file = std::fs::File::open(audit_log).expect("audit log");
    file.seek(SeekFrom::Start(offset)).expect("seek");
    let mut events = ztunnel_rollout_testbed::invariants::audit::read_events(BufReader::new(file))
        .expect("audit events");
    events.retain(|e| e.completed <= until);
    critical_path::analyse(&events, tool, TAG, started, waves)
}

/// The tool's steps ([`critical_path::STEPS`]) from the `first`, each one's spread over
/// the nodes that went the whole way, as the API server recorded them. Its "ztunnel
/// Ready → uncordon" is the reaction latency without the benchmark's watches in it:
/// from the status write that made the new ztunnel Ready to the uncordon's arrival.
fn tool_steps_per_node(
    numbers: &mut serde_json::Map<String, serde_json::Value>,
    table: &mut Vec<(String, String)>,
    analysis: &critical_path::Analysis,
    first: usize,
) {
    for (i, step) in critical_path::STEPS.iter().enumerate().skip(first) {
        let values = analysis.tool_by_node.iter().map(|n| n[i]).collect();
        per_node(
            numbers,
            table,
            "tool",
            "the tool's time per node",
            step,
            values,
        );
    }
}

/// The tool's share of the run, from the audit log (`critical_path`): the critical
/// path's length and the tool's seconds along it by step, and each step's spread over
/// all nodes.
fn critical_path(
    numbers: &mut serde_json::Map<String, serde_json::Value>,
    table: &mut Vec<(String, String)>,
    analysis: critical_path::Analysis,
    waves: &[critical_path::Wave],
    gates_least: f64,
) {
    let row = "critical path (audit log): nodes, start → last uncordon, the tool's part";
    let nodes: usize = waves.iter().map(|w| w.nodes.len()).sum();
    if analysis.nodes.len() < nodes {
        table.push((
            "critical path (audit log): nodes whose steps were all found".into(),
            format!(
                "{} of {nodes}; left out: {}",
                analysis.nodes.len(),
                analysis.left_out.join(", ")
            ),
        ));
    }
    numbers.insert("path_analysed_nodes".into(), analysis.nodes.len().into());
    let Some(path) = analysis.path.as_ref() else {
        table.push((
            row.into(),
            "n/a: no node went from cordon to uncordon".into(),
        ));
        return;
    };
    let tool_seconds = path.tool_seconds();
    // The gates' least time is in the tool's Ready → uncordon: per node, at most that
    // step's time.
    let least: f64 = path
        .tool_by_node
        .iter()
        .map(|n| n[3].min(gates_least))
        .sum();
    let parts: Vec<String> = critical_path::STEPS
        .iter()
        .zip(path.tool_by_step)
        .map(|(step, s)| format!("{step} {s:.1} s"))
        .collect();
    table.push((
        row.into(),
        format!(
            "{} nodes, {:.1} s; the tool's {tool_seconds:.1} s ({:.1} %): {}",
            path.nodes.len(),
            path.seconds,
            100.0 * tool_seconds / path.seconds,
            parts.join(", ")
        ) + &if gates_least > 0.0 {
            format!(
                "; Ready → uncordon holds the gates' least {least:.1} s (up to {gates_least:.1} s a node, {} nodes), leaving the tool {:.1} s ({:.1} %)",
                path.nodes.len(),
                tool_seconds - least,
                100.0 * (tool_seconds - least) / path.seconds
            )
        } else {
            String::new()
        },
    ));
    numbers.insert("path_gates_least_seconds".into(), least.into());
    numbers.insert(
        "path_tool_beyond_gates_share".into(),
        ((tool_seconds - least) / path.seconds).into(),
    );
    numbers.insert("path_nodes".into(), path.nodes.len().into());
    numbers.insert("path_seconds".into(), path.seconds.into());
    numbers.insert("path_tool_seconds".into(), tool_seconds.into());
    numbers.insert(
        "path_tool_share".into(),
        (tool_seconds / path.seconds).into(),
    );
    for (i, step) in critical_path::STEPS.iter().enumerate() {
        numbers.insert(
            format!("path_tool_{}_seconds", slug(step)),
            path.tool_by_step[i].into(),
        );
    }
    tool_steps_per_node(numbers, table, &analysis, 0);
}

/// A cpu cgroup holding one process, limited to `cores` (CFS quota over a 100 ms
/// period); removed on drop, once the process has exited.
struct CpuLimit(PathBuf);

impl CpuLimit {
    fn new(pid: u32, cores: f64) -> Self {
        let dir = PathBuf::from(format!("/sys/fs/cgroup/cpu/ztunnel-rollout-bench-{pid}"));
        std::fs::create_dir(&dir).unwrap_or_else(|e| {
            panic!(
                "BENCH_AGENT_CPU needs cgroup v1's cpu controller at /sys/fs/cgroup/cpu: {}: {e}",
                dir.display()
            )
        });
        let write = |file: &str, value: String| {
            std::fs::write(dir.join(file), &value)
                .unwrap_or_else(|e| panic!("{}/{file} = {value}: {e}", dir.display()))
        };
        write("cpu.cfs_period_us", "100000".into());
        write(
            "cpu.cfs_quota_us",
            ((cores * 100_000.0) as u64).max(1000).to_string(),
        );
        write("cgroup.procs", pid.to_string());
        CpuLimit(dir)
    }

    /// Periods in which the process was throttled, and for how long in all (seconds).
    fn throttled(&self) -> (u64, f64) {
        let stat = std::fs::read_to_string(self.0.join("cpu.stat")).unwrap_or_default();
        let field = |name: &str| -> u64 {
            stat.lines()
                .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
                .unwrap_or(0)
        };
        (
            field("nr_throttled "),
            field("throttled_time ") as f64 / 1e9,
        )
    }
}

impl Drop for CpuLimit {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_dir(&self.0) {
            eprintln!("could not remove {}: {e}", self.0.display());
        }
    }
}

/// A label as a result file's key: lowercase words joined by `_`.
fn slug(label: &str) -> String {
    label
        .split(|c: char| !c.is_ascii_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(str::to_ascii_lowercase)
        .collect::<Vec<_>>()
        .join("_")
}

/// The runbook script's per-node lines (`NODE start T0 drained T1 old-gone T2 new-ready
/// T3 uncordoned T4`) as the durations of its steps, in seconds.
fn runbook_steps(lines: &str) -> Vec<(&'static str, Vec<f64>)> {
    let mut steps: Vec<(&'static str, Vec<f64>)> = vec![
        ("drain (kubectl drain, cordon included)", vec![]),
        ("drained → old ztunnel gone", vec![]),
        ("old ztunnel gone → new ztunnel Ready", vec![]),
        ("drained → new ztunnel Ready", vec![]),
        ("new ztunnel Ready → uncordoned", vec![]),
        ("whole node", vec![]),
    ];
    for line in lines.lines() {
        let words: Vec<&str> = line.split_whitespace().skip(1).collect();
        let keys = ["start", "drained", "old-gone", "new-ready", "uncordoned"];
        let t: Vec<f64> = words
            .chunks(2)
            .zip(keys)
            .filter(|(kv, key)| kv[0] == *key)
            .filter_map(|(kv, _)| kv.get(1)?.parse().ok())
            .collect();
        let (&[t0, t1, t2, t3, t4], 10) = (t.as_slice(), words.len()) else {
            panic!("the runbook script printed {line:?}, not NODE start T0 ... uncordoned T4");
        };
        for (i, d) in [t1 - t0, t2 - t1, t3 - t2, t3 - t1, t4 - t3, t4 - t0]
            .into_iter()
            .enumerate()
        {
            steps[i].1.push(d);
        }
    }
    steps
}

#[tokio::main]
async fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let p = params();
    let runs = p.runs;
    let mut all = Vec::new();
    for i in 0..runs {
        eprintln!("-- run {} of {runs}", i + 1);
        let run = run(&p).await;
        println!();
        if runs > 1 {
            println!("run {} of {runs}:\n", i + 1);
        }
        println!("| figure | value |\n|---|---|");
        for (k, v) in &run.table {
            println!("| {k} | {v} |");
        }
        let verbs: Vec<String> = run
            .requests
            .iter()
            .map(|(k, v)| format!("{k}: {v}"))
            .collect();
        println!("\nrequests by verb: {}", verbs.join(", "));
        all.push(run);
    }
    // Every number's spread over the runs.
    let mut spreads = serde_json::Map::new();
    if let Some(first) = all.first() {
        for key in first.numbers.keys() {
            let values: Vec<f64> = all
                .iter()
                .filter_map(|r| r.numbers.get(key)?.as_f64())
                .collect();
            if let Some(s) = run_record::Spread::of(&values) {
                spreads.insert(key.clone(), serde_json::json!(s));
            }
        }
    }
    if runs > 1 {
        println!("\nover {runs} runs (median, min–max):\n");
        println!("| figure | median | min | max |\n|---|---|---|---|");
        for (k, v) in &spreads {
            println!(
                "| {k} | {:.2} | {:.2} | {:.2} |",
                v["median"].as_f64().unwrap_or(f64::NAN),
                v["min"].as_f64().unwrap_or(f64::NAN),
                v["max"].as_f64().unwrap_or(f64::NAN)
            );
        }
    }
    if let Ok(path) = std::env::var("BENCH_RESULTS") {
        // The machine-readable record (e2e/bench.sh keeps one per scenario under
        // benches/results/): every run's numbers and table, and each number's spread.
        let record = run_record::record(
            Path::new(env!("CARGO_MANIFEST_DIR")),
            serde_json::json!({
                "scenario": std::env::var("BENCH_SCENARIO").unwrap_or_default(),
                "settings": std::env::vars()
                    .filter(|(k, _)| k.starts_with("BENCH_") && k != "BENCH_RESULTS")
                    .collect::<BTreeMap<_, _>>(),
                "spread": spreads,
                "runs": all.iter().map(|r| serde_json::json!({
                    "numbers": r.numbers,
                    "table": r.table.iter().map(|(k, v)| serde_json::json!([k, v])).collect::<Vec<_>>(),
                    "requests_by_verb": r.requests,
                })).collect::<Vec<_>>(),
            }),
        );
        run_record::write(Path::new(&path), &record);
    }
}

/// One run on a fresh local cluster.
async fn run(p: &Params) -> Run {
    let budget = budget(p);
    let cluster = support::start_supervisor(
        "bench-rollout",
        // The invariants' audit policy keeps the bodies of node, pod, pod-status, eviction
        // and budget writes: the critical path's steps are read from them.
        &["--audit-invariants", TAG, "--pod-exit-after-seconds", "1"],
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let kubeconfig = PathBuf::from(cluster.ready["kubeconfig"].as_str().expect("kubeconfig"));
    let audit_log =
        PathBuf::from(cluster.ready["stateDir"].as_str().expect("stateDir")).join("audit.log");
    let client = client_for(&kubeconfig).await.expect("client");
    agent_support::install(&client).await;
    let setup = Instant::now();
    let (target, nodes) = scenario(&client, p).await;
    eprintln!("scenario ready in {:.1}s", setup.elapsed().as_secs_f64());
    let pods = p.nodes * p.pods_per_node;
    let (bound, batches, node_path) = lower_bound(p, budget);
    let waves = if p.one_wave {
        "one wave"
    } else {
        "a wave per zone"
    };
    let mut rows: Vec<(String, String)> = Vec::new();
    let (reactions, watchers) = watch_reactions(&client, &target);
    let gates = if p.gates {
        Some(GateEndpoints::start(&client).await)
    } else {
        None
    };

    let offset = std::fs::metadata(&audit_log).map(|m| m.len()).unwrap_or(0);
    let started = Instant::now();
    let started_at = Timestamp::now();
    // Declared before the agents, so dropped after them even on a panic: a cgroup can go
    // only once it is empty.
    let mut limits: Vec<CpuLimit> = Vec::new();
    let mut agents: Vec<Agent> = Vec::new();
    let mut user_agent = "ztunnel-rollout/";
    let mut runbook_lines = String::new();
    // Numbers of this run besides the common ones (failover, per-node medians).
    let mut numbers = serde_json::Map::new();
    // Stopped after some nodes: those the agent started, and those it finished.
    let mut started_nodes = p.nodes;
    let mut done_nodes = nodes.clone();
    match p.mode {
        Mode::Runbook => {
            user_agent = "kubectl/";
            let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
            // Wave after wave, as many nodes of a wave at once as the agent's budget
            // allows (xargs -P): the same concurrency.
            for wave in wave_nodes(p, &nodes) {
                let parallel = budget.budget(wave.len());
                let out = std::process::Command::new(repo.join("e2e/runbook-baseline.sh"))
                    .env("KUBECTL", repo.join("e2e/bin/kubectl"))
                    .env("KUBECONFIG", &kubeconfig)
                    .arg("-P")
                    .arg(parallel.to_string())
                    .arg(TAG)
                    .args(&wave)
                    .output()
                    .expect("run the runbook script");
                assert!(
                    out.status.success(),
                    "the runbook script failed:\n{}",
                    String::from_utf8_lossy(&out.stderr)
                );
                runbook_lines.push_str(&String::from_utf8_lossy(&out.stdout));
            }
        }
        Mode::Agent | Mode::Failover => {
            agents.push(agent_support::start_tagged(
                TAG,
                &kubeconfig,
                "bench-lease",
                "bench-a",
            ));
            agents[0]
                .wait_for_log("leading", Duration::from_secs(60))
                .await;
            if let Some(cores) = p.agent_cpu {
                limits.push(CpuLimit::new(agents[0].child.id(), cores));
            }
            if p.mode == Mode::Failover {
                agents.push(agent_support::start_tagged(
                    TAG,
                    &kubeconfig,
                    "bench-lease",
                    "bench-b",
                ));
                agents[1]
                    .wait_for_log("waiting for the lease", Duration::from_secs(60))
                    .await;
            }
            let group_by = if p.one_wave {
                NODE_SET_LABEL
            } else {
                ZONE_LABEL
            };
            let max_unavailable = match p.max_unavailable.parse::<i64>() {
                Ok(n) => serde_json::json!(n),
                Err(_) => serde_json::json!(p.max_unavailable),
            };
            let mut rollout = serde_json::json!({
                "apiVersion": "ztunnel-rollout.dev/v1alpha1",
                "kind": "ZtunnelRollout",
                "metadata": { "name": TAG, "labels": { TEST_LABEL: TAG } },
                "spec": {
                    "daemonSet": { "namespace": TAG, "name": "ztunnel" },
                    "nodeSelector": { "matchLabels": { NODE_SET_LABEL: TAG } },
                    "waves": { "groupBy": group_by, "maxUnavailable": max_unavailable },
                },
            });
            if let Some(g) = &gates {
                rollout["spec"]["health"] = serde_json::json!({
                    "interval": format!("{GATE_INTERVAL}s"),
                    "soak": format!("{GATE_SOAK}s"),
                    "timeout": "2m",
                    "waypoints": { "disabled": true },
                    "ztunnelMetrics": { "maxFailedConnectionsPerSecond": 0.5 },
                    "prometheus": {
                        "url": g.prometheus_url(),
                        "queries": [{
                            "name": "failures",
                            "query": "sum(rate(istio_tcp_connections_closed_total{node=\"$node\",response_flags!=\"-\"}[1m]))",
                            "max": 1.0
                        }]
                    }
                });
            }
            let rollout: ZtunnelRollout = serde_json::from_value(rollout).expect("rollout");
            Api::<ZtunnelRollout>::all(client.clone())
                .create(&PostParams::default(), &rollout)
                .await
                .expect("create");
            if p.mode == Mode::Failover {
                let api: Api<ZtunnelRollout> = Api::all(client.clone());
                let third = (p.nodes / 3) as u32;
                support::wait_within(
                    &api,
                    TAG,
                    "a third of the nodes done",
                    Duration::from_secs(1800),
                    move |r: Option<&ZtunnelRollout>| {
                        r.and_then(|r| r.status.as_ref())
                            .is_some_and(|s| s.counts.done >= third)
                    },
                )
                .await;
                let killed_at = Timestamp::now();
                agents[0].kill();
                let standby = &agents[1];
                let leading = standby
                    .wait_for_log("leading", Duration::from_secs(120))
                    .await;
                // The standby's first step on a node (cordon, drain, delete, release).
                let first = loop {
                    let text = standby.log_text();
                    let after_leading = text.lines().skip_while(|l| !l.contains("leading"));
                    if let Some(line) = after_leading
                        .filter(|l| l.contains("phase="))
                        .find(|l| log_time(l).is_some_and(|t| t > killed_at))
                    {
                        break line.to_owned();
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                };
                let since = |line: &str| {
                    log_time(line).map_or(f64::NAN, |t| t.duration_since(killed_at).as_secs_f64())
                };
                rows.push((
                    "failover: SIGKILL → standby leads".into(),
                    format!("{:.1} s (lease 15 s)", since(&leading)),
                ));
                rows.push((
                    "failover: SIGKILL → standby's first node step".into(),
                    format!("{:.1} s", since(&first)),
                ));
                numbers.insert("failover_leads_seconds".into(), since(&leading).into());
                numbers.insert("failover_first_step_seconds".into(), since(&first).into());
            }
            let leader = agents.last().expect("an agent");
            let done = match p.stop_after {
                None => {
                    agent_support::wait_for_phase(
                        &client,
                        TAG,
                        "Complete",
                        Duration::from_secs(3600),
                        &[leader],
                    )
                    .await
                }
                Some(n) => {
                    let n = n as u32;
                    support::wait_within(
                        &Api::<ZtunnelRollout>::all(client.clone()),
                        TAG,
                        "the nodes to stop after done",
                        Duration::from_secs(3600),
                        move |r: Option<&ZtunnelRollout>| {
                            r.and_then(|r| r.status.as_ref())
                                .is_some_and(|s| s.counts.done >= n)
                        },
                    )
                    .await
                    .expect("the rollout")
                }
            };
            let status = done.status.clone().expect("status");
            assert_eq!(status.target_revision.as_deref(), Some(target.as_str()));
            rows.push((
                "nodes done".into(),
                format!("{} of {}", status.counts.done, status.counts.total),
            ));
            if p.stop_after.is_some() {
                started_nodes = status.counts.done as usize + status.counts.in_flight as usize;
                rows.push((
                    "stopped with".into(),
                    format!(
                        "{} nodes in flight, {} failed",
                        status.counts.in_flight, status.counts.failed
                    ),
                ));
                numbers.insert("nodes_done".into(), status.counts.done.into());
                numbers.insert("nodes_in_flight".into(), status.counts.in_flight.into());
                numbers.insert("nodes_failed".into(), status.counts.failed.into());
                let phase: HashMap<&str, _> = status
                    .nodes
                    .iter()
                    .map(|n| (n.name.as_str(), n.phase))
                    .collect();
                done_nodes = nodes
                    .iter()
                    .filter(|n| phase.get(n.as_str()) == Some(&NodePhase::Done))
                    .cloned()
                    .collect();
            }
            rows.push((
                "status size".into(),
                format!(
                    "{} bytes",
                    serde_json::to_vec(&status).map(|v| v.len()).unwrap_or(0)
                ),
            ));
        }
    }
    let total = started.elapsed().as_secs_f64();
    let ended_at = Timestamp::now();
    // The agent's peak RSS and CPU so far (read once: the table and the numbers show the
    // same reading).
    let usage = |a: &Agent| {
        let pid = a.child.id();
        (peak_rss_kib(pid) as f64 / 1024.0, cpu_seconds(pid))
    };
    // A stopped run's agent goes on working while the audit log is read: read it now. A
    // finished run's is read last, so that nothing it does at the end is missed.
    let stopped_usage = p.stop_after.and(agents.last()).map(usage);
    for t in watchers {
        t.abort();
    }
    if let Some(g) = &gates {
        g.assert_all_served();
    }
    let hashes: HashMap<String, String> = Api::<Pod>::namespaced(client.clone(), TAG)
        .list(&ListParams::default().labels("app=ztunnel"))
        .await
        .expect("ztunnel pods")
        .items
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .filter_map(|p| {
            Some((
                p.spec.as_ref()?.node_name.clone()?,
                p.labels().get("controller-revision-hash")?.clone(),
            ))
        })
        .collect();
    assert!(
        done_nodes
            .iter()
            .all(|n| hashes.get(n).is_some_and(|h| *h == target)),
        "every done node's ztunnel on {target}"
    );
    tokio::time::sleep(Duration::from_secs(1)).await; // let the audit log flush
    let requests = support::audit::count_requests(&audit_log, offset, user_agent);
    let all: usize = requests.values().sum();
    let evictions = requests.get("create pods/eviction").copied().unwrap_or(0);

    let mut table = vec![
        (
            "scenario".to_owned(),
            format!(
                "{} nodes ({waves}), {pods} application pods under 25% PDBs, {} by {}",
                p.nodes,
                if p.mode == Mode::Runbook {
                    format!("maxUnavailable {} (xargs -P)", p.max_unavailable)
                } else {
                    format!("maxUnavailable {}", p.max_unavailable)
                },
                match p.mode {
                    Mode::Runbook => "the runbook script",
                    Mode::Agent => "the agent",
                    Mode::Failover => "two agents, leader killed",
                }
            ) + &p.agent_cpu.map_or(String::new(), |c| {
                format!("; the agent's CPU limited to {c} cores (cgroup)")
            }) + &if p.resident_pods > 0 {
                format!(
                    "; plus {} resident pods on {} nodes outside the rollout",
                    p.resident_pods, p.nodes
                )
            } else {
                String::new()
            } + if p.gates {
                "; health gates on (ztunnel metrics at each node's new ztunnel, one PromQL query per node, soak 2 s)"
            } else {
                ""
            } + if p.node_agents {
                "; istio-cni, kube-proxy and a log agent DaemonSets on every node"
            } else {
                ""
            } + &if p.app_namespaces > 1 {
                format!("; applications in {} namespaces", p.app_namespaces)
            } else {
                String::new()
            } + if p.even_spread {
                "; the same number of application pods on every node"
            } else {
                ""
            } + &p.stop_after.map_or(String::new(), |n| {
                format!("; stopped once {n} nodes were done (time, bound and ratio are theirs)")
            }),
        ),
        ("total time".to_owned(), format!("{total:.1} s")),
        (
            "critical-path lower bound".to_owned(),
            format!(
                "{bound:.1} s ({batches} batches × {node_path:.1} s{})",
                if p.gates {
                    format!(
                        ", of which {:.1} s the gates' least: an interval to a first rate, then the soak",
                        gates_least(p)
                    )
                } else {
                    String::new()
                }
            ),
        ),
        ("ratio".to_owned(), format!("{:.2}", total / bound)),
        (
            "API requests".to_owned(),
            format!(
                "{all}: {:.1} per node{} besides {evictions} evictions ({:.2} per pod)",
                (all - evictions) as f64 / started_nodes as f64,
                if p.stop_after.is_some() {
                    format!(" started ({started_nodes})")
                } else {
                    String::new()
                },
                evictions as f64 / (started_nodes * p.pods_per_node).max(1) as f64
            ),
        ),
    ];
    table.extend(rows);
    for (key, value) in [
        ("nodes", serde_json::json!(p.nodes)),
        ("application_pods", serde_json::json!(pods)),
        ("total_seconds", serde_json::json!(total)),
        ("critical_path_seconds", serde_json::json!(bound)),
        ("ratio", serde_json::json!(total / bound)),
        ("api_requests", serde_json::json!(all)),
        ("evictions", serde_json::json!(evictions)),
    ] {
        numbers.insert(key.into(), value);
    }
    let waves: Vec<critical_path::Wave> = wave_nodes(p, &nodes)
        .into_iter()
        .map(|nodes| critical_path::Wave {
            budget: budget.budget(nodes.len()),
            nodes,
        })
        .collect();
    let analysis = audit_analysis(
        (&audit_log, offset),
        user_agent,
        (started_at, ended_at),
        &waves,
    );
    if let Some(n) = p.stop_after {
        numbers.insert("nodes_started".into(), started_nodes.into());
        table.push((
            "critical path".into(),
            format!("not read: the run stopped after {n} nodes, its waves unfinished"),
        ));
        // Per node all the same, but the slot → cordon step: the nodes still in flight
        // at the stop held slots the log does not close.
        tool_steps_per_node(&mut numbers, &mut table, &analysis, 1);
    } else {
        critical_path(&mut numbers, &mut table, analysis, &waves, gates_least(p));
    }
    let median = |v: &[f64]| run_record::Spread::of(v).map_or(f64::NAN, |s| s.median);
    let latency: Vec<f64> = {
        let r = reactions.lock().expect("lock");
        r.ready
            .iter()
            .filter_map(|(n, ready)| {
                Some(
                    r.uncordoned
                        .get(n)?
                        .saturating_duration_since(*ready)
                        .as_secs_f64(),
                )
            })
            .collect()
    };
    numbers.insert("reaction_p50_seconds".into(), median(&latency).into());
    table.push((
        "reaction: new ztunnel Ready → uncordoned, as the benchmark's watches see it (p50 / p95 / max)".into(),
        spread(latency),
    ));
    if p.mode == Mode::Runbook {
        for (step, values) in runbook_steps(&runbook_lines) {
            per_node(
                &mut numbers,
                &mut table,
                "script",
                "per node (script)",
                step,
                values,
            );
        }
    }
    if let Some(agent) = agents.last() {
        let (rss_mib, cpu) = stopped_usage.unwrap_or_else(|| usage(agent));
        numbers.insert("agent_peak_rss_mib".into(), rss_mib.into());
        numbers.insert("agent_cpu_seconds".into(), cpu.into());
        table.push(("agent peak RSS".into(), format!("{rss_mib:.1} MiB")));
        table.push(("agent CPU".into(), format!("{cpu:.1} s")));
        if let (Some(limit), Some(cores)) = (limits.last(), p.agent_cpu) {
            let (periods, seconds) = limit.throttled();
            numbers.insert("agent_cpu_limit_cores".into(), cores.into());
            numbers.insert("agent_throttled_periods".into(), periods.into());
            numbers.insert("agent_throttled_seconds".into(), seconds.into());
            table.push((
                format!("agent throttled (limit {cores} cores)"),
                format!("{periods} periods of 100 ms, {seconds:.1} s in all"),
            ));
        }
        let passes = agent.metric("ztunnel_rollout_pass_seconds_count").await;
        let pass_time = agent.metric("ztunnel_rollout_pass_seconds_sum").await;
        table.push((
            "reconcile passes (count, mean)".into(),
            format!(
                "{passes:.0}, {:.1} ms",
                1000.0 * pass_time / passes.max(1.0)
            ),
        ));

        for (phase, values) in phase_durations(&client, TAG).await {
            per_node(&mut numbers, &mut table, "agent", "per node", phase, values);
        }
        table.push((
            "planning time (pure planner, all nodes pending)".into(),
            format!("{:.1} µs", planning_time(p, budget).as_secs_f64() * 1e6),
        ));
    }
    drop(agents);
    drop(limits);
    drop(cluster);
    Run {
        table,
        numbers,
        requests,
    }
}
