//! Durations as users write them in flags and specs.

use std::time::Duration;

use k8s_openapi::jiff::SignedDuration;

/// Parses `90s`, `5m`, `1h30m` (or ISO 8601 `PT5M`); bare numbers and negatives are errors.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let d: SignedDuration = text
        .parse()
        .map_err(|e| format!("{text:?} is not a duration like 90s, 5m or 1h30m: {e}"))?;
    Duration::try_from(d).map_err(|_| format!("{text:?}: a duration cannot be negative"))
}

/// Formats like Go and kubectl: `2m`, `1h30m`, `90ms`, `0s`.
pub fn format_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms < 1000 {
        return if ms == 0 {
            "0s".into()
        } else {
            format!("{ms}ms")
        };
    }
    let secs = d.as_secs();
    let (h, m, s) = (secs / 3600, secs / 60 % 60, secs % 60);
    let mut out = String::new();
    if h > 0 {
        out.push_str(&format!("{h}h"));
    }
    if m > 0 {
        out.push_str(&format!("{m}m"));
    }
    if s > 0 || out.is_empty() {
        out.push_str(&format!("{s}s"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_like_kubectl_flags() {
        assert_eq!(parse_duration("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert!(parse_duration("5").unwrap_err().contains("\"5\""));
        assert!(parse_duration("-5s").unwrap_err().contains("negative"));
    }

    #[test]
    fn durations_format_like_go() {
        assert_eq!(format_duration(Duration::from_secs(120)), "2m");
        assert_eq!(format_duration(Duration::from_secs(5430)), "1h30m30s");
        assert_eq!(format_duration(Duration::from_millis(250)), "250ms");
        assert_eq!(format_duration(Duration::ZERO), "0s");
        assert_eq!(format_duration(Duration::from_secs(3600)), "1h");
    }
}
