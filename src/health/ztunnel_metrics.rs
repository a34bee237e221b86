//! Scrapes a ztunnel pod's metrics endpoint (Prometheus text format) for the gauges and
//! counters the ztunnel gate reads.

use std::collections::BTreeMap;
use std::time::Duration;

use prometheus_parse::{LineInfo, Scrape, Value};

use super::gates::ZtunnelScrape;
use super::http_client::HttpClient;

pub const PENDING_PROXIES: &str = "workload_manager_pending_proxy_count";
pub const ACTIVE_PROXIES: &str = "workload_manager_active_proxy_count";
pub const FAILED_CONNECTIONS: &str = "istio_tcp_connections_failed_total";
pub const OPENED_CONNECTIONS: &str = "istio_tcp_connections_opened_total";
pub const CLOSED_CONNECTIONS: &str = "istio_tcp_connections_closed_total";

/// Fetches `http://IP:PORT/metrics` and reads it.
pub async fn scrape(
    client: &HttpClient,
    pod: &str,
    ip: &str,
    port: u16,
    at: f64,
    timeout: Duration,
) -> Result<ZtunnelScrape, String> {
    let host = if ip.contains(':') {
        format!("[{ip}]")
    } else {
        ip.to_owned()
    };
    let url = format!("http://{host}:{port}/metrics");
    let body = client
        .get(&url, timeout)
        .await
        .map_err(|e| format!("ztunnel pod {pod} metrics {e}"))?;
    let text = std::str::from_utf8(&body)
        .map_err(|_| format!("ztunnel pod {pod} metrics at {url} are not UTF-8 text"))?;
    read(text, at).map_err(|e| format!("ztunnel pod {pod} metrics at {url}: {e}"))
}

/// Reads the ztunnel gate's metrics from an exposition; any line that is not in the
/// text format makes the whole answer malformed (never a silent partial read).
pub fn read(text: &str, at: f64) -> Result<ZtunnelScrape, String> {
    for (i, line) in text.lines().enumerate() {
        let trimmed = line.trim();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        let valid = match LineInfo::parse(trimmed) {
            LineInfo::Sample {
                value, timestamp, ..
            } => value.parse::<f64>().is_ok() && timestamp.is_none_or(|t| t.parse::<i64>().is_ok()),
            _ => false,
        };
        if !valid {
            return Err(format!(
                "malformed: line {} is not in the Prometheus text format: {:?}",
                i + 1,
                trimmed.chars().take(80).collect::<String>()
            ));
        }
    }
    let scrape = Scrape::parse(text.lines().map(|l| Ok(l.to_owned())))
        .map_err(|e| format!("malformed: {e}"))?;
    let values = |name: &'static str| {
        scrape
            .samples
            .iter()
            .filter(move |s| s.metric == name)
            .filter_map(|s| match s.value {
                Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => Some((s, v)),
                _ => None,
            })
    };
    let sum = |name: &'static str| -> Option<f64> {
        let all: Vec<f64> = values(name).map(|(_, v)| v).collect();
        (!all.is_empty()).then(|| all.iter().sum())
    };
    let mut failed_by_flags: BTreeMap<String, f64> = BTreeMap::new();
    for (s, v) in values(FAILED_CONNECTIONS) {
        let flags = s.labels.get("response_flags").unwrap_or("-").to_owned();
        *failed_by_flags.entry(flags).or_default() += v;
    }
    Ok(ZtunnelScrape {
        at,
        pending_proxies: sum(PENDING_PROXIES),
        active_proxies: sum(ACTIVE_PROXIES),
        failed_connections: sum(FAILED_CONNECTIONS),
        failed_by_flags,
        opened_connections: sum(OPENED_CONNECTIONS),
        closed_connections: sum(CLOSED_CONNECTIONS),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_gate_metrics_are_read_and_summed_over_series() {
        let text = "\
# HELP workload_manager_active_proxy_count The total number active workloads
# TYPE workload_manager_active_proxy_count gauge
workload_manager_active_proxy_count 3
# TYPE workload_manager_pending_proxy_count gauge
workload_manager_pending_proxy_count 0
# TYPE istio_tcp_connections_failed_total counter
istio_tcp_connections_failed_total{reporter=\"destination\",response_flags=\"CONNECT\"} 4
istio_tcp_connections_failed_total{reporter=\"source\",response_flags=\"-\"} 1
";
        let s = read(text, 1.0).unwrap();
        assert_eq!(s.active_proxies, Some(3.0));
        assert_eq!(s.pending_proxies, Some(0.0));
        assert_eq!(s.failed_connections, Some(5.0));
        assert_eq!(
            s.failed_by_flags,
            BTreeMap::from([("CONNECT".to_owned(), 4.0), ("-".to_owned(), 1.0)])
        );
        assert_eq!(s.opened_connections, None);
        let empty = read("# nothing yet\n", 1.0).unwrap();
        assert_eq!(empty.active_proxies, None);
    }

    #[test]
    fn a_malformed_exposition_is_an_error_naming_the_line() {
        let e = read(
            "workload_manager_active_proxy_count 3\n<html>oops</html>\n",
            0.0,
        )
        .unwrap_err();
        assert!(e.contains("line 2") && e.contains("<html>"), "{e}");
    }
}
