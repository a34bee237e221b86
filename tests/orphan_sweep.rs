//! The orphan sweep (README, "Abort"): nodes left owned by a rollout that was removed
//! without its finalizer are released, and only those: a node is released only when the
//! API server itself says its rollout does not exist, and only as it was when the sweep
//! looked.
//!
//! One test and one agent in this binary, on purpose: every leader sweeps every node of
//! the cluster, so another test's agent running beside it would (rightly) release the
//! orphans set up here and blur what this agent did. `cargo test` runs test binaries one
//! after another.

mod support;

use std::time::Duration;

use k8s_openapi::api::core::v1::Node;
use kube::api::{DeleteParams, Patch, PatchParams};
use kube::{Api, ResourceExt};
use support::TestEnv;
use support::agent::{self as agent_support, TEST_LABEL};
use support::fault_proxy::{Fault, FaultProxy, Rule};
use ztunnel_rollout::api::ZtunnelRollout;
use ztunnel_rollout_core::labels::{
    CORDON_ID_ANNOTATION, OWNER_ANNOTATION, WAS_UNSCHEDULABLE_ANNOTATION,
};
use ztunnel_rollout_core::rollout::ownership::FIELD_MANAGER;

const WITHIN: Duration = Duration::from_secs(90);
/// How long the proxy holds the sweep's release of node 4 while the test re-creates its
/// rollout (a few API calls).
const HOLD: Duration = Duration::from_secs(10);

/// Leaves `node` as a rollout named `owner` would have left it (written as the agent
/// writes nodes): cordoned over its current resourceVersion, annotated as owned by
/// `owner`, schedulable or not before.
async fn leave_owned(client: &kube::Client, node: &str, owner: &str, was_unschedulable: bool) {
    let as_the_agent = PatchParams {
        field_manager: Some(FIELD_MANAGER.to_owned()),
        ..Default::default()
    };
    let nodes = Api::<Node>::all(client.clone());
    let over = nodes
        .get(node)
        .await
        .expect("read the node")
        .resource_version();
    nodes
        .patch(
            node,
            &as_the_agent,
            &Patch::Merge(serde_json::json!({
                "metadata": { "annotations": {
                    OWNER_ANNOTATION: owner,
                    WAS_UNSCHEDULABLE_ANNOTATION: was_unschedulable.to_string(),
                    CORDON_ID_ANNOTATION: over,
                } },
                "spec": { "unschedulable": true },
            })),
        )
        .await
        .expect("annotate");
}

/// The rollout that owns `node` by its annotation, and whether the node is cordoned.
async fn ownership(client: &kube::Client, node: &str) -> (Option<String>, bool) {
    let n = Api::<Node>::all(client.clone())
        .get(node)
        .await
        .expect("read the node");
    (
        n.annotations().get(OWNER_ANNOTATION).cloned(),
        n.spec.and_then(|s| s.unschedulable) == Some(true),
    )
}

/// A rollout named `name` of another agent's shard (a label this binary's agent does
/// not select), so that it exists and nobody runs it.
async fn create_elsewhere(env: &TestEnv, name: &str) {
    let mut r = agent_support::rollout(env, name, serde_json::json!({}));
    r.labels_mut()
        .insert(TEST_LABEL.to_owned(), format!("{}-other", env.namespace));
    agent_support::create(&env.client, &r).await;
}

#[tokio::test]
async fn the_sweep_releases_the_nodes_of_gone_rollouts_and_keeps_those_that_may_exist() {
    let env = TestEnv::new("orphan-sweep", 5).await;
    let dir = tempfile::tempdir().expect("tempdir");
    agent_support::install(&env.client).await;
    let ns = &env.namespace;
    // Node 0: owned by `live`, another agent's rollout. Node 1: owned by `unserved`,
    // which exists, but the agent is answered a 404 page (a proxy in the way, an API
    // server not serving the group), not the API server's NotFound for that object.
    // Nodes 2 and 3: owned by `gone`, which does not exist; node 2 was schedulable
    // before it, node 3 was cordoned before it. Node 4: owned by `again`, gone when the
    // sweep reads it, re-created (and cordoning the node anew) before the sweep's release
    // lands.
    let [live, unserved, gone, again] =
        ["live", "unserved", "gone", "again"].map(|s| format!("{ns}-{s}"));
    create_elsewhere(&env, &live).await;
    create_elsewhere(&env, &unserved).await;
    let setup = [
        (&live, false),
        (&unserved, false),
        (&gone, false),
        (&gone, true),
        (&again, false),
    ];
    for (node, (owner, was)) in env.nodes.iter().zip(setup) {
        leave_owned(&env.client, node, owner, was).await;
    }

    let proxy = FaultProxy::start().await;
    let get = |name: &str, fault| {
        proxy.add(Rule::new(
            http::Method::GET,
            &format!("/ztunnelrollouts/{name}"),
            fault,
        ))
    };
    let counted = Fault::Delay(Duration::ZERO);
    let read_live = get(&live, counted.clone());
    let read_unserved = get(&unserved, Fault::NotFoundPage);
    let read_again = get(&again, counted.clone());
    // The release of node 4 is held at the proxy while the test re-creates `again` (the
    // first rule that matches a request injects its fault: this one comes first).
    let held = proxy.add(
        Rule::new(
            http::Method::PATCH,
            &format!("/nodes/{}", env.nodes[4]),
            Fault::Delay(HOLD),
        )
        .times(1),
    );
    let patches: Vec<usize> = env
        .nodes
        .iter()
        .map(|n| {
            proxy.add(Rule::new(
                http::Method::PATCH,
                &format!("/nodes/{n}"),
                counted.clone(),
            ))
        })
        .collect();
    let agent = agent_support::start_with_env(
        &env,
        &proxy.agent_kubeconfig(dir.path()),
        "agent-a",
        &[("ZTUNNEL_ROLLOUT_ORPHAN_SWEEP_INTERVAL", "2s")],
    );

    if let Err(seen) = proxy.wait_seen(held, 1, WITHIN).await {
        panic!(
            "the agent sent {seen} releases of {}: {:?}\n{}",
            env.nodes[4],
            ownership(&env.client, &env.nodes[4]).await,
            agent.log_text()
        );
    }
    create_elsewhere(&env, &again).await;
    leave_owned(&env.client, &env.nodes[4], &again, false).await;
    assert!(
        proxy.delayed_answers(held).is_empty(),
        "the held release reached the API server before the test re-created the rollout: raise HOLD ({HOLD:?})"
    );
    // The release, written over the node as the sweep saw it, is refused.
    match proxy.wait_delayed_answers(held, 1, WITHIN).await {
        Ok(answers) => assert_eq!(answers, [409], "the held release was not a Conflict"),
        Err(n) => panic!("the held release was not answered ({n})"),
    }

    // A sweep reads an owner only when its previous task for that owner has ended: the
    // third read of each proves that two whole sweeps of it are over. (A node released
    // by mistake is not read again: its reads stop short.)
    for (rule, node) in [(read_live, 0), (read_unserved, 1), (read_again, 4)] {
        if let Err(seen) = proxy.wait_seen(rule, 3, WITHIN).await {
            panic!(
                "{seen} reads of the rollout that owns {}, now {:?}\n{}\n{}",
                env.nodes[node],
                ownership(&env.client, &env.nodes[node]).await,
                proxy.report(),
                agent.log_text()
            );
        }
    }
    support::wait_for_event(&env.client, &env.nodes[2], "ReleasedOrphan", &gone).await;
    support::wait_for_event(&env.client, &env.nodes[3], "ReleasedOrphan", &gone).await;
    let expected = [
        (Some(live.clone()), true),
        (Some(unserved.clone()), true),
        (None, false), // uncordoned
        (None, true),  // cordoned before `gone` came: stays cordoned
        (Some(again.clone()), true),
    ];
    for (node, expected) in env.nodes.iter().zip(expected) {
        assert_eq!(
            ownership(&env.client, node).await,
            expected,
            "{node}\n{}\n{}",
            proxy.report(),
            agent.log_text()
        );
    }
    let writes: Vec<u32> = patches.iter().map(|r| proxy.seen(*r)).collect();
    assert_eq!(
        writes,
        [0, 0, 1, 1, 1],
        "node writes: the releases of `gone`'s nodes, and the held one (a Conflict)\n{}",
        proxy.report()
    );
    let rollouts: Api<ZtunnelRollout> = Api::all(env.client.clone());
    for name in [&live, &unserved, &again] {
        let _ = rollouts.delete(name, &DeleteParams::default()).await;
    }
}
