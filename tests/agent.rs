//! The agent on the local control plane, running as its own ServiceAccount with the RBAC
//! from `manifests/`: full rollouts in waves, a missing DaemonSet, abort by deletion.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Node;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::DeleteParams;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, ResourceExt};
use support::agent::{self as agent_support, Agent};
use support::history::PodDeletions;
use support::{TestEnv, sample_available, set_unschedulable};
use ztunnel_rollout::api::ZtunnelRollout;
use ztunnel_rollout_core::labels::OWNER_ANNOTATION;
use ztunnel_rollout_core::rollout::node_machine::NodePhase;
use ztunnel_rollout_testbed::fixtures::{self, Budget, ZONE_LABEL};

/// What a continuous watch of the test's nodes saw during the rollout.
#[derive(Default, Debug)]
struct NodeSamples {
    /// Most unschedulable nodes of each zone at one moment.
    max_unavailable: BTreeMap<String, usize>,
    /// Zones in the order their first node was cordoned by the rollout.
    zone_order: Vec<String>,
    /// Moments when nodes of two zones were cordoned by the rollout at once.
    overlaps: Vec<BTreeSet<String>>,
}

fn sample_nodes(env: &TestEnv) -> (Arc<Mutex<NodeSamples>>, tokio::task::JoinHandle<()>) {
    let samples = Arc::new(Mutex::new(NodeSamples::default()));
    let api: Api<Node> = Api::all(env.client.clone());
    let config = watcher::Config::default().labels(&format!(
        "{}={}",
        fixtures::NODE_SET_LABEL,
        env.node_set
    ));
    let seen = samples.clone();
    let task = tokio::spawn(async move {
        let (reader, writer) = kube::runtime::reflector::store();
        let mut stream = std::pin::pin!(watcher(api, config).reflect(writer));
        while stream.next().await.is_some() {
            let mut unavailable: BTreeMap<String, usize> = BTreeMap::new();
            let mut ours: BTreeSet<String> = BTreeSet::new();
            for n in reader.state() {
                let zone = n.labels().get(ZONE_LABEL).cloned().unwrap_or_default();
                let cordoned = n.spec.as_ref().and_then(|s| s.unschedulable) == Some(true);
                if cordoned {
                    *unavailable.entry(zone.clone()).or_default() += 1;
                    if n.annotations().contains_key(OWNER_ANNOTATION) {
                        ours.insert(zone);
                    }
                }
            }
            let mut s = seen.lock().expect("lock");
            for (zone, count) in unavailable {
                let m = s.max_unavailable.entry(zone).or_default();
                *m = (*m).max(count);
            }
            for zone in &ours {
                if !s.zone_order.contains(zone) {
                    s.zone_order.push(zone.clone());
                }
            }
            if ours.len() > 1 {
                s.overlaps.push(ours);
            }
        }
    });
    (samples, task)
}

/// Waits by watch until the rollout has cordoned a node (carrying our ownership
/// annotation) other than `except`; returns its name.
async fn first_node_cordoned_by_the_rollout(
    env: &TestEnv,
    agent: &Agent,
    except: Option<&str>,
) -> String {
    let nodes: Api<Node> = Api::all(env.client.clone());
    let config = watcher::Config::default().labels(&format!(
        "{}={}",
        fixtures::NODE_SET_LABEL,
        env.node_set
    ));
    tokio::time::timeout(Duration::from_secs(60), async {
        let mut nodes = std::pin::pin!(watcher(nodes, config).applied_objects());
        while let Some(n) = nodes.next().await {
            if let Ok(n) = n
                && n.annotations().contains_key(OWNER_ANNOTATION)
                && Some(n.name_any().as_str()) != except
            {
                return n.name_any();
            }
        }
        panic!("the node watch ended")
    })
    .await
    .unwrap_or_else(|_| panic!("no node cordoned by the rollout\n{}", agent.log_text()))
}

async fn create(env: &TestEnv, rollout: &ZtunnelRollout) -> ZtunnelRollout {
    agent_support::create(&env.client, rollout).await
}

fn agent(env: &TestEnv, dir: &tempfile::TempDir, identity: &str) -> Agent {
    agent_support::start_as_service_account(env, dir.path(), identity)
}

#[tokio::test]
async fn a_rollout_of_twelve_nodes_goes_wave_by_wave_within_budget_and_pdbs() {
    let mut env = TestEnv::new("agent-full", 0).await;
    agent_support::install(&env.client).await;
    env.add_nodes(12).await;
    // An operator cordoned this node before the rollout: it must stay cordoned.
    let operator_cordoned = env.nodes[4].clone();
    set_unschedulable(&env.client, &operator_cordoned, true).await;
    let ztunnel = support::apply_ztunnel(&env, fixtures::UpdateStrategy::OnDelete).await;
    support::apply_app(
        &env,
        "web",
        6,
        &[("web", Budget::MaxUnavailable(IntOrString::Int(1)))],
        1.0,
    )
    .await;
    support::apply_app(
        &env,
        "api",
        4,
        &[("api", Budget::MinAvailable(IntOrString::Int(3)))],
        1.0,
    )
    .await;
    let target = support::upgrade_ztunnel(&env.client, &env.namespace, ztunnel).await;

    let (nodes_seen, node_sampler) = sample_nodes(&env);
    let (pods_seen, pod_sampler) = sample_available(&env);
    // Every application pod the API server marked for deletion: an accepted eviction.
    let evicted = PodDeletions::start(&env, "app in (web,api)");
    let dir = tempfile::tempdir().expect("tempdir");
    let agent = agent(&env, &dir, "agent-a");
    let name = format!("{}-full", env.namespace);
    create(
        &env,
        &agent_support::rollout(
            &env,
            &name,
            serde_json::json!({ "waves": { "groupBy": ZONE_LABEL, "maxUnavailable": 2 } }),
        ),
    )
    .await;
    let done = agent_support::wait_for_phase(
        &env.client,
        &name,
        "Complete",
        Duration::from_secs(240),
        &[&agent],
    )
    .await;
    node_sampler.abort();
    pod_sampler.abort();

    let status = done.status.expect("status");
    assert_eq!(status.target_revision.as_deref(), Some(target.as_str()));
    assert_eq!(status.counts.total, 12);
    assert_eq!(status.counts.done, 12, "{:?}", status.nodes);
    assert_eq!(status.counts.failed, 0);
    let hashes = support::ztunnel_hashes(&env).await;
    assert_eq!(hashes.len(), 12);
    assert!(
        hashes.values().all(|h| *h == target),
        "every ztunnel pod on {target}: {hashes:?}"
    );
    let complete = status
        .conditions
        .iter()
        .find(|c| c.type_ == "Complete")
        .expect("Complete condition");
    assert_eq!(complete.status, "True");
    assert_eq!(complete.observed_generation, done.metadata.generation);

    agent_support::assert_nodes_released(
        &env.client,
        &env.node_list_params(),
        Some(&operator_cordoned),
    )
    .await;

    let nodes_seen = std::mem::take(&mut *nodes_seen.lock().expect("lock"));
    eprintln!("node samples: {nodes_seen:?}");
    for (zone, max) in &nodes_seen.max_unavailable {
        assert!(*max <= 2, "zone {zone} had {max} nodes unavailable at once");
    }
    assert_eq!(
        nodes_seen.zone_order,
        ["a", "b", "c"],
        "waves in zone order"
    );
    assert!(
        nodes_seen.overlaps.is_empty(),
        "a wave started before the previous one was done: {:?}",
        nodes_seen.overlaps
    );
    let pods_seen = std::mem::take(&mut *pods_seen.lock().expect("lock"));
    assert_eq!(pods_seen.get("web"), Some(&5), "web never below its PDB");
    assert_eq!(pods_seen.get("api"), Some(&3), "api never below its PDB");

    // From the API server: pods of the two apps marked for deletion during the rollout
    // (the Deployments delete none themselves here).
    let evictions = evicted.seen.lock().expect("lock").len() as f64;
    let per_pod = evictions / 10.0;
    eprintln!("evictions: {evictions} for 10 application pods ({per_pod:.2} per pod)");
    assert!(evictions >= 10.0, "every application pod was moved once");
    assert!(per_pod <= 1.2, "{per_pod:.2} evictions per pod");
}

#[tokio::test]
async fn a_missing_daemonset_is_reported_and_changes_nothing() {
    let env = TestEnv::new("agent-nods", 2).await;
    agent_support::install(&env.client).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let agent = agent(&env, &dir, "agent-a");
    let name = format!("{}-nods", env.namespace);
    let mut rollout = agent_support::rollout(&env, &name, serde_json::json!({}));
    rollout.spec.daemon_set.name = "no-such-ztunnel".into();
    create(&env, &rollout).await;
    let blocked = agent_support::wait_for_phase(
        &env.client,
        &name,
        "Blocked",
        Duration::from_secs(60),
        &[&agent],
    )
    .await;
    let status = blocked.status.clone().expect("status");
    let degraded = status
        .conditions
        .iter()
        .find(|c| c.type_ == "Degraded")
        .expect("Degraded condition");
    assert_eq!(degraded.status, "True");
    assert_eq!(degraded.reason, "DaemonSetNotFound");
    assert!(
        degraded
            .message
            .contains(&format!("{}/no-such-ztunnel", env.namespace)),
        "{}",
        degraded.message
    );
    assert_eq!(degraded.observed_generation, blocked.metadata.generation);
    assert!(blocked.finalizers().is_empty(), "nothing to clean up");

    support::wait_for_event(&env.client, &name, "DaemonSetNotFound", "no-such-ztunnel").await;
    for n in Api::<Node>::all(env.client.clone())
        .list(&env.node_list_params())
        .await
        .expect("nodes")
    {
        assert_ne!(n.spec.as_ref().and_then(|s| s.unschedulable), Some(true));
        assert!(n.annotations().get(OWNER_ANNOTATION).is_none());
        assert!(
            n.spec.and_then(|s| s.taints).unwrap_or_default().is_empty(),
            "no taint"
        );
    }
}

#[tokio::test]
async fn deleting_a_rollout_mid_way_releases_only_the_nodes_it_cordoned() {
    let mut env = TestEnv::new("agent-abort", 0).await;
    agent_support::install(&env.client).await;
    env.add_nodes(6).await;
    let operator_cordoned = env.nodes[0].clone();
    set_unschedulable(&env.client, &operator_cordoned, true).await;
    let ztunnel = support::apply_ztunnel(&env, fixtures::UpdateStrategy::OnDelete).await;
    // Slow to exit, so the first nodes are still draining when the rollout is deleted.
    support::apply_app(
        &env,
        "slow",
        4,
        &[("slow", Budget::MaxUnavailable(IntOrString::Int(1)))],
        20.0,
    )
    .await;
    support::upgrade_ztunnel(&env.client, &env.namespace, ztunnel).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let agent = agent(&env, &dir, "agent-a");
    let name = format!("{}-abort", env.namespace);
    let spec = serde_json::json!({ "waves": { "groupBy": ZONE_LABEL, "maxUnavailable": 2 } });
    let created = create(&env, &agent_support::rollout(&env, &name, spec)).await;
    let uid = created.uid().expect("uid");

    let owned = first_node_cordoned_by_the_rollout(&env, &agent, Some(&operator_cordoned)).await;
    let api: Api<ZtunnelRollout> = Api::all(env.client.clone());
    api.delete(&name, &DeleteParams::default())
        .await
        .expect("delete the rollout");
    tokio::time::timeout(
        Duration::from_secs(60),
        kube::runtime::wait::await_condition(
            api.clone(),
            &name,
            kube::runtime::wait::conditions::is_deleted(&uid),
        ),
    )
    .await
    .unwrap_or_else(|_| panic!("the rollout was not released\n{}", agent.log_text()))
    .expect("watch");

    eprintln!("the rollout had cordoned {owned} when it was deleted");
    agent_support::assert_nodes_released(
        &env.client,
        &env.node_list_params(),
        Some(&operator_cordoned),
    )
    .await;
}

#[tokio::test]
async fn a_node_relabelled_out_of_the_selection_mid_way_is_finished_not_abandoned() {
    const ROLL_LABEL: &str = "ztunnel-rollout-test/roll";
    let mut env = TestEnv::new("agent-relabel", 0).await;
    agent_support::install(&env.client).await;
    env.add_nodes(4).await;
    let nodes: Api<Node> = Api::all(env.client.clone());
    let label = |value: Option<&str>| {
        kube::api::Patch::Merge(serde_json::json!({
            "metadata": { "labels": { ROLL_LABEL: value } }
        }))
    };
    for node in &env.nodes {
        nodes
            .patch(node, &Default::default(), &label(Some("yes")))
            .await
            .expect("label the node");
    }
    let ztunnel = support::apply_ztunnel(&env, fixtures::UpdateStrategy::OnDelete).await;
    // Slow to exit: the first node is still draining when it leaves the selection.
    support::apply_app(
        &env,
        "slow",
        4,
        &[("slow", Budget::MaxUnavailable(IntOrString::Int(1)))],
        5.0,
    )
    .await;
    let target = support::upgrade_ztunnel(&env.client, &env.namespace, ztunnel).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let agent = agent(&env, &dir, "agent-a");
    let name = format!("{}-relabel", env.namespace);
    let mut selector = env.node_selector();
    selector.insert(ROLL_LABEL.into(), "yes".into());
    let spec = serde_json::json!({ "nodeSelector": { "matchLabels": selector } });
    create(&env, &agent_support::rollout(&env, &name, spec)).await;

    let relabelled = first_node_cordoned_by_the_rollout(&env, &agent, None).await;
    nodes
        .patch(&relabelled, &Default::default(), &label(None))
        .await
        .expect("remove the label");

    let done = agent_support::wait_for_phase(
        &env.client,
        &name,
        "Complete",
        Duration::from_secs(180),
        &[&agent],
    )
    .await;
    let status = agent_support::node_status(&done, &relabelled)
        .unwrap_or_else(|| panic!("{relabelled} not in the status: {:?}", done.status));
    assert_eq!(status.phase, NodePhase::Done, "{relabelled}: {status:?}");
    let hashes = support::ztunnel_hashes(&env).await;
    assert_eq!(
        hashes.get(&relabelled),
        Some(&target),
        "{relabelled}'s ztunnel replaced: {hashes:?}"
    );
    let counts = done
        .status
        .as_ref()
        .map(|s| s.counts.clone())
        .expect("status");
    assert_eq!(counts.total, 4, "{counts:?}");
    assert_eq!(counts.done, 4, "{counts:?}");
    agent_support::assert_nodes_released(&env.client, &env.node_list_params(), None).await;
}

#[tokio::test]
async fn the_manifests_apply_with_kubectl_kustomize() {
    let env = TestEnv::new("agent-kustomize", 0).await;
    agent_support::install(&env.client).await;
    // Istio is installed: its namespace holds the ztunnel DaemonSet the agent's Role
    // is for.
    ztunnel_rollout_testbed::fixtures::apply(
        &kube::Api::<k8s_openapi::api::core::v1::Namespace>::all(env.client.clone()),
        &ztunnel_rollout_testbed::fixtures::namespace("istio-system", Default::default()),
    )
    .await
    .expect("the istio-system namespace");
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = std::process::Command::new(root.join("e2e/bin/kubectl"))
        .arg("--kubeconfig")
        .arg(&support::cluster().kubeconfig)
        .args(["apply", "-k"])
        .arg(root.join("manifests"))
        .args(["--dry-run=server", "-o", "name"])
        .output()
        .expect("run kubectl");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "kubectl apply -k manifests/ failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    for object in [
        "customresourcedefinition.apiextensions.k8s.io/ztunnelrollouts.ztunnel-rollout.dev",
        "clusterrole.rbac.authorization.k8s.io/ztunnel-rollout",
        "clusterrole.rbac.authorization.k8s.io/ztunnel-rollout-viewer",
        "clusterrole.rbac.authorization.k8s.io/ztunnel-rollout-operator",
        "role.rbac.authorization.k8s.io/ztunnel-rollout-ztunnel",
        "deployment.apps/ztunnel-rollout",
        "poddisruptionbudget.policy/ztunnel-rollout",
        "service/ztunnel-rollout-metrics",
    ] {
        assert!(stdout.contains(object), "{object} not applied:\n{stdout}");
    }
}

/// The roles for people do what the README says, judged by the API server's own RBAC
/// (SubjectAccessReviews): the viewer role reads rollouts and migrations, and through
/// its aggregation so does anyone bound to the built-in `view`; the operator role also
/// creates, patches (pause, resume, abort, approve) and deletes them, but never writes
/// their status; neither touches anything else.
#[tokio::test]
async fn the_viewer_and_operator_roles_grant_what_people_need_and_nothing_more() {
    use k8s_openapi::api::authorization::v1::{
        ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
    };
    use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
    let env = TestEnv::new("people-roles", 0).await;
    agent_support::install(&env.client).await;
    let roles: Api<ClusterRole> = Api::all(env.client.clone());
    for role in [
        ztunnel_rollout::api::manifests::viewer_role(),
        ztunnel_rollout::api::manifests::operator_role(),
    ] {
        let role: ClusterRole = serde_json::from_value(role).expect("a ClusterRole");
        fixtures::apply(&roles, &role).await.expect("apply role");
    }
    let bindings: Api<ClusterRoleBinding> = Api::all(env.client.clone());
    let user = |role: &str| format!("{}-{role}", env.namespace);
    for role in ["ztunnel-rollout-viewer", "ztunnel-rollout-operator", "view"] {
        let binding: ClusterRoleBinding = serde_json::from_value(serde_json::json!({
            "metadata": { "name": user(role) },
            "roleRef": { "apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role },
            "subjects": [{ "apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": user(role) }],
        }))
        .expect("a binding");
        fixtures::apply(&bindings, &binding)
            .await
            .expect("apply binding");
    }
    let reviews: Api<SubjectAccessReview> = Api::all(env.client.clone());
    let may = |who: String, verb: &str, resource: &str, group: &str| {
        let (resource, subresource) = match resource.split_once('/') {
            Some((r, s)) => (r.to_owned(), Some(s.to_owned())),
            None => (resource.to_owned(), None),
        };
        let review = SubjectAccessReview {
            spec: SubjectAccessReviewSpec {
                user: Some(who),
                resource_attributes: Some(ResourceAttributes {
                    verb: Some(verb.to_owned()),
                    group: Some(group.to_owned()),
                    resource: Some(resource),
                    subresource,
                    ..Default::default()
                }),
                ..Default::default()
            },
            ..Default::default()
        };
        let reviews = reviews.clone();
        async move {
            reviews
                .create(&Default::default(), &review)
                .await
                .expect("a SubjectAccessReview")
                .status
                .is_some_and(|s| s.allowed)
        }
    };
    const GROUP: &str = "ztunnel-rollout.dev";
    for resource in ["ztunnelrollouts", "sidecarmigrations"] {
        for verb in ["get", "list", "watch"] {
            assert!(may(user("ztunnel-rollout-viewer"), verb, resource, GROUP).await);
            assert!(may(user("ztunnel-rollout-operator"), verb, resource, GROUP).await);
        }
        for verb in ["create", "patch", "delete"] {
            assert!(
                !may(user("ztunnel-rollout-viewer"), verb, resource, GROUP).await,
                "viewer {verb} {resource}"
            );
            assert!(
                may(user("ztunnel-rollout-operator"), verb, resource, GROUP).await,
                "operator {verb} {resource}"
            );
        }
        let status = format!("{resource}/status");
        for verb in ["update", "patch"] {
            assert!(
                !may(user("ztunnel-rollout-operator"), verb, &status, GROUP).await,
                "operator {verb} {status}"
            );
        }
    }
    for (verb, resource, group) in [
        ("patch", "nodes", ""),
        ("delete", "pods", ""),
        ("list", "secrets", ""),
    ] {
        for role in ["ztunnel-rollout-viewer", "ztunnel-rollout-operator"] {
            assert!(
                !may(user(role), verb, resource, group).await,
                "{role} {verb} {resource}"
            );
        }
    }
    // The built-in view role gains the viewer's rules once the controller manager has
    // aggregated them: wait for that, by watching the role.
    support::wait_for(
        &roles,
        "view",
        "the viewer role aggregated to view",
        |r: Option<&ClusterRole>| {
            r.and_then(|r| r.rules.as_ref()).is_some_and(|rules| {
                rules.iter().any(|rule| {
                    rule.resources
                        .as_ref()
                        .is_some_and(|rs| rs.iter().any(|r| r == "ztunnelrollouts"))
                })
            })
        },
    )
    .await;
    assert!(may(user("view"), "list", "ztunnelrollouts", GROUP).await);
    assert!(!may(user("view"), "patch", "ztunnelrollouts", GROUP).await);
}

#[tokio::test]
async fn a_rolling_update_daemonset_is_refused_unless_allowed() {
    let env = TestEnv::new("agent-rolling", 2).await;
    agent_support::install(&env.client).await;
    support::apply_ztunnel(&env, fixtures::UpdateStrategy::RollingUpdate).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let agent = agent(&env, &dir, "agent-a");
    let name = format!("{}-rolling", env.namespace);
    create(
        &env,
        &agent_support::rollout(&env, &name, serde_json::json!({})),
    )
    .await;
    let blocked = agent_support::wait_for_phase(
        &env.client,
        &name,
        "Blocked",
        Duration::from_secs(60),
        &[&agent],
    )
    .await;
    let degraded = blocked
        .status
        .as_ref()
        .and_then(|s| s.conditions.iter().find(|c| c.type_ == "Degraded"))
        .cloned()
        .expect("Degraded condition");
    assert_eq!(degraded.reason, "RollingUpdateStrategy");
    assert!(
        degraded.message.contains("OnDelete"),
        "{}",
        degraded.message
    );
    for n in Api::<Node>::all(env.client.clone())
        .list(&env.node_list_params())
        .await
        .expect("nodes")
    {
        assert_ne!(n.spec.as_ref().and_then(|s| s.unschedulable), Some(true));
    }

    // Allowed explicitly: the rollout proceeds (every pod is already current: Skipped).
    let api: Api<ZtunnelRollout> = Api::all(env.client.clone());
    api.patch(
        &name,
        &kube::api::PatchParams::default(),
        &kube::api::Patch::Merge(serde_json::json!({ "spec": { "allowRollingUpdate": true } })),
    )
    .await
    .expect("allow RollingUpdate");
    let complete = agent_support::wait_for_phase(
        &env.client,
        &name,
        "Complete",
        Duration::from_secs(60),
        &[&agent],
    )
    .await;
    assert_eq!(complete.status.expect("status").counts.skipped, 2);
    support::wait_for_event(
        &env.client,
        &name,
        "RollingUpdateAllowed",
        "allowed by spec.allowRollingUpdate",
    )
    .await;
}
