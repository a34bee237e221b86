//! What every benchmark result file says besides its figures: which code was measured,
//! when, on what machine; and how a figure measured several times spreads. The figures
//! BENCHMARKS.md quotes come from these files, so a reader can tell a figure taken on
//! older code, or on a lone run, from the rest.

use std::path::Path;
use std::process::Command;

use serde::Serialize;
use serde_json::{Value, json};

/// The commit of the repository at `repo`, with "-dirty" when the measured code had
/// uncommitted changes (result files under `benches/results` and Markdown do not count).
pub fn commit(repo: &Path) -> String {
    let git = |args: &[&str]| {
        Command::new("git")
            .args(args)
            .current_dir(repo)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
    };
    let head = git(&["rev-parse", "--short", "HEAD"]).unwrap_or_else(|| "unknown".into());
    match git(&[
        "status",
        "--porcelain",
        "--untracked-files=no",
        "--",
        ".",
        ":!benches/results",
        ":!*.md",
    ]) {
        Some(changes) if !changes.is_empty() => format!("{head}-dirty"),
        _ => head,
    }
}

/// The machine's memory in GiB, from /proc/meminfo (0 where it cannot be read).
pub fn memory_gib() -> f64 {
    std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("MemTotal:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        .map_or(0.0, |kib| kib / 1024.0 / 1024.0)
}

/// The CPU model (from /proc/cpuinfo) and the kernel release, where they can be read.
fn cpu_and_kernel() -> (String, String) {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, v)| v.trim().to_owned())
        .unwrap_or_default();
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .unwrap_or_default()
        .trim()
        .to_owned();
    (cpu, kernel)
}

/// The layout of the records [`record`] writes; raised when a field changes meaning.
pub const SCHEMA: u32 = 2;

/// A result file's record: the header (schema, date in UTC, commit of `repo`, cores,
/// CPU model, kernel, memory) followed by `body`'s fields (an object; anything else goes
/// under "body").
pub fn record(repo: &Path, body: Value) -> Value {
    let (cpu, kernel) = cpu_and_kernel();
    let mut record = serde_json::Map::new();
    record.insert("schema".into(), json!(SCHEMA));
    record.insert(
        "date".into(),
        json!(k8s_openapi::jiff::Timestamp::now().to_string()),
    );
    record.insert("commit".into(), json!(commit(repo)));
    record.insert(
        "cores".into(),
        json!(std::thread::available_parallelism().map_or(0, |n| n.get())),
    );
    record.insert("cpu".into(), json!(cpu));
    record.insert("kernel".into(), json!(kernel));
    record.insert("memory_gib".into(), json!(memory_gib()));
    match body {
        Value::Object(fields) => record.extend(fields),
        other => {
            record.insert("body".into(), other);
        }
    }
    Value::Object(record)
}

/// Writes `record` to `path` as pretty JSON; a benchmark that cannot keep its results
/// fails (panics) rather than end without them.
pub fn write(path: &Path, record: &Value) {
    let text = serde_json::to_string_pretty(record).unwrap_or_else(|e| panic!("results: {e}"));
    std::fs::write(path, text + "\n").unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
    eprintln!("results written to {}", path.display());
}

/// How many runs `BENCH_RUNS` asks for (`default` when unset); a benchmark panics on
/// anything but a number of 1 or more, before it starts.
pub fn runs_from_env(default: usize) -> usize {
    match std::env::var("BENCH_RUNS") {
        Err(_) => default,
        Ok(v) => v
            .parse::<usize>()
            .ok()
            .filter(|n| *n > 0)
            .unwrap_or_else(|| panic!("BENCH_RUNS: {v:?} is not a number of runs (1 or more)")),
    }
}

/// How the values of one figure over several runs spread.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Spread {
    pub runs: usize,
    pub min: f64,
    pub median: f64,
    pub max: f64,
}

impl Spread {
    /// `None` for no values; NaNs are left out. The median of an even count is the mean
    /// of the two middle values.
    pub fn of(values: &[f64]) -> Option<Spread> {
        let mut v: Vec<f64> = values.iter().copied().filter(|x| !x.is_nan()).collect();
        if v.is_empty() {
            return None;
        }
        v.sort_by(f64::total_cmp);
        let mid = v.len() / 2;
        let median = if v.len().is_multiple_of(2) {
            (v[mid - 1] + v[mid]) / 2.0
        } else {
            v[mid]
        };
        Some(Spread {
            runs: v.len(),
            min: v[0],
            median,
            max: v[v.len() - 1],
        })
    }

    /// "median (min–max, n runs)" with `decimals` decimals and `unit` after each value.
    pub fn text(&self, decimals: usize, unit: &str) -> String {
        format!(
            "{:.d$}{unit} ({:.d$}–{:.d$}{unit}, {} runs)",
            self.median,
            self.min,
            self.max,
            self.runs,
            d = decimals
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_spread_has_the_middle_value_or_the_mean_of_the_two_middle_ones() {
        let odd = Spread::of(&[3.0, 1.0, 2.0]).expect("values");
        assert_eq!((odd.runs, odd.min, odd.median, odd.max), (3, 1.0, 2.0, 3.0));
        let even = Spread::of(&[4.0, 1.0, 2.0, 3.0]).expect("values");
        assert_eq!((even.runs, even.median), (4, 2.5));
        assert_eq!(Spread::of(&[]), None);
        assert_eq!(Spread::of(&[f64::NAN, 5.0]).map(|s| s.runs), Some(1));
        assert_eq!(odd.text(1, " s"), "2.0 s (1.0–3.0 s, 3 runs)");
    }
}
