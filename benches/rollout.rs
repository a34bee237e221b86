//! Rollout benchmark: 200 simulated nodes in 3 zones, 400 application pods under PDBs,
//! `maxUnavailable: 10%`. Prints the total time against the critical-path lower bound
//! implied by the simulated (KWOK) delays, the agent's peak memory, and its API requests
//! per node (from the API server's audit log).
//! Run: `cargo bench --bench rollout` (after e2e/build-control-plane.sh).

#[path = "../tests/support/mod.rs"]
mod support;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::{ControllerRevision, DaemonSet, Deployment};
use k8s_openapi::api::core::v1::{Namespace, Node};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::{ListParams, PostParams};
use kube::{Api, Client};
use support::agent::{self as agent_support, TEST_LABEL};
use ztunnel_rollout::api::ZtunnelRollout;
use ztunnel_rollout::testbed::control_plane::client_for;
use ztunnel_rollout::testbed::fixtures::{self, AppFixture, Budget, ZONE_LABEL, ZtunnelFixture};

const NODES: usize = 200;
const ZONES: [&str; 3] = ["a", "b", "c"];
const DEPLOYMENTS: usize = 10;
const REPLICAS: i32 = 40;
/// Simulated delays (KWOK stages), in seconds.
const APP_EXIT: f64 = 1.0;
const ZTUNNEL_EXIT: f64 = 1.0;
const ZTUNNEL_CREATED: f64 = 0.1;
const ZTUNNEL_READY: f64 = 1.0;
const TAG: &str = "bench-rollout";

async fn scenario(client: &Client) -> (String, Vec<usize>) {
    let nodes: Api<Node> = Api::all(client.clone());
    for n in fixtures::zoned_nodes("r-", NODES, &ZONES, TAG) {
        fixtures::apply(&nodes, &n).await.expect("node");
    }
    Api::<Namespace>::all(client.clone())
        .create(
            &PostParams::default(),
            &fixtures::namespace(TAG, Default::default()),
        )
        .await
        .expect("namespace");
    let selector = BTreeMap::from([(fixtures::NODE_SET_LABEL.to_owned(), TAG.to_owned())]);
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
        Duration::from_secs(300),
        support::daemonset_ready(NODES as i32),
    )
    .await;
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), TAG);
    let pdbs: Api<PodDisruptionBudget> = Api::namespaced(client.clone(), TAG);
    for i in 0..DEPLOYMENTS {
        let name = format!("app-{i}");
        let mut app = AppFixture::new(TAG, &name, REPLICAS);
        app.node_selector = selector.clone();
        app.exit_after_seconds = APP_EXIT;
        fixtures::apply(&deployments, &app.deployment())
            .await
            .expect("app");
        let pdb = fixtures::pdb(
            TAG,
            &name,
            BTreeMap::from([("app".to_owned(), name.clone())]),
            Budget::MaxUnavailable(IntOrString::String("25%".into())),
        );
        fixtures::apply(&pdbs, &pdb).await.expect("pdb");
    }
    for i in 0..DEPLOYMENTS {
        let name = format!("app-{i}");
        support::wait_within(
            &deployments,
            &name,
            &name,
            Duration::from_secs(300),
            support::deployment_available(REPLICAS),
        )
        .await;
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
    let hash =
        ztunnel_rollout::rollout::revision::current_revision_hash(&ds, &revisions).expect("hash");
    let per_zone = ZONES
        .iter()
        .enumerate()
        .map(|(z, _)| (0..NODES).filter(|i| i % ZONES.len() == z).count())
        .collect();
    (hash, per_zone)
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

#[tokio::main]
async fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let cluster = support::start_supervisor(
        "bench-rollout",
        &["--audit-log", "--pod-exit-after-seconds", "1"],
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let kubeconfig = PathBuf::from(cluster.ready["kubeconfig"].as_str().expect("kubeconfig"));
    let audit_log =
        PathBuf::from(cluster.ready["stateDir"].as_str().expect("stateDir")).join("audit.log");
    let client = client_for(&kubeconfig).await.expect("client");
    agent_support::install(&client).await;
    let setup = Instant::now();
    let (target, per_zone) = scenario(&client).await;
    eprintln!("scenario ready in {:.1}s", setup.elapsed().as_secs_f64());

    let mut agent = agent_support::start_tagged(TAG, &kubeconfig, "bench-lease", "bench");
    agent.wait_for_log("leading", Duration::from_secs(60)).await;
    let offset = std::fs::metadata(&audit_log).map(|m| m.len()).unwrap_or(0);
    let rollout: ZtunnelRollout = serde_json::from_value(serde_json::json!({
        "apiVersion": "ztunnel-rollout.dev/v1alpha1",
        "kind": "ZtunnelRollout",
        "metadata": { "name": TAG, "labels": { TEST_LABEL: TAG } },
        "spec": {
            "daemonSet": { "namespace": TAG, "name": "ztunnel" },
            "nodeSelector": { "matchLabels": { fixtures::NODE_SET_LABEL: TAG } },
            "waves": { "groupBy": ZONE_LABEL, "maxUnavailable": "10%" },
        },
    }))
    .expect("rollout");
    let started = Instant::now();
    Api::<ZtunnelRollout>::all(client.clone())
        .create(&PostParams::default(), &rollout)
        .await
        .expect("create");
    let done = agent_support::wait_for_phase(
        &client,
        TAG,
        "Complete",
        Duration::from_secs(1800),
        &[&agent],
    )
    .await;
    let total = started.elapsed().as_secs_f64();
    let pid = agent.child.id();
    let rss_mib = peak_rss_kib(pid) as f64 / 1024.0;
    let cpu = cpu_seconds(pid);
    tokio::time::sleep(Duration::from_secs(1)).await; // let the audit log flush
    agent.kill();
    let status = done.status.expect("status");
    assert_eq!(status.target_revision.as_deref(), Some(target.as_str()));
    let status_bytes = serde_json::to_vec(&status).map(|v| v.len()).unwrap_or(0);

    let requests = support::audit::count_requests(&audit_log, offset, "ztunnel-rollout/");
    let all: usize = requests.values().sum();
    let evictions = requests.get("create pods/eviction").copied().unwrap_or(0);
    let per_node_path = APP_EXIT + ZTUNNEL_EXIT + ZTUNNEL_CREATED + ZTUNNEL_READY;
    let batches: usize = per_zone.iter().map(|n| n.div_ceil((n / 10).max(1))).sum();
    let lower_bound = batches as f64 * per_node_path;
    let pods = DEPLOYMENTS * REPLICAS as usize;

    println!(
        "\nRollout of {NODES} nodes in {} zones, {pods} application pods under PDBs (maxUnavailable 25%), maxUnavailable 10% per wave\n",
        ZONES.len()
    );
    println!("| figure | value |\n|---|---|");
    println!(
        "| nodes done | {} of {} |",
        status.counts.done, status.counts.total
    );
    println!("| total time | {total:.1} s |");
    println!(
        "| critical-path lower bound | {lower_bound:.1} s ({batches} batches × {per_node_path:.1} s: app exit {APP_EXIT}, ztunnel exit {ZTUNNEL_EXIT}, created {ZTUNNEL_CREATED}, Ready {ZTUNNEL_READY}) |"
    );
    println!("| ratio | {:.2} |", total / lower_bound);
    println!("| agent peak RSS | {rss_mib:.1} MiB |");
    println!("| agent CPU | {cpu:.1} s |");
    println!(
        "| API requests | {all} ({:.1} per node without evictions; {evictions} evictions, {:.2} per pod) |",
        (all - evictions) as f64 / NODES as f64,
        evictions as f64 / pods as f64
    );
    println!("| status size | {status_bytes} bytes |");
    let verbs: Vec<String> = requests.iter().map(|(k, v)| format!("{k}: {v}")).collect();
    println!("\nrequests by verb: {}", verbs.join(", "));
    drop(cluster);
}
