//! Running the agent under test: as a separate process (so it can be SIGKILLed),
//! authenticated as its own ServiceAccount with exactly the RBAC from `manifests/`.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::runtime::wait::{await_condition, conditions};
use kube::{Api, Client};
use serde_json::json;
use ztunnel_rollout::api::ZtunnelRollout;
use ztunnel_rollout::api::manifests::{self, NAME, NAMESPACE};
use ztunnel_rollout_testbed::fixtures;

use super::{TestEnv, cluster};

/// The label that ties a test's rollouts to its agents (`--rollout-selector`).
pub const TEST_LABEL: &str = "ztunnel-rollout.dev/test";

fn object<T: serde::de::DeserializeOwned>(file: &str) -> T {
    let (_, v) = manifests::objects()
        .into_iter()
        .chain(manifests::optional_objects())
        .find(|(f, _)| *f == file)
        .unwrap_or_else(|| panic!("no {file} in manifests::objects()"));
    serde_json::from_value(v).unwrap_or_else(|e| panic!("{file}: {e}"))
}

/// Applies the CRD, the agent's namespace, ServiceAccount and RBAC from `manifests/`
/// (not the Deployment: the agent runs as a test process).
pub async fn install(client: &Client) {
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    for file in ["crd-ztunnelrollouts.json", "crd-sidecarmigrations.json"] {
        let crd: CustomResourceDefinition = object(file);
        fixtures::apply(&crds, &crd).await.expect("CRD");
        let crd_name = crd.metadata.name.clone().unwrap_or_default();
        super::wait_for(
            &crds,
            &crd_name,
            "CRD established",
            conditions::is_crd_established(),
        )
        .await;
    }
    fixtures::apply(
        &Api::<Namespace>::all(client.clone()),
        &object("namespace.json"),
    )
    .await
    .expect("apply namespace");
    fixtures::apply(
        &Api::<ServiceAccount>::namespaced(client.clone(), NAMESPACE),
        &object("serviceaccount.json"),
    )
    .await
    .expect("apply service account");
    fixtures::apply(
        &Api::<ClusterRole>::all(client.clone()),
        &object("clusterrole.json"),
    )
    .await
    .expect("apply cluster role");
    fixtures::apply(
        &Api::<ClusterRoleBinding>::all(client.clone()),
        &object("clusterrolebinding.json"),
    )
    .await
    .expect("apply cluster role binding");
    // The sidecar migrations' opt-in ClusterRole: the suite tests them.
    fixtures::apply(
        &Api::<ClusterRole>::all(client.clone()),
        &object("optional/sidecar-migrations/clusterrole.json"),
    )
    .await
    .expect("apply the sidecar migrations' cluster role");
    fixtures::apply(
        &Api::<ClusterRoleBinding>::all(client.clone()),
        &object("optional/sidecar-migrations/clusterrolebinding.json"),
    )
    .await
    .expect("apply the sidecar migrations' cluster role binding");
    {
        use k8s_openapi::api::admissionregistration::v1::{
            ValidatingAdmissionPolicy, ValidatingAdmissionPolicyBinding,
        };
        for (what, binding) in [
            (
                "optional/sidecar-migrations/validatingadmissionpolicy.json",
                "optional/sidecar-migrations/validatingadmissionpolicybinding.json",
            ),
            (
                "validatingadmissionpolicy-ztunnel-pods.json",
                "validatingadmissionpolicybinding-ztunnel-pods.json",
            ),
        ] {
            fixtures::apply(
                &Api::<ValidatingAdmissionPolicy>::all(client.clone()),
                &object(what),
            )
            .await
            .unwrap_or_else(|e| panic!("apply {what}: {e}"));
            fixtures::apply(
                &Api::<ValidatingAdmissionPolicyBinding>::all(client.clone()),
                &object(binding),
            )
            .await
            .unwrap_or_else(|e| panic!("apply {binding}: {e}"));
        }
    }
    for (role, binding) in [
        ("role-lease.json", "rolebinding-lease.json"),
        ("role-events.json", "rolebinding-events.json"),
        // Opt-in: the health gates' tests read Prometheus credentials.
        (
            "optional/prometheus-credentials/role.json",
            "optional/prometheus-credentials/rolebinding.json",
        ),
    ] {
        let role: Role = object(role);
        let ns = role.metadata.namespace.clone().unwrap_or_default();
        fixtures::apply(&Api::<Role>::namespaced(client.clone(), &ns), &role)
            .await
            .expect("apply role");
        fixtures::apply(
            &Api::<RoleBinding>::namespaced(client.clone(), &ns),
            &object::<RoleBinding>(binding),
        )
        .await
        .expect("apply role binding");
    }
}

/// A copy of the cluster's admin kubeconfig that acts as the agent's ServiceAccount.
pub fn service_account_kubeconfig(dir: &Path) -> PathBuf {
    kubeconfig_as(dir, NAMESPACE, NAME)
}

/// A copy of the cluster's admin kubeconfig (in `dir`) that acts as ServiceAccount
/// `namespace/name`, with the groups the API server gives a ServiceAccount.
pub fn kubeconfig_as(dir: &Path, namespace: &str, name: &str) -> PathBuf {
    let admin = std::fs::read_to_string(&cluster().kubeconfig).expect("read kubeconfig");
    let mut doc: serde_json::Value = serde_json::from_str(&admin).expect("JSON kubeconfig");
    for user in doc["users"].as_array_mut().expect("users") {
        user["user"]["as"] = json!(format!("system:serviceaccount:{namespace}:{name}"));
        user["user"]["as-groups"] = json!([
            "system:serviceaccounts",
            format!("system:serviceaccounts:{namespace}"),
            "system:authenticated"
        ]);
    }
    let path = dir.join(format!("{namespace}-{name}.kubeconfig"));
    std::fs::write(&path, doc.to_string()).expect("write kubeconfig");
    path
}

/// A running agent process; killed when dropped.
pub struct Agent {
    pub child: Child,
    pub identity: String,
    pub log: PathBuf,
    pub metrics: String,
    /// Started under `AGENT_WRAPPER` in a process group of its own: the wrapper's
    /// children (the agent itself) go with it.
    pub wrapped: bool,
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.kill();
    }
}

impl Agent {
    pub fn kill(&mut self) {
        if std::mem::take(&mut self.wrapped) {
            // SAFETY: kill(2) on the group this Agent created (its leader's pid).
            unsafe {
                libc::kill(-(self.child.id() as i32), libc::SIGKILL);
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until the agent's log has a line containing `text`; returns the line.
    pub async fn wait_for_log(&self, text: &str, within: Duration) -> String {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            if let Some(line) = self.log_text().lines().find(|l| l.contains(text)) {
                return line.to_owned();
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "agent {} did not log {text:?} within {within:?}:\n{}",
                self.identity,
                self.log_text()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The value of a metric line starting with `prefix`, summed over label sets.
    pub async fn metric(&self, prefix: &str) -> f64 {
        let text = http_get(&self.metrics, "/metrics").await;
        text.lines()
            .filter(|l| l.starts_with(prefix))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }
}

/// Minimal HTTP/1.0 GET on loopback, for the agent's metrics endpoint.
pub async fn http_get(address: &str, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(address)
        .await
        .unwrap_or_else(|e| panic!("connect {address}: {e}"));
    stream
        .write_all(format!("GET {path} HTTP/1.0\r\nHost: {address}\r\n\r\n").as_bytes())
        .await
        .expect("send");
    let mut body = String::new();
    stream.read_to_string(&mut body).await.expect("read");
    body
}

fn free_port() -> u16 {
    ztunnel_rollout_testbed::control_plane::free_port().expect("free port")
}

/// Starts `ztunnel-rollout agent` for `env`'s rollouts, with lease `lease`.
pub fn start(env: &TestEnv, kubeconfig: &Path, lease: &str, identity: &str) -> Agent {
    start_tagged(&env.namespace, kubeconfig, lease, identity)
}

/// Starts an agent for `env` as the manifests' ServiceAccount (its kubeconfig in `dir`),
/// on a lease of the env's own.
pub fn start_as_service_account(env: &TestEnv, dir: &Path, identity: &str) -> Agent {
    let kubeconfig = service_account_kubeconfig(dir);
    start(
        env,
        &kubeconfig,
        &format!("{}-lease", env.namespace),
        identity,
    )
}

/// Creates `rollout` (as the test, not the agent).
pub async fn create(client: &Client, rollout: &ZtunnelRollout) -> ZtunnelRollout {
    Api::<ZtunnelRollout>::all(client.clone())
        .create(&kube::api::PostParams::default(), rollout)
        .await
        .expect("create the rollout")
}

/// What the rollout's status records about `node`, if anything.
pub fn node_status<'a>(
    r: &'a ZtunnelRollout,
    node: &str,
) -> Option<&'a ztunnel_rollout::api::ztunnel_rollout::NodeStatus> {
    r.status.as_ref()?.nodes.iter().find(|n| n.name == node)
}

/// Starts an agent for `env` as the manifests' ServiceAccount, told (as the downward
/// API would) that it runs on `node`.
pub fn start_as_service_account_on(env: &TestEnv, dir: &Path, identity: &str, node: &str) -> Agent {
    let kubeconfig = service_account_kubeconfig(dir);
    spawn(
        &env.namespace,
        &kubeconfig,
        &format!("{}-lease", env.namespace),
        identity,
        &[("NODE_NAME", node)],
    )
}

/// Starts an agent for `env` through `kubeconfig`, on the env's own lease, with extra
/// environment variables (flags by their `ZTUNNEL_ROLLOUT_*` names).
pub fn start_with_env(
    env: &TestEnv,
    kubeconfig: &Path,
    identity: &str,
    vars: &[(&str, &str)],
) -> Agent {
    spawn(
        &env.namespace,
        kubeconfig,
        &format!("{}-lease", env.namespace),
        identity,
        vars,
    )
}

/// Starts `ztunnel-rollout agent` for the rollouts labelled `TEST_LABEL=tag`.
pub fn start_tagged(tag: &str, kubeconfig: &Path, lease: &str, identity: &str) -> Agent {
    spawn(tag, kubeconfig, lease, identity, &[])
}

/// The Prometheus URL prefix the tests' agents allow (any port of 127.0.0.1).
pub const ALLOWED_PROMETHEUS: &str = "http://127.0.0.1";
/// The same over https (the credentials test's Prometheus).
pub const ALLOWED_PROMETHEUS_TLS: &str = "https://127.0.0.1";

/// The agent's flags for the rollouts labelled `TEST_LABEL=tag`, on `lease`, as
/// `identity`, serving metrics at `metrics`.
pub fn flags(tag: &str, lease: &str, identity: &str, metrics: &str) -> Vec<String> {
    [
        "--lease-name",
        lease,
        "--identity",
        identity,
        "--metrics-address",
        metrics,
        "--rollout-selector",
        &format!("{TEST_LABEL}={tag}"),
        // The tests' Prometheus and endpoints listen on loopback, on any port.
        "--allowed-prometheus-url-prefix",
        ALLOWED_PROMETHEUS,
        "--allowed-prometheus-url-prefix",
        ALLOWED_PROMETHEUS_TLS,
    ]
    .map(str::to_owned)
    .to_vec()
}

fn spawn(tag: &str, kubeconfig: &Path, lease: &str, identity: &str, env: &[(&str, &str)]) -> Agent {
    use std::os::unix::process::CommandExt;
    let log =
        PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("agent-{tag}-{identity}.log"));
    let metrics = format!("127.0.0.1:{}", free_port());
    // AGENT_WRAPPER (e.g. `heaptrack`) runs the agent under a profiler, for investigations.
    let exe = env!("CARGO_BIN_EXE_ztunnel-rollout");
    let wrapper = std::env::var("AGENT_WRAPPER").unwrap_or_default();
    let wrapped = !wrapper.is_empty();
    let mut cmd = if wrapped {
        let mut c = Command::new(wrapper);
        c.arg(exe).process_group(0);
        c
    } else {
        Command::new(exe)
    };
    cmd.args(["agent", "--kubeconfig"])
        .arg(kubeconfig)
        .args(flags(tag, lease, identity, &metrics))
        .env(
            "RUST_LOG",
            std::env::var("AGENT_LOG").unwrap_or_else(|_| "warn,ztunnel_rollout=info".into()),
        )
        .envs(env.iter().copied())
        .env_remove("KUBECONFIG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).expect("agent log"));
    // SAFETY: prctl is async-signal-safe; the agent dies with the test process.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = cmd.spawn().expect("start the agent");
    Agent {
        child,
        identity: identity.to_owned(),
        log,
        metrics,
        wrapped,
    }
}

/// A rollout of `env`'s nodes, labelled for `env`'s agents, with `spec` merged in.
pub fn rollout(env: &TestEnv, name: &str, spec: serde_json::Value) -> ZtunnelRollout {
    let mut base = json!({
        "daemonSet": { "namespace": env.namespace, "name": "ztunnel" },
        "nodeSelector": { "matchLabels": env.node_selector() },
        "waves": { "groupBy": fixtures::ZONE_LABEL, "maxUnavailable": 1 },
    });
    if let (Some(b), Some(s)) = (base.as_object_mut(), spec.as_object()) {
        for (k, v) in s {
            b.insert(k.clone(), v.clone());
        }
    }
    serde_json::from_value(json!({
        "apiVersion": "ztunnel-rollout.dev/v1alpha1",
        "kind": "ZtunnelRollout",
        "metadata": { "name": name, "labels": { TEST_LABEL: env.namespace } },
        "spec": base,
    }))
    .expect("a ZtunnelRollout")
}

/// Waits by watch until the rollout reaches `phase`, failing after `within` with the
/// agents' logs.
pub async fn wait_for_phase(
    client: &Client,
    name: &str,
    phase: &str,
    within: Duration,
    agents: &[&Agent],
) -> ZtunnelRollout {
    let api: Api<ZtunnelRollout> = Api::all(client.clone());
    let want = phase.to_owned();
    let cond = move |r: Option<&ZtunnelRollout>| {
        r.and_then(|r| r.status.as_ref())
            .and_then(|s| s.phase.as_deref())
            == Some(want.as_str())
    };
    // The watch may fail (an API server restarting): watch again until the deadline.
    let watch = async {
        loop {
            match await_condition(api.clone(), name, cond.clone()).await {
                Ok(found) => return found,
                Err(e) => {
                    eprintln!("watching rollout {name}: {e}; again");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        }
    };
    match tokio::time::timeout(within, watch).await {
        Ok(Some(r)) => r,
        other => {
            let now = api.get_opt(name).await.ok().flatten();
            let logs: Vec<String> = agents
                .iter()
                .map(|a| format!("--- agent {} ---\n{}", a.identity, a.log_text()))
                .collect();
            panic!(
                "rollout {name} not {phase} within {within:?} ({other:?}); now: {:?}\n{}",
                now.and_then(|r| r.status),
                logs.join("\n")
            )
        }
    }
}

/// Fails unless every node `selector` lists is released by the rollout: schedulable
/// (except `still_cordoned`, cordoned by its operator before the rollout), without our
/// ownership annotation and without our waiting taint.
pub async fn assert_nodes_released(
    client: &Client,
    selector: &kube::api::ListParams,
    still_cordoned: Option<&str>,
) {
    use k8s_openapi::api::core::v1::Node;
    use kube::ResourceExt;
    use ztunnel_rollout_core::labels::{OWNER_ANNOTATION, WAITING_TAINT};
    for n in Api::<Node>::all(client.clone())
        .list(selector)
        .await
        .expect("nodes")
    {
        let name = n.name_any();
        let cordoned = n.spec.as_ref().and_then(|s| s.unschedulable) == Some(true);
        assert_eq!(
            cordoned,
            Some(name.as_str()) == still_cordoned,
            "{name}: only a node cordoned before the rollout stays cordoned"
        );
        assert!(!n.annotations().contains_key(OWNER_ANNOTATION), "{name}");
        let taints = n.spec.and_then(|s| s.taints).unwrap_or_default();
        assert!(
            taints.iter().all(|t| t.key != WAITING_TAINT),
            "{name}: waiting taint left behind"
        );
    }
}

/// Sets `spec.abort` on rollout `name` and waits until it is `Aborted`.
pub async fn abort(client: &Client, name: &str, agent: &Agent) -> ZtunnelRollout {
    Api::<ZtunnelRollout>::all(client.clone())
        .patch(
            name,
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(json!({ "spec": { "abort": true } })),
        )
        .await
        .expect("abort");
    wait_for_phase(client, name, "Aborted", Duration::from_secs(60), &[agent]).await
}
