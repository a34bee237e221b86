//! The bounds on one node's gate task, as arithmetic on injected time: when its verdict
//! is due, how long a round of measurements may run, and which ztunnel scrapes it keeps.
//!
//! Why: the task must end when the documented `timeout` says, whatever the endpoints
//! do. A round of measurements is therefore cut at the gate's deadline (a slow
//! Prometheus cannot stretch it), the requests' own timeouts are capped, the interval
//! has a floor (rounds are HTTP requests, for every node being verified), and only the
//! scrapes of the soak window are kept (a long soak must not grow memory without end).

use std::time::Duration;

use k8s_openapi::jiff::{SignedDuration, Timestamp};

use super::gates::{GateVerdict, HealthSettings, ZtunnelScrape, verdict};

/// The shortest `health.interval`: every round sends a scrape and the queries for each
/// node being verified, so a shorter one would hammer the endpoints for nothing.
pub const MIN_INTERVAL: Duration = Duration::from_secs(1);

/// The longest `prometheus.queryTimeout`: an instant query that takes longer is broken,
/// and a round waits for its slowest request.
pub const MAX_QUERY_TIMEOUT: Duration = Duration::from_secs(30);

/// Bounds of the scrape timeout (the interval, clamped into this range).
const SCRAPE_TIMEOUT: (Duration, Duration) = (Duration::from_secs(1), Duration::from_secs(10));

impl HealthSettings {
    /// Deadline for one scrape of ztunnel's metrics endpoint: the interval, within 1–10 s.
    pub fn scrape_timeout(&self) -> Duration {
        self.interval.clamp(SCRAPE_TIMEOUT.0, SCRAPE_TIMEOUT.1)
    }

    /// Deadline for one PromQL query: `queryTimeout`, at most [`MAX_QUERY_TIMEOUT`].
    pub fn query_timeout(&self) -> Duration {
        self.prometheus
            .as_ref()
            .map_or(Duration::ZERO, |p| p.query_timeout.min(MAX_QUERY_TIMEOUT))
    }

    /// The longest one request of a round may take on its own: what a round needs when
    /// it is given time beyond the gate's timeout (see [`gate_deadline`]).
    pub fn longest_request(&self) -> Duration {
        let scrape = if self.ztunnel_metrics.is_some() {
            self.scrape_timeout()
        } else {
            Duration::ZERO
        };
        scrape.max(self.query_timeout()).max(SCRAPE_TIMEOUT.0)
    }
}

fn add(t: Timestamp, d: Duration) -> Timestamp {
    SignedDuration::try_from(d)
        .ok()
        .and_then(|d| t.checked_add(d).ok())
        .unwrap_or(Timestamp::MAX)
}

/// When the gate's verdict is due: `timeout` after the node's ztunnel became Ready
/// (`started`). A soak in progress then (`healthy_since`) runs to its end, as the
/// verdict allows, and its last round gets one request's time after it.
pub fn gate_deadline(
    started: Timestamp,
    healthy_since: Option<Timestamp>,
    settings: &HealthSettings,
) -> Timestamp {
    let timeout = add(started, settings.timeout);
    match healthy_since {
        Some(since) => timeout.max(add(add(since, settings.soak), settings.longest_request())),
        None => timeout,
    }
}

/// What the gate task does at `now`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Round {
    /// Measure every check; every request (waiting for a free slot included) ends by
    /// `deadline`.
    Measure { deadline: Timestamp },
    /// The deadline has passed: the verdict is taken on the last round's results
    /// ([`verdict_at_deadline`]), nothing more is measured.
    JudgeLast,
}

/// The next round. `measured_before`: this task has results of an earlier round. A
/// task that starts after its deadline (a new leader resuming a node) still measures
/// once, bounded by the longest request, so the node is judged on what it shows.
pub fn next_round(
    started: Timestamp,
    healthy_since: Option<Timestamp>,
    now: Timestamp,
    settings: &HealthSettings,
    measured_before: bool,
) -> Round {
    let deadline = gate_deadline(started, healthy_since, settings);
    if now < deadline {
        Round::Measure { deadline }
    } else if measured_before {
        Round::JudgeLast
    } else {
        Round::Measure {
            deadline: add(now, settings.longest_request()),
        }
    }
}

/// The final verdict once the deadline has passed: what [`verdict`] says, and a failure
/// naming what was still awaited should it still wait.
pub fn verdict_at_deadline(
    results: &[super::gates::CheckResult],
    started: Timestamp,
    healthy_since: &mut Option<Timestamp>,
    now: Timestamp,
    settings: &HealthSettings,
) -> GateVerdict {
    match verdict(results, started, healthy_since, now, settings) {
        GateVerdict::Waiting { why, .. } => GateVerdict::Failed(format!(
            "no verdict by the gate's deadline ({} after ztunnel was Ready): {why}",
            crate::duration::format_duration(settings.timeout)
        )),
        done => done,
    }
}

/// Keeps the scrapes of the soak window ending at `now` (seconds on the gate's clock,
/// as [`ZtunnelScrape::at`]): those taken in the last `soak`, and the newest one before
/// them, where the window's increases and rates start. `history` is oldest first. With
/// one scrape per interval it holds at most `soak / interval + 2` scrapes.
pub fn trim_to_window(history: &mut Vec<ZtunnelScrape>, now: f64, soak: Duration) {
    let start = now - soak.as_secs_f64();
    let inside = history.partition_point(|s| s.at < start);
    history.drain(..inside.saturating_sub(1));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::health::gates::{
        CheckResult, Outcome, PrometheusSettings, QueryLimit, QuerySettings, ZtunnelMetricsSettings,
    };
    use std::collections::BTreeMap;

    fn t(secs: f64) -> Timestamp {
        add(
            Timestamp::from_second(1_800_000_000).unwrap(),
            Duration::from_secs_f64(secs),
        )
    }

    fn settings() -> HealthSettings {
        HealthSettings {
            ztunnel_metrics: Some(ZtunnelMetricsSettings {
                port: 15020,
                check_proxies: true,
                max_failed_connections_per_second: Some(0.5),
                max_closed_per_opened: None,
            }),
            prometheus: Some(PrometheusSettings {
                url: "http://p:9090".into(),
                credentials: Default::default(),
                query_timeout: Duration::from_secs(10),
                queries: vec![QuerySettings {
                    name: "q".into(),
                    query: "up".into(),
                    limit: QueryLimit::Max(1.0),
                }],
            }),
            ..crate::health::gates::tests::settings()
        }
    }

    #[test]
    fn request_timeouts_are_capped() {
        let mut s = settings();
        assert_eq!(s.scrape_timeout(), Duration::from_secs(5));
        assert_eq!(s.query_timeout(), Duration::from_secs(10));
        assert_eq!(s.longest_request(), Duration::from_secs(10));
        // A queryTimeout stored before the schema refused it is clamped.
        if let Some(p) = s.prometheus.as_mut() {
            p.query_timeout = Duration::from_secs(3600);
        }
        assert_eq!(s.query_timeout(), MAX_QUERY_TIMEOUT);
        assert_eq!(s.longest_request(), MAX_QUERY_TIMEOUT);
        s.interval = Duration::from_secs(600);
        assert_eq!(s.scrape_timeout(), Duration::from_secs(10));
        s.prometheus = None;
        assert_eq!(s.longest_request(), Duration::from_secs(10));
        s.ztunnel_metrics = None;
        assert_eq!(s.longest_request(), Duration::from_secs(1));
    }

    #[test]
    fn every_round_ends_by_the_gates_timeout() {
        let s = settings();
        // Not healthy yet: every round, late ones too, ends 120 s after Ready.
        for now in [0.0, 60.0, 119.5] {
            assert_eq!(
                next_round(t(0.0), None, t(now), &s, now > 0.0),
                Round::Measure { deadline: t(120.0) },
                "at {now}"
            );
        }
        // Healthy since 10 s: the soak ends at 40 s, well within the timeout.
        assert_eq!(
            next_round(t(0.0), Some(t(10.0)), t(40.0), &s, true),
            Round::Measure { deadline: t(120.0) }
        );
    }

    #[test]
    fn at_the_deadline_the_last_round_is_judged_and_nothing_more_is_measured() {
        let s = settings();
        assert_eq!(
            next_round(t(0.0), None, t(120.0), &s, true),
            Round::JudgeLast
        );
        let last = [CheckResult {
            name: "ztunnel proxies".into(),
            outcome: Outcome::NotYet("2 proxies pending".into()),
        }];
        assert_eq!(
            verdict_at_deadline(&last, t(0.0), &mut None, t(120.0), &s),
            GateVerdict::Failed("not healthy within 2m: ztunnel proxies: 2 proxies pending".into())
        );
        // Whatever still waits at the deadline fails, naming it.
        let mut since = Some(t(119.0));
        assert!(matches!(
            verdict_at_deadline(&[], t(0.0), &mut since, t(120.0), &s),
            GateVerdict::Failed(ref why) if why.starts_with("no verdict by the gate's deadline (2m after ztunnel was Ready): soaking until")
        ));
    }

    #[test]
    fn a_soak_running_at_the_timeout_runs_to_its_end_with_one_request_to_spare() {
        let s = settings();
        // Healthy since 100 s: the soak ends at 130 s, past the 120 s timeout; its last
        // round (at 130 s) may take the longest request, 10 s.
        assert_eq!(gate_deadline(t(0.0), Some(t(100.0)), &s), t(140.0));
        assert_eq!(
            next_round(t(0.0), Some(t(100.0)), t(130.0), &s, true),
            Round::Measure { deadline: t(140.0) }
        );
        assert_eq!(
            next_round(t(0.0), Some(t(100.0)), t(140.0), &s, true),
            Round::JudgeLast
        );
        // A broken soak falls back to the timeout.
        assert_eq!(gate_deadline(t(0.0), None, &s), t(120.0));
    }

    #[test]
    fn a_gate_resumed_after_its_deadline_measures_once() {
        let s = settings();
        assert_eq!(
            next_round(t(0.0), None, t(500.0), &s, false),
            Round::Measure { deadline: t(510.0) }
        );
        assert_eq!(
            next_round(t(0.0), None, t(510.0), &s, true),
            Round::JudgeLast
        );
    }

    fn scrape(at: f64) -> ZtunnelScrape {
        ZtunnelScrape {
            at,
            pending_proxies: Some(0.0),
            active_proxies: Some(0.0),
            failed_connections: Some(at),
            failed_by_flags: BTreeMap::new(),
            opened_connections: None,
            closed_connections: None,
        }
    }

    fn times(history: &[ZtunnelScrape]) -> Vec<f64> {
        history.iter().map(|s| s.at).collect()
    }

    #[test]
    fn only_the_soak_window_and_its_starting_point_are_kept() {
        let mut h: Vec<ZtunnelScrape> = (0..10).map(|i| scrape(f64::from(i) * 5.0)).collect();
        // Now 45 s, soak 12 s: the window starts at 33 s; 30 s is its starting point.
        trim_to_window(&mut h, 45.0, Duration::from_secs(12));
        assert_eq!(times(&h), [30.0, 35.0, 40.0, 45.0]);
        // A scrape exactly at the window's start is inside it.
        trim_to_window(&mut h, 45.0, Duration::from_secs(10));
        assert_eq!(times(&h), [30.0, 35.0, 40.0, 45.0]);
        trim_to_window(&mut h, 45.0, Duration::from_secs(9));
        assert_eq!(times(&h), [35.0, 40.0, 45.0]);
        // No soak: the latest scrape and the one before, for a rate.
        trim_to_window(&mut h, 45.0, Duration::ZERO);
        assert_eq!(times(&h), [40.0, 45.0]);
        let mut one = vec![scrape(0.0)];
        trim_to_window(&mut one, 0.0, Duration::ZERO);
        assert_eq!(times(&one), [0.0]);
        trim_to_window(&mut Vec::new(), 0.0, Duration::ZERO);
    }

    #[test]
    fn a_long_soak_keeps_a_bounded_number_of_scrapes() {
        // Ten hours of scrapes each second, soak 2 minutes.
        let soak = Duration::from_secs(120);
        let mut h = Vec::new();
        let mut most = 0;
        for i in 0..36_000 {
            h.push(scrape(f64::from(i)));
            trim_to_window(&mut h, f64::from(i), soak);
            most = most.max(h.len());
        }
        assert_eq!(most, 122, "soak / interval + 2");
        assert_eq!(h.first().map(|s| s.at), Some(35_878.0));
    }
}
