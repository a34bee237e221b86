//! What an API server's answer to a request means for a decision. The shell turns its
//! client's error into an [`ApiFailure`]; the decisions read it through [`Fault`], which
//! tells the API's own trouble (unreachable, 5xx, throttling, a stale read) from a real
//! refusal. Only refusals and workload verdicts may fail a node; the rest is retried.

use std::time::Duration;

/// An error status (`metav1.Status`) as far as the decisions read it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ApiStatus {
    pub code: u16,
    /// CamelCase reason (`TooManyRequests`, `Conflict`, …).
    pub reason: String,
    pub message: String,
    /// The causes' reasons and messages.
    pub causes: Vec<(String, String)>,
    /// `details.retryAfterSeconds`, 0 when absent.
    pub retry_after_seconds: u32,
}

/// A request that did not succeed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApiFailure {
    /// The API server answered with an error status.
    Status(ApiStatus),
    /// No answer: connection refused or reset, timeout, TLS, a body that did not parse.
    Transport(String),
}

/// The cause type of the 429 the Eviction API answers when a PodDisruptionBudget allows
/// no disruption.
pub const DISRUPTION_BUDGET_CAUSE: &str = "DisruptionBudget";

/// What the failure means for whoever retries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// Throttled by API Priority and Fairness (429 without a budget cause): retry after
    /// `retry_after`, or with backoff.
    Throttled {
        retry_after: Option<Duration>,
    },
    /// The API is not answering properly (transport errors, 5xx): retry with backoff.
    Unavailable(String),
    /// A precondition (resourceVersion) did not hold: read again, then retry.
    Conflict,
    NotFound,
    /// Retrying the same request cannot help (400, 401, 403, 422, and 429 from a
    /// PodDisruptionBudget, which callers handle themselves).
    Refused(String),
}

impl Fault {
    /// Whether the API itself is in trouble (a retry may succeed without anything else
    /// changing).
    pub fn is_transient(&self) -> bool {
        matches!(self, Fault::Throttled { .. } | Fault::Unavailable(_))
    }
}

impl ApiStatus {
    /// The status's message, else its reason.
    pub fn text(&self) -> &str {
        if self.message.is_empty() {
            &self.reason
        } else {
            &self.message
        }
    }

    pub fn has_cause(&self, reason: &str) -> bool {
        self.causes.iter().any(|(r, _)| r == reason)
    }

    pub fn retry_after(&self) -> Option<Duration> {
        (self.retry_after_seconds > 0).then(|| Duration::from_secs(self.retry_after_seconds.into()))
    }
}

impl ApiFailure {
    pub fn fault(&self) -> Fault {
        let status = match self {
            ApiFailure::Transport(e) => return Fault::Unavailable(e.clone()),
            ApiFailure::Status(s) => s,
        };
        match status.code {
            404 => Fault::NotFound,
            409 => Fault::Conflict,
            429 if status.has_cause(DISRUPTION_BUDGET_CAUSE) => {
                Fault::Refused(status.text().to_owned())
            }
            429 => Fault::Throttled {
                retry_after: status.retry_after(),
            },
            500..=599 => Fault::Unavailable(format!("{} ({})", status.text(), status.code)),
            _ => Fault::Refused(format!("{} ({})", status.text(), status.code)),
        }
    }
}

impl std::fmt::Display for ApiFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ApiFailure::Transport(e) => write!(f, "no answer from the API server: {e}"),
            ApiFailure::Status(s) => write!(f, "{} (HTTP {})", s.text(), s.code),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(code: u16, reason: &str, cause: Option<&str>, retry: u32) -> ApiFailure {
        ApiFailure::Status(ApiStatus {
            code,
            reason: reason.into(),
            message: format!("{reason} message"),
            causes: cause
                .map(|c| (c.to_owned(), String::new()))
                .into_iter()
                .collect(),
            retry_after_seconds: retry,
        })
    }

    #[test]
    fn throttling_is_told_apart_from_a_budget_refusal() {
        assert_eq!(
            status(429, "TooManyRequests", None, 2).fault(),
            Fault::Throttled {
                retry_after: Some(Duration::from_secs(2))
            }
        );
        assert!(matches!(
            status(429, "TooManyRequests", Some(DISRUPTION_BUDGET_CAUSE), 10).fault(),
            Fault::Refused(_)
        ));
    }

    #[test]
    fn the_api_in_trouble_is_transient_and_refusals_are_not() {
        assert!(
            ApiFailure::Transport("connection reset".into())
                .fault()
                .is_transient()
        );
        assert!(
            status(503, "ServiceUnavailable", None, 0)
                .fault()
                .is_transient()
        );
        assert!(status(500, "InternalError", None, 0).fault().is_transient());
        assert_eq!(status(409, "Conflict", None, 0).fault(), Fault::Conflict);
        assert_eq!(status(404, "NotFound", None, 0).fault(), Fault::NotFound);
        for code in [400, 403, 422] {
            let f = status(code, "Forbidden", None, 0).fault();
            assert!(
                matches!(f, Fault::Refused(_)) && !f.is_transient(),
                "{code}"
            );
        }
    }
}
