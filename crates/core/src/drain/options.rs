//! How to drain a node: kubectl drain's options, as the CLI, the rollout spec and the
//! agent's drains set them.

use std::time::Duration;

use super::filter::FilterOptions;

/// Backoff between eviction retries. Every answer that may change — a budget's 429,
/// throttling, 5xx, no answer at all — is retried until the drain's deadline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetrySettings {
    pub min_delay: Duration,
    pub max_delay: Duration,
}

impl Default for RetrySettings {
    fn default() -> Self {
        Self {
            min_delay: Duration::from_millis(200),
            max_delay: Duration::from_secs(10),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct DrainOptions {
    pub filter: FilterOptions,
    /// Deadline for the whole drain, from the call to `drain`.
    pub timeout: Duration,
    /// Grace period for the evicted pods; `None` keeps each pod's own.
    pub grace_period_seconds: Option<i64>,
    /// DELETE pods instead of evicting them: bypasses PodDisruptionBudgets entirely.
    pub disable_eviction: bool,
    /// Eviction requests in flight at once.
    pub concurrency: usize,
    pub retry: RetrySettings,
    pub dry_run: bool,
}

impl Default for DrainOptions {
    fn default() -> Self {
        Self {
            filter: FilterOptions::default(),
            timeout: Duration::from_secs(300),
            grace_period_seconds: None,
            disable_eviction: false,
            concurrency: 64,
            retry: RetrySettings::default(),
            dry_run: false,
        }
    }
}
