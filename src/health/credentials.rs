//! Reads the Secrets a rollout's Prometheus gate authenticates with (which keys: the
//! core's `health::credentials`) from the agent's own namespace, and builds the HTTP
//! client that uses them: the CA bundle replaces the system's CA certificates for that
//! URL, the client certificate is offered for mutual TLS, the token goes in an
//! `Authorization` header marked sensitive.
//!
//! Read when a node's gate starts (so a rotated Secret is used from the next node on),
//! and again each round until it succeeds: the gate's interval is the backoff, its
//! timeout the bound. Errors name the Secret and the key, never what they hold.

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::{Api, Client};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use ztunnel_rollout_core::health::credentials::{
    CERT_KEY, PRIVATE_KEY_KEY, PrometheusCredentials, SecretKey,
};

use super::http_client::HttpClient;

#[derive(Debug, thiserror::Error)]
pub enum CredentialsError {
    #[error("Secret {namespace}/{name} not found")]
    NotFound { namespace: String, name: String },
    #[error(
        "the agent may not read Secret {namespace}/{name}: its Role names the Secrets it may read (the chart's healthGates.prometheusCredentialSecrets)"
    )]
    Forbidden { namespace: String, name: String },
    #[error("reading Secret {namespace}/{name} failed: {reason}")]
    Read {
        namespace: String,
        name: String,
        reason: String,
    },
    #[error("Secret {namespace}/{name} has no key {key}")]
    NoKey {
        namespace: String,
        name: String,
        key: String,
    },
    #[error("{what} in Secret {namespace}: {problem}")]
    Unusable {
        namespace: String,
        what: String,
        problem: String,
    },
}

/// The Secrets' data, by name.
type Secrets = BTreeMap<String, BTreeMap<String, ByteString>>;

/// The client for the gate's Prometheus URL: `base` itself when the rollout names no
/// credentials, else one sharing `base`'s slots that authenticates as the Secrets in
/// `namespace` say.
pub async fn prometheus_client(
    client: &Client,
    namespace: &str,
    credentials: &PrometheusCredentials,
    base: &HttpClient,
) -> Result<HttpClient, CredentialsError> {
    if credentials.is_empty() {
        return Ok(base.clone());
    }
    let api: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let mut secrets = Secrets::new();
    for name in credentials.secrets() {
        let secret = api.get(name).await.map_err(|e| match e {
            kube::Error::Api(s) if s.code == 404 => CredentialsError::NotFound {
                namespace: namespace.to_owned(),
                name: name.to_owned(),
            },
            kube::Error::Api(s) if s.code == 403 => CredentialsError::Forbidden {
                namespace: namespace.to_owned(),
                name: name.to_owned(),
            },
            kube::Error::Api(s) => CredentialsError::Read {
                namespace: namespace.to_owned(),
                name: name.to_owned(),
                reason: format!("HTTP {} {}", s.code, s.reason),
            },
            other => {
                tracing::debug!(namespace, name, error = %other, "reading a Secret failed");
                CredentialsError::Read {
                    namespace: namespace.to_owned(),
                    name: name.to_owned(),
                    reason: "the API server did not answer".to_owned(),
                }
            }
        })?;
        secrets.insert(name.to_owned(), secret.data.unwrap_or_default());
    }
    authenticate(namespace, credentials, &secrets, base)
}

/// The client from Secrets already read: every key checked, nothing half-applied.
fn authenticate(
    namespace: &str,
    credentials: &PrometheusCredentials,
    secrets: &Secrets,
    base: &HttpClient,
) -> Result<HttpClient, CredentialsError> {
    let value = |k: &SecretKey| -> Result<&[u8], CredentialsError> {
        secrets
            .get(&k.name)
            .and_then(|data| data.get(&k.key))
            .map(|v| v.0.as_slice())
            .ok_or_else(|| CredentialsError::NoKey {
                namespace: namespace.to_owned(),
                name: k.name.clone(),
                key: k.key.clone(),
            })
    };
    let unusable = |what: String, problem: &str| CredentialsError::Unusable {
        namespace: namespace.to_owned(),
        what,
        problem: problem.to_owned(),
    };
    let token = match &credentials.bearer_token {
        None => None,
        Some(k) => {
            let text = std::str::from_utf8(value(k)?)
                .map_err(|_| unusable(k.to_string(), "the token is not UTF-8 text"))?
                .trim();
            if text.is_empty() {
                return Err(unusable(k.to_string(), "the token is empty"));
            }
            Some(
                http::HeaderValue::from_str(&format!("Bearer {text}")).map_err(|_| {
                    unusable(
                        k.to_string(),
                        "the token has characters a header cannot carry",
                    )
                })?,
            )
        }
    };
    let tls = if credentials.ca.is_none() && credentials.client_certificate.is_none() {
        None
    } else {
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| unusable("TLS".into(), &e.to_string()))?;
        let roots = match &credentials.ca {
            Some(k) => {
                let mut roots = rustls::RootCertStore::empty();
                for cert in CertificateDer::pem_slice_iter(value(k)?) {
                    let cert = cert.map_err(|_| unusable(k.to_string(), "not PEM"))?;
                    roots
                        .add(cert)
                        .map_err(|e| unusable(k.to_string(), &e.to_string()))?;
                }
                if roots.is_empty() {
                    return Err(unusable(k.to_string(), "no PEM certificate"));
                }
                roots
            }
            None => {
                let found = rustls_native_certs::load_native_certs();
                let mut roots = rustls::RootCertStore::empty();
                roots.add_parsable_certificates(found.certs);
                roots
            }
        };
        let builder = builder.with_root_certificates(roots);
        Some(match &credentials.client_certificate {
            None => builder.with_no_client_auth(),
            Some(name) => {
                let cert_key = SecretKey {
                    name: name.clone(),
                    key: CERT_KEY.into(),
                };
                let private_key = SecretKey {
                    name: name.clone(),
                    key: PRIVATE_KEY_KEY.into(),
                };
                let chain = CertificateDer::pem_slice_iter(value(&cert_key)?)
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|_| unusable(cert_key.to_string(), "not PEM"))?;
                if chain.is_empty() {
                    return Err(unusable(cert_key.to_string(), "no PEM certificate"));
                }
                let key = PrivateKeyDer::from_pem_slice(value(&private_key)?)
                    .map_err(|_| unusable(private_key.to_string(), "no PEM private key"))?;
                builder.with_client_auth_cert(chain, key).map_err(|e| {
                    unusable(
                        format!("the client certificate of Secret {name}"),
                        &e.to_string(),
                    )
                })?
            }
        })
    };
    Ok(base.authenticated(tls, token))
}
