//! The fault campaign (issue 20): randomized trials on the local control plane, judged by
//! checkers that do not trust the agent (`ztunnel_rollout_testbed::invariants`).
//!
//! `e2e/chaos.sh SEED TRIALS` (or `cargo test --test chaos -- SEED TRIALS`); without
//! arguments (as `e2e/test.sh` runs it) a short campaign of [`CI_TRIALS`] trials from
//! [`CI_SEED`]. Each trial, from its own seed (printed, so a failing one replays):
//! - a fresh local cluster whose API server audits what the checkers read;
//! - a fleet of 12–30 nodes in three zones, a waypoint and two applications under
//!   PodDisruptionBudgets (the demo's fixtures), ztunnel moved to a new revision;
//! - two agent replicas, each behind its own fault-injecting proxy that connects from its
//!   own loopback address (127.0.0.2, 127.0.0.3), so the audit log tells them apart;
//! - a rollout, and 2–3 faults at random moments from the 17 kinds of [`Fault::ALL`]
//!   (two fixed by the seed so that any 17 consecutive seeds cover every kind twice, a
//!   third at random in a third of the trials): process and control-plane faults, the
//!   leader's API traffic broken, an operator cordoning or uncordoning nodes, a budget
//!   tightened, nodes deleted and added, ztunnel moved again, the rollout paused,
//!   aborted or deleted, a second rollout over one zone;
//! - then every checker: nothing left cordoned, ztunnel deleted only on cordoned nodes,
//!   no disruption beyond a budget, no write without the Lease, no double eviction, the
//!   rollouts at an end the trial's faults allow ([`Expect`]) within [`TRIAL_BOUND`],
//!   each replica's peak RSS within [`MEMORY_BOUND`].
//!
//! Prints one line per trial and a table per fault kind, writes every figure to
//! `target/chaos/chaos-SEED-TRIALS.json` (or `CHAOS_RESULTS`), and fails on any violation.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use http::Method;
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Node;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use kube::{Api, Client};
use serde_json::{Value, json};
use support::fault_proxy::{Fault as ProxyFault, FaultProxy, Rule};
use ztunnel_rollout::api::ZtunnelRollout;
use ztunnel_rollout::api::manifests::{NAME, NAMESPACE};
use ztunnel_rollout_core::api::rollout::NodePhase;
use ztunnel_rollout_core::labels::OWNER_ANNOTATION;
use ztunnel_rollout_testbed::control_plane::client_for;
use ztunnel_rollout_testbed::control_socket;
use ztunnel_rollout_testbed::fixtures;
use ztunnel_rollout_testbed::invariants::audit::{AuditEvent, read_events};
use ztunnel_rollout_testbed::invariants::leadership::Election;
use ztunnel_rollout_testbed::invariants::{
    Invariant, Violation, budgets, cordons, evictions, leadership, memory, service_account_user,
};

const CI_SEED: u64 = 20_261_202;
const CI_TRIALS: u64 = 6;
/// A trial's rollout must be Complete this long after it was created.
const TRIAL_BOUND: Duration = Duration::from_secs(300);
const MEMORY_BOUND: u64 = 256 << 20;
const LEASE_DURATION: Duration = Duration::from_secs(6);
const LEASE: &str = "chaos";
const REPLICAS: [(&str, Ipv4Addr); 2] = [
    ("replica-a", Ipv4Addr::new(127, 0, 0, 2)),
    ("replica-b", Ipv4Addr::new(127, 0, 0, 3)),
];

/// A small deterministic generator (SplitMix64): the seed fixes every choice.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// In `lo..=hi`.
    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo + 1)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Fault {
    LeaderKill,
    LeaderPause,
    ApiServerRestart,
    EtcdRestart,
    ControllerManagerRestart,
    ProxyFaults,
    WatchCut,
    OperatorCordon,
    OperatorUncordon,
    BudgetTightened,
    NodeDeleted,
    NodeAdded,
    DaemonSetMoved,
    RolloutPauseResume,
    RolloutAbort,
    RolloutDelete,
    SecondRollout,
}

impl Fault {
    /// In the order that pairs them: the trial with seed `s` starts with kinds `2s` and
    /// `2s + 1` (mod the count), so neighbours here meet in a trial, and any
    /// `ALL.len()` consecutive seeds draw every kind twice.
    const ALL: [Fault; 17] = [
        Fault::LeaderKill,
        Fault::OperatorUncordon,
        Fault::ApiServerRestart,
        Fault::BudgetTightened,
        Fault::LeaderPause,
        Fault::DaemonSetMoved,
        Fault::EtcdRestart,
        Fault::SecondRollout,
        Fault::ProxyFaults,
        Fault::NodeDeleted,
        Fault::WatchCut,
        Fault::RolloutAbort,
        Fault::ControllerManagerRestart,
        Fault::NodeAdded,
        Fault::OperatorCordon,
        Fault::RolloutDelete,
        Fault::RolloutPauseResume,
    ];

    fn name(self) -> &'static str {
        match self {
            Fault::LeaderKill => "leader SIGKILL",
            Fault::LeaderPause => "leader SIGSTOP past the lease",
            Fault::ApiServerRestart => "kube-apiserver restart",
            Fault::EtcdRestart => "etcd SIGKILL + restart",
            Fault::ControllerManagerRestart => "controller-manager restart",
            Fault::ProxyFaults => "proxy: latency, resets, 503, 429, lost answers",
            Fault::WatchCut => "proxy: watch streams cut",
            Fault::OperatorCordon => "operator cordons a node, later uncordons it",
            Fault::OperatorUncordon => "operator uncordons a node the rollout cordoned",
            Fault::BudgetTightened => "PDB tightened to maxUnavailable 0, later restored",
            Fault::NodeDeleted => "node deleted",
            Fault::NodeAdded => "node added",
            Fault::DaemonSetMoved => "DaemonSet moved to another revision",
            Fault::RolloutPauseResume => "rollout paused, resumed",
            Fault::RolloutAbort => "rollout aborted",
            Fault::RolloutDelete => "rollout deleted",
            Fault::SecondRollout => "second rollout over one zone's nodes",
        }
    }

    /// The trial's faults: kinds `2s` and `2s + 1` of [`Fault::ALL`], and in a third of
    /// the trials a third one drawn at random; at random moments 2–30 s after the
    /// rollout was created, an abort or a deletion last.
    fn planned(seed: u64, rng: &mut Rng) -> Vec<(Duration, Fault)> {
        let n = Fault::ALL.len() as u64;
        let mut kinds = vec![
            Fault::ALL[((2 * seed) % n) as usize],
            Fault::ALL[((2 * seed + 1) % n) as usize],
        ];
        if rng.range(0, 2) == 0 {
            kinds.push(Fault::ALL[rng.range(0, n - 1) as usize]);
        }
        let mut moments: Vec<Duration> = kinds
            .iter()
            .map(|_| Duration::from_millis(rng.range(2_000, 30_000)))
            .collect();
        moments.sort();
        // An abort or a deletion ends the rollout: it comes last, so the trial's other
        // faults still meet a running rollout.
        kinds.sort_by_key(|k| matches!(k, Fault::RolloutAbort | Fault::RolloutDelete));
        moments.into_iter().zip(kinds).collect()
    }
}

struct Replica {
    identity: &'static str,
    child: Child,
    proxy: FaultProxy,
    kubeconfig: PathBuf,
    log: PathBuf,
}

#[derive(Debug, serde::Serialize)]
struct Injected {
    fault: &'static str,
    /// Milliseconds after the rollout was created.
    at_ms: u128,
    /// The first rollout's phase when the fault came (a fault after Complete, Aborted or
    /// deleted tests little).
    rollout_phase: String,
    /// Milliseconds from the fault to the next node a rollout finished, or to the
    /// rollouts reaching an end the trial allows (Complete, Aborted, deleted, paused by
    /// a tightened budget); `None` if neither came.
    recovered_ms: Option<u128>,
    detail: String,
}

#[derive(Debug, serde::Serialize)]
struct TrialResult {
    seed: u64,
    nodes: usize,
    max_unavailable: u64,
    faults: Vec<Injected>,
    phase: Option<String>,
    second_phase: Option<String>,
    duration_ms: u128,
    peak_rss_bytes: BTreeMap<&'static str, u64>,
    /// The faults each replica's proxy injected, by kind.
    proxy_injections: BTreeMap<&'static str, BTreeMap<String, usize>>,
    /// The first rollout's Complete against the DaemonSet's counts, if it completed.
    daemonset_check: Option<String>,
    audit_events: usize,
    violations: Vec<String>,
}

fn main() {
    let all: Vec<String> = std::env::args().skip(1).collect();
    if all.iter().any(|a| a == "--list") {
        println!("chaos: test");
        return;
    }
    let args: Vec<String> = all.into_iter().filter(|a| !a.starts_with('-')).collect();
    // `cargo test NAME` passes NAME to every test binary: a filter that is not this
    // campaign's name runs nothing here, as in any other test binary.
    if let Some(filter) = args.iter().find(|a| a.parse::<u64>().is_err())
        && !"chaos".contains(filter.as_str())
    {
        println!("chaos: 0 trials (filter {filter:?})");
        return;
    }
    let args: Vec<String> = args
        .into_iter()
        .filter(|a| a.parse::<u64>().is_ok())
        .collect();
    let number = |i: usize, default: u64| {
        args.get(i).map_or(default, |a| {
            a.parse()
                .unwrap_or_else(|_| panic!("argument {}: not a number: {a:?}", i + 1))
        })
    };
    let (seed, trials) = (number(0, CI_SEED), number(1, CI_TRIALS));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    println!("chaos: {trials} trials from seed {seed}");
    let mut results = Vec::new();
    for i in 0..trials {
        let trial_seed = seed + i;
        let started = Instant::now();
        let result = runtime.block_on(trial(trial_seed));
        println!(
            "trial seed={} nodes={} faults=[{}] phase={}{} {:.0}s violations={}",
            result.seed,
            result.nodes,
            result
                .faults
                .iter()
                .map(|f| f.fault)
                .collect::<Vec<_>>()
                .join(", "),
            result.phase.as_deref().unwrap_or("-"),
            result
                .second_phase
                .as_deref()
                .map_or(String::new(), |p| format!(" second={p}")),
            started.elapsed().as_secs_f64(),
            result.violations.len()
        );
        for v in &result.violations {
            println!("  VIOLATION {v}");
        }
        results.push(result);
    }
    let summary = summarize(&results);
    print_table(&summary);
    let out = std::env::var_os("CHAOS_RESULTS").map_or_else(
        || {
            PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("target/chaos")
                .join(format!("chaos-{seed}-{trials}.json"))
        },
        PathBuf::from,
    );
    if let Some(dir) = out.parent() {
        std::fs::create_dir_all(dir).expect("results directory");
    }
    let doc = json!({
        "campaign": "chaos",
        "seed": seed,
        "trials": trials,
        "commit": git_commit(),
        "date": k8s_openapi::jiff::Timestamp::now().to_string(),
        "machine": machine(),
        "summary": summary,
        "results": results,
    });
    std::fs::write(&out, serde_json::to_string_pretty(&doc).expect("JSON")).expect("write");
    println!("chaos: results in {}", out.display());
    let violations: usize = results.iter().map(|r| r.violations.len()).sum();
    if violations > 0 {
        println!("chaos: {violations} violations");
        std::process::exit(1);
    }
}

fn git_commit() -> String {
    Command::new("git")
        .args(["rev-parse", "HEAD"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default()
}

fn machine() -> Value {
    let memory = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        })
        .map(|kib| kib * 1024);
    json!({
        "cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "memory_bytes": memory,
    })
}

/// Per fault kind: trials it was in, injections (and how many came while the first
/// rollout was still running), violations in those trials, recovery p50 / max.
fn summarize(results: &[TrialResult]) -> Value {
    #[derive(Default)]
    struct Kind {
        trials: usize,
        injections: usize,
        while_running: usize,
        violations: usize,
        recovered: Vec<u128>,
        not_recovered: usize,
    }
    let mut kinds: BTreeMap<&str, Kind> = BTreeMap::new();
    for r in results {
        let mut seen = BTreeSet::new();
        for f in &r.faults {
            let k = kinds.entry(f.fault).or_default();
            if seen.insert(f.fault) {
                k.trials += 1;
                k.violations += r.violations.len();
            }
            k.injections += 1;
            if !["Complete", "Aborted", "deleted"].contains(&f.rollout_phase.as_str()) {
                k.while_running += 1;
            }
            match f.recovered_ms {
                Some(ms) => k.recovered.push(ms),
                None => k.not_recovered += 1,
            }
        }
    }
    let rows: Vec<Value> = kinds
        .into_iter()
        .map(|(kind, mut k)| {
            k.recovered.sort_unstable();
            json!({
                "fault": kind, "trials": k.trials, "injections": k.injections,
                "while_running": k.while_running, "violations": k.violations,
                "recovered_p50_ms": k.recovered.get(k.recovered.len() / 2),
                "recovered_max_ms": k.recovered.last(),
                "not_recovered": k.not_recovered,
            })
        })
        .collect();
    json!({
        "trials": results.len(),
        "violations": results.iter().map(|r| r.violations.len()).sum::<usize>(),
        "by_fault": rows,
    })
}

fn print_table(summary: &Value) {
    println!(
        "| fault | trials | injections | while the rollout ran | violations | recovery p50 | recovery max |"
    );
    println!("|---|---|---|---|---|---|---|");
    let secs = |v: &Value| {
        v.as_u64()
            .map_or("-".to_owned(), |ms| format!("{:.1} s", ms as f64 / 1000.0))
    };
    for row in summary["by_fault"].as_array().into_iter().flatten() {
        println!(
            "| {} | {} | {} | {} | {} | {} | {} |",
            row["fault"].as_str().unwrap_or(""),
            row["trials"],
            row["injections"],
            row["while_running"],
            row["violations"],
            secs(&row["recovered_p50_ms"]),
            secs(&row["recovered_max_ms"]),
        );
    }
    println!(
        "chaos: {} trials, {} violations",
        summary["trials"], summary["violations"]
    );
}

/// A kubeconfig for `proxy` acting as the agent's ServiceAccount (the proxy
/// authenticates upstream as the cluster's admin, which may impersonate).
fn agent_kubeconfig(proxy: &FaultProxy, dir: &Path, name: &str) -> PathBuf {
    let doc = json!({
        "apiVersion": "v1", "kind": "Config", "current-context": "agent",
        "clusters": [{ "name": "proxy", "cluster": {
            "server": proxy.server_url(),
            "certificate-authority-data":
                base64::engine::general_purpose::STANDARD.encode(proxy.ca_pem()),
        } }],
        "users": [{ "name": "agent", "user": {
            "as": service_account_user(NAMESPACE, NAME),
            "as-groups": ["system:serviceaccounts",
                          format!("system:serviceaccounts:{NAMESPACE}"),
                          "system:authenticated"],
        } }],
        "contexts": [{ "name": "agent", "context": { "cluster": "proxy", "user": "agent" } }],
    });
    let path = dir.join(format!("{name}.kubeconfig"));
    std::fs::write(&path, doc.to_string()).expect("write kubeconfig");
    path
}

fn start_agent(identity: &str, kubeconfig: &Path, tag: &str, log: &Path) -> Child {
    use std::os::unix::process::CommandExt;
    let metrics = format!(
        "127.0.0.1:{}",
        ztunnel_rollout_testbed::control_plane::free_port().expect("port")
    );
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ztunnel-rollout"));
    cmd.args(["agent", "--kubeconfig"])
        .arg(kubeconfig)
        .args(support::agent::flags(tag, LEASE, identity, &metrics))
        .args([
            "--lease-duration",
            &format!("{}s", LEASE_DURATION.as_secs()),
        ])
        // The Lease the audit policy records in full and the checker reads.
        .args(["--lease-namespace", NAMESPACE])
        .env("RUST_LOG", "warn,ztunnel_rollout=info")
        .env_remove("KUBECONFIG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(log)
                .expect("agent log"),
        );
    // SAFETY: prctl is async-signal-safe; the agent dies with this process.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd.spawn().expect("start the agent")
}

fn signal(child: &Child, sig: libc::c_int) {
    // SAFETY: plain kill(2) on our own child.
    unsafe {
        libc::kill(child.id() as libc::pid_t, sig);
    }
}

async fn leader(client: &Client) -> Option<String> {
    Api::<Lease>::namespaced(client.clone(), NAMESPACE)
        .get_opt(LEASE)
        .await
        .ok()
        .flatten()
        .and_then(|l| l.spec?.holder_identity)
}

/// A rollout as the harness's own client (not through the proxies) last saw it.
#[derive(Debug, Clone)]
enum Seen {
    /// The API server's NotFound.
    Gone,
    At {
        phase: Option<String>,
        /// The generation of the spec the agent last wrote status for.
        observed_generation: Option<i64>,
        done: u32,
        /// Nodes in flight or baking: a paused rollout lets them finish.
        busy: u32,
        /// The conditions' reasons.
        reasons: Vec<String>,
        /// The failed nodes' messages.
        failures: Vec<String>,
    },
}

impl Seen {
    fn phase(&self) -> &str {
        match self {
            Seen::Gone => "deleted",
            Seen::At { phase, .. } => phase.as_deref().unwrap_or("no phase yet"),
        }
    }

    fn at_rest(&self) -> bool {
        match self {
            Seen::Gone => true,
            Seen::At { busy, .. } => *busy == 0,
        }
    }

    fn done(&self) -> u32 {
        match self {
            Seen::Gone => 0,
            Seen::At { done, .. } => *done,
        }
    }
}

/// For a trial that did not end: the rollouts' conditions and unfinished nodes, every
/// unschedulable node's pods, and the budgets, as the API server has them.
async fn print_stuck(client: &Client, rollouts: &Api<ZtunnelRollout>) {
    use k8s_openapi::api::core::v1::Pod;
    println!("--- what the trial ended on");
    // What could not be read is said, not skipped.
    fn items<T>(what: &str, listed: Result<kube::core::ObjectList<T>, kube::Error>) -> Vec<T>
    where
        T: Clone,
    {
        listed.map(|l| l.items).unwrap_or_else(|e| {
            println!("listing {what}: {e}");
            Vec::new()
        })
    }
    for r in items("the rollouts", rollouts.list(&ListParams::default()).await) {
        let name = r.metadata.name.clone().unwrap_or_default();
        let status = r.status.unwrap_or_default();
        for c in &status.conditions {
            println!(
                "rollout {name}: {} {} {}: {}",
                c.type_, c.status, c.reason, c.message
            );
        }
        for n in status.nodes.iter().filter(|n| n.phase != NodePhase::Done) {
            println!(
                "rollout {name}: node {} {:?}: {}",
                n.name, n.phase, n.message
            );
        }
    }
    let nodes = Api::<Node>::all(client.clone())
        .list(&ListParams::default())
        .await;
    let cordoned: BTreeSet<String> = items("the nodes", nodes)
        .into_iter()
        .filter(|n| n.spec.as_ref().and_then(|s| s.unschedulable) == Some(true))
        .filter_map(|n| n.metadata.name)
        .collect();
    // One list of every pod, read for the cordoned nodes.
    let pods = Api::<Pod>::all(client.clone())
        .list(&ListParams::default())
        .await;
    for p in items("the pods", pods) {
        let Some(name) = p
            .spec
            .as_ref()
            .and_then(|s| s.node_name.clone())
            .filter(|n| cordoned.contains(n))
        else {
            continue;
        };
        let status = p.status.unwrap_or_default();
        let ready = status
            .conditions
            .unwrap_or_default()
            .into_iter()
            .find(|c| c.type_ == "Ready")
            .map_or_else(
                || "no Ready condition".to_owned(),
                |c| format!("Ready={}", c.status),
            );
        println!(
            "node {name} (unschedulable): pod {}/{} {} {ready}{}",
            p.metadata.namespace.unwrap_or_default(),
            p.metadata.name.unwrap_or_default(),
            status.phase.unwrap_or_default(),
            p.metadata
                .deletion_timestamp
                .map_or_else(String::new, |t| format!(" deleting since {}", t.0)),
        );
    }
    let budgets: Api<PodDisruptionBudget> = Api::all(client.clone());
    for b in items("the budgets", budgets.list(&ListParams::default()).await) {
        let s = b.status.unwrap_or_default();
        println!(
            "budget {}/{}: healthy {:?} of {:?} desired, {:?} disruptions allowed, observed generation {:?}",
            b.metadata.namespace.unwrap_or_default(),
            b.metadata.name.unwrap_or_default(),
            s.current_healthy,
            s.desired_healthy,
            s.disruptions_allowed,
            s.observed_generation,
        );
    }
}

/// `None` while the API server does not answer.
async fn observe(rollouts: &Api<ZtunnelRollout>, name: &str) -> Option<Seen> {
    let r = tokio::time::timeout(Duration::from_secs(3), rollouts.get_opt(name))
        .await
        .ok()?
        .ok()?;
    let Some(r) = r else {
        return Some(Seen::Gone);
    };
    let status = r.status.unwrap_or_default();
    Some(Seen::At {
        phase: status.phase,
        observed_generation: status.observed_generation,
        done: status.counts.done,
        busy: status.counts.in_flight + status.counts.baking,
        reasons: status.conditions.iter().map(|c| c.reason.clone()).collect(),
        failures: status
            .nodes
            .iter()
            .filter(|n| n.phase == NodePhase::Failed)
            .map(|n| format!("{}: {}", n.name, n.message))
            .collect(),
    })
}

/// What the trial's faults changed about how its rollouts may end.
#[derive(Debug, Default)]
struct Expect {
    /// The rollout's generation with `spec.abort: true`.
    abort_generation: Option<i64>,
    deleted: bool,
    /// Budgets tightened to allow nothing: a node whose pre-cordon check saw one fails,
    /// untouched, and with `maxFailedNodes: 0` pauses its rollout (README, "Blockers
    /// are found before the cordon").
    tightened: BTreeSet<String>,
    /// The second rollout, once created.
    second: Option<String>,
}

impl Expect {
    /// Paused because nodes failed, each on a budget this trial tightened, and no node
    /// is in flight any more (a pause lets them finish).
    fn paused_by_tightened_budget(&self, seen: &Seen) -> bool {
        match seen {
            Seen::At {
                phase, failures, ..
            } if phase.as_deref() == Some("Paused") => {
                !failures.is_empty()
                    && failures
                        .iter()
                        .all(|f| self.tightened.iter().any(|b| f.contains(b.as_str())))
                    && seen.at_rest()
            }
            _ => false,
        }
    }

    /// The first rollout is where this trial lets it end: deleted if the trial deleted
    /// it (its finalizer must go, whatever its phase); Complete — before it saw an
    /// abort, if the trial aborted it; Aborted if aborted (the agent writes Aborted once
    /// it released the nodes); paused by a tightened budget.
    fn main_settled(&self, seen: &Seen) -> bool {
        if self.deleted {
            return matches!(seen, Seen::Gone);
        }
        match seen {
            Seen::Gone => false,
            Seen::At {
                phase,
                observed_generation,
                ..
            } => match phase.as_deref() {
                Some("Complete") => match self.abort_generation {
                    Some(aborted) => observed_generation.is_some_and(|g| g < aborted),
                    None => true,
                },
                Some("Aborted") => self.abort_generation.is_some(),
                Some("Paused") => self.paused_by_tightened_budget(seen),
                _ => false,
            },
        }
    }

    /// The second rollout is Complete, or waits (Blocked, OverlapsRollout) behind a
    /// first one that a tightened budget paused, or was paused by one itself.
    fn second_settled(&self, seen: &Seen, main: &Seen) -> bool {
        match seen {
            Seen::Gone => false,
            Seen::At { phase, reasons, .. } => match phase.as_deref() {
                Some("Complete") => true,
                Some("Paused") => self.paused_by_tightened_budget(seen),
                Some("Blocked") => {
                    self.paused_by_tightened_budget(main)
                        && seen.at_rest()
                        && reasons.iter().any(|r| r == "OverlapsRollout")
                }
                _ => false,
            },
        }
    }
}

/// What the trial does later.
#[derive(Debug)]
enum Pending {
    /// SIGCONT to a paused replica.
    Resume(usize),
    /// The operator lifts their cordon.
    Uncordon(String),
    /// The tightened budget back to `maxUnavailable: 1`.
    RestoreBudget(String),
}

/// The trial's bed and what its faults did.
struct Trial {
    client: Client,
    socket: PathBuf,
    replicas: Vec<Replica>,
    tag: String,
    rollouts: Api<ZtunnelRollout>,
    rng: Rng,
    expect: Expect,
    pending: Vec<(Instant, Pending)>,
    /// Nodes the operator cordoned and had not uncordoned when the trial ended.
    operator_cordoned: BTreeSet<String>,
    /// Peaks of replica processes killed by a fault (read before the kill).
    peak_rss: BTreeMap<&'static str, u64>,
    last_resume: Option<Instant>,
    nodes_added: usize,
    daemonset_moves: usize,
}

const MAIN: &str = "chaos";
const SECOND: &str = "chaos-second";
const BUDGETS: [&str; 2] = ["productpage", "reviews"];

fn rollout_object(name: &str, tag: &str, selector: Value, max_unavailable: u64) -> ZtunnelRollout {
    serde_json::from_value(json!({
        "apiVersion": "ztunnel-rollout.dev/v1alpha1",
        "kind": "ZtunnelRollout",
        "metadata": { "name": name, "labels": { support::agent::TEST_LABEL: tag } },
        "spec": {
            "daemonSet": { "namespace": "istio-system", "name": "ztunnel" },
            "nodeSelector": { "matchLabels": selector },
            "waves": { "groupBy": fixtures::ZONE_LABEL, "maxUnavailable": max_unavailable },
            "health": { "soak": "1s", "interval": "1s" },
        },
    }))
    .expect("rollout")
}

fn ztunnel_version_patch(version: &str) -> Patch<Value> {
    Patch::Strategic(json!({ "spec": { "template": {
        "metadata": { "labels": { "app.kubernetes.io/version": version } },
        "spec": { "containers": [{ "name": "istio-proxy",
            "image": format!("docker.io/istio/ztunnel:{version}-distroless") }] } } } }))
}

async fn demo_nodes(client: &Client) -> Vec<Node> {
    Api::<Node>::all(client.clone())
        .list(&ListParams::default().labels(&format!("{}=demo", fixtures::NODE_SET_LABEL)))
        .await
        .map(|l| l.items)
        .unwrap_or_default()
}

async fn trial(seed: u64) -> TrialResult {
    let mut rng = Rng(seed);
    let nodes = rng.range(12, 30) as usize;
    let max_unavailable = rng.range(1, 3);
    let planned = Fault::planned(seed, &mut rng);

    let dir = tempfile::tempdir().expect("tempdir");
    let audit_log = dir.path().join("audit.log");
    let sup = support::start_supervisor(
        &format!("chaos-{seed}"),
        &[
            "--audit-invariants",
            NAMESPACE,
            "--audit-log-path",
            &audit_log.to_string_lossy(),
        ],
    )
    .expect("local cluster");
    let kubeconfig: PathBuf = sup.ready["kubeconfig"].as_str().expect("kubeconfig").into();
    let socket: PathBuf = sup.ready["control"].as_str().expect("control").into();
    let client = client_for(&kubeconfig).await.expect("client");

    // The fleet: the demo's fixtures, ready; then ztunnel moved to a new revision.
    fixtures::apply_demo(&client, nodes, "1.28.0")
        .await
        .expect("fleet");
    support::agent::install(&client).await;
    support::grant_ztunnel_role(&client, "istio-system").await;
    let daemonsets: Api<DaemonSet> = Api::namespaced(client.clone(), "istio-system");
    support::wait_for(
        &daemonsets,
        "ztunnel",
        "ztunnel on every node",
        support::daemonset_ready(nodes as i32),
    )
    .await;
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), "demo");
    for (app, replicas) in [("waypoint", 1), ("productpage", 3), ("reviews", 4)] {
        support::wait_for(
            &deployments,
            app,
            "application available",
            support::deployment_available(replicas),
        )
        .await;
    }
    daemonsets
        .patch(
            "ztunnel",
            &PatchParams::default(),
            &ztunnel_version_patch("1.28.1"),
        )
        .await
        .expect("upgrade ztunnel");
    // Read until the API server answers: an empty list would check nothing.
    let node_states = || async {
        let mut backoff = Duration::from_millis(200);
        let nodes = loop {
            match Api::<Node>::all(client.clone())
                .list(&ListParams::default().labels(&format!("{}=demo", fixtures::NODE_SET_LABEL)))
                .await
            {
                Ok(list) if !list.items.is_empty() => break list.items,
                other => {
                    assert!(
                        backoff < Duration::from_secs(20),
                        "the harness cannot list the fleet's nodes: {other:?}"
                    );
                    tokio::time::sleep(backoff).await;
                    backoff *= 2;
                }
            }
        };
        nodes
            .into_iter()
            .map(|n| {
                let name = n.metadata.name.clone().unwrap_or_default();
                (name, n.spec.and_then(|s| s.unschedulable).unwrap_or(false))
            })
            .collect::<BTreeMap<String, bool>>()
    };
    let before = node_states().await;

    // Two replicas, each behind its own proxy on its own source address.
    let tag = format!("chaos-{seed}");
    let mut replicas = Vec::new();
    for (identity, source) in REPLICAS {
        let proxy = FaultProxy::start_from(&kubeconfig, Some(source)).await;
        let agent_kubeconfig = agent_kubeconfig(&proxy, dir.path(), identity);
        let log =
            PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("chaos-{seed}-{identity}.log"));
        let _ = std::fs::remove_file(&log);
        let child = start_agent(identity, &agent_kubeconfig, &tag, &log);
        replicas.push(Replica {
            identity,
            child,
            proxy,
            kubeconfig: agent_kubeconfig,
            log,
        });
    }

    let rollouts: Api<ZtunnelRollout> = Api::all(client.clone());
    rollouts
        .create(
            &PostParams::default(),
            &rollout_object(
                MAIN,
                &tag,
                json!({ fixtures::NODE_SET_LABEL: "demo" }),
                max_unavailable,
            ),
        )
        .await
        .expect("create the rollout");
    let created = Instant::now();
    let mut t = Trial {
        client: client.clone(),
        socket,
        replicas,
        tag,
        rollouts,
        rng,
        expect: Expect::default(),
        pending: Vec::new(),
        operator_cordoned: BTreeSet::new(),
        peak_rss: BTreeMap::new(),
        last_resume: None,
        nodes_added: 0,
        daemonset_moves: 0,
    };

    // Faults at their moments; the rollouts watched by the harness's own client.
    let mut injected: Vec<(Instant, Injected)> = Vec::new();
    let mut seen: BTreeMap<&'static str, Seen> = BTreeMap::new();
    let mut replaced: BTreeMap<&'static str, u32> = BTreeMap::new();
    let mut next = 0;
    // The DaemonSet's generation when the first rollout was first seen Complete: the
    // claim is then checked against the DaemonSet's own counts.
    let mut generation_at_complete: Option<Option<i64>> = None;
    let settled = |expect: &Expect, seen: &BTreeMap<&'static str, Seen>| {
        let Some(main) = seen.get(MAIN) else {
            return false;
        };
        expect.main_settled(main)
            && (expect.second.is_none()
                || seen
                    .get(SECOND)
                    .is_some_and(|s| expect.second_settled(s, main)))
    };
    while created.elapsed() < TRIAL_BOUND {
        let mut progressed = false;
        for name in [MAIN, SECOND] {
            if name == SECOND && t.expect.second.is_none() {
                continue;
            }
            if let Some(now) = observe(&t.rollouts, name).await {
                let last = seen.get(name).map_or(0, Seen::done);
                progressed |= now.done() > last;
                let most = replaced.entry(name).or_default();
                *most = (*most).max(now.done());
                seen.insert(name, now);
            }
        }
        if generation_at_complete.is_none()
            && seen.get(MAIN).is_some_and(|s| s.phase() == "Complete")
        {
            generation_at_complete = Some(
                daemonsets
                    .get("ztunnel")
                    .await
                    .ok()
                    .and_then(|d| d.metadata.generation),
            );
        }
        let done = settled(&t.expect, &seen);
        if progressed || done {
            for (at, f) in injected.iter_mut() {
                f.recovered_ms.get_or_insert(at.elapsed().as_millis());
            }
        }
        if done && next == planned.len() && t.pending.is_empty() {
            break;
        }
        t.run_due().await;
        if next < planned.len() && created.elapsed() >= planned[next].0 {
            let fault = planned[next].1;
            next += 1;
            let at = Instant::now();
            let rollout_phase = seen
                .get(MAIN)
                .map_or("not read yet", Seen::phase)
                .to_owned();
            let detail = t.inject(fault, max_unavailable).await;
            injected.push((
                at,
                Injected {
                    fault: fault.name(),
                    at_ms: at.duration_since(created).as_millis(),
                    rollout_phase,
                    recovered_ms: None,
                    detail,
                },
            ));
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    for (_, p) in std::mem::take(&mut t.pending) {
        if let Pending::Resume(i) = p {
            signal(&t.replicas[i].child, libc::SIGCONT);
            t.last_resume = Some(Instant::now());
        }
    }
    let duration = created.elapsed();
    // A paused leader that resumed acts on what it knew before: give it a lease's time
    // to do so (or to find out it no longer leads) while the log records it.
    if let Some(resumed) = t.last_resume {
        let settle = LEASE_DURATION + Duration::from_secs(2);
        tokio::time::sleep(settle.saturating_sub(resumed.elapsed())).await;
    }

    // The checkers: the API server's state, its audit log, the kernel's memory counts.
    let mut violations: Vec<Violation> = Vec::new();
    if !settled(&t.expect, &seen) {
        let states: Vec<String> = seen
            .iter()
            .map(|(name, s)| format!("{name} is {}", s.phase()))
            .collect();
        violations.push(Violation::new(
            Invariant::Termination,
            format!(
                "after {TRIAL_BOUND:?}: {} — not an end this trial allows ({:?})",
                states.join(", "),
                t.expect
            ),
        ));
        // The CI log is all a failed run leaves: say what the rollout waits on.
        let read =
            tokio::time::timeout(Duration::from_secs(20), print_stuck(&t.client, &t.rollouts));
        if read.await.is_err() {
            println!("--- the API server did not answer within 20 s");
        }
        for r in &t.replicas {
            println!("--- the last lines of {}'s log", r.identity);
            println!(
                "{}",
                ztunnel_rollout_testbed::control_plane::tail(&r.log, 40)
            );
        }
    }
    let Trial {
        mut replicas,
        mut peak_rss,
        operator_cordoned,
        ..
    } = t;
    let mut proxy_injections: BTreeMap<&'static str, BTreeMap<String, usize>> = BTreeMap::new();
    for r in &mut replicas {
        // A replica that exited on its own (a crash) is a failure of its own; one that
        // runs has a peak the kernel counted.
        if let Ok(Some(status)) = r.child.try_wait() {
            violations.push(Violation::new(
                Invariant::BoundedMemory,
                format!("replica {} exited on its own ({status})", r.identity),
            ));
        }
        match memory::peak_rss(r.child.id()) {
            Ok(peak) => {
                let max = peak_rss.entry(r.identity).or_default();
                *max = (*max).max(peak);
            }
            Err(e) => violations.push(Violation::new(
                Invariant::BoundedMemory,
                format!("replica {}: {e}", r.identity),
            )),
        }
        r.proxy.stop_all();
        proxy_injections.insert(
            r.identity,
            r.proxy
                .counts()
                .into_iter()
                .map(|(kind, n)| (format!("{kind:?}"), n))
                .collect(),
        );
    }
    for (identity, peak) in &peak_rss {
        violations.extend(memory::over_bound(identity, *peak, MEMORY_BOUND));
    }
    // Stop the agents before the final read: a rollout Complete leaves nothing to do,
    // and what a replica does after it still counts (it is in the audit log).
    for r in &mut replicas {
        let _ = r.child.kill();
        let _ = r.child.wait();
    }
    let after = node_states().await;
    // "Complete" is the agent's word: judged by the DaemonSet controller's counts.
    let daemonset_check = match generation_at_complete {
        Some(generation) => {
            let (verdict, violation) = complete_per_daemonset(&daemonsets, generation).await;
            violations.extend(violation);
            Some(verdict)
        }
        None => None,
    };
    violations.extend(cordons::left_cordoned(&before, &after, &operator_cordoned));
    // The API server writes a request's event after answering it: read once the log
    // has stopped growing.
    let mut size = 0;
    for _ in 0..40 {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let now = std::fs::metadata(&audit_log).map(|m| m.len()).unwrap_or(0);
        if now == size {
            break;
        }
        size = now;
    }
    let file = std::fs::File::open(&audit_log).expect("audit log");
    let events = read_events(std::io::BufReader::new(file)).expect("read the audit log");
    let main_complete = seen.get(MAIN).is_some_and(|s| s.phase() == "Complete");
    violations.extend(evidence(&events, replaced.values().sum(), main_complete));
    let agent = BTreeSet::from([service_account_user(NAMESPACE, NAME)]);
    let ztunnel_labels = BTreeMap::from([("app".to_owned(), "ztunnel".to_owned())]);
    violations.extend(cordons::ztunnel_deleted_on_schedulable(
        &events,
        &agent,
        "istio-system",
        &ztunnel_labels,
    ));
    violations.extend(budgets::disruptions_beyond_budget(&events, &agent));
    violations.extend(evictions::evicted_twice(&events, &agent));
    violations.extend(leadership::writes_without_lease(
        &events,
        &Election {
            namespace: NAMESPACE.into(),
            lease: LEASE.into(),
            replicas: REPLICAS
                .iter()
                .map(|(id, ip)| (ip.to_string(), (*id).to_owned()))
                .collect(),
        },
    ));
    if !violations.is_empty() {
        let kept = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join(format!("target/chaos/chaos-{seed}.audit.log"));
        if let Some(dir) = kept.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        if std::fs::copy(&audit_log, &kept).is_ok() {
            eprintln!("--- the trial's audit log: {}", kept.display());
        }
        for r in &replicas {
            eprintln!(
                "--- {} ({}) log: {}",
                r.identity,
                r.kubeconfig.display(),
                r.log.display()
            );
        }
    }
    // The cluster stops when its stdin closes: wait for it, so trials never overlap.
    let mut sup = sup;
    drop(sup.stdin);
    let _ = sup.child.wait();
    TrialResult {
        seed,
        nodes,
        max_unavailable,
        faults: injected.into_iter().map(|(_, f)| f).collect(),
        phase: seen.get(MAIN).map(|s| s.phase().to_owned()),
        second_phase: seen.get(SECOND).map(|s| s.phase().to_owned()),
        duration_ms: duration.as_millis(),
        peak_rss_bytes: peak_rss,
        proxy_injections,
        daemonset_check,
        audit_events: events.len(),
        violations: violations.iter().map(ToString::to_string).collect(),
    }
}

/// A Complete rollout means every node the DaemonSet runs on has a Ready pod of its
/// current template: the DaemonSet controller's `updatedNumberScheduled` and
/// `numberReady` against `desiredNumberScheduled`, once it observed its generation (up
/// to 30 s). Not judged if the DaemonSet moved on after the rollout completed.
async fn complete_per_daemonset(
    daemonsets: &Api<DaemonSet>,
    generation: Option<i64>,
) -> (String, Option<Violation>) {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut last = String::from("not read");
    loop {
        if let Ok(ds) = daemonsets.get("ztunnel").await {
            if ds.metadata.generation != generation {
                return (
                    format!(
                        "not judged: the DaemonSet moved on after Complete (generation {:?} -> {:?})",
                        generation, ds.metadata.generation
                    ),
                    None,
                );
            }
            let st = ds.status.unwrap_or_default();
            let (desired, updated, ready) = (
                st.desired_number_scheduled,
                st.updated_number_scheduled.unwrap_or(0),
                st.number_ready,
            );
            last = format!("{updated} of {desired} nodes on the current template, {ready} Ready");
            if st.observed_generation == generation && updated == desired && ready == desired {
                return (last, None);
            }
        }
        if Instant::now() >= deadline {
            let violation = Violation::new(
                Invariant::Termination,
                format!("rollout {MAIN} is Complete, but the DaemonSet has {last}"),
            );
            return (last, Some(violation));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// What the checkers must have had to judge, or they proved nothing: the agent's
/// ztunnel deletions (at least one per node the rollouts report replaced), evictions
/// (when the first rollout went through every node), Lease writes with their bodies,
/// and writes from a replica's address.
fn evidence(events: &[AuditEvent], replaced: u32, main_complete: bool) -> Vec<Violation> {
    let agent = service_account_user(NAMESPACE, NAME);
    let by_agent = |verb: &str, resource: &str| {
        events
            .iter()
            .filter(|e| {
                e.user == agent && e.verb == verb && e.full_resource() == resource && e.succeeded()
            })
            .count()
    };
    let lease_bodies = events
        .iter()
        .filter(|e| {
            e.resource == "leases"
                && e.name.as_deref() == Some(LEASE)
                && e.succeeded()
                && e.response_object.is_some()
        })
        .count();
    let from_replicas = events
        .iter()
        .filter(|e| {
            e.is_mutating()
                && e.resource != "leases"
                && REPLICAS.iter().any(|(_, ip)| e.source_ip == ip.to_string())
        })
        .count();
    let mut missing = Vec::new();
    let deletions = by_agent("delete", "pods");
    if deletions < replaced as usize {
        missing.push(format!(
            "{deletions} ztunnel pod deletions by the agent for {replaced} nodes the rollouts report done"
        ));
    }
    if main_complete && by_agent("create", "pods/eviction") == 0 {
        missing.push("no eviction by the agent in a Complete rollout".to_owned());
    }
    if lease_bodies == 0 {
        missing.push(format!(
            "no write of Lease {NAMESPACE}/{LEASE} with its body"
        ));
    }
    if from_replicas == 0 {
        missing.push("no write from a replica's address".to_owned());
    }
    missing
        .into_iter()
        .map(|m| {
            Violation::new(
                Invariant::Evidence,
                format!("the audit log has {m}: the checkers had too little to judge"),
            )
        })
        .collect()
}

impl Trial {
    fn leader_index(&self, holder: Option<String>) -> Option<usize> {
        holder.and_then(|h| self.replicas.iter().position(|r| r.identity == h))
    }

    async fn control(&self, action: &'static str, component: &'static str) -> String {
        control_socket::send(&self.socket, action, component)
            .await
            .map_or_else(
                |e| format!("{action} {component}: {e}"),
                |()| format!("{action} {component}"),
            )
    }

    fn later(&mut self, min_ms: u64, max_ms: u64, what: Pending) -> Duration {
        let after = Duration::from_millis(self.rng.range(min_ms, max_ms));
        self.pending.push((Instant::now() + after, what));
        after
    }

    /// Carries out what is due: resumes, the operator's uncordons, budgets restored.
    /// A write the API server refused stays due.
    async fn run_due(&mut self) {
        let now = Instant::now();
        let (due, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut self.pending)
            .into_iter()
            .partition(|(when, _)| now >= *when);
        self.pending = waiting;
        let nodes: Api<Node> = Api::all(self.client.clone());
        let budgets: Api<PodDisruptionBudget> = Api::namespaced(self.client.clone(), "demo");
        for (when, p) in due {
            let done = match &p {
                Pending::Resume(i) => {
                    signal(&self.replicas[*i].child, libc::SIGCONT);
                    self.last_resume = Some(Instant::now());
                    true
                }
                Pending::Uncordon(node) => {
                    let patch = Patch::Merge(json!({ "spec": { "unschedulable": false } }));
                    let ok = nodes
                        .patch(node, &PatchParams::default(), &patch)
                        .await
                        .is_ok();
                    if ok {
                        self.operator_cordoned.remove(node);
                    }
                    ok
                }
                Pending::RestoreBudget(name) => {
                    let patch = Patch::Merge(json!({ "spec": { "maxUnavailable": 1 } }));
                    budgets
                        .patch(name, &PatchParams::default(), &patch)
                        .await
                        .is_ok()
                }
            };
            if !done {
                self.pending.push((when, p));
            }
        }
    }

    async fn inject(&mut self, fault: Fault, max_unavailable: u64) -> String {
        let nodes: Api<Node> = Api::all(self.client.clone());
        match fault {
            Fault::LeaderKill | Fault::LeaderPause => {
                let Some(i) = self.leader_index(leader(&self.client).await) else {
                    return "no leader yet: nothing done".into();
                };
                if fault == Fault::LeaderKill {
                    let r = &mut self.replicas[i];
                    if let Ok(peak) = memory::peak_rss(r.child.id()) {
                        let max = self.peak_rss.entry(r.identity).or_default();
                        *max = (*max).max(peak);
                    }
                    let _ = r.child.kill();
                    let _ = r.child.wait();
                    // As a Deployment would: the replica comes back.
                    r.child = start_agent(r.identity, &r.kubeconfig, &self.tag, &r.log);
                    format!("killed and restarted {}", r.identity)
                } else {
                    signal(&self.replicas[i].child, libc::SIGSTOP);
                    let lease_ms = LEASE_DURATION.as_millis() as u64;
                    let pause = self.later(lease_ms + 2_000, lease_ms + 8_000, Pending::Resume(i));
                    format!("paused {} for {pause:?}", self.replicas[i].identity)
                }
            }
            Fault::ApiServerRestart => self.control("restart", "kube-apiserver").await,
            Fault::EtcdRestart => {
                let killed = self.control("kill", "etcd").await;
                tokio::time::sleep(Duration::from_millis(self.rng.range(500, 3_000))).await;
                let started = self.control("start", "etcd").await;
                // The bed's kubelets (KWOK) drop a pod's status write that fails while
                // etcd is down and never retry it, where a kubelet would: the pod stays
                // not Ready for ever and its budget blocks every drain (CI seed
                // 20261206: the audit log shows KWOK's patch answered 500, never
                // repeated). Restarting KWOK makes it apply the lost stage — once the
                // API server writes through etcd again: a KWOK restarted while writes
                // still fail drops them again (a later CI run of the same seed: KWOK's
                // final pod deletes answered 504, two ztunnel pods never gone, the
                // rollout waiting on them until the trial's end). The restarted KWOK
                // takes its nodes at once and misses no pod: the bed releases the node
                // leases its previous instance held and resyncs the pods left with a
                // stage (`ztunnel_rollout_testbed::kwok_restart`; the same seed,
                // 2026-12-04: without that, three ztunnel pods stayed Terminating).
                let storage = until_storage_writes(&self.client).await;
                let kwok = self.control("restart", "kwok").await;
                format!("{killed}; {started}; {storage}; {kwok} (the bed's kubelets retry)")
            }
            Fault::ControllerManagerRestart => {
                self.control("restart", "kube-controller-manager").await
            }
            Fault::ProxyFaults | Fault::WatchCut => {
                let Some(i) = self.leader_index(leader(&self.client).await) else {
                    return "no leader yet: nothing done".into();
                };
                if fault == Fault::ProxyFaults {
                    let delay = Duration::from_millis(self.rng.range(100, 2_000));
                    for (method, path, rule) in [
                        (Method::GET, "/", ProxyFault::Delay(delay)),
                        (Method::PATCH, "/", ProxyFault::Reset),
                        (Method::POST, "/", ProxyFault::Unavailable),
                        (Method::PATCH, "/", ProxyFault::Throttle),
                        (Method::DELETE, "/", ProxyFault::DropAnswer),
                        // An eviction applied whose answer is lost: the agent retries
                        // one the API server already granted.
                        (Method::POST, "/eviction", ProxyFault::DropAnswer),
                    ] {
                        let every = self.rng.range(2, 5) as u32;
                        self.replicas[i]
                            .proxy
                            .add(Rule::new(method, path, rule).every(every).times(5));
                    }
                } else {
                    let times = self.rng.range(3, 10) as u32;
                    self.replicas[i].proxy.add(
                        Rule::new(Method::GET, "/", ProxyFault::Reset)
                            .query("watch=true")
                            .times(times),
                    );
                }
                format!("on {}'s proxy", self.replicas[i].identity)
            }
            Fault::OperatorCordon => {
                let free: Vec<String> = demo_nodes(&self.client)
                    .await
                    .into_iter()
                    .filter(|n| n.spec.as_ref().and_then(|s| s.unschedulable) != Some(true))
                    .filter_map(|n| n.metadata.name)
                    .collect();
                let Some(node) = self.pick(&free) else {
                    return "no schedulable node".into();
                };
                let cordon = Patch::Merge(json!({ "spec": { "unschedulable": true } }));
                match nodes.patch(&node, &PatchParams::default(), &cordon).await {
                    Ok(_) => {
                        // The rollout counts it against its wave's budget meanwhile
                        // (README, "Budget"), and may wait for it.
                        self.operator_cordoned.insert(node.clone());
                        let hold = self.later(3_000, 15_000, Pending::Uncordon(node.clone()));
                        format!("cordoned {node} for {hold:?}")
                    }
                    Err(e) => format!("cordoning {node}: {e}"),
                }
            }
            Fault::OperatorUncordon => {
                // A node the rollout holds cordoned (its owner annotation), waited for
                // up to 10 s: the agent must cordon it again before ztunnel goes.
                for _ in 0..40 {
                    let held: Vec<String> = demo_nodes(&self.client)
                        .await
                        .into_iter()
                        .filter(|n| {
                            n.spec.as_ref().and_then(|s| s.unschedulable) == Some(true)
                                && n.metadata
                                    .annotations
                                    .as_ref()
                                    .is_some_and(|a| a.contains_key(OWNER_ANNOTATION))
                        })
                        .filter_map(|n| n.metadata.name)
                        .filter(|n| !self.operator_cordoned.contains(n))
                        .collect();
                    if let Some(node) = self.pick(&held) {
                        let uncordon = Patch::Merge(json!({ "spec": { "unschedulable": false } }));
                        return match nodes.patch(&node, &PatchParams::default(), &uncordon).await {
                            Ok(_) => format!("uncordoned {node}, cordoned by the rollout"),
                            Err(e) => format!("uncordoning {node}: {e}"),
                        };
                    }
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
                "no node cordoned by the rollout within 10 s".into()
            }
            Fault::BudgetTightened => {
                let name = BUDGETS[self.rng.range(0, 1) as usize];
                let budgets: Api<PodDisruptionBudget> =
                    Api::namespaced(self.client.clone(), "demo");
                let tighten = Patch::Merge(json!({ "spec": { "maxUnavailable": 0 } }));
                // An error may hide a write that was applied: expect it and restore it
                // either way (the restore is idempotent).
                let answer = budgets.patch(name, &PatchParams::default(), &tighten).await;
                self.expect.tightened.insert(format!("demo/{name}"));
                let hold = self.later(3_000, 15_000, Pending::RestoreBudget(name.to_owned()));
                match answer {
                    Ok(_) => format!("demo/{name} at maxUnavailable 0 for {hold:?}"),
                    Err(e) => format!("tightening demo/{name} (restored in {hold:?}): {e}"),
                }
            }
            Fault::NodeDeleted => {
                let any: Vec<String> = demo_nodes(&self.client)
                    .await
                    .into_iter()
                    .filter_map(|n| n.metadata.name)
                    .filter(|n| !self.operator_cordoned.contains(n))
                    .collect();
                let Some(node) = self.pick(&any) else {
                    return "no node".into();
                };
                match nodes.delete(&node, &Default::default()).await {
                    Ok(_) => format!("deleted {node}"),
                    Err(e) => format!("deleting {node}: {e}"),
                }
            }
            Fault::NodeAdded => {
                let zone = ["zone-a", "zone-b", "zone-c"][self.rng.range(0, 2) as usize];
                self.nodes_added += 1;
                let prefix = format!("node-added-{}-", self.nodes_added);
                let node = fixtures::zoned_nodes(&prefix, 1, &[zone], "demo").remove(0);
                let name = node.metadata.name.clone().unwrap_or_default();
                match nodes.create(&PostParams::default(), &node).await {
                    Ok(_) => format!("added {name} in {zone}"),
                    Err(e) => format!("adding {name}: {e}"),
                }
            }
            Fault::DaemonSetMoved => {
                self.daemonset_moves += 1;
                let version = format!("1.28.{}", 1 + self.daemonset_moves);
                let daemonsets: Api<DaemonSet> =
                    Api::namespaced(self.client.clone(), "istio-system");
                match daemonsets
                    .patch(
                        "ztunnel",
                        &PatchParams::default(),
                        &ztunnel_version_patch(&version),
                    )
                    .await
                {
                    Ok(_) => format!("ztunnel moved to {version}"),
                    Err(e) => format!("moving ztunnel to {version}: {e}"),
                }
            }
            Fault::RolloutPauseResume => {
                let set = |paused: bool| {
                    let rollouts = self.rollouts.clone();
                    async move {
                        rollouts
                            .patch(
                                MAIN,
                                &PatchParams::default(),
                                &Patch::Merge(json!({ "spec": { "paused": paused } })),
                            )
                            .await
                    }
                };
                let paused = set(true).await.is_ok();
                tokio::time::sleep(Duration::from_millis(self.rng.range(1_000, 5_000))).await;
                let resumed = set(false).await.is_ok();
                format!("paused: {paused}, resumed: {resumed}")
            }
            Fault::RolloutAbort => {
                let abort = Patch::Merge(json!({ "spec": { "abort": true } }));
                let answer = self
                    .rollouts
                    .patch(MAIN, &PatchParams::default(), &abort)
                    .await;
                // Whether it was applied, from the object (an error may hide a write).
                let now = self.rollouts.get_opt(MAIN).await.ok().flatten();
                if let Some(r) = now.filter(|r| r.spec.abort) {
                    self.expect.abort_generation = r.metadata.generation;
                }
                match answer {
                    Ok(r) => format!("spec.abort: true (generation {:?})", r.metadata.generation),
                    Err(e) => format!("aborting: {e}"),
                }
            }
            Fault::RolloutDelete => {
                let answer = self.rollouts.delete(MAIN, &Default::default()).await;
                let now = self.rollouts.get_opt(MAIN).await;
                if matches!(now, Ok(None))
                    || matches!(&now, Ok(Some(r)) if r.metadata.deletion_timestamp.is_some())
                {
                    self.expect.deleted = true;
                }
                match answer {
                    Ok(_) => "deleted".into(),
                    Err(e) => format!("deleting: {e}"),
                }
            }
            Fault::SecondRollout => {
                let zone = ["zone-a", "zone-b", "zone-c"][self.rng.range(0, 2) as usize];
                let selector =
                    json!({ fixtures::NODE_SET_LABEL: "demo", fixtures::ZONE_LABEL: zone });
                let second = rollout_object(SECOND, &self.tag, selector, max_unavailable);
                match self.rollouts.create(&PostParams::default(), &second).await {
                    Ok(_) => {
                        self.expect.second = Some(SECOND.to_owned());
                        format!("{SECOND} over {zone}")
                    }
                    Err(e) => format!("creating {SECOND}: {e}"),
                }
            }
        }
    }

    fn pick(&mut self, from: &[String]) -> Option<String> {
        if from.is_empty() {
            return None;
        }
        Some(from[self.rng.range(0, from.len() as u64 - 1) as usize].clone())
    }
}

/// Waits, a minute at most, until the API server writes through etcd again (a
/// server-side apply of a probe ConfigMap succeeds); says how long that took.
async fn until_storage_writes(client: &Client) -> String {
    use k8s_openapi::api::core::v1::ConfigMap;
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let started = Instant::now();
    let mut pause = Duration::from_millis(200);
    loop {
        let probe = json!({
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": { "name": "chaos-etcd-probe" },
            "data": { "since-start": format!("{:?}", started.elapsed()) },
        });
        let written = api
            .patch(
                "chaos-etcd-probe",
                &PatchParams::apply("chaos").force(),
                &Patch::Apply(&probe),
            )
            .await;
        match written {
            Ok(_) => {
                return format!(
                    "storage writes again after {:.1}s",
                    started.elapsed().as_secs_f64()
                );
            }
            Err(e) if started.elapsed() >= Duration::from_secs(60) => {
                return format!("storage still refuses writes after 60s: {e}");
            }
            Err(_) => {
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(2));
            }
        }
    }
}
