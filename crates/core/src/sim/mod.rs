//! A deterministic simulation of fleets under rollouts, faults and people: the proof
//! that the pure pass keeps its promises. A trial ([`trial`]) drives the real
//! [`crate::rollout::pass::decide`] and node machine step by step against a simulated
//! cluster ([`cluster`]) and API server ([`api`]), with two agent replicas
//! ([`agent`]), disturbances drawn from its seed ([`chaos`]), and the invariants checked
//! after every change ([`invariants`]). The same seed replays the same trial; a failing
//! trial is shrunk to the fewest disturbances that still fail ([`shrink`]).
//!
//! Compiled for this crate's tests, and with the `sim` feature for the soak command
//! (`cargo run -p ztunnel-rollout-core --release --features sim --example soak`).

pub mod agent;
pub mod api;
pub mod chaos;
pub mod cluster;
pub mod fixture;
pub mod invariants;
pub mod rng;
pub mod trial;

#[cfg(test)]
mod tests;

use chaos::Knobs;
use trial::{Mutations, Report, Trial};

/// Runs the trial of `seed` (its knobs drawn from it).
pub fn run(seed: u64) -> Report {
    run_with(seed, Knobs::draw(seed), Mutations::default())
}

pub fn run_with(seed: u64, knobs: Knobs, mutations: Mutations) -> Report {
    Trial::new(seed, knobs, mutations).run()
}

/// What kind of violation a line reports (its words, without node names and numbers).
fn kind(violation: &str) -> String {
    violation
        .split_once(": ")
        .map_or(violation, |(_, v)| v)
        .split_whitespace()
        .take(4)
        .map(|w| w.trim_matches(|c: char| c.is_ascii_digit()))
        .collect::<Vec<_>>()
        .join(" ")
}

/// The smallest knobs (fewest disturbances, no API faults or watch lag, where possible)
/// with which the trial of `seed` still fails the same way, and that trial's report.
pub fn shrink(seed: u64, knobs: Knobs, mutations: Mutations) -> (Knobs, Report) {
    let mut best = knobs;
    let mut report = run_with(seed, best.clone(), mutations);
    let Some(first) = report.violations.first().map(|v| kind(v)) else {
        return (best, report);
    };
    loop {
        let mut smaller = None;
        let mut candidates: Vec<Knobs> = (0..best.schedule.len())
            .map(|i| {
                let mut k = best.clone();
                k.schedule.remove(i);
                k
            })
            .collect();
        let calmer = Knobs {
            api_faults: 0.0,
            ..best.clone()
        };
        let in_sync = Knobs {
            max_lag: 0,
            ..best.clone()
        };
        let gates_pass = Knobs {
            gate_failures: 0.0,
            ..best.clone()
        };
        candidates.extend(
            [calmer, in_sync, gates_pass]
                .into_iter()
                .filter(|k| *k != best),
        );
        for k in candidates {
            let r = run_with(seed, k.clone(), mutations);
            if r.violations.first().is_some_and(|v| kind(v) == first) {
                smaller = Some((k, r));
                break;
            }
        }
        match smaller {
            Some((k, r)) => {
                best = k;
                report = r;
            }
            None => return (best, report),
        }
    }
}
