//! The failure policy `Rollback` on the local control plane: a drain that fails in wave 2
//! restores the DaemonSet's previous revision and returns every updated node to it,
//! through the same PDB-respecting sequence, waves in reverse.

mod support;

use std::time::Duration;

use k8s_openapi::api::apps::v1::{ControllerRevision, DaemonSet};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::Api;
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use support::agent as agent_support;
use support::{TestEnv, sample_available};
use ztunnel_rollout::api::ZtunnelRollout;
use ztunnel_rollout_core::rollout::node_machine::NodePhase;
use ztunnel_rollout_testbed::fixtures::{Budget, UpdateStrategy};

/// ztunnel (OnDelete) on `env`'s nodes, `replicas` of app `web` under a PDB, and a pod
/// on a wave-b node (node 1) whose PDB can never allow a disruption: that node fails,
/// found before it is cordoned. Then ztunnel moves to a new revision. Returns the old
/// and new revision hashes and the node that will fail.
async fn wave_b_will_fail(env: &TestEnv, replicas: i32) -> (String, String, String) {
    let ztunnel = support::apply_ztunnel(env, UpdateStrategy::OnDelete).await;
    let old = support::ztunnel_hashes(env)
        .await
        .into_values()
        .next()
        .expect("a ztunnel pod");
    support::apply_app(
        env,
        "web",
        replicas,
        &[("web", Budget::MaxUnavailable(IntOrString::Int(1)))],
        1.0,
    )
    .await;
    let blocked = env.nodes[1].clone();
    support::pin_unevictable_pod(env, &blocked).await;
    let new = support::upgrade_ztunnel(&env.client, &env.namespace, ztunnel).await;
    assert_ne!(old, new);
    (old, new, blocked)
}

#[tokio::test]
async fn a_failure_in_wave_two_rolls_every_updated_node_back_within_the_pdbs() {
    let env = TestEnv::new("rollback", 6).await;
    agent_support::install(&env.client).await;
    // Zones a, b, c: nodes 0 and 3, 1 and 4, 2 and 5.
    let (old, new, blocked) = wave_b_will_fail(&env, 6).await;

    let (pods_seen, pod_sampler) = sample_available(&env);
    let history = support::history::NodeHistory::start(&env);
    let dir = tempfile::tempdir().expect("tempdir");
    let agent = agent_support::start_as_service_account(&env, dir.path(), "agent-a");
    let name = format!("{}-rb", env.namespace);
    let rollout = agent_support::rollout(
        &env,
        &name,
        serde_json::json!({
            "drain": { "timeout": "3s" },
            "health": { "onFailure": "Rollback", "waypoints": { "disabled": true } }
        }),
    );
    let api: Api<ZtunnelRollout> = Api::all(env.client.clone());
    api.create(&PostParams::default(), &rollout)
        .await
        .expect("create");

    let rolling_back = agent_support::wait_for_phase(
        &env.client,
        &name,
        "RollingBack",
        Duration::from_secs(120),
        &[&agent],
    )
    .await;
    let status = rolling_back.status.clone().expect("status");
    let rb = status
        .rollback
        .clone()
        .expect("rollback recorded in the status");
    assert_eq!(
        (rb.from.as_str(), rb.to.as_str()),
        (new.as_str(), old.as_str())
    );
    assert!(
        rb.reason.contains(&blocked) && rb.reason.contains("no drain can evict its pods"),
        "{}",
        rb.reason
    );
    assert!(
        !support::is_cordoned(&env.client, &blocked).await,
        "a node refused before its cordon is never cordoned"
    );
    // Which nodes the forward pass had updated (wave a, perhaps a node of wave b).
    let updated: Vec<String> = status
        .nodes
        .iter()
        .filter(|n| n.phase == NodePhase::Done)
        .map(|n| n.name.clone())
        .collect();
    assert!(
        updated.contains(&env.nodes[0]) && updated.contains(&env.nodes[3]),
        "{updated:?}"
    );
    support::wait_for_event(&env.client, &name, "RollbackStarted", &old).await;

    let done = agent_support::wait_for_phase(
        &env.client,
        &name,
        "RolledBack",
        Duration::from_secs(180),
        &[&agent],
    )
    .await;
    pod_sampler.abort();

    // The DaemonSet is back on the previous revision, and so is every ztunnel pod.
    let ds = Api::<DaemonSet>::namespaced(env.client.clone(), &env.namespace)
        .get("ztunnel")
        .await
        .expect("ds");
    let image = ds
        .spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .map(|s| s.containers[0].image.clone());
    assert!(
        image
            .flatten()
            .is_some_and(|i| i.ends_with(":1.28.0-distroless")),
        "the DaemonSet template is restored"
    );
    let hashes = support::ztunnel_hashes(&env).await;
    assert_eq!(hashes.len(), 6);
    assert!(
        hashes.values().all(|h| *h == old),
        "every ztunnel back on {old}: {hashes:?}"
    );
    let status = done.status.expect("status");
    assert_eq!(status.target_revision.as_deref(), Some(old.as_str()));
    assert_eq!(status.counts.failed, 0, "{:?}", status.nodes);
    let degraded = status
        .conditions
        .iter()
        .find(|c| c.type_ == "Degraded")
        .expect("Degraded");
    assert_eq!(
        (degraded.status.as_str(), degraded.reason.as_str()),
        ("True", "RolledBack")
    );

    // Waves in reverse: a rolled-back node of wave b was cordoned (its last cordon, by
    // the API server's order of changes) before those of wave a.
    if updated.contains(&env.nodes[4]) {
        let b = history
            .last_taken(&env.nodes[4])
            .expect("wave b node cordoned");
        for a in [&env.nodes[0], &env.nodes[3]] {
            let a_taken = history.last_taken(a).expect("wave a node cordoned");
            assert!(b < a_taken, "wave b before wave a ({b} vs {a_taken})");
        }
    }

    // No PDB was ever violated: web never below 5 of 6, the blocker never evicted.
    let pods_seen = std::mem::take(&mut *pods_seen.lock().expect("lock"));
    assert!(
        pods_seen.get("web").is_some_and(|min| *min >= 5),
        "web never below its PDB: {pods_seen:?}"
    );
    assert_eq!(
        pods_seen.get("blocker"),
        Some(&1),
        "the blocker was never evicted"
    );
    agent_support::assert_nodes_released(&env.client, &env.node_list_params(), None).await;
}

/// The `RollbackRestoreFailed` Events about rollout `uid` (events.k8s.io, in `default`
/// where Events about cluster-scoped objects go), oldest first.
async fn restore_failures(
    client: &kube::Client,
    uid: &str,
) -> Vec<k8s_openapi::api::events::v1::Event> {
    support::events_with_reason(client, "RollbackRestoreFailed", |e| {
        e.regarding.as_ref().and_then(|r| r.uid.as_deref()) == Some(uid)
    })
    .await
}

/// How many occurrences an Event stands for: its series' count, or one.
fn occurrences(e: &k8s_openapi::api::events::v1::Event) -> i32 {
    e.series
        .as_ref()
        .map(|s| s.count)
        .or(e.deprecated_count.filter(|c| *c > 0))
        .unwrap_or(1)
}

#[tokio::test]
async fn a_refused_daemonset_restore_is_retried_a_bounded_number_of_times_and_told() {
    let env = TestEnv::new("rollback-refused", 3).await;
    agent_support::install(&env.client).await;
    // Zones a, b, c: nodes 0, 1, 2.
    let (old, new, blocked) = wave_b_will_fail(&env, 3).await;

    // The API server refuses every change of the DaemonSet's pod template from now on:
    // the rollback's restore of the previous revision is one.
    let ds_api = Api::<DaemonSet>::namespaced(env.client.clone(), &env.namespace);
    let policy = support::DenyingPolicy::install(
        &env.client,
        &format!("{}-restore", env.namespace),
        serde_json::json!({
            "namespaceSelector": {
                "matchLabels": { "kubernetes.io/metadata.name": env.namespace }
            },
            "resourceRules": [{
                "apiGroups": ["apps"], "apiVersions": ["v1"], "operations": ["UPDATE"],
                "resources": ["daemonsets"], "resourceNames": ["ztunnel"],
            }],
        }),
        "object.spec.template == oldObject.spec.template",
    )
    .await;
    let probe = serde_json::json!({ "spec": { "template": { "metadata": {
        "annotations": { "ztunnel-rollout.dev/probe": "refused?" }
    } } } });
    let dry_run = PatchParams {
        dry_run: true,
        ..Default::default()
    };
    policy
        .wait_enforced(|| async {
            ds_api
                .patch("ztunnel", &dry_run, &Patch::Merge(&probe))
                .await
                .map(drop)
        })
        .await;
    let probes_denied = policy.denials().await;
    assert_eq!(
        probes_denied, 1,
        "the API server counts {probes_denied} denials after the one denied probe"
    );

    let dir = tempfile::tempdir().expect("tempdir");
    let agent = agent_support::start_as_service_account(&env, dir.path(), "agent-a");
    let name = format!("{}-rb", env.namespace);
    let rollout = agent_support::rollout(
        &env,
        &name,
        serde_json::json!({
            "drain": { "timeout": "3s" },
            "health": { "onFailure": "Rollback", "waypoints": { "disabled": true } }
        }),
    );
    let created = agent_support::create(&env.client, &rollout).await;
    let uid = created.metadata.uid.clone().expect("the rollout's uid");

    let paused = agent_support::wait_for_phase(
        &env.client,
        &name,
        "Paused",
        Duration::from_secs(120),
        &[&agent],
    )
    .await;
    let status = paused.status.clone().expect("status");
    let rb = status
        .rollback
        .as_ref()
        .expect("rollback recorded in the status");
    assert_eq!(
        (rb.from.as_str(), rb.to.as_str()),
        (new.as_str(), old.as_str()),
        "the rollback recorded in the status: {rb:?}"
    );
    let degraded = status
        .conditions
        .iter()
        .find(|c| c.type_ == "Degraded")
        .unwrap_or_else(|| panic!("no Degraded condition: {:?}", status.conditions));
    assert_eq!(degraded.status, "True", "{degraded:?}");
    assert!(
        degraded.message.contains(&format!(
            "still shows revision {new} after 5 restores to revision {old}"
        )),
        "Degraded says: {}",
        degraded.message
    );

    // The DaemonSet still has the new template.
    let ds = ds_api.get("ztunnel").await.expect("ds");
    let image = ds
        .spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .and_then(|s| s.containers[0].image.clone())
        .unwrap_or_default();
    assert!(
        image.ends_with(":1.28.1-distroless"),
        "the DaemonSet's template changed although every restore was refused: image {image}"
    );
    let revisions = Api::<ControllerRevision>::namespaced(env.client.clone(), &env.namespace)
        .list(&ListParams::default())
        .await
        .expect("revisions")
        .items;
    let current = ztunnel_rollout_core::rollout::revision::current_revision_hash(&ds, &revisions);
    assert_eq!(
        current.as_deref().ok(),
        Some(new.as_str()),
        "the DaemonSet's current revision: {current:?}"
    );

    // Each refused restore is one Warning Event, 5 in all; the Events are sent after the
    // fact, so wait (bounded) for the fifth.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let events = loop {
        let events = restore_failures(&env.client, &uid).await;
        if events.iter().map(occurrences).sum::<i32>() >= 5 {
            break events;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "fewer than 5 RollbackRestoreFailed Events within 30s: {:?}",
            events.iter().map(|e| &e.note).collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let notes: Vec<String> = events
        .iter()
        .map(|e| e.note.clone().unwrap_or_default())
        .collect();
    assert_eq!(
        events.iter().map(occurrences).sum::<i32>(),
        5,
        "refused restores told: {notes:?}"
    );
    for (i, e) in events.iter().enumerate() {
        let note = &notes[i];
        assert_eq!(
            e.type_.as_deref(),
            Some("Warning"),
            "{note}: type {:?}",
            e.type_
        );
        assert!(
            note.starts_with(&format!(
                "restoring the DaemonSet's previous revision failed (attempt {} of 5): ",
                i + 1
            )) && note.contains(&policy.name),
            "Event {} of {}: {note}",
            i + 1,
            notes.len()
        );
    }
    let last = notes.last().expect("an Event");
    assert!(last.contains("attempt 5 of 5"), "the last Event: {last}");
    // The API server refused exactly 5 restores (and the probe).
    let denied = policy.denials().await.saturating_sub(probes_denied);
    assert_eq!(denied, 5, "restores the API server refused: {denied}");

    // The wave-a node, updated before the failure, was released; the refused one was
    // never cordoned.
    let updated: Vec<&str> = status
        .nodes
        .iter()
        .filter(|n| n.phase == NodePhase::Done)
        .map(|n| n.name.as_str())
        .collect();
    assert!(
        updated.contains(&env.nodes[0].as_str()),
        "nodes updated before the failure: {updated:?}"
    );
    for node in [&env.nodes[0], &blocked] {
        assert!(
            !support::is_cordoned(&env.client, node).await,
            "{node} is cordoned while the rollout is Paused"
        );
    }

    // Done with it: the refusal goes, the rollout is aborted, and every node is released.
    policy.remove().await;
    agent_support::abort(&env.client, &name, &agent).await;
    agent_support::assert_nodes_released(&env.client, &env.node_list_params(), None).await;
    // Paused after the fifth refusal means no sixth restore was sent since.
    let told = restore_failures(&env.client, &uid)
        .await
        .iter()
        .map(occurrences)
        .sum::<i32>();
    assert_eq!(told, 5, "RollbackRestoreFailed Events by the end: {told}");
}

/// A DaemonSet shaped like Istio's istio-cni (`istio-cni-node`, pods labelled
/// `k8s-app=istio-cni-node`, `OnDelete`) on `env`'s nodes, at `version`: the ztunnel
/// fixture renamed (KWOK runs both alike). Returns its current revision hash once the
/// DaemonSet controller observed it.
async fn apply_cni(env: &TestEnv, version: &str) -> String {
    let mut fixture =
        ztunnel_rollout_testbed::fixtures::ZtunnelFixture::new(&env.namespace, version);
    fixture.node_selector = env.node_selector();
    let mut ds = serde_json::to_value(fixture.daemonset()).expect("json");
    let cni = serde_json::json!({ "k8s-app": CNI });
    ds["metadata"]["name"] = CNI.into();
    ds["spec"]["selector"]["matchLabels"] = cni.clone();
    ds["spec"]["template"]["metadata"]["labels"] = cni;
    ds["spec"]["template"]["spec"]["containers"][0]["name"] = "install-cni".into();
    ds["spec"]["template"]["spec"]["containers"][0]["image"] =
        format!("docker.io/istio/install-cni:{version}-distroless").into();
    let ds: DaemonSet = serde_json::from_value(ds).expect("DaemonSet");
    let api: Api<DaemonSet> = Api::namespaced(env.client.clone(), &env.namespace);
    ztunnel_rollout_testbed::fixtures::apply(&api, &ds)
        .await
        .expect("apply istio-cni");
    support::observed_revision(&env.client, &env.namespace, CNI).await
}

/// A rollout with `spec.cni` and `onFailure: Rollback` (its agent named `agent`), once
/// it rolled back: its status.
async fn rolled_back_with_cni(
    env: &TestEnv,
    agent: &str,
) -> ztunnel_rollout::api::ZtunnelRolloutStatus {
    let dir = tempfile::tempdir().expect("tempdir");
    let agent = agent_support::start_as_service_account(env, dir.path(), agent);
    let name = format!("{}-rb", env.namespace);
    let rollout = agent_support::rollout(
        env,
        &name,
        serde_json::json!({
            "cni": { "namespace": env.namespace, "name": CNI },
            "drain": { "timeout": "3s" },
            "health": { "onFailure": "Rollback", "waypoints": { "disabled": true } }
        }),
    );
    Api::<ZtunnelRollout>::all(env.client.clone())
        .create(&PostParams::default(), &rollout)
        .await
        .expect("create");
    agent_support::wait_for_phase(
        &env.client,
        &name,
        "RolledBack",
        Duration::from_secs(240),
        &[&agent],
    )
    .await
    .status
    .expect("status")
}

/// Each node's live istio-cni pod's revision hash.
async fn cni_hashes(env: &TestEnv) -> std::collections::BTreeMap<String, String> {
    support::pods_by_node(env, &format!("k8s-app={CNI}"), support::revision_hash).await
}

const CNI: &str = "istio-cni-node";

#[tokio::test]
async fn a_rollback_restores_istio_cni_too_and_takes_its_pods_back() {
    let env = TestEnv::new("rollback-cni", 6).await;
    agent_support::install(&env.client).await;
    let old_cni = apply_cni(&env, "1.28.0").await;
    let n = env.nodes.len() as i32;
    support::wait_for(
        &Api::<DaemonSet>::namespaced(env.client.clone(), &env.namespace),
        CNI,
        "istio-cni Ready on every node",
        support::daemonset_ready(n),
    )
    .await;
    let (old, new, _blocked) = wave_b_will_fail(&env, 6).await;
    let new_cni = apply_cni(&env, "1.28.1").await;
    assert_ne!(old_cni, new_cni);

    let status = rolled_back_with_cni(&env, "agent-cni").await;

    // The status names both restores; the API server shows both DaemonSets and every
    // pod back on their previous revisions.
    let rb = status.rollback.expect("rollback");
    assert_eq!(
        (rb.from.as_str(), rb.to.as_str()),
        (new.as_str(), old.as_str())
    );
    let cni = rb.cni.expect("istio-cni's part of the rollback");
    assert_eq!(
        (cni.from.as_str(), cni.to.as_str()),
        (new_cni.as_str(), old_cni.as_str())
    );
    let ds = Api::<DaemonSet>::namespaced(env.client.clone(), &env.namespace)
        .get(CNI)
        .await
        .expect("istio-cni");
    let image = ds
        .spec
        .and_then(|s| s.template.spec)
        .and_then(|s| s.containers[0].image.clone());
    assert_eq!(
        image.as_deref(),
        Some("docker.io/istio/install-cni:1.28.0-distroless"),
        "the istio-cni DaemonSet template is restored"
    );
    let cni_pods = cni_hashes(&env).await;
    assert_eq!(cni_pods.len(), env.nodes.len(), "{cni_pods:?}");
    assert!(
        cni_pods.values().all(|h| *h == old_cni),
        "every istio-cni pod back on {old_cni}: {cni_pods:?}"
    );
    let hashes = support::ztunnel_hashes(&env).await;
    assert!(
        hashes.values().all(|h| *h == old),
        "every ztunnel back on {old}: {hashes:?}"
    );
    assert_eq!(status.counts.failed, 0, "{:?}", status.nodes);
    agent_support::assert_nodes_released(&env.client, &env.node_list_params(), None).await;
}

/// A rollout that replaced istio-cni alone (ztunnel was current on every node already,
/// with an older revision in its history) rolls back istio-cni alone: ztunnel's
/// DaemonSet keeps its revision and not one ztunnel pod is touched.
#[tokio::test]
async fn a_rollback_of_a_rollout_that_replaced_istio_cni_alone_leaves_ztunnel_alone() {
    use k8s_openapi::api::core::v1::Pod;
    let env = TestEnv::new("rollback-cni-only", 6).await;
    agent_support::install(&env.client).await;
    let old_cni = apply_cni(&env, "1.28.0").await;
    let (_, current, _blocked) = wave_b_will_fail(&env, 6).await;
    // Every ztunnel pod already on the current revision: deleted, and back on it.
    let pods: Api<Pod> = Api::namespaced(env.client.clone(), &env.namespace);
    pods.delete_collection(
        &Default::default(),
        &ListParams::default().labels("app=ztunnel"),
    )
    .await
    .expect("delete the ztunnel pods");
    let n = env.nodes.len() as i32;
    for ds in ["ztunnel", CNI] {
        support::wait_for(
            &Api::<DaemonSet>::namespaced(env.client.clone(), &env.namespace),
            ds,
            &format!("{ds} Ready and current on every node"),
            support::daemonset_ready(n),
        )
        .await;
    }
    let ztunnels = support::ztunnel_pods_by_node(&env).await;
    assert_eq!(ztunnels.len(), env.nodes.len());
    let new_cni = apply_cni(&env, "1.28.1").await;
    assert_ne!(old_cni, new_cni);

    let status = rolled_back_with_cni(&env, "agent-cni-only").await;

    let rb = status.rollback.expect("rollback");
    assert_eq!(
        (rb.from.as_str(), rb.to.as_str()),
        (current.as_str(), current.as_str()),
        "ztunnel is not rolled back"
    );
    let cni = rb.cni.expect("istio-cni's part of the rollback");
    assert_eq!(
        (cni.from.as_str(), cni.to.as_str()),
        (new_cni.as_str(), old_cni.as_str())
    );
    let cni_pods = cni_hashes(&env).await;
    assert!(
        cni_pods.values().all(|h| *h == old_cni) && cni_pods.len() == env.nodes.len(),
        "every istio-cni pod back on {old_cni}: {cni_pods:?}"
    );
    assert_eq!(
        support::ztunnel_pods_by_node(&env).await,
        ztunnels,
        "the same ztunnel pods, on every node, as before the rollout"
    );
    agent_support::assert_nodes_released(&env.client, &env.node_list_params(), None).await;
}
