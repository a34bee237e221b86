//! How the command line says what went wrong, and when it tries again. An API server
//! that is starting up, or sheds load, answers 429 or 503 with `Retry-After` before it
//! processes a request: a command that met one runs again after the asked delay, a few
//! times; so does one whose conditional write met a newer version of its object (409
//! Conflict), reading the object again. Errors print the API server's message, the HTTP code and what to do — never a
//! Rust `Debug` dump of the response.

use std::future::Future;
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};

/// How many times a command runs at most when the API server asks to retry.
const ATTEMPTS: usize = 5;
/// The longest single wait, whatever `Retry-After` says.
const LONGEST_WAIT: Duration = Duration::from_secs(5);

/// The API server's answer in an error chain, if there is one.
fn api_status(e: &anyhow::Error) -> Option<&kube::core::Status> {
    e.chain()
        .find_map(|c| match c.downcast_ref::<kube::Error>() {
            Some(kube::Error::Api(s)) => Some(s.as_ref()),
            _ => None,
        })
}

/// Whether to run the command again, and after how long at least: the API server
/// refused the request before processing it (429 or 503 with `Retry-After`), or a
/// conditional write met a newer version of the object (409 Conflict: nothing was
/// written, and the command reads the object again before it writes).
fn asked_to_retry(e: &anyhow::Error) -> Option<Duration> {
    let s = api_status(e)?;
    if s.code == 409 && s.reason == "Conflict" {
        return Some(Duration::ZERO);
    }
    let after = s.details.as_ref().map_or(0, |d| d.retry_after_seconds);
    (matches!(s.code, 429 | 503) && after > 0).then(|| Duration::from_secs(u64::from(after)))
}

/// Runs `command` again (bounded, with backoff) while the API server asks to retry.
pub async fn retrying<T, F, Fut>(mut command: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<T>>,
{
    let mut backoff = ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(500))
        .with_max_delay(LONGEST_WAIT)
        .with_max_times(ATTEMPTS - 1)
        .build();
    loop {
        match command().await {
            Err(e) => match (asked_to_retry(&e), backoff.next()) {
                (Some(asked), Some(next)) => {
                    let wait = asked.min(LONGEST_WAIT).max(next);
                    eprintln!(
                        "the API server asks to retry ({}); again in {:.1}s",
                        api_status(&e).map_or_else(String::new, |s| s.message.clone()),
                        wait.as_secs_f64()
                    );
                    tokio::time::sleep(wait).await;
                }
                _ => return Err(e),
            },
            ok => return ok,
        }
    }
}

/// What to do about an API server's answer, by its code.
fn advice(code: u16) -> &'static str {
    match code {
        401 => "check the kubeconfig's credentials",
        403 => "the user lacks a permission (see manifests/ for the agent's, kubectl auth can-i)",
        404 => "check the name and the namespace",
        409 => {
            "it already exists, or changed meanwhile: check it with kubectl get, then run the command again if needed"
        }
        422 => "the API server refused the value; see the message",
        429 | 503 => "the API server is busy or starting; run the command again in a moment",
        500..=599 => {
            "the API server failed; run the command again, and check its health if it persists"
        }
        _ => "",
    }
}

/// One line for `e`: its causes, each said once, API answers as message, code and advice.
pub fn describe(e: &anyhow::Error) -> String {
    let mut message = String::new();
    for cause in e.chain() {
        let text = match cause.downcast_ref::<kube::Error>() {
            Some(kube::Error::Api(s)) => {
                let advice = advice(s.code);
                let mut text = format!("{} (HTTP {} {})", s.message, s.code, s.reason);
                if !advice.is_empty() {
                    text.push_str(&format!(": {advice}"));
                }
                text
            }
            _ => cause.to_string(),
        };
        // Many errors repeat their source in their own message; say each thing once.
        if !message.contains(&text) {
            if !message.is_empty() {
                message.push_str(": ");
            }
            message.push_str(&text);
        }
        if matches!(
            cause.downcast_ref::<kube::Error>(),
            Some(kube::Error::Api(_))
        ) {
            break; // Its sources repeat it in Debug form.
        }
    }
    message
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api(code: u16, reason: &str, retry_after: u32) -> anyhow::Error {
        let status = kube::core::Status {
            message: "storage is (re)initializing".into(),
            reason: reason.into(),
            code,
            details: Some(kube::core::response::StatusDetails {
                name: String::new(),
                group: String::new(),
                kind: String::new(),
                uid: String::new(),
                causes: Vec::new(),
                retry_after_seconds: retry_after,
            }),
            ..Default::default()
        };
        anyhow::Error::new(kube::Error::Api(Box::new(status))).context("listing ztunnelrollouts")
    }

    #[test]
    fn an_api_answer_is_said_plainly_with_what_to_do() {
        let text = describe(&api(429, "TooManyRequests", 1));
        assert_eq!(
            text,
            "listing ztunnelrollouts: storage is (re)initializing (HTTP 429 TooManyRequests): the API server is busy or starting; run the command again in a moment"
        );
        assert!(!text.contains("Status {"), "{text}");
    }

    #[tokio::test]
    async fn a_command_runs_again_while_the_api_server_asks_then_gives_up() {
        let mut runs = 0;
        let result: anyhow::Result<()> = retrying(|| {
            runs += 1;
            let n = runs;
            async move {
                if n < 3 {
                    Err(api(429, "TooManyRequests", 1))
                } else {
                    Ok(())
                }
            }
        })
        .await;
        assert!(result.is_ok());
        assert_eq!(runs, 3);
        let mut runs = 0;
        let refused: anyhow::Result<()> = retrying(|| {
            runs += 1;
            async { Err(api(403, "Forbidden", 0)) }
        })
        .await;
        assert!(refused.is_err());
        assert_eq!(runs, 1, "only when asked to retry");
        // A conditional write that met a newer version runs again (reading it again);
        // an object that already exists does not.
        let mut runs = 0;
        let raced: anyhow::Result<()> = retrying(|| {
            runs += 1;
            let n = runs;
            async move {
                if n < 2 {
                    Err(api(409, "Conflict", 0))
                } else {
                    Ok(())
                }
            }
        })
        .await;
        assert!(raced.is_ok());
        assert_eq!(runs, 2);
        let mut runs = 0;
        let exists: anyhow::Result<()> = retrying(|| {
            runs += 1;
            async { Err(api(409, "AlreadyExists", 0)) }
        })
        .await;
        assert!(exists.is_err());
        assert_eq!(runs, 1);
    }
}
