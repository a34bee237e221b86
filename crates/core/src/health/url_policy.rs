//! Which Prometheus URLs a rollout may send the agent to.
//!
//! Whoever may write a ZtunnelRollout chooses the URL the agent queries, from inside the
//! cluster, with the agent's network position (and, with credentials from Secrets, its
//! credentials). Without a limit that is a way to reach addresses the writer could not
//! reach: a cloud's instance metadata service, a control-plane port. So the agent's
//! operator lists the URL prefixes health gates may use (`--allowed-prometheus-url-prefix`)
//! and a rollout whose URL is under none of them is Blocked before any node is touched.
//!
//! Whatever the list says, these are refused: schemes other than `http`/`https`,
//! link-local addresses (169.254.0.0/16, fe80::/10: where the metadata services live) and
//! the other well-known metadata addresses and names, IPv4 addresses written in anything
//! but dotted decimal (`2852039166`, `0xa9fea9fe`, `0251.0376.0251.0376` all name
//! 169.254.169.254), percent-encoded hosts, credentials in the URL, and paths with dot
//! segments (`/allowed/../elsewhere`).
//!
//! A prefix matches a URL that starts with it (compared exactly, as written) where the
//! prefix ends at a boundary: the URL ends there or goes on with `/`, `?` or `#`. So
//! `http://prometheus.monitoring:9090` does not allow
//! `http://prometheus.monitoring:9090.example.com` nor `http://prometheus.monitoring:90901`.
//! A prefix of a scheme and a host only (`http://prometheus.monitoring`) allows any port
//! of that host.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// The agent's flag that lists the allowed prefixes (named in refusals).
pub const FLAG: &str = "--allowed-prometheus-url-prefix";

/// Host names of metadata services, refused as hosts.
const METADATA_NAMES: &[&str] = &[
    "metadata",
    "metadata.google.internal",
    "metadata.goog",
    "instance-data",
    "instance-data.ec2.internal",
    "metadata.azure.internal",
];

/// The parts of an `http(s)://` URL the policy reads.
struct Parts<'a> {
    host: String,
    path: &'a str,
}

fn parts(url: &str) -> Result<Parts<'_>, String> {
    let lower = url.get(..8).unwrap_or(url).to_ascii_lowercase();
    let rest = if lower.starts_with("http://") {
        &url[7..]
    } else if lower.starts_with("https://") {
        &url[8..]
    } else {
        return Err(format!("{url:?} is not an http:// or https:// URL"));
    };
    if url.contains('\\') || url.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!(
            "{url:?} contains a backslash, white space or a control character"
        ));
    }
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    let path_end = tail.find(['?', '#']).unwrap_or(tail.len());
    if authority.contains('@') {
        return Err(format!(
            "{url:?} carries credentials: give them to the agent in a Secret, not in the URL"
        ));
    }
    let host = match authority.strip_prefix('[') {
        Some(v6) => v6.split_once(']').map(|(h, _)| h).unwrap_or(v6),
        None => authority
            .rsplit_once(':')
            .map_or(authority, |(host, _)| host),
    };
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    if host.is_empty() {
        return Err(format!("{url:?} has no host"));
    }
    Ok(Parts {
        host,
        path: &tail[..path_end],
    })
}

/// Why `ip` is refused as a host, if it is.
fn forbidden_ip(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => forbidden_v4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => forbidden_v4(v4),
            None if v6.segments()[0] & 0xffc0 == 0xfe80 => Some("a link-local address"),
            None if v6 == Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254) => {
                Some("a cloud metadata address")
            }
            None if v6.is_unspecified() => Some("the unspecified address"),
            None => None,
        },
    }
}

fn forbidden_v4(v4: Ipv4Addr) -> Option<&'static str> {
    if v4.is_link_local() {
        Some("a link-local address (where cloud metadata services answer)")
    } else if v4 == Ipv4Addr::new(100, 100, 100, 200) {
        Some("a cloud metadata address")
    } else if v4.is_unspecified() {
        Some("the unspecified address")
    } else {
        None
    }
}

/// Whether `label` is a number in some notation (digits, or `0x` and hex digits).
fn numeric(label: &str) -> bool {
    let hex = label
        .strip_prefix("0x")
        .is_some_and(|h| h.chars().all(|c| c.is_ascii_hexdigit()));
    hex || (!label.is_empty() && label.chars().all(|c| c.is_ascii_digit()))
}

/// The refusals that hold whatever the allowed prefixes say: the scheme, the host and
/// the path. Also checks each allowed prefix when the agent starts.
pub fn check_target(url: &str) -> Result<(), String> {
    let p = parts(url)?;
    let host = p.host.as_str();
    if host.contains('%') {
        return Err(format!("{url:?}: a percent-encoded host is refused"));
    }
    if let Ok(ip) = host.parse::<IpAddr>() {
        if let Some(why) = forbidden_ip(ip) {
            return Err(format!("{url:?}: {host} is {why}, always refused"));
        }
    } else if host.split('.').all(numeric) {
        return Err(format!(
            "{url:?}: {host} is an IPv4 address in a notation other than dotted decimal, refused"
        ));
    }
    if METADATA_NAMES.contains(&host) {
        return Err(format!(
            "{url:?}: {host} names a cloud metadata service, always refused"
        ));
    }
    let lower_path = p.path.to_ascii_lowercase();
    if p.path
        .split('/')
        .any(|segment| segment == "." || segment == "..")
        || lower_path.contains("%2e")
        || lower_path.contains("%2f")
    {
        return Err(format!(
            "{url:?}: dot segments (or their percent-encoding) in the path are refused"
        ));
    }
    Ok(())
}

/// Whether `prefix` is a scheme and a host only (no port, no path): it allows any port.
fn bare_host(prefix: &str) -> bool {
    prefix.split_once("://").is_some_and(|(_, rest)| {
        !rest.contains(['/', '?', '#', '@']) && (rest.ends_with(']') || !rest.contains(':'))
    })
}

/// Whether `url` is under `prefix`, ending at a boundary (see the module's docs).
fn under(url: &str, prefix: &str) -> bool {
    let prefix = prefix.trim_end_matches('/');
    let at_boundary = |rest: &str| rest.is_empty() || rest.starts_with(['/', '?', '#']);
    match url.strip_prefix(prefix) {
        Some(rest) if at_boundary(rest) => true,
        Some(rest) if bare_host(prefix) => rest.strip_prefix(':').is_some_and(|port| {
            let digits = port.chars().take_while(char::is_ascii_digit).count();
            digits > 0 && at_boundary(&port[digits..])
        }),
        _ => false,
    }
}

/// `Ok` when health gates may query `url`: not refused by [`check_target`], and under
/// one of `allowed`. The refusal names the URL, the allowed prefixes and the flag.
pub fn check_prometheus_url(url: &str, allowed: &[String]) -> Result<(), String> {
    let allowance = || {
        if allowed.is_empty() {
            format!(
                "the agent allows no Prometheus URL (set {FLAG} on the agent to the URL prefixes health gates may query)"
            )
        } else {
            let list: Vec<String> = allowed.iter().map(|p| format!("{p:?}")).collect();
            format!(
                "the agent allows only URLs under {} ({FLAG})",
                list.join(", ")
            )
        }
    };
    check_target(url).map_err(|e| format!("{e}; {}", allowance()))?;
    if allowed.iter().any(|prefix| under(url, prefix)) {
        return Ok(());
    }
    Err(format!("{url:?} is not allowed: {}", allowance()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn allowed(prefixes: &[&str]) -> Vec<String> {
        prefixes.iter().map(|p| (*p).to_owned()).collect()
    }

    #[test]
    fn urls_under_an_allowed_prefix_pass_at_a_boundary_only() {
        let a = allowed(&[
            "http://prometheus.monitoring:9090",
            "https://thanos.example.com/api/",
        ]);
        for ok in [
            "http://prometheus.monitoring:9090",
            "http://prometheus.monitoring:9090/",
            "http://prometheus.monitoring:9090/prefix",
            "https://thanos.example.com/api",
            "https://thanos.example.com/api/v1",
        ] {
            assert_eq!(check_prometheus_url(ok, &a), Ok(()), "{ok}");
        }
        for refused in [
            "http://prometheus.monitoring:90901",
            "http://prometheus.monitoring:9090.evil.example",
            "https://prometheus.monitoring:9090",
            "https://thanos.example.com/apix",
            "https://thanos.example.com/",
            "http://other:9090",
            "http://prometheus.monitoring",
        ] {
            let e = check_prometheus_url(refused, &a).unwrap_err();
            assert!(
                e.contains(refused)
                    && e.contains("http://prometheus.monitoring:9090")
                    && e.contains(FLAG),
                "{e}"
            );
        }
    }

    #[test]
    fn a_prefix_of_a_host_alone_allows_its_ports_only() {
        let a = allowed(&["http://127.0.0.1", "http://[::1]"]);
        for ok in [
            "http://127.0.0.1",
            "http://127.0.0.1:9090",
            "http://127.0.0.1:9090/x",
            "http://[::1]:9090",
        ] {
            assert_eq!(check_prometheus_url(ok, &a), Ok(()), "{ok}");
        }
        for refused in [
            "http://127.0.0.10:9090",
            "http://127.0.0.1:",
            "http://127.0.0.1:9090x",
            "http://127.0.0.1.example.com",
            "https://127.0.0.1:9090",
        ] {
            assert!(check_prometheus_url(refused, &a).is_err(), "{refused}");
        }
    }

    #[test]
    fn nothing_is_allowed_without_prefixes_and_the_refusal_names_the_flag() {
        let e = check_prometheus_url("http://prometheus:9090", &[]).unwrap_err();
        assert!(
            e.contains("http://prometheus:9090") && e.contains(FLAG),
            "{e}"
        );
    }

    #[test]
    fn metadata_link_local_odd_notations_and_other_schemes_are_refused_even_when_allowed() {
        for url in [
            "http://169.254.169.254",
            "http://169.254.169.254/latest/meta-data",
            "http://169.254.169.254.",
            "http://[fe80::1]:9090",
            "http://[::ffff:169.254.169.254]",
            "http://[fd00:ec2::254]",
            "http://100.100.100.200",
            "http://metadata.google.internal",
            "http://METADATA.google.internal.",
            "http://2852039166",
            "http://0xa9fea9fe",
            "http://0251.0376.0251.0376",
            "http://0.0.0.0:9090",
            "http://%31%36%39.254.169.254",
            "http://user:pw@prometheus:9090",
            "http://prometheus:9090/../admin",
            "http://prometheus:9090/%2e%2e/admin",
            "file:///etc/passwd",
            "gopher://prometheus:9090",
            "ftp://prometheus",
        ] {
            // Even an allowed prefix equal to the URL does not let these through.
            let e = check_prometheus_url(url, &allowed(&[url])).unwrap_err();
            assert!(e.contains(FLAG), "{e}");
        }
    }

    #[test]
    fn plain_hosts_and_addresses_are_targets() {
        for url in [
            "http://prometheus.monitoring.svc:9090",
            "https://10.0.0.7:9090/prom",
            "http://127.0.0.1:9090",
            "http://[::1]:9090",
        ] {
            assert_eq!(check_target(url), Ok(()), "{url}");
        }
    }
}
