//! The ztunnel gate end to end: the agent scrapes each node's new ztunnel pod at its pod
//! IP. The simulated nodes get pod CIDRs in 127.0.0.0/8 (KWOK gives pods IPs from their
//! node's podCIDR), and the test serves ztunnel metrics on every address of those ranges.

mod support;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use k8s_openapi::api::core::v1::{Namespace, Node};
use kube::Api;
use kube::api::{Patch, PatchParams, PostParams};
use support::TestEnv;
use support::agent as agent_support;
use support::prometheus::ZtunnelMetricsServer;
use ztunnel_rollout::api::ZtunnelRollout;
use ztunnel_rollout_core::rollout::node_machine::NodePhase;
use ztunnel_rollout_testbed::fixtures::UpdateStrategy;

/// Addresses 1–14 of 127.88.`k`.0/28.
fn pod_addresses(k: u8) -> Vec<SocketAddr> {
    (1..15)
        .map(|i| SocketAddr::new(IpAddr::V4(Ipv4Addr::new(127, 88, k, i)), 15020))
        .collect()
}

/// Gives each `(k, node)` the pod CIDR 127.88.`k`.0/28 and serves its ztunnel metrics
/// on every address of it, as its ztunnel pods would.
async fn serve_at_pod_ips(env: &TestEnv, nodes: &[(u8, &String)]) -> ZtunnelMetricsServer {
    let api: Api<Node> = Api::all(env.client.clone());
    let mut addresses = Vec::new();
    for (k, node) in nodes {
        api.patch(
            node,
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({ "spec": { "podCIDR": format!("127.88.{k}.0/28") } })),
        )
        .await
        .expect("set the node's pod CIDR");
        addresses.extend(pod_addresses(*k).into_iter().map(|a| (a, (*node).clone())));
    }
    ZtunnelMetricsServer::start_at(&addresses).await
}

/// Enrols the test's namespace in ambient mode (ztunnel's own pods do not count).
async fn enroll_in_ambient(env: &TestEnv) {
    Api::<Namespace>::all(env.client.clone())
        .patch(
            &env.namespace,
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({ "metadata": { "labels": { "istio.io/dataplane-mode": "ambient" } } })),
        )
        .await
        .expect("label the namespace");
}

#[tokio::test]
async fn the_agent_scrapes_each_new_ztunnel_at_its_pod_ip_and_checks_its_proxies() {
    let env = TestEnv::new("gate-zt", 2).await;
    agent_support::install(&env.client).await;
    // Zone a: healthy ztunnel; zone b: a ztunnel proxying workloads the node does not run.
    let (good, bad) = (env.nodes[0].clone(), env.nodes[1].clone());
    let server = serve_at_pod_ips(&env, &[(0, &good), (1, &bad)]).await;
    server.set_active_proxies(&bad, 2.0);
    // The test namespace is enrolled in ambient mode; ztunnel's own pods do not count.
    enroll_in_ambient(&env).await;

    let ztunnel = support::apply_ztunnel(&env, UpdateStrategy::OnDelete).await;
    support::upgrade_ztunnel(&env.client, &env.namespace, ztunnel).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let agent = agent_support::start_as_service_account(&env, dir.path(), "agent-a");
    let name = format!("{}-zt", env.namespace);
    let rollout = agent_support::rollout(
        &env,
        &name,
        serde_json::json!({ "health": {
            "interval": "1s",
            "timeout": "5s",
            "waypoints": { "disabled": true },
            "ztunnelMetrics": { "maxFailedConnectionsPerSecond": 0.5, "maxClosedPerOpened": 1.5 }
        }}),
    );
    Api::<ZtunnelRollout>::all(env.client.clone())
        .create(&PostParams::default(), &rollout)
        .await
        .expect("create");
    let paused = agent_support::wait_for_phase(
        &env.client,
        &name,
        "Paused",
        Duration::from_secs(120),
        &[&agent],
    )
    .await;
    let status = paused.status.expect("status");
    let phase = |node: &str| status.nodes.iter().find(|n| n.name == node).cloned();
    assert_eq!(phase(&good).map(|n| n.phase), Some(NodePhase::Done));
    let note = support::wait_for_event(&env.client, &good, "Verified", "ztunnel proxies").await;
    assert!(
        note.contains("0 active proxies, none pending")
            && note.contains("ztunnel connections: 0.000/s")
            && note.contains("ztunnel connection churn: "),
        "{note}"
    );
    let failed = phase(&bad).expect("the bad node's status");
    assert_eq!(failed.phase, NodePhase::Failed);
    assert!(
        failed.message.contains("not healthy within 5s")
            && failed
                .message
                .contains("2 active proxies, but 0 ambient pods on the node"),
        "{}",
        failed.message
    );
}

/// The connections-drained gate on the local control plane, judged from the API server:
/// on one node an evicted app's connections through the old ztunnel close over 6 s, and
/// the old ztunnel pod is deleted (as a watch started before the rollout sees it) only
/// after they all closed; on the other a DaemonSet pod enrolled in ambient mode holds
/// connections that never close: they are not waited for, a Warning Event names the
/// workload, and the rollout completes (`Proceed`); a second rollout with
/// `onOpenConnections: Fail` fails that node without deleting its ztunnel pod.
#[tokio::test]
async fn the_old_ztunnel_goes_once_its_connections_closed_and_what_stays_is_named() {
    use futures::StreamExt;
    use k8s_openapi::api::apps::v1::DaemonSet;
    use k8s_openapi::api::core::v1::Pod;
    use kube::runtime::{WatchStreamExt, watcher};
    let env = TestEnv::new("gate-conns", 2).await;
    agent_support::install(&env.client).await;
    let (closing, staying) = (env.nodes[0].clone(), env.nodes[1].clone());
    let server = serve_at_pod_ips(&env, &[(2, &closing), (3, &staying)]).await;
    enroll_in_ambient(&env).await;
    // A log agent on the second node: a DaemonSet, enrolled by its namespace.
    let ds_api: Api<DaemonSet> = Api::namespaced(env.client.clone(), &env.namespace);
    let log_agent: DaemonSet = serde_json::from_value(serde_json::json!({
        "apiVersion": "apps/v1",
        "kind": "DaemonSet",
        "metadata": { "name": "log-agent", "namespace": env.namespace },
        "spec": {
            "selector": { "matchLabels": { "app": "log-agent" } },
            "template": {
                "metadata": { "labels": { "app": "log-agent" } },
                "spec": {
                    "nodeSelector": { "kubernetes.io/hostname": staying },
                    "tolerations": [{ "operator": "Exists" }],
                    "containers": [{ "name": "agent", "image": "registry.test/log-agent:1" }],
                },
            },
        },
    }))
    .expect("DaemonSet");
    ztunnel_rollout_testbed::fixtures::apply(&ds_api, &log_agent)
        .await
        .expect("apply the log agent");
    support::wait_for(
        &ds_api,
        "log-agent",
        "the log agent Ready",
        support::daemonset_ready(1),
    )
    .await;
    let ztunnel = support::apply_ztunnel(&env, UpdateStrategy::OnDelete).await;
    support::upgrade_ztunnel(&env.client, &env.namespace, ztunnel).await;
    let old_pods = support::ztunnel_pods_by_node(&env).await;

    // When the watch first sees the closing node's old ztunnel pod deleted.
    let pods: Api<Pod> = Api::namespaced(env.client.clone(), &env.namespace);
    let old_uid = old_pods[&closing].clone();
    let (seen_tx, seen_rx) = tokio::sync::oneshot::channel::<std::time::Instant>();
    let mut stream = Box::pin(watcher(pods.clone(), watcher::Config::default()).applied_objects());
    // The watch is running (its initial list done) before the rollout exists.
    let _ = stream.next().await;
    let watch = tokio::spawn(async move {
        let mut seen_tx = Some(seen_tx);
        while let Some(Ok(p)) = stream.next().await {
            if p.metadata.uid.as_deref() == Some(old_uid.as_str())
                && p.metadata.deletion_timestamp.is_some()
                && let Some(tx) = seen_tx.take()
            {
                let _ = tx.send(std::time::Instant::now());
            }
        }
    });
    // The cart app's connections stay open while its pod is on the node, and close over
    // 6 s once the drain evicted it (the endpoint follows the pods).
    const LIFETIME: Duration = Duration::from_secs(6);
    pinned_app(&env, "cart", &closing, 1).await;
    let follow = server.follow_pods(env.client.clone(), &env.namespace);
    server.hold_connections_while_on_node(&closing, &env.namespace, "cart", 5, LIFETIME);
    server.hold_connections(&staying, &env.namespace, "log-agent", 2, None);
    let created_at = std::time::Instant::now();

    let dir = tempfile::tempdir().expect("tempdir");
    let agent = agent_support::start_as_service_account(&env, dir.path(), "agent-a");
    let health = |policy: &str| {
        serde_json::json!({
            "interval": "1s",
            "timeout": "30s",
            "waypoints": { "disabled": true },
            "ztunnelMetrics": { "checkProxies": false },
            "connectionDrainTimeout": "60s",
            "onOpenConnections": policy,
        })
    };
    let name = format!("{}-proceed", env.namespace);
    let rollout = agent_support::rollout(
        &env,
        &name,
        serde_json::json!({ "health": health("Proceed") }),
    );
    // `plan` names the pods that stay, before anything runs.
    let file = dir.path().join("rollout.json");
    std::fs::write(&file, serde_json::to_string(&rollout).expect("JSON")).expect("write");
    let (code, out, err) =
        support::cli(&["plan", "-f", file.to_str().expect("path"), "-o", "json"]);
    assert_eq!(code, 0, "{out}{err}");
    let plan: serde_json::Value = serde_json::from_str(&out).expect("JSON plan");
    let resets: Vec<(String, serde_json::Value)> = plan["waves"]
        .as_array()
        .expect("waves")
        .iter()
        .flat_map(|w| w["nodes"].as_array().cloned().unwrap_or_default())
        .map(|n| {
            (
                n["name"].as_str().unwrap_or_default().to_owned(),
                n["connectionsReset"].clone(),
            )
        })
        .collect();
    for (node, reset) in &resets {
        if *node == staying {
            let listed = reset.as_array().expect("a list").clone();
            assert!(
                listed.len() == 1
                    && listed[0]
                        .as_str()
                        .unwrap_or_default()
                        .starts_with(&format!("{}/log-agent-", env.namespace))
                    && listed[0]
                        .as_str()
                        .unwrap_or_default()
                        .ends_with("(DaemonSet log-agent)"),
                "{listed:?}"
            );
        } else {
            assert!(reset.is_null(), "{node}: {reset}");
        }
    }
    assert_eq!(resets.len(), 2, "{plan}");
    Api::<ZtunnelRollout>::all(env.client.clone())
        .create(&PostParams::default(), &rollout)
        .await
        .expect("create");
    agent_support::wait_for_phase(
        &env.client,
        &name,
        "Complete",
        Duration::from_secs(120),
        &[&agent],
    )
    .await;
    let deleted_at = tokio::time::timeout(Duration::from_secs(10), seen_rx)
        .await
        .expect("the watch saw the old ztunnel pod deleted")
        .expect("watch");
    watch.abort();
    follow.abort();
    let all_closed_at = server
        .all_closed_at(&closing, "cart")
        .expect("the cart's connections closed once its pod left the node");
    assert!(
        all_closed_at - LIFETIME > created_at,
        "they began to close only after the rollout started (the drain)"
    );
    assert!(
        deleted_at >= all_closed_at,
        "the old ztunnel pod was deleted {:?} before its last connection closed",
        all_closed_at - deleted_at
    );
    let note = support::wait_for_event(
        &env.client,
        &staying,
        "OpenConnections",
        &format!(
            "2 connection(s) of {}/log-agent (stays on the node)",
            env.namespace
        ),
    )
    .await;
    assert!(!note.contains("cart"), "{note}");
    assert!(
        support::events_with_reason(&env.client, "OpenConnections", |e| {
            e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(closing.as_str())
        })
        .await
        .is_empty(),
        "nothing was left open on {closing}"
    );

    // Fail: the node fails and keeps its ztunnel pod.
    let before = support::ztunnel_pods_by_node(&env).await;
    let name = format!("{}-fail", env.namespace);
    let rollout = agent_support::rollout(
        &env,
        &name,
        serde_json::json!({
            "nodeSelector": { "matchLabels": { "kubernetes.io/hostname": staying } },
            "cycleCurrent": true,
            "health": health("Fail"),
        }),
    );
    Api::<ZtunnelRollout>::all(env.client.clone())
        .create(&PostParams::default(), &rollout)
        .await
        .expect("create");
    let paused = agent_support::wait_for_phase(
        &env.client,
        &name,
        "Paused",
        Duration::from_secs(120),
        &[&agent],
    )
    .await;
    let n = agent_support::node_status(&paused, &staying).expect("node status");
    assert_eq!(n.phase, NodePhase::Failed, "{n:?}");
    assert!(
        n.message.contains("log-agent") && n.message.contains("not replaced"),
        "{}",
        n.message
    );
    assert_eq!(
        support::ztunnel_pods_by_node(&env).await[&staying],
        before[&staying],
        "the ztunnel pod was not replaced"
    );
    assert!(support::is_cordoned(&env.client, &staying).await);
    agent_support::abort(&env.client, &name, &agent).await;
    assert!(!support::is_cordoned(&env.client, &staying).await);
}

/// A Deployment of `replicas` pods pinned to `node` in the test's namespace: the drain
/// evicts them (their replacements wait, unschedulable, while the node is cordoned) and
/// they come back to the node once it is uncordoned — the pods a bake judges.
async fn pinned_app(env: &TestEnv, name: &str, node: &str, replicas: i32) {
    use k8s_openapi::api::apps::v1::Deployment;
    let mut app =
        ztunnel_rollout_testbed::fixtures::AppFixture::new(&env.namespace, name, replicas);
    app.node_selector =
        std::collections::BTreeMap::from([("kubernetes.io/hostname".to_owned(), node.to_owned())]);
    let api: Api<Deployment> = Api::namespaced(env.client.clone(), &env.namespace);
    ztunnel_rollout_testbed::fixtures::apply(&api, &app.deployment())
        .await
        .expect("apply the pinned app");
    support::wait_for(
        &api,
        name,
        "the pinned app available",
        support::deployment_available(replicas),
    )
    .await;
}

/// A bake's run on `env`'s two nodes: metrics at pod CIDR 127.88.`k`.0/28 and the next,
/// following the pods (the first node's new ztunnel never enrolling them if
/// `not_enrolling`); two pods of app `back` pinned to the first node; ztunnel upgraded;
/// the nodes and ztunnel pod deletions watched; one agent; a rollout with `health`
/// (waypoints off, ztunnel metrics on), until its phase is `until`.
struct BakeRun {
    history: support::history::NodeHistory,
    deletions: support::history::PodDeletions,
    name: String,
    status: ztunnel_rollout::api::ztunnel_rollout::ZtunnelRolloutStatus,
    agent: agent_support::Agent,
    _server: ZtunnelMetricsServer,
    _dir: tempfile::TempDir,
}

async fn bake_run(
    env: &TestEnv,
    k: u8,
    not_enrolling: bool,
    mut health: serde_json::Value,
    until: &str,
) -> BakeRun {
    agent_support::install(&env.client).await;
    let (first, second) = (env.nodes[0].clone(), env.nodes[1].clone());
    let server = serve_at_pod_ips(env, &[(k, &first), (k + 1, &second)]).await;
    enroll_in_ambient(env).await;
    if not_enrolling {
        server.set_not_enrolling(&first);
    }
    let follow = server.follow_pods(env.client.clone(), &env.namespace);
    pinned_app(env, "back", &first, 2).await;
    let ztunnel = support::apply_ztunnel(env, UpdateStrategy::OnDelete).await;
    support::upgrade_ztunnel(&env.client, &env.namespace, ztunnel).await;
    let history = support::history::NodeHistory::start(env);
    let deletions = support::history::PodDeletions::start(env, "app=ztunnel");
    let dir = tempfile::tempdir().expect("tempdir");
    let agent = agent_support::start_as_service_account(env, dir.path(), "agent-a");
    let name = format!("{}-bake", env.namespace);
    health["waypoints"] = serde_json::json!({ "disabled": true });
    health["ztunnelMetrics"] = serde_json::json!({});
    let rollout = agent_support::rollout(env, &name, serde_json::json!({ "health": health }));
    Api::<ZtunnelRollout>::all(env.client.clone())
        .create(&PostParams::default(), &rollout)
        .await
        .expect("create");
    let end = agent_support::wait_for_phase(
        &env.client,
        &name,
        until,
        Duration::from_secs(180),
        &[&agent],
    )
    .await;
    follow.abort();
    BakeRun {
        history,
        deletions,
        name,
        status: end.status.expect("status"),
        agent,
        _server: server,
        _dir: dir,
    }
}

/// The pods of app `name` bound to `node` and not terminating.
async fn pods_on(env: &TestEnv, name: &str, node: &str) -> Vec<String> {
    use k8s_openapi::api::core::v1::Pod;
    let pods: Api<Pod> = Api::namespaced(env.client.clone(), &env.namespace);
    pods.list(&kube::api::ListParams::default().labels(&format!("app={name}")))
        .await
        .expect("list pods")
        .items
        .into_iter()
        .filter(|p| {
            p.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(node)
                && p.metadata.deletion_timestamp.is_none()
        })
        .filter_map(|p| p.metadata.name)
        .collect()
}

/// The bake on the local control plane, judged from the API server: the first wave's
/// node is uncordoned while still the rollout's, its evicted pods come back and the new
/// ztunnel's proxies (the simulated endpoint follows the pods bound to each node) are
/// judged for the whole bake; the second wave's node is cordoned only after the first
/// node's release (the watch's order of the changes).
#[tokio::test]
async fn a_node_bakes_uncordoned_on_its_returning_pods_and_the_next_wave_waits_for_it() {
    let env = TestEnv::new("bake-ok", 2).await;
    let (first, second) = (env.nodes[0].clone(), env.nodes[1].clone());
    let run = bake_run(
        &env,
        4,
        false,
        serde_json::json!({ "interval": "1s", "timeout": "20s", "bake": "3s" }),
        "Complete",
    )
    .await;
    let (history, name) = (&run.history, &run.name);
    let status = run.status.clone();
    for node in [&first, &second] {
        let n = status
            .nodes
            .iter()
            .find(|n| &n.name == node)
            .expect("node status");
        assert_eq!(n.phase, NodePhase::Done, "{node}: {}", n.message);
    }
    // The first node's bake judged its two returning pods, enrolled.
    let baked = status
        .nodes
        .iter()
        .find(|n| n.name == first)
        .expect("status");
    assert!(
        baked.message.starts_with("baked: ")
            && baked.message.contains("2 active proxies, none pending"),
        "{}",
        baked.message
    );
    assert_eq!(
        pods_on(&env, "back", &first).await.len(),
        2,
        "the pods came back"
    );
    // As the watch saw it: the first node was uncordoned while still the rollout's
    // (baking), then released; the second node's cordon came after that release.
    let changes = {
        let mut c = history.revisions.lock().expect("lock").clone();
        c.sort_by_key(|(rv, _, _)| *rv);
        c
    };
    let first_cordoned = changes
        .iter()
        .find(|(_, n, s)| *n == first && s.unschedulable)
        .map(|(rv, _, _)| *rv)
        .expect("the first node was cordoned");
    let uncordoned_owned = changes
        .iter()
        .find(|(rv, n, s)| {
            *n == first
                && *rv > first_cordoned
                && !s.unschedulable
                && s.owner.as_deref() == Some(name.as_str())
        })
        .map(|(rv, _, _)| *rv)
        .expect("the first node uncordoned while still the rollout's (its bake)");
    let released = changes
        .iter()
        .find(|(rv, n, s)| *n == first && *rv > uncordoned_owned && s.owner.is_none())
        .map(|(rv, _, _)| *rv)
        .expect("the first node released after its bake");
    let second_cordoned = changes
        .iter()
        .find(|(_, n, s)| *n == second && s.unschedulable)
        .map(|(rv, _, _)| *rv)
        .expect("the second node was cordoned");
    assert!(
        second_cordoned > released,
        "the second wave started (revision {second_cordoned}) before the first node's bake ended (revision {released}; its bake began at {uncordoned_owned})"
    );
}

/// A new ztunnel that never enrols the pods coming back fails its bake: the node is
/// cordoned again and drained (no pod of the app is left on it), it fails, and the
/// rollout pauses before the next wave; the new ztunnel pod is not touched after the
/// uncordon. With `onFailure: Rollback` the failed node goes back to the previous
/// revision and ends uncordoned.
#[tokio::test]
async fn a_bake_whose_ztunnel_never_enrols_the_pods_evacuates_the_node_then_pauses_or_rolls_back() {
    for rollback in [false, true] {
        let tag = if rollback { "bake-rb" } else { "bake-fail" };
        let env = TestEnv::new(tag, 2).await;
        let (first, second) = (env.nodes[0].clone(), env.nodes[1].clone());
        let run = bake_run(
            &env,
            if rollback { 8 } else { 6 },
            true,
            serde_json::json!({
                "interval": "1s",
                "timeout": "4s",
                "bake": "2s",
                "onFailure": if rollback { "Rollback" } else { "Pause" },
            }),
            if rollback { "RolledBack" } else { "Paused" },
        )
        .await;
        let (history, deletions, name) = (&run.history, &run.deletions, &run.name);
        // One verdict of the gates passed (the verification), one failed (the bake).
        let verdicts = |result: &str| {
            format!("ztunnel_rollout_verifications_total{{rollout=\"{name}\",result=\"{result}\"}}")
        };
        if !rollback {
            assert_eq!(run.agent.metric(&verdicts("failed")).await, 1.0);
            assert_eq!(run.agent.metric(&verdicts("passed")).await, 1.0);
        }
        let status = run.status.clone();
        let failed = status
            .nodes
            .iter()
            .find(|n| n.name == first)
            .expect("status");
        let note = support::wait_for_event(&env.client, &first, "Evacuating", "bake failed").await;
        assert!(
            note.contains("not healthy within 6s") && note.contains("2 proxies pending"),
            "{note}"
        );
        // The watch's order: cordoned, uncordoned while the rollout's (the bake),
        // cordoned again (the evacuation), all by this rollout.
        let states: Vec<support::history::NodeState> = {
            let mut c = history.revisions.lock().expect("lock").clone();
            c.sort_by_key(|(rv, _, _)| *rv);
            c.into_iter()
                .filter(|(_, n, _)| *n == first)
                .map(|(_, _, s)| s)
                .collect()
        };
        let ours = |s: &support::history::NodeState| s.owner.as_deref() == Some(name.as_str());
        let cordoned = states
            .iter()
            .position(|s| s.unschedulable && ours(s))
            .expect("cordoned");
        let baking = cordoned
            + states[cordoned..]
                .iter()
                .position(|s| !s.unschedulable && ours(s))
                .expect("uncordoned while still the rollout's");
        assert!(
            states[baking..].iter().any(|s| s.unschedulable && ours(s)),
            "cordoned again by the rollout after the bake: {states:?}"
        );
        // ztunnel's pod on the node: the old one deleted, the new one never (in the
        // rollback, once more: back to the previous revision).
        let deleted_on_first = deletions
            .seen
            .lock()
            .expect("lock")
            .iter()
            .filter(|(_, _, node)| *node == first)
            .count();
        assert_eq!(deleted_on_first, if rollback { 2 } else { 1 });
        if !rollback {
            assert_eq!(failed.phase, NodePhase::Failed, "{}", failed.message);
            assert!(
                failed.message.starts_with("bake failed: ")
                    && failed.message.contains("cordoned again and drained"),
                "{}",
                failed.message
            );
            let node: Node = Api::<Node>::all(env.client.clone())
                .get(&first)
                .await
                .expect("node");
            assert_eq!(
                node.spec.and_then(|s| s.unschedulable),
                Some(true),
                "left cordoned"
            );
            assert!(
                pods_on(&env, "back", &first).await.is_empty(),
                "no pod of the app left on it"
            );
            assert_eq!(history.cordons(&second), 0, "the next wave never started");
        } else {
            assert_eq!(failed.phase, NodePhase::Done, "{}", failed.message);
            // Back on the previous revision, as the second node (never updated) is.
            let hashes = support::ztunnel_hashes(&env).await;
            assert!(
                hashes.contains_key(&first) && hashes.contains_key(&second),
                "{hashes:?}"
            );
            assert_eq!(hashes.get(&first), hashes.get(&second), "{hashes:?}");
            assert_eq!(
                history.cordons(&second),
                0,
                "the second node was never touched"
            );
            let node: Node = Api::<Node>::all(env.client.clone())
                .get(&first)
                .await
                .expect("node");
            assert_ne!(
                node.spec.and_then(|s| s.unschedulable),
                Some(true),
                "uncordoned at the end"
            );
            assert_eq!(
                status.rollback.map(|r| r.reason.contains(&first)),
                Some(true)
            );
        }
        drop(run);
    }
}
