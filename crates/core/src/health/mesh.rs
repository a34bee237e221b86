//! The mesh-wide breaker's verdict: per-node gates see one node's traffic, but a new
//! ztunnel can hurt the mesh elsewhere (a waypoint, a remote client). The rollout's
//! `meshQueries` are evaluated every interval for the whole rollout; a value beyond
//! its threshold trips the breaker at once, while a query that cannot be evaluated
//! (Prometheus unreachable, no data when `noData` is `Fail`) trips it only once that
//! has lasted the gates' `timeout` — a breaker that opens on every blip of Prometheus
//! would stop rollouts for nothing, one that never opens on errors would watch nothing.

use k8s_openapi::jiff::{SignedDuration, Timestamp};

use super::gates::{HealthSettings, Outcome, QueryAnswer, QuerySettings, prometheus_check};

/// What the breaker says after one round.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// Every query holds.
    Holds,
    /// Some query could not be evaluated since `since` (kept until it can).
    Failing { since: Timestamp, why: String },
    /// Trip: why, naming the query, its value and threshold.
    Breached(String),
}

/// The verdict on one round: for each query, its answer now and (for `maxIncrease`) its
/// baseline; `failing_since` is when queries started failing to evaluate, if they were.
pub fn verdict(
    round: &[(&QuerySettings, QueryAnswer, Option<QueryAnswer>)],
    failing_since: Option<Timestamp>,
    now: Timestamp,
    settings: &HealthSettings,
) -> Verdict {
    let mut errors = Vec::new();
    for (q, answer, baseline) in round {
        let name = format!("mesh query {} ({})", q.name, q.query);
        let evaluable = match (answer, baseline) {
            (Err(e), _) => Err(e.clone()),
            (_, Some(Err(e))) => Err(format!("baseline: {e}")),
            (Ok(None), _) if !settings.pass_without_data => Err("returned no data".to_owned()),
            _ => Ok(()),
        };
        if let Err(e) = evaluable {
            errors.push(format!("{name}: {e}"));
            continue;
        }
        if let Outcome::Failed(why) =
            prometheus_check(q, "", answer, baseline.as_ref(), settings).outcome
        {
            return Verdict::Breached(format!("{name}: {why}"));
        }
    }
    if errors.is_empty() {
        return Verdict::Holds;
    }
    let since = failing_since.unwrap_or(now);
    let limit = SignedDuration::try_from(settings.timeout).unwrap_or(SignedDuration::MAX);
    let why = errors.join("; ");
    if now.duration_since(since) >= limit {
        Verdict::Breached(format!(
            "{why} (for {}s, the gates' timeout)",
            settings.timeout.as_secs()
        ))
    } else {
        Verdict::Failing { since, why }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::health::gates::QueryLimit;

    fn t(secs: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + secs).unwrap()
    }

    fn q(limit: QueryLimit) -> QuerySettings {
        QuerySettings {
            name: "errors".into(),
            query: "sum(rate(x[1m]))".into(),
            limit,
        }
    }

    fn settings() -> HealthSettings {
        crate::health::gates::tests::settings()
    }

    #[test]
    fn a_value_over_its_threshold_trips_at_once_naming_query_value_and_threshold() {
        let max = q(QueryLimit::Max(1.0));
        assert_eq!(
            verdict(&[(&max, Ok(Some(0.5)), None)], None, t(0), &settings()),
            Verdict::Holds
        );
        match verdict(&[(&max, Ok(Some(3.0)), None)], None, t(0), &settings()) {
            Verdict::Breached(why) => assert!(
                why.starts_with("mesh query errors (sum(rate(x[1m])))")
                    && why.contains('3')
                    && why.contains('1'),
                "{why}"
            ),
            v => panic!("{v:?}"),
        }
        let up = q(QueryLimit::MaxIncrease(0.5));
        assert_eq!(
            verdict(
                &[(&up, Ok(Some(2.4)), Some(Ok(Some(2.0))))],
                None,
                t(0),
                &settings()
            ),
            Verdict::Holds
        );
        assert!(matches!(
            verdict(
                &[(&up, Ok(Some(2.6)), Some(Ok(Some(2.0))))],
                None,
                t(0),
                &settings()
            ),
            Verdict::Breached(_)
        ));
    }

    #[test]
    fn queries_that_cannot_be_evaluated_trip_only_after_the_timeout() {
        let max = q(QueryLimit::Max(1.0));
        let s = settings();
        let round = [(&max, Err("Prometheus unreachable".to_owned()), None)];
        match verdict(&round, None, t(0), &s) {
            Verdict::Failing { since, why } => {
                assert_eq!(since, t(0));
                assert!(why.contains("unreachable"), "{why}");
            }
            v => panic!("{v:?}"),
        }
        assert!(matches!(
            verdict(&round, Some(t(0)), t(119), &s),
            Verdict::Failing { .. }
        ));
        assert!(matches!(
            verdict(&round, Some(t(0)), t(120), &s),
            Verdict::Breached(why) if why.contains("for 120s")
        ));
        // No data: failing under noData Fail, holding under Pass.
        let none = [(&max, Ok(None), None)];
        assert!(matches!(
            verdict(&none, None, t(0), &s),
            Verdict::Failing { .. }
        ));
        let pass = HealthSettings {
            pass_without_data: true,
            ..settings()
        };
        assert_eq!(verdict(&none, None, t(0), &pass), Verdict::Holds);
        // A breach elsewhere wins over an error.
        let other = QuerySettings {
            name: "latency".into(),
            ..q(QueryLimit::Max(10.0))
        };
        let mixed = [
            (&max, Err("timeout".to_owned()), None),
            (&other, Ok(Some(11.0)), None),
        ];
        assert!(matches!(
            verdict(&mixed, None, t(0), &s),
            Verdict::Breached(why) if why.starts_with("mesh query latency")
        ));
    }
}
