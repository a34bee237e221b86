//! Drain benchmark: a node with 100 application pods, drained by `ztunnel-rollout drain`
//! and by `kubectl drain` on identical node sets of one local cluster. Prints wall time
//! against the pods' inherent termination time, and API requests per tool (from the API
//! server's audit log). `BENCH_RUNS` (5) rounds, the tools alternating which goes first;
//! `BENCH_RESULTS=FILE` writes every drain and the spreads as JSON. Run: `cargo bench
//! --bench drain` (after e2e/build-control-plane.sh), or `e2e/bench.sh drain`.

#[path = "../tests/support/mod.rs"]
mod support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment};
use k8s_openapi::api::core::v1::{Namespace, Node};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::{Api, Client};
use ztunnel_rollout_testbed::control_plane::client_for;
use ztunnel_rollout_testbed::fixtures::{self, AppFixture, Budget, NODE_SET_LABEL, ZtunnelFixture};
use ztunnel_rollout_testbed::run_record::{self, Spread};

const DEPLOYMENTS: usize = 10;
const REPLICAS: i32 = 10;
/// Seconds each application pod takes to exit after SIGTERM (KWOK stage, explicit).
const EXIT_SECONDS: f64 = 2.0;
/// KWOK's defaults in local-cluster: scheduled → created → Ready.
const REPLACEMENT_READY_SECONDS: f64 = 0.1 + 0.5;

#[derive(Clone, Copy, PartialEq)]
#[repr(u8)]
enum Tool {
    ZtunnelRollout,
    Kubectl,
}

impl Tool {
    fn name(self) -> &'static str {
        match self {
            Tool::ZtunnelRollout => "ztunnel-rollout drain",
            Tool::Kubectl => "kubectl drain",
        }
    }
    fn user_agent_prefix(self) -> &'static str {
        match self {
            Tool::ZtunnelRollout => "ztunnel-rollout/",
            Tool::Kubectl => "kubectl/",
        }
    }
}

struct Row {
    /// Which alternating round (0-based) this drain was in.
    round: usize,
    tool: Tool,
    pdb: bool,
    wall: Duration,
    lower_bound: f64,
    requests: BTreeMap<String, usize>,
    ok: bool,
}

async fn wait<K, C>(api: &Api<K>, name: &str, cond: C)
where
    K: kube::Resource + Clone + std::fmt::Debug + serde::de::DeserializeOwned + Send + 'static,
    K::DynamicType: Default + Eq + std::hash::Hash + Clone,
    C: kube::runtime::wait::Condition<K>,
{
    support::wait_within(api, name, name, Duration::from_secs(120), cond).await;
}

/// Three nodes of a set of their own; 10 Deployments × 10 replicas, all on the first.
async fn scenario(client: &Client, set: &str, pdb: bool) -> String {
    let nodes: Api<Node> = Api::all(client.clone());
    let all = fixtures::zoned_nodes(&format!("{set}-"), 3, &["a", "b", "c"], set);
    let names: Vec<String> = all
        .iter()
        .map(|n| n.metadata.name.clone().unwrap_or_default())
        .collect();
    for n in &all {
        fixtures::apply(&nodes, n).await.expect("node");
    }
    for n in &names {
        wait(&nodes, n, support::node_ready).await;
    }
    let ns: Api<Namespace> = Api::all(client.clone());
    fixtures::apply(&ns, &fixtures::namespace(set, BTreeMap::new()))
        .await
        .expect("namespace");
    let selector = BTreeMap::from([(NODE_SET_LABEL.to_owned(), set.to_owned())]);
    let mut ztunnel = ZtunnelFixture::new(set, "1.28.0");
    ztunnel.node_selector = selector.clone();
    fixtures::apply(
        &Api::<DaemonSet>::namespaced(client.clone(), set),
        &ztunnel.daemonset(),
    )
    .await
    .expect("ztunnel");

    for spare in &names[1..] {
        support::set_unschedulable(client, spare, true).await;
    }
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), set);
    let pdbs: Api<PodDisruptionBudget> = Api::namespaced(client.clone(), set);
    for i in 0..DEPLOYMENTS {
        let name = format!("app-{i}");
        let mut app = AppFixture::new(set, &name, REPLICAS);
        app.node_selector = selector.clone();
        app.exit_after_seconds = EXIT_SECONDS;
        fixtures::apply(&deployments, &app.deployment())
            .await
            .expect("deployment");
        if pdb {
            let labels = BTreeMap::from([("app".to_owned(), name.clone())]);
            let budget = Budget::MaxUnavailable(IntOrString::String("50%".into()));
            fixtures::apply(&pdbs, &fixtures::pdb(set, &name, labels, budget))
                .await
                .expect("pdb");
        }
    }
    for i in 0..DEPLOYMENTS {
        let name = format!("app-{i}");
        wait(&deployments, &name, |d: Option<&Deployment>| {
            d.and_then(|d| d.status.as_ref())
                .is_some_and(|s| s.available_replicas == Some(REPLICAS))
        })
        .await;
        if pdb {
            wait(&pdbs, &name, |p: Option<&PodDisruptionBudget>| {
                p.and_then(|p| p.status.as_ref())
                    .is_some_and(|s| s.current_healthy == Some(REPLICAS))
            })
            .await;
        }
    }
    for spare in &names[1..] {
        support::set_unschedulable(client, spare, false).await;
    }
    names[0].clone()
}

/// Per-phase figures from our JSON report: last eviction accepted, last pod gone, 429s.
fn breakdown(stdout: &[u8]) -> Option<String> {
    let report: serde_json::Value = serde_json::from_slice(stdout).ok()?;
    let pods = report["pods"].as_array()?;
    let max = |key: &str| {
        pods.iter()
            .filter_map(|p| p[key].as_u64())
            .max()
            .unwrap_or(0) as f64
            / 1000.0
    };
    let refused: u64 = pods
        .iter()
        .filter_map(|p| p["refusedByBudget"].as_u64())
        .sum();
    Some(format!(
        "drain {:.2}s in-process: last eviction accepted at {:.2}s, last pod gone at {:.2}s, {refused} answers 429",
        report["elapsedMs"].as_f64()? / 1000.0,
        max("evictedAfterMs"),
        max("goneAfterMs"),
    ))
}

fn run_tool(tool: Tool, node: &str, kubeconfig: &Path) -> bool {
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let mut cmd = match tool {
        Tool::ZtunnelRollout => {
            let mut c = Command::new(env!("CARGO_BIN_EXE_ztunnel-rollout"));
            c.args([
                "drain",
                node,
                "--timeout",
                "5m",
                "--delete-emptydir-data",
                "--force",
                "-o",
                "json",
            ]);
            c
        }
        Tool::Kubectl => {
            let mut c = Command::new(repo.join("e2e/bin/kubectl"));
            c.args([
                "drain",
                node,
                "--ignore-daemonsets",
                "--delete-emptydir-data",
                "--force",
                "--timeout=5m",
            ]);
            c
        }
    };
    let out = cmd
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .output()
        .expect("run drain");
    if tool == Tool::ZtunnelRollout {
        eprintln!(
            "  {}",
            breakdown(&out.stdout).unwrap_or_else(|| format!(
                "no JSON report in {:?}",
                String::from_utf8_lossy(&out.stdout[..out.stdout.len().min(300)])
            ))
        );
    }
    if !out.status.success() {
        eprintln!(
            "{} failed:\n{}\n{}",
            tool.name(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    out.status.success()
}

#[tokio::main]
async fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let cluster = support::start_supervisor("bench-drain", &["--audit-log"])
        .unwrap_or_else(|e| panic!("{e}"));
    let kubeconfig = PathBuf::from(cluster.ready["kubeconfig"].as_str().expect("kubeconfig"));
    let audit_log =
        PathBuf::from(cluster.ready["stateDir"].as_str().expect("stateDir")).join("audit.log");
    let client = client_for(&kubeconfig).await.expect("client");

    // Rounds of four drains (each tool, with and without PDBs), each on fresh nodes;
    // the tools alternate which goes first, so neither always meets the cluster busier.
    let rounds = run_record::runs_from_env(5);
    let mut rows = Vec::new();
    for round in 0..rounds {
        let tools = if round.is_multiple_of(2) {
            [Tool::ZtunnelRollout, Tool::Kubectl]
        } else {
            [Tool::Kubectl, Tool::ZtunnelRollout]
        };
        for pdb in [false, true] {
            for tool in tools {
                let set = format!("bench-{round}-{}-{}", u8::from(pdb), tool as u8);
                let node = scenario(&client, &set, pdb).await;
                let offset = std::fs::metadata(&audit_log).map(|m| m.len()).unwrap_or(0);
                let started = Instant::now();
                let ok = run_tool(tool, &node, &kubeconfig);
                let wall = started.elapsed();
                tokio::time::sleep(Duration::from_secs(1)).await; // let the audit log flush
                let requests =
                    support::audit::count_requests(&audit_log, offset, tool.user_agent_prefix());
                let lower_bound = if pdb {
                    EXIT_SECONDS + REPLACEMENT_READY_SECONDS
                } else {
                    EXIT_SECONDS
                };
                eprintln!(
                    "round {}: {} (PDBs: {pdb}): {:.2}s",
                    round + 1,
                    tool.name(),
                    wall.as_secs_f64()
                );
                rows.push(Row {
                    round,
                    tool,
                    pdb,
                    wall,
                    lower_bound,
                    requests,
                    ok,
                });
            }
        }
    }

    println!(
        "\nDrain of one node with {} application pods ({} Deployments x {REPLICAS}), pod exit time {EXIT_SECONDS}s, {rounds} alternating rounds\n",
        DEPLOYMENTS * REPLICAS as usize,
        DEPLOYMENTS
    );
    println!(
        "| tool | PDBs (maxUnavailable 50%) | drained | wall time: median (min–max) | lower bound | ratio (median) | API requests (median) |"
    );
    println!("|---|---|---|---|---|---|---|");
    let mut summary = Vec::new();
    for pdb in [false, true] {
        for tool in [Tool::ZtunnelRollout, Tool::Kubectl] {
            let mine: Vec<&Row> = rows
                .iter()
                .filter(|r| r.tool == tool && r.pdb == pdb)
                .collect();
            // A drain that failed has no time to compare: counted apart, left out.
            let walls: Vec<f64> = mine
                .iter()
                .filter(|r| r.ok)
                .map(|r| r.wall.as_secs_f64())
                .collect();
            let requests: Vec<f64> = mine
                .iter()
                .filter(|r| r.ok)
                .map(|r| r.requests.values().sum::<usize>() as f64)
                .collect();
            let (Some(wall), Some(req)) = (Spread::of(&walls), Spread::of(&requests)) else {
                println!(
                    "| {} | {} | 0 of {} | - | - | - | - |",
                    tool.name(),
                    if pdb { "yes" } else { "no" },
                    mine.len()
                );
                continue;
            };
            let bound = mine.first().map_or(f64::NAN, |r| r.lower_bound);
            let drained = mine.iter().filter(|r| r.ok).count();
            println!(
                "| {} | {} | {drained} of {} | {} | {bound:.2}s | {:.2} | {:.0} ({:.0}–{:.0}) |",
                tool.name(),
                if pdb { "yes" } else { "no" },
                mine.len(),
                wall.text(2, "s"),
                wall.median / bound,
                req.median,
                req.min,
                req.max,
            );
            summary.push(serde_json::json!({
                "tool": tool.name(),
                "pdbs": pdb,
                "drained": drained,
                "wall_seconds": wall,
                "lower_bound_seconds": bound,
                "ratio_median": wall.median / bound,
                "api_requests": req,
            }));
        }
    }
    println!("\nEvery drain, in the order run:\n");
    println!("| round | tool | PDBs | drained | wall time | ratio | API requests | by verb |");
    println!("|---|---|---|---|---|---|---|---|");
    for r in &rows {
        let total: usize = r.requests.values().sum();
        let verbs: Vec<String> = r
            .requests
            .iter()
            .map(|(k, v)| format!("{k}: {v}"))
            .collect();
        println!(
            "| {} | {} | {} | {} | {:.2}s | {:.2} | {} | {} |",
            r.round + 1,
            r.tool.name(),
            if r.pdb { "yes" } else { "no" },
            if r.ok { "yes" } else { "NO" },
            r.wall.as_secs_f64(),
            r.wall.as_secs_f64() / r.lower_bound,
            total,
            verbs.join(", ")
        );
    }
    if let Ok(path) = std::env::var("BENCH_RESULTS") {
        let record = run_record::record(
            Path::new(env!("CARGO_MANIFEST_DIR")),
            serde_json::json!({
                "scenario": format!(
                    "one node, {} application pods, pod exit {EXIT_SECONDS} s; {rounds} alternating rounds",
                    DEPLOYMENTS * REPLICAS as usize
                ),
                "settings": { "BENCH_RUNS": rounds },
                "summary": summary,
                "drains": rows.iter().map(|r| serde_json::json!({
                    "round": r.round + 1,
                    "tool": r.tool.name(),
                    "pdbs": r.pdb,
                    "drained": r.ok,
                    "wall_seconds": r.wall.as_secs_f64(),
                    "lower_bound_seconds": r.lower_bound,
                    "requests_by_verb": r.requests,
                })).collect::<Vec<_>>(),
            }),
        );
        run_record::write(Path::new(&path), &record);
    }
    drop(cluster);
}
