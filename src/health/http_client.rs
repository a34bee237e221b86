//! A small HTTP(S) GET client for the health gates (Prometheus, ztunnel's metrics
//! endpoint), with the bounds that keep the gates inside the agent's budget:
//!
//! - **Slots.** At most [`FETCHES_AT_ONCE`] requests are in flight through one client,
//!   and the agent has one client for every node's gate task: however many nodes are
//!   verified at once, and however many queries each has, the endpoints see at most that
//!   many requests, and the agent holds at most that many answers.
//! - **Time.** Each request has its own timeout, and the whole fetch — waiting for a
//!   slot included — ends by the caller's deadline (the gate's).
//! - **Size.** An answer larger than [`MAX_BODY`] fails the check (a ztunnel with many
//!   workloads serves a few hundred KiB), and it is read while the slot is held
//!   ([`HttpClient::fetch`]), so the memory of answers is at most slots × the cap.
//!
//! Errors say which URL failed and how, in a few words of a fixed set — the HTTP status,
//! timeout, connection refused, TLS, too large, … — never with text of the answer: they
//! reach the rollout's status and Events, and the server at the URL is not trusted to
//! say only harmless things. (The transport's own error chain goes to the agent's log,
//! at debug.)

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tracing::debug;
use ztunnel_rollout_core::duration::format_duration;

/// Answers larger than this fail the check: 4 MiB, ten times what a ztunnel proxying a
/// thousand workloads serves, and a 16th of the agent's memory limit for all of them.
pub const MAX_BODY: usize = 4 * 1024 * 1024;

/// Scrapes and queries in flight at once across the agent: enough for the nodes of a
/// wave to be verified side by side (a round's requests run concurrently), few enough
/// that their answers fit the agent's memory (× [`MAX_BODY`]: 64 MiB of its 256) and
/// that Prometheus is not flooded.
pub const FETCHES_AT_ONCE: usize = 16;

#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("{url}: not a valid URL: {reason}")]
    InvalidUrl { url: String, reason: String },
    #[error("{url}: no answer within {}", format_duration(*.timeout))]
    Timeout { url: String, timeout: Duration },
    #[error("{url}: no answer by the health gate's deadline")]
    Deadline { url: String },
    #[error(
        "{url}: not sent by the health gate's deadline: the agent's {slots} slots for scrapes and queries stayed busy"
    )]
    NoSlot { url: String, slots: usize },
    #[error("{url}: unreachable: {reason}")]
    Unreachable { url: String, reason: &'static str },
    /// A non-2xx answer. `excerpt` (its first [`EXCERPT`] bytes) is for classifying the
    /// answer (e.g. Prometheus's error type), never shown.
    #[error("{url}: HTTP {status}")]
    Status {
        url: String,
        status: u16,
        excerpt: Vec<u8>,
    },
    #[error("{url}: the answer is larger than {} MiB, the limit on a health-check answer", .limit / (1024 * 1024))]
    TooLarge { url: String, limit: usize },
    #[error("{url}: reading the answer failed: {reason}")]
    Body { url: String, reason: &'static str },
}

/// How much of a non-2xx answer is kept to classify it.
pub const EXCERPT: usize = 4096;

/// How long one fetch may take: `timeout` once it has a slot, and all of it by
/// `deadline`, if any.
#[derive(Debug, Clone, Copy)]
pub struct Bounds {
    pub timeout: Duration,
    pub deadline: Option<Instant>,
}

impl From<Duration> for Bounds {
    fn from(timeout: Duration) -> Self {
        Self {
            timeout,
            deadline: None,
        }
    }
}

#[derive(Clone)]
pub struct HttpClient {
    client: Client<hyper_rustls::HttpsConnector<HttpConnector>, Empty<Bytes>>,
    /// Shared by the clones: the agent-wide limit.
    slots: Arc<Semaphore>,
    limit: usize,
    /// Sent with every request (marked sensitive: never logged).
    authorization: Option<http::HeaderValue>,
}

impl HttpClient {
    /// A client allowing [`FETCHES_AT_ONCE`] requests in flight.
    pub fn new() -> Self {
        Self::with_slots(FETCHES_AT_ONCE)
    }

    /// A client allowing `slots` requests in flight (at least one).
    pub fn with_slots(slots: usize) -> Self {
        let slots = slots.max(1);
        Self {
            client: Client::builder(TokioExecutor::new()).build(connector()),
            slots: Arc::new(Semaphore::new(slots)),
            limit: slots,
            authorization: None,
        }
    }

    /// A client for one authenticated endpoint, sharing this one's slots: https only,
    /// with `tls` (its CA certificates and client certificate) when given, and
    /// `Authorization: Bearer token` on every request when given.
    pub fn authenticated(
        &self,
        tls: Option<rustls::ClientConfig>,
        token: Option<http::HeaderValue>,
    ) -> Self {
        let client = match tls {
            Some(config) => Client::builder(TokioExecutor::new()).build(
                hyper_rustls::HttpsConnectorBuilder::new()
                    .with_tls_config(config)
                    .https_only()
                    .enable_http1()
                    .build(),
            ),
            None => self.client.clone(),
        };
        Self {
            client,
            slots: self.slots.clone(),
            limit: self.limit,
            authorization: token.map(|mut t| {
                t.set_sensitive(true);
                t
            }),
        }
    }

    /// GETs `url`; a non-2xx status is an error carrying the start of the body.
    pub async fn get(&self, url: &str, bounds: impl Into<Bounds>) -> Result<Bytes, FetchError> {
        self.fetch(url, bounds, Bytes::copy_from_slice).await
    }

    /// GETs `url` and reads the answer with `read` while its slot is held, so that only
    /// what `read` keeps outlives the slot.
    pub async fn fetch<T>(
        &self,
        url: &str,
        bounds: impl Into<Bounds>,
        read: impl FnOnce(&[u8]) -> T,
    ) -> Result<T, FetchError> {
        let bounds = bounds.into();
        let uri: http::Uri =
            url.parse()
                .map_err(|e: http::uri::InvalidUri| FetchError::InvalidUrl {
                    url: url.to_owned(),
                    reason: e.to_string(),
                })?;
        let slot = self.slots.acquire();
        let _slot =
            match bounds.deadline {
                None => slot.await,
                Some(deadline) => tokio::time::timeout_at(deadline, slot).await.map_err(|_| {
                    FetchError::NoSlot {
                        url: url.to_owned(),
                        slots: self.limit,
                    }
                })?,
            }
            // The semaphore is never closed.
            .map_err(|_| FetchError::Body {
                url: url.to_owned(),
                reason: "no slot",
            })?;
        let own = Instant::now() + bounds.timeout;
        let (until, cut) = match bounds.deadline {
            Some(deadline) if deadline < own => (deadline, true),
            _ => (own, false),
        };
        let body = tokio::time::timeout_at(until, self.read_body(uri, url))
            .await
            .map_err(|_| {
                if cut {
                    FetchError::Deadline {
                        url: url.to_owned(),
                    }
                } else {
                    FetchError::Timeout {
                        url: url.to_owned(),
                        timeout: bounds.timeout,
                    }
                }
            })??;
        Ok(read(&body))
    }

    /// The answer's body, at most [`MAX_BODY`] bytes, in one buffer.
    async fn read_body(&self, uri: http::Uri, url: &str) -> Result<Vec<u8>, FetchError> {
        let too_large = || FetchError::TooLarge {
            url: url.to_owned(),
            limit: MAX_BODY,
        };
        if self.authorization.is_some() && uri.scheme() != Some(&http::uri::Scheme::HTTPS) {
            return Err(FetchError::InvalidUrl {
                url: url.to_owned(),
                reason: "a bearer token is sent over https only".to_owned(),
            });
        }
        let mut request = http::Request::get(uri);
        if let Some(token) = &self.authorization {
            request = request.header(http::header::AUTHORIZATION, token.clone());
        }
        let request = request
            .body(Empty::new())
            .map_err(|_| FetchError::InvalidUrl {
                url: url.to_owned(),
                reason: "not a valid request".to_owned(),
            })?;
        let response = self.client.request(request).await.map_err(|e| {
            let reason = classify(&e, "connection failed");
            debug!(url, error = %error_chain(&e), reason, "health check request failed");
            FetchError::Unreachable {
                url: url.to_owned(),
                reason,
            }
        })?;
        let status = response.status();
        let announced = response
            .headers()
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse::<usize>().ok());
        if announced.is_some_and(|n| n > MAX_BODY) {
            return Err(too_large());
        }
        let mut body = response.into_body();
        let mut out = Vec::with_capacity(announced.unwrap_or(0));
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| {
                let reason = classify(&e, "the answer was cut off");
                debug!(url, error = %error_chain(&e), reason, "health check answer failed");
                FetchError::Body {
                    url: url.to_owned(),
                    reason,
                }
            })?;
            if let Ok(data) = frame.into_data() {
                if out.len() + data.len() > MAX_BODY {
                    return Err(too_large());
                }
                out.extend_from_slice(&data);
            }
        }
        if !status.is_success() {
            out.truncate(EXCERPT);
            return Err(FetchError::Status {
                url: url.to_owned(),
                status: status.as_u16(),
                excerpt: out,
            });
        }
        Ok(out)
    }
}

impl Default for HttpClient {
    fn default() -> Self {
        Self::new()
    }
}

fn connector() -> hyper_rustls::HttpsConnector<HttpConnector> {
    let builder = hyper_rustls::HttpsConnectorBuilder::new();
    let builder = match builder.with_native_roots() {
        Ok(b) => b,
        Err(e) => {
            // Without CA certificates https fails (with a clear error); http works.
            tracing::warn!(error = %e, "no CA certificates found: https health checks will fail");
            let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
            let config = rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .map(|c| {
                    c.with_root_certificates(rustls::RootCertStore::empty())
                        .with_no_client_auth()
                });
            match config {
                Ok(c) => hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(c),
                Err(e) => {
                    tracing::error!(error = %e, "TLS configuration failed");
                    hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(
                        rustls::ClientConfig::builder()
                            .with_root_certificates(rustls::RootCertStore::empty())
                            .with_no_client_auth(),
                    )
                }
            }
        }
    };
    builder.https_or_http().enable_http1().build()
}

/// A few words for what failed, from the error's chain: its I/O error's kind, TLS, DNS;
/// `otherwise` when none says.
fn classify(e: &(dyn std::error::Error + 'static), otherwise: &'static str) -> &'static str {
    let mut source = Some(e);
    while let Some(s) = source {
        if s.downcast_ref::<rustls::Error>().is_some() {
            return "TLS failed";
        }
        if let Some(io) = s.downcast_ref::<std::io::Error>() {
            if io
                .get_ref()
                .is_some_and(|inner| inner.downcast_ref::<rustls::Error>().is_some())
            {
                return "TLS failed";
            }
            use std::io::ErrorKind;
            match io.kind() {
                ErrorKind::ConnectionRefused => return "connection refused",
                ErrorKind::ConnectionReset | ErrorKind::ConnectionAborted => {
                    return "connection reset";
                }
                ErrorKind::TimedOut => return "timeout",
                ErrorKind::HostUnreachable | ErrorKind::NetworkUnreachable => {
                    return "host unreachable";
                }
                ErrorKind::UnexpectedEof => return "the answer was cut off",
                _ => {}
            }
        }
        source = s.source();
    }
    let text = error_chain(e).to_ascii_lowercase();
    if text.contains("dns error") || text.contains("failed to lookup") {
        "DNS lookup failed"
    } else if text.contains("tls") || text.contains("certificate") {
        "TLS failed"
    } else {
        otherwise
    }
}

/// "client error (Connect): tcp connect error: Connection refused (os error 111)".
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}
