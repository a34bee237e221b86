//! Which Secret keys a rollout's Prometheus gate authenticates with: a bearer token, a
//! CA bundle and a client certificate, each from a Secret in the agent's namespace.
//!
//! The spec names them (`health.prometheus.bearerToken`, `.tls`); this resolves the
//! defaults (Kubernetes' own key names) and refuses what would leak or mislead — a token
//! or TLS settings for a plain-http URL — so the shell only reads the keys listed here.
//! The agent reads Secrets only in its own namespace, and only those its Role names: a
//! rollout author cannot make it read, or send to Prometheus, a Secret elsewhere.

use std::collections::BTreeSet;

use crate::api::rollout::PrometheusSpec;

/// Default key of the bearer token (what `kubectl create token` users store it under).
pub const TOKEN_KEY: &str = "token";
/// Default key of the CA bundle (cert-manager's and service account Secrets' name).
pub const CA_KEY: &str = "ca.crt";
/// The client certificate's keys in a `kubernetes.io/tls` Secret.
pub const CERT_KEY: &str = "tls.crt";
pub const PRIVATE_KEY_KEY: &str = "tls.key";

/// One key of one Secret.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct SecretKey {
    pub name: String,
    pub key: String,
}

impl std::fmt::Display for SecretKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "key {} of Secret {}", self.key, self.name)
    }
}

/// What the gate authenticates with; empty when the spec names nothing.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PrometheusCredentials {
    pub bearer_token: Option<SecretKey>,
    pub ca: Option<SecretKey>,
    /// The name of a `kubernetes.io/tls` Secret ([`CERT_KEY`], [`PRIVATE_KEY_KEY`]).
    pub client_certificate: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CredentialsError {
    #[error("bearerToken needs an https:// url: the token would cross the network in clear text")]
    TokenOverHttp,
    #[error("tls applies to an https:// url only")]
    TlsOverHttp,
}

impl PrometheusCredentials {
    /// The spec's credentials with their default keys. (The CRD refuses the same
    /// mistakes; a rollout stored by an older CRD is checked here.)
    pub fn from_spec(p: &PrometheusSpec) -> Result<Self, CredentialsError> {
        let https = p.url.starts_with("https://");
        if p.bearer_token.is_some() && !https {
            return Err(CredentialsError::TokenOverHttp);
        }
        if p.tls.is_some() && !https {
            return Err(CredentialsError::TlsOverHttp);
        }
        let tls = p.tls.clone().unwrap_or_default();
        Ok(Self {
            bearer_token: p.bearer_token.as_ref().map(|r| SecretKey {
                name: r.name.clone(),
                key: r.key_or(TOKEN_KEY).to_owned(),
            }),
            ca: tls.ca.as_ref().map(|r| SecretKey {
                name: r.name.clone(),
                key: r.key_or(CA_KEY).to_owned(),
            }),
            client_certificate: tls.client_certificate.map(|r| r.name),
        })
    }

    pub fn is_empty(&self) -> bool {
        self == &Self::default()
    }

    /// The Secrets to read, each once.
    pub fn secrets(&self) -> BTreeSet<&str> {
        self.bearer_token
            .iter()
            .chain(&self.ca)
            .map(|k| k.name.as_str())
            .chain(self.client_certificate.as_deref())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(v: serde_json::Value) -> PrometheusSpec {
        let mut base = serde_json::json!({
            "url": "https://prometheus.monitoring:9091",
            "queries": [{ "name": "q", "query": "vector(0)", "max": 0 }],
        });
        for (k, val) in v.as_object().expect("object") {
            base[k] = val.clone();
        }
        serde_json::from_value(base).expect("spec")
    }

    #[test]
    fn keys_default_to_kubernetes_names_and_each_secret_is_read_once() {
        let c = PrometheusCredentials::from_spec(&spec(serde_json::json!({
            "bearerToken": { "name": "prom" },
            "tls": { "ca": { "name": "prom" }, "clientCertificate": { "name": "client" } },
        })))
        .expect("valid");
        assert_eq!(
            c.bearer_token,
            Some(SecretKey {
                name: "prom".into(),
                key: TOKEN_KEY.into()
            })
        );
        assert_eq!(c.ca.as_ref().map(|k| k.key.as_str()), Some(CA_KEY));
        assert_eq!(c.client_certificate.as_deref(), Some("client"));
        assert_eq!(
            c.secrets().into_iter().collect::<Vec<_>>(),
            ["client", "prom"]
        );
        assert!(!c.is_empty());
        assert_eq!(
            c.ca.expect("ca").to_string(),
            "key ca.crt of Secret prom",
            "errors name the key and the Secret"
        );
    }

    #[test]
    fn named_keys_are_kept() {
        let c = PrometheusCredentials::from_spec(&spec(serde_json::json!({
            "bearerToken": { "name": "t", "key": "bearer" },
            "tls": { "ca": { "name": "c", "key": "bundle.pem" } },
        })))
        .expect("valid");
        assert_eq!(c.bearer_token.expect("token").key, "bearer");
        assert_eq!(c.ca.expect("ca").key, "bundle.pem");
        assert_eq!(c.client_certificate, None);
    }

    #[test]
    fn no_credentials_is_empty() {
        let c = PrometheusCredentials::from_spec(&spec(serde_json::json!({}))).expect("valid");
        assert!(c.is_empty() && c.secrets().is_empty());
    }

    #[test]
    fn a_token_or_tls_over_plain_http_is_refused() {
        let mut s = spec(serde_json::json!({ "bearerToken": { "name": "t" } }));
        s.url = "http://prometheus:9090".into();
        assert_eq!(
            PrometheusCredentials::from_spec(&s),
            Err(CredentialsError::TokenOverHttp)
        );
        let mut s = spec(serde_json::json!({ "tls": { "ca": { "name": "c" } } }));
        s.url = "http://prometheus:9090".into();
        assert_eq!(
            PrometheusCredentials::from_spec(&s),
            Err(CredentialsError::TlsOverHttp)
        );
    }
}
