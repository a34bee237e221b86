//! Building the Kubernetes client the way kubectl users expect (`--kubeconfig`,
//! `--context`, `$KUBECONFIG`, in-cluster), without kube's hidden retries.

use std::path::Path;

use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};
use ztunnel_rollout_core::api_errors::{ApiFailure, ApiStatus};

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("reading kubeconfig {path}: {source}")]
    Read {
        path: String,
        source: kube::config::KubeconfigError,
    },
    #[error("kubeconfig: {0}")]
    Kubeconfig(#[from] kube::config::KubeconfigError),
    #[error("no kubeconfig found and not running in a cluster: {0}")]
    Infer(#[from] kube::config::InferConfigError),
    #[error("creating the client: {0}")]
    Client(#[from] kube::Error),
}

pub const USER_AGENT: &str = concat!("ztunnel-rollout/", env!("CARGO_PKG_VERSION"));

/// A client for `kubeconfig` (else `$KUBECONFIG`/`~/.kube/config`, else in-cluster) and
/// `context` (else the current one).
///
/// kube's default client retries 429/503/504 up to 15 times with backoff of up to 1000 s,
/// invisibly. That would hide PDB refusals from the drain and blow its deadline, so it is
/// off: every retry here is the caller's, bounded and counted.
pub async fn client(
    kubeconfig: Option<&Path>,
    context: Option<&str>,
) -> Result<Client, ClientError> {
    let options = KubeConfigOptions {
        context: context.map(str::to_owned),
        ..Default::default()
    };
    let mut config = match kubeconfig {
        Some(path) => {
            let kc = Kubeconfig::read_from(path).map_err(|source| ClientError::Read {
                path: path.display().to_string(),
                source,
            })?;
            Config::from_custom_kubeconfig(kc, &options).await?
        }
        None if context.is_some() => Config::from_kubeconfig(&options).await?,
        None => Config::infer().await?,
    };
    config.default_retry = false;
    // Names our requests in audit logs and apiserver metrics.
    config.headers.push((
        http::header::USER_AGENT,
        http::HeaderValue::from_static(USER_AGENT),
    ));
    Ok(Client::try_from(config)?)
}

/// What the decisions read of a failed request (`ztunnel_rollout_core::api_errors`).
pub fn api_failure(e: &kube::Error) -> ApiFailure {
    match e {
        kube::Error::Api(s) => ApiFailure::Status(ApiStatus {
            code: s.code,
            reason: s.reason.clone(),
            message: s.message.clone(),
            causes: s
                .details
                .iter()
                .flat_map(|d| d.causes.iter())
                .map(|c| (c.reason.clone(), c.message.clone()))
                .collect(),
            retry_after_seconds: s.details.as_ref().map_or(0, |d| d.retry_after_seconds),
        }),
        other => ApiFailure::Transport(other.to_string()),
    }
}

/// An API server's answer as one readable line: its message, HTTP code and reason (the
/// `Display` of `kube::Error::Api` carries a `Debug` dump of the whole response).
pub fn describe_status(s: &kube::core::Status) -> String {
    format!("{} (HTTP {} {})", s.message, s.code, s.reason)
}

/// `e` as one readable line.
pub fn describe(e: &kube::Error) -> String {
    match e {
        kube::Error::Api(s) => describe_status(s),
        other => other.to_string(),
    }
}

/// A watch's error as one readable line.
pub fn describe_watch_error(e: &kube::runtime::watcher::Error) -> String {
    use kube::runtime::watcher::Error;
    match e {
        Error::InitialListFailed(e) => format!("listing failed: {}", describe(e)),
        Error::WatchStartFailed(e) => format!("starting the watch failed: {}", describe(e)),
        Error::WatchError(s) => format!("the watch ended: {}", describe_status(s)),
        Error::WatchFailed(e) => format!("the watch failed: {}", describe(e)),
        other => other.to_string(),
    }
}
