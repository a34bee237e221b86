//! Reads a Prometheus `/api/v1/query` answer in one pass, in constant memory whatever
//! the number of series: the gate needs one number, and an answer of many series is an
//! error that only needs their count and the first few labels. (A generic JSON tree of
//! a few MiB would take several times that, for each query in flight.)

use std::collections::BTreeSet;
use std::fmt;

use serde::Deserialize;
use serde::de::{Deserializer, IgnoredAny, SeqAccess, Visitor};

use super::gates::QueryAnswer;

/// Series named in the error for an answer of several.
const NAMED: usize = 3;

#[derive(Deserialize)]
struct Answer {
    #[serde(default)]
    status: Option<String>,
    #[serde(default)]
    error: Option<String>,
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
                    let more = if out.first.len() < NAMED {
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
    let answer: Answer = serde_json::from_slice(body)
        .map_err(|e| format!("the answer is not Prometheus API JSON: {e}"))?;
    if answer.status.as_deref() != Some("success") {
        return Err(format!(
            "Prometheus refused the query: {} ({})",
            answer.error.as_deref().unwrap_or("no error message"),
            answer.error_type.as_deref().unwrap_or("unknown error type")
        ));
    }
    let (result_type, result) = match answer.data {
        Some(d) => (d.result_type, d.result),
        None => (None, None),
    };
    let not_a_list = "the answer's data.result is not a list";
    let pair = match result_type.as_deref() {
        Some("vector") => {
            let series = result.ok_or(not_a_list)?;
            match series.count {
                0 => return Ok(None),
                1 => series.first[0]["value"].clone(),
                many => {
                    let labels: BTreeSet<String> = series
                        .first
                        .iter()
                        .map(|s| s["metric"].to_string())
                        .collect();
                    return Err(format!(
                        "the query returned {many} series ({}, …); it must return one number: aggregate it (sum, max)",
                        labels.into_iter().collect::<Vec<_>>().join(", ")
                    ));
                }
            }
        }
        Some("scalar") => serde_json::Value::Array(result.ok_or(not_a_list)?.first),
        other => {
            return Err(format!(
                "the query returned a {}; it must return an instant vector or a scalar",
                other.unwrap_or("result without a type")
            ));
        }
    };
    let text = pair[1]
        .as_str()
        .ok_or("a sample is not a [time, \"value\"] pair")?;
    let value: f64 = text
        .parse()
        .map_err(|_| format!("a sample value {text:?} is not a number"))?;
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
            Err("the query returned 2 series ({\"node\":\"a\"}, {\"node\":\"b\"}, …); it must return one number: aggregate it (sum, max)".into())
        );
        let refused =
            br#"{"status":"error","errorType":"bad_data","error":"parse error at char 5"}"#;
        assert_eq!(
            parse_query_answer(refused),
            Err("Prometheus refused the query: parse error at char 5 (bad_data)".into())
        );
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
        assert!(
            e.starts_with(
                "the query returned 50000 series ({\"pod\":\"p0\"}, {\"pod\":\"p1\"}, {\"pod\":\"p2\"}, …)"
            ),
            "{e}"
        );
    }
}
