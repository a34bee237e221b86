//! The node actions against the real API server: ownership is recorded with the cordon,
//! a node someone else cordoned stays cordoned, stale reads and lost leadership change
//! nothing.

mod support;

use std::time::Duration;

use k8s_openapi::api::core::v1::{Node, Pod};
use kube::Api;
use kube::api::{Patch, PatchParams, PostParams};
use support::{TestEnv, set_unschedulable};
use ztunnel_rollout::agent::node_actions::{ActionError, NodeActions};
use ztunnel_rollout::leader::{self, LeaderConfig, Leadership};
use ztunnel_rollout_core::labels::{
    CORDON_ID_ANNOTATION, OWNER_ANNOTATION, WAITING_TAINT, WAS_UNSCHEDULABLE_ANNOTATION,
};
use ztunnel_rollout_core::rollout::ownership::{cordon_id, recorded_was_unschedulable};
use ztunnel_rollout_core::rollout::pass::CallDone;

async fn leading(env: &TestEnv) -> (Leadership, tokio::task::JoinHandle<()>) {
    let config = LeaderConfig {
        namespace: env.namespace.clone(),
        lease_name: "agent".into(),
        identity: "replica-a".into(),
        lease_duration: Duration::from_secs(3),
    };
    let (mut l, task) = leader::spawn(env.client.clone(), config);
    tokio::time::timeout(Duration::from_secs(10), l.acquired())
        .await
        .expect("leader");
    (l, task)
}

async fn node(env: &TestEnv, name: &str) -> Node {
    Api::<Node>::all(env.client.clone())
        .get(name)
        .await
        .expect("node")
}

/// Records and cordons `name` as read just before. A change between the read and the
/// write (a heartbeat, the lifecycle controller's taint) is a Conflict; like the agent,
/// read again.
async fn record_and_cordon(
    actions: &NodeActions,
    env: &TestEnv,
    name: &str,
    was: bool,
) -> CallDone {
    for _ in 0..5 {
        let observed = node(env, name).await;
        match actions.record_and_cordon("r1", &observed, was).await {
            Err(ActionError::Conflict { .. }) => continue,
            other => return other.expect("record and cordon"),
        }
    }
    panic!("node {name} changed between every read and write");
}

/// Releases `name` for rollout r1 (from `copy`, if given); like the agent, again after a
/// Conflict (the node lifecycle controller taints a node right after it is cordoned).
async fn release(actions: &NodeActions, name: &str, copy: Option<&Node>) -> CallDone {
    for _ in 0..5 {
        match actions.release("r1", name, true, copy).await {
            Err(ActionError::Conflict { .. }) => continue,
            other => return other.expect("release"),
        }
    }
    panic!("node {name} changed between every read and write");
}

/// The bake's uncordon of `name` for rollout r1; like the agent, again after a Conflict.
async fn uncordon_for_bake(actions: &NodeActions, name: &str) -> CallDone {
    for _ in 0..5 {
        match actions.uncordon_for_bake("r1", name).await {
            Err(ActionError::Conflict { .. }) => continue,
            other => return other.expect("uncordon for the bake"),
        }
    }
    panic!("node {name} changed between every read and write");
}

fn unschedulable(n: &Node) -> bool {
    n.spec.as_ref().and_then(|s| s.unschedulable) == Some(true)
}

#[tokio::test]
async fn cordon_records_ownership_and_release_restores_the_node() {
    let env = TestEnv::new("actions", 2).await;
    let (leadership, task) = leading(&env).await;
    let actions = NodeActions::new(env.client.clone(), leadership);
    let (ours, theirs) = (env.nodes[0].clone(), env.nodes[1].clone());

    record_and_cordon(&actions, &env, &ours, false).await;
    let cordoned = node(&env, &ours).await;
    assert!(unschedulable(&cordoned));
    let annotations = cordoned.metadata.annotations.clone().unwrap_or_default();
    assert_eq!(
        annotations.get(OWNER_ANNOTATION).map(String::as_str),
        Some("r1")
    );
    assert_eq!(
        annotations
            .get(WAS_UNSCHEDULABLE_ANNOTATION)
            .map(String::as_str),
        Some("false")
    );
    assert_eq!(recorded_was_unschedulable(&cordoned, "r1"), Some(false));
    let err = actions
        .release("r2", &ours, true, None)
        .await
        .expect_err("another rollout's node");
    assert!(matches!(err, ActionError::OwnedByOther { .. }), "{err}");
    release(&actions, &ours, None).await;
    let released = node(&env, &ours).await;
    assert!(!unschedulable(&released));
    assert!(
        !released
            .metadata
            .annotations
            .unwrap_or_default()
            .contains_key(OWNER_ANNOTATION)
    );

    // An operator cordoned this one: it stays cordoned.
    set_unschedulable(&env.client, &theirs, true).await;
    record_and_cordon(&actions, &env, &theirs, true).await;
    release(&actions, &theirs, None).await;
    let after = node(&env, &theirs).await;
    assert!(
        unschedulable(&after),
        "uncordoned a node someone else cordoned"
    );
    assert!(
        !after
            .metadata
            .annotations
            .unwrap_or_default()
            .contains_key(OWNER_ANNOTATION)
    );
    task.abort();
}

#[tokio::test]
async fn release_from_the_watched_copy_reads_again_when_the_copy_is_stale() {
    let env = TestEnv::new("actions-release", 2).await;
    let (leadership, task) = leading(&env).await;
    let actions = NodeActions::new(env.client.clone(), leadership);
    let (current, stale) = (env.nodes[0].clone(), env.nodes[1].clone());
    for name in [&current, &stale] {
        record_and_cordon(&actions, &env, name, false).await;
    }

    // A current copy: released from it.
    let copy = node(&env, &current).await;
    release(&actions, &current, Some(&copy)).await;
    // A copy older than the node: the conditional patch conflicts, the node is read again.
    let copy = node(&env, &stale).await;
    Api::<Node>::all(env.client.clone())
        .patch(
            &stale,
            &PatchParams::default(),
            &Patch::Merge(
                serde_json::json!({ "metadata": { "labels": { "changed": "after-the-read" } } }),
            ),
        )
        .await
        .expect("label the node");
    release(&actions, &stale, Some(&copy)).await;

    for name in [&current, &stale] {
        let released = node(&env, name).await;
        assert!(!unschedulable(&released), "{name} uncordoned");
        assert_eq!(recorded_was_unschedulable(&released, "r1"), None, "{name}");
        assert!(
            !released
                .metadata
                .annotations
                .unwrap_or_default()
                .contains_key(OWNER_ANNOTATION),
            "{name}: ownership removed"
        );
    }
    task.abort();
}

#[tokio::test]
async fn a_stale_read_or_lost_leadership_changes_nothing() {
    let env = TestEnv::new("actions-stale", 1).await;
    let (leadership, task) = leading(&env).await;
    let actions = NodeActions::new(env.client.clone(), leadership.clone());
    let name = env.nodes[0].clone();

    let stale = node(&env, &name).await;
    set_unschedulable(&env.client, &name, true).await; // someone cordons after our read
    let err = actions
        .record_and_cordon("r1", &stale, false)
        .await
        .expect_err("stale read");
    assert!(matches!(err, ActionError::Conflict { .. }), "{err}");
    assert_eq!(
        recorded_was_unschedulable(&node(&env, &name).await, "r1"),
        None,
        "nothing recorded"
    );
    set_unschedulable(&env.client, &name, false).await;

    // Another replica takes the lease: this one must not act any more.
    support::take_lease(&env, "agent", "replica-b").await;
    support::until_not_leader(&leadership, Duration::from_secs(3)).await;
    let fresh = node(&env, &name).await;
    let err = actions
        .record_and_cordon("r1", &fresh, false)
        .await
        .expect_err("not leader");
    assert!(matches!(err, ActionError::NotLeader(_)), "{err}");
    assert!(!unschedulable(&node(&env, &name).await));
    task.abort();
}

#[tokio::test]
async fn a_copy_without_a_resource_version_writes_nothing() {
    let env = TestEnv::new("actions-no-version", 2).await;
    let (leadership, task) = leading(&env).await;
    let actions = NodeActions::new(env.client.clone(), leadership);
    let (free, owned) = (env.nodes[0].clone(), env.nodes[1].clone());
    record_and_cordon(&actions, &env, &owned, false).await;
    let unversioned = |mut n: Node| {
        n.metadata.resource_version = None;
        n
    };

    // Without a version a merge patch would carry `"resourceVersion": null`, which
    // lifts the precondition: every write decided on such a copy is refused.
    let copy = unversioned(node(&env, &free).await);
    let cordon = actions.record_and_cordon("r1", &copy, false).await;
    assert!(
        matches!(cordon, Err(ActionError::NoVersion(_))),
        "{cordon:?}"
    );
    let taint = actions.set_waiting_taint("r1", &copy, true).await;
    assert!(matches!(taint, Err(ActionError::NoVersion(_))), "{taint:?}");
    let copy = unversioned(node(&env, &owned).await);
    let exact = actions.release_exactly("r1", &copy, true).await;
    assert!(matches!(exact, Err(ActionError::NoVersion(_))), "{exact:?}");

    let untouched = node(&env, &free).await;
    assert!(
        !unschedulable(&untouched),
        "cordoned from a copy without a version"
    );
    assert_eq!(recorded_was_unschedulable(&untouched, "r1"), None);
    let taints = untouched.spec.and_then(|s| s.taints).unwrap_or_default();
    assert!(
        !taints.iter().any(|t| t.key == WAITING_TAINT),
        "tainted from a copy without a version: {taints:?}"
    );
    let still = node(&env, &owned).await;
    assert!(
        unschedulable(&still),
        "released from a copy without a version"
    );
    assert_eq!(recorded_was_unschedulable(&still, "r1"), Some(false));

    // A release from such a watched copy reads the node afresh, as after a Conflict.
    release(&actions, &owned, Some(&copy)).await;
    let released = node(&env, &owned).await;
    assert!(!unschedulable(&released));
    assert_eq!(recorded_was_unschedulable(&released, "r1"), None);
    task.abort();
}

#[tokio::test]
async fn a_ztunnel_pod_is_deleted_only_on_a_cordoned_node_and_a_replaced_one_is_left_alone() {
    let env = TestEnv::new("actions-pod", 1).await;
    let (leadership, task) = leading(&env).await;
    let actions = NodeActions::new(env.client.clone(), leadership);
    let pods: Api<Pod> = Api::namespaced(env.client.clone(), &env.namespace);
    let pod: Pod = serde_json::from_value(serde_json::json!({
        "metadata": { "name": "ztunnel-x", "namespace": env.namespace },
        "spec": { "nodeName": env.nodes[0], "containers": [{ "name": "istio-proxy", "image": "ztunnel" }] },
    }))
    .expect("pod");
    let created = pods
        .create(&PostParams::default(), &pod)
        .await
        .expect("create");
    let node = &env.nodes[0];
    let uid = created.metadata.uid.clone().expect("uid");
    // Schedulable (someone uncordoned it after the pass decided): refused, pod kept.
    let err = actions
        .delete_node_agent_pod(node, "ztunnel", &env.namespace, "ztunnel-x", &uid)
        .await
        .expect_err("a schedulable node's ztunnel pod is never deleted");
    assert!(matches!(err, ActionError::Schedulable { .. }), "{err}");
    let kept = pods.get("ztunnel-x").await.expect("pod");
    assert!(
        kept.metadata.deletion_timestamp.is_none(),
        "the pod was deleted"
    );
    set_unschedulable(&env.client, node, true).await;
    actions
        .delete_node_agent_pod(
            node,
            "ztunnel",
            &env.namespace,
            "ztunnel-x",
            "some-older-uid",
        )
        .await
        .expect("a UID mismatch means the old pod is gone already");
    let still = pods.get("ztunnel-x").await.expect("pod");
    assert_eq!(still.metadata.uid, created.metadata.uid);
    assert!(
        still.metadata.deletion_timestamp.is_none(),
        "the newer pod was deleted"
    );
    actions
        .delete_node_agent_pod(node, "ztunnel", &env.namespace, "ztunnel-x", &uid)
        .await
        .expect("delete");
    let gone = pods.get_opt("ztunnel-x").await.expect("get");
    assert!(gone.is_none_or(|p| p.metadata.deletion_timestamp.is_some()));
    actions
        .delete_node_agent_pod(node, "ztunnel", &env.namespace, "does-not-exist", "x")
        .await
        .expect("404 is gone");
    task.abort();
}

#[tokio::test]
async fn the_waiting_taint_comes_and_goes_without_touching_other_taints() {
    let env = TestEnv::new("actions-taint", 1).await;
    let (leadership, task) = leading(&env).await;
    let actions = NodeActions::new(env.client.clone(), leadership);
    let name = env.nodes[0].clone();
    let nodes: Api<Node> = Api::all(env.client.clone());
    nodes
        .patch(
            &name,
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(serde_json::json!({
                "spec": { "taints": [{ "key": "dedicated", "value": "gpu", "effect": "NoSchedule" }] }
            })),
        )
        .await
        .expect("an operator's taint");
    let keys = |n: &Node| -> Vec<String> {
        n.spec
            .as_ref()
            .and_then(|s| s.taints.clone())
            .unwrap_or_default()
            .into_iter()
            .map(|t| t.key)
            .collect()
    };

    let done = set_taint(&actions, &env, &name, true).await;
    assert!(
        matches!(&done, CallDone::Applied { over } if !over.is_empty()),
        "{done:?}"
    );
    let tainted = node(&env, &name).await;
    assert_eq!(keys(&tainted), ["dedicated", WAITING_TAINT]);
    // No write when already tainted: the version stays. KWOK's heartbeats may move it
    // meanwhile; an unchanged version in one of five tries shows no write of ours.
    let mut unwritten = false;
    for _ in 0..5 {
        let before = node(&env, &name).await;
        let done = actions
            .set_waiting_taint("r1", &before, true)
            .await
            .expect("idempotent");
        assert!(
            matches!(&done, CallDone::Applied { over } if over.is_empty()),
            "no conditional write: {done:?}"
        );
        let after = node(&env, &name).await;
        assert_eq!(keys(&after), ["dedicated", WAITING_TAINT]);
        if after.metadata.resource_version == before.metadata.resource_version {
            unwritten = true;
            break;
        }
    }
    assert!(unwritten, "the node was written although already tainted");

    let stale = tainted.clone();
    nodes
        .patch(
            &name,
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(
                serde_json::json!({ "metadata": { "labels": { "touched": "yes" } } }),
            ),
        )
        .await
        .expect("someone else writes the node");
    let err = actions
        .set_waiting_taint("r1", &stale, false)
        .await
        .expect_err("stale read");
    assert!(matches!(err, ActionError::Conflict { .. }), "{err}");

    let done = set_taint(&actions, &env, &name, false).await;
    assert!(
        matches!(&done, CallDone::Applied { over } if !over.is_empty()),
        "{done:?}"
    );
    assert_eq!(keys(&node(&env, &name).await), ["dedicated"]);
    task.abort();
}

/// Sets or lifts r1's waiting taint from a fresh read of `name`. KWOK's heartbeats
/// write the node too, so a fresh read can still meet a Conflict: like the agent, read
/// again.
async fn set_taint(actions: &NodeActions, env: &TestEnv, name: &str, waiting: bool) -> CallDone {
    for _ in 0..5 {
        match actions
            .set_waiting_taint("r1", &node(env, name).await, waiting)
            .await
        {
            Err(ActionError::Conflict { .. }) => continue,
            other => return other.expect("set the waiting taint"),
        }
    }
    panic!("node {name} changed between every read and write");
}

/// Disowns `cordon` on `name` for rollout r1; again after a Conflict.
async fn disown(actions: &NodeActions, name: &str, cordon: Option<&str>) -> CallDone {
    for _ in 0..5 {
        match actions.disown("r1", name, cordon).await {
            Err(ActionError::Conflict { .. }) => continue,
            other => return other.expect("disown"),
        }
    }
    panic!("node {name} changed between every read and write");
}

#[tokio::test]
async fn an_uncordon_disowns_only_the_cordon_it_lifted_never_a_later_one() {
    let env = TestEnv::new("disown", 1).await;
    let (leadership, task) = leading(&env).await;
    let actions = NodeActions::new(env.client.clone(), leadership);
    let name = env.nodes[0].clone();

    // Each cordon of the rollout carries its own id.
    record_and_cordon(&actions, &env, &name, false).await;
    let first = node(&env, &name).await;
    let first_id = cordon_id(&first).map(str::to_owned).expect("a cordon id");
    assert_eq!(
        first
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(CORDON_ID_ANNOTATION)),
        Some(&first_id)
    );
    // Someone uncordons it; the rollout cordons it again before it notices.
    set_unschedulable(&env.client, &name, false).await;
    record_and_cordon(&actions, &env, &name, false).await;
    let second = node(&env, &name).await;
    assert_ne!(cordon_id(&second), Some(first_id.as_str()), "a new id");

    // The late disown of the first cordon leaves the second the rollout's.
    assert_eq!(
        disown(&actions, &name, Some(&first_id)).await,
        CallDone::NotOwned
    );
    let after = node(&env, &name).await;
    assert_eq!(recorded_was_unschedulable(&after, "r1"), Some(false));

    // Lifted again: that cordon is disowned; the rollout never uncordons the node now.
    set_unschedulable(&env.client, &name, false).await;
    let lifted = cordon_id(&after).map(str::to_owned);
    assert!(matches!(
        disown(&actions, &name, lifted.as_deref()).await,
        CallDone::Applied { .. }
    ));
    let disowned = node(&env, &name).await;
    assert_eq!(recorded_was_unschedulable(&disowned, "r1"), Some(true));
    set_unschedulable(&env.client, &name, true).await;
    release(&actions, &name, None).await;
    let released = node(&env, &name).await;
    assert!(
        unschedulable(&released),
        "the later cordon was someone else's"
    );
    assert_eq!(cordon_id(&released), None, "the release removes the id");
    task.abort();
}

#[tokio::test]
async fn a_cordon_someone_set_again_after_the_rollout_is_theirs_and_stays() {
    let env = TestEnv::new("recordoned", 1).await;
    let (leadership, task) = leading(&env).await;
    let actions = NodeActions::new(env.client.clone(), leadership);
    let name = env.nodes[0].clone();
    record_and_cordon(&actions, &env, &name, false).await;
    // An operator uncordons and cordons it again while no agent looks: our annotation
    // still says the rollout cordoned a schedulable node, the managedFields say who
    // set the cordon now.
    set_unschedulable(&env.client, &name, false).await;
    set_unschedulable(&env.client, &name, true).await;
    let done = release(&actions, &name, None).await;
    assert!(
        matches!(&done, CallDone::LeftCordoned { by, .. } if !by.is_empty()),
        "{done:?}"
    );
    let after = node(&env, &name).await;
    assert!(unschedulable(&after), "the operator's cordon stays");
    assert_eq!(
        ztunnel_rollout_core::rollout::ownership::owner(&after),
        None,
        "our annotations are gone"
    );
    task.abort();
}

/// The bake's uncordon keeps the node the rollout's (its annotation, marked
/// `was-unschedulable=true`, so a later cordon is someone else's and a release leaves
/// it); a cordon someone set after the rollout's is theirs: only the mark is written.
#[tokio::test]
async fn the_bakes_uncordon_keeps_the_node_ours_and_someone_elses_cordon() {
    let env = TestEnv::new("bake-uncordon", 2).await;
    let (leadership, task) = leading(&env).await;
    let actions = NodeActions::new(env.client.clone(), leadership);
    let rollout = "r1";
    let (ours, theirs) = (env.nodes[0].clone(), env.nodes[1].clone());
    for name in [&ours, &theirs] {
        record_and_cordon(&actions, &env, name, false).await;
    }
    let done = uncordon_for_bake(&actions, &ours).await;
    assert!(matches!(done, CallDone::Applied { .. }), "{done:?}");
    let after = node(&env, &ours).await;
    assert!(!unschedulable(&after), "uncordoned");
    assert_eq!(recorded_was_unschedulable(&after, rollout), Some(true));
    // Someone cordons the baking node: the release leaves their cordon.
    set_unschedulable(&env.client, &ours, true).await;
    let done = release(&actions, &ours, None).await;
    assert!(matches!(done, CallDone::Applied { .. }), "{done:?}");
    assert!(
        unschedulable(&node(&env, &ours).await),
        "their cordon stays"
    );

    // An operator lifted the rollout's cordon and set their own: it stays.
    set_unschedulable(&env.client, &theirs, false).await;
    set_unschedulable(&env.client, &theirs, true).await;
    let done = uncordon_for_bake(&actions, &theirs).await;
    assert!(
        matches!(&done, CallDone::LeftCordoned { by, .. } if !by.is_empty()),
        "{done:?}"
    );
    let after = node(&env, &theirs).await;
    assert!(unschedulable(&after), "the operator's cordon stays");
    assert_eq!(recorded_was_unschedulable(&after, rollout), Some(true));
    task.abort();
}
