//! The agent's Prometheus metrics (prometheus-client), registered once and shared. The
//! alert rules (`manifests/alerts`) and the dashboard (`manifests/dashboard`) are built on
//! these names: a rename here breaks them (tests/observability.rs checks both).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use std::sync::atomic::AtomicU64;

use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PhaseLabels {
    pub rollout: String,
    pub phase: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EvictionLabels {
    /// accepted, refused_by_budget, failed
    pub result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct VerdictLabels {
    pub rollout: String,
    /// passed, failed
    pub result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RolloutLabels {
    pub rollout: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StepLabels {
    pub rollout: String,
    /// The phase the node spent the time in: Cordoned (the drain), Drained (the ztunnel
    /// pod's replacement), ZtunnelReplaced (the new pod's readiness), ZtunnelReady (the
    /// health gates), Verified (the release).
    pub step: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MigrationLabels {
    pub migration: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct NamespaceResultLabels {
    pub migration: String,
    /// migrated, failed, rolled_back, rollback_failed
    pub result: String,
}

pub struct Metrics {
    pub nodes: Family<PhaseLabels, Gauge>,
    pub node_duration_seconds: Family<RolloutLabels, Histogram>,
    pub evictions: Family<EvictionLabels, Counter>,
    pub node_failures: Family<RolloutLabels, Counter>,
    pub verifications: Family<VerdictLabels, Counter>,
    pub is_leader: Gauge,
    pub pass_seconds: Histogram,
    /// 1 for the phase each rollout is in (its `status.phase`), 0 for the others.
    pub rollout_phase: Family<PhaseLabels, Gauge>,
    /// When a node of the rollout last changed phase, or this term took the rollout up
    /// (Unix seconds): the stall alert's clock.
    pub last_progress: Family<RolloutLabels, Gauge<f64, AtomicU64>>,
    /// When the rollout cordoned the longest-held node it may still hold cordoned (Unix
    /// seconds); no series while it holds none.
    pub oldest_cordon: Family<RolloutLabels, Gauge<f64, AtomicU64>>,
    /// Release (uncordon) calls the API server failed or refused; each is retried.
    pub release_failures: Family<RolloutLabels, Counter>,
    /// Time a node spent in each phase of its sequence.
    pub step_duration_seconds: Family<StepLabels, Histogram>,
    pub sidecar_namespaces: Family<NamespaceResultLabels, Counter>,
    pub sidecar_workload_restarts: Family<MigrationLabels, Counter>,
}

impl Metrics {
    /// Removes a deleted rollout's series.
    pub fn forget_rollout(&self, rollout: &str) {
        for phase in ztunnel_rollout_core::rollout::node_machine::NodePhase::ALL {
            self.nodes.remove(&PhaseLabels {
                rollout: rollout.to_owned(),
                phase: phase.as_str().to_owned(),
            });
        }
        for phase in ztunnel_rollout_core::rollout::status::RolloutPhase::ALL {
            self.rollout_phase.remove(&PhaseLabels {
                rollout: rollout.to_owned(),
                phase: phase.as_str().to_owned(),
            });
        }
        let labels = RolloutLabels {
            rollout: rollout.to_owned(),
        };
        for phase in ztunnel_rollout_core::rollout::node_machine::NodePhase::ALL {
            self.step_duration_seconds.remove(&StepLabels {
                rollout: rollout.to_owned(),
                step: phase.as_str().to_owned(),
            });
        }
        self.node_duration_seconds.remove(&labels);
        self.node_failures.remove(&labels);
        self.last_progress.remove(&labels);
        self.oldest_cordon.remove(&labels);
        self.release_failures.remove(&labels);
        for result in ["passed", "failed"] {
            self.verifications.remove(&VerdictLabels {
                rollout: rollout.to_owned(),
                result: result.to_owned(),
            });
        }
    }

    /// Creates the metrics and registers them under the `ztunnel_rollout` prefix.
    pub fn register(registry: &mut Registry) -> Self {
        let m = Metrics {
            nodes: Family::default(),
            // 10 s to ~45 min: a node's whole sequence, drain included.
            node_duration_seconds: Family::new_with_constructor(|| {
                Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
                    10.0, 1.5, 14,
                ))
            }),
            evictions: Family::default(),
            node_failures: Family::default(),
            verifications: Family::default(),
            is_leader: Gauge::default(),
            // 0.5 ms to ~8 s.
            pass_seconds: Histogram::new(
                prometheus_client::metrics::histogram::exponential_buckets(0.0005, 2.0, 15),
            ),
            sidecar_namespaces: Family::default(),
            sidecar_workload_restarts: Family::default(),
            rollout_phase: Family::default(),
            last_progress: Family::default(),
            oldest_cordon: Family::default(),
            release_failures: Family::default(),
            // 0.5 s to ~2.3 h: a release's round trip to a long drain.
            step_duration_seconds: Family::new_with_constructor(|| {
                Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
                    0.5, 2.0, 15,
                ))
            }),
        };
        let r = registry.sub_registry_with_prefix("ztunnel_rollout");
        r.register("nodes", "Nodes of each rollout by phase", m.nodes.clone());
        r.register(
            "node_duration_seconds",
            "Time from a node's cordon to its uncordon",
            m.node_duration_seconds.clone(),
        );
        r.register(
            "evictions",
            "Eviction requests by result",
            m.evictions.clone(),
        );
        r.register(
            "node_failures",
            "Nodes that failed",
            m.node_failures.clone(),
        );
        r.register(
            "verifications",
            "Health gate verdicts by result",
            m.verifications.clone(),
        );
        r.register(
            "is_leader",
            "1 while this replica holds the lease",
            m.is_leader.clone(),
        );
        r.register(
            "pass_seconds",
            "Time of one reconcile pass over every rollout (the agent's reaction time to a change, less the watch's delay)",
            m.pass_seconds.clone(),
        );
        r.register(
            "sidecar_namespaces",
            "Namespaces of sidecar migrations that finished, by result",
            m.sidecar_namespaces.clone(),
        );
        r.register(
            "sidecar_workload_restarts",
            "Workloads restarted by sidecar migrations",
            m.sidecar_workload_restarts.clone(),
        );
        r.register(
            "phase",
            "1 for the phase each rollout is in (status.phase), 0 for the others",
            m.rollout_phase.clone(),
        );
        r.register(
            "last_progress_timestamp_seconds",
            "When a node of the rollout last changed phase, or the leader took the rollout up (Unix seconds)",
            m.last_progress.clone(),
        );
        r.register(
            "oldest_cordon_timestamp_seconds",
            "When the rollout cordoned the longest-held node it may still hold cordoned (Unix seconds); absent while it holds none",
            m.oldest_cordon.clone(),
        );
        r.register(
            "release_failures",
            "Release (uncordon) calls the API server failed or refused; each is retried with backoff",
            m.release_failures.clone(),
        );
        r.register(
            "step_duration_seconds",
            "Time a node spent in each phase of its sequence (step: the phase it left)",
            m.step_duration_seconds.clone(),
        );
        m
    }
}
