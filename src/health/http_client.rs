//! A small HTTP(S) GET client for the health gates (Prometheus, ztunnel's metrics
//! endpoint): a deadline per request, a cap on the body, and errors that say which URL
//! failed and how.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

/// Bodies larger than this are refused (a ztunnel with many workloads serves a few MiB).
const MAX_BODY: usize = 32 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("{url}: not a valid URL: {reason}")]
    InvalidUrl { url: String, reason: String },
    #[error("{url}: no answer within {}", ztunnel_rollout_core::duration::format_duration(*.timeout))]
    Timeout { url: String, timeout: Duration },
    #[error("{url}: unreachable: {reason}")]
    Unreachable { url: String, reason: String },
    #[error("{url}: HTTP {status}: {body}")]
    Status {
        url: String,
        status: u16,
        body: String,
    },
    #[error("{url}: reading the answer failed: {reason}")]
    Body { url: String, reason: String },
}

#[derive(Clone)]
pub struct HttpClient {
    client: Client<hyper_rustls::HttpsConnector<HttpConnector>, Empty<Bytes>>,
}

impl HttpClient {
    pub fn new() -> Self {
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
        let connector = builder.https_or_http().enable_http1().build();
        Self {
            client: Client::builder(TokioExecutor::new()).build(connector),
        }
    }

    /// GETs `url`; a non-2xx status is an error carrying the start of the body.
    pub async fn get(&self, url: &str, timeout: Duration) -> Result<Bytes, FetchError> {
        let uri: http::Uri =
            url.parse()
                .map_err(|e: http::uri::InvalidUri| FetchError::InvalidUrl {
                    url: url.to_owned(),
                    reason: e.to_string(),
                })?;
        let fetch = async {
            let response = self
                .client
                .get(uri)
                .await
                .map_err(|e| FetchError::Unreachable {
                    url: url.to_owned(),
                    reason: error_chain(&e),
                })?;
            let status = response.status();
            let body = Limited::new(response.into_body(), MAX_BODY)
                .collect()
                .await
                .map_err(|e| FetchError::Body {
                    url: url.to_owned(),
                    reason: e.to_string(),
                })?
                .to_bytes();
            if !status.is_success() {
                let text = String::from_utf8_lossy(&body[..body.len().min(300)])
                    .trim()
                    .to_owned();
                return Err(FetchError::Status {
                    url: url.to_owned(),
                    status: status.as_u16(),
                    body: text,
                });
            }
            Ok(body)
        };
        tokio::time::timeout(timeout, fetch)
            .await
            .map_err(|_| FetchError::Timeout {
                url: url.to_owned(),
                timeout,
            })?
    }
}

impl Default for HttpClient {
    fn default() -> Self {
        Self::new()
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
