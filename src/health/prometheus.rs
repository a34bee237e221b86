//! PromQL instant queries against a Prometheus HTTP API (`/api/v1/query`). The answer is
//! read once, while the request's slot is held (see [`super::http_client`]).

use k8s_openapi::jiff::Timestamp;

use super::gates::{QueryAnswer, parse_query_answer};
use super::http_client::{Bounds, FetchError, HttpClient};
use ztunnel_rollout_core::health::query_answer::{error_type, refusal};

/// Evaluates `query` now and, when `baseline_at` is given, at that time too, side by
/// side, through `client` (or fails both with its error: no client, e.g. unreadable
/// credentials). The answers now and at the baseline.
pub async fn now_and_then(
    client: &Result<HttpClient, String>,
    base_url: &str,
    text: &str,
    baseline_at: Option<Option<Timestamp>>,
    bounds: Bounds,
) -> (QueryAnswer, Option<QueryAnswer>) {
    let client = match client {
        Ok(client) => client,
        Err(e) => return (Err(e.clone()), baseline_at.map(|_| Err(e.clone()))),
    };
    let then = async {
        match baseline_at {
            None => None,
            Some(at) => Some(query(client, base_url, text, at, bounds).await),
        }
    };
    futures::join!(query(client, base_url, text, None, bounds), then)
}

/// Evaluates `query` at `at` (now when `None`): a number, no data, or an error naming the
/// server and what went wrong.
pub async fn query(
    client: &HttpClient,
    base_url: &str,
    query: &str,
    at: Option<Timestamp>,
    bounds: impl Into<Bounds>,
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
    match client.fetch(&url, bounds, parse_query_answer).await {
        Ok(answer) => answer,
        Err(e) => {
            // Prometheus answers a bad query with 4xx and a JSON error: say its error
            // type (never its message: nothing of an answer is repeated).
            if let FetchError::Status {
                excerpt, status, ..
            } = &e
                && let Some(kind) = error_type(excerpt)
            {
                return Err(refusal(Some(&kind), Some(*status)));
            }
            Err(format!("Prometheus {e}"))
        }
    }
}
