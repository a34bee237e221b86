//! The simulation's soak command: `e2e/soak.sh [--seeds N] [--first-seed S]
//! [--stop-at-first] [--seed S]`. Runs seeds until done (or the first failure), prints a
//! line per thousand seeds; `--seed S` replays one seed with its violations, the shrunk
//! disturbances and the trace.

use std::time::Instant;

use ztunnel_rollout_core::sim::{self, chaos::Knobs, trial::Mutations};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let value = |flag: &str| {
        args.iter()
            .position(|a| a == flag)
            .and_then(|i| args.get(i + 1))
            .map(|v| {
                v.parse::<u64>()
                    .unwrap_or_else(|_| panic!("{flag} takes a number, not {v:?}"))
            })
    };
    if let Some(seed) = value("--seed") {
        let report = sim::run(seed);
        println!(
            "seed {seed}: {} steps, {} passes",
            report.steps, report.passes
        );
        if report.violations.is_empty() {
            println!("no violation");
            return;
        }
        let (knobs, shrunk) = sim::shrink(seed, Knobs::draw(seed), Mutations::default());
        println!("violations:\n{}", report.violations.join("\n"));
        println!("shrunk to: {knobs:?}");
        println!("trace:\n{}", shrunk.trace.join("\n"));
        std::process::exit(1);
    }
    let seeds = value("--seeds").unwrap_or(100_000);
    let first = value("--first-seed").unwrap_or(1);
    let started = Instant::now();
    let (mut steps, mut failed) = (0u64, Vec::new());
    for seed in first..first + seeds {
        let report = sim::run(seed);
        steps += report.steps;
        if !report.violations.is_empty() {
            println!("seed {seed} FAILED: {}", report.violations.join("; "));
            failed.push(seed);
            if args.iter().any(|a| a == "--stop-at-first") {
                break;
            }
        }
        if (seed - first + 1) % 1_000 == 0 {
            println!(
                "{} seeds, {steps} steps, {} failed, {:.0}s",
                seed - first + 1,
                failed.len(),
                started.elapsed().as_secs_f64()
            );
        }
    }
    println!(
        "soak: {seeds} seeds from {first}, {steps} steps, {} failed {failed:?}, {:.1}s",
        failed.len(),
        started.elapsed().as_secs_f64()
    );
    if !failed.is_empty() {
        std::process::exit(1);
    }
}
