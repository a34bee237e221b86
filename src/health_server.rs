//! The agent's HTTP endpoint: `/metrics` (Prometheus text format), `/livez` (the agent's
//! loop is turning), `/readyz` (its watches have synced). Loopback or pod IP; no TLS
//! (metrics scrapers and kubelet probes inside the cluster).
//!
//! `/livez` answers from a [`Liveness`] the agent's loop ticks at every turn — waiting
//! for its watches, waiting for the lease, or between passes — so a replica that does not
//! lead stays live, and one whose pass hangs (an API call without an answer: the client
//! has no read timeout, watches need none) stops being live once the bound has passed,
//! and the kubelet restarts it.
//!
//! The server reads a request's head within [`HEADER_READ_TIMEOUT`] and serves each
//! connection (one request: no keep-alive) within [`REQUEST_TIMEOUT`]: a client that
//! connects and stalls holds a socket and a task for that long at most.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use http::{Response, StatusCode};
use http_body_util::Full;
use hyper::body::Bytes;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tracing::debug;

#[derive(Debug, thiserror::Error)]
pub enum HealthServerError {
    #[error("binding the metrics and health endpoint on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// Set to true once every watch has synced; `/readyz` answers 200 only then.
#[derive(Clone, Default)]
pub struct Readiness(Arc<AtomicBool>);

impl Readiness {
    pub fn set(&self, ready: bool) {
        self.0.store(ready, Ordering::SeqCst);
    }
    pub fn get(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

/// How long a client has to send a request's head (request line and headers).
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(5);
/// How long one connection (one request and its answer) may take in all.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// When the agent's loop last turned, and how long it may go without turning before
/// `/livez` fails.
#[derive(Clone)]
pub struct Liveness {
    last: Arc<Mutex<Instant>>,
    bound: Duration,
}

impl Liveness {
    /// Live now; stalled once `bound` passes without a [`Liveness::tick`].
    pub fn new(bound: Duration) -> Self {
        Self {
            last: Arc::new(Mutex::new(Instant::now())),
            bound,
        }
    }

    pub fn bound(&self) -> Duration {
        self.bound
    }

    /// The loop turned.
    pub fn tick(&self) {
        *self.last.lock().unwrap_or_else(PoisonError::into_inner) = Instant::now();
    }

    /// `Err` with a one-line reason when the loop has not turned within the bound.
    pub fn check(&self) -> Result<(), String> {
        let since = self
            .last
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .elapsed();
        if since > self.bound {
            Err(format!(
                "the agent's loop has not turned for {}s (bound {}s): a pass is stuck",
                since.as_secs(),
                self.bound.as_secs_f64()
            ))
        } else {
            Ok(())
        }
    }
}

impl std::fmt::Debug for Liveness {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Liveness")
            .field("bound", &self.bound)
            .finish_non_exhaustive()
    }
}

fn respond(status: StatusCode, content_type: &str, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    if let Ok(v) = http::HeaderValue::from_str(content_type) {
        response.headers_mut().insert(http::header::CONTENT_TYPE, v);
    }
    response
}

fn route(
    path: &str,
    registry: &Registry,
    readiness: &Readiness,
    liveness: &Liveness,
) -> Response<Full<Bytes>> {
    match path {
        "/livez" => match liveness.check() {
            Ok(()) => respond(StatusCode::OK, "text/plain", "ok".into()),
            Err(reason) => respond(StatusCode::SERVICE_UNAVAILABLE, "text/plain", reason),
        },
        "/readyz" if readiness.get() => respond(StatusCode::OK, "text/plain", "ok".into()),
        "/readyz" => respond(
            StatusCode::SERVICE_UNAVAILABLE,
            "text/plain",
            "watches not synced yet".into(),
        ),
        "/metrics" => {
            let mut text = String::new();
            match prometheus_client::encoding::text::encode(&mut text, registry) {
                Ok(()) => respond(
                    StatusCode::OK,
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    text,
                ),
                Err(e) => respond(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "text/plain",
                    e.to_string(),
                ),
            }
        }
        _ => respond(StatusCode::NOT_FOUND, "text/plain", "not found".into()),
    }
}

/// Binds `addr` and returns the bound address and the serving future (run it as a task).
pub async fn bind(
    addr: SocketAddr,
    registry: Arc<Registry>,
    readiness: Readiness,
    liveness: Liveness,
) -> Result<(SocketAddr, impl std::future::Future<Output = ()>), HealthServerError> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| HealthServerError::Bind { addr, source })?;
    let local = listener
        .local_addr()
        .map_err(|source| HealthServerError::Bind { addr, source })?;
    let serve = async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let (registry, readiness, liveness) =
                (registry.clone(), readiness.clone(), liveness.clone());
            tokio::spawn(async move {
                let service = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let response = route(req.uri().path(), &registry, &readiness, &liveness);
                    async move { Ok::<_, std::convert::Infallible>(response) }
                });
                let connection = http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(HEADER_READ_TIMEOUT)
                    .keep_alive(false)
                    .serve_connection(TokioIo::new(stream), service);
                match tokio::time::timeout(REQUEST_TIMEOUT, connection).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => {
                        debug!(error = %e, "health endpoint connection ended with an error");
                    }
                    Err(_) => debug!("health endpoint connection cut at the request timeout"),
                }
            });
        }
    };
    Ok((local, serve))
}
