//! Istio's own control plane in the test bed, installed the way users install it.
//!
//! `e2e/build-istio.sh` builds `istioctl` and `pilot-discovery` (istiod) from the
//! `istio.io/istio` module and copies Istio's charts and the Gateway API CRDs beside them.
//! Here:
//! - [`Istioctl::install`] runs `istioctl install` against the local cluster with Istio's
//!   own charts. KWOK runs the pods it renders (istiod, istio-cni, ztunnel) like any other.
//! - [`Istiod`] runs `pilot-discovery` as a process on loopback with the cluster's
//!   kubeconfig: Istio's external-control-plane model. The revision's injection and
//!   validation webhooks point at its URL, so pods created through the API server are
//!   injected by the real istiod, revision tags are real, and its gateway controller
//!   renders waypoints.
//!
//! What stays simulated: every pod's process (KWOK marks them Running and Ready), so
//! ztunnel's data path and istio-cni's node agent do not run.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};

use crate::binaries::{BIN_DIR_ENV, ControlPlaneBinaries};
use crate::control_plane::free_port;

/// How long one `istioctl` or `kubectl` call may take (its own readiness waits included).
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(300);
/// How long istiod may take to answer ready on its HTTP port.
pub const ISTIOD_READY_TIMEOUT: Duration = Duration::from_secs(90);

#[derive(Debug, thiserror::Error)]
pub enum IstioError {
    #[error(
        "Istio is not built: {missing} not found in {dir}.\n\
         Build it with `e2e/build-istio.sh` (needs Go; `e2e/test.sh` does it for you), \
         or point {BIN_DIR_ENV} at a directory holding istioctl, pilot-discovery, \
         istio-manifests/ and gateway-api-crds/."
    )]
    Missing { missing: String, dir: String },
    #[error("{command} could not be started: {source}")]
    Spawn {
        command: String,
        source: std::io::Error,
    },
    #[error("{command} did not finish within {timeout:?}")]
    Timeout { command: String, timeout: Duration },
    #[error("{command} failed ({status}):\n{output}")]
    Failed {
        command: String,
        status: String,
        output: String,
    },
    #[error("no free port for istiod: {0}")]
    Port(String),
    #[error("istiod {revision} did not become ready within {timeout:?}; its log: {log}")]
    NotReady {
        revision: String,
        timeout: Duration,
        log: String,
    },
    #[error("istiod {revision} exited: {status}; its log: {log}")]
    Exited {
        revision: String,
        status: String,
        log: String,
    },
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    #[error("GET {url}: {message}")]
    Http { url: String, message: String },
}

/// Istio's binaries and files, as `e2e/build-istio.sh` leaves them.
#[derive(Debug, Clone)]
pub struct IstioBinaries {
    pub dir: PathBuf,
    pub istioctl: PathBuf,
    pub pilot_discovery: PathBuf,
    /// Istio's `manifests/` (charts and profiles), for `istioctl --manifests`.
    pub manifests: PathBuf,
    /// The Gateway API's standard-channel CRDs.
    pub gateway_api_crds: PathBuf,
    /// The control plane's kubectl, which applies the CRDs.
    pub kubectl: PathBuf,
}

impl IstioBinaries {
    pub fn in_dir(dir: impl Into<PathBuf>) -> Self {
        let dir = dir.into();
        Self {
            istioctl: dir.join("istioctl"),
            pilot_discovery: dir.join("pilot-discovery"),
            manifests: dir.join("istio-manifests"),
            gateway_api_crds: dir.join("gateway-api-crds"),
            kubectl: ControlPlaneBinaries::in_dir(&dir).kubectl,
            dir,
        }
    }

    /// Beside the control plane's binaries (`$ZTUNNEL_ROLLOUT_E2E_BIN`, else `e2e/bin`).
    pub fn from_env() -> Self {
        Self::in_dir(ControlPlaneBinaries::from_env().dir)
    }

    pub fn check(&self) -> Result<(), IstioError> {
        let needed = [
            (&self.istioctl, false),
            (&self.pilot_discovery, false),
            (&self.kubectl, false),
            (&self.manifests, true),
            (&self.gateway_api_crds, true),
        ];
        let missing: Vec<String> = needed
            .iter()
            .filter(|(p, dir)| if *dir { !p.is_dir() } else { !p.is_file() })
            .map(|(p, _)| p.strip_prefix(&self.dir).unwrap_or(p).display().to_string())
            .collect();
        if missing.is_empty() {
            Ok(())
        } else {
            Err(IstioError::Missing {
                missing: missing.join(", "),
                dir: self.dir.display().to_string(),
            })
        }
    }
}

/// Runs a command to completion within [`COMMAND_TIMEOUT`]; its output, or why it failed.
async fn run(program: &Path, args: &[String]) -> Result<String, IstioError> {
    let command = format!(
        "{} {}",
        program
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        args.join(" ")
    );
    let child = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|source| IstioError::Spawn {
            command: command.clone(),
            source,
        })?;
    let output = tokio::time::timeout(COMMAND_TIMEOUT, child.wait_with_output())
        .await
        .map_err(|_| IstioError::Timeout {
            command: command.clone(),
            timeout: COMMAND_TIMEOUT,
        })?
        .map_err(|source| IstioError::Io {
            what: format!("waiting for {command}"),
            source,
        })?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    if output.status.success() {
        Ok(text)
    } else {
        Err(IstioError::Failed {
            command,
            status: output.status.to_string(),
            output: text,
        })
    }
}

/// What one `istioctl install` sets.
#[derive(Debug, Clone)]
pub struct InstallOptions {
    /// Istio's profile: `ambient` (istiod, istio-cni, ztunnel) or `minimal` (istiod).
    pub profile: String,
    /// The control plane revision (`default` installs the default revision).
    pub revision: String,
    /// The host istiod's webhook address: the injection and validation webhooks' URLs.
    pub webhook: SocketAddr,
    /// More `--set` values (`values.ztunnel.tag=1.31.1`, …).
    pub sets: Vec<String>,
}

impl InstallOptions {
    /// The `istioctl install` arguments: Istio's own values for what the test bed needs
    /// (ztunnel and istio-cni `OnDelete`, webhooks at the host istiod).
    pub fn args(&self, manifests: &Path) -> Vec<String> {
        let mut args = vec![
            "install".to_owned(),
            "--skip-confirmation".to_owned(),
            "--manifests".to_owned(),
            manifests.display().to_string(),
            "--readiness-timeout".to_owned(),
            format!("{}s", COMMAND_TIMEOUT.as_secs().saturating_sub(30)),
        ];
        let mut sets = vec![format!("profile={}", self.profile)];
        if self.revision != "default" {
            sets.push(format!("revision={}", self.revision));
        }
        if self.profile == "ambient" {
            sets.extend(ondelete_node_agents());
        }
        sets.extend([
            format!(
                "values.istiodRemote.injectionURL=https://{}/inject",
                self.webhook
            ),
            format!(
                "values.base.validationURL=https://{}/validate",
                self.webhook
            ),
        ]);
        sets.extend(self.sets.iter().cloned());
        for s in sets {
            args.push("--set".to_owned());
            args.push(s);
        }
        args
    }
}

/// The values that make ztunnel and istio-cni `OnDelete`, the upgrade strategy this
/// product exists for: the agent replaces each node's pods once the node is drained.
/// Only for a profile that installs them: with another, the overlay would re-render
/// istio-cni for that revision (and istioctl would wait on it).
fn ondelete_node_agents() -> Vec<String> {
    [
        "values.ztunnel.updateStrategy.type=OnDelete",
        // istio-cni's chart has the value, but istioctl's schema for `values.cni` lacks
        // it: an overlay on the rendered DaemonSet instead.
        "components.cni.k8s.overlays[0].kind=DaemonSet",
        "components.cni.k8s.overlays[0].name=istio-cni-node",
        "components.cni.k8s.overlays[0].patches[0].path=spec.updateStrategy.type",
        "components.cni.k8s.overlays[0].patches[0].value=OnDelete",
    ]
    .into_iter()
    .map(str::to_owned)
    .collect()
}

/// `istioctl` against one cluster.
#[derive(Debug, Clone)]
pub struct Istioctl {
    pub binaries: IstioBinaries,
    pub kubeconfig: PathBuf,
}

impl Istioctl {
    pub fn new(binaries: IstioBinaries, kubeconfig: impl Into<PathBuf>) -> Self {
        Self {
            binaries,
            kubeconfig: kubeconfig.into(),
        }
    }

    /// `istioctl ARGS --kubeconfig K`: its output, or the error with its output.
    pub async fn run(&self, args: &[&str]) -> Result<String, IstioError> {
        let mut all: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
        all.push("--kubeconfig".to_owned());
        all.push(self.kubeconfig.display().to_string());
        run(&self.binaries.istioctl, &all).await
    }

    /// The `istioctl` command line for an install, for a caller that runs it itself
    /// (an upgrade that waits for the agent).
    pub fn install_command(&self, opts: &InstallOptions) -> Command {
        let mut command = Command::new(&self.binaries.istioctl);
        command
            .args(opts.args(&self.binaries.manifests))
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .stdin(Stdio::null())
            .kill_on_drop(true);
        command
    }

    /// `istioctl install` with Istio's charts; returns once istioctl says the install is
    /// complete (it waits for what it installed to be ready).
    pub async fn install(&self, opts: &InstallOptions) -> Result<String, IstioError> {
        let mut args = opts.args(&self.binaries.manifests);
        args.push("--kubeconfig".to_owned());
        args.push(self.kubeconfig.display().to_string());
        run(&self.binaries.istioctl, &args).await
    }

    /// The Gateway API CRDs (server-side apply), which istiod's waypoint controller needs.
    pub async fn apply_gateway_api_crds(&self) -> Result<String, IstioError> {
        let args = vec![
            "--kubeconfig".to_owned(),
            self.kubeconfig.display().to_string(),
            "apply".to_owned(),
            "--server-side".to_owned(),
            "-f".to_owned(),
            self.binaries.gateway_api_crds.display().to_string(),
        ];
        run(&self.binaries.kubectl, &args).await
    }
}

/// The loopback addresses of one istiod.
#[derive(Debug, Clone, Copy)]
pub struct IstiodPorts {
    pub http: u16,
    pub grpc: u16,
    pub secure_grpc: u16,
    pub monitoring: u16,
    pub webhook: u16,
}

impl IstiodPorts {
    /// Five free ports on 127.0.0.1.
    pub fn pick() -> Result<Self, IstioError> {
        let port = || free_port().map_err(|e| IstioError::Port(e.to_string()));
        Ok(Self {
            http: port()?,
            grpc: port()?,
            secure_grpc: port()?,
            monitoring: port()?,
            webhook: port()?,
        })
    }

    /// The webhook server's address: `https://<this>/inject` and `/validate`.
    pub fn webhook_address(&self) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, self.webhook))
    }
}

/// `pilot-discovery discovery` for one revision, on loopback; stopped when dropped.
pub struct Istiod {
    pub revision: String,
    pub ports: IstiodPorts,
    pub log: PathBuf,
    child: Child,
    _work_dir: tempfile::TempDir,
}

impl Istiod {
    /// istiod dies with the thread that calls this (`PR_SET_PDEATHSIG`): call it from a
    /// thread that lives as long as istiod should (a test binary's own thread, a
    /// program's main thread), never from a `spawn_blocking` worker.
    ///
    /// Starts istiod for `revision` with the cluster's kubeconfig, its log in `log_dir`,
    /// and waits until it answers ready. Its revision's ConfigMaps (`istio[-REV]`,
    /// `istio-sidecar-injector[-REV]`) must exist: `istioctl install` first, with
    /// `ports.webhook_address()` as the webhook URL.
    pub async fn start(
        binaries: &IstioBinaries,
        kubeconfig: &Path,
        revision: &str,
        ports: IstiodPorts,
        log_dir: &Path,
    ) -> Result<Self, IstioError> {
        // istiod reads mesh and injection config from ./etc/istio and ./var/lib/istio
        // when they exist, else from the ConfigMaps: an empty working directory.
        let work_dir = tempfile::Builder::new()
            .prefix(&format!("istiod-{revision}-"))
            .tempdir()
            .map_err(|source| IstioError::Io {
                what: "istiod's working directory".to_owned(),
                source,
            })?;
        std::fs::create_dir_all(log_dir).map_err(|source| IstioError::Io {
            what: format!("creating {}", log_dir.display()),
            source,
        })?;
        let log = log_dir.join(format!("istiod-{revision}.log"));
        let log_file = std::fs::File::create(&log).map_err(|source| IstioError::Io {
            what: format!("creating {}", log.display()),
            source,
        })?;
        let err_file = log_file.try_clone().map_err(|source| IstioError::Io {
            what: format!("opening {}", log.display()),
            source,
        })?;
        let addr = |port: u16| format!("127.0.0.1:{port}");
        let mut command = Command::new(&binaries.pilot_discovery);
        // SAFETY: prctl is async-signal-safe; the closure allocates nothing.
        unsafe {
            // istiod dies with the thread that started it, however the test ends.
            command.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = command
            .arg("discovery")
            .arg("--kubeconfig")
            .arg(kubeconfig)
            .args(["--httpAddr", &addr(ports.http)])
            .args(["--grpcAddr", &addr(ports.grpc)])
            .args(["--secureGRPCAddr", &addr(ports.secure_grpc)])
            .args(["--monitoringAddr", &addr(ports.monitoring)])
            .args(["--httpsAddr", &addr(ports.webhook)])
            .args(["--ctrlz_address", "127.0.0.1", "--ctrlz_port", "0"])
            .env("POD_NAMESPACE", "istio-system")
            .env("POD_NAME", format!("istiod-{revision}-on-host"))
            .env("REVISION", revision)
            .env("PILOT_ENABLE_AMBIENT", "true")
            // The serving certificate's SANs: the webhooks' URLs name 127.0.0.1.
            .env("ISTIOD_CUSTOM_HOST", "127.0.0.1,localhost")
            .current_dir(work_dir.path())
            .stdin(Stdio::null())
            .stdout(log_file)
            .stderr(err_file)
            .kill_on_drop(true)
            .spawn()
            .map_err(|source| IstioError::Spawn {
                command: binaries.pilot_discovery.display().to_string(),
                source,
            })?;
        let mut istiod = Self {
            revision: revision.to_owned(),
            ports,
            log,
            child,
            _work_dir: work_dir,
        };
        istiod.wait_ready().await?;
        Ok(istiod)
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    async fn wait_ready(&mut self) -> Result<(), IstioError> {
        let deadline = tokio::time::Instant::now() + ISTIOD_READY_TIMEOUT;
        let mut pause = Duration::from_millis(100);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(IstioError::Exited {
                    revision: self.revision.clone(),
                    status: status.to_string(),
                    log: self.log_tail(),
                });
            }
            if http_get(self.ports.http, "/ready")
                .await
                .is_ok_and(|(code, _)| code == 200)
            {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(IstioError::NotReady {
                    revision: self.revision.clone(),
                    timeout: ISTIOD_READY_TIMEOUT,
                    log: self.log_tail(),
                });
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_secs(1));
        }
    }

    /// istiod's own version, from its monitoring port (`/version`).
    pub async fn version(&self) -> Result<String, IstioError> {
        let (code, body) = http_get(self.ports.monitoring, "/version").await?;
        if code != 200 {
            return Err(IstioError::Http {
                url: format!("http://127.0.0.1:{}/version", self.ports.monitoring),
                message: format!("status {code}"),
            });
        }
        Ok(body.trim().to_owned())
    }

    /// The pid of the istiod process.
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }
}

/// A plain HTTP/1.0 GET on 127.0.0.1: status code and body. Bounded to 5 s.
pub async fn http_get(port: u16, path: &str) -> Result<(u16, String), IstioError> {
    let url = format!("http://127.0.0.1:{port}{path}");
    let fail = |message: String| IstioError::Http {
        url: url.clone(),
        message,
    };
    let exchange = async {
        let mut stream = TcpStream::connect((Ipv4Addr::LOCALHOST, port))
            .await
            .map_err(|e| fail(e.to_string()))?;
        stream
            .write_all(format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").as_bytes())
            .await
            .map_err(|e| fail(e.to_string()))?;
        let mut raw = Vec::new();
        stream
            .read_to_end(&mut raw)
            .await
            .map_err(|e| fail(e.to_string()))?;
        let text = String::from_utf8_lossy(&raw).into_owned();
        let (head, body) = text
            .split_once("\r\n\r\n")
            .ok_or_else(|| fail("no end of headers".to_owned()))?;
        let code = head
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse::<u16>().ok())
            .ok_or_else(|| fail(format!("no status in {head:?}")))?;
        Ok((code, body.to_owned()))
    };
    tokio::time::timeout(Duration::from_secs(5), exchange)
        .await
        .map_err(|_| fail("no answer within 5s".to_owned()))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_install_sets_ondelete_and_points_the_webhooks_at_the_host_istiod() {
        let opts = InstallOptions {
            profile: "ambient".to_owned(),
            revision: "canary".to_owned(),
            webhook: SocketAddr::from((Ipv4Addr::LOCALHOST, 15917)),
            sets: vec!["values.ztunnel.tag=1.31.1".to_owned()],
        };
        let args = opts.args(Path::new("/m"));
        let sets: Vec<&str> = args
            .windows(2)
            .filter(|w| w[0] == "--set")
            .map(|w| w[1].as_str())
            .collect();
        assert_eq!(
            sets,
            [
                "profile=ambient",
                "revision=canary",
                "values.ztunnel.updateStrategy.type=OnDelete",
                "components.cni.k8s.overlays[0].kind=DaemonSet",
                "components.cni.k8s.overlays[0].name=istio-cni-node",
                "components.cni.k8s.overlays[0].patches[0].path=spec.updateStrategy.type",
                "components.cni.k8s.overlays[0].patches[0].value=OnDelete",
                "values.istiodRemote.injectionURL=https://127.0.0.1:15917/inject",
                "values.base.validationURL=https://127.0.0.1:15917/validate",
                "values.ztunnel.tag=1.31.1",
            ]
        );
        assert!(
            args.windows(2)
                .any(|w| w[0] == "--manifests" && w[1] == "/m")
        );
        let minimal = InstallOptions {
            profile: "minimal".to_owned(),
            ..opts.clone()
        };
        assert!(
            !minimal
                .args(Path::new("/m"))
                .iter()
                .any(|a| a.contains("OnDelete")),
            "a profile without ztunnel and istio-cni does not render them"
        );
        let default = InstallOptions {
            revision: "default".to_owned(),
            ..opts
        };
        assert!(
            !default
                .args(Path::new("/m"))
                .iter()
                .any(|a| a.starts_with("revision=")),
            "the default revision is istioctl's default, not a revision named default"
        );
    }

    #[test]
    fn missing_binaries_are_named_with_how_to_build_them() {
        let dir = tempfile::tempdir().expect("tempdir");
        let err = IstioBinaries::in_dir(dir.path())
            .check()
            .expect_err("nothing is built there");
        let text = err.to_string();
        for name in [
            "istioctl",
            "pilot-discovery",
            "istio-manifests",
            "gateway-api-crds",
            "e2e/build-istio.sh",
        ] {
            assert!(text.contains(name), "{text}");
        }
    }
}
