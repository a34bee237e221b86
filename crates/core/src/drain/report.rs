//! The result of a drain, shared by the rollout engine and the CLI: what happened to
//! every pod of the node, when, and after how many attempts.

use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum Outcome {
    /// Dry run: would be evicted.
    WouldEvict,
    /// Evicted (or deleted with `--disable-eviction`) and gone.
    Evicted,
    /// Left alone (DaemonSet, mirror pod, not selected, stuck terminating).
    Skipped,
    /// Not evicted because the options do not allow it; nothing was evicted.
    Refused,
    /// Eviction failed for good (e.g. several PDBs).
    Failed,
    /// Still there, or still terminating, when the deadline came.
    NotGone,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PodResult {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    pub outcome: Outcome,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Eviction (or delete) requests sent for this pod.
    pub attempts: u32,
    /// How many of those a PodDisruptionBudget refused (HTTP 429).
    pub refused_by_budget: u32,
    /// The last answer was the API server's own trouble (no answer, 5xx, throttling),
    /// not a verdict about the pod.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub api_trouble: bool,
    /// Milliseconds from the drain's start to the accepted eviction.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub evicted_after_ms: Option<u64>,
    /// Milliseconds from the drain's start to the pod being gone.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gone_after_ms: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DrainReport {
    pub node: String,
    pub dry_run: bool,
    /// True only when every pod to drain is gone. Never true after a refusal, a failure
    /// or the deadline.
    pub complete: bool,
    pub elapsed_ms: u64,
    pub pods: Vec<PodResult>,
}

impl DrainReport {
    /// An incomplete drain whose pods left were all held up by the API server's own
    /// trouble, not by a budget or a refusal: not the node's fault.
    pub fn failed_on_api_trouble(&self) -> bool {
        !self.complete
            && self
                .pods
                .iter()
                .filter(|p| !matches!(p.outcome, Outcome::Evicted | Outcome::Skipped))
                .all(|p| p.api_trouble)
    }

    pub fn count(&self, outcome: Outcome) -> usize {
        self.pods.iter().filter(|p| p.outcome == outcome).count()
    }

    /// One line: the verdict and the counts.
    pub fn summary(&self) -> String {
        let verdict = match (self.dry_run, self.complete) {
            (true, true) => "dry run: the drain would proceed",
            (true, false) => "dry run: the drain would be refused",
            (false, true) => "drained",
            (false, false) => "NOT drained",
        };
        format!(
            "node {}: {verdict} in {:.1}s — {} evicted, {} would evict, {} skipped, {} refused, {} failed, {} not gone",
            self.node,
            self.elapsed_ms as f64 / 1000.0,
            self.count(Outcome::Evicted),
            self.count(Outcome::WouldEvict),
            self.count(Outcome::Skipped),
            self.count(Outcome::Refused),
            self.count(Outcome::Failed),
            self.count(Outcome::NotGone),
        )
    }

    /// A table of every pod, then the summary.
    pub fn render_text(&self) -> String {
        let mut out = format!(
            "{:<20} {:<40} {:<10} {:>8} {:>5} {:>8}  {}\n",
            "NAMESPACE", "POD", "OUTCOME", "ATTEMPTS", "429S", "GONE(S)", "REASON"
        );
        for p in &self.pods {
            let outcome = serde_json::to_value(p.outcome)
                .ok()
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_default();
            let gone = p
                .gone_after_ms
                .map(|ms| format!("{:.1}", ms as f64 / 1000.0))
                .unwrap_or_else(|| "-".to_owned());
            out.push_str(&format!(
                "{:<20} {:<40} {:<10} {:>8} {:>5} {:>8}  {}\n",
                p.namespace,
                p.name,
                outcome,
                p.attempts,
                p.refused_by_budget,
                gone,
                p.reason.as_deref().unwrap_or("")
            ));
        }
        out.push_str(&self.summary());
        out.push('\n');
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(name: &str, outcome: Outcome, reason: Option<&str>) -> PodResult {
        PodResult {
            namespace: "shop".into(),
            name: name.into(),
            uid: format!("uid-{name}"),
            outcome,
            reason: reason.map(str::to_owned),
            attempts: 1,
            refused_by_budget: 0,
            api_trouble: false,
            evicted_after_ms: None,
            gone_after_ms: Some(1500),
        }
    }

    #[test]
    fn the_text_names_every_pod_and_the_verdict() {
        let report = DrainReport {
            node: "n1".into(),
            dry_run: false,
            complete: false,
            elapsed_ms: 30_000,
            pods: vec![
                pod("web-1", Outcome::Evicted, None),
                pod(
                    "api-1",
                    Outcome::NotGone,
                    Some("PDB shop/api allows 0 disruptions (needs 1 healthy, has 1)"),
                ),
            ],
        };
        let text = report.render_text();
        assert!(text.contains("web-1") && text.contains("evicted"));
        assert!(text.contains("notGone") && text.contains("PDB shop/api allows 0"));
        assert!(text.contains("NOT drained in 30.0s — 1 evicted"), "{text}");
    }

    #[test]
    fn json_uses_camel_case() {
        let v = serde_json::to_value(pod("a", Outcome::WouldEvict, None)).unwrap();
        assert_eq!(v["outcome"], "wouldEvict");
        assert_eq!(v["goneAfterMs"], 1500);
        assert_eq!(v["refusedByBudget"], 0);
    }
}
