//! PromQL instant queries against a Prometheus HTTP API (`/api/v1/query`).

use std::time::Duration;

use k8s_openapi::jiff::Timestamp;

use super::gates::{QueryAnswer, parse_query_answer};
use super::http_client::HttpClient;

/// Evaluates `query` at `at` (now when `None`): a number, no data, or an error naming the
/// server and what went wrong.
pub async fn query(
    client: &HttpClient,
    base_url: &str,
    query: &str,
    at: Option<Timestamp>,
    timeout: Duration,
) -> QueryAnswer {
    let params = {
        let mut params = form_urlencoded::Serializer::new(String::new());
        params.append_pair("query", query);
        if let Some(at) = at {
            params.append_pair(
                "time",
                &format!("{:.3}", at.as_millisecond() as f64 / 1000.0),
            );
        }
        params.finish()
    };
    let url = format!("{base_url}/api/v1/query?{params}");
    match client.get(&url, timeout).await {
        Ok(body) => parse_query_answer(&body),
        Err(e) => match &e {
            // Prometheus answers a bad query with 400 and its JSON error: show that.
            super::http_client::FetchError::Status { body, status, .. }
                if (400..500).contains(status) =>
            {
                match parse_query_answer(body.as_bytes()) {
                    Err(refusal) if refusal.starts_with("Prometheus refused") => Err(refusal),
                    _ => Err(format!("Prometheus {e}")),
                }
            }
            _ => Err(format!("Prometheus {e}")),
        },
    }
}
