//! A Prometheus HTTP API stand-in behind mutual TLS and a bearer token, on 127.0.0.1:
//! its own CA signs its serving certificate and the client certificate it demands, and
//! `/api/v1/query` answers 0 to a request carrying the right token, 401 otherwise. It
//! records what each request presented, so a test can tell from the server's side that
//! the agent authenticated (Debian's Prometheus is the real one for PromQL; this one is
//! about the transport).
#![allow(dead_code)]

use std::convert::Infallible;
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex};

use http::{Response, StatusCode};
use http_body_util::Full;
use hyper::body::Bytes;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, SanType,
};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio_rustls::rustls::server::WebPkiClientVerifier;
use tokio_rustls::rustls::{RootCertStore, ServerConfig};

/// What one request presented.
#[derive(Debug, Clone, PartialEq)]
pub struct Seen {
    /// The client certificate's common name (the handshake verified it).
    pub client: String,
    /// The `Authorization` header was `Bearer <the token>`.
    pub authorized: bool,
    pub path: String,
}

pub struct TlsPrometheus {
    pub url: String,
    /// The CA that signed the serving and the client certificate.
    pub ca_pem: String,
    pub client_cert_pem: String,
    pub client_key_pem: String,
    pub token: String,
    /// Requests that completed the handshake.
    seen: Arc<Mutex<Vec<Seen>>>,
    /// Handshakes refused (no or a wrong client certificate).
    refused: Arc<Mutex<usize>>,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for TlsPrometheus {
    fn drop(&mut self) {
        self.server.abort();
    }
}

fn ca(name: &str) -> CertifiedIssuer<'static, KeyPair> {
    let mut params = CertificateParams::default();
    params.distinguished_name.push(DnType::CommonName, name);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    CertifiedIssuer::self_signed(params, KeyPair::generate().expect("CA key")).expect("CA")
}

/// A CA that signed nothing of the stand-in's: trusting it must fail the handshake.
pub fn unrelated_ca_pem() -> String {
    ca("unrelated-ca").pem()
}

impl TlsPrometheus {
    pub async fn start(token: &str) -> Self {
        let ca = ca("prometheus-test-ca");
        let serving_key = KeyPair::generate().expect("serving key");
        let mut serving = CertificateParams::default();
        serving
            .distinguished_name
            .push(DnType::CommonName, "prometheus.monitoring.svc");
        serving.subject_alt_names = vec![SanType::IpAddress(Ipv4Addr::LOCALHOST.into())];
        serving.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let serving_cert = serving.signed_by(&serving_key, &ca).expect("serving cert");
        let client_key = KeyPair::generate().expect("client key");
        let mut client = CertificateParams::default();
        client
            .distinguished_name
            .push(DnType::CommonName, "ztunnel-rollout");
        client.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let client_cert = client.signed_by(&client_key, &ca).expect("client cert");

        let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
        let mut roots = RootCertStore::empty();
        roots.add(ca.der().clone()).expect("CA in the store");
        let verifier =
            WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                .build()
                .expect("client verifier");
        let config = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("TLS versions")
            .with_client_cert_verifier(verifier)
            .with_single_cert(
                vec![serving_cert.der().clone()],
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(serving_key.serialize_der())),
            )
            .expect("TLS configuration");
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .await
            .expect("bind 127.0.0.1");
        let url = format!("https://{}", listener.local_addr().expect("address"));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let refused = Arc::new(Mutex::new(0));
        let server = tokio::spawn(serve(
            listener,
            TlsAcceptor::from(Arc::new(config)),
            format!("Bearer {token}"),
            seen.clone(),
            refused.clone(),
        ));
        Self {
            url,
            ca_pem: ca.pem(),
            client_cert_pem: client_cert.pem(),
            client_key_pem: client_key.serialize_pem(),
            token: token.to_owned(),
            seen,
            refused,
            server,
        }
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().expect("seen").clone()
    }

    pub fn refused_handshakes(&self) -> usize {
        *self.refused.lock().expect("refused")
    }
}

async fn serve(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    expected: String,
    seen: Arc<Mutex<Vec<Seen>>>,
    refused: Arc<Mutex<usize>>,
) {
    loop {
        let Ok((tcp, _)) = listener.accept().await else {
            return;
        };
        let (acceptor, expected, seen, refused) = (
            acceptor.clone(),
            expected.clone(),
            seen.clone(),
            refused.clone(),
        );
        tokio::spawn(async move {
            let tls = match acceptor.accept(tcp).await {
                Ok(tls) => tls,
                Err(_) => {
                    *refused.lock().expect("refused") += 1;
                    return;
                }
            };
            let client = tls
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|c| c.first())
                .and_then(|c| x509_common_name(c.as_ref()))
                .unwrap_or_default();
            let service = service_fn(move |request: http::Request<hyper::body::Incoming>| {
                let authorized = request
                    .headers()
                    .get(http::header::AUTHORIZATION)
                    .is_some_and(|v| v.as_bytes() == expected.as_bytes());
                seen.lock().expect("seen").push(Seen {
                    client: client.clone(),
                    authorized,
                    path: request.uri().path().to_owned(),
                });
                let (status, body) = if authorized {
                    (
                        StatusCode::OK,
                        r#"{"status":"success","data":{"resultType":"scalar","result":[1,"0"]}}"#,
                    )
                } else {
                    (
                        StatusCode::UNAUTHORIZED,
                        r#"{"status":"error","errorType":"unauthorized","error":"bad token"}"#,
                    )
                };
                async move {
                    Ok::<_, Infallible>(
                        Response::builder()
                            .status(status)
                            .header(http::header::CONTENT_TYPE, "application/json")
                            .body(Full::new(Bytes::from(body)))
                            .expect("response"),
                    )
                }
            });
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(tls), service)
                .await;
        });
    }
}

/// The subject's common name of a DER certificate, found by its OID (2.5.4.3) followed
/// by a UTF8String or PrintableString: enough for the certificates this module makes.
fn x509_common_name(der: &[u8]) -> Option<String> {
    const CN: [u8; 5] = [0x06, 0x03, 0x55, 0x04, 0x03];
    // The last CN is the subject's (the issuer's comes first).
    let at = der.windows(CN.len()).rposition(|w| w == CN)? + CN.len();
    let (tag, len) = (*der.get(at)?, *der.get(at + 1)? as usize);
    if tag != 0x0c && tag != 0x13 {
        return None;
    }
    String::from_utf8(der.get(at + 2..at + 2 + len)?.to_vec()).ok()
}
