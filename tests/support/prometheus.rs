//! A real Prometheus (Debian's `prometheus` package) for the health-gate tests, started on
//! loopback with its own configuration and data directory, and simulated ztunnel metrics
//! endpoints for it (and the agent) to scrape. The endpoints serve the families ztunnel
//! 1.24–1.28 exports, with its HELP and TYPE lines and labels (`istio/ztunnel`'s
//! metrics modules): connections opened and closed by workload and reporter (a failure
//! is a connection closed with `response_flags` CONNECT; there is no failure counter
//! before 1.29) and the workload manager's proxy gauges, which can follow the pods the
//! API server binds to each node ([`ZtunnelMetricsServer::follow_pods`]).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// One simulated ztunnel's counters.
#[derive(Default, Clone)]
struct Series {
    failed: f64,
    opened: f64,
    closed: f64,
    /// Failed connections per second from now on.
    failed_rate: f64,
    /// `workload_manager_active_proxy_count`.
    active: f64,
    /// `workload_manager_pending_proxy_count`.
    pending: f64,
    /// While following the pods: this ztunnel never enrols them (they stay pending).
    not_enrolling: bool,
    last: Option<Instant>,
    /// Served instead of the metrics (to simulate a broken endpoint).
    body_override: Option<String>,
    /// How long each answer takes (a slow endpoint).
    delay: Duration,
    /// Answer without a Content-Length (the body ends when the connection does).
    hide_length: bool,
    /// Connections held open by workloads at this ztunnel's end.
    open: Vec<OpenSet>,
}

/// `count` connections of workload `namespace/name`, opened when set, all closed
/// evenly over `lifetime` (never, when `None`) from `since` — or, with `until_gone`,
/// open while a pod of the workload (label `app=name`) is on the node, then closed
/// evenly over that (as [`ZtunnelMetricsServer::follow_pods`] sees the pods).
#[derive(Clone)]
struct OpenSet {
    namespace: String,
    name: String,
    count: u64,
    since: Instant,
    lifetime: Option<Duration>,
    until_gone: Option<Duration>,
}

impl OpenSet {
    fn closed(&self, now: Instant) -> u64 {
        match self.lifetime {
            None => 0,
            Some(l) if l.is_zero() => self.count,
            Some(l) => {
                let part = now.duration_since(self.since).as_secs_f64() / l.as_secs_f64();
                ((self.count as f64) * part.min(1.0)).floor() as u64
            }
        }
    }
}

type SharedSeries = Arc<Mutex<HashMap<String, Series>>>;

/// Requests being answered now, and the most at once.
#[derive(Default)]
struct InFlight {
    now: AtomicUsize,
    peak: AtomicUsize,
}

impl InFlight {
    fn enter(&self) {
        let now = self.now.fetch_add(1, Ordering::SeqCst) + 1;
        self.peak.fetch_max(now, Ordering::SeqCst);
    }

    fn leave(&self) {
        self.now.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Simulated ztunnel metrics endpoints, with counters growing at the rates the test sets:
/// either one listener on 127.0.0.1 serving `/metrics/<node>` (any path below
/// `/metrics/<key>/` answers what `set_body(key, …)` set: a broken endpoint or a fake
/// API), or one listener per address serving `/metrics` for its node, as a ztunnel pod
/// with that IP would.
pub struct ZtunnelMetricsServer {
    pub address: SocketAddr,
    series: SharedSeries,
    in_flight: Arc<InFlight>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for ZtunnelMetricsServer {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

fn render(node: &str, s: &mut Series) -> String {
    let now = Instant::now();
    if let Some(last) = s.last {
        let secs = now.duration_since(last).as_secs_f64();
        s.failed += s.failed_rate * secs;
        s.opened += 10.0 * secs;
        s.closed += 10.0 * secs;
    }
    s.last = Some(now);
    if let Some(body) = &s.body_override {
        return body.clone();
    }
    // The connections the test holds open, as ztunnel reports them from the
    // workload's end (reporter="source").
    let (mut opened_open, mut closed_open) = (String::new(), String::new());
    for o in &s.open {
        let labels = format!(
            "reporter=\"source\",source_workload=\"{}\",source_workload_namespace=\"{}\",destination_workload=\"upstream\",destination_workload_namespace=\"elsewhere\",response_flags=\"-\"",
            o.name, o.namespace
        );
        opened_open.push_str(&format!(
            "istio_tcp_connections_opened_total{{{labels}}} {}\n",
            o.count
        ));
        closed_open.push_str(&format!(
            "istio_tcp_connections_closed_total{{{labels}}} {}\n",
            o.closed(now)
        ));
    }
    format!(
        "# HELP istio_tcp_connections_opened The total number of TCP connections opened.\n\
         # TYPE istio_tcp_connections_opened counter\n\
         istio_tcp_connections_opened_total{{reporter=\"destination\",source_workload=\"client\",source_workload_namespace=\"sim\",destination_workload=\"{node}\",destination_workload_namespace=\"sim\",response_flags=\"-\"}} {opened_all}\n\
         {opened_open}\
         # HELP istio_tcp_connections_closed The total number of TCP connections closed.\n\
         # TYPE istio_tcp_connections_closed counter\n\
         istio_tcp_connections_closed_total{{reporter=\"destination\",source_workload=\"client\",source_workload_namespace=\"sim\",destination_workload=\"{node}\",destination_workload_namespace=\"sim\",response_flags=\"-\"}} {closed}\n\
         istio_tcp_connections_closed_total{{reporter=\"destination\",source_workload=\"client\",source_workload_namespace=\"sim\",destination_workload=\"{node}\",destination_workload_namespace=\"sim\",response_flags=\"CONNECT\"}} {failed}\n\
         {closed_open}\
         # HELP workload_manager_active_proxy_count The total number current workloads with active proxies (unstable).\n\
         # TYPE workload_manager_active_proxy_count gauge\n\
         workload_manager_active_proxy_count {active}\n\
         # HELP workload_manager_pending_proxy_count The total number current workloads with pending proxies (unstable).\n\
         # TYPE workload_manager_pending_proxy_count gauge\n\
         workload_manager_pending_proxy_count {pending}\n\
         # EOF\n",
        // ztunnel counts a failed connection as opened, then closed with a failure
        // flag (before 1.29, which adds istio_tcp_connections_failed_total).
        opened_all = s.opened.floor() + s.failed.floor(),
        closed = s.closed.floor(),
        failed = s.failed.floor(),
        active = s.active,
        pending = s.pending,
    )
}

/// Answers each connection with the metrics of `fixed`, or of the node the path names.
async fn accept(
    listener: TcpListener,
    fixed: Option<String>,
    series: SharedSeries,
    in_flight: Arc<InFlight>,
) {
    loop {
        let Ok((mut conn, _)) = listener.accept().await else {
            return;
        };
        let (series, fixed, in_flight) = (series.clone(), fixed.clone(), in_flight.clone());
        tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            let n = conn.read(&mut buf).await.unwrap_or(0);
            let request = String::from_utf8_lossy(&buf[..n]);
            let path = request.split_whitespace().nth(1).unwrap_or("/");
            let path = path.split('?').next().unwrap_or_default();
            // `/metrics/<key>[/...]`; `/metrics` alone is key "".
            let key = fixed.unwrap_or_else(|| {
                path.strip_prefix("/metrics")
                    .map(|rest| rest.trim_start_matches('/'))
                    .and_then(|rest| rest.split('/').next())
                    .unwrap_or("<no key>")
                    .to_owned()
            });
            let answer = {
                let mut all = series.lock().expect("lock");
                all.get_mut(&key)
                    .map(|s| (render(&key, s), s.delay, s.hide_length))
            };
            in_flight.enter();
            let response = match answer {
                Some((b, delay, hide_length)) => {
                    tokio::time::sleep(delay).await;
                    let length = if hide_length {
                        String::new()
                    } else {
                        format!("Content-Length: {}\r\n", b.len())
                    };
                    format!(
                        "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\n{length}Connection: close\r\n\r\n{b}"
                    )
                }
                None => "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                    .into(),
            };
            let _ = conn.write_all(response.as_bytes()).await;
            let _ = conn.shutdown().await;
            in_flight.leave();
        });
    }
}

impl ZtunnelMetricsServer {
    pub async fn start(nodes: &[String]) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let address = listener.local_addr().expect("address");
        Self::serve(vec![(listener, None)], address, nodes)
    }

    pub async fn start_at(addresses: &[(SocketAddr, String)]) -> Self {
        let mut listeners = Vec::new();
        for (address, node) in addresses {
            let l = TcpListener::bind(address)
                .await
                .unwrap_or_else(|e| panic!("bind {address}: {e}"));
            listeners.push((l, Some(node.clone())));
        }
        let nodes: Vec<String> = addresses.iter().map(|(_, n)| n.clone()).collect();
        // The first listener's address as bound (its port, when asked for port 0).
        let address = listeners
            .first()
            .and_then(|(l, _)| l.local_addr().ok())
            .expect("at least one address");
        Self::serve(listeners, address, &nodes)
    }

    fn serve(
        listeners: Vec<(TcpListener, Option<String>)>,
        address: SocketAddr,
        nodes: &[String],
    ) -> Self {
        let series: SharedSeries = Arc::new(Mutex::new(
            nodes
                .iter()
                .map(|n| (n.clone(), Series::default()))
                .collect(),
        ));
        let in_flight = Arc::new(InFlight::default());
        let tasks = listeners
            .into_iter()
            .map(|(l, fixed)| tokio::spawn(accept(l, fixed, series.clone(), in_flight.clone())))
            .collect();
        Self {
            address,
            series,
            in_flight,
            tasks,
        }
    }

    /// Serves `node`'s metrics on `address` too, from now on (a pod IP known only once
    /// the pod exists). The listener stops when the returned task is aborted.
    pub async fn listen(
        &self,
        address: SocketAddr,
        node: &str,
    ) -> std::io::Result<tokio::task::JoinHandle<()>> {
        let listener = TcpListener::bind(address).await?;
        self.series
            .lock()
            .expect("lock")
            .entry(node.to_owned())
            .or_default();
        Ok(tokio::spawn(accept(
            listener,
            Some(node.to_owned()),
            self.series.clone(),
            self.in_flight.clone(),
        )))
    }

    pub fn url(&self, node: &str) -> String {
        format!("http://{}/metrics/{node}", self.address)
    }

    pub fn set_failure_rate(&self, node: &str, per_second: f64) {
        let mut all = self.series.lock().expect("lock");
        let s = all.entry(node.to_owned()).or_default();
        render(node, s);
        s.failed_rate = per_second;
    }

    /// From now on `node`'s ztunnel reports `count` connections of workload
    /// `namespace/name` open, closing evenly over `lifetime` (never when `None`).
    pub fn hold_connections(
        &self,
        node: &str,
        namespace: &str,
        name: &str,
        count: u64,
        lifetime: Option<Duration>,
    ) {
        self.hold(node, namespace, name, count, lifetime, None);
    }

    fn hold(
        &self,
        node: &str,
        namespace: &str,
        name: &str,
        count: u64,
        lifetime: Option<Duration>,
        until_gone: Option<Duration>,
    ) {
        let mut all = self.series.lock().expect("lock");
        all.entry(node.to_owned()).or_default().open.push(OpenSet {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            count,
            since: Instant::now(),
            lifetime,
            until_gone,
        });
    }

    /// From now on `node`'s ztunnel reports `count` connections of workload
    /// `namespace/name` open while a pod of it (label `app=name`) is on the node, as
    /// [`Self::follow_pods`] sees them; once none is, they close evenly over `close_over`.
    pub fn hold_connections_while_on_node(
        &self,
        node: &str,
        namespace: &str,
        name: &str,
        count: u64,
        close_over: Duration,
    ) {
        self.hold(node, namespace, name, count, None, Some(close_over));
    }

    /// When the last connection of workload `name` on `node` closes (or closed), once
    /// they are closing.
    pub fn all_closed_at(&self, node: &str, name: &str) -> Option<Instant> {
        let all = self.series.lock().expect("lock");
        all.get(node)?
            .open
            .iter()
            .find(|o| o.name == name && o.until_gone.is_none())
            .and_then(|o| o.lifetime.map(|l| o.since + l))
    }

    pub fn set_active_proxies(&self, node: &str, count: f64) {
        let mut all = self.series.lock().expect("lock");
        all.entry(node.to_owned()).or_default().active = count;
    }

    /// While the pods are followed, `node`'s ztunnel reports the ambient pods on it as
    /// pending proxies, never active ones: a new ztunnel that does not enrol them.
    pub fn set_not_enrolling(&self, node: &str) {
        let mut all = self.series.lock().expect("lock");
        all.entry(node.to_owned()).or_default().not_enrolling = true;
    }

    /// From now on (until the returned task is aborted) each node's proxy gauges follow
    /// the pods the API server binds to it, as ztunnel's workload manager counts them:
    /// the running, not host-networked pods of `namespace` (enrolled in ambient mode by
    /// the test), ztunnel's own excepted, are active proxies — or pending ones on a node
    /// set not enrolling; the connections held while a workload is on a node close once
    /// it is gone. Read from a list every 200 ms.
    pub fn follow_pods(
        &self,
        client: kube::Client,
        namespace: &str,
    ) -> tokio::task::JoinHandle<()> {
        use k8s_openapi::api::core::v1::Pod;
        let series = self.series.clone();
        let pods: kube::Api<Pod> = kube::Api::namespaced(client, namespace);
        tokio::spawn(async move {
            loop {
                if let Ok(list) = pods.list(&Default::default()).await {
                    let mut on: HashMap<String, f64> = HashMap::new();
                    // (node, namespace, app) of every pod bound and not terminating.
                    let mut present = std::collections::HashSet::new();
                    for p in &list.items {
                        if let (Some(node), Some(app), None) = (
                            p.spec.as_ref().and_then(|s| s.node_name.clone()),
                            p.metadata
                                .labels
                                .as_ref()
                                .and_then(|l| l.get("app"))
                                .cloned(),
                            p.metadata.deletion_timestamp.as_ref(),
                        ) {
                            present.insert((
                                node,
                                p.metadata.namespace.clone().unwrap_or_default(),
                                app,
                            ));
                        }
                        let spec = p.spec.as_ref();
                        let running =
                            p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running");
                        let ztunnel = p.metadata.labels.as_ref().and_then(|l| l.get("app"))
                            == Some(&"ztunnel".to_owned());
                        let host = spec.and_then(|s| s.host_network).unwrap_or(false);
                        if let Some(node) = spec.and_then(|s| s.node_name.clone())
                            && running
                            && !ztunnel
                            && !host
                            && p.metadata.deletion_timestamp.is_none()
                        {
                            *on.entry(node).or_default() += 1.0;
                        }
                    }
                    let mut all = series.lock().expect("lock");
                    let now = Instant::now();
                    for (node, s) in all.iter_mut() {
                        let n = on.get(node).copied().unwrap_or(0.0);
                        (s.active, s.pending) = if s.not_enrolling { (0.0, n) } else { (n, 0.0) };
                        for o in s.open.iter_mut() {
                            if let Some(close_over) = o.until_gone
                                && !present.contains(&(
                                    node.clone(),
                                    o.namespace.clone(),
                                    o.name.clone(),
                                ))
                            {
                                o.since = now;
                                o.lifetime = Some(close_over);
                                o.until_gone = None;
                            }
                        }
                    }
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        })
    }

    pub fn set_body(&self, node: &str, body: &str) {
        let mut all = self.series.lock().expect("lock");
        all.entry(node.to_owned()).or_default().body_override = Some(body.to_owned());
    }

    /// Serves `body` without announcing its length: a reader learns it only by reading.
    pub fn set_body_without_length(&self, node: &str, body: &str) {
        let mut all = self.series.lock().expect("lock");
        let s = all.entry(node.to_owned()).or_default();
        s.body_override = Some(body.to_owned());
        s.hide_length = true;
    }

    /// Each answer for `node` (or key) from now on takes `delay`.
    pub fn set_delay(&self, node: &str, delay: Duration) {
        let mut all = self.series.lock().expect("lock");
        all.entry(node.to_owned()).or_default().delay = delay;
    }

    /// The most requests that were being answered at once, over every key.
    pub fn peak_in_flight(&self) -> usize {
        self.in_flight.peak.load(Ordering::SeqCst)
    }
}

/// A Prometheus server on 127.0.0.1, killed when dropped.
pub struct Prometheus {
    pub url: String,
    child: Child,
    _data: tempfile::TempDir,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    ztunnel_rollout_testbed::control_plane::free_port().expect("a free port")
}

/// What Prometheus scrapes and evaluates besides the simulated ztunnels.
#[derive(Default)]
pub struct AgentScrape<'a> {
    /// The agent's metrics address (`host:port`), scraped as job `ztunnel-rollout`.
    pub agent_metrics: Option<&'a str>,
    /// Rule files Prometheus loads (evaluated every second).
    pub rule_files: &'a [std::path::PathBuf],
}

impl Prometheus {
    /// Starts Prometheus scraping every node's endpoint on `server` each second (job
    /// `ztunnel`, label `node`). Panics with how to install it when it is missing.
    pub async fn start(server: Option<&ZtunnelMetricsServer>, nodes: &[String]) -> Prometheus {
        Self::start_with(server, nodes, &AgentScrape::default()).await
    }

    /// [`Prometheus::start`], also scraping the agent and loading rule files.
    pub async fn start_with(
        server: Option<&ZtunnelMetricsServer>,
        nodes: &[String],
        agent: &AgentScrape<'_>,
    ) -> Prometheus {
        let binary = std::env::var("PROMETHEUS_BINARY").unwrap_or_else(|_| "prometheus".into());
        if Command::new(&binary).arg("--version").output().is_err() {
            panic!(
                "{binary} not found: the health-gate tests need a real Prometheus. Install Debian's \
                 package (`apt-get install prometheus`; e2e/test.sh does it when run as root) or set \
                 PROMETHEUS_BINARY"
            );
        }
        let data = tempfile::tempdir().expect("tempdir");
        let mut config = String::from(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n",
        );
        if let Some(server) = server {
            config.push_str("  - job_name: ztunnel\n    scrape_timeout: 1s\n    static_configs:\n");
            for node in nodes {
                config.push_str(&format!(
                    "      - targets: ['{}']\n        labels: {{node: '{node}', __metrics_path__: '/metrics/{node}'}}\n",
                    server.address
                ));
            }
        }
        if let Some(address) = agent.agent_metrics {
            config.push_str(&format!(
                "  - job_name: ztunnel-rollout\n    scrape_timeout: 1s\n    static_configs:\n      - targets: ['{address}']\n"
            ));
        }
        if !agent.rule_files.is_empty() {
            config.push_str("rule_files:\n");
            for file in agent.rule_files {
                config.push_str(&format!("  - '{}'\n", file.display()));
            }
        }
        let config_path = data.path().join("prometheus.yml");
        std::fs::write(&config_path, config).expect("write the config");
        let port = free_port();
        let log = std::fs::File::create(data.path().join("prometheus.log")).expect("log");
        let child = Command::new(&binary)
            .arg(format!("--config.file={}", config_path.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                data.path().join("tsdb").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start prometheus");
        let p = Prometheus {
            url: format!("http://127.0.0.1:{port}"),
            child,
            _data: data,
        };
        let client = ztunnel_rollout::health::http_client::HttpClient::new();
        let deadline = Instant::now() + Duration::from_secs(60);
        while client
            .get(&format!("{}/-/ready", p.url), Duration::from_secs(1))
            .await
            .is_err()
        {
            assert!(
                Instant::now() < deadline,
                "Prometheus not ready within 60s: {}",
                std::fs::read_to_string(p._data.path().join("prometheus.log")).unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        p
    }

    /// Evaluates `query` now.
    pub async fn query(&self, query: &str) -> Result<Option<f64>, String> {
        ztunnel_rollout::health::prometheus::query(
            &ztunnel_rollout::health::http_client::HttpClient::new(),
            &self.url,
            query,
            None,
            Duration::from_secs(5),
        )
        .await
    }

    /// GETs `path_and_query` of the HTTP API and returns its `data`, failing the test on
    /// an error or an answer that is not `"status": "success"`.
    pub async fn api(&self, path_and_query: &str) -> serde_json::Value {
        let url = format!("{}{path_and_query}", self.url);
        let body = ztunnel_rollout::health::http_client::HttpClient::new()
            .get(&url, Duration::from_secs(5))
            .await
            .unwrap_or_else(|e| panic!("GET {url}: {e}"));
        let answer: serde_json::Value =
            serde_json::from_slice(&body).unwrap_or_else(|e| panic!("GET {url}: {e}"));
        assert_eq!(answer["status"], "success", "GET {url}: {answer}");
        answer["data"].clone()
    }

    /// Evaluates `query` now and returns its instant vector's samples (labels, value).
    pub async fn vector(&self, query: &str) -> Vec<(serde_json::Value, f64)> {
        let params = form_urlencoded::Serializer::new(String::new())
            .append_pair("query", query)
            .finish();
        let data = self.api(&format!("/api/v1/query?{params}")).await;
        assert_eq!(data["resultType"], "vector", "{query}: {data}");
        data["result"]
            .as_array()
            .unwrap_or_else(|| panic!("{query}: no result in {data}"))
            .iter()
            .map(|sample| {
                let value = sample["value"][1]
                    .as_str()
                    .and_then(|v| v.parse::<f64>().ok())
                    .unwrap_or_else(|| panic!("{query}: a sample without a value: {sample}"));
                (sample["metric"].clone(), value)
            })
            .collect()
    }

    /// The alerts Prometheus holds now (pending and firing), from `/api/v1/alerts`.
    pub async fn alerts(&self) -> Vec<serde_json::Value> {
        let data = self.api("/api/v1/alerts").await;
        data["alerts"].as_array().cloned().unwrap_or_default()
    }

    /// Waits until `query` returns at least `value` (e.g. every target scraped twice).
    pub async fn wait_for(&self, query: &str, value: f64) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let got = self.query(query).await;
            if matches!(got, Ok(Some(v)) if v >= value) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{query} is {got:?}, not {value} within 60s"
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
}
