//! A fault-injecting HTTPS proxy on 127.0.0.1, between the agent under test and the test
//! cluster's API server.
//!
//! The README promises that API errors are not node failures: connection resets, 5xx,
//! throttling 429s, slow answers and answers lost after a write was applied are retried,
//! never turned into a Failed node. A real API server does not misbehave on demand, so a
//! test puts this proxy in the agent's path, tells it which requests to break and how
//! ([`Rule`]), and reads back what it actually injected ([`FaultProxy::injected`]): a
//! fault that never fired proves nothing.
//!
//! The proxy terminates TLS with a certificate of its own for 127.0.0.1, signed by a CA
//! made here that the agent trusts through [`FaultProxy::agent_kubeconfig`]. It forwards
//! every request unchanged (method, path, query, headers, including the `Impersonate-*`
//! headers the agent's kubeconfig adds) to the API server, authenticating there with the
//! test cluster's admin client certificate, which may impersonate; the agent itself shows
//! the proxy no credential. Answers are streamed through frame by frame, never buffered:
//! watches are long-lived chunked responses. HTTP/1.1 only.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, SanType,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use serde_json::{Value, json};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;

/// What the proxy does to a request a [`Rule`] picked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// Aborts the connection (TCP reset) without answering; nothing reaches the API
    /// server.
    Reset,
    /// Holds the request this long, then forwards it.
    Delay(Duration),
    /// Answers 503 with a Kubernetes Status; nothing reaches the API server.
    Unavailable,
    /// Answers 429 as API Priority and Fairness does: reason `TooManyRequests`,
    /// `Retry-After: 1`, and no `details.causes` (a PodDisruptionBudget's 429 has one).
    /// Nothing reaches the API server.
    Throttle,
    /// Forwards the request and, once the API server has answered it with success,
    /// aborts the connection instead of passing the answer on: the write is applied, the
    /// client never learns it was. An error answer is passed on and does not count.
    DropAnswer,
    /// Answers 404 with the plain-text page Go's HTTP servers write for a path they do
    /// not serve (`404 page not found`): what a proxy, or an API server that does not
    /// serve the resource's group or version, says. Not a Kubernetes Status naming the
    /// object. Nothing reaches the API server.
    NotFoundPage,
}

/// A [`Fault`] without its parameters, to count injections by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum FaultKind {
    Reset,
    Delay,
    Unavailable,
    Throttle,
    DropAnswer,
    NotFoundPage,
}

impl Fault {
    pub fn kind(&self) -> FaultKind {
        match self {
            Fault::Reset => FaultKind::Reset,
            Fault::Delay(_) => FaultKind::Delay,
            Fault::Unavailable => FaultKind::Unavailable,
            Fault::Throttle => FaultKind::Throttle,
            Fault::DropAnswer => FaultKind::DropAnswer,
            Fault::NotFoundPage => FaultKind::NotFoundPage,
        }
    }
}

/// Which requests get a fault: `method` requests whose path contains a text (and
/// optionally whose query contains another), counted from the proxy's start; of those,
/// after the first `after`, every `every`-th, at most `times` times.
#[derive(Debug, Clone)]
pub struct Rule {
    method: Method,
    path_contains: String,
    query_contains: Option<String>,
    fault: Fault,
    after: u32,
    every: u32,
    times: Option<u32>,
}

impl Rule {
    /// `fault` on every `method` request whose path contains `path_contains`.
    pub fn new(method: Method, path_contains: &str, fault: Fault) -> Rule {
        Rule {
            method,
            path_contains: path_contains.to_owned(),
            query_contains: None,
            fault,
            after: 0,
            every: 1,
            times: None,
        }
    }

    /// Only requests whose query string contains `text` (e.g. `watch=true`).
    pub fn query(mut self, text: &str) -> Rule {
        self.query_contains = Some(text.to_owned());
        self
    }

    /// Leaves the first `n` matching requests alone.
    pub fn after(mut self, n: u32) -> Rule {
        self.after = n;
        self
    }

    /// Every `n`-th matching request (after those left alone): the n-th, the 2n-th, ….
    pub fn every(mut self, n: u32) -> Rule {
        assert!(n >= 1, "every({n}): at least 1");
        self.every = n;
        self
    }

    /// At most `n` injections.
    pub fn times(mut self, n: u32) -> Rule {
        self.times = Some(n);
        self
    }

    fn matches(&self, method: &Method, path: &str, query: &str) -> bool {
        *method == self.method
            && path.contains(&self.path_contains)
            && self
                .query_contains
                .as_deref()
                .is_none_or(|q| query.contains(q))
    }
}

impl std::fmt::Display for Rule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:?} on {} *{}*",
            self.fault, self.method, self.path_contains
        )?;
        if let Some(q) = &self.query_contains {
            write!(f, "?*{q}*")?;
        }
        write!(f, " after {} every {}", self.after, self.every)?;
        if let Some(n) = self.times {
            write!(f, " at most {n} times")?;
        }
        Ok(())
    }
}

/// One fault the proxy injected.
#[derive(Debug, Clone)]
pub struct Injection {
    pub at: jiff::Timestamp,
    /// The rule's number ([`FaultProxy::add`]).
    pub rule: usize,
    pub method: Method,
    /// Path and query.
    pub target: String,
    pub fault: Fault,
    /// The API server's status, for faults that forwarded the request before injecting.
    pub upstream_status: Option<u16>,
}

impl std::fmt::Display for Injection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} rule {} {:?}: {} {}",
            self.at, self.rule, self.fault, self.method, self.target
        )?;
        if let Some(s) = self.upstream_status {
            write!(f, " (API server answered {s})")?;
        }
        Ok(())
    }
}

struct RuleState {
    rule: Rule,
    seen: u32,
    fired: u32,
    stopped: bool,
    /// The API server's status for each request this rule delayed, once forwarded.
    delayed_answers: Vec<u16>,
}

impl RuleState {
    fn exhausted(&self) -> bool {
        self.stopped || self.rule.times.is_some_and(|n| self.fired >= n)
    }
}

#[derive(Default)]
struct Faults {
    rules: Vec<RuleState>,
    injections: Vec<Injection>,
    forwarded: u64,
    /// Woken after every request a rule matched.
    matched: Arc<tokio::sync::Notify>,
}

impl Faults {
    /// Counts the request against every rule it matches; returns the first rule that
    /// fires on it, if any, counted as fired.
    fn decide(&mut self, method: &Method, path: &str, query: &str) -> Option<(usize, Fault)> {
        let mut chosen = None;
        for (i, state) in self.rules.iter_mut().enumerate() {
            if state.exhausted() || !state.rule.matches(method, path, query) {
                continue;
            }
            state.seen += 1;
            let nth = state.seen.saturating_sub(state.rule.after);
            if chosen.is_none() && nth >= 1 && nth % state.rule.every == 0 {
                state.fired += 1;
                chosen = Some((i, state.rule.fault.clone()));
            }
        }
        chosen
    }

    fn record(
        &mut self,
        rule: usize,
        method: &Method,
        target: &str,
        fault: Fault,
        upstream_status: Option<u16>,
    ) {
        let injection = Injection {
            at: jiff::Timestamp::now(),
            rule,
            method: method.clone(),
            target: target.to_owned(),
            fault,
            upstream_status,
        };
        eprintln!("fault proxy: {injection}");
        self.injections.push(injection);
    }
}

type Shared = Arc<Mutex<Faults>>;

fn lock(faults: &Shared) -> std::sync::MutexGuard<'_, Faults> {
    faults.lock().unwrap_or_else(|e| e.into_inner())
}

/// The proxy: serves until dropped.
pub struct FaultProxy {
    port: u16,
    ca_pem: String,
    faults: Shared,
    server: tokio::task::JoinHandle<()>,
}

impl FaultProxy {
    /// Starts the proxy in front of the test cluster's API server (`support::cluster()`).
    pub async fn start() -> FaultProxy {
        FaultProxy::start_for(&super::cluster().kubeconfig).await
    }

    /// Starts the proxy in front of the API server of `kubeconfig` (JSON, as the test
    /// bed writes them), authenticating there as that kubeconfig's user.
    pub async fn start_for(kubeconfig: &Path) -> FaultProxy {
        FaultProxy::start_from(kubeconfig, None).await
    }

    /// As [`FaultProxy::start_for`], connecting to the API server from `source` (an
    /// address in 127.0.0.0/8): the API server's audit log then tells this proxy's
    /// client apart from others by its source address.
    pub async fn start_from(kubeconfig: &Path, source: Option<Ipv4Addr>) -> FaultProxy {
        let upstream = Arc::new(Upstream::from_kubeconfig(kubeconfig, source));
        let (ca_pem, tls) = serving_tls();
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .await
            .expect("bind the fault proxy on 127.0.0.1");
        let port = listener.local_addr().expect("the proxy's address").port();
        let faults = Shared::default();
        let server = tokio::spawn(serve(
            listener,
            TlsAcceptor::from(Arc::new(tls)),
            upstream,
            faults.clone(),
        ));
        FaultProxy {
            port,
            ca_pem,
            faults,
            server,
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `https://127.0.0.1:<port>`.
    pub fn server_url(&self) -> String {
        format!("https://127.0.0.1:{}", self.port)
    }

    /// The CA certificate (PEM) that signed the proxy's serving certificate.
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// Adds a rule (checked after those added before it: a request gets at most one
    /// fault, from the first rule that fires on it); returns its number.
    pub fn add(&self, rule: Rule) -> usize {
        let mut faults = lock(&self.faults);
        faults.rules.push(RuleState {
            rule,
            seen: 0,
            fired: 0,
            stopped: false,
            delayed_answers: Vec::new(),
        });
        faults.rules.len() - 1
    }

    /// No more faults from now on; what was injected stays counted.
    pub fn stop_all(&self) {
        for state in &mut lock(&self.faults).rules {
            state.stopped = true;
        }
    }

    /// How many faults of `kind` were injected.
    pub fn injected(&self, kind: FaultKind) -> usize {
        lock(&self.faults)
            .injections
            .iter()
            .filter(|i| i.fault.kind() == kind)
            .count()
    }

    /// Injections per kind.
    pub fn counts(&self) -> BTreeMap<FaultKind, usize> {
        let mut counts = BTreeMap::new();
        for i in &lock(&self.faults).injections {
            *counts.entry(i.fault.kind()).or_default() += 1;
        }
        counts
    }

    /// How many times rule `rule` injected its fault.
    pub fn fired(&self, rule: usize) -> u32 {
        lock(&self.faults).rules.get(rule).map_or(0, |s| s.fired)
    }

    /// The requests rule `rule` matched so far.
    pub fn seen(&self, rule: usize) -> u32 {
        lock(&self.faults).rules.get(rule).map_or(0, |s| s.seen)
    }

    /// Waits until rule `rule` has matched `n` requests; after `within`, says how many
    /// it matched.
    pub async fn wait_seen(&self, rule: usize, n: u32, within: Duration) -> Result<(), u32> {
        self.wait_until(within, || {
            let seen = self.seen(rule);
            if seen >= n { Ok(()) } else { Err(seen) }
        })
        .await
    }

    /// Waits, woken by every request a rule matches, until `check` is `Ok`; after
    /// `within`, returns its last `Err`.
    async fn wait_until<T, E>(
        &self,
        within: Duration,
        check: impl Fn() -> Result<T, E>,
    ) -> Result<T, E> {
        let matched = lock(&self.faults).matched.clone();
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let notified = matched.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let last = check();
            if last.is_ok() || tokio::time::timeout_at(deadline, notified).await.is_err() {
                return last;
            }
        }
    }

    /// The API server's statuses for the requests rule `rule` delayed, as they came back.
    pub fn delayed_answers(&self, rule: usize) -> Vec<u16> {
        lock(&self.faults)
            .rules
            .get(rule)
            .map(|s| s.delayed_answers.clone())
            .unwrap_or_default()
    }

    /// Waits until rule `rule` has delayed and forwarded `n` requests; after `within`,
    /// says how many it has.
    pub async fn wait_delayed_answers(
        &self,
        rule: usize,
        n: usize,
        within: Duration,
    ) -> Result<Vec<u16>, usize> {
        self.wait_until(within, || {
            let answers = self.delayed_answers(rule);
            if answers.len() >= n {
                Ok(answers)
            } else {
                Err(answers.len())
            }
        })
        .await
    }

    /// Every injection so far, in order.
    pub fn injections(&self) -> Vec<Injection> {
        lock(&self.faults).injections.clone()
    }

    /// Requests forwarded to the API server (including delayed ones and dropped answers).
    pub fn forwarded(&self) -> u64 {
        lock(&self.faults).forwarded
    }

    /// The rules with their counts, and every injection: for failure messages.
    pub fn report(&self) -> String {
        let faults = lock(&self.faults);
        let mut out = format!("fault proxy: {} requests forwarded\n", faults.forwarded);
        for (i, s) in faults.rules.iter().enumerate() {
            out += &format!(
                "  rule {i}: {} — matched {}, fired {}\n",
                s.rule, s.seen, s.fired
            );
        }
        for injection in &faults.injections {
            out += &format!("  {injection}\n");
        }
        out
    }

    /// Writes `dir/agent-via-fault-proxy.kubeconfig`: the proxy as server (its CA
    /// trusted), and the same impersonation of the agent's ServiceAccount as
    /// `agent::service_account_kubeconfig`, without the admin's client certificate (the
    /// proxy authenticates upstream itself).
    pub fn agent_kubeconfig(&self, dir: &Path) -> PathBuf {
        let direct = super::agent::service_account_kubeconfig(dir);
        let text = std::fs::read_to_string(&direct).expect("read the agent's kubeconfig");
        let mut doc: Value = serde_json::from_str(&text).expect("JSON kubeconfig");
        for cluster in doc["clusters"].as_array_mut().expect("clusters") {
            cluster["cluster"] = json!({
                "server": self.server_url(),
                "certificate-authority-data": BASE64.encode(&self.ca_pem),
            });
        }
        for user in doc["users"].as_array_mut().expect("users") {
            let impersonation = &user["user"];
            user["user"] = json!({
                "as": impersonation["as"].clone(),
                "as-groups": impersonation["as-groups"].clone(),
            });
        }
        let path = dir.join("agent-via-fault-proxy.kubeconfig");
        std::fs::write(&path, doc.to_string()).expect("write the agent's kubeconfig");
        path
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        // The connections are tasks of the server's JoinSet: they end with it.
        self.server.abort();
    }
}

/// The CA certificate (PEM) and the TLS configuration serving a certificate it signed
/// for IP 127.0.0.1, offering only HTTP/1.1.
fn serving_tls() -> (String, rustls::ServerConfig) {
    let ca_key = KeyPair::generate().expect("CA key");
    let mut ca_params = CertificateParams::default();
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "fault-proxy-ca");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca = CertifiedIssuer::self_signed(ca_params, ca_key).expect("CA certificate");

    let key = KeyPair::generate().expect("serving key");
    let mut params = CertificateParams::default();
    params
        .distinguished_name
        .push(DnType::CommonName, "fault-proxy");
    params.subject_alt_names = vec![SanType::IpAddress(Ipv4Addr::LOCALHOST.into())];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let cert = params.signed_by(&key, &ca).expect("serving certificate");

    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_no_client_auth()
        .with_single_cert(
            vec![cert.der().clone()],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        )
        .expect("TLS configuration");
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    (ca.pem(), config)
}

/// The real API server, reached over TLS as the kubeconfig's user.
struct Upstream {
    /// `https://host:port`, without a trailing slash.
    base: String,
    client: Client<HttpsConnector<HttpConnector>, Incoming>,
}

/// The named entry of kubeconfig list `list` (`clusters`, `users`, `contexts`), or the
/// first when no name is given.
fn entry<'a>(doc: &'a Value, list: &str, name: Option<&str>) -> &'a Value {
    doc[list]
        .as_array()
        .and_then(|items| match name {
            Some(name) => items.iter().find(|i| i["name"].as_str() == Some(name)),
            None => items.first(),
        })
        .unwrap_or_else(|| panic!("kubeconfig: no {list} entry {name:?}"))
}

/// A PEM from kubeconfig entry `item`: `<field>-data` (base64), else the file `<field>`
/// names (relative paths from the kubeconfig's directory).
fn pem(item: &Value, field: &str, dir: &Path) -> Vec<u8> {
    if let Some(data) = item[format!("{field}-data")].as_str() {
        return BASE64
            .decode(data)
            .unwrap_or_else(|e| panic!("kubeconfig {field}-data: {e}"));
    }
    let file = item[field]
        .as_str()
        .unwrap_or_else(|| panic!("kubeconfig: neither {field} nor {field}-data"));
    let path = dir.join(file);
    std::fs::read(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

impl Upstream {
    fn from_kubeconfig(kubeconfig: &Path, source: Option<Ipv4Addr>) -> Upstream {
        let text = std::fs::read_to_string(kubeconfig)
            .unwrap_or_else(|e| panic!("read {}: {e}", kubeconfig.display()));
        let doc: Value = serde_json::from_str(&text).expect("a JSON kubeconfig");
        let dir = kubeconfig.parent().unwrap_or(Path::new("."));
        let context = &entry(&doc, "contexts", doc["current-context"].as_str())["context"];
        let cluster = &entry(&doc, "clusters", context["cluster"].as_str())["cluster"];
        let user = &entry(&doc, "users", context["user"].as_str())["user"];
        let base = cluster["server"]
            .as_str()
            .expect("kubeconfig: the cluster's server")
            .trim_end_matches('/')
            .to_owned();

        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(&pem(cluster, "certificate-authority", dir)) {
            roots
                .add(cert.expect("the cluster's CA certificate"))
                .expect("trust the cluster's CA");
        }
        let chain = CertificateDer::pem_slice_iter(&pem(user, "client-certificate", dir))
            .collect::<Result<Vec<_>, _>>()
            .expect("the admin's client certificate");
        let key = PrivateKeyDer::from_pem_slice(&pem(user, "client-key", dir))
            .expect("the admin's client key");
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("TLS versions")
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key)
            .expect("client TLS configuration");
        let mut tcp = HttpConnector::new();
        tcp.enforce_http(false);
        tcp.set_local_address(source.map(std::net::IpAddr::V4));
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_only()
            .enable_http1()
            .wrap_connector(tcp);
        Upstream {
            base,
            client: Client::builder(TokioExecutor::new()).build(connector),
        }
    }

    /// Sends `request` (its path and query, every header, its body as it streams in) to
    /// the API server.
    async fn forward(
        &self,
        mut request: Request<Incoming>,
    ) -> Result<Response<Incoming>, hyper_util::client::legacy::Error> {
        let target = request
            .uri()
            .path_and_query()
            .map_or("/", |pq| pq.as_str())
            .to_owned();
        *request.uri_mut() = format!("{}{target}", self.base)
            .parse()
            .expect("an upstream URI");
        self.client.request(request).await
    }
}

/// An accepted TCP connection that, once told to, aborts (TCP reset) instead of
/// closing when dropped: how [`Fault::Reset`] and [`Fault::DropAnswer`] end it.
struct Conn {
    tcp: TcpStream,
    abort: Arc<AtomicBool>,
}

impl Drop for Conn {
    fn drop(&mut self) {
        if self.abort.load(Ordering::SeqCst) {
            let _ = self.tcp.set_zero_linger();
        }
    }
}

impl AsyncRead for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().tcp).poll_read(cx, buf)
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().tcp).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().tcp).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.tcp.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().tcp).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().tcp).poll_shutdown(cx)
    }
}

type ProxyBody = UnsyncBoxBody<Bytes, hyper::Error>;

async fn serve(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    upstream: Arc<Upstream>,
    faults: Shared,
) {
    let mut connections = tokio::task::JoinSet::new();
    loop {
        let tcp = match listener.accept().await {
            Ok((tcp, _)) => tcp,
            Err(e) => {
                eprintln!("fault proxy: accept: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        while connections.try_join_next().is_some() {}
        let abort = Arc::new(AtomicBool::new(false));
        let conn = Conn {
            tcp,
            abort: abort.clone(),
        };
        let (acceptor, upstream, faults) = (acceptor.clone(), upstream.clone(), faults.clone());
        connections.spawn(async move {
            let Ok(tls) = acceptor.accept(conn).await else {
                return;
            };
            let service = service_fn(move |request| {
                handle(request, upstream.clone(), faults.clone(), abort.clone())
            });
            // An error here is a connection the client or a fault ended.
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(tls), service)
                .await;
        });
    }
}

/// A Kubernetes Status answer, as the API server writes its errors.
fn status_answer(code: StatusCode, reason: &str, message: &str) -> Response<ProxyBody> {
    let mut status = json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code.as_u16(),
    });
    let mut answer = Response::builder()
        .status(code)
        .header(http::header::CONTENT_TYPE, "application/json");
    if code == StatusCode::TOO_MANY_REQUESTS {
        status["details"] = json!({ "retryAfterSeconds": 1 });
        answer = answer.header(http::header::RETRY_AFTER, "1");
    }
    answer
        .body(
            Full::new(Bytes::from(status.to_string()))
                .map_err(|never: Infallible| match never {})
                .boxed_unsync(),
        )
        .expect("a Status answer")
}

/// Ends the connection with a reset: the hyper connection fails with this error and
/// drops the connection, which [`Conn`] then aborts.
fn reset(abort: &AtomicBool, why: &str) -> Result<Response<ProxyBody>, std::io::Error> {
    abort.store(true, Ordering::SeqCst);
    Err(std::io::Error::new(
        std::io::ErrorKind::ConnectionReset,
        why.to_owned(),
    ))
}

async fn handle(
    request: Request<Incoming>,
    upstream: Arc<Upstream>,
    faults: Shared,
    abort: Arc<AtomicBool>,
) -> Result<Response<ProxyBody>, std::io::Error> {
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let target = request
        .uri()
        .path_and_query()
        .map_or(path.clone(), |pq| pq.as_str().to_owned());
    let (decided, matched) = {
        let mut faults = lock(&faults);
        let decided = faults.decide(&method, &path, request.uri().query().unwrap_or(""));
        (decided, faults.matched.clone())
    };
    matched.notify_waiters();
    if let Some((rule, fault)) = &decided
        && *fault != Fault::DropAnswer
    {
        lock(&faults).record(*rule, &method, &target, fault.clone(), None);
        match fault {
            Fault::Reset => return reset(&abort, "injected reset"),
            Fault::Unavailable => {
                return Ok(status_answer(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "ServiceUnavailable",
                    "the server is currently unable to handle the request",
                ));
            }
            Fault::Throttle => {
                return Ok(status_answer(
                    StatusCode::TOO_MANY_REQUESTS,
                    "TooManyRequests",
                    "Too many requests, please try again later.",
                ));
            }
            Fault::NotFoundPage => {
                return Ok(Response::builder()
                    .status(StatusCode::NOT_FOUND)
                    .header(http::header::CONTENT_TYPE, "text/plain; charset=utf-8")
                    .body(
                        Full::new(Bytes::from_static(b"404 page not found\n"))
                            .map_err(|never: Infallible| match never {})
                            .boxed_unsync(),
                    )
                    .expect("a 404 page"));
            }
            Fault::Delay(d) => tokio::time::sleep(*d).await,
            Fault::DropAnswer => {}
        }
    }
    lock(&faults).forwarded += 1;
    let response = match upstream.forward(request).await {
        Ok(r) => r,
        Err(e) => {
            // The API server is unreachable: the client sees what it would without us.
            eprintln!("fault proxy: forwarding {method} {target}: {e}");
            return reset(&abort, "upstream unreachable");
        }
    };
    if let Some((rule, Fault::Delay(_))) = &decided {
        let notify = {
            let mut faults = lock(&faults);
            if let Some(state) = faults.rules.get_mut(*rule) {
                state.delayed_answers.push(response.status().as_u16());
            }
            faults.matched.clone()
        };
        notify.notify_waiters();
    }
    if let Some((rule, Fault::DropAnswer)) = decided {
        let status = response.status();
        let mut faults = lock(&faults);
        if status.is_success() {
            faults.record(
                rule,
                &method,
                &target,
                Fault::DropAnswer,
                Some(status.as_u16()),
            );
            drop(faults);
            return reset(&abort, "injected: answer dropped");
        }
        // Not applied: this one does not count, the next match gets the fault.
        if let Some(state) = faults.rules.get_mut(rule) {
            state.fired -= 1;
            state.seen -= 1;
        }
    }
    Ok(response.map(BodyExt::boxed_unsync))
}
