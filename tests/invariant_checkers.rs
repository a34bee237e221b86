//! The invariant checkers (`ztunnel_rollout_testbed::invariants`) catch real breaches:
//! each test makes a deliberately wrong actor break one promise on the local control
//! plane (delete a pod through a blocking PodDisruptionBudget, replace ztunnel on a
//! schedulable node, write without the Lease, evict a pod twice, leave a node cordoned,
//! grow past a memory bound), then runs the checker over what the API server recorded in
//! its audit log (or, for memory, what the kernel counted) and asserts it names that
//! breach, and only that one: the same actor's harmless request beside it is not flagged.
//!
//! The cluster is this binary's own, started with the checkers' audit policy.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use base64::Engine;
use http::Method;
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Namespace, Node, Pod};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::{EvictParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::wait::await_condition;
use kube::{Api, Client};
use serde_json::json;
use support::fault_proxy::{Fault as ProxyFault, FaultProxy, Rule};
use ztunnel_rollout_testbed::control_plane::client_for;
use ztunnel_rollout_testbed::fixtures::{self, AppFixture, Budget, ZtunnelFixture};
use ztunnel_rollout_testbed::invariants::audit::{AuditEvent, read_events};
use ztunnel_rollout_testbed::invariants::leadership::Election;
use ztunnel_rollout_testbed::invariants::{
    Actors, Invariant, Violation, budgets, cordons, evictions, leadership, memory,
};
use ztunnel_rollout_testbed::pki;

const WAIT: Duration = Duration::from_secs(60);
/// The namespace whose Leases the audit policy records in full (the agent's).
const LEASE_NAMESPACE: &str = "ztunnel-rollout";

struct Bed {
    kubeconfig: PathBuf,
    audit_log: PathBuf,
    _supervisor: (Child, ChildStdin),
}

static BED: OnceLock<Result<Bed, String>> = OnceLock::new();

fn bed() -> &'static Bed {
    let started = BED.get_or_init(|| {
        let audit_log = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!(
            "invariant-checkers-{}.audit.log",
            std::process::id()
        ));
        let s = support::start_supervisor(
            "invariants",
            &[
                "--audit-invariants",
                LEASE_NAMESPACE,
                "--audit-log-path",
                &audit_log.to_string_lossy(),
            ],
        )?;
        let kubeconfig = s.ready["kubeconfig"]
            .as_str()
            .ok_or("no kubeconfig in the ready line")?
            .into();
        Ok(Bed {
            kubeconfig,
            audit_log,
            _supervisor: (s.child, s.stdin),
        })
    });
    match started {
        Ok(bed) => bed,
        Err(e) => panic!("{e}"),
    }
}

async fn client() -> Client {
    client_for(&bed().kubeconfig).await.expect("admin client")
}

/// The user the bed's admin client authenticates as: the wrong actor of these tests.
fn wrong_actor() -> Actors {
    Actors::from([pki::ADMIN.user.to_owned()])
}

/// Creates `count` Ready nodes named `<prefix>-NNN` and a namespace `prefix`.
async fn nodes_and_namespace(client: &Client, prefix: &str, count: usize) -> Vec<String> {
    let ns_api: Api<Namespace> = Api::all(client.clone());
    fixtures::apply(&ns_api, &fixtures::namespace(prefix, BTreeMap::new()))
        .await
        .expect("namespace");
    let node_api: Api<Node> = Api::all(client.clone());
    let mut names = Vec::new();
    for node in fixtures::zoned_nodes(&format!("{prefix}-"), count, &["a"], prefix) {
        let name = node.metadata.name.clone().unwrap_or_default();
        fixtures::apply(&node_api, &node).await.expect("node");
        tokio::time::timeout(
            WAIT,
            await_condition(node_api.clone(), &name, support::node_ready),
        )
        .await
        .unwrap_or_else(|_| panic!("node {name} not Ready"))
        .expect("watch node");
        names.push(name);
    }
    names
}

/// The audit log's completed requests, once one matches `recorded` (the API server
/// writes an event after it answers). Fails the test after a deadline.
async fn events_once(what: &str, recorded: impl Fn(&AuditEvent) -> bool) -> Vec<AuditEvent> {
    let deadline = Instant::now() + WAIT;
    loop {
        let file = std::fs::File::open(&bed().audit_log).expect("open the audit log");
        let events = read_events(std::io::BufReader::new(file)).expect("read the audit log");
        if events.iter().any(&recorded) {
            return events;
        }
        assert!(
            Instant::now() < deadline,
            "the audit log never recorded {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn request_to(verb: &str, resource: &str, name: &str) -> impl Fn(&AuditEvent) -> bool {
    move |e| e.verb == verb && e.full_resource() == resource && e.name.as_deref() == Some(name)
}

fn only(found: &[Violation], invariant: Invariant, mentions: &str) {
    assert_eq!(found.len(), 1, "exactly one breach expected: {found:#?}");
    assert_eq!(found[0].invariant, invariant);
    assert!(found[0].detail.contains(mentions), "{found:#?}");
}

async fn set_unschedulable(client: &Client, node: &str, value: bool) {
    Api::<Node>::all(client.clone())
        .patch(
            node,
            &PatchParams::default(),
            &Patch::Merge(json!({ "spec": { "unschedulable": value } })),
        )
        .await
        .expect("patch node");
}

#[tokio::test]
async fn a_delete_through_a_blocking_budget_is_caught() {
    let client = client().await;
    let ns = "wrong-pdb";
    let nodes = nodes_and_namespace(&client, ns, 1).await;
    let mut app = AppFixture::new(ns, "web", 2);
    app.node_selector = BTreeMap::from([(fixtures::NODE_SET_LABEL.to_owned(), ns.to_owned())]);
    let deployments = Api::namespaced(client.clone(), ns);
    fixtures::apply(&deployments, &app.deployment())
        .await
        .expect("deployment");
    let pdbs: Api<PodDisruptionBudget> = Api::namespaced(client.clone(), ns);
    let selector = BTreeMap::from([("app".to_owned(), "web".to_owned())]);
    fixtures::apply(
        &pdbs,
        &fixtures::pdb(
            ns,
            "web",
            selector,
            Budget::MinAvailable(IntOrString::Int(2)),
        ),
    )
    .await
    .expect("pdb");
    // Both pods healthy and the budget spent: no disruption allowed.
    support::wait_for(
        &pdbs,
        "web",
        "the budget to allow no disruption",
        |p: Option<&PodDisruptionBudget>| {
            p.and_then(|p| p.status.as_ref())
                .is_some_and(|s| s.current_healthy == Some(2) && s.disruptions_allowed == Some(0))
        },
    )
    .await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let list = pods.list(&ListParams::default()).await.expect("pods");
    let victim = list.items[0].metadata.name.clone().expect("pod name");
    // The eviction API refuses; the wrong actor deletes instead.
    let refused = pods.evict(&victim, &EvictParams::default()).await;
    assert!(
        matches!(&refused, Err(kube::Error::Api(s)) if s.code == 429),
        "the eviction should be refused: {refused:?}"
    );
    pods.delete(&victim, &Default::default())
        .await
        .expect("delete through the budget");
    let events = events_once("the wrong delete", request_to("delete", "pods", &victim)).await;
    only(
        &budgets::disruptions_beyond_budget(&events, &wrong_actor()),
        Invariant::PdbRespected,
        &format!("deleted pod {ns}/{victim}"),
    );
    assert_eq!(nodes.len(), 1);
}

#[tokio::test]
async fn ztunnel_replaced_on_a_schedulable_node_is_caught() {
    let client = client().await;
    let ns = "wrong-ztunnel";
    let nodes = nodes_and_namespace(&client, ns, 2).await;
    let mut ztunnel = ZtunnelFixture::new(ns, "1.28.0");
    ztunnel.node_selector = BTreeMap::from([(fixtures::NODE_SET_LABEL.to_owned(), ns.to_owned())]);
    let daemonsets: Api<DaemonSet> = Api::namespaced(client.clone(), ns);
    fixtures::apply(&daemonsets, &ztunnel.daemonset())
        .await
        .expect("ztunnel");
    support::wait_for(
        &daemonsets,
        "ztunnel",
        "ztunnel on both nodes",
        support::daemonset_ready(2),
    )
    .await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let on = |node: &str| {
        let pods = pods.clone();
        let node = node.to_owned();
        async move {
            pods.list(&ListParams::default().fields(&format!("spec.nodeName={node}")))
                .await
                .expect("pods")
                .items[0]
                .metadata
                .name
                .clone()
                .expect("name")
        }
    };
    // The right way on the first node: cordon, then replace.
    set_unschedulable(&client, &nodes[0], true).await;
    let cordoned = on(&nodes[0]).await;
    pods.delete(&cordoned, &Default::default())
        .await
        .expect("delete");
    // The wrong way on the second: replace while it takes pods.
    let schedulable = on(&nodes[1]).await;
    pods.delete(&schedulable, &Default::default())
        .await
        .expect("delete");
    let events = events_once(
        "the wrong replacement",
        request_to("delete", "pods", &schedulable),
    )
    .await;
    let ztunnel_labels = BTreeMap::from([("app".to_owned(), "ztunnel".to_owned())]);
    only(
        &cordons::ztunnel_deleted_on_schedulable(&events, &wrong_actor(), ns, &ztunnel_labels),
        Invariant::ZtunnelOnlyOnCordoned,
        &format!("{schedulable} at"),
    );
    set_unschedulable(&client, &nodes[0], false).await;
}

/// A kubeconfig for `proxy` with no credential of its own (the proxy authenticates
/// upstream as the bed's admin).
fn via(proxy: &FaultProxy, dir: &Path, name: &str) -> PathBuf {
    let doc = json!({
        "apiVersion": "v1", "kind": "Config", "current-context": "proxy",
        "clusters": [{ "name": "proxy", "cluster": {
            "server": proxy.server_url(),
            "certificate-authority-data":
                base64::engine::general_purpose::STANDARD.encode(proxy.ca_pem()),
        } }],
        "users": [{ "name": "proxy", "user": {} }],
        "contexts": [{ "name": "proxy", "context": { "cluster": "proxy", "user": "proxy" } }],
    });
    let path = dir.join(format!("{name}.kubeconfig"));
    std::fs::write(&path, doc.to_string()).expect("write kubeconfig");
    path
}

#[tokio::test]
async fn a_write_by_a_replica_without_the_lease_is_caught() {
    let client = client().await;
    let ns = "wrong-leader";
    let nodes = nodes_and_namespace(&client, ns, 1).await;
    fixtures::apply(
        &Api::<Namespace>::all(client.clone()),
        &fixtures::namespace(LEASE_NAMESPACE, BTreeMap::new()),
    )
    .await
    .expect("lease namespace");
    let dir = tempfile::tempdir().expect("dir");
    let (a_ip, b_ip) = (Ipv4Addr::new(127, 0, 0, 2), Ipv4Addr::new(127, 0, 0, 3));
    let proxy_a = FaultProxy::start_from(&bed().kubeconfig, Some(a_ip)).await;
    let proxy_b = FaultProxy::start_from(&bed().kubeconfig, Some(b_ip)).await;
    let a = client_for(&via(&proxy_a, dir.path(), "a"))
        .await
        .expect("a");
    let b = client_for(&via(&proxy_b, dir.path(), "b"))
        .await
        .expect("b");
    // Replica a takes the Lease.
    let lease_name = "wrong-leader";
    let lease: Lease = serde_json::from_value(json!({
        "metadata": { "name": lease_name, "namespace": LEASE_NAMESPACE },
        "spec": { "holderIdentity": "a", "leaseDurationSeconds": 15 },
    }))
    .expect("lease");
    Api::<Lease>::namespaced(a.clone(), LEASE_NAMESPACE)
        .create(&PostParams::default(), &lease)
        .await
        .expect("create the lease");
    let label = |client: Client, value: &'static str| {
        let node = nodes[0].clone();
        async move {
            Api::<Node>::all(client)
                .patch(
                    &node,
                    &PatchParams::default(),
                    &Patch::Merge(json!({ "metadata": { "labels": { "wrote": value } } })),
                )
                .await
                .expect("patch node");
        }
    };
    label(a, "a").await;
    // Replica b writes while a holds the Lease.
    label(b, "b").await;
    let events = events_once("b's write", |e| {
        e.source_ip == b_ip.to_string() && e.verb == "patch" && e.resource == "nodes"
    })
    .await;
    let election = Election {
        namespace: LEASE_NAMESPACE.into(),
        lease: lease_name.into(),
        replicas: BTreeMap::from([
            (a_ip.to_string(), "a".to_owned()),
            (b_ip.to_string(), "b".to_owned()),
        ]),
    };
    only(
        &leadership::writes_without_lease(&events, &election),
        Invariant::NoSplitBrain,
        "replica b (127.0.0.3) did patch nodes",
    );
}

#[tokio::test]
async fn a_pod_evicted_twice_is_caught() {
    let client = client().await;
    let ns = "wrong-evictions";
    let nodes = nodes_and_namespace(&client, ns, 1).await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    // A pod that takes 30 s to exit: still there, terminating, for the second eviction.
    let pod = |name: &str| -> Pod {
        serde_json::from_value(json!({
            "metadata": { "name": name, "namespace": ns, "annotations": {
                (ztunnel_rollout_testbed::kwok_stages::EXIT_AFTER_ANNOTATION): "30" } },
            "spec": { "nodeName": nodes[0], "terminationGracePeriodSeconds": 30,
                      "containers": [{ "name": "app", "image": "app:1" }] },
        }))
        .expect("pod")
    };
    for name in ["once", "twice"] {
        pods.create(&PostParams::default(), &pod(name))
            .await
            .expect("create pod");
    }
    pods.evict("once", &EvictParams::default())
        .await
        .expect("evict once");
    for _ in 0..2 {
        pods.evict("twice", &EvictParams::default())
            .await
            .expect("evict a terminating pod");
    }
    let events = events_once(
        "the second eviction",
        request_to("create", "pods/eviction", "twice"),
    )
    .await;
    let found = evictions::evicted_twice(&events, &wrong_actor());
    only(&found, Invariant::NoDoubleEviction, "wrong-evictions/twice");
    assert!(found[0].detail.contains("2 times"), "{found:#?}");
}

#[tokio::test]
async fn a_node_left_cordoned_is_caught() {
    let client = client().await;
    let ns = "wrong-cordon";
    nodes_and_namespace(&client, ns, 3).await;
    let node_api: Api<Node> = Api::all(client.clone());
    let read = || async {
        node_api
            .list(&ListParams::default().labels(&format!("{}={ns}", fixtures::NODE_SET_LABEL)))
            .await
            .expect("nodes")
            .items
            .into_iter()
            .map(|n| {
                let name = n.metadata.name.clone().unwrap_or_default();
                (name, n.spec.and_then(|s| s.unschedulable).unwrap_or(false))
            })
            .collect::<BTreeMap<String, bool>>()
    };
    let before = read().await;
    let names: Vec<String> = before.keys().cloned().collect();
    // The wrong actor cordons one node and leaves it; the operator cordons another.
    set_unschedulable(&client, &names[0], true).await;
    set_unschedulable(&client, &names[1], true).await;
    let after = read().await;
    only(
        &cordons::left_cordoned(&before, &after, &BTreeSet::from([names[1].clone()])),
        Invariant::NothingLeftCordoned,
        &format!("node {} is left cordoned", names[0]),
    );
}

#[tokio::test]
async fn memory_past_the_bound_is_caught() {
    // A process that holds 64 MiB it has written to, read while it runs.
    let mut hog = std::process::Command::new("python3")
        .args([
            "-c",
            "import sys, time\nb = b'x' * (64 << 20)\nprint('held', flush=True)\ntime.sleep(60)",
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("python3");
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(hog.stdout.take().expect("stdout")),
        &mut line,
    )
    .expect("read");
    assert_eq!(line.trim(), "held");
    let peak = memory::peak_rss(hog.id()).expect("peak");
    let _ = hog.kill();
    let _ = hog.wait();
    let bound = 32 << 20;
    let v = memory::over_bound("the hog", peak, bound).expect("over the bound");
    assert_eq!(v.invariant, Invariant::BoundedMemory);
    assert!(memory::over_bound("the hog", peak, 256 << 20).is_none());
}

/// The fault campaign's finding (seeds 2 and 4): an eviction the API server granted but
/// whose answer was lost was sent again, and the pod, already terminating, was evicted a
/// second time. The drain, behind a proxy that loses the answers to its first three
/// evictions, must evict each pod once (the checker over the audit log), and finish.
#[tokio::test]
async fn the_drain_evicts_each_pod_once_when_the_answers_are_lost() {
    let client = client().await;
    let ns = "lost-evictions";
    let nodes = nodes_and_namespace(&client, ns, 1).await;
    let mut app = AppFixture::new(ns, "app", 3);
    app.node_selector = BTreeMap::from([(fixtures::NODE_SET_LABEL.to_owned(), ns.to_owned())]);
    // Terminating long enough for a retry to find each pod still there.
    app.exit_after_seconds = 5.0;
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), ns);
    fixtures::apply(&deployments, &app.deployment())
        .await
        .expect("deployment");
    support::wait_for(
        &deployments,
        "app",
        "app available",
        support::deployment_available(3),
    )
    .await;

    let proxy = FaultProxy::start_for(&bed().kubeconfig).await;
    let lost = proxy.add(Rule::new(Method::POST, "/eviction", ProxyFault::DropAnswer).times(3));
    let dir = tempfile::tempdir().expect("dir");
    let kubeconfig = via(&proxy, dir.path(), "lost-evictions");
    // Off the test's runtime thread, which serves the proxy meanwhile.
    let node = nodes[0].clone();
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_ztunnel-rollout"))
            .args(["drain", &node, "--timeout", "2m", "--kubeconfig"])
            .arg(&kubeconfig)
            .env_remove("KUBECONFIG")
            .output()
    })
    .await
    .expect("join")
    .expect("run ztunnel-rollout drain");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The faults happened: three evictions applied, their answers lost.
    let applied_unanswered = proxy
        .injections()
        .iter()
        .filter(|i| i.rule == lost && i.upstream_status.is_some_and(|s| (200..300).contains(&s)))
        .count();
    assert_eq!(applied_unanswered, 3, "{}", proxy.report());

    // By the drain's user: the checker below judges that actor's evictions.
    let actor = wrong_actor();
    let evicted_here = |e: &AuditEvent| {
        actor.contains(&e.user)
            && e.namespace.as_deref() == Some(ns)
            && e.full_resource() == "pods/eviction"
            && e.succeeded()
    };
    // The API server writes an event after answering: read until all three are there.
    let deadline = Instant::now() + WAIT;
    let events = loop {
        let events = events_once("an eviction in lost-evictions", evicted_here).await;
        if events.iter().filter(|e| evicted_here(e)).count() >= 3 {
            break events;
        }
        assert!(
            Instant::now() < deadline,
            "the audit log never recorded 3 evictions in {ns}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let mine: Vec<AuditEvent> = events
        .into_iter()
        .filter(|e| e.namespace.as_deref() == Some(ns))
        .collect();
    let found = evictions::evicted_twice(&mine, &actor);
    assert!(found.is_empty(), "{found:#?}");
}
