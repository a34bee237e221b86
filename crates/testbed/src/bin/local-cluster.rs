//! `local-cluster`: runs the local test bed (a real control plane with KWOK-simulated
//! nodes) for the tests, the demo and anyone who wants a cluster to try things on.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use ztunnel_rollout_testbed::binaries::ControlPlaneBinaries;
use ztunnel_rollout_testbed::control_plane::{ControlPlaneOptions, RunningControlPlane};
use ztunnel_rollout_testbed::istio::{
    InstallOptions, IstioBinaries, Istioctl, Istiod, IstiodPorts,
};
use ztunnel_rollout_testbed::kwok_stages::PodTimings;
use ztunnel_rollout_testbed::{control_socket, fixtures};

#[derive(Parser)]
#[command(
    version,
    about = "A local Kubernetes control plane with simulated nodes (KWOK)"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Start the cluster and keep it running until Ctrl-C (or SIGTERM).
    Up(UpArgs),
    /// Stop, kill, pause, resume, start or restart one component of a running cluster
    /// (through the control socket `up` prints and writes into its state directory).
    Ctl(CtlArgs),
}

#[derive(Args)]
struct CtlArgs {
    /// The cluster's control socket (`control` in the line `up` prints;
    /// <state dir>/control.sock).
    #[arg(long, env = "LOCAL_CLUSTER_CONTROL_SOCKET")]
    socket: PathBuf,
    /// stop | kill | pause | resume | start | restart
    action: String,
    /// etcd | kube-apiserver | kube-controller-manager | kube-scheduler | kwok
    component: String,
}

#[derive(Args)]
struct CommonArgs {
    /// Simulated nodes to create with the demo fixtures (three zones).
    #[arg(long, env = "LOCAL_CLUSTER_NODES", default_value_t = 6)]
    nodes: usize,
    /// Version (image tag) of the fixture ztunnel DaemonSet.
    #[arg(long, env = "LOCAL_CLUSTER_ZTUNNEL_VERSION", default_value = "1.28.0")]
    ztunnel_version: String,
    /// Keep data, logs and certificates here instead of a temporary directory.
    #[arg(long, env = "LOCAL_CLUSTER_STATE_DIR")]
    state_dir: Option<PathBuf>,
    /// Milliseconds from a pod's scheduling to its containers being created.
    #[arg(
        long,
        env = "LOCAL_CLUSTER_POD_CREATED_AFTER_MS",
        default_value_t = 100
    )]
    pod_created_after_ms: u64,
    /// Milliseconds from containers created to Running and Ready (per pod:
    /// annotation pod-ready.stage.kwok.x-k8s.io/delay).
    #[arg(long, env = "LOCAL_CLUSTER_POD_READY_AFTER_MS", default_value_t = 500)]
    pod_ready_after_ms: u64,
    /// Seconds a deleted pod takes to exit, capped by its grace period (per pod:
    /// annotation local-cluster.ztunnel-rollout.dev/exit-after-seconds).
    #[arg(
        long,
        env = "LOCAL_CLUSTER_POD_EXIT_AFTER_SECONDS",
        default_value_t = 1.0
    )]
    pod_exit_after_seconds: f64,
    /// Write the API server's audit log to <state dir>/audit.log (request counts by client).
    #[arg(long, env = "LOCAL_CLUSTER_AUDIT_LOG")]
    audit_log: bool,
    /// Write the audit log to this file instead (kept after the cluster stops).
    #[arg(long, env = "LOCAL_CLUSTER_AUDIT_LOG_PATH")]
    audit_log_path: Option<PathBuf>,
    /// Audit what the invariant checkers read in full (node, pod, eviction and
    /// PodDisruptionBudget writes, and Lease writes in this namespace: the agent's), the
    /// rest as metadata. Implies --audit-log.
    #[arg(
        long,
        env = "LOCAL_CLUSTER_AUDIT_INVARIANTS",
        value_name = "LEASE_NAMESPACE"
    )]
    audit_invariants: Option<String>,
    /// Seconds to wait for the control plane to become ready.
    #[arg(
        long,
        env = "LOCAL_CLUSTER_START_TIMEOUT_SECONDS",
        default_value_t = 120
    )]
    start_timeout_seconds: u64,
}

#[derive(Args)]
struct UpArgs {
    #[command(flatten)]
    common: CommonArgs,
    /// Apply the demo fixtures (nodes, ztunnel DaemonSet, waypoint, applications with PDBs).
    #[arg(long, env = "LOCAL_CLUSTER_DEMO")]
    demo: bool,
    /// With --demo: install Istio with istioctl (profile ambient: Istio's istiod,
    /// istio-cni and ztunnel, OnDelete) instead of the fixture ztunnel and waypoint, run
    /// istiod on loopback, and let it render the demo's waypoint (`istioctl waypoint
    /// apply`). Needs `e2e/build-istio.sh`. Writes the install's istioctl arguments to
    /// <state dir>/istioctl-install.args (one per line), for upgrades with the same values.
    #[arg(long, env = "LOCAL_CLUSTER_ISTIO", requires = "demo")]
    istio: bool,
    /// Also copy the admin kubeconfig here.
    #[arg(long, env = "LOCAL_CLUSTER_KUBECONFIG_OUT")]
    kubeconfig_out: Option<PathBuf>,
    /// Stop when standard input closes: a parent process (a test binary) that exits for
    /// any reason takes the cluster with it.
    #[arg(long)]
    exit_on_stdin_eof: bool,
}

impl CommonArgs {
    fn options(&self) -> anyhow::Result<ControlPlaneOptions> {
        anyhow::ensure!(
            self.pod_exit_after_seconds.is_finite() && self.pod_exit_after_seconds >= 0.0,
            "--pod-exit-after-seconds must be a non-negative number, got {}",
            self.pod_exit_after_seconds
        );
        Ok(ControlPlaneOptions {
            binaries: ControlPlaneBinaries::from_env(),
            state_dir: self.state_dir.clone(),
            pod_timings: PodTimings {
                created_after: Duration::from_millis(self.pod_created_after_ms),
                ready_after: Duration::from_millis(self.pod_ready_after_ms),
                exit_after_seconds: self.pod_exit_after_seconds,
            },
            start_timeout: Duration::from_secs(self.start_timeout_seconds),
            audit_log: self.audit_log,
            audit_log_path: self.audit_log_path.clone(),
            audit_policy: self
                .audit_invariants
                .as_deref()
                .map(ztunnel_rollout_testbed::invariants::audit::invariants_policy),
        })
    }
}

const STOP_GRACE: Duration = Duration::from_secs(10);

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,kube_client=off".into()),
        )
        .init();
    // The cluster's processes die with the thread that starts them, so start them here,
    // on the main thread, never inside a spawned task.
    match Cli::parse().command {
        Command::Up(args) => {
            let result = up(args).await;
            // The cluster is stopped. Exit now: a read of standard input
            // (--exit-on-stdin-eof) blocks one of the runtime's threads, and a runtime
            // shut down normally would wait for it as long as the parent keeps the pipe
            // open.
            if let Err(e) = &result {
                eprintln!("Error: {e:?}");
            }
            std::process::exit(i32::from(result.is_err()));
        }
        Command::Ctl(args) => {
            ztunnel_rollout_testbed::control_socket::send(
                &args.socket,
                &args.action,
                &args.component,
            )
            .await?;
            eprintln!("{} {}: done", args.action, args.component);
            Ok(())
        }
    }
}

async fn start(args: &CommonArgs) -> anyhow::Result<RunningControlPlane> {
    let started = std::time::Instant::now();
    eprintln!(
        "starting the local control plane (etcd, kube-apiserver, kube-controller-manager, kube-scheduler, kwok)..."
    );
    let cluster = RunningControlPlane::start(args.options()?).await?;
    eprintln!(
        "control plane ready at {} in {:.1}s",
        cluster.server,
        started.elapsed().as_secs_f64()
    );
    Ok(cluster)
}

async fn up(args: UpArgs) -> anyhow::Result<()> {
    let mut cluster = start(&args.common).await?;
    let result = serve(&args, &mut cluster).await;
    eprintln!("stopping the local control plane");
    cluster.stop(STOP_GRACE).await;
    result
}

/// Istio as a user installs it, into the demo cluster: the Gateway API CRDs, `istioctl
/// install` (profile ambient), istiod on loopback, and the demo's waypoint rendered by
/// istiod. The returned istiod runs until it is dropped.
async fn install_istio(cluster: &RunningControlPlane) -> anyhow::Result<Istiod> {
    let started = std::time::Instant::now();
    let binaries = IstioBinaries::from_env();
    binaries.check()?;
    let istioctl = Istioctl::new(binaries.clone(), &cluster.kubeconfig);
    istioctl.apply_gateway_api_crds().await?;
    let ports = IstiodPorts::pick()?;
    let install = InstallOptions {
        profile: "ambient".to_owned(),
        revision: "default".to_owned(),
        webhook: ports.webhook_address(),
        sets: Vec::new(),
    };
    let args_file = cluster.state_dir.join("istioctl-install.args");
    std::fs::write(
        &args_file,
        install.args(&binaries.manifests).join("\n") + "\n",
    )
    .with_context(|| format!("writing {}", args_file.display()))?;
    eprintln!(
        "installing Istio: istioctl {}",
        install.args(&binaries.manifests).join(" ")
    );
    istioctl.install(&install).await?;
    let istiod = Istiod::start(
        &binaries,
        &cluster.kubeconfig,
        "default",
        ports,
        &cluster.state_dir,
    )
    .await?;
    istioctl
        .run(&["waypoint", "apply", "--namespace", "demo", "--wait"])
        .await?;
    eprintln!(
        "Istio installed in {:.1}s: istiod {} on 127.0.0.1 (webhooks {}), a waypoint in namespace demo",
        started.elapsed().as_secs_f64(),
        istiod.version().await.unwrap_or_default(),
        ports.webhook_address()
    );
    Ok(istiod)
}

async fn serve(args: &UpArgs, cluster: &mut RunningControlPlane) -> anyhow::Result<()> {
    let mut istio = None;
    if args.demo {
        let client = cluster.client().await?;
        let fixture_ztunnel = (!args.istio).then_some(args.common.ztunnel_version.as_str());
        fixtures::apply_demo_with(&client, args.common.nodes, fixture_ztunnel)
            .await
            .context("applying the demo fixtures")?;
        eprintln!(
            "demo fixtures applied: {} nodes, namespace demo{}",
            args.common.nodes,
            if args.istio {
                ""
            } else {
                ", istio-system/ztunnel"
            }
        );
        if args.istio {
            istio = Some(install_istio(cluster).await?);
        }
    }
    if let Some(out) = &args.kubeconfig_out {
        if let Some(parent) = out.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::copy(&cluster.kubeconfig, out)
            .with_context(|| format!("copying the kubeconfig to {}", out.display()))?;
    }
    let shown = args.kubeconfig_out.as_ref().unwrap_or(&cluster.kubeconfig);
    eprintln!(
        "kubeconfig: {}\n  e.g. KUBECONFIG={} e2e/bin/kubectl get nodes\nCtrl-C stops the cluster.",
        shown.display(),
        shown.display()
    );
    let control = cluster.state_dir.join(control_socket::SOCKET);
    let _ = std::fs::remove_file(&control);
    let listener = tokio::net::UnixListener::bind(&control)
        .with_context(|| format!("listening on {}", control.display()))?;
    eprintln!(
        "control: local-cluster ctl --socket {} restart etcd (stop, kill, pause, resume, start, restart)",
        control.display()
    );
    // One machine-readable line for the test support and scripts.
    println!(
        "{}",
        serde_json::json!({
            "kubeconfig": cluster.kubeconfig,
            "server": cluster.server,
            "stateDir": cluster.state_dir,
            "pids": cluster.pids(),
            "control": control,
            "istiod": istio.as_ref().map(|i: &Istiod| serde_json::json!({
                "pid": i.pid(),
                "version": format!("http://127.0.0.1:{}/version", i.ports.monitoring),
                "webhook": i.ports.webhook_address(),
                "log": i.log,
            })),
        })
    );

    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let stdin_closed = async {
        if args.exit_on_stdin_eof {
            let mut sink = tokio::io::sink();
            let _ = tokio::io::copy(&mut tokio::io::stdin(), &mut sink).await;
        } else {
            std::future::pending::<()>().await;
        }
    };
    tokio::pin!(stdin_closed);
    // A component that exits on its own stops the cluster; one stopped through the
    // control socket does not.
    let mut health = tokio::time::interval(Duration::from_millis(500));
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => return Ok(()),
            _ = sigterm.recv() => return Ok(()),
            _ = &mut stdin_closed => return Ok(()),
            _ = health.tick() => cluster.check_alive()?,
            accepted = listener.accept() => {
                let (stream, _) = accepted.context("accepting on the control socket")?;
                control_socket::serve_one(stream, cluster).await;
            }
        }
    }
}
