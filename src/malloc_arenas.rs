//! Caps glibc's malloc at two arenas. glibc gives a thread that finds the arenas busy a
//! new one, up to eight per core, and a freed chunk goes back to the arena it came from.
//! The agent's heap is mostly long-lived caches that the watches fill from every tokio
//! thread, interleaved with short-lived request and pass buffers: spread over many
//! arenas, the holes those buffers leave stay mapped. On the realistic 1,000-node bed,
//! with the pod index's shared strings, two arenas (set in the environment, one run
//! each) held 32.9 MiB of anonymous memory against 39.4 with glibc's default
//! (benches/results/memory-variants-1000-2026-12-04/; BENCHMARKS.md, "The pod index's
//! shared strings and two malloc arenas"; a trial at 2,000 pods, 2026-11-29, was within
//! its runs' spread). A `MALLOC_ARENA_MAX` or `GLIBC_TUNABLES` arena setting in the environment is left as the operator set it.
//! Other C libraries (musl) and other systems: nothing to do.

use std::ffi::OsStr;

/// Arenas the agent's threads share.
pub const ARENAS: i32 = 2;

/// Whether the environment already sets the number of arenas.
fn set_by_environment(arena_max: Option<&OsStr>, tunables: Option<&OsStr>) -> bool {
    arena_max.is_some()
        || tunables.is_some_and(|t| t.to_string_lossy().contains("glibc.malloc.arena_max"))
}

/// Applies the cap. Call before other threads start: arenas they created before it
/// stay.
pub fn cap() {
    let arena_max = std::env::var_os("MALLOC_ARENA_MAX");
    let tunables = std::env::var_os("GLIBC_TUNABLES");
    if !set_by_environment(arena_max.as_deref(), tunables.as_deref()) {
        set_arena_max(ARENAS);
    }
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn set_arena_max(arenas: i32) {
    // SAFETY: mallopt sets one of the allocator's parameters under the allocator's own
    // lock (safe from any thread); it reads and writes no memory of ours.
    let _ = unsafe { libc::mallopt(libc::M_ARENA_MAX, arenas) };
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn set_arena_max(_arenas: i32) {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_operators_setting_wins() {
        assert!(!set_by_environment(None, None));
        assert!(set_by_environment(Some(OsStr::new("4")), None));
        assert!(set_by_environment(
            None,
            Some(OsStr::new(
                "glibc.malloc.trim_threshold=65536:glibc.malloc.arena_max=8"
            ))
        ));
        assert!(!set_by_environment(
            None,
            Some(OsStr::new("glibc.malloc.trim_threshold=65536"))
        ));
    }
}
