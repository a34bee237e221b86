//! Proves the local test bed behaves like a real cluster where the rollout depends on
//! it: DaemonSets on cordoned nodes, the Eviction API and PDBs, the scheduler, Leases,
//! grace periods, and clean start/stop of the control plane.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment};
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use k8s_openapi::jiff::Timestamp;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Api, ResourceExt};
use support::{TestEnv, WAIT, daemonset_ready, deployment_available, wait_for};
use ztunnel_rollout::drain::eviction::Verdict;
use ztunnel_rollout::drain::executor::evict;
use ztunnel_rollout_testbed::fixtures::{self, AppFixture, Budget};

fn pod_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

fn node_of(pod: &Pod) -> String {
    pod.spec
        .as_ref()
        .and_then(|s| s.node_name.clone())
        .unwrap_or_default()
}

async fn cordon(env: &TestEnv, node: &str) {
    let nodes: Api<Node> = Api::all(env.client.clone());
    nodes
        .patch(
            node,
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({ "spec": { "unschedulable": true } })),
        )
        .await
        .expect("cordon");
}

async fn pods(env: &TestEnv, selector: &str) -> Vec<Pod> {
    Api::<Pod>::namespaced(env.client.clone(), &env.namespace)
        .list(&ListParams::default().labels(selector))
        .await
        .expect("list pods")
        .items
}

#[tokio::test]
async fn daemonset_covers_every_node_including_new_and_cordoned_ones() {
    let mut env = TestEnv::new("ds", 3).await;
    support::apply_ztunnel(&env, fixtures::UpdateStrategy::OnDelete).await;
    let ds_api: Api<DaemonSet> = Api::namespaced(env.client.clone(), &env.namespace);

    let placed: BTreeMap<String, Pod> = pods(&env, "app=ztunnel")
        .await
        .into_iter()
        .map(|p| (node_of(&p), p))
        .collect();
    assert_eq!(
        placed.keys().cloned().collect::<BTreeSet<_>>(),
        env.nodes.iter().cloned().collect()
    );
    for pod in placed.values() {
        assert!(pod_ready(pod), "{} not Ready", pod.name_any());
        assert!(
            pod.labels().contains_key("controller-revision-hash"),
            "no revision hash label"
        );
    }

    let added = env.add_nodes(1).await;
    wait_for(
        &ds_api,
        "ztunnel",
        "ztunnel on the new node",
        daemonset_ready(4),
    )
    .await;
    assert!(
        pods(&env, "app=ztunnel")
            .await
            .iter()
            .any(|p| node_of(p) == added[0] && pod_ready(p))
    );

    // Cordon a node; once the node lifecycle controller has tainted it, its ztunnel pod is
    // still the same Ready pod.
    let cordoned = env.nodes[0].clone();
    let before = placed[&cordoned].uid();
    cordon(&env, &cordoned).await;
    let nodes: Api<Node> = Api::all(env.client.clone());
    wait_for(
        &nodes,
        &cordoned,
        "unschedulable taint",
        |n: Option<&Node>| {
            n.and_then(|n| n.spec.as_ref())
                .and_then(|s| s.taints.as_ref())
                .is_some_and(|ts| {
                    ts.iter()
                        .any(|t| t.key == "node.kubernetes.io/unschedulable")
                })
        },
    )
    .await;
    let on_cordoned: Vec<Pod> = pods(&env, "app=ztunnel")
        .await
        .into_iter()
        .filter(|p| node_of(p) == cordoned)
        .collect();
    assert_eq!(on_cordoned.len(), 1);
    assert_eq!(
        on_cordoned[0].uid(),
        before,
        "the cordoned node's ztunnel pod was replaced"
    );
    assert!(pod_ready(&on_cordoned[0]));

    // What an OnDelete upgrade relies on: deleting it there yields a new pod on the
    // cordoned node.
    let pod_api: Api<Pod> = Api::namespaced(env.client.clone(), &env.namespace);
    pod_api
        .delete(&on_cordoned[0].name_any(), &DeleteParams::default())
        .await
        .expect("delete ztunnel pod");
    let deadline = Instant::now() + WAIT;
    loop {
        let now: Vec<Pod> = pods(&env, "app=ztunnel")
            .await
            .into_iter()
            .filter(|p| node_of(p) == cordoned)
            .collect();
        if now.len() == 1 && now[0].uid() != before && pod_ready(&now[0]) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no new Ready ztunnel pod on the cordoned node: {now:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn app_with_pdb(
    env: &TestEnv,
    name: &str,
    replicas: i32,
    budgets: &[(&str, Budget)],
) -> Vec<Pod> {
    support::apply_app(env, name, replicas, budgets, 1.0).await;
    pods(env, &format!("app={name}")).await
}

/// Evicts `pod` with its UID as precondition, as the drain does.
async fn evict_pod(api: &Api<Pod>, pod: &Pod) -> Result<(), kube::Error> {
    evict(api, &pod.name_any(), &pod.uid().unwrap_or_default(), None).await
}

fn api_error_code(err: &kube::Error) -> Option<u16> {
    match err {
        kube::Error::Api(status) => Some(status.code),
        _ => None,
    }
}

#[tokio::test]
async fn evictions_are_decided_by_pod_disruption_budgets() {
    let env = TestEnv::new("evict", 3).await;
    let pod_api: Api<Pod> = Api::namespaced(env.client.clone(), &env.namespace);

    let guarded = app_with_pdb(
        &env,
        "guarded",
        2,
        &[("guarded", Budget::MinAvailable(IntOrString::Int(2)))],
    )
    .await;
    let err = evict_pod(&pod_api, &guarded[0])
        .await
        .expect_err("eviction violating a PDB");
    assert_eq!(api_error_code(&err), Some(429), "{err}");
    let still = pod_api
        .get(&guarded[0].name_any())
        .await
        .expect("pod still there");
    assert!(
        still.metadata.deletion_timestamp.is_none(),
        "a refused eviction must not delete the pod"
    );

    // An eviction whose UID precondition names an older pod under the same name: the API
    // refuses it, and the drain's classifier reads that as "the original is gone".
    // (Without a PDB in the way: the API checks budgets before the precondition.)
    let free = app_with_pdb(&env, "free", 1, &[]).await;
    let mut stale = free[0].clone();
    stale.metadata.uid = Some("00000000-0000-0000-0000-000000000000".into());
    let err = evict_pod(&pod_api, &stale)
        .await
        .expect_err("eviction of a replaced pod");
    assert_eq!(api_error_code(&err), Some(409), "{err}");
    assert_eq!(
        Verdict::of(&Err(ztunnel_rollout::kube_client::api_failure(&err))),
        Verdict::Gone
    );

    let allowed = app_with_pdb(
        &env,
        "allowed",
        2,
        &[("allowed", Budget::MinAvailable(IntOrString::Int(1)))],
    )
    .await;
    evict_pod(&pod_api, &allowed[0])
        .await
        .expect("eviction within the PDB");
    let evicted = pod_api
        .get_opt(&allowed[0].name_any())
        .await
        .expect("get evicted pod");
    assert!(
        evicted.is_none_or(|p| p.metadata.deletion_timestamp.is_some()),
        "evicted pod is not terminating"
    );
    let pdbs: Api<PodDisruptionBudget> = Api::namespaced(env.client.clone(), &env.namespace);
    let after = pdbs.get("allowed").await.expect("pdb");
    assert_eq!(
        after.status.and_then(|s| s.disruptions_allowed),
        Some(0),
        "the eviction must use up the budget"
    );

    let doubly = app_with_pdb(
        &env,
        "doubly",
        2,
        &[
            ("doubly-a", Budget::MaxUnavailable(IntOrString::Int(1))),
            ("doubly-b", Budget::MaxUnavailable(IntOrString::Int(1))),
        ],
    )
    .await;
    let err = evict_pod(&pod_api, &doubly[0])
        .await
        .expect_err("eviction under two PDBs");
    assert_eq!(api_error_code(&err), Some(500), "{err}");
    assert!(
        err.to_string()
            .contains("more than one PodDisruptionBudget"),
        "{err}"
    );
}

#[tokio::test]
async fn evicted_pods_are_replaced_on_schedulable_nodes_only() {
    let env = TestEnv::new("sched", 3).await;
    let (first, second, third) = (
        env.nodes[0].clone(),
        env.nodes[1].clone(),
        env.nodes[2].clone(),
    );
    cordon(&env, &first).await;
    let placed = app_with_pdb(
        &env,
        "web",
        4,
        &[("web", Budget::MaxUnavailable(IntOrString::Int(1)))],
    )
    .await;
    assert!(
        placed.iter().all(|p| node_of(p) != first),
        "a pod landed on cordoned {first}"
    );

    cordon(&env, &second).await;
    let pod_api: Api<Pod> = Api::namespaced(env.client.clone(), &env.namespace);
    let victim = placed
        .iter()
        .find(|p| node_of(p) == second)
        .or_else(|| placed.first())
        .expect("a pod")
        .clone();
    evict_pod(&pod_api, &victim).await.expect("evict");
    let deployments: Api<Deployment> = Api::namespaced(env.client.clone(), &env.namespace);
    let deadline = Instant::now() + WAIT;
    let replacement = loop {
        let now = pods(&env, "app=web").await;
        if let Some(p) = now
            .iter()
            .find(|p| !placed.iter().any(|o| o.uid() == p.uid()) && pod_ready(p))
        {
            break p.clone();
        }
        assert!(
            Instant::now() < deadline,
            "no Ready replacement for {}",
            victim.name_any()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(
        node_of(&replacement),
        third,
        "the replacement must land on the only schedulable node"
    );
    wait_for(
        &deployments,
        "web",
        "web available again",
        deployment_available(4),
    )
    .await;
    let on_first = pods(&env, "app=web")
        .await
        .into_iter()
        .filter(|p| node_of(p) == first)
        .count();
    assert_eq!(on_first, 0);
}

fn lease(name: &str, holder: &str) -> Lease {
    Lease {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            ..Default::default()
        },
        spec: Some(LeaseSpec {
            holder_identity: Some(holder.to_owned()),
            lease_duration_seconds: Some(15),
            renew_time: Some(MicroTime(Timestamp::now())),
            ..Default::default()
        }),
    }
}

#[tokio::test]
async fn lease_renewals_detect_conflicting_writers() {
    let env = TestEnv::new("lease", 0).await;
    let leases: Api<Lease> = Api::namespaced(env.client.clone(), &env.namespace);
    let created = leases
        .create(&PostParams::default(), &lease("agent", "replica-a"))
        .await
        .expect("create lease");
    let stale_version = created.resource_version();

    let mut renewal = created.clone();
    renewal.spec.as_mut().expect("spec").renew_time = Some(MicroTime(Timestamp::now()));
    let renewed = leases
        .replace("agent", &PostParams::default(), &renewal)
        .await
        .expect("renew");
    assert_ne!(renewed.resource_version(), stale_version);

    let mut takeover = created;
    takeover.spec.as_mut().expect("spec").holder_identity = Some("replica-b".to_owned());
    let err = leases
        .replace("agent", &PostParams::default(), &takeover)
        .await
        .expect_err("write with a stale resourceVersion");
    assert_eq!(api_error_code(&err), Some(409), "{err}");
    let current = leases.get("agent").await.expect("get lease");
    assert_eq!(
        current.spec.and_then(|s| s.holder_identity).as_deref(),
        Some("replica-a")
    );

    // The agent's Lease claims (ztunnel_rollout::lease_claim), against the real Lease API.
    use ztunnel_rollout::lease_claim::{Outcome, try_acquire_or_renew};
    let ttl = Duration::from_secs(15);
    let a = try_acquire_or_renew(&leases, "elected", "replica-a", ttl)
        .await
        .expect("a acquires");
    assert_eq!(a, Outcome::Acquired);
    let b = try_acquire_or_renew(&leases, "elected", "replica-b", ttl)
        .await
        .expect("b tries");
    assert!(
        matches!(b, Outcome::NotAcquired { .. }),
        "a second replica must not take a live lease"
    );
    let a_again = try_acquire_or_renew(&leases, "elected", "replica-a", ttl)
        .await
        .expect("a renews");
    assert_eq!(a_again, Outcome::Acquired);

    // Two replicas that find the same expired Lease and both claim it: never both win
    // (the write is conditional on what each read). A lock that patches without the
    // resourceVersion lets both "acquire" (the fault campaign's seed 1021).
    for round in 0..20 {
        let expired: Lease = serde_json::from_value(serde_json::json!({
            "metadata": { "name": "contested", "namespace": env.namespace },
            "spec": { "holderIdentity": "gone", "leaseDurationSeconds": 1,
                      "renewTime": "2020-01-01T00:00:00.000000Z", "leaseTransitions": 1 },
        }))
        .expect("lease");
        match leases.get_opt("contested").await.expect("read") {
            Some(mut l) => {
                l.spec = expired.spec.clone();
                leases
                    .replace("contested", &PostParams::default(), &l)
                    .await
                    .expect("reset the lease");
            }
            None => {
                leases
                    .create(&PostParams::default(), &expired)
                    .await
                    .expect("create the lease");
            }
        }
        let (a, b) = futures::join!(
            try_acquire_or_renew(&leases, "contested", "replica-a", ttl),
            try_acquire_or_renew(&leases, "contested", "replica-b", ttl),
        );
        let won: Vec<bool> = [a, b]
            .into_iter()
            .map(|o| o.expect("claim") == Outcome::Acquired)
            .collect();
        assert_eq!(
            won.iter().filter(|w| **w).count(),
            1,
            "round {round}: exactly one replica takes an expired lease: {won:?}"
        );
    }
}

#[tokio::test]
async fn terminating_pods_exit_within_their_grace_period() {
    let env = TestEnv::new("grace", 1).await;
    let pod_api: Api<Pod> = Api::namespaced(env.client.clone(), &env.namespace);
    // Exits after 60 s on its own, but its grace period is 3 s.
    let mut slow = AppFixture::new(&env.namespace, "slow", 1);
    slow.node_selector = env.node_selector();
    slow.exit_after_seconds = 60.0;
    slow.termination_grace_period_seconds = 3;
    let deployments: Api<Deployment> = Api::namespaced(env.client.clone(), &env.namespace);
    fixtures::apply(&deployments, &slow.deployment())
        .await
        .expect("apply");
    wait_for(
        &deployments,
        "slow",
        "slow available",
        deployment_available(1),
    )
    .await;
    let pod = pods(&env, "app=slow").await.remove(0);

    let deleted_at = Instant::now();
    pod_api
        .delete(&pod.name_any(), &DeleteParams::default())
        .await
        .expect("delete");
    let terminating = pod_api
        .get_opt(&pod.name_any())
        .await
        .expect("get")
        .expect("the pod must stay while it terminates");
    assert!(terminating.metadata.deletion_timestamp.is_some());
    let uid = pod.uid();
    wait_for(
        &pod_api,
        &pod.name_any(),
        "pod gone",
        kube::runtime::wait::conditions::is_deleted(&uid.unwrap_or_default()),
    )
    .await;
    let took = deleted_at.elapsed();
    assert!(
        took >= Duration::from_secs(2),
        "gone after {took:?}, before its grace period ended"
    );
    assert!(
        took < Duration::from_secs(30),
        "gone after {took:?}: the grace period was not honoured"
    );
}

fn revision_hashes(pods: &[Pod]) -> BTreeMap<String, String> {
    pods.iter()
        .map(|p| {
            (
                node_of(p),
                p.labels()
                    .get("controller-revision-hash")
                    .cloned()
                    .unwrap_or_default(),
            )
        })
        .collect()
}

/// Waits until the DaemonSet controller has seen the latest spec.
fn daemonset_observed(ds: Option<&DaemonSet>) -> bool {
    ds.is_some_and(|d| {
        d.status.as_ref().and_then(|s| s.observed_generation) == d.metadata.generation
    })
}

#[tokio::test]
async fn an_ondelete_daemonset_replaces_a_pod_only_when_it_is_deleted() {
    let env = TestEnv::new("ondelete", 2).await;
    let mut ztunnel = support::apply_ztunnel(&env, fixtures::UpdateStrategy::OnDelete).await;
    let ds_api: Api<DaemonSet> = Api::namespaced(env.client.clone(), &env.namespace);
    let old = revision_hashes(&pods(&env, "app=ztunnel").await);
    let old_hash = old.values().next().expect("a pod").clone();

    ztunnel.version = "1.29.0".to_owned();
    fixtures::apply(&ds_api, &ztunnel.daemonset())
        .await
        .expect("upgrade");
    wait_for(&ds_api, "ztunnel", "upgrade observed", daemonset_observed).await;
    let ds = ds_api.get("ztunnel").await.expect("get");
    assert_eq!(
        ds.status
            .as_ref()
            .and_then(|s| s.updated_number_scheduled)
            .unwrap_or(0),
        0,
        "OnDelete must not replace pods"
    );
    assert_eq!(
        revision_hashes(&pods(&env, "app=ztunnel").await),
        old,
        "pods changed without being deleted"
    );

    let target = env.nodes[0].clone();
    let victim = pods(&env, "app=ztunnel")
        .await
        .into_iter()
        .find(|p| node_of(p) == target)
        .expect("pod");
    Api::<Pod>::namespaced(env.client.clone(), &env.namespace)
        .delete(&victim.name_any(), &DeleteParams::default())
        .await
        .expect("delete");
    wait_for(
        &ds_api,
        "ztunnel",
        "one pod updated",
        |d: Option<&DaemonSet>| {
            d.and_then(|d| d.status.as_ref())
                .is_some_and(|s| s.updated_number_scheduled == Some(1) && s.number_ready == 2)
        },
    )
    .await;
    let now = revision_hashes(&pods(&env, "app=ztunnel").await);
    assert_ne!(
        now[&target], old_hash,
        "the recreated pod must carry the new revision hash"
    );
    assert_eq!(
        now[&env.nodes[1]], old_hash,
        "the untouched node keeps the old revision"
    );
}

#[tokio::test]
async fn a_rolling_update_daemonset_replaces_pods_by_itself() {
    let env = TestEnv::new("rolling", 2).await;
    let mut ztunnel = support::apply_ztunnel(&env, fixtures::UpdateStrategy::RollingUpdate).await;
    let ds_api: Api<DaemonSet> = Api::namespaced(env.client.clone(), &env.namespace);
    let old = revision_hashes(&pods(&env, "app=ztunnel").await);

    ztunnel.version = "1.29.0".to_owned();
    fixtures::apply(&ds_api, &ztunnel.daemonset())
        .await
        .expect("upgrade");
    wait_for(&ds_api, "ztunnel", "upgrade observed", daemonset_observed).await;
    wait_for(&ds_api, "ztunnel", "all pods updated", daemonset_ready(2)).await;
    let now = revision_hashes(&pods(&env, "app=ztunnel").await);
    assert_eq!(now.len(), 2);
    for (node, hash) in &now {
        assert_ne!(
            Some(hash),
            old.get(node),
            "{node} still runs the old revision"
        );
    }
}

#[tokio::test]
async fn the_demo_scenario_comes_up_complete() {
    // The demo writes fixed names (istio-system, demo, node-NNN), so it gets a cluster of
    // its own rather than a slice of the shared one.
    let demo =
        support::start_supervisor("demo", &["--demo", "--nodes", "3"]).expect("demo cluster");
    let kubeconfig =
        std::path::PathBuf::from(demo.ready["kubeconfig"].as_str().expect("kubeconfig"));
    let client = ztunnel_rollout_testbed::control_plane::client_for(&kubeconfig)
        .await
        .expect("client");
    let ds_api: Api<DaemonSet> = Api::namespaced(client.clone(), "istio-system");
    wait_for(&ds_api, "ztunnel", "demo ztunnel ready", daemonset_ready(3)).await;
    let ds = ds_api.get("ztunnel").await.expect("ztunnel");
    let spec = ds.spec.expect("spec");
    assert_eq!(
        spec.update_strategy.and_then(|s| s.type_).as_deref(),
        Some("OnDelete")
    );
    let pod_spec = spec.template.spec.expect("pod spec");
    assert_eq!(pod_spec.containers[0].name, "istio-proxy");

    let deployments: Api<Deployment> = Api::namespaced(client.clone(), "demo");
    for (name, replicas) in [("waypoint", 1), ("productpage", 3), ("reviews", 4)] {
        wait_for(
            &deployments,
            name,
            &format!("demo/{name} available"),
            deployment_available(replicas),
        )
        .await;
    }
    let waypoints = deployments
        .list(&ListParams::default().labels("gateway.istio.io/managed=istio.io-mesh-controller"))
        .await
        .expect("list waypoints");
    assert_eq!(
        waypoints
            .items
            .iter()
            .map(|d| d.name_any())
            .collect::<Vec<_>>(),
        ["waypoint"]
    );
    let pdbs: Api<PodDisruptionBudget> = Api::namespaced(client, "demo");
    wait_for(
        &pdbs,
        "reviews",
        "reviews PDB allows one disruption",
        |p: Option<&PodDisruptionBudget>| {
            p.and_then(|p| p.status.as_ref())
                .is_some_and(|s| s.disruptions_allowed == Some(1))
        },
    )
    .await;
}
