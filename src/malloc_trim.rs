//! Hands the free pages inside glibc's heap back to the kernel every few seconds
//! (`malloc_trim(0)`). glibc keeps what the agent frees mapped in its arenas, for the
//! next allocations to reuse; only the top of an arena is ever returned on its own.
//! The agent's heap churns — pods' facts replaced as drains move pods, request and pass
//! buffers — so the holes between long-lived entries add up to pages nobody uses, and
//! they count in the RSS that memory limits and the benchmarks' target count. On the
//! realistic 1,000-node bed (`benches/results/scale-1000-realistic-2026-12-05-b3ca39b/`,
//! glibc's `malloc_stats`, decimal MB) malloc held 44.2 MB for 27.6 MB in use with 604
//! of the 1,000 nodes done, and 46.4 MB for 25.6 MB at the end, where one
//! `malloc_trim(0)` took the agent's RSS from 64.3 to 52.0 MiB; trimming every 10 s
//! kept it at 51.3–57.9 MiB through the rollout instead of a flat 62.3
//! (`…-2026-12-05-malloc-trim/`). The agent also trims once as its watches sync, before
//! its first pass: 2.9–4.2 MiB of the first lists' buffers went back there, though the
//! first pass took most of those pages again within a second
//! (`…-2026-12-05-trim-runs/`, runs 6–8). A trim walks the arenas' free chunks under their
//! locks, so it runs on a blocking thread, not on the runtime's. Other C libraries
//! (musl): nothing to do.

use std::time::Duration;

/// How often the agent trims. With 10 s, the RSS climbed back 1.9 MiB between two
/// trims on the realistic bed (median; 3.8 at the 90th percentile) and the agent's CPU
/// stayed within the runs without trims (108.2 s against 105.9–114.3); other intervals
/// were not tried.
pub const TRIM_EVERY: Duration = Duration::from_secs(10);

/// Trims every `every`, from the first tick on, until the task is dropped.
pub async fn every(every: Duration) {
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        ticks.tick().await;
        now().await;
    }
}

/// Trims once, on a blocking thread, and returns when it is done.
pub async fn now() {
    // A trim that panicked would only mean no trim: nothing to report.
    let _ = tokio::task::spawn_blocking(trim).await;
}

/// Returns the heap's free pages; true if any were returned.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
pub fn trim() -> bool {
    // SAFETY: malloc_trim works under the allocator's own locks and reads or writes no
    // memory of ours; 0 keeps no padding at the top of the main arena.
    unsafe { libc::malloc_trim(0) == 1 }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn trim() -> bool {
    false
}

#[cfg(all(test, target_os = "linux", target_env = "gnu"))]
mod tests {
    use super::*;

    #[test]
    fn freed_pages_between_live_allocations_are_returned() {
        // Whatever other tests left free first.
        trim();
        // 96 KiB blocks (under the 128 KiB mmap threshold: from an arena, and each
        // holding a whole page even of 64 KiB) with small live ones between them;
        // freeing the blocks leaves holes of whole pages inside the heap, which only a
        // trim returns.
        let mut blocks = Vec::new();
        let mut live = Vec::new();
        for i in 0..256u32 {
            blocks.push(vec![i as u8; 96 * 1024]);
            live.push(Box::new(i));
        }
        drop(blocks);
        assert!(trim(), "no free page was returned");
        assert_eq!(
            live.iter().map(|b| u64::from(**b)).sum::<u64>(),
            255 * 256 / 2
        );
    }
}
