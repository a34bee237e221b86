//! The agent's HTTP endpoint: `/metrics` (Prometheus text format), `/livez` (the process
//! serves), `/readyz` (its watches have synced). Loopback or pod IP; no TLS (metrics
//! scrapers and kubelet probes inside the cluster).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use http::{Response, StatusCode};
use http_body_util::Full;
use hyper::body::Bytes;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
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

fn respond(status: StatusCode, content_type: &str, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    if let Ok(v) = http::HeaderValue::from_str(content_type) {
        response.headers_mut().insert(http::header::CONTENT_TYPE, v);
    }
    response
}

fn route(path: &str, registry: &Registry, readiness: &Readiness) -> Response<Full<Bytes>> {
    match path {
        "/livez" => respond(StatusCode::OK, "text/plain", "ok".into()),
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
            let (registry, readiness) = (registry.clone(), readiness.clone());
            tokio::spawn(async move {
                let service = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let response = route(req.uri().path(), &registry, &readiness);
                    async move { Ok::<_, std::convert::Infallible>(response) }
                });
                if let Err(e) = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await
                {
                    debug!(error = %e, "health endpoint connection ended with an error");
                }
            });
        }
    };
    Ok((local, serve))
}
