//! Operating a rollout on the local control plane through the CLI: manual wave approval
//! (across an agent restart), maintenance windows, pause and resume, abort, one-off
//! triggers, and bad input that changes nothing.

mod support;

use std::process::Command;
use std::time::Duration;

use kube::api::{ListParams, Patch, PatchParams};
use kube::{Api, Client, ResourceExt};
use support::agent::{self as agent_support, Agent, TEST_LABEL, node_status};
use support::{TestEnv, cli};
use ztunnel_rollout::api::ZtunnelRollout;
use ztunnel_rollout_core::rollout::node_machine::NodePhase;
use ztunnel_rollout_testbed::fixtures::{self, NODE_SET_LABEL, POOL_LABEL, UpdateStrategy};

/// The env's upgraded ztunnel and an agent for it.
async fn ready(env: &TestEnv, dir: &tempfile::TempDir) -> Agent {
    agent_support::install(&env.client).await;
    let ztunnel = support::apply_ztunnel(env, UpdateStrategy::OnDelete).await;
    support::upgrade_ztunnel(&env.client, &env.namespace, ztunnel).await;
    agent_support::start_as_service_account(env, dir.path(), "agent-a")
}

async fn phase(client: &Client, name: &str, phase: &str, agent: &Agent) -> ZtunnelRollout {
    agent_support::wait_for_phase(client, name, phase, Duration::from_secs(90), &[agent]).await
}

/// Nodes the rollout has started (not Pending).
fn started(r: &ZtunnelRollout) -> Vec<String> {
    r.status
        .iter()
        .flat_map(|s| s.nodes.iter())
        .filter(|n| n.phase != NodePhase::Pending)
        .map(|n| n.name.clone())
        .collect()
}

#[tokio::test]
async fn manual_approval_holds_each_wave_until_approved_also_across_an_agent_restart() {
    let env = TestEnv::new("op-approve", 3).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let mut agent = ready(&env, &dir).await;
    let name = format!("{}-ap", env.namespace);
    let spec = serde_json::json!({ "waves": { "groupBy": fixtures::ZONE_LABEL, "maxUnavailable": 1, "approval": "Manual" } });
    agent_support::create(&env.client, &agent_support::rollout(&env, &name, spec)).await;

    let held = phase(&env.client, &name, "AwaitingApproval", &agent).await;
    assert_eq!(
        held.status
            .as_ref()
            .and_then(|s| s.awaiting_approval.as_deref()),
        Some("a")
    );
    assert!(started(&held).is_empty(), "nothing starts before approval");
    // A wave that does not exist: a clear error, nothing recorded.
    let (code, _, err) = cli(&["approve", &name, "--wave", "zz"]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("has no wave \"zz\"") && err.contains("a, b, c"),
        "{err}"
    );
    let (code, out, err) = cli(&["status", &name]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains(&format!("ztunnel-rollout approve {name} --wave a")),
        "{out}"
    );

    let (code, out, err) = cli(&["approve", &name, "--wave", "a"]);
    assert_eq!(code, 0, "{out}{err}");
    let api: Api<ZtunnelRollout> = Api::all(env.client.clone());
    let awaiting_b = |r: Option<&ZtunnelRollout>| {
        r.and_then(|r| r.status.as_ref())
            .is_some_and(|s| s.awaiting_approval.as_deref() == Some("b"))
    };
    let r = support::wait_within(
        &api,
        &name,
        "wave b awaiting approval",
        Duration::from_secs(60),
        awaiting_b,
    )
    .await
    .expect("rollout");
    assert_eq!(
        r.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("AwaitingApproval")
    );
    assert_eq!(
        r.status
            .as_ref()
            .and_then(|s| s.awaiting_approval.as_deref()),
        Some("b")
    );
    assert_eq!(started(&r), [env.nodes[0].clone()], "only wave a ran");

    // A new agent process reads the approvals from the object: wave b still waits.
    agent.kill();
    let agent = agent_support::start_as_service_account(&env, dir.path(), "agent-b");
    // Once agent-b leads (the Lease says so) and has acted on this rollout (it observed
    // a spec change made after it took the lease), wave b must still be waiting.
    until_lease_held(&env, "agent-b").await;
    let changed = api
        .patch(
            &name,
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({ "spec": { "drain": { "timeout": "9m" } } })),
        )
        .await
        .expect("change the spec");
    let generation = changed.metadata.generation;
    support::wait_within(
        &api,
        &name,
        "agent-b observed the new generation",
        Duration::from_secs(60),
        |r: Option<&ZtunnelRollout>| {
            r.and_then(|r| r.status.as_ref()).is_some_and(|s| {
                s.observed_generation.is_some() && s.observed_generation == generation
            })
        },
    )
    .await
    .expect("rollout");
    let r = phase(&env.client, &name, "AwaitingApproval", &agent).await;
    assert_eq!(
        r.status
            .as_ref()
            .and_then(|s| s.awaiting_approval.as_deref()),
        Some("b")
    );
    assert!(!support::is_cordoned(&env.client, &env.nodes[1]).await);
    for wave in ["b", "c"] {
        let (code, out, err) = cli(&["approve", &name, "--wave", wave]);
        assert_eq!(code, 0, "{out}{err}");
    }
    let done = phase(&env.client, &name, "Complete", &agent).await;
    assert_eq!(done.spec.approved_waves, ["a", "b", "c"]);
    assert_eq!(done.status.expect("status").counts.done, 3);
}

#[tokio::test]
async fn a_rollout_outside_its_window_changes_nothing_and_reports_the_next_window() {
    let env = TestEnv::new("op-window", 2).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let agent = ready(&env, &dir).await;
    // A one-minute window two days from now (UTC).
    let now = k8s_openapi::jiff::Timestamp::now();
    let in_two_days = now
        .to_zoned(k8s_openapi::jiff::tz::TimeZone::UTC)
        .date()
        .checked_add(k8s_openapi::jiff::Span::new().days(2))
        .expect("date");
    let day = format!("{:?}", in_two_days.weekday());
    let name = format!("{}-win", env.namespace);
    let spec = serde_json::json!({
        "maintenanceWindows": [{ "days": [day], "start": "03:00", "end": "03:01", "timeZone": "UTC" }]
    });
    agent_support::create(&env.client, &agent_support::rollout(&env, &name, spec)).await;
    let waiting = phase(&env.client, &name, "OutsideWindow", &agent).await;
    let status = waiting.status.clone().expect("status");
    let expected = format!("{in_two_days}T03:00:00Z");
    assert_eq!(
        status.next_window.as_deref(),
        Some(expected.as_str()),
        "{status:?}"
    );
    let progressing = status
        .conditions
        .iter()
        .find(|c| c.type_ == "Progressing")
        .expect("condition");
    assert_eq!(progressing.reason, "OutsideMaintenanceWindow");
    assert!(
        progressing.message.contains(&expected),
        "{}",
        progressing.message
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    let still = Api::<ZtunnelRollout>::all(env.client.clone())
        .get(&name)
        .await
        .expect("rollout");
    assert!(started(&still).is_empty());
    agent_support::assert_nodes_released(&env.client, &env.node_list_params(), None).await;
}

#[tokio::test]
async fn pausing_mid_wave_lets_nodes_in_flight_finish_and_resuming_completes() {
    let env = TestEnv::new("op-pause", 4).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let agent = ready(&env, &dir).await;
    let name = format!("{}-pz", env.namespace);
    let spec = serde_json::json!({ "health": { "soak": "2s", "interval": "1s" } });
    agent_support::create(&env.client, &agent_support::rollout(&env, &name, spec)).await;
    let api: Api<ZtunnelRollout> = Api::all(env.client.clone());
    support::wait_within(
        &api,
        &name,
        "a node in flight",
        Duration::from_secs(60),
        |r: Option<&ZtunnelRollout>| r.is_some_and(|r| !started(r).is_empty()),
    )
    .await;
    let (code, out, err) = cli(&["pause", &name]);
    assert_eq!(code, 0, "{out}{err}");
    let paused = phase(&env.client, &name, "Paused", &agent).await;
    // In flight nodes reach a safe point (done), and nothing new starts.
    support::wait_within(
        &api,
        &name,
        "nodes in flight finished",
        Duration::from_secs(60),
        |r: Option<&ZtunnelRollout>| {
            r.and_then(|r| r.status.as_ref())
                .is_some_and(|s| s.counts.in_flight == 0)
        },
    )
    .await;
    let settled = started(&api.get(&name).await.expect("rollout"));
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        started(&api.get(&name).await.expect("rollout")),
        settled,
        "no node started while paused"
    );
    assert!(
        settled.len() < 4,
        "paused before the end: {settled:?} ({:?})",
        paused.status
    );
    // `status --watch` follows the rollout from here and ends with it.
    let watch = Command::new(env!("CARGO_BIN_EXE_ztunnel-rollout"))
        .arg("--kubeconfig")
        .arg(&support::cluster().kubeconfig)
        .args(["status", &name, "--watch"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("status --watch");
    let (code, out, err) = cli(&["resume", &name]);
    assert_eq!(code, 0, "{out}{err}");
    let done = phase(&env.client, &name, "Complete", &agent).await;
    assert_eq!(done.status.expect("status").counts.done, 4);
    let watched = tokio::time::timeout(
        Duration::from_secs(30),
        tokio::task::spawn_blocking(move || watch.wait_with_output()),
    )
    .await
    .expect("status --watch ends with the rollout")
    .expect("join")
    .expect("output");
    let text = String::from_utf8_lossy(&watched.stdout);
    assert!(
        text.contains(&format!("ztunnelrollout {name}: Paused")),
        "{text}"
    );
    assert!(
        text.contains(&format!("ztunnelrollout {name}: Complete")),
        "{text}"
    );
}

#[tokio::test]
async fn abort_from_the_cli_uncordons_only_the_nodes_the_rollout_cordoned() {
    let env = TestEnv::new("op-abort", 3).await;
    let dir = tempfile::tempdir().expect("tempdir");
    // Someone else's cordon on the wave-b node; a pod the first node's drain waits for.
    let theirs = env.nodes[1].clone();
    support::set_unschedulable(&env.client, &theirs, true).await;
    support::hold_drain_on(&env, &env.nodes[0]).await;
    let agent = ready(&env, &dir).await;
    let name = format!("{}-ab", env.namespace);
    agent_support::create(
        &env.client,
        &agent_support::rollout(&env, &name, serde_json::json!({})),
    )
    .await;
    let api: Api<ZtunnelRollout> = Api::all(env.client.clone());
    let first = env.nodes[0].clone();
    support::wait_within(
        &api,
        &name,
        "the first node draining",
        Duration::from_secs(60),
        move |r: Option<&ZtunnelRollout>| {
            r.and_then(|r| node_status(r, &first))
                .is_some_and(|n| n.phase == NodePhase::Cordoned)
        },
    )
    .await;
    assert!(support::is_cordoned(&env.client, &env.nodes[0]).await);

    let (code, out, err) = cli(&["abort", &name]);
    assert_eq!(code, 0, "{out}{err}");
    phase(&env.client, &name, "Aborted", &agent).await;
    agent_support::assert_nodes_released(&env.client, &env.node_list_params(), Some(&theirs)).await;
    let (code, _, err) = cli(&["resume", &name]);
    assert_eq!(code, 1, "an abort is final");
    assert!(err.contains("aborted"), "{err}");
}

#[tokio::test]
async fn a_trigger_rolls_only_the_nodes_its_selector_picks() {
    let env = TestEnv::new("op-trigger", 4).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let agent = ready(&env, &dir).await;
    let name = format!("{}-tr", env.namespace);
    let selector = format!("{NODE_SET_LABEL}={},{POOL_LABEL}=pool-a", env.node_set);
    let daemonset = format!("{}/ztunnel", env.namespace);
    let labels = format!("{TEST_LABEL}={}", env.namespace);
    let (code, out, err) = cli(&[
        "trigger",
        "--selector",
        &selector,
        "--name",
        &name,
        "--daemonset",
        &daemonset,
        "--labels",
        &labels,
    ]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("for 2 node(s)"), "{out}");
    let done = phase(&env.client, &name, "Complete", &agent).await;
    let status = done.status.expect("status");
    assert_eq!(status.counts.total, 2);
    let mut rolled: Vec<String> = status.nodes.iter().map(|n| n.name.clone()).collect();
    rolled.sort();
    assert_eq!(
        rolled,
        [env.nodes[0].clone(), env.nodes[3].clone()],
        "the pool-a nodes (zone a)"
    );
}

#[tokio::test]
async fn bad_input_gets_a_clear_error_and_changes_nothing() {
    let env = TestEnv::new("op-bad", 2).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let agent = ready(&env, &dir).await;
    let rollouts = || async {
        Api::<ZtunnelRollout>::all(env.client.clone())
            .list(&ListParams::default().labels(&format!("{TEST_LABEL}={}", env.namespace)))
            .await
            .expect("rollouts")
            .items
            .len()
    };
    for (args, expected) in [
        (
            vec!["pause", "no-such-rollout"],
            "ztunnelrollout \"no-such-rollout\" not found",
        ),
        (
            vec!["approve", "no-such-rollout", "--wave", "a"],
            "not found",
        ),
        (vec!["trigger", "--selector", "bad key!=x"], "--selector"),
        (
            vec!["trigger", "--selector", "pool=nowhere-at-all"],
            "matches no node: nothing created",
        ),
        (
            vec![
                "trigger",
                "--selector",
                "pool=blue",
                "--max-unavailable",
                "0",
            ],
            "--max-unavailable",
        ),
        (
            vec![
                "trigger",
                "--selector",
                "pool=blue",
                "--daemonset",
                "ztunnel",
            ],
            "NAMESPACE/NAME",
        ),
    ] {
        let (code, out, err) = cli(&args);
        assert_eq!(code, 1, "{args:?}: {out}{err}");
        assert!(err.contains(expected), "{args:?}: {err}");
    }
    assert_eq!(rollouts().await, 0, "nothing was created");

    // An invalid time zone: the rollout is refused with the field named, nothing moves.
    let name = format!("{}-tz", env.namespace);
    let spec = serde_json::json!({
        "maintenanceWindows": [{ "days": ["Sat"], "start": "22:00", "end": "04:00", "timeZone": "Mars/Olympus" }]
    });
    agent_support::create(&env.client, &agent_support::rollout(&env, &name, spec)).await;
    let blocked = phase(&env.client, &name, "Blocked", &agent).await;
    let degraded = blocked
        .status
        .as_ref()
        .and_then(|s| s.conditions.iter().find(|c| c.type_ == "Degraded"))
        .expect("Degraded");
    assert_eq!(degraded.reason, "InvalidSpec");
    assert!(
        degraded
            .message
            .contains("spec.maintenanceWindows: window 1: unknown time zone \"Mars/Olympus\""),
        "{}",
        degraded.message
    );
    assert!(
        blocked.finalizers().is_empty(),
        "nothing touched, no finalizer"
    );
    // Empty and overlapping windows: refused the same way.
    for (suffix, windows, expected) in [
        (
            "empty",
            serde_json::json!([{ "days": ["Sat"], "start": "22:00", "end": "22:00" }]),
            "cannot start and end at the same time",
        ),
        (
            "overlap",
            serde_json::json!([
                { "days": ["Sat"], "start": "22:00", "end": "04:00" },
                { "days": ["Sun"], "start": "03:00", "end": "05:00" }
            ]),
            "windows 1 and 2 overlap",
        ),
    ] {
        let name = format!("{}-{suffix}", env.namespace);
        let spec = serde_json::json!({ "maintenanceWindows": windows });
        agent_support::create(&env.client, &agent_support::rollout(&env, &name, spec)).await;
        let blocked = phase(&env.client, &name, "Blocked", &agent).await;
        let message = blocked
            .status
            .as_ref()
            .and_then(|s| s.conditions.iter().find(|c| c.type_ == "Degraded"))
            .map(|c| c.message.clone())
            .unwrap_or_default();
        assert!(message.contains(expected), "{suffix}: {message}");
    }
    agent_support::assert_nodes_released(&env.client, &env.node_list_params(), None).await;
}

#[tokio::test]
async fn the_cli_is_a_kubectl_plugin_and_kubectl_get_shows_the_progress() {
    let env = TestEnv::new("op-plugin", 2).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let agent = ready(&env, &dir).await;
    let name = format!("{}-pl", env.namespace);
    let spec = serde_json::json!({ "waves": { "groupBy": fixtures::ZONE_LABEL, "maxUnavailable": 1, "approval": "Manual" } });
    agent_support::create(&env.client, &agent_support::rollout(&env, &name, spec)).await;
    phase(&env.client, &name, "AwaitingApproval", &agent).await;

    // kubectl finds `kubectl-ztunnel_rollout` on the PATH.
    let bin = tempfile::tempdir().expect("tempdir");
    std::os::unix::fs::symlink(
        env!("CARGO_BIN_EXE_ztunnel-rollout"),
        bin.path().join("kubectl-ztunnel_rollout"),
    )
    .expect("symlink");
    let kubectl = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("e2e/bin/kubectl");
    let path = format!(
        "{}:{}",
        bin.path().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let kubectl_run = |args: &[&str]| {
        let out = Command::new(&kubectl)
            .env("PATH", &path)
            .args(args)
            // After the plugin's name: kubectl refuses flags before it.
            .arg("--kubeconfig")
            .arg(&support::cluster().kubeconfig)
            .output()
            .expect("run kubectl");
        assert!(
            out.status.success(),
            "kubectl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let help = kubectl_run(&["ztunnel-rollout", "--help"]);
    assert!(help.contains("Usage: kubectl ztunnel-rollout"), "{help}");
    let status = kubectl_run(&["ztunnel-rollout", "status", &name]);
    assert!(
        status.contains(&format!("ztunnelrollout {name}: AwaitingApproval")),
        "{status}"
    );

    let table = kubectl_run(&["get", "ztunnelrollouts", &name, "-o", "wide"]);
    let header = table.lines().next().unwrap_or_default().to_owned();
    for column in [
        "PHASE",
        "WAVE",
        "DONE",
        "TOTAL",
        "FAILED",
        "AWAITING",
        "NEXT WINDOW",
        "REASON",
    ] {
        assert!(header.contains(column), "{column} in {header}");
    }
    let row = table.lines().nth(1).unwrap_or_default();
    assert!(
        row.contains("AwaitingApproval") && row.contains(" a "),
        "{row}"
    );

    let (code, script, _) = cli(&["completion", "bash"]);
    assert_eq!(code, 0);
    assert!(
        script.contains("complete -F") && script.contains("approve"),
        "a bash completion script"
    );
}

/// Waits until the agents' Lease (tests/support/agent.rs: `<namespace>-lease`, in the
/// agent's namespace) is held by `identity`.
async fn until_lease_held(env: &TestEnv, identity: &str) {
    use k8s_openapi::api::coordination::v1::Lease;
    let leases: Api<Lease> = Api::namespaced(env.client.clone(), "ztunnel-rollout");
    let name = format!("{}-lease", env.namespace);
    support::wait_within(
        &leases,
        &name,
        &format!("{identity} holds the lease"),
        Duration::from_secs(60),
        |l: Option<&Lease>| {
            l.and_then(|l| l.spec.as_ref())
                .and_then(|s| s.holder_identity.as_deref())
                == Some(identity)
        },
    )
    .await
    .expect("lease");
}
