//! Starts and stops the local control plane: etcd, kube-apiserver,
//! kube-controller-manager, kube-scheduler and KWOK, on loopback with free ports.
//!
//! Every component is a child process that receives SIGKILL if the thread that started
//! it dies (`PR_SET_PDEATHSIG`), so even a killed supervisor leaves nothing behind.
//! Start it from a thread that lives as long as the cluster (the main thread).

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::ServiceAccount;
use kube::{Api, Client};
use tokio::process::{Child, Command};

use super::binaries::{BinariesError, ControlPlaneBinaries};
use super::kubeconfig::write_kubeconfig;
use super::kwok_restart::{self, PreviousHolders};
use super::kwok_stages::{PodTimings, kwok_configuration, pod_stages, render};
use super::pki::{self, PkiError, PkiFiles};

#[derive(Debug, thiserror::Error)]
pub enum ControlPlaneError {
    #[error(transparent)]
    Binaries(#[from] BinariesError),
    #[error(transparent)]
    Pki(#[from] PkiError),
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    #[error("{component} exited ({status}); last lines of {log}:\n{tail}")]
    ComponentExited {
        component: &'static str,
        status: String,
        log: PathBuf,
        tail: String,
    },
    #[error("{0}")]
    Control(String),
    #[error("the control plane was not ready within {0:?}: {1}")]
    NotReady(Duration, String),
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> ControlPlaneError {
    let what = what.into();
    move |source| ControlPlaneError::Io { what, source }
}

/// What to start.
#[derive(Debug, Clone)]
pub struct ControlPlaneOptions {
    pub binaries: ControlPlaneBinaries,
    /// Where the control plane keeps its data, certificates, logs and kubeconfig. A fresh
    /// temporary directory (removed on stop) when `None`.
    pub state_dir: Option<PathBuf>,
    pub pod_timings: PodTimings,
    pub start_timeout: Duration,
    /// Write the API server's audit log (every request, metadata only) to
    /// `<state_dir>/audit.log`, to count requests by client.
    pub audit_log: bool,
    /// Write it here instead (implies `audit_log`): a file that outlives the state
    /// directory, e.g. for `rbac-audit`.
    pub audit_log_path: Option<PathBuf>,
    /// The audit policy (implies `audit_log`); metadata of every request when `None`.
    /// E.g. [`crate::invariants::audit::invariants_policy`], for the invariant checkers.
    pub audit_policy: Option<serde_json::Value>,
}

/// One process of the control plane, with what it takes to start it again the same way.
struct Component {
    name: &'static str,
    program: PathBuf,
    args: Vec<String>,
    log: PathBuf,
    /// `None` while stopped on request ([`RunningControlPlane::control`]).
    child: Option<Child>,
    paused: bool,
}

/// What [`RunningControlPlane::control`] does to a component.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// SIGTERM (SIGKILL after a grace period); it stays down until started.
    Stop,
    /// SIGKILL; it stays down until started.
    Kill,
    /// SIGSTOP: it holds its connections and answers nothing.
    Pause,
    /// SIGCONT after a pause.
    Resume,
    /// Starts a stopped component with its own flags and data; waits until the API
    /// server serves again when it or etcd was started.
    Start,
    /// Stop, then start.
    Restart,
}

impl std::str::FromStr for Action {
    type Err = ControlPlaneError;

    fn from_str(s: &str) -> Result<Action, ControlPlaneError> {
        Ok(match s {
            "stop" => Action::Stop,
            "kill" => Action::Kill,
            "pause" => Action::Pause,
            "resume" => Action::Resume,
            "start" => Action::Start,
            "restart" => Action::Restart,
            other => {
                return Err(ControlPlaneError::Control(format!(
                    "unknown action {other:?}: one of stop, kill, pause, resume, start, restart"
                )));
            }
        })
    }
}

/// The components, in start order.
pub const COMPONENTS: [&str; 5] = [
    "etcd",
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
    "kwok",
];

/// How long a stopped component gets between SIGTERM and SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(10);
/// How long a started API server (or one whose etcd was started) gets to serve again.
const READY_AGAIN: Duration = Duration::from_secs(60);

/// A running control plane. Stop it with [`RunningControlPlane::stop`]; dropping it
/// kills the processes too.
pub struct RunningControlPlane {
    pub server: String,
    pub kubeconfig: PathBuf,
    pub state_dir: PathBuf,
    components: Vec<Component>,
    _temp_dir: Option<tempfile::TempDir>,
}

/// A free port below Linux's ephemeral range (32768–60999 by default). A port the kernel
/// hands out for `:0` is ephemeral, so between our probe and the component's own bind an
/// outgoing connection can take it as its local port; below the range only another
/// listener could. Never the same port twice in one process: two components probed
/// before either binds would otherwise both get it (an etcd that cannot start).
pub fn free_port() -> Result<u16, ControlPlaneError> {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    static GIVEN: std::sync::Mutex<std::collections::BTreeSet<u16>> =
        std::sync::Mutex::new(std::collections::BTreeSet::new());
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
        ^ (u64::from(std::process::id()) << 32);
    let mut last = None;
    for _ in 0..200 {
        let mut x = seed.wrapping_add(NEXT.fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed));
        x ^= x >> 33;
        x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
        x ^= x >> 33;
        let port = 20_000 + (x % 12_000) as u16;
        let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
        if given.contains(&port) {
            continue;
        }
        match TcpListener::bind(("127.0.0.1", port)) {
            Ok(_) => {
                given.insert(port);
                return Ok(port);
            }
            Err(e) => last = Some(e),
        }
    }
    Err(io("finding a free port")(last.unwrap_or_else(|| {
        std::io::Error::other("no free port in 20000-31999")
    })))
}

/// The last `lines` lines of the file at `path` (empty when it cannot be read).
pub fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

fn spawn(
    name: &'static str,
    program: &Path,
    args: &[String],
    logs: &Path,
) -> Result<Component, ControlPlaneError> {
    let log = logs.join(format!("{name}.log"));
    let child = start_process(program, args, &log)?;
    Ok(Component {
        name,
        program: program.to_owned(),
        args: args.to_vec(),
        log,
        child: Some(child),
        paused: false,
    })
}

/// Starts `program`, its output appended to `log` (a restarted component keeps its
/// earlier lines).
fn start_process(program: &Path, args: &[String], log: &Path) -> Result<Child, ControlPlaneError> {
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .map_err(io(format!("opening {}", log.display())))?;
    let err = out
        .try_clone()
        .map_err(io(format!("opening {}", log.display())))?;
    let mut cmd = Command::new(program);
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .kill_on_drop(true);
    // SAFETY: prctl is async-signal-safe and touches no memory of the parent.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd.spawn()
        .map_err(io(format!("starting {}", program.display())))
}

impl RunningControlPlane {
    pub async fn start(opts: ControlPlaneOptions) -> Result<Self, ControlPlaneError> {
        let bins = &opts.binaries;
        bins.check()?;
        let (state_dir, temp_dir) = match &opts.state_dir {
            Some(dir) => {
                std::fs::create_dir_all(dir).map_err(io(format!("creating {}", dir.display())))?;
                (dir.clone(), None)
            }
            None => {
                let t = tempfile::Builder::new()
                    .prefix("local-cluster-")
                    .tempdir()
                    .map_err(io("creating a temporary directory"))?;
                (t.path().to_owned(), Some(t))
            }
        };
        let pki_dir = state_dir.join("pki");
        let logs = state_dir.join("logs");
        for d in [&pki_dir, &logs] {
            std::fs::create_dir_all(d).map_err(io(format!("creating {}", d.display())))?;
        }
        let pki = pki::write_pki(
            &pki_dir,
            &[pki::ADMIN, pki::CONTROLLER_MANAGER, pki::SCHEDULER],
        )?;

        let etcd_client = free_port()?;
        let etcd_peer = free_port()?;
        let apiserver_port = free_port()?;
        let server = format!("https://127.0.0.1:{apiserver_port}");
        let kubeconfig = write_kubeconfig(
            &state_dir.join("admin.kubeconfig"),
            &server,
            &pki,
            pki::ADMIN,
        )
        .map_err(io("writing the admin kubeconfig"))?;
        let kcm_kubeconfig = write_kubeconfig(
            &state_dir.join("kube-controller-manager.kubeconfig"),
            &server,
            &pki,
            pki::CONTROLLER_MANAGER,
        )
        .map_err(io("writing a kubeconfig"))?;
        let scheduler_kubeconfig = write_kubeconfig(
            &state_dir.join("kube-scheduler.kubeconfig"),
            &server,
            &pki,
            pki::SCHEDULER,
        )
        .map_err(io("writing a kubeconfig"))?;

        let mut running = RunningControlPlane {
            server,
            kubeconfig,
            state_dir: state_dir.clone(),
            components: Vec::new(),
            _temp_dir: temp_dir,
        };
        let deadline = Instant::now() + opts.start_timeout;

        let etcd_url = format!("http://127.0.0.1:{etcd_client}");
        let peer_url = format!("http://127.0.0.1:{etcd_peer}");
        running.components.push(spawn(
            "etcd",
            &bins.etcd,
            &[
                "--name=local".into(),
                format!("--data-dir={}", state_dir.join("etcd").display()),
                format!("--listen-client-urls={etcd_url}"),
                format!("--advertise-client-urls={etcd_url}"),
                format!("--listen-peer-urls={peer_url}"),
                format!("--initial-advertise-peer-urls={peer_url}"),
                format!("--initial-cluster=local={peer_url}"),
                // A test bed on one disk: durability across machine crashes buys nothing.
                "--unsafe-no-fsync=true".into(),
                "--log-level=warn".into(),
            ],
            &logs,
        )?);

        let mut apiserver = apiserver_args(&pki, &etcd_url, apiserver_port);
        if opts.audit_log || opts.audit_log_path.is_some() || opts.audit_policy.is_some() {
            let audit_log = opts
                .audit_log_path
                .clone()
                .unwrap_or_else(|| state_dir.join("audit.log"));
            if let Some(dir) = audit_log.parent() {
                std::fs::create_dir_all(dir).map_err(io("creating the audit log's directory"))?;
            }
            let policy = state_dir.join("audit-policy.json");
            let doc = opts.audit_policy.clone().unwrap_or_else(|| {
                serde_json::json!({
                    "apiVersion": "audit.k8s.io/v1",
                    "kind": "Policy",
                    "omitStages": ["RequestReceived"],
                    "rules": [{ "level": "Metadata" }],
                })
            });
            std::fs::write(&policy, doc.to_string()).map_err(io("writing the audit policy"))?;
            apiserver.push(format!("--audit-policy-file={}", policy.display()));
            apiserver.push(format!("--audit-log-path={}", audit_log.display()));
            // The default (0) means rotation at 100 MB, which a 1,000-node benchmark
            // passes; request counting reads one file.
            apiserver.push("--audit-log-maxsize=100000".into());
        }
        running.components.push(spawn(
            "kube-apiserver",
            &bins.kube_apiserver,
            &apiserver,
            &logs,
        )?);
        running.wait_for_apiserver(deadline).await?;

        let kcm_port = free_port()?;
        running.components.push(spawn(
            "kube-controller-manager",
            &bins.kube_controller_manager,
            &controller_manager_args(&pki, &kcm_kubeconfig, kcm_port, &state_dir),
            &logs,
        )?);
        let scheduler_port = free_port()?;
        running.components.push(spawn(
            "kube-scheduler",
            &bins.kube_scheduler,
            &[
                format!("--kubeconfig={}", scheduler_kubeconfig.display()),
                format!(
                    "--authentication-kubeconfig={}",
                    scheduler_kubeconfig.display()
                ),
                format!(
                    "--authorization-kubeconfig={}",
                    scheduler_kubeconfig.display()
                ),
                "--bind-address=127.0.0.1".into(),
                format!("--secure-port={scheduler_port}"),
                format!("--cert-dir={}", state_dir.join("scheduler-certs").display()),
                "--leader-elect=false".into(),
                "--kube-api-qps=500".into(),
                "--kube-api-burst=1000".into(),
            ],
            &logs,
        )?);

        let stages_file = state_dir.join("kwok-pod-stages.yaml");
        let mut kwok_docs = vec![kwok_configuration(KWOK_PARALLELISM)];
        kwok_docs.extend(pod_stages(&opts.pod_timings));
        std::fs::write(&stages_file, render(&kwok_docs)).map_err(io("writing the KWOK stages"))?;
        let mut kwok_args = vec![
            format!("--kubeconfig={}", running.kubeconfig.display()),
            format!("--manage-nodes-with-annotation-selector={KWOK_NODE_ANNOTATION}=fake"),
            "--node-lease-duration-seconds=40".into(),
            "--node-port=0".into(),
            "--cidr=10.0.0.0/12".into(),
            format!("--config={}", stages_file.display()),
        ];
        kwok_args.extend(
            bins.kwok_node_stages()
                .iter()
                .map(|p| format!("--config={}", p.display())),
        );
        running
            .components
            .push(spawn("kwok", &bins.kwok, &kwok_args, &logs)?);

        running.wait_for_default_service_account(deadline).await?;
        Ok(running)
    }

    pub fn pids(&self) -> Vec<u32> {
        self.components
            .iter()
            .filter_map(|c| c.child.as_ref().and_then(Child::id))
            .collect()
    }

    pub async fn client(&self) -> Result<Client, ControlPlaneError> {
        client_for(&self.kubeconfig).await
    }

    /// Fails naming the first component that exited on its own (one stopped on request
    /// is not running, and does not count).
    pub fn check_alive(&mut self) -> Result<(), ControlPlaneError> {
        for c in &mut self.components {
            let Some(child) = c.child.as_mut() else {
                continue;
            };
            if let Ok(Some(status)) = child.try_wait() {
                return Err(ControlPlaneError::ComponentExited {
                    component: c.name,
                    status: status.to_string(),
                    log: c.log.clone(),
                    tail: tail(&c.log, 20),
                });
            }
        }
        Ok(())
    }

    async fn wait_for_apiserver(&mut self, deadline: Instant) -> Result<(), ControlPlaneError> {
        let mut last = String::from("not reachable yet");
        while Instant::now() < deadline {
            self.check_alive()?;
            match self.client().await {
                Ok(client) => {
                    let req = http::Request::get("/readyz").body(Vec::new());
                    match req {
                        Ok(req) => match client.request_text(req).await {
                            Ok(body) if body.trim() == "ok" => return Ok(()),
                            Ok(body) => last = body,
                            Err(e) => last = e.to_string(),
                        },
                        Err(e) => last = e.to_string(),
                    }
                }
                Err(e) => last = e.to_string(),
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        Err(ControlPlaneError::NotReady(
            deadline.saturating_duration_since(Instant::now()),
            format!("kube-apiserver /readyz: {last}"),
        ))
    }

    /// Ready = `/readyz` answered ok and the service-account controller created
    /// `default/default` (so the controller manager runs and can write).
    async fn wait_for_default_service_account(
        &mut self,
        deadline: Instant,
    ) -> Result<(), ControlPlaneError> {
        let client = self.client().await?;
        let sas: Api<ServiceAccount> = Api::namespaced(client, "default");
        let mut last = String::from("not created yet");
        while Instant::now() < deadline {
            self.check_alive()?;
            match sas.get_opt("default").await {
                Ok(Some(_)) => return Ok(()),
                Ok(None) => {}
                Err(e) => last = e.to_string(),
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        Err(ControlPlaneError::NotReady(
            Duration::ZERO,
            format!("ServiceAccount default/default: {last}"),
        ))
    }

    /// Stops the API server (SIGTERM), keeps it down for `down_for`, starts it again on
    /// the same port and state, and waits until it serves. Clients see refused
    /// connections meanwhile, as in a control-plane upgrade.
    pub async fn restart_apiserver(&mut self, down_for: Duration) -> Result<(), ControlPlaneError> {
        self.control("kube-apiserver", Action::Stop).await?;
        tokio::time::sleep(down_for).await;
        self.control("kube-apiserver", Action::Start).await
    }

    /// Does `action` to `component` (one of [`COMPONENTS`]): the other components run
    /// on, and one stopped here is not a crash to [`RunningControlPlane::check_alive`].
    /// Fails without doing anything when the component is unknown or not in a state
    /// the action applies to (stopping a stopped one, starting a running one, pausing a
    /// paused one).
    pub async fn control(
        &mut self,
        component: &str,
        action: Action,
    ) -> Result<(), ControlPlaneError> {
        let Some(i) = self.components.iter().position(|c| c.name == component) else {
            return Err(ControlPlaneError::Control(format!(
                "no component {component:?}: one of {}",
                COMPONENTS.join(", ")
            )));
        };
        let c = &mut self.components[i];
        let name = c.name;
        let refuse = |state: &str| Err(ControlPlaneError::Control(format!("{name} is {state}")));
        match (action, c.child.is_some(), c.paused) {
            (Action::Start, true, _) => return refuse("running already"),
            (Action::Stop | Action::Kill | Action::Pause | Action::Resume, false, _) => {
                return refuse("stopped");
            }
            (Action::Pause, true, true) => return refuse("paused already"),
            (Action::Resume, true, false) => return refuse("not paused"),
            _ => {}
        }
        match action {
            Action::Pause => signal(c, libc::SIGSTOP),
            Action::Resume => signal(c, libc::SIGCONT),
            Action::Stop | Action::Kill | Action::Restart => {
                end(c, action == Action::Kill).await;
                c.paused = false;
            }
            Action::Start => {}
        }
        let mut kwok_resync = None;
        if matches!(action, Action::Start | Action::Restart) {
            // KWOK's start is wrapped in `kwok_restart`'s two steps, which need the API
            // server: without it, KWOK starts alone and takes its nodes when the leases
            // expire.
            let released = if name == "kwok" && self.apiserver_serving() {
                Some(self.release_node_leases().await)
            } else {
                None
            };
            let c = &mut self.components[i];
            c.child = Some(start_process(&c.program, &c.args, &c.log)?);
            kwok_resync = match released {
                Some(Ok((client, previous))) => Some(resync_kwok(&client, &previous).await),
                Some(Err(e)) => Some(Err(e)),
                None => None,
            };
        }
        self.components[i].paused = action == Action::Pause;
        let serving_again = matches!(action, Action::Start | Action::Restart)
            && matches!(name, "etcd" | "kube-apiserver");
        if serving_again && self.apiserver_serving() {
            self.wait_for_apiserver(Instant::now() + READY_AGAIN)
                .await?;
        }
        match kwok_resync {
            Some(Err(e)) => Err(ControlPlaneError::Control(format!(
                "kwok started, but {e} (it takes its nodes when their leases expire)"
            ))),
            _ => Ok(()),
        }
    }

    /// Whether the API server runs and is not paused.
    fn apiserver_serving(&self) -> bool {
        self.components
            .iter()
            .any(|c| c.name == "kube-apiserver" && c.child.is_some() && !c.paused)
    }

    /// Before KWOK starts: [`kwok_restart::release_node_leases`], with the client the
    /// resync after the start uses too.
    async fn release_node_leases(&self) -> Result<(Client, PreviousHolders), String> {
        let client = self.client().await.map_err(|e| e.to_string())?;
        let previous = kwok_restart::release_node_leases(&client)
            .await
            .map_err(|e| e.to_string())?;
        Ok((client, previous))
    }

    /// Waits until a running component exits on its own (a crash), and reports which.
    /// Pending for ever when none runs.
    pub async fn crashed(&mut self) -> ControlPlaneError {
        let waits: Vec<_> = self
            .components
            .iter_mut()
            .filter_map(|c| {
                let (name, log) = (c.name, c.log.clone());
                c.child
                    .as_mut()
                    .map(|child| Box::pin(async move { (name, log, child.wait().await) }))
            })
            .collect();
        if waits.is_empty() {
            return std::future::pending().await;
        }
        let ((component, log, status), _, _) = futures::future::select_all(waits).await;
        ControlPlaneError::ComponentExited {
            component,
            status: match status {
                Ok(s) => s.to_string(),
                Err(e) => e.to_string(),
            },
            tail: tail(&log, 20),
            log,
        }
    }

    /// Stops the components in reverse start order: SIGTERM, then SIGKILL after
    /// `grace`. Removes the state directory if it was a temporary one.
    pub async fn stop(mut self, grace: Duration) {
        for c in self.components.iter_mut().rev() {
            let Some(child) = c.child.as_mut() else {
                continue;
            };
            if let Some(pid) = child.id() {
                // SAFETY: plain kill(2) on our own child; SIGCONT first in case it was
                // paused (a stopped process does not act on SIGTERM).
                unsafe {
                    libc::kill(pid as libc::pid_t, libc::SIGCONT);
                    libc::kill(pid as libc::pid_t, libc::SIGTERM);
                }
            }
            if tokio::time::timeout(grace, child.wait()).await.is_err() {
                let _ = child.kill().await;
            }
        }
    }
}

/// After KWOK started: [`kwok_restart::resync_after_start`]; logs how many pods it made
/// KWOK see again.
async fn resync_kwok(client: &Client, previous: &PreviousHolders) -> Result<(), String> {
    let pods = kwok_restart::resync_after_start(client, previous)
        .await
        .map_err(|e| e.to_string())?;
    tracing::info!(
        pods,
        "KWOK holds and has renewed every node's lease; pods with a stage left resynced"
    );
    Ok(())
}

/// Sends `sig` to a running component.
fn signal(c: &Component, sig: libc::c_int) {
    if let Some(pid) = c.child.as_ref().and_then(Child::id) {
        // SAFETY: plain kill(2) on our own child.
        unsafe {
            libc::kill(pid as libc::pid_t, sig);
        }
    }
}

/// Ends a running component: SIGKILL at once (`kill`), or SIGCONT + SIGTERM and
/// SIGKILL after [`STOP_GRACE`]; waits until it has exited.
async fn end(c: &mut Component, kill: bool) {
    if !kill {
        signal(c, libc::SIGCONT);
        signal(c, libc::SIGTERM);
    }
    if let Some(mut child) = c.child.take() {
        let graceful = !kill && tokio::time::timeout(STOP_GRACE, child.wait()).await.is_ok();
        if !graceful {
            let _ = child.kill().await;
        }
    }
}

const KWOK_PARALLELISM: u32 = 16;

/// Nodes with this annotation set to `fake` are simulated by KWOK.
pub const KWOK_NODE_ANNOTATION: &str = "kwok.x-k8s.io/node";

/// A client for the cluster's admin kubeconfig, without kube's hidden retries (as the
/// agent's own client).
pub async fn client_for(kubeconfig: &Path) -> Result<Client, ControlPlaneError> {
    let not_ready = |e: String| ControlPlaneError::NotReady(Duration::ZERO, e);
    let kc =
        kube::config::Kubeconfig::read_from(kubeconfig).map_err(|e| not_ready(e.to_string()))?;
    let mut config = kube::Config::from_custom_kubeconfig(kc, &Default::default())
        .await
        .map_err(|e| not_ready(e.to_string()))?;
    config.default_retry = false;
    Client::try_from(config).map_err(|e| not_ready(e.to_string()))
}

fn apiserver_args(pki: &PkiFiles, etcd_url: &str, port: u16) -> Vec<String> {
    let sa_key = pki.service_account_key.display();
    let sa_public_key = pki.service_account_public_key.display();
    vec![
        format!("--etcd-servers={etcd_url}"),
        "--bind-address=127.0.0.1".into(),
        "--advertise-address=127.0.0.1".into(),
        format!("--secure-port={port}"),
        format!("--tls-cert-file={}", pki.serving_cert.display()),
        format!("--tls-private-key-file={}", pki.serving_key.display()),
        format!("--client-ca-file={}", pki.ca_cert.display()),
        "--authorization-mode=Node,RBAC".into(),
        format!("--service-account-key-file={sa_public_key}"),
        format!("--service-account-signing-key-file={sa_key}"),
        "--service-account-issuer=https://kubernetes.default.svc.cluster.local".into(),
        "--service-cluster-ip-range=10.96.0.0/16".into(),
        "--allow-privileged=true".into(),
        "--profiling=false".into(),
    ]
}

fn controller_manager_args(
    pki: &PkiFiles,
    kubeconfig: &Path,
    port: u16,
    state_dir: &Path,
) -> Vec<String> {
    let kc = kubeconfig.display();
    vec![
        format!("--kubeconfig={kc}"),
        format!("--authentication-kubeconfig={kc}"),
        format!("--authorization-kubeconfig={kc}"),
        "--bind-address=127.0.0.1".into(),
        format!("--secure-port={port}"),
        format!(
            "--cert-dir={}",
            state_dir.join("controller-manager-certs").display()
        ),
        // Each controller acts as its own service account, with the bootstrap RBAC roles.
        "--use-service-account-credentials=true".into(),
        format!(
            "--service-account-private-key-file={}",
            pki.service_account_key.display()
        ),
        format!("--root-ca-file={}", pki.ca_cert.display()),
        format!("--cluster-signing-cert-file={}", pki.ca_cert.display()),
        format!("--cluster-signing-key-file={}", pki.ca_key.display()),
        "--controllers=*".into(),
        "--leader-elect=false".into(),
        // Client-side throttling (default 20 QPS) would make the bed's own controllers the
        // bottleneck of every benchmark; the simulated delays should dominate instead.
        "--kube-api-qps=500".into(),
        "--kube-api-burst=1000".into(),
        // KWOK renews every node's lease; with thousands of nodes on 2 cores the renewals
        // fall behind the default 50 s, and the node lifecycle controller then marks the
        // nodes NotReady and their pods not Ready, which KWOK never undoes (the 5,000-node
        // benchmark's setup, 2026-12-03: 1,395 pods). No test relies on a lease expiring.
        "--node-monitor-grace-period=10m".into(),
    ]
}
