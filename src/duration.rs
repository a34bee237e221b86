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
}
