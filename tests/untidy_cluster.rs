//! The agent when the cluster is not tidy (issue: safe when the cluster is not tidy):
//! rollouts that overlap, nodes the ztunnel DaemonSet does not run on or whose ztunnel
//! pod is missing. Each outcome is judged from the API server: the rollouts' status, and
//! a watch of every change to the test's nodes over the whole run.

mod support;

use std::collections::BTreeSet;
use std::time::Duration;

use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{Node, Pod, ResourceQuota};
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Api, ResourceExt};
use support::agent::{self as agent_support, Agent, node_status};
use support::history::NodeHistory;
use support::{TestEnv, cli};
use ztunnel_rollout::api::ZtunnelRollout;
use ztunnel_rollout_core::rollout::node_machine::NodePhase;
use ztunnel_rollout_testbed::fixtures::{self, UpdateStrategy};

const WITHIN: Duration = Duration::from_secs(90);

async fn phase(env: &TestEnv, name: &str, phase: &str, agent: &Agent) -> ZtunnelRollout {
    agent_support::wait_for_phase(&env.client, name, phase, WITHIN, &[agent]).await
}

fn condition_says(r: &ZtunnelRollout, reason: &str, text: &str) -> bool {
    r.status.as_ref().is_some_and(|s| {
        s.conditions
            .iter()
            .any(|c| c.reason == reason && c.message.contains(text))
    })
}

#[tokio::test]
async fn a_finished_rollout_stays_finished_and_overlapping_rollouts_go_one_at_a_time() {
    let env = TestEnv::new("untidy-overlap", 3).await;
    let dir = tempfile::tempdir().expect("tempdir");
    agent_support::install(&env.client).await;
    let ztunnel = support::apply_ztunnel(&env, UpdateStrategy::OnDelete).await;
    let first = support::upgrade_ztunnel(&env.client, &env.namespace, ztunnel.clone()).await;
    let agent = agent_support::start_as_service_account(&env, dir.path(), "agent-a");
    let history = NodeHistory::start(&env);

    let v1 = format!("{}-v1", env.namespace);
    agent_support::create(
        &env.client,
        &agent_support::rollout(&env, &v1, serde_json::json!({})),
    )
    .await;
    let done = phase(&env, &v1, "Complete", &agent).await;
    assert_eq!(
        done.status
            .as_ref()
            .and_then(|s| s.target_revision.as_deref()),
        Some(first.as_str())
    );
    let changes_while_v1_ran = history.log.lock().expect("lock").len();

    // The next version gets a rollout of its own (README: one rollout per version). The
    // finished one does not start again when the DaemonSet moves on.
    let second = support::upgrade_ztunnel_to(&env.client, &env.namespace, ztunnel, "1.28.2").await;
    let v2 = format!("{}-v2", env.namespace);
    agent_support::create(
        &env.client,
        &agent_support::rollout(&env, &v2, serde_json::json!({})),
    )
    .await;
    phase(&env, &v2, "Progressing", &agent).await;

    // A second active rollout over the same DaemonSet and nodes waits for the first.
    let v3 = format!("{}-v3", env.namespace);
    agent_support::create(
        &env.client,
        &agent_support::rollout(&env, &v3, serde_json::json!({})),
    )
    .await;
    let blocked = phase(&env, &v3, "Blocked", &agent).await;
    assert!(
        condition_says(&blocked, "OverlapsRollout", &v2),
        "{:?}",
        blocked.status
    );
    // And trigger refuses to create one over nodes an active rollout covers.
    let selector = format!("{}={}", fixtures::NODE_SET_LABEL, env.node_set);
    let daemonset = format!("{}/ztunnel", env.namespace);
    let triggered = format!("{}-trig", env.namespace);
    let (code, _, err) = cli(&[
        "trigger",
        "--selector",
        &selector,
        "--daemonset",
        &daemonset,
        "--name",
        &triggered,
    ]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains(&v2) && err.contains("nothing created"),
        "{err}"
    );
    let rollouts: Api<ZtunnelRollout> = Api::all(env.client.clone());
    assert!(rollouts.get_opt(&triggered).await.expect("get").is_none());

    phase(&env, &v2, "Complete", &agent).await;
    // v3 goes once v2 is finished: nothing is left for it to do.
    let after = phase(&env, &v3, "Complete", &agent).await;
    let skipped = after.status.as_ref().map(|s| {
        s.nodes
            .iter()
            .filter(|n| n.phase == NodePhase::Skipped)
            .count()
    });
    assert_eq!(skipped, Some(env.nodes.len()), "{:?}", after.status);

    // v1 is as it finished: same phase, same revision, and it never owned a node again.
    let v1_now = rollouts.get(&v1).await.expect("v1");
    assert_eq!(
        v1_now.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Complete")
    );
    assert_eq!(
        v1_now
            .status
            .as_ref()
            .and_then(|s| s.target_revision.as_deref()),
        Some(first.as_str())
    );
    let log = history.log.lock().expect("lock").clone();
    let later_owners: BTreeSet<String> = log[changes_while_v1_ran..]
        .iter()
        .filter_map(|(_, s)| s.owner.clone())
        .collect();
    assert_eq!(later_owners, BTreeSet::from([v2.clone()]), "{log:?}");
    assert_eq!(history.owners(), BTreeSet::from([v1.clone(), v2.clone()]));
    for (node, hash) in support::ztunnel_hashes(&env).await {
        assert_eq!(hash, second, "{node}");
    }
    agent_support::assert_nodes_released(&env.client, &env.node_list_params(), None).await;
}

/// Stops the DaemonSet controller from creating pods in the env's namespace once one of
/// its `pods` is gone: a quota of one fewer, once the quota controller has counted them.
async fn freeze_pod_count(env: &TestEnv, pods: usize) {
    let quotas: Api<ResourceQuota> = Api::namespaced(env.client.clone(), &env.namespace);
    let quota: ResourceQuota = serde_json::from_value(serde_json::json!({
        "metadata": { "name": "no-more-pods" },
        "spec": { "hard": { "pods": (pods - 1).to_string() } },
    }))
    .expect("quota");
    quotas
        .create(&PostParams::default(), &quota)
        .await
        .expect("create the quota");
    support::wait_for(
        &quotas,
        "no-more-pods",
        "the quota's usage counted",
        |q: Option<&ResourceQuota>| {
            q.and_then(|q| q.status.as_ref())
                .and_then(|s| s.used.as_ref())
                .and_then(|u| u.get("pods"))
                .is_some_and(|v| v.0 == pods.to_string())
        },
    )
    .await;
}

#[tokio::test]
async fn nodes_without_a_ztunnel_pod_are_never_cordoned() {
    let env = TestEnv::new("untidy-no-zt", 3).await;
    let dir = tempfile::tempdir().expect("tempdir");
    agent_support::install(&env.client).await;
    let (linux, missing, windows) = (
        env.nodes[0].clone(),
        env.nodes[1].clone(),
        env.nodes[2].clone(),
    );
    // Istio's chart selects Linux nodes: a Windows node never has a ztunnel pod.
    Api::<Node>::all(env.client.clone())
        .patch(
            &windows,
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({
                "metadata": { "labels": { "kubernetes.io/os": "windows" } }
            })),
        )
        .await
        .expect("label the node");
    let mut ztunnel = fixtures::ZtunnelFixture::new(&env.namespace, "1.28.0");
    ztunnel.node_selector = env.node_selector();
    ztunnel
        .node_selector
        .insert("kubernetes.io/os".into(), "linux".into());
    let ds_api: Api<DaemonSet> = Api::namespaced(env.client.clone(), &env.namespace);
    fixtures::apply(&ds_api, &ztunnel.daemonset())
        .await
        .expect("ztunnel");
    support::wait_for(
        &ds_api,
        "ztunnel",
        "ztunnel Ready on the Linux nodes",
        support::daemonset_ready(2),
    )
    .await;
    support::upgrade_ztunnel(&env.client, &env.namespace, ztunnel).await;

    // One Linux node loses its ztunnel pod and cannot get another (a quota).
    freeze_pod_count(&env, 2).await;
    let pods: Api<Pod> = Api::namespaced(env.client.clone(), &env.namespace);
    let on_missing = pods
        .list(&ListParams::default().fields(&format!("spec.nodeName={missing}")))
        .await
        .expect("pods")
        .items;
    for p in &on_missing {
        pods.delete(&p.name_any(), &DeleteParams::default().grace_period(0))
            .await
            .expect("delete the ztunnel pod");
    }
    support::wait_for(
        &ds_api,
        "ztunnel",
        "the DaemonSet short of one pod",
        |d: Option<&DaemonSet>| {
            d.and_then(|d| d.status.as_ref())
                .is_some_and(|s| s.current_number_scheduled == 1)
        },
    )
    .await;

    // plan and preflight say so before anything runs.
    // The rollout covers the two nodes without a ztunnel pod (the Linux node keeps its
    // pod, so the quota never frees a slot for the missing one).
    let name = format!("{}-r", env.namespace);
    let mut selector = env.node_selector();
    selector.insert("untidy".into(), "yes".into());
    for node in [&missing, &windows] {
        Api::<Node>::all(env.client.clone())
            .patch(
                node,
                &PatchParams::default(),
                &Patch::Merge(serde_json::json!({ "metadata": { "labels": { "untidy": "yes" } } })),
            )
            .await
            .expect("label the node");
    }
    let rollout = agent_support::rollout(
        &env,
        &name,
        serde_json::json!({
            "ztunnelReadyTimeout": "5s",
            "nodeSelector": { "matchLabels": selector },
        }),
    );
    agent_support::create(&env.client, &rollout).await;
    let (code, plan, err) = cli(&["plan", &name]);
    assert_eq!(code, 0, "{err}");
    assert!(
        plan.contains("SKIPPED (1 node(s), never touched)") && plan.contains(&windows),
        "{plan}"
    );
    assert!(
        plan.contains(&format!("no ztunnel pod on {missing}")),
        "{plan}"
    );
    let selector = format!("{}={}", fixtures::NODE_SET_LABEL, env.node_set);
    let (_, found, err) = cli(&[
        "preflight",
        "--ztunnel-namespace",
        &env.namespace,
        "--node-selector",
        &selector,
        "-n",
        &env.namespace,
        "-o",
        "json",
    ]);
    assert!(
        found.contains("ztunnel-pod-missing") && found.contains(&missing),
        "{found}{err}"
    );
    assert!(
        found.contains("ztunnel-not-on-node") && found.contains(&windows),
        "{found}{err}"
    );

    let history = NodeHistory::start(&env);
    let agent = agent_support::start_as_service_account(&env, dir.path(), "agent-a");
    // The node missing its pod fails (after ztunnelReadyTimeout) without being
    // cordoned: the failure policy pauses the rollout.
    let paused = phase(&env, &name, "Paused", &agent).await;
    let status = |node: &str| node_status(&paused, node).cloned().expect("a node status");
    assert_eq!(
        status(&missing).phase,
        NodePhase::Failed,
        "{:?}",
        status(&missing)
    );
    assert!(
        status(&missing)
            .message
            .contains("no ztunnel pod on the node")
            && status(&missing).message.contains("not cordoned"),
        "{:?}",
        status(&missing)
    );
    assert_eq!(status(&windows).phase, NodePhase::Skipped);
    assert!(
        status(&windows).message.contains("kubernetes.io/os=linux"),
        "{:?}",
        status(&windows)
    );
    assert!(
        !history.ever_cordoned(&missing),
        "the node without ztunnel was cordoned"
    );
    assert!(
        !history.ever_cordoned(&windows),
        "the Windows node was cordoned"
    );
    assert!(node_status(&paused, &linux).is_none(), "not in the rollout");
    assert!(!history.ever_cordoned(&linux));
    // The failed node is not waiting for its turn any more: its waiting taint goes.
    let untainted = |n: Option<&Node>| {
        n.is_some_and(|n| {
            n.spec
                .as_ref()
                .and_then(|s| s.taints.as_ref())
                .is_none_or(|ts| {
                    ts.iter()
                        .all(|t| t.key != ztunnel_rollout_core::labels::WAITING_TAINT)
                })
        })
    };
    tokio::time::timeout(
        WITHIN,
        kube::runtime::wait::await_condition(
            Api::<Node>::all(env.client.clone()),
            &missing,
            untainted,
        ),
    )
    .await
    .unwrap_or_else(|_| panic!("the waiting taint stays on {missing}\n{}", agent.log_text()))
    .expect("watch");
    agent_support::assert_nodes_released(&env.client, &env.node_list_params(), None).await;
}

/// Every node of the env schedulable and free of our annotation, read now.
async fn all_released(env: &TestEnv) -> Vec<String> {
    let mut problems = Vec::new();
    for n in Api::<Node>::all(env.client.clone())
        .list(&env.node_list_params())
        .await
        .expect("nodes")
    {
        if n.spec.as_ref().and_then(|s| s.unschedulable) == Some(true) {
            problems.push(format!("{} cordoned", n.name_any()));
        }
        if let Some(owner) = n
            .annotations()
            .get(ztunnel_rollout_core::labels::OWNER_ANNOTATION)
        {
            problems.push(format!("{} owned by {owner}", n.name_any()));
        }
    }
    problems
}

#[tokio::test]
async fn aborts_and_deletes_at_any_moment_never_leave_a_node_cordoned() {
    let env = TestEnv::new("untidy-abort", 4).await;
    let dir = tempfile::tempdir().expect("tempdir");
    agent_support::install(&env.client).await;
    let ztunnel = support::apply_ztunnel(&env, UpdateStrategy::OnDelete).await;
    support::upgrade_ztunnel(&env.client, &env.namespace, ztunnel).await;
    let agent = agent_support::start_as_service_account(&env, dir.path(), "agent-a");
    let rollouts: Api<ZtunnelRollout> = Api::all(env.client.clone());
    // The moments after creation at which an operator aborts or deletes: from before
    // the agent has seen the rollout to mid-way through its first nodes. (The delay is
    // the test's input, not a wait for an outcome.)
    let moments_ms = [0u64, 30, 80, 150, 250, 400, 600, 900, 1300, 1800];
    for (i, moment) in moments_ms.into_iter().enumerate() {
        let name = format!("{}-{i}", env.namespace);
        let spec = serde_json::json!({
            "cycleCurrent": true,
            "waves": { "groupBy": fixtures::ZONE_LABEL, "maxUnavailable": 2 },
        });
        let uid = agent_support::create(&env.client, &agent_support::rollout(&env, &name, spec))
            .await
            .uid()
            .expect("a uid");
        tokio::time::sleep(Duration::from_millis(moment)).await;
        if i % 2 == 0 {
            rollouts
                .patch(
                    &name,
                    &PatchParams::default(),
                    &Patch::Merge(serde_json::json!({ "spec": { "abort": true } })),
                )
                .await
                .expect("abort");
            phase(&env, &name, "Aborted", &agent).await;
        } else {
            rollouts
                .delete(&name, &DeleteParams::default())
                .await
                .expect("delete");
            tokio::time::timeout(
                WITHIN,
                kube::runtime::wait::await_condition(
                    rollouts.clone(),
                    &name,
                    kube::runtime::wait::conditions::is_deleted(&uid),
                ),
            )
            .await
            .unwrap_or_else(|_| panic!("{name} not gone\n{}", agent.log_text()))
            .expect("watch");
        }
        let left = all_released(&env).await;
        assert!(
            left.is_empty(),
            "after {} at {moment} ms: {left:?}\n{}",
            if i % 2 == 0 { "an abort" } else { "a delete" },
            agent.log_text()
        );
    }
}

/// Lets the drain held by `support::hold_drain_on` finish: its spare replica comes up
/// on `node`, so the PDB allows one disruption.
async fn let_the_drain_go(env: &TestEnv, node: &str) {
    use k8s_openapi::api::apps::v1::Deployment;
    let deployments: Api<Deployment> = Api::namespaced(env.client.clone(), &env.namespace);
    let mut spare = fixtures::AppFixture::new(&env.namespace, "held-spare", 1);
    spare.node_selector =
        std::collections::BTreeMap::from([("kubernetes.io/hostname".to_owned(), node.to_owned())]);
    spare.extra_labels =
        std::collections::BTreeMap::from([("held-by".to_owned(), "pdb".to_owned())]);
    fixtures::apply(&deployments, &spare.deployment())
        .await
        .expect("spare");
}

#[tokio::test]
async fn a_node_uncordoned_mid_sequence_is_cordoned_and_drained_again_before_ztunnel_goes() {
    let env = TestEnv::new("untidy-recordon", 2).await;
    let dir = tempfile::tempdir().expect("tempdir");
    agent_support::install(&env.client).await;
    let (node, other) = (env.nodes[0].clone(), env.nodes[1].clone());
    support::hold_drain_on(&env, &node).await;
    let ztunnel = support::apply_ztunnel(&env, UpdateStrategy::OnDelete).await;
    support::upgrade_ztunnel(&env.client, &env.namespace, ztunnel).await;
    let history = NodeHistory::start(&env);
    let deletions = support::history::PodDeletions::start(&env, "app=ztunnel");
    let agent = agent_support::start_as_service_account(&env, dir.path(), "agent-a");
    let name = format!("{}-r", env.namespace);
    agent_support::create(
        &env.client,
        &agent_support::rollout(
            &env,
            &name,
            serde_json::json!({ "drain": { "timeout": "5m" } }),
        ),
    )
    .await;
    let rollouts: Api<ZtunnelRollout> = Api::all(env.client.clone());
    let first = node.clone();
    support::wait_within(
        &rollouts,
        &name,
        "the node draining",
        WITHIN,
        move |r: Option<&ZtunnelRollout>| {
            r.and_then(|r| node_status(r, &first))
                .is_some_and(|n| n.phase == NodePhase::Cordoned)
        },
    )
    .await;

    // An operator uncordons it mid-drain: pods could land on it and then lose their
    // ztunnel. The agent cordons it again, says so, and drains it again.
    support::set_unschedulable(&env.client, &node, false).await;
    support::wait_for_event(&env.client, &node, "Uncordoned", "cordoned again").await;
    let nodes: Api<Node> = Api::all(env.client.clone());
    tokio::time::timeout(
        WITHIN,
        kube::runtime::wait::await_condition(nodes.clone(), &node, |n: Option<&Node>| {
            n.and_then(|n| n.spec.as_ref())
                .and_then(|s| s.unschedulable)
                == Some(true)
        }),
    )
    .await
    .unwrap_or_else(|_| panic!("not cordoned again\n{}", agent.log_text()))
    .expect("watch");
    let_the_drain_go(&env, &other).await;
    phase(&env, &name, "Complete", &agent).await;

    // Every ztunnel pod was deleted while its node was cordoned by the rollout.
    let deleted = deletions.seen.lock().expect("lock").clone();
    assert_eq!(deleted.len(), 2, "{deleted:?}");
    let wrong = support::history::deleted_off_a_cordon(&history, &deletions, &name);
    assert!(
        wrong.is_empty(),
        "ztunnel pods deleted off the rollout's cordon: {wrong:?}"
    );
    // The node went cordoned → schedulable → cordoned again under the rollout.
    let states = history
        .seen
        .lock()
        .expect("lock")
        .states
        .get(&node)
        .cloned()
        .unwrap_or_default();
    let flips: Vec<bool> = states.iter().map(|s| s.unschedulable).collect();
    assert!(
        flips.windows(3).any(|w| w == [true, false, true]),
        "{states:?}"
    );
    agent_support::assert_nodes_released(&env.client, &env.node_list_params(), None).await;
}

/// The Lease's holders as they changed, with the revisions of the changes.
type Holders = std::sync::Arc<std::sync::Mutex<Vec<(u64, String)>>>;

/// A watch of Lease `name`'s holder.
fn watch_lease(client: &kube::Client, name: &str) -> (Holders, tokio::task::JoinHandle<()>) {
    use futures::StreamExt;
    use k8s_openapi::api::coordination::v1::Lease;
    use kube::runtime::{WatchStreamExt, watcher};
    let api: Api<Lease> = Api::namespaced(client.clone(), "ztunnel-rollout");
    let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::<(u64, String)>::new()));
    let s = seen.clone();
    let task = tokio::spawn(async move {
        let mut stream = std::pin::pin!(watcher(api, config).applied_objects());
        while let Some(l) = stream.next().await {
            let Ok(l) = l else { continue };
            let holder = l
                .spec
                .as_ref()
                .and_then(|s| s.holder_identity.clone())
                .unwrap_or_default();
            let rv = l
                .metadata
                .resource_version
                .as_deref()
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            let mut seen = s.lock().expect("lock");
            if seen.last().map(|(_, h)| h) != Some(&holder) {
                seen.push((rv, holder));
            }
        }
    });
    (seen, task)
}

#[tokio::test]
async fn the_leaders_own_node_goes_last_and_the_lease_is_handed_over_before_its_drain() {
    let env = TestEnv::new("untidy-own-node", 3).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let dir_b = tempfile::tempdir().expect("tempdir");
    agent_support::install(&env.client).await;
    // The agent's own pod, on the node that would otherwise go first (fewest pods, then
    // by name).
    let own = env.nodes[0].clone();
    let mut pod = fixtures::AppFixture::new(&env.namespace, "ztunnel-rollout", 1);
    pod.node_selector =
        std::collections::BTreeMap::from([("kubernetes.io/hostname".to_owned(), own.clone())]);
    let deployments: Api<k8s_openapi::api::apps::v1::Deployment> =
        Api::namespaced(env.client.clone(), &env.namespace);
    fixtures::apply(&deployments, &pod.deployment())
        .await
        .expect("the agent's pod");
    support::wait_for(
        &deployments,
        "ztunnel-rollout",
        "the agent's pod",
        support::deployment_available(1),
    )
    .await;
    let ztunnel = support::apply_ztunnel(&env, UpdateStrategy::OnDelete).await;
    support::upgrade_ztunnel(&env.client, &env.namespace, ztunnel).await;

    let lease = format!("{}-lease", env.namespace);
    let (holders, lease_task) = watch_lease(&env.client, &lease);
    let a = agent_support::start_as_service_account_on(&env, dir.path(), "agent-a", &own);
    a.wait_for_log("leading", WITHIN).await;
    let b = agent_support::start_as_service_account(&env, dir_b.path(), "agent-b");
    let history = NodeHistory::start(&env);
    let evictions = support::history::PodDeletions::start(&env, "app=ztunnel-rollout");
    let name = format!("{}-r", env.namespace);
    // One wave of all three nodes, one at a time.
    let spec = serde_json::json!({ "waves": { "groupBy": "type", "maxUnavailable": 1 } });
    agent_support::create(&env.client, &agent_support::rollout(&env, &name, spec)).await;
    agent_support::wait_for_phase(&env.client, &name, "Complete", WITHIN, &[&a, &b]).await;

    let order = history.owned_order(&name);
    assert_eq!(
        order.last(),
        Some(&own),
        "the leader's own node goes last: {order:?}"
    );
    let holders = holders.lock().expect("lock").clone();
    lease_task.abort();
    let handed = holders
        .iter()
        .find(|(_, h)| h == "agent-b")
        .map(|(rv, _)| *rv)
        .unwrap_or_else(|| panic!("agent-b never held the lease: {holders:?}"));
    // The agent's own pod was evicted (its node drained) only after the lease moved.
    let evicted = evictions
        .seen
        .lock()
        .expect("lock")
        .iter()
        .filter(|(_, _, on)| *on == own)
        .map(|(rv, _, _)| *rv)
        .min()
        .expect("the agent's pod evicted by the drain of its node");
    assert!(
        handed < evicted,
        "the lease went to agent-b (rv {handed}) before the agent's pod on {own} was evicted (rv {evicted}): {holders:?}"
    );
    assert_eq!(
        holders.first().map(|(_, h)| h.as_str()),
        Some("agent-a"),
        "{holders:?}"
    );
}

#[tokio::test]
async fn a_finished_rollout_is_left_alone_and_deleted_after_its_ttl_with_its_metrics() {
    let env = TestEnv::new("untidy-finished", 2).await;
    let dir = tempfile::tempdir().expect("tempdir");
    agent_support::install(&env.client).await;
    let ztunnel = support::apply_ztunnel(&env, UpdateStrategy::OnDelete).await;
    support::upgrade_ztunnel(&env.client, &env.namespace, ztunnel.clone()).await;
    let agent = agent_support::start_as_service_account(&env, dir.path(), "agent-a");
    let rollouts: Api<ZtunnelRollout> = Api::all(env.client.clone());

    let kept = format!("{}-kept", env.namespace);
    agent_support::create(
        &env.client,
        &agent_support::rollout(&env, &kept, serde_json::json!({})),
    )
    .await;
    let done = phase(&env, &kept, "Complete", &agent).await;
    assert!(
        done.status
            .as_ref()
            .and_then(|s| s.finished_at.as_ref())
            .is_some(),
        "{:?}",
        done.status
    );
    // Let the agent write what a finished rollout gets (the finalizer's removal), then
    // take the object's version: nothing may write it again.
    let free = |r: Option<&ZtunnelRollout>| r.is_some_and(|r| r.finalizers().is_empty());
    tokio::time::timeout(
        WITHIN,
        kube::runtime::wait::await_condition(rollouts.clone(), &kept, free),
    )
    .await
    .expect("finalizer removed")
    .expect("watch");
    let version = rollouts.get(&kept).await.expect("get").resource_version();

    // The DaemonSet moves on and a rollout with a retention runs: the agent is busy, the
    // finished rollout stays as it is, and the new one is deleted after its TTL.
    support::upgrade_ztunnel_to(&env.client, &env.namespace, ztunnel, "1.28.2").await;
    let short = format!("{}-ttl", env.namespace);
    let short_uid = agent_support::create(
        &env.client,
        &agent_support::rollout(
            &env,
            &short,
            serde_json::json!({ "ttlSecondsAfterFinished": 3 }),
        ),
    )
    .await
    .uid()
    .expect("a uid");
    phase(&env, &short, "Complete", &agent).await;
    let series = format!("rollout=\"{short}\"");
    assert!(
        agent_support::http_get(&agent.metrics, "/metrics")
            .await
            .contains(&series),
        "the finished rollout's series are there until it goes"
    );
    tokio::time::timeout(
        WITHIN,
        kube::runtime::wait::await_condition(
            rollouts.clone(),
            &short,
            kube::runtime::wait::conditions::is_deleted(&short_uid),
        ),
    )
    .await
    .unwrap_or_else(|_| panic!("{short} not deleted after its TTL\n{}", agent.log_text()))
    .expect("watch");
    assert_eq!(
        rollouts.get(&kept).await.expect("get").resource_version(),
        version,
        "the finished rollout was written again"
    );
    // Its metric series go with it (the agent forgets it at its next pass).
    let deadline = tokio::time::Instant::now() + WITHIN;
    loop {
        let text = agent_support::http_get(&agent.metrics, "/metrics").await;
        if !text.contains(&series) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "series left for {short}:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn the_status_of_five_thousand_nodes_in_trouble_is_stored_well_under_a_mebibyte() {
    use std::collections::BTreeMap;
    use ztunnel_rollout_core::rollout::status::{TrackedNode, node_statuses};
    let env = TestEnv::new("untidy-status", 0).await;
    agent_support::install(&env.client).await;
    let name = format!("{}-big", env.namespace);
    agent_support::create(
        &env.client,
        &agent_support::rollout(&env, &name, serde_json::json!({})),
    )
    .await;
    let at: k8s_openapi::jiff::Timestamp = "2026-12-01T10:00:00Z".parse().expect("time");
    let long = "drain failed: pods left at the deadline: ".to_owned()
        + &"shop/web-0123456789 (PDB shop/web allows 0 disruptions); ".repeat(40);
    let records: BTreeMap<String, TrackedNode> = (0..5_000)
        .map(|i| {
            let mut t = TrackedNode::pending(at);
            t.record.phase = if i % 5 == 0 {
                NodePhase::Failed
            } else {
                NodePhase::Done
            };
            t.record.was_unschedulable = Some(false);
            t.message = long.clone();
            (
                format!("ip-10-0-{}-{}.eu-west-1.compute.internal", i / 256, i % 256),
                t,
            )
        })
        .collect();
    let status = serde_json::json!({ "status": {
        "phase": "Paused",
        "nodes": node_statuses(&records),
    }});
    let rollouts: Api<ZtunnelRollout> = Api::all(env.client.clone());
    rollouts
        .patch_status(&name, &PatchParams::default(), &Patch::Merge(status))
        .await
        .expect("the API server takes the status");
    let stored = rollouts.get(&name).await.expect("read back");
    let nodes = stored.status.as_ref().map_or(0, |s| s.nodes.len());
    assert_eq!(nodes, 5_000);
    let bytes = serde_json::to_vec(&stored).expect("json").len();
    assert!(bytes < 640 * 1024, "{bytes} bytes stored");
}
