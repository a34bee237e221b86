//! The connections still open through a node's old ztunnel, and whether it may be
//! deleted: the decisions of the connections-drained gate, which runs between the drain
//! and the ztunnel pod's delete.
//!
//! Deleting a ztunnel pod resets every connection it proxies. After the drain the old
//! ztunnel still carries the connections of pods the drain does not evict (DaemonSet
//! pods, static pods, pods a filter excluded) and those of evicted pods still closing.
//! ztunnel exports no gauge of open connections, but counts every connection it opens
//! and closes, labelled with both ends' workloads and which end reported it
//! (`reporter`): opened minus closed, for the local end, is what is still open, by
//! workload. ztunnel's counters start at zero with its process, so the difference is
//! over the old pod's lifetime, which is exactly what it would reset.
//!
//! [`read_open`] reads that from a metrics exposition (bounded: at most
//! [`MAX_WORKLOADS`] workloads are kept); [`verdict`] decides with injected time: wait
//! while connections of pods that leave remain, up to the timeout; then the connections
//! left (if any) are the ones the replacement resets.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use k8s_openapi::jiff::{SignedDuration, Timestamp};

use super::exposition;

pub const OPENED: &str = "istio_tcp_connections_opened_total";
pub const CLOSED: &str = "istio_tcp_connections_closed_total";

/// Workloads kept per scrape; the connections of any further ones are summed under
/// [`OTHER_WORKLOADS`], so a scrape's size is bounded whatever the node runs.
pub const MAX_WORKLOADS: usize = 256;
pub const OTHER_WORKLOADS: &str = "(other workloads)";

/// A workload on the node, as ztunnel's metrics name it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Workload {
    pub namespace: String,
    pub name: String,
}

impl std::fmt::Display for Workload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.namespace.is_empty() {
            write!(f, "{}", self.name)
        } else {
            write!(f, "{}/{}", self.namespace, self.name)
        }
    }
}

/// Connections open through the ztunnel, by the local workload.
pub type OpenConnections = BTreeMap<Workload, u64>;

/// The connections open through the ztunnel whose exposition `text` is, by the workload
/// at the node's end: the source when ztunnel reported as the source, the destination
/// when it reported as the destination. A malformed exposition is an error naming the
/// line (never quoting it: the endpoint is not trusted).
pub fn read_open(text: &str) -> Result<OpenConnections, String> {
    let mut sums: BTreeMap<Workload, f64> = BTreeMap::new();
    for sample in exposition::samples(text) {
        let sample = sample.map_err(|e| e.untrusted())?;
        let sign = match sample.metric {
            OPENED => 1.0,
            CLOSED => -1.0,
            _ => continue,
        };
        let end = match sample.label("reporter") {
            Some("destination") => "destination",
            _ => "source",
        };
        let name = sample.label(&format!("{end}_workload")).unwrap_or_default();
        let namespace = sample
            .label(&format!("{end}_workload_namespace"))
            .unwrap_or_default();
        // Names go into status and Events: only what Kubernetes could have named.
        let mut workload = Workload {
            namespace: if kubernetes_name(namespace) {
                namespace.to_owned()
            } else {
                String::new()
            },
            name: if name == "unknown" || !kubernetes_name(name) {
                "(unknown workload)".to_owned()
            } else {
                name.to_owned()
            },
        };
        if !sums.contains_key(&workload) && sums.len() >= MAX_WORKLOADS {
            workload = Workload {
                namespace: String::new(),
                name: OTHER_WORKLOADS.to_owned(),
            };
        }
        let value = if sample.value.is_finite() {
            sample.value
        } else {
            0.0
        };
        *sums.entry(workload).or_default() += sign * value;
    }
    Ok(sums
        .into_iter()
        .filter_map(|(w, n)| (n >= 0.5).then(|| (w, n.round() as u64)))
        .collect())
}

/// Whether `pod` is one the drain leaves on its node while ztunnel proxies it, so that
/// replacing ztunnel resets its connections: running or pending (not finishing), not on
/// the host network, enrolled in ambient mode (its label, else its namespace's:
/// `namespace_ambient`), and a DaemonSet's pod (not ztunnel's own, `ztunnel_uid`) or a
/// static pod. `Some(what it is)`, e.g. `DaemonSet log-agent`.
pub fn reset_on_replace(
    pod: &k8s_openapi::api::core::v1::Pod,
    namespace_ambient: bool,
    ztunnel_uid: Option<&str>,
) -> Option<String> {
    let meta = &pod.metadata;
    let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
    if meta.deletion_timestamp.is_some() || matches!(phase, Some("Succeeded" | "Failed")) {
        return None;
    }
    if pod.spec.as_ref().and_then(|s| s.host_network) == Some(true) {
        return None;
    }
    let mode = meta
        .labels
        .as_ref()
        .and_then(|l| l.get(crate::labels::DATAPLANE_MODE_LABEL));
    if !super::gates::enrolled_in_ambient(mode.map(String::as_str), namespace_ambient) {
        return None;
    }
    let controller = meta
        .owner_references
        .iter()
        .flatten()
        .find(|o| o.controller == Some(true));
    let mirror = meta
        .annotations
        .as_ref()
        .is_some_and(|a| a.contains_key(crate::labels::MIRROR_POD_ANNOTATION));
    match controller {
        Some(o) if o.kind == "DaemonSet" && Some(o.uid.as_str()) != ztunnel_uid => {
            Some(format!("DaemonSet {}", o.name))
        }
        Some(o) if o.kind == "DaemonSet" => None,
        _ if mirror => Some("static pod".to_owned()),
        Some(o) if o.kind == "Node" => Some("static pod".to_owned()),
        _ => None,
    }
}

/// The namespaces enrolled in ambient mode (`istio.io/dataplane-mode=ambient`).
pub fn ambient_namespaces(
    namespaces: &[k8s_openapi::api::core::v1::Namespace],
) -> BTreeSet<String> {
    namespaces
        .iter()
        .filter(|n| {
            n.metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(crate::labels::DATAPLANE_MODE_LABEL))
                .is_some_and(|m| m == "ambient")
        })
        .filter_map(|n| n.metadata.name.clone())
        .collect()
}

/// By node, the pods [`reset_on_replace`] picks, as `namespace/name (what it is)`,
/// sorted.
pub fn resets_by_node(
    pods: &[k8s_openapi::api::core::v1::Pod],
    ambient: &BTreeSet<String>,
    ztunnel_uid: Option<&str>,
) -> BTreeMap<String, Vec<String>> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for p in pods {
        let Some(node) = p.spec.as_ref().and_then(|s| s.node_name.clone()) else {
            continue;
        };
        let ns = p.metadata.namespace.clone().unwrap_or_default();
        if let Some(what) = reset_on_replace(p, ambient.contains(&ns), ztunnel_uid) {
            let name = p.metadata.name.clone().unwrap_or_default();
            out.entry(node)
                .or_default()
                .push(format!("{ns}/{name} ({what})"));
        }
    }
    for pods in out.values_mut() {
        pods.sort();
    }
    out
}

/// A DNS-1123 subdomain: what a Kubernetes workload or namespace can be called.
fn kubernetes_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
}

/// What the gate decides.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// Keep waiting (until `until` at the latest): why.
    Waiting { until: Timestamp, why: String },
    /// Nothing is open: delete now.
    Closed(String),
    /// Connections remain that replacing ztunnel resets: those of pods that stay on
    /// the node only, or any at the timeout. The policy decides.
    Open(String),
}

/// The verdict at `now` on the latest read (`open`, or why it failed), for a gate that
/// started at `started` with `timeout`; `staying` are the node's workloads the drain
/// leaves (their connections never close before ztunnel goes).
pub fn verdict(
    open: Result<&OpenConnections, &str>,
    staying: &BTreeSet<Workload>,
    started: Timestamp,
    now: Timestamp,
    timeout: Duration,
) -> Verdict {
    let until = started
        .checked_add(SignedDuration::try_from(timeout).unwrap_or(SignedDuration::MAX))
        .unwrap_or(Timestamp::MAX);
    let timed_out = now >= until;
    match open {
        Err(why) if timed_out => Verdict::Open(format!(
            "the old ztunnel's connections could not be read for {}s: {why}",
            timeout.as_secs()
        )),
        Err(why) => Verdict::Waiting {
            until,
            why: format!("reading the old ztunnel's connections: {why}"),
        },
        Ok(open) if open.is_empty() => {
            Verdict::Closed("no connection was open through the old ztunnel".to_owned())
        }
        Ok(open) => {
            let leaving: u64 = open
                .iter()
                .filter(|(w, _)| !staying.contains(w))
                .map(|(_, n)| n)
                .sum();
            if leaving == 0 {
                Verdict::Open(summary(open, staying))
            } else if timed_out {
                Verdict::Open(format!(
                    "still open after {}s: {}",
                    timeout.as_secs(),
                    summary(open, staying)
                ))
            } else {
                Verdict::Waiting {
                    until,
                    why: format!(
                        "{leaving} connection(s) through the old ztunnel still closing: {}",
                        summary(open, staying)
                    ),
                }
            }
        }
    }
}

/// Most shown in a summary; the rest are counted.
const SHOWN: usize = 10;

/// "12 connection(s) of default/log-agent (stays on the node), 3 of shop/cart": the
/// largest first, at most [`SHOWN`] workloads.
pub fn summary(open: &OpenConnections, staying: &BTreeSet<Workload>) -> String {
    let mut by_count: Vec<(&Workload, &u64)> = open.iter().collect();
    by_count.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
    let mut parts: Vec<String> = by_count
        .iter()
        .take(SHOWN)
        .enumerate()
        .map(|(i, (w, n))| {
            let what = if i == 0 { "connection(s) of " } else { "of " };
            let stays = if staying.contains(w) {
                " (stays on the node)"
            } else {
                ""
            };
            format!("{n} {what}{w}{stays}")
        })
        .collect();
    if by_count.len() > SHOWN {
        parts.push(format!("and {} more workload(s)", by_count.len() - SHOWN));
    }
    parts.join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w(ns: &str, name: &str) -> Workload {
        Workload {
            namespace: ns.into(),
            name: name.into(),
        }
    }

    fn t(secs: i64) -> Timestamp {
        Timestamp::from_second(1_700_000_000 + secs).unwrap()
    }

    const TEXT: &str = r#"# TYPE istio_tcp_connections_opened counter
istio_tcp_connections_opened_total{reporter="source",source_workload="cart",source_workload_namespace="shop",destination_workload="db",destination_workload_namespace="data"} 10
istio_tcp_connections_opened_total{reporter="destination",source_workload="cart",source_workload_namespace="shop",destination_workload="db",destination_workload_namespace="data"} 4
istio_tcp_connections_opened_total{reporter="source",source_workload="log-agent",source_workload_namespace="infra",destination_workload="sink",destination_workload_namespace="infra"} 2
# TYPE istio_tcp_connections_closed counter
istio_tcp_connections_closed_total{reporter="source",source_workload="cart",source_workload_namespace="shop",destination_workload="db",destination_workload_namespace="data"} 7
istio_tcp_connections_closed_total{reporter="destination",source_workload="cart",source_workload_namespace="shop",destination_workload="db",destination_workload_namespace="data"} 4
istio_tcp_connections_failed_total{reporter="source"} 99
"#;

    #[test]
    fn open_connections_are_opened_minus_closed_by_the_local_end() {
        let open = read_open(TEXT).expect("reads");
        assert_eq!(
            open,
            OpenConnections::from([(w("shop", "cart"), 3), (w("infra", "log-agent"), 2)]),
            "the destination end (data/db) closed all 4; failures are not connections"
        );
        assert_eq!(read_open("").expect("empty"), OpenConnections::new());
    }

    #[test]
    fn a_malformed_exposition_names_the_line_without_quoting_it() {
        let e = read_open("istio_tcp_connections_opened_total{secret-text 1\n").unwrap_err();
        assert!(e.contains("line 1") && !e.contains("secret-text"), "{e}");
        let e =
            read_open("istio_tcp_connections_opened_total{a=\"b\"} secret-value\n").unwrap_err();
        assert!(e.contains("line 1") && !e.contains("secret"), "{e}");
        // Label values that no Kubernetes object could be called are not repeated.
        let open = read_open(
            "istio_tcp_connections_opened_total{reporter=\"source\",source_workload=\"<script>x</script>\",source_workload_namespace=\"Not A Namespace\"} 2\n",
        )
        .expect("reads");
        assert_eq!(
            open,
            OpenConnections::from([(w("", "(unknown workload)"), 2)])
        );
    }

    #[test]
    fn workloads_beyond_the_cap_are_summed_together() {
        let mut text = String::new();
        for i in 0..MAX_WORKLOADS + 5 {
            text.push_str(&format!(
                "istio_tcp_connections_opened_total{{reporter=\"source\",source_workload=\"w{i}\",source_workload_namespace=\"ns\"}} 1\n"
            ));
        }
        let open = read_open(&text).expect("reads");
        assert_eq!(open.len(), MAX_WORKLOADS + 1);
        assert_eq!(open[&w("", OTHER_WORKLOADS)], 5);
    }

    #[test]
    fn it_waits_while_leaving_pods_close_then_decides() {
        let staying = BTreeSet::from([w("infra", "log-agent")]);
        let timeout = Duration::from_secs(30);
        let closing = OpenConnections::from([(w("shop", "cart"), 3), (w("infra", "log-agent"), 2)]);
        match verdict(Ok(&closing), &staying, t(0), t(10), timeout) {
            Verdict::Waiting { until, why } => {
                assert_eq!(until, t(30));
                assert!(why.starts_with("3 connection(s)"), "{why}");
            }
            v => panic!("{v:?}"),
        }
        // Only the DaemonSet pod's remain: no point waiting.
        let stays = OpenConnections::from([(w("infra", "log-agent"), 2)]);
        assert_eq!(
            verdict(Ok(&stays), &staying, t(0), t(11), timeout),
            Verdict::Open("2 connection(s) of infra/log-agent (stays on the node)".into())
        );
        // At the timeout, whatever is open.
        match verdict(Ok(&closing), &staying, t(0), t(30), timeout) {
            Verdict::Open(why) => assert!(
                why.starts_with("still open after 30s: 3 connection(s) of shop/cart, 2 of infra/log-agent (stays on the node)"),
                "{why}"
            ),
            v => panic!("{v:?}"),
        }
        assert!(matches!(
            verdict(Ok(&OpenConnections::new()), &staying, t(0), t(1), timeout),
            Verdict::Closed(_)
        ));
    }

    #[test]
    fn an_unreadable_old_ztunnel_is_waited_for_then_decided_by_the_policy() {
        let staying = BTreeSet::new();
        let timeout = Duration::from_secs(30);
        assert!(matches!(
            verdict(Err("HTTP 503"), &staying, t(0), t(29), timeout),
            Verdict::Waiting { .. }
        ));
        match verdict(Err("HTTP 503"), &staying, t(0), t(30), timeout) {
            Verdict::Open(why) => {
                assert!(why.contains("could not be read") && why.contains("HTTP 503"))
            }
            v => panic!("{v:?}"),
        }
    }

    #[test]
    fn enrolled_daemonset_and_static_pods_are_the_ones_a_replacement_resets() {
        let pod = |v: serde_json::Value| -> k8s_openapi::api::core::v1::Pod {
            serde_json::from_value(v).unwrap()
        };
        let ds = |name: &str, uid: &str| serde_json::json!([{ "apiVersion": "apps/v1", "kind": "DaemonSet", "name": name, "uid": uid, "controller": true }]);
        let log = pod(
            serde_json::json!({ "metadata": { "name": "log-1", "ownerReferences": ds("log-agent", "u1") } }),
        );
        assert_eq!(
            reset_on_replace(&log, true, Some("zt")),
            Some("DaemonSet log-agent".into())
        );
        assert_eq!(
            reset_on_replace(&log, false, Some("zt")),
            None,
            "not enrolled"
        );
        let opted_in = pod(
            serde_json::json!({ "metadata": { "name": "log-1", "labels": { "istio.io/dataplane-mode": "ambient" }, "ownerReferences": ds("log-agent", "u1") } }),
        );
        assert!(
            reset_on_replace(&opted_in, false, None).is_some(),
            "enrolled by its label"
        );
        let ztunnel = pod(
            serde_json::json!({ "metadata": { "name": "zt-1", "ownerReferences": ds("ztunnel", "zt") } }),
        );
        assert_eq!(reset_on_replace(&ztunnel, true, Some("zt")), None);
        let host = pod(
            serde_json::json!({ "metadata": { "name": "h", "ownerReferences": ds("node-exporter", "u2") }, "spec": { "hostNetwork": true, "containers": [] } }),
        );
        assert_eq!(reset_on_replace(&host, true, None), None, "not captured");
        let mirror = pod(
            serde_json::json!({ "metadata": { "name": "etcd-n1", "annotations": { "kubernetes.io/config.mirror": "x" } } }),
        );
        assert_eq!(
            reset_on_replace(&mirror, true, None),
            Some("static pod".into())
        );
        let app = pod(
            serde_json::json!({ "metadata": { "name": "cart-1", "ownerReferences": [{ "apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "cart-x", "uid": "r", "controller": true }] } }),
        );
        assert_eq!(
            reset_on_replace(&app, true, None),
            None,
            "the drain moves it"
        );
    }

    #[test]
    fn a_summary_shows_the_largest_first_and_counts_the_rest() {
        let open: OpenConnections = (0..12)
            .map(|i| (w("ns", &format!("w{i:02}")), i + 1))
            .collect();
        let s = summary(&open, &BTreeSet::new());
        assert!(
            s.starts_with("12 connection(s) of ns/w11, 11 of ns/w10"),
            "{s}"
        );
        assert!(s.ends_with("and 2 more workload(s)"), "{s}");
    }
}
