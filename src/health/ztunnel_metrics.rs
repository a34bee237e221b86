//! Scrapes a ztunnel pod's metrics endpoint (Prometheus text format) for the gauges and
//! counters the ztunnel gate reads. The exposition is read in one pass, while the
//! request's slot is held (see [`super::http_client`]), keeping only the few sums the
//! gate needs: its size is capped, and nothing of it outlives the scrape.

use std::collections::BTreeMap;

use ztunnel_rollout_core::health::exposition;

use super::gates::ZtunnelScrape;
use super::http_client::{Bounds, HttpClient};

pub const PENDING_PROXIES: &str = "workload_manager_pending_proxy_count";
pub const ACTIVE_PROXIES: &str = "workload_manager_active_proxy_count";
pub const FAILED_CONNECTIONS: &str = "istio_tcp_connections_failed_total";
pub const OPENED_CONNECTIONS: &str = "istio_tcp_connections_opened_total";
pub const CLOSED_CONNECTIONS: &str = "istio_tcp_connections_closed_total";

/// Distinct `response_flags` kept per scrape (ztunnel has a handful); failures with
/// further flags are summed under [`OTHER_FLAGS`], so a scrape's size stays bounded.
pub const MAX_FLAGS: usize = 32;
pub const OTHER_FLAGS: &str = "(other flags)";

/// `http://IP:PORT/metrics`, an IPv6 address in brackets.
pub fn metrics_url(ip: &str, port: u16) -> String {
    if ip.contains(':') {
        format!("http://[{ip}]:{port}/metrics")
    } else {
        format!("http://{ip}:{port}/metrics")
    }
}

/// Fetches `http://IP:PORT/metrics` and reads it.
pub async fn scrape(
    client: &HttpClient,
    pod: &str,
    ip: &str,
    port: u16,
    at: f64,
    bounds: impl Into<Bounds>,
) -> Result<ZtunnelScrape, String> {
    let url = metrics_url(ip, port);
    client
        .fetch(&url, bounds, |body| match std::str::from_utf8(body) {
            Ok(text) => {
                read(text, at).map_err(|e| format!("ztunnel pod {pod} metrics at {url}: {e}"))
            }
            Err(_) => Err(format!(
                "ztunnel pod {pod} metrics at {url} are not UTF-8 text"
            )),
        })
        .await
        .map_err(|e| format!("ztunnel pod {pod} metrics {e}"))?
}

/// Reads the ztunnel gate's metrics from an exposition, summed over their series; any
/// line that is not in the text format makes the whole answer malformed (never a silent
/// partial read). The grammar is the core's [`exposition`].
pub fn read(text: &str, at: f64) -> Result<ZtunnelScrape, String> {
    // ztunnel before 1.29 has no failure counter: a failed connection is one closed
    // with `response_flags` DENY (refused by policy) or CONNECT (the upstream could
    // not be reached), on the inbound side.
    let mut closed_failed = 0.0;
    let mut closed_failed_by_flags: BTreeMap<String, f64> = BTreeMap::new();
    let mut out = ZtunnelScrape {
        at,
        pending_proxies: None,
        active_proxies: None,
        failed_connections: None,
        failed_by_flags: BTreeMap::new(),
        opened_connections: None,
        closed_connections: None,
    };
    for sample in exposition::samples(text) {
        let sample = sample.map_err(|e| e.untrusted())?;
        let sum = match sample.metric {
            PENDING_PROXIES => &mut out.pending_proxies,
            ACTIVE_PROXIES => &mut out.active_proxies,
            FAILED_CONNECTIONS => &mut out.failed_connections,
            OPENED_CONNECTIONS => &mut out.opened_connections,
            CLOSED_CONNECTIONS => &mut out.closed_connections,
            _ => continue,
        };
        *sum = Some(sum.unwrap_or(0.0) + sample.value);
        let flags = sample.label("response_flags").unwrap_or("-");
        // On the inbound side only: a connection between two pods of the node is closed
        // on both sides, and only the destination's close names the failure.
        if sample.metric == CLOSED_CONNECTIONS
            && flags != "-"
            && sample.label("reporter") == Some("destination")
        {
            closed_failed += sample.value;
            let key = flag_key(flags, &closed_failed_by_flags);
            *closed_failed_by_flags.entry(key).or_default() += sample.value;
        }
        if sample.metric == FAILED_CONNECTIONS {
            let key = flag_key(flags, &out.failed_by_flags);
            *out.failed_by_flags.entry(key).or_default() += sample.value;
        }
    }
    if out.failed_connections.is_none() && out.closed_connections.is_some() {
        out.failed_connections = Some(closed_failed);
        out.failed_by_flags = closed_failed_by_flags;
    }
    Ok(out)
}

/// The key failures with `flags` are counted under: the flags themselves, if they are
/// a short token and fewer than [`MAX_FLAGS`] are kept, else [`OTHER_FLAGS`].
fn flag_key(flags: &str, kept: &BTreeMap<String, f64>) -> String {
    // Flags are short tokens (`UF`, `DC,UF`); anything else is not repeated.
    let token = !flags.is_empty()
        && flags.len() <= 32
        && flags
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | ',' | '-'));
    if token && (kept.len() < MAX_FLAGS || kept.contains_key(flags)) {
        flags.to_owned()
    } else {
        OTHER_FLAGS.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// ztunnel 1.24–1.28: no failure counter; failures are the connections closed with
    /// DENY or CONNECT (HELP/TYPE lines and labels as ztunnel writes them).
    #[test]
    fn without_a_failure_counter_failures_are_connections_closed_with_a_failure_flag() {
        let text = "# HELP istio_tcp_connections_opened The total number of TCP connections opened.\n\
# TYPE istio_tcp_connections_opened counter\n\
istio_tcp_connections_opened_total{reporter=\"destination\",source_workload=\"a\",response_flags=\"-\"} 20\n\
# HELP istio_tcp_connections_closed The total number of TCP connections closed.\n\
# TYPE istio_tcp_connections_closed counter\n\
istio_tcp_connections_closed_total{reporter=\"destination\",source_workload=\"a\",response_flags=\"-\"} 10\n\
istio_tcp_connections_closed_total{reporter=\"destination\",source_workload=\"a\",response_flags=\"CONNECT\"} 4\n\
istio_tcp_connections_closed_total{reporter=\"destination\",source_workload=\"b\",response_flags=\"DENY\"} 2\n\
# EOF\n";
        let s = read(text, 1.0).expect("reads");
        assert_eq!(s.failed_connections, Some(6.0));
        assert_eq!(
            s.failed_by_flags,
            BTreeMap::from([("CONNECT".to_owned(), 4.0), ("DENY".to_owned(), 2.0)])
        );
        assert_eq!(s.closed_connections, Some(16.0));
        // No connection counters at all: no data, not zero failures.
        let s = read("workload_manager_active_proxy_count 0\n", 1.0).expect("reads");
        assert_eq!(s.failed_connections, None);
    }

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
    fn response_flags_are_read_from_quoted_labels_and_bounded_in_number() {
        let text = "\
istio_tcp_connections_failed_total{response_flags=\"DC,UF\",reporter=\"a\"} 2
istio_tcp_connections_failed_total{reporter=\"say \\\"hi\\\", then=go\",response_flags=\"CONNECT\"} 3
istio_tcp_connections_failed_total 1
";
        let s = read(text, 0.0).unwrap();
        assert_eq!(
            s.failed_by_flags,
            BTreeMap::from([
                ("DC,UF".to_owned(), 2.0),
                ("CONNECT".to_owned(), 3.0),
                ("-".to_owned(), 1.0)
            ])
        );
        let many: String = (0..100)
            .map(|i| format!("{FAILED_CONNECTIONS}{{response_flags=\"F{i:03}\"}} 1\n"))
            .collect();
        let s = read(&many, 0.0).unwrap();
        assert_eq!(s.failed_connections, Some(100.0));
        assert_eq!(s.failed_by_flags.len(), MAX_FLAGS + 1);
        assert_eq!(s.failed_by_flags.get(OTHER_FLAGS), Some(&68.0));
        assert_eq!(s.failed_by_flags.get("F000"), Some(&1.0));
        let s = read(
            &format!("{FAILED_CONNECTIONS}{{response_flags=\"x\\ny\"}} 1\n"),
            0.0,
        )
        .unwrap();
        // Read (escapes and all), but not a short token: not repeated into status.
        assert_eq!(s.failed_by_flags.get(OTHER_FLAGS), Some(&1.0));
        assert!(!s.failed_by_flags.contains_key("x\ny"));
        let e = read(
            &format!("{FAILED_CONNECTIONS}{{response_flags=x}} 1\n"),
            0.0,
        )
        .unwrap_err();
        assert!(
            e.contains("line 1") && e.contains("not in the Prometheus text format"),
            "unquoted: {e}"
        );
    }

    #[test]
    fn a_malformed_exposition_is_an_error_naming_the_line_not_quoting_it() {
        let e = read(
            "workload_manager_active_proxy_count 3\n<html>oops</html>\n",
            0.0,
        )
        .unwrap_err();
        assert!(e.contains("line 2") && !e.contains("oops"), "{e}");
        let e = read("m{secret_label=\"x\"} not-a-number-secret\n", 0.0).unwrap_err();
        assert!(e.contains("line 1") && !e.contains("secret"), "{e}");
    }

    #[test]
    fn response_flags_other_than_short_tokens_are_not_repeated() {
        let text = format!(
            "{FAILED_CONNECTIONS}{{response_flags=\"<script>secret text</script>\"}} 2\n{FAILED_CONNECTIONS}{{response_flags=\"UF\"}} 1\n"
        );
        let s = read(&text, 0.0).unwrap();
        assert_eq!(
            s.failed_by_flags,
            BTreeMap::from([(OTHER_FLAGS.to_owned(), 2.0), ("UF".to_owned(), 1.0)])
        );
    }
}
