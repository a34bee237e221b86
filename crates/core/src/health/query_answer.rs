//! Reads a Prometheus `/api/v1/query` answer in one pass, in constant memory whatever
//! the number of series: the gate needs one number, and an answer of many series is an
//! error that only needs their count. (A generic JSON tree of a few MiB would take
//! several times that, for each query in flight.)
//!
//! Errors quote nothing of the answer (no error message, label, value or parser
//! excerpt): they reach the rollout's status and Events, readable by whoever may read
//! rollouts, and the server at the URL is not trusted to say only harmless things. They
//! name a class of failure, and Prometheus's error type when it is one Prometheus
//! defines.

use std::fmt;

use serde::Deserialize;
use serde::de::{Deserializer, IgnoredAny, SeqAccess, Visitor};

use super::gates::QueryAnswer;

/// Elements of `data.result` kept: a vector's one series, or a scalar's time and value.
const KEPT: usize = 2;

/// The error types Prometheus's HTTP API defines; any other is not repeated.
const ERROR_TYPES: &[&str] = &[
    "timeout",
    "canceled",
    "execution",
    "bad_data",
    "internal",
    "unavailable",
    "not_found",
    "not_acceptable",
];

/// Prometheus's refusal of a query as an error line: its error type if it is a known
/// one, never its message. `status` is the HTTP status, if not 200.
pub fn refusal(error_type: Option<&str>, status: Option<u16>) -> String {
    let kind = error_type
        .filter(|t| ERROR_TYPES.contains(t))
        .unwrap_or("unknown error type");
    match status {
        Some(code) => format!("Prometheus refused the query: HTTP {code} ({kind})"),
        None => format!("Prometheus refused the query ({kind})"),
    }
}

/// The error type of a Prometheus error answer (`{"status":"error","errorType":…}`),
/// when `body` is one: to classify a non-2xx answer without quoting it.
pub fn error_type(body: &[u8]) -> Option<String> {
    let answer: Answer = serde_json::from_slice(body).ok()?;
    (answer.status.as_deref() == Some("error")).then_some(answer.error_type?)
}

#[derive(Deserialize)]
struct Answer {
    #[serde(default)]
    status: Option<String>,
    #[serde(default, rename = "errorType")]
    error_type: Option<String>,
    #[serde(default)]
    data: Option<Data>,
}

#[derive(Deserialize)]
struct Data {
    #[serde(default, rename = "resultType")]
    result_type: Option<String>,
    #[serde(default)]
    result: Option<Elements>,
}

/// The elements of `data.result`, read one at a time: how many, and the first few.
struct Elements {
    count: usize,
    first: Vec<serde_json::Value>,
}

impl<'de> Deserialize<'de> for Elements {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct List;
        impl<'de> Visitor<'de> for List {
            type Value = Elements;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("data.result as a list")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Elements, A::Error> {
                let mut out = Elements {
                    count: 0,
                    first: Vec::new(),
                };
                loop {
                    let more = if out.first.len() < KEPT {
                        seq.next_element::<serde_json::Value>()?
                            .map(|e| out.first.push(e))
                    } else {
                        seq.next_element::<IgnoredAny>()?.map(drop)
                    };
                    if more.is_none() {
                        return Ok(out);
                    }
                    out.count += 1;
                }
            }
        }
        d.deserialize_seq(List)
    }
}

/// Reads one number from a Prometheus `/api/v1/query` answer: a vector of one sample or
/// a scalar. An empty vector (or NaN) is no data; several series are an error.
pub fn parse_query_answer(body: &[u8]) -> QueryAnswer {
    let answer: Answer = serde_json::from_slice(body).map_err(|e| {
        format!(
            "malformed answer: not Prometheus API JSON (at line {}, column {})",
            e.line(),
            e.column()
        )
    })?;
    if answer.status.as_deref() != Some("success") {
        return Err(refusal(answer.error_type.as_deref(), None));
    }
    let (result_type, result) = match answer.data {
        Some(d) => (d.result_type, d.result),
        None => (None, None),
    };
    let not_a_list = "malformed answer: data.result is not a list";
    let pair = match result_type.as_deref() {
        Some("vector") => {
            let series = result.ok_or(not_a_list)?;
            match series.count {
                0 => return Ok(None),
                1 => series.first[0]["value"].clone(),
                many => {
                    return Err(format!(
                        "the query returned {many} series; it must return one number: aggregate it (sum, max)"
                    ));
                }
            }
        }
        Some("scalar") => serde_json::Value::Array(result.ok_or(not_a_list)?.first),
        other => {
            return Err(format!(
                "the query returned a {}; it must return an instant vector or a scalar",
                match other {
                    Some(known @ ("matrix" | "string")) => known,
                    Some(_) => "result of an unknown type",
                    None => "result without a type",
                }
            ));
        }
    };
    let text = pair[1]
        .as_str()
        .ok_or("malformed answer: a sample is not a [time, \"value\"] pair")?;
    let value: f64 = text
        .parse()
        .map_err(|_| "malformed answer: a sample value is not a number".to_owned())?;
    Ok((!value.is_nan()).then_some(value))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_answers_are_read_strictly() {
        let vector = br#"{"status":"success","data":{"resultType":"vector","result":[{"metric":{},"value":[1.5,"0.25"]}]}}"#;
        assert_eq!(parse_query_answer(vector), Ok(Some(0.25)));
        let scalar = br#"{"status":"success","data":{"resultType":"scalar","result":[1.5,"3"]}}"#;
        assert_eq!(parse_query_answer(scalar), Ok(Some(3.0)));
        let empty = br#"{"status":"success","data":{"resultType":"vector","result":[]}}"#;
        assert_eq!(parse_query_answer(empty), Ok(None));
        let nan = br#"{"status":"success","data":{"resultType":"scalar","result":[1.5,"NaN"]}}"#;
        assert_eq!(parse_query_answer(nan), Ok(None));
        let two = br#"{"status":"success","data":{"resultType":"vector","result":[{"metric":{"node":"a"},"value":[1,"1"]},{"metric":{"node":"b"},"value":[1,"2"]}]}}"#;
        assert_eq!(
            parse_query_answer(two),
            Err(
                "the query returned 2 series; it must return one number: aggregate it (sum, max)"
                    .into()
            )
        );
        let refused =
            br#"{"status":"error","errorType":"bad_data","error":"parse error at char 5"}"#;
        assert_eq!(
            parse_query_answer(refused),
            Err("Prometheus refused the query (bad_data)".into())
        );
        assert_eq!(error_type(refused).as_deref(), Some("bad_data"));
        let odd = br#"{"status":"error","errorType":"secret-text","error":"secret-text"}"#;
        assert_eq!(
            parse_query_answer(odd),
            Err("Prometheus refused the query (unknown error type)".into())
        );
        let value =
            br#"{"status":"success","data":{"resultType":"scalar","result":[1.5,"secret-text"]}}"#;
        assert!(!parse_query_answer(value).unwrap_err().contains("secret"));
        let kind = br#"{"status":"success","data":{"resultType":"secret-text","result":[]}}"#;
        assert!(!parse_query_answer(kind).unwrap_err().contains("secret"));
        let bad = br#"{"status":"success","data":{"resultType":"vector","result":[{"metric":{},"value":[1,"1"]}]}, "x": secret-text}"#;
        assert!(!parse_query_answer(bad).unwrap_err().contains("secret"));
        assert!(
            parse_query_answer(b"<html>")
                .unwrap_err()
                .contains("not Prometheus API JSON")
        );
        let matrix = br#"{"status":"success","data":{"resultType":"matrix","result":[]}}"#;
        assert!(
            parse_query_answer(matrix)
                .unwrap_err()
                .contains("returned a matrix")
        );
        let warned = br#"{"status":"success","warnings":["w"],"data":{"resultType":"vector","result":[{"metric":{},"value":[1.5,"7"]}]}}"#;
        assert_eq!(parse_query_answer(warned), Ok(Some(7.0)));
    }

    #[test]
    fn an_answer_of_many_series_is_counted_not_kept() {
        let series: Vec<String> = (0..50_000)
            .map(|i| format!(r#"{{"metric":{{"pod":"p{i}"}},"value":[1,"{i}"]}}"#))
            .collect();
        let body = format!(
            r#"{{"status":"success","data":{{"resultType":"vector","result":[{}]}}}}"#,
            series.join(",")
        );
        let e = parse_query_answer(body.as_bytes()).unwrap_err();
        assert!(e.starts_with("the query returned 50000 series;"), "{e}");
    }
}
