//! Sidecar namespace migrations on the local control plane with Istio's own control
//! plane (`support::istio`): `istioctl install` of a `default` and a `canary` revision,
//! each served by a real istiod on loopback, and per test a revision tag set by
//! `istioctl tag set`. Relabelling, restarts and verification go through the real API
//! server, Deployment controller and Istio's injection webhooks; KWOK runs the injected
//! pods (a workload marked broken at a revision never becomes Ready there). The agent
//! runs under the manifests' RBAC.

mod support;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use kube::runtime::wait::await_condition;
use kube::runtime::watcher;
use kube::{Api, Client, ResourceExt};
use support::agent::{self as agent_support, Agent, TEST_LABEL};
use support::istio as istio_support;
use support::{TestEnv, deployment_available, wait_for};
use ztunnel_rollout::api::SidecarMigration;
use ztunnel_rollout_core::labels::RESTARTED_AT_ANNOTATION;
use ztunnel_rollout_core::sidecar::namespace_machine::NamespacePhase;
use ztunnel_rollout_core::sidecar::revisions::injected_revision;
use ztunnel_rollout_testbed::fixtures::{self, Budget};
use ztunnel_rollout_testbed::kwok_stages::{
    NEVER_READY_AT_REVISION_ANNOTATION, READY_AFTER_ANNOTATION,
};

/// Revision A (`default`) and revision B (`canary`), Istio's, and this test's tag
/// `canary-<env>` → B.
struct Mesh {
    rev_a: String,
    rev_b: String,
    tag: String,
}

/// Sets this test's tag on revision B with istioctl (`tag set --overwrite`).
async fn mesh(env: &TestEnv) -> Mesh {
    let bed = istio_support::bed();
    let mesh = Mesh {
        rev_a: "default".to_owned(),
        rev_b: "canary".to_owned(),
        tag: format!("canary-{}", env.namespace),
    };
    bed.istioctl
        .run(&[
            "tag",
            "set",
            &mesh.tag,
            "--revision",
            &mesh.rev_b,
            "--overwrite",
        ])
        .await
        .expect("istioctl tag set");
    mesh
}

/// A test's cluster slice with the CRDs and the agent's RBAC installed, a directory for
/// the agent's kubeconfig, and its tag.
async fn setup(name: &str, nodes: usize) -> (TestEnv, tempfile::TempDir, Mesh) {
    let env = TestEnv::new(name, nodes).await;
    let dir = tempfile::tempdir().expect("tempdir");
    agent_support::install(&env.client).await;
    let mesh = mesh(&env).await;
    (env, dir, mesh)
}

/// Waits (a minute at most) until a pod created in `namespace` is injected at `rev`: a
/// dry-run create goes through the injection webhooks, which see the namespace's labels
/// as the API server has them.
async fn wait_until_injected_at(client: &Client, namespace: &str, rev: &str) {
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let probe: Pod = serde_json::from_value(serde_json::json!({
        "metadata": { "name": "injection-probe" },
        "spec": { "containers": [{ "name": "app", "image": "registry.k8s.io/pause:3.10" }] },
    }))
    .expect("probe pod");
    let dry_run = PostParams {
        dry_run: true,
        ..Default::default()
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let last = match pods.create(&dry_run, &probe).await {
            Ok(p) if injected_revision(&p).as_deref() == Some(rev) => return,
            Ok(p) => format!("injected at {:?}", injected_revision(&p)),
            Err(e) => e.to_string(),
        };
        assert!(
            std::time::Instant::now() < deadline,
            "pods in {namespace} not injected at {rev} within 60s: last {last}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Creates namespace `<env>-<suffix>` with `labels`, waits until its pods are injected
/// at `rev`, and runs Deployments `apps` there: 3 replicas each on the env's nodes
/// (Ready `ready_after` their start, when given) under a PDB allowing one disruption.
async fn app_namespace(
    env: &mut TestEnv,
    suffix: &str,
    labels: &[(&str, &str)],
    rev: &str,
    apps: &[&str],
    ready_after: Option<&str>,
) -> String {
    app_namespace_with(env, suffix, labels, rev, apps, ready_after, &[]).await
}

/// [`app_namespace`], with `never_ready` naming (app, revision) pairs: that app's pods
/// injected at that revision never become Ready, as if its sidecar could not start
/// there.
async fn app_namespace_with(
    env: &mut TestEnv,
    suffix: &str,
    labels: &[(&str, &str)],
    rev: &str,
    apps: &[&str],
    ready_after: Option<&str>,
    never_ready: &[(&str, &str)],
) -> String {
    let name = env.create_namespace(suffix, labels).await;
    wait_until_injected_at(&env.client, &name, rev).await;
    let deployments: Api<Deployment> = Api::namespaced(env.client.clone(), &name);
    let pdbs: Api<PodDisruptionBudget> = Api::namespaced(env.client.clone(), &name);
    for app in apps {
        let mut fixture = fixtures::AppFixture::new(&name, app, 3);
        fixture.node_selector = env.node_selector();
        fixture.exit_after_seconds = 0.2;
        let mut deployment = fixture.deployment();
        let template = deployment.spec.as_mut().map(|s| &mut s.template);
        if let Some(meta) = template.and_then(|t| t.metadata.as_mut()) {
            let annotations = meta.annotations.get_or_insert_default();
            if let Some(delay) = ready_after {
                annotations.insert(READY_AFTER_ANNOTATION.to_owned(), delay.to_owned());
            }
            for (_, broken_at) in never_ready.iter().filter(|(a, _)| a == app) {
                annotations.insert(
                    NEVER_READY_AT_REVISION_ANNOTATION.to_owned(),
                    (*broken_at).to_owned(),
                );
            }
        }
        fixtures::apply(&deployments, &deployment)
            .await
            .expect("apply deployment");
        let selector = BTreeMap::from([("app".to_owned(), (*app).to_owned())]);
        let pdb = fixtures::pdb(
            &name,
            app,
            selector,
            Budget::MaxUnavailable(IntOrString::Int(1)),
        );
        fixtures::apply(&pdbs, &pdb).await.expect("apply pdb");
    }
    for app in apps {
        wait_for(&deployments, app, "app available", deployment_available(3)).await;
    }
    name
}

/// Runs StatefulSet `name` (`replicas` pods on the env's nodes) in `namespace` and waits
/// until every pod is Ready.
async fn stateful_set(env: &TestEnv, namespace: &str, name: &str, replicas: i32) {
    use k8s_openapi::api::apps::v1::StatefulSet;
    let set: StatefulSet = serde_json::from_value(serde_json::json!({
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": { "name": name, "namespace": namespace },
        "spec": {
            "replicas": replicas,
            "selector": { "matchLabels": { "app": name } },
            "template": {
                "metadata": { "labels": { "app": name } },
                "spec": {
                    "nodeSelector": env.node_selector(),
                    "containers": [{ "name": "db", "image": "registry.k8s.io/pause:3.10" }],
                },
            },
        },
    }))
    .expect("a StatefulSet");
    let api: Api<StatefulSet> = Api::namespaced(env.client.clone(), namespace);
    fixtures::apply(&api, &set)
        .await
        .expect("apply statefulset");
    wait_for(
        &api,
        name,
        "statefulset ready",
        move |s: Option<&StatefulSet>| {
            s.and_then(|s| s.status.as_ref())
                .is_some_and(|st| st.ready_replicas == Some(replicas))
        },
    )
    .await;
}

/// The injected revision of every live pod in `namespace`.
async fn pod_revisions(client: &Client, namespace: &str) -> Vec<(String, Option<String>)> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let mut out: Vec<(String, Option<String>)> = pods
        .list(&ListParams::default())
        .await
        .expect("list pods")
        .into_iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .map(|p| (p.name_any(), injected_revision(&p)))
        .collect();
    out.sort();
    out
}

fn assert_all_on(pods: &[(String, Option<String>)], rev: &str, namespace: &str) {
    assert!(!pods.is_empty(), "no pods in {namespace}");
    for (pod, r) in pods {
        assert_eq!(r.as_deref(), Some(rev), "pod {namespace}/{pod}");
    }
}

async fn labels_of(client: &Client, namespace: &str) -> BTreeMap<String, String> {
    Api::<Namespace>::all(client.clone())
        .get(namespace)
        .await
        .expect("namespace")
        .labels()
        .clone()
}

/// The fewest available replicas seen per `namespace/deployment`.
type Minimum = Arc<Mutex<BTreeMap<String, i32>>>;

/// Watches Deployments in `namespaces` and records, per `namespace/name`, the fewest
/// available replicas seen once the test started.
fn sample_available(
    client: &Client,
    namespaces: &[String],
) -> (Minimum, Vec<tokio::task::JoinHandle<()>>) {
    let minimum: Minimum = Arc::default();
    let tasks = namespaces
        .iter()
        .map(|ns| {
            let api: Api<Deployment> = Api::namespaced(client.clone(), ns);
            let seen = minimum.clone();
            let ns = ns.clone();
            tokio::spawn(async move {
                let mut events = std::pin::pin!(watcher(api, watcher::Config::default()));
                while let Some(Ok(event)) = events.next().await {
                    let ds = match event {
                        watcher::Event::Apply(d) | watcher::Event::InitApply(d) => vec![d],
                        _ => continue,
                    };
                    for d in ds {
                        let available = d
                            .status
                            .as_ref()
                            .and_then(|s| s.available_replicas)
                            .unwrap_or(0);
                        let key = format!("{ns}/{}", d.name_any());
                        let mut min = seen.lock().expect("lock");
                        let m = min.entry(key).or_insert(available);
                        *m = (*m).min(available);
                    }
                }
            })
        })
        .collect();
    (minimum, tasks)
}

async fn wait_for_migration(
    client: &Client,
    name: &str,
    phase: &str,
    within: Duration,
    agent: &Agent,
) -> SidecarMigration {
    let api: Api<SidecarMigration> = Api::all(client.clone());
    let want = phase.to_owned();
    let cond = move |m: Option<&SidecarMigration>| {
        m.and_then(|m| m.status.as_ref())
            .and_then(|s| s.phase.as_deref())
            == Some(want.as_str())
    };
    match tokio::time::timeout(within, await_condition(api.clone(), name, cond)).await {
        Ok(Ok(Some(m))) => m,
        other => panic!(
            "migration {name} not {phase} within {within:?} ({other:?}); now: {:?}\n--- agent ---\n{}",
            api.get_opt(name)
                .await
                .ok()
                .flatten()
                .and_then(|m| m.status),
            agent.log_text()
        ),
    }
}

fn migration(env: &TestEnv, name: &str, spec: serde_json::Value) -> SidecarMigration {
    serde_json::from_value(serde_json::json!({
        "apiVersion": "ztunnel-rollout.dev/v1alpha1",
        "kind": "SidecarMigration",
        "metadata": { "name": name, "labels": { TEST_LABEL: env.namespace } },
        "spec": spec,
    }))
    .expect("a SidecarMigration")
}

async fn create(client: &Client, m: &SidecarMigration) {
    Api::<SidecarMigration>::all(client.clone())
        .create(&PostParams::default(), m)
        .await
        .expect("create the migration");
}

fn namespace_status<'a>(
    m: &'a SidecarMigration,
    ns: &str,
) -> &'a ztunnel_rollout::api::sidecar_migration::NamespaceMigrationStatus {
    m.status
        .as_ref()
        .and_then(|s| s.namespaces.iter().find(|n| n.name == ns))
        .unwrap_or_else(|| panic!("no status for namespace {ns}: {:?}", m.status))
}

fn time(t: &Option<String>) -> k8s_openapi::jiff::Timestamp {
    t.as_deref().expect("a time").parse().expect("RFC 3339")
}

#[tokio::test]
async fn three_namespaces_move_to_a_tag_one_batch_at_a_time_within_their_budgets() {
    let (mut env, dir, mesh) = setup("scm-move", 3).await;
    let rev_label = [("istio.io/rev", mesh.rev_a.as_str())];
    let one = app_namespace(&mut env, "one", &rev_label, &mesh.rev_a, &["api"], None).await;
    let two = app_namespace(
        &mut env,
        "two",
        &[("istio-injection", "enabled")],
        &mesh.rev_a,
        &["api", "web"],
        None,
    )
    .await;
    let three = app_namespace(&mut env, "three", &rev_label, &mesh.rev_a, &["api"], None).await;
    stateful_set(&env, &three, "db", 2).await;
    let all = [one.clone(), two.clone(), three.clone()];
    for ns in &all {
        assert_all_on(&pod_revisions(&env.client, ns).await, &mesh.rev_a, ns);
    }
    let (minimum, samplers) = sample_available(&env.client, &all);
    let agent = agent_support::start_as_service_account(&env, dir.path(), "agent-a");

    let name = format!("{}-move", env.namespace);
    let (code, out, err) = support::cli_async(&[
        "sidecar",
        "move",
        "-n",
        &one,
        "-n",
        &two,
        "-n",
        &three,
        "--to",
        &mesh.tag,
        "--name",
        &name,
        "--labels",
        &format!("{TEST_LABEL}={}", env.namespace),
    ])
    .await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains(&format!(
            "moving 3 namespace(s) to {} (revision {}), 1 at a time",
            mesh.tag, mesh.rev_b
        )),
        "{out}"
    );

    let done = wait_for_migration(
        &env.client,
        &name,
        "Succeeded",
        Duration::from_secs(120),
        &agent,
    )
    .await;
    for s in &samplers {
        s.abort();
    }
    let status = done.status.clone().expect("status");
    assert_eq!(status.target_revision.as_deref(), Some(mesh.rev_b.as_str()));
    assert_eq!((status.counts.total, status.counts.migrated), (3, 3));
    assert!(
        status.conditions.iter().any(|c| c.type_ == "Complete"
            && c.status == "True"
            && c.observed_generation == done.metadata.generation),
        "{:?}",
        status.conditions
    );
    for ns in &all {
        assert_all_on(&pod_revisions(&env.client, ns).await, &mesh.rev_b, ns);
        let labels = labels_of(&env.client, ns).await;
        assert_eq!(labels.get("istio.io/rev"), Some(&mesh.tag), "{ns}");
        assert!(!labels.contains_key("istio-injection"), "{ns}: {labels:?}");
        let s = namespace_status(&done, ns);
        assert_eq!(s.phase, NamespacePhase::Migrated);
        assert_eq!(s.pods, s.pods_verified, "{ns}: {s:?}");
        assert_eq!(s.workloads, s.workloads_restarted, "{ns}: {s:?}");
    }
    assert_eq!(namespace_status(&done, &two).previous_revision, mesh.rev_a);
    assert_eq!(namespace_status(&done, &two).pods, 6);
    assert_eq!(
        (
            namespace_status(&done, &three).workloads,
            namespace_status(&done, &three).pods
        ),
        (2, 5),
        "the StatefulSet's pods are restarted and verified too"
    );
    // One batch at a time: each namespace started after the one before was verified.
    for pair in all.windows(2) {
        let before = namespace_status(&done, &pair[0]);
        let after = namespace_status(&done, &pair[1]);
        assert!(
            time(&after.step_started) >= time(&Some(before.since.clone())),
            "{} started before {} was migrated: {after:?} / {before:?}",
            pair[1],
            pair[0]
        );
    }
    // No Deployment went below what its PDB requires (3 replicas, 1 disruption).
    let minimum = minimum.lock().expect("lock").clone();
    assert_eq!(minimum.len(), 4, "{minimum:?}");
    for (deployment, min) in &minimum {
        assert!(*min >= 2, "{deployment} had {min} available replicas");
    }

    support::wait_for_event(&env.client, &two, "NamespaceMigrated", "6 pods verified").await;
    assert_eq!(
        agent
            .metric("ztunnel_rollout_sidecar_namespaces_total{migration=")
            .await,
        3.0
    );
    let (code, out, err) = support::cli_async(&["sidecar", "status", &name]).await;
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains(&format!("sidecarmigration {name}: Succeeded")),
        "{out}"
    );
    assert_eq!(out.matches("Migrated").count(), 3, "{out}");
}

#[tokio::test]
async fn a_namespace_with_both_injection_labels_is_refused_unless_asked_to_replace_one() {
    let (mut env, dir, mesh) = setup("scm-both", 2).await;
    // istio-injection wins: its pods are on the default revision A.
    let both = app_namespace(
        &mut env,
        "both",
        &[
            ("istio-injection", "enabled"),
            ("istio.io/rev", &mesh.rev_b),
        ],
        &mesh.rev_a,
        &["api"],
        None,
    )
    .await;
    let agent = agent_support::start_as_service_account(&env, dir.path(), "agent-a");
    let before = labels_of(&env.client, &both).await;

    // The CLI refuses before creating anything.
    let name = format!("{}-both", env.namespace);
    let (code, _, err) = support::cli_async(&[
        "sidecar", "move", "-n", &both, "--to", &mesh.tag, "--name", &name,
    ])
    .await;
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("refused, nothing created"), "{err}");
    assert!(
        err.contains(&format!(
            "namespace {both} has both istio-injection=enabled and istio.io/rev={}",
            mesh.rev_b
        )),
        "{err}"
    );
    assert!(err.contains("--replace-injection-label"), "{err}");
    let api: Api<SidecarMigration> = Api::all(env.client.clone());
    assert!(api.get_opt(&name).await.expect("get").is_none());

    // Applied directly, the agent refuses it and changes nothing.
    create(
        &env.client,
        &migration(
            &env,
            &name,
            serde_json::json!({ "namespaces": [both], "to": mesh.tag }),
        ),
    )
    .await;
    let refused = wait_for_migration(
        &env.client,
        &name,
        "Refused",
        Duration::from_secs(30),
        &agent,
    )
    .await;
    let degraded = refused
        .status
        .as_ref()
        .and_then(|s| s.conditions.iter().find(|c| c.type_ == "Degraded"))
        .expect("Degraded condition");
    assert_eq!(degraded.status, "True");
    assert!(
        degraded.message.contains("has both istio-injection"),
        "{degraded:?}"
    );
    support::wait_for_event(
        &env.client,
        &name,
        "MigrationRefused",
        "nothing was changed",
    )
    .await;
    assert_eq!(labels_of(&env.client, &both).await, before);
    assert_all_on(&pod_revisions(&env.client, &both).await, &mesh.rev_a, &both);

    // With the explicit option, istio-injection goes and the namespace moves.
    let fixed = format!("{}-fixed", env.namespace);
    let (code, out, err) = support::cli_async(&[
        "sidecar",
        "move",
        "-n",
        &both,
        "--to",
        &mesh.tag,
        "--name",
        &fixed,
        "--replace-injection-label",
        "--labels",
        &format!("{TEST_LABEL}={}", env.namespace),
        "--wait",
    ])
    .await;
    assert_eq!(code, 0, "{out}{err}\n{}", agent.log_text());
    assert!(out.contains("Succeeded"), "{out}");
    let labels = labels_of(&env.client, &both).await;
    assert_eq!(labels.get("istio.io/rev"), Some(&mesh.tag));
    assert!(!labels.contains_key("istio-injection"), "{labels:?}");
    assert_all_on(&pod_revisions(&env.client, &both).await, &mesh.rev_b, &both);

    // A rollback restores both labels as they were, and with them revision A.
    let (code, out, err) = support::cli_async(&["sidecar", "rollback", &fixed, "--wait"]).await;
    assert_eq!(code, 0, "{out}{err}\n{}", agent.log_text());
    assert_eq!(labels_of(&env.client, &both).await, before);
    assert_all_on(&pod_revisions(&env.client, &both).await, &mesh.rev_a, &both);
}

#[tokio::test]
async fn a_target_without_an_injector_is_refused_and_nothing_changes() {
    let (mut env, dir, mesh) = setup("scm-missing", 2).await;
    let ns = app_namespace(
        &mut env,
        "pay",
        &[("istio.io/rev", &mesh.rev_a)],
        &mesh.rev_a,
        &["api"],
        None,
    )
    .await;
    let agent = agent_support::start_as_service_account(&env, dir.path(), "agent-a");
    let missing = format!("gone-{}", env.namespace);

    let (code, _, err) =
        support::cli_async(&["sidecar", "move", "-n", &ns, "--to", &missing]).await;
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains(&format!("no injector for revision or tag {missing:?}")),
        "{err}"
    );
    assert!(
        err.contains(&mesh.tag),
        "the error lists the known targets: {err}"
    );

    let name = format!("{}-gone", env.namespace);
    create(
        &env.client,
        &migration(
            &env,
            &name,
            serde_json::json!({ "namespaces": [ns], "to": missing }),
        ),
    )
    .await;
    let refused = wait_for_migration(
        &env.client,
        &name,
        "Refused",
        Duration::from_secs(30),
        &agent,
    )
    .await;
    assert!(
        refused
            .status
            .as_ref()
            .is_some_and(|s| s.namespaces.is_empty()),
        "{:?}",
        refused.status
    );
    assert_eq!(
        labels_of(&env.client, &ns).await.get("istio.io/rev"),
        Some(&mesh.rev_a)
    );
    let api: Api<Deployment> = Api::namespaced(env.client.clone(), &ns);
    let d = api.get("api").await.expect("deployment");
    let restarted = d
        .spec
        .and_then(|s| s.template.metadata)
        .and_then(|m| m.annotations)
        .is_some_and(|a| a.contains_key(RESTARTED_AT_ANNOTATION));
    assert!(!restarted, "the workload was restarted");
    assert_all_on(&pod_revisions(&env.client, &ns).await, &mesh.rev_a, &ns);
}

#[tokio::test]
async fn a_workload_that_never_becomes_ready_stops_the_migration_and_rolls_its_namespace_back() {
    let (mut env, dir, mesh) = setup("scm-broken", 3).await;
    let rev_label = [("istio.io/rev", mesh.rev_a.as_str())];
    let good = app_namespace(&mut env, "good", &rev_label, &mesh.rev_a, &["api"], None).await;
    // reviews's pods never become Ready at revision B.
    let bad = app_namespace_with(
        &mut env,
        "bad",
        &rev_label,
        &mesh.rev_a,
        &["api", "reviews"],
        None,
        &[("reviews", &mesh.rev_b)],
    )
    .await;
    let later = app_namespace(&mut env, "later", &rev_label, &mesh.rev_a, &["api"], None).await;
    let agent = agent_support::start_as_service_account(&env, dir.path(), "agent-a");

    let name = format!("{}-broken", env.namespace);
    create(
        &env.client,
        &migration(
            &env,
            &name,
            serde_json::json!({
                "namespaces": [good, bad, later], "to": mesh.tag,
                "workloadsAtOnce": 2, "rolloutTimeout": "8s", "onFailure": "Rollback",
            }),
        ),
    )
    .await;
    let failed = wait_for_migration(
        &env.client,
        &name,
        "Failed",
        Duration::from_secs(120),
        &agent,
    )
    .await;
    let bad_status = namespace_status(&failed, &bad);
    assert_eq!(
        bad_status.phase,
        NamespacePhase::RolledBack,
        "{bad_status:?}"
    );
    assert_eq!(
        namespace_status(&failed, &good).phase,
        NamespacePhase::Migrated
    );
    assert_eq!(
        namespace_status(&failed, &later).phase,
        NamespacePhase::Pending,
        "no namespace starts after a failure"
    );
    let degraded = failed
        .status
        .as_ref()
        .and_then(|s| s.conditions.iter().find(|c| c.type_ == "Degraded"))
        .expect("Degraded condition");
    assert_eq!(degraded.status, "True");
    assert!(degraded.message.contains(&bad), "{degraded:?}");
    let note = support::wait_for_event(
        &env.client,
        &bad,
        "NamespaceFailed",
        &format!("Deployment {bad}/reviews did not complete its restart within 8s"),
    )
    .await;
    assert!(
        note.contains("pods available") || note.contains("pods updated"),
        "{note}"
    );

    // The namespace is back on revision A, its workloads available again.
    assert_eq!(
        labels_of(&env.client, &bad).await.get("istio.io/rev"),
        Some(&mesh.rev_a)
    );
    let deployments: Api<Deployment> = Api::namespaced(env.client.clone(), &bad);
    for app in ["api", "reviews"] {
        wait_for(
            &deployments,
            app,
            "available again",
            deployment_available(3),
        )
        .await;
    }
    assert_all_on(&pod_revisions(&env.client, &bad).await, &mesh.rev_a, &bad);
    assert_all_on(&pod_revisions(&env.client, &good).await, &mesh.rev_b, &good);
    assert_all_on(
        &pod_revisions(&env.client, &later).await,
        &mesh.rev_a,
        &later,
    );
}

#[tokio::test]
async fn a_stopped_migration_names_the_workload_and_the_cli_rolls_everything_back() {
    let (mut env, dir, mesh) = setup("scm-stop", 3).await;
    let first = app_namespace(
        &mut env,
        "first",
        &[("istio-injection", "enabled")],
        &mesh.rev_a,
        &["api"],
        None,
    )
    .await;
    // ratings's pods never become Ready at revision B.
    let second = app_namespace_with(
        &mut env,
        "second",
        &[("istio.io/rev", &mesh.rev_a)],
        &mesh.rev_a,
        &["ratings"],
        None,
        &[("ratings", &mesh.rev_b)],
    )
    .await;
    let agent = agent_support::start_as_service_account(&env, dir.path(), "agent-a");

    let name = format!("{}-stop", env.namespace);
    create(
        &env.client,
        &migration(
            &env,
            &name,
            serde_json::json!({ "namespaces": [first, second], "to": mesh.rev_b, "rolloutTimeout": "6s" }),
        ),
    )
    .await;
    let failed = wait_for_migration(
        &env.client,
        &name,
        "Failed",
        Duration::from_secs(90),
        &agent,
    )
    .await;
    let s = namespace_status(&failed, &second);
    assert_eq!(s.phase, NamespacePhase::Failed);
    assert!(
        s.message.starts_with(&format!(
            "Deployment {second}/ratings did not complete its restart within 6s"
        )),
        "{s:?}"
    );
    // Stop leaves the namespace as it is.
    assert_eq!(
        labels_of(&env.client, &second).await.get("istio.io/rev"),
        Some(&mesh.rev_b)
    );
    let (code, out, _) = support::cli_async(&["sidecar", "status", &name]).await;
    assert_eq!(code, 0);
    assert!(
        out.contains(&format!("{second}/ratings did not complete")),
        "{out}"
    );

    // A stopped migration still holds its namespaces: another is refused for them.
    let (code, _, err) =
        support::cli_async(&["sidecar", "move", "-n", &second, "--to", &mesh.rev_a]).await;
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains(&format!(
            "namespace {second} is being moved by sidecarmigration {name}"
        )),
        "{err}"
    );

    let (code, out, err) = support::cli_async(&["sidecar", "rollback", &name, "--wait"]).await;
    assert_eq!(code, 0, "{out}{err}\n{}", agent.log_text());
    assert!(out.contains("RolledBack"), "{out}");
    let first_labels = labels_of(&env.client, &first).await;
    assert_eq!(
        first_labels.get("istio-injection").map(String::as_str),
        Some("enabled")
    );
    assert!(
        !first_labels.contains_key("istio.io/rev"),
        "{first_labels:?}"
    );
    assert_eq!(
        labels_of(&env.client, &second).await.get("istio.io/rev"),
        Some(&mesh.rev_a)
    );
    for ns in [&first, &second] {
        assert_all_on(&pod_revisions(&env.client, ns).await, &mesh.rev_a, ns);
    }
    // A second request is harmless; a refused migration has nothing to roll back.
    let (code, out, _) = support::cli_async(&["sidecar", "rollback", &name]).await;
    assert_eq!(code, 0);
    assert!(out.contains("rolled back already"), "{out}");
    let (code, _, err) = support::cli_async(&["sidecar", "rollback", "no-such-migration"]).await;
    assert_eq!(code, 1);
    assert!(
        err.contains("sidecarmigration \"no-such-migration\" not found"),
        "{err}"
    );
}

#[tokio::test]
async fn a_new_leader_finishes_a_migration_without_restarting_a_workload_twice() {
    use k8s_openapi::api::apps::v1::ReplicaSet;
    let (mut env, dir, mesh) = setup("scm-failover", 3).await;
    let rev_label = [("istio.io/rev", mesh.rev_a.as_str())];
    // Pods take 2 s to become Ready: a restart lasts long enough to kill the leader in it.
    let first = app_namespace(
        &mut env,
        "first",
        &rev_label,
        &mesh.rev_a,
        &["api"],
        Some("2s"),
    )
    .await;
    let second = app_namespace(
        &mut env,
        "second",
        &rev_label,
        &mesh.rev_a,
        &["api"],
        Some("2s"),
    )
    .await;
    let replica_sets = |ns: &str| {
        let api: Api<ReplicaSet> = Api::namespaced(env.client.clone(), ns);
        async move {
            api.list(&ListParams::default())
                .await
                .expect("list")
                .items
                .len()
        }
    };
    let before = (replica_sets(&first).await, replica_sets(&second).await);

    let kubeconfig = agent_support::service_account_kubeconfig(dir.path());
    let lease = format!("{}-lease", env.namespace);
    let mut leader = agent_support::start(&env, &kubeconfig, &lease, "replica-1");
    leader
        .wait_for_log("leading", Duration::from_secs(60))
        .await;
    let standby = agent_support::start(&env, &kubeconfig, &lease, "replica-2");
    standby
        .wait_for_log("waiting for the lease", Duration::from_secs(60))
        .await;

    let name = format!("{}-failover", env.namespace);
    create(
        &env.client,
        &migration(
            &env,
            &name,
            serde_json::json!({ "namespaces": [first, second], "to": mesh.tag }),
        ),
    )
    .await;
    // Mid-restart of the first namespace.
    leader
        .wait_for_log(
            "restarted workloads=Deployment api",
            Duration::from_secs(60),
        )
        .await;
    leader.kill();
    standby
        .wait_for_log("leading", Duration::from_secs(30))
        .await;

    let done = wait_for_migration(
        &env.client,
        &name,
        "Succeeded",
        Duration::from_secs(120),
        &standby,
    )
    .await;
    for ns in [&first, &second] {
        assert_eq!(namespace_status(&done, ns).phase, NamespacePhase::Migrated);
        assert_all_on(&pod_revisions(&env.client, ns).await, &mesh.rev_b, ns);
    }
    // One restart each: one new ReplicaSet per Deployment, whoever led.
    assert_eq!(
        (replica_sets(&first).await, replica_sets(&second).await),
        (before.0 + 1, before.1 + 1),
        "a workload was restarted more than once\n--- new leader ---\n{}",
        standby.log_text()
    );
    assert!(
        !standby
            .log_text()
            .contains(&format!("namespace={first} phase=\"Restarting\"")),
        "the new leader started the first namespace over:\n{}",
        standby.log_text()
    );
}

/// The UIDs of the live pods in `namespace`.
async fn pod_uids(client: &Client, namespace: &str) -> Vec<String> {
    let mut uids: Vec<String> = Api::<Pod>::namespaced(client.clone(), namespace)
        .list(&ListParams::default())
        .await
        .expect("list pods")
        .into_iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .filter_map(|p| p.metadata.uid)
        .collect();
    uids.sort();
    uids
}

/// The `StepFailed` Events about namespace `namespace` for migration `migration`
/// (events.k8s.io, in `default` where Events about cluster-scoped objects go).
async fn step_failures(
    client: &Client,
    namespace: &str,
    migration: &str,
) -> Vec<k8s_openapi::api::events::v1::Event> {
    let name = |r: &Option<k8s_openapi::api::core::v1::ObjectReference>| {
        r.as_ref().and_then(|r| r.name.clone())
    };
    support::events_with_reason(client, "StepFailed", |e| {
        e.regarding.as_ref().and_then(|r| r.kind.as_deref()) == Some("Namespace")
            && name(&e.regarding).as_deref() == Some(namespace)
            && name(&e.related).as_deref() == Some(migration)
    })
    .await
}

#[tokio::test]
async fn a_refused_relabel_fails_its_namespace_at_the_step_deadline_with_counted_events() {
    let (mut env, dir, mesh) = setup("scm-refused", 2).await;
    let rev_label = [("istio.io/rev", mesh.rev_a.as_str())];
    let refused = app_namespace(&mut env, "refused", &rev_label, &mesh.rev_a, &["api"], None).await;
    let later = app_namespace(&mut env, "later", &rev_label, &mesh.rev_a, &["api"], None).await;
    let mut before = BTreeMap::new();
    for ns in [&refused, &later] {
        before.insert(
            ns.clone(),
            (
                labels_of(&env.client, ns).await,
                pod_uids(&env.client, ns).await,
            ),
        );
    }

    // The API server refuses any change of the namespace's injection labels.
    let policy = support::DenyingPolicy::install(
        &env.client,
        &format!("{}-relabel", env.namespace),
        serde_json::json!({
            "resourceRules": [{
                "apiGroups": [""], "apiVersions": ["v1"], "operations": ["UPDATE"],
                "resources": ["namespaces"], "resourceNames": [refused],
            }],
        }),
        "['istio.io/rev', 'istio-injection'].all(k, \
         object.metadata.?labels[?k] == oldObject.metadata.?labels[?k])",
    )
    .await;
    let ns_api: Api<Namespace> = Api::all(env.client.clone());
    let probe = serde_json::json!({ "metadata": { "labels": { "istio.io/rev": mesh.tag } } });
    let dry_run = PatchParams {
        dry_run: true,
        ..Default::default()
    };
    policy
        .wait_enforced(|| async {
            ns_api
                .patch(&refused, &dry_run, &Patch::Merge(&probe))
                .await
                .map(drop)
        })
        .await;
    let probes_denied = policy.denials().await;
    assert_eq!(
        probes_denied, 1,
        "the API server counts {probes_denied} denials after the one denied probe"
    );

    let agent = agent_support::start_as_service_account(&env, dir.path(), "agent-a");
    let name = format!("{}-refused", env.namespace);
    // The step deadline. The schema takes any duration, but one shorter than a status
    // write ends the step before its first relabel is sent; 2s leaves room for a few
    // relabels with backoff (200 ms, doubling) and keeps the test short.
    create(
        &env.client,
        &migration(
            &env,
            &name,
            serde_json::json!({
                "namespaces": [refused, later], "to": mesh.tag, "rolloutTimeout": "2s",
            }),
        ),
    )
    .await;
    let failed = wait_for_migration(
        &env.client,
        &name,
        "Failed",
        Duration::from_secs(60),
        &agent,
    )
    .await;
    let attempts = policy.denials().await.saturating_sub(probes_denied);

    let s = namespace_status(&failed, &refused);
    assert_eq!(s.phase, NamespacePhase::Failed, "{refused}: {s:?}");
    assert!(
        s.message == "the namespace's labels did not change within 2s"
            || (s.message.starts_with("its calls kept failing for ")
                && s.message.contains(&policy.name)),
        "why {refused} failed: {:?}",
        s.message
    );
    // Not before the deadline, and at it: the loop wakes at the deadline of a failing
    // step rather than at its next retry (the first relabel is sent right after the step
    // starts; statuses keep whole seconds).
    let failed_after = time(&Some(s.since.clone())).duration_since(time(&s.step_started));
    assert!(
        failed_after >= k8s_openapi::jiff::SignedDuration::from_secs(2)
            && failed_after <= k8s_openapi::jiff::SignedDuration::from_secs(4),
        "{refused} failed {failed_after:?} after its step started (deadline 2s): {s:?}"
    );
    eprintln!(
        "{refused} failed {failed_after:?} after its step started, {attempts} relabels refused"
    );
    let later_status = namespace_status(&failed, &later);
    assert_eq!(
        later_status.phase,
        NamespacePhase::Pending,
        "no namespace starts after a failure: {later_status:?}"
    );
    let degraded = failed
        .status
        .as_ref()
        .and_then(|st| st.conditions.iter().find(|c| c.type_ == "Degraded"))
        .unwrap_or_else(|| panic!("no Degraded condition: {:?}", failed.status));
    assert!(
        degraded.status == "True"
            && degraded
                .message
                .contains(&format!("namespace {refused} failed")),
        "Degraded: {degraded:?}"
    );
    support::wait_for_event(&env.client, &refused, "NamespaceFailed", &s.message).await;

    // Retried until the deadline, and told: an Event on the first failure (and every
    // tenth), so fewer Events than attempts.
    assert!(
        attempts >= 2,
        "relabels the API server refused: {attempts} (a retry expected before the 2s deadline)"
    );
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let events = loop {
        let events = step_failures(&env.client, &refused, &name).await;
        if !events.is_empty() {
            break events;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no StepFailed Event about {refused} within 30s ({attempts} refused relabels)"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let notes: Vec<String> = events
        .iter()
        .map(|e| e.note.clone().unwrap_or_default())
        .collect();
    assert!(
        (events.len() as u64) < attempts,
        "{} StepFailed Events for {attempts} refused relabels: {notes:?}",
        events.len()
    );
    assert!(
        notes[0].starts_with(&format!(
            "namespace {refused}: relabelling failed 1 time(s), retrying with backoff: "
        )) && notes[0].contains(&policy.name),
        "the first StepFailed Event: {}",
        notes[0]
    );
    for e in &events {
        assert_eq!(e.type_.as_deref(), Some("Warning"), "{:?}", e.note);
    }

    // Nothing else was applied: labels as before, no workload restarted, the same pods.
    for ns in [&refused, &later] {
        let (labels, uids) = &before[ns];
        assert_eq!(&labels_of(&env.client, ns).await, labels, "labels of {ns}");
        let d = Api::<Deployment>::namespaced(env.client.clone(), ns)
            .get("api")
            .await
            .expect("deployment");
        let annotations = d
            .spec
            .and_then(|s| s.template.metadata)
            .and_then(|m| m.annotations)
            .unwrap_or_default();
        assert!(
            !annotations.contains_key(RESTARTED_AT_ANNOTATION),
            "{ns}/api was restarted: {annotations:?}"
        );
        assert_eq!(&pod_uids(&env.client, ns).await, uids, "pods of {ns}");
        assert_all_on(&pod_revisions(&env.client, ns).await, &mesh.rev_a, ns);
    }
    policy.remove().await;
}
