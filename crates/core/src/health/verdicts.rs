//! Health-gate arithmetic: increases and rates from counter samples (with restarts),
//! thresholds (absolute, or relative to a baseline taken before the node was touched),
//! and the soak rule. Pure; time is given as seconds.

/// One observation of a counter: seconds since some epoch, and the value.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sample {
    pub at: f64,
    pub value: f64,
}

/// How much a counter grew over the samples (in time order). A drop means the counter
/// restarted (a new ztunnel pod starts at 0): the value after the drop is all growth.
pub fn increase(samples: &[Sample]) -> f64 {
    samples
        .windows(2)
        .map(|w| {
            let (prev, next) = (w[0].value, w[1].value);
            if next >= prev { next - prev } else { next }
        })
        .sum()
}

/// Per-second growth over the samples, if they span any time.
pub fn rate(samples: &[Sample]) -> Option<f64> {
    let (first, last) = (samples.first()?, samples.last()?);
    let span = last.at - first.at;
    (span > 0.0).then(|| increase(samples) / span)
}

/// A limit on a measured value.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Threshold {
    /// The value may be at most this.
    Max(f64),
    /// The value may exceed the baseline (measured before the node was touched) by at
    /// most this.
    MaxIncrease { baseline: f64, by: f64 },
}

/// Ok, or the failure message naming the check, the value and the threshold.
pub fn check(name: &str, value: f64, threshold: Threshold) -> Result<(), String> {
    match threshold {
        Threshold::Max(max) if value > max => {
            Err(format!("{name} is {value:.3}, above the maximum {max:.3}"))
        }
        Threshold::MaxIncrease { baseline, by } if value - baseline > by => Err(format!(
            "{name} is {value:.3}, {:.3} above its baseline {baseline:.3} (allowed: {by:.3})",
            value - baseline
        )),
        _ => Ok(()),
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum SoakVerdict {
    /// Healthy, but not yet for the whole soak time; decide again at `until`.
    Soaking {
        until: f64,
    },
    Passed,
    Failed(String),
}

/// The soak rule: the verdict is taken only after the node has been healthy for `soak`
/// seconds without a break. `healthy_since` is when the current healthy stretch began;
/// `failure` is the latest failed check, if any (it ends the node's soak at once).
pub fn soak(
    now: f64,
    healthy_since: Option<f64>,
    soak: f64,
    failure: Option<String>,
) -> SoakVerdict {
    if let Some(f) = failure {
        return SoakVerdict::Failed(f);
    }
    match healthy_since {
        Some(since) if now - since >= soak => SoakVerdict::Passed,
        Some(since) => SoakVerdict::Soaking {
            until: since + soak,
        },
        None => SoakVerdict::Soaking { until: now + soak },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(at: f64, value: f64) -> Sample {
        Sample { at, value }
    }

    #[test]
    fn increases_survive_counter_restarts() {
        assert_eq!(increase(&[s(0.0, 10.0), s(10.0, 15.0), s(20.0, 18.0)]), 8.0);
        // The old pod reached 18, the new one restarted at 0 and counted 4.
        assert_eq!(
            increase(&[s(0.0, 10.0), s(10.0, 18.0), s(20.0, 1.0), s(30.0, 4.0)]),
            8.0 + 1.0 + 3.0
        );
        assert_eq!(increase(&[s(0.0, 5.0)]), 0.0);
        assert_eq!(increase(&[]), 0.0);
    }

    #[test]
    fn rates_need_a_time_span() {
        assert_eq!(rate(&[s(0.0, 0.0), s(20.0, 10.0)]), Some(0.5));
        assert_eq!(rate(&[s(5.0, 1.0)]), None);
        assert_eq!(rate(&[s(5.0, 1.0), s(5.0, 3.0)]), None);
    }

    #[test]
    fn thresholds_name_the_value_and_the_limit() {
        assert_eq!(
            check("failed connections/s", 0.2, Threshold::Max(0.5)),
            Ok(())
        );
        let err = check("failed connections/s", 3.1, Threshold::Max(0.5)).unwrap_err();
        assert_eq!(
            err,
            "failed connections/s is 3.100, above the maximum 0.500"
        );
        assert_eq!(
            check(
                "p99 latency",
                0.250,
                Threshold::MaxIncrease {
                    baseline: 0.2,
                    by: 0.1
                }
            ),
            Ok(())
        );
        let err = check(
            "p99 latency",
            0.400,
            Threshold::MaxIncrease {
                baseline: 0.2,
                by: 0.1,
            },
        )
        .unwrap_err();
        assert!(
            err.contains("0.200 above its baseline 0.200 (allowed: 0.100)"),
            "{err}"
        );
    }

    #[test]
    fn the_verdict_waits_for_an_unbroken_soak() {
        assert_eq!(
            soak(100.0, None, 60.0, None),
            SoakVerdict::Soaking { until: 160.0 }
        );
        assert_eq!(
            soak(130.0, Some(100.0), 60.0, None),
            SoakVerdict::Soaking { until: 160.0 }
        );
        assert_eq!(soak(160.0, Some(100.0), 60.0, None), SoakVerdict::Passed);
        assert_eq!(
            soak(130.0, Some(100.0), 60.0, Some("x".into())),
            SoakVerdict::Failed("x".into())
        );
    }
}
