//! Bounded memory: a process's peak resident set, as the kernel counts it (`VmHWM` in
//! `/proc/PID/status`), read by the harness before the process ends.

use super::{Invariant, Violation};

#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    #[error("reading /proc/{pid}/status: {source}")]
    Read { pid: u32, source: std::io::Error },
    #[error("/proc/{pid}/status has no VmHWM line")]
    NoPeak { pid: u32 },
}

/// The peak resident set of process `pid`, in bytes.
pub fn peak_rss(pid: u32) -> Result<u64, MemoryError> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .map_err(|source| MemoryError::Read { pid, source })?;
    peak_from_status(&text).ok_or(MemoryError::NoPeak { pid })
}

fn peak_from_status(text: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// A violation when `peak` bytes exceed `bound`.
pub fn over_bound(what: &str, peak: u64, bound: u64) -> Option<Violation> {
    (peak > bound).then(|| {
        Violation::new(
            Invariant::BoundedMemory,
            format!(
                "{what} peaked at {:.1} MiB, over the bound of {:.1} MiB",
                peak as f64 / 1048576.0,
                bound as f64 / 1048576.0
            ),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_process_peak_and_judges_it() {
        assert_eq!(
            peak_from_status("Name:\tx\nVmHWM:\t   2048 kB\nVmRSS:\t1 kB\n"),
            Some(2 * 1024 * 1024)
        );
        let own = peak_rss(std::process::id()).expect("own status");
        assert!(own > 0);
        assert!(over_bound("agent", own, own).is_none());
        let v = over_bound("agent", own + 1, own).expect("over");
        assert_eq!(v.invariant, Invariant::BoundedMemory);
    }
}
