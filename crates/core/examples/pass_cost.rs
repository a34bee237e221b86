//! What one pass costs at fleet size: `cargo run --release -p ztunnel-rollout-core
//! --features sim --example pass_cost -- [NODES]` drives a rollout of NODES simulated
//! nodes (default 1,000, three zones, 10% per wave) through the same `decide` the agent
//! runs, and prints the mean wall time of `decide` while nodes are in flight — the pure
//! part of what BENCHMARKS.md's "passes (count, mean)" reports from the agent.

use std::time::{Duration, Instant};

use ztunnel_rollout_core::sim::fixture::Fixture;

fn main() {
    let nodes: usize = std::env::args()
        .nth(1)
        .map(|v| {
            v.parse()
                .unwrap_or_else(|_| panic!("NODES: {v:?} is not a number"))
        })
        .unwrap_or(1000);
    let names: Vec<(String, String)> = (0..nodes)
        .map(|i| (format!("n{i:05}"), ["a", "b", "c"][i % 3].to_owned()))
        .collect();
    let refs: Vec<(&str, &str)> = names
        .iter()
        .map(|(n, z)| (n.as_str(), z.as_str()))
        .collect();
    let mut f = Fixture::new(&refs);
    f.finalizer = true;
    f.spec.waves.max_unavailable =
        k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::String("10%".into());
    let mut passes = 0u32;
    let mut spent = Duration::ZERO;
    let started = Instant::now();
    while passes < 400 {
        let t = Instant::now();
        f.drive(1, |_, _| Ok(String::new()), |_| false);
        spent += t.elapsed();
        passes += 1;
    }
    let (decided, count) = f.decided;
    println!(
        "{nodes} nodes: {count} passes, decide {:.2} ms a pass; {:.2} ms with the simulated cluster's own steps; {:.1} s in all",
        decided.as_secs_f64() * 1000.0 / f64::from(count.max(1)),
        spent.as_secs_f64() * 1000.0 / f64::from(passes),
        started.elapsed().as_secs_f64()
    );
}
