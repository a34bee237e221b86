//! API errors are not node failures (README, "How the agent behaves"): the agent runs
//! behind a fault-injecting proxy (support::fault_proxy) that, at every step of a
//! rollout — reading and cordoning nodes, evicting pods, deleting ztunnel pods, writing
//! the rollout's status, watching, releasing nodes — resets connections, answers 503s and
//! throttling 429s, delays requests, and drops the answers to writes it let through. The
//! rollout must still complete with no node failed. The outcome is read from the API
//! server by the test's own client (never through the proxy), over the whole run (no
//! ztunnel pod deleted while its node was not cordoned by the rollout, by the API
//! server's order of changes), and the proxy's counts show that every fault was actually
//! injected.

mod support;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use http::Method;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::Api;
use kube::runtime::wait::await_condition;
use support::TestEnv;
use support::agent::{self as agent_support, Agent};
use support::fault_proxy::{Fault, FaultKind, FaultProxy, Rule};
use support::history::{self, NodeHistory, PodDeletions};
use ztunnel_rollout::api::ZtunnelRollout;
use ztunnel_rollout_core::rollout::node_machine::NodePhase;
use ztunnel_rollout_testbed::fixtures::{Budget, UpdateStrategy, ZONE_LABEL};

const WITHIN: Duration = Duration::from_secs(300);

/// Phases a rollout stops in when its failure policy acted or someone stopped it.
const STOPPED: [&str; 4] = ["Paused", "RollingBack", "RolledBack", "Aborted"];

/// Waits by watch until the rollout is Complete; fails the test as soon as a node fails
/// or the rollout stops, or after `within`, with the status, the proxy's injections and
/// the agent's log.
async fn wait_for_complete(
    env: &TestEnv,
    name: &str,
    within: Duration,
    agent: &Agent,
    proxy: &FaultProxy,
) -> ZtunnelRollout {
    let api: Api<ZtunnelRollout> = Api::all(env.client.clone());
    let settled = |r: Option<&ZtunnelRollout>| {
        r.and_then(|r| r.status.as_ref()).is_some_and(|s| {
            s.counts.failed > 0
                || s.nodes.iter().any(|n| n.phase == NodePhase::Failed)
                || s.phase
                    .as_deref()
                    .is_some_and(|p| p == "Complete" || STOPPED.contains(&p))
        })
    };
    let watch = async {
        loop {
            match await_condition(api.clone(), name, settled).await {
                Ok(found) => return found,
                // The test's own watch, not the agent's: it does not go through the proxy.
                Err(e) => {
                    eprintln!("watching rollout {name}: {e}; again");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        }
    };
    let outcome = tokio::time::timeout(within, watch).await;
    let rollout = match outcome {
        Ok(Some(r)) => r,
        _ => api.get(name).await.expect("read the rollout"),
    };
    let status = rollout.status.clone().unwrap_or_default();
    let complete = status.phase.as_deref() == Some("Complete");
    if !complete || status.counts.failed > 0 {
        panic!(
            "rollout {name} not Complete without failures (within {within:?}): phase {:?}, \
             counts {:?}\nnodes: {:#?}\nconditions: {:#?}\n{}\n--- agent {} log ---\n{}",
            status.phase,
            status.counts,
            status.nodes,
            status.conditions,
            proxy.report(),
            agent.identity,
            agent.log_text()
        );
    }
    rollout
}

#[tokio::test]
async fn api_errors_at_every_step_fail_no_node() {
    let env = TestEnv::new("api-faults", 6).await;
    agent_support::install(&env.client).await;
    let ztunnel = support::apply_ztunnel(&env, UpdateStrategy::OnDelete).await;
    support::apply_app(
        &env,
        "web",
        6,
        &[("web", Budget::MaxUnavailable(IntOrString::Int(1)))],
        1.0,
    )
    .await;
    let target = support::upgrade_ztunnel(&env.client, &env.namespace, ztunnel).await;

    let proxy = FaultProxy::start().await;
    let node_patch = "/api/v1/nodes/";
    let ztunnel_pod = format!("/namespaces/{}/pods/ztunnel-", env.namespace);
    // (what the rule is about, its number): every rule must fire at least once.
    let rules = [
        // Nodes: cordon, the release, and annotation writes are node PATCHes. The first
        // rule that fires on a request wins: the lost answer goes first.
        (
            "node PATCH applied, answer lost",
            proxy.add(
                Rule::new(Method::PATCH, node_patch, Fault::DropAnswer)
                    .after(2)
                    .every(4)
                    .times(2),
            ),
        ),
        (
            "node PATCH reset",
            proxy.add(
                Rule::new(Method::PATCH, node_patch, Fault::Reset)
                    .every(3)
                    .times(3),
            ),
        ),
        (
            "node PATCH 503",
            proxy.add(
                Rule::new(Method::PATCH, node_patch, Fault::Unavailable)
                    .after(1)
                    .every(5)
                    .times(2),
            ),
        ),
        (
            "node PATCH 429",
            proxy.add(
                Rule::new(Method::PATCH, node_patch, Fault::Throttle)
                    .after(3)
                    .every(5)
                    .times(2),
            ),
        ),
        (
            "node GET 503",
            proxy.add(
                Rule::new(Method::GET, node_patch, Fault::Unavailable)
                    .every(3)
                    .times(2),
            ),
        ),
        (
            "node GET reset",
            proxy.add(
                Rule::new(Method::GET, node_patch, Fault::Reset)
                    .after(1)
                    .every(4)
                    .times(1),
            ),
        ),
        // The drain's evictions.
        (
            "eviction 429",
            proxy.add(
                Rule::new(Method::POST, "/eviction", Fault::Throttle)
                    .every(2)
                    .times(3),
            ),
        ),
        (
            "eviction 503",
            proxy.add(
                Rule::new(Method::POST, "/eviction", Fault::Unavailable)
                    .after(2)
                    .every(3)
                    .times(2),
            ),
        ),
        (
            "eviction reset",
            proxy.add(
                Rule::new(Method::POST, "/eviction", Fault::Reset)
                    .after(6)
                    .times(1),
            ),
        ),
        // The ztunnel pods' replacement.
        (
            "ztunnel pod DELETE applied, answer lost",
            proxy.add(
                Rule::new(Method::DELETE, &ztunnel_pod, Fault::DropAnswer)
                    .after(3)
                    .times(1),
            ),
        ),
        (
            "ztunnel pod DELETE delayed",
            proxy.add(
                Rule::new(
                    Method::DELETE,
                    &ztunnel_pod,
                    Fault::Delay(Duration::from_millis(1500)),
                )
                .every(2)
                .times(3),
            ),
        ),
        // The rollout's status writes.
        (
            "rollout status PATCH 503",
            proxy.add(
                Rule::new(Method::PATCH, "/ztunnelrollouts/", Fault::Unavailable)
                    .after(1)
                    .every(6)
                    .times(2),
            ),
        ),
        // Watches cut right after they started: the agent watches again.
        (
            "pod watch cut",
            proxy.add(
                Rule::new(Method::GET, "/pods", Fault::DropAnswer)
                    .query("watch=true")
                    .times(1),
            ),
        ),
        (
            "node watch cut",
            proxy.add(
                Rule::new(Method::GET, "/api/v1/nodes", Fault::DropAnswer)
                    .query("watch=true")
                    .times(1),
            ),
        ),
    ];

    let dir = tempfile::tempdir().expect("tempdir");
    let kubeconfig = proxy.agent_kubeconfig(dir.path());
    let agent = agent_support::start(
        &env,
        &kubeconfig,
        &format!("{}-lease", env.namespace),
        "agent-faults",
    );
    let name = format!("{}-faults", env.namespace);
    // Over the whole run, from the API server (directly, not through the proxy): every
    // change of the nodes, and every ztunnel pod marked for deletion.
    let history = NodeHistory::start(&env);
    let deletions = PodDeletions::start(&env, "app=ztunnel");
    let started = Instant::now();
    agent_support::create(
        &env.client,
        &agent_support::rollout(
            &env,
            &name,
            serde_json::json!({
                "waves": { "groupBy": ZONE_LABEL, "maxUnavailable": 1 },
                "drain": { "timeout": "4m" },
            }),
        ),
    )
    .await;
    let done = wait_for_complete(&env, &name, WITHIN, &agent, &proxy).await;
    eprintln!("rollout Complete after {:?}", started.elapsed());
    eprintln!("{}", proxy.report());

    // The rollout's own account: every node Done, none failed, on the target revision.
    let status = done.status.as_ref().expect("status");
    assert_eq!(status.target_revision.as_deref(), Some(target.as_str()));
    assert_eq!(status.counts.total, 6, "{:?}", status.counts);
    assert_eq!(status.counts.failed, 0, "{:?}", status.nodes);
    assert_eq!(status.counts.done, 6, "{:?}", status.nodes);
    for node in &env.nodes {
        let phase = agent_support::node_status(&done, node).map(|n| n.phase);
        assert_eq!(phase, Some(NodePhase::Done), "{node}: {:?}", status.nodes);
    }
    // The cluster's: every node schedulable and released, every ztunnel pod on target.
    agent_support::assert_nodes_released(&env.client, &env.node_list_params(), None).await;
    let hashes = support::ztunnel_hashes(&env).await;
    assert_eq!(hashes.len(), 6, "{hashes:?}");
    // Each old ztunnel pod was deleted once, each while its node was cordoned by the
    // rollout, whatever the API did meanwhile.
    let deleted = deletions.seen.lock().expect("lock").clone();
    let on: BTreeSet<&str> = deleted.iter().map(|(_, _, node)| node.as_str()).collect();
    assert_eq!(
        (deleted.len(), on.len()),
        (6, 6),
        "one ztunnel deletion per node: {deleted:?}"
    );
    let wrong = history::deleted_off_a_cordon(&history, &deletions, &name);
    assert!(
        wrong.is_empty(),
        "ztunnel pods deleted while their node was not cordoned by the rollout: {wrong:?}"
    );
    assert!(
        hashes.values().all(|h| *h == target),
        "every ztunnel pod on {target}: {hashes:?}"
    );

    // And the faults happened.
    let report = proxy.report();
    for (what, rule) in rules {
        assert!(
            proxy.fired(rule) >= 1,
            "{what} (rule {rule}) never fired\n{report}"
        );
    }
    for kind in [
        FaultKind::Reset,
        FaultKind::Delay,
        FaultKind::Unavailable,
        FaultKind::Throttle,
        FaultKind::DropAnswer,
    ] {
        assert!(proxy.injected(kind) >= 1, "no {kind:?} injected\n{report}");
    }
    let lost_node_writes = proxy
        .injections()
        .into_iter()
        .filter(|i| {
            i.fault == Fault::DropAnswer
                && i.method == Method::PATCH
                && i.target.contains(node_patch)
                && i.upstream_status.is_some_and(|s| (200..300).contains(&s))
        })
        .count();
    assert!(
        lost_node_writes >= 1,
        "no node PATCH applied with its answer lost\n{report}"
    );
}
