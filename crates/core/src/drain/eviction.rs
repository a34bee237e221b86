//! What an answer of the Eviction API means for the drain.

use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;

use crate::api_errors::{ApiFailure, DISRUPTION_BUDGET_CAUSE};

/// The API server's message when a pod is covered by several PDBs (HTTP 500).
const SEVERAL_BUDGETS: &str = "more than one PodDisruptionBudget";
/// Cause type the API server uses for writes into a namespace being deleted.
const NAMESPACE_TERMINATING: &str = "NamespaceTerminating";

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// The pod is being deleted; wait for it to go.
    Accepted,
    /// The pod (with our UID) no longer exists: 404, or 409 on the UID precondition.
    Gone,
    /// 429: a PDB allows no disruption now. Retry later, not before `retry_after`.
    Blocked {
        retry_after: Option<Duration>,
        message: String,
    },
    /// 429 without a budget cause: API Priority and Fairness throttles us. Retry, not
    /// before `retry_after`; never reported as a PDB wait.
    Throttled { retry_after: Option<Duration> },
    /// 500 for a pod under several PDBs: the API will never evict it.
    SeveralBudgets,
    /// 403 from a namespace being deleted: its pods go anyway; retry.
    NamespaceTerminating,
    /// Anything else that may pass on a retry (5xx, connection errors).
    Retryable(String),
    /// Retrying cannot help (e.g. 403 Forbidden by RBAC, 422 Invalid).
    Fatal(String),
}

/// Whether a 409 says the object under that name has another UID than the one in our
/// precondition: ours is gone (perhaps replaced under the same name).
pub fn uid_precondition_failed(message: &str) -> bool {
    message.contains("does not match the UID in record")
        || message.contains("Precondition failed: UID")
}

impl Verdict {
    pub fn of(result: &Result<(), ApiFailure>) -> Verdict {
        let status = match result {
            Ok(()) => return Verdict::Accepted,
            Err(ApiFailure::Status(status)) => status,
            Err(other) => return Verdict::Retryable(other.to_string()),
        };
        let message = status.text().to_owned();
        match status.code {
            404 => Verdict::Gone,
            409 if uid_precondition_failed(&status.message) => Verdict::Gone,
            429 if status.has_cause(DISRUPTION_BUDGET_CAUSE)
                || (status.causes.is_empty() && status.message.contains("disruption budget")) =>
            {
                let detail: Vec<&str> = status
                    .causes
                    .iter()
                    .map(|(_, m)| m.as_str())
                    .filter(|m| !m.is_empty())
                    .collect();
                Verdict::Blocked {
                    retry_after: status.retry_after(),
                    message: if detail.is_empty() {
                        message
                    } else {
                        detail.join("; ")
                    },
                }
            }
            // API Priority and Fairness: the API server is busy, not the budget.
            429 => Verdict::Throttled {
                retry_after: status.retry_after(),
            },
            500 if status.message.contains(SEVERAL_BUDGETS) => Verdict::SeveralBudgets,
            403 if status.has_cause(NAMESPACE_TERMINATING) => Verdict::NamespaceTerminating,
            401 | 403 | 400 | 422 => Verdict::Fatal(message),
            _ => Verdict::Retryable(message),
        }
    }
}

/// Whether an eviction (or deletion) of the pod with `uid` whose answer never came took
/// effect, judged from the pod as read afterwards (`None`: not found): it is gone,
/// replaced under the same name, or terminating. Sending it again would then only evict
/// a pod already on its way out — a second eviction of the same pod.
pub fn took_effect(pod: Option<&Pod>, uid: &str) -> bool {
    pod.is_none_or(|p| {
        p.metadata.uid.as_deref() != Some(uid) || p.metadata.deletion_timestamp.is_some()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api_errors::ApiStatus;

    #[test]
    fn an_eviction_took_effect_when_the_pod_is_gone_replaced_or_terminating() {
        let pod = |uid: &str, terminating: bool| -> Pod {
            serde_json::from_value(serde_json::json!({ "metadata": {
                "name": "p", "uid": uid,
                "deletionTimestamp": terminating.then_some("2026-12-02T10:00:00Z"),
            } }))
            .expect("pod")
        };
        assert!(took_effect(None, "u1"));
        assert!(took_effect(Some(&pod("u2", false)), "u1"));
        assert!(took_effect(Some(&pod("u1", true)), "u1"));
        assert!(!took_effect(Some(&pod("u1", false)), "u1"));
    }

    struct Details(u32, &'static str, &'static str);

    fn api(code: u16, message: &str, details: Option<Details>) -> Result<(), ApiFailure> {
        let (retry_after_seconds, causes) = match details {
            Some(Details(retry, reason, message)) => {
                (retry, vec![(reason.to_owned(), message.to_owned())])
            }
            None => (0, Vec::new()),
        };
        Err(ApiFailure::Status(ApiStatus {
            code,
            reason: String::new(),
            message: message.into(),
            causes,
            retry_after_seconds,
        }))
    }

    fn details(
        retry_after_seconds: u32,
        cause_reason: &'static str,
        cause_message: &'static str,
    ) -> Option<Details> {
        Some(Details(retry_after_seconds, cause_reason, cause_message))
    }

    #[test]
    fn success_and_absence() {
        assert_eq!(Verdict::of(&Ok(())), Verdict::Accepted);
        assert_eq!(
            Verdict::of(&api(404, "pods \"x\" not found", None)),
            Verdict::Gone
        );
        assert_eq!(
            Verdict::of(&api(
                409,
                "Precondition failed: UID in precondition: a, UID in object meta: b",
                None
            )),
            Verdict::Gone
        );
        // What kube-apiserver 1.36 answers (seen in the integration tests).
        let replaced = "Operation cannot be fulfilled on Pod \"x\": the UID in the precondition (a) does not match the UID in record (b). The object might have been deleted and then recreated";
        assert_eq!(Verdict::of(&api(409, replaced, None)), Verdict::Gone);
        assert!(matches!(
            Verdict::of(&api(409, "the object has been modified", None)),
            Verdict::Retryable(_)
        ));
    }

    #[test]
    fn a_pdb_refusal_carries_retry_after_and_the_budget_message() {
        let v = Verdict::of(&api(
            429,
            "Cannot evict pod as it would violate the pod's disruption budget.",
            details(
                10,
                "DisruptionBudget",
                "The disruption budget api needs 3 healthy pods and has 3 currently",
            ),
        ));
        assert_eq!(
            v,
            Verdict::Blocked {
                retry_after: Some(Duration::from_secs(10)),
                message: "The disruption budget api needs 3 healthy pods and has 3 currently"
                    .into()
            }
        );
    }

    #[test]
    fn throttling_is_not_a_budget_wait() {
        let v = Verdict::of(&api(
            429,
            "Too many requests, please try again later.",
            details(1, "", ""),
        ));
        assert_eq!(
            v,
            Verdict::Throttled {
                retry_after: Some(Duration::from_secs(1))
            }
        );
    }

    #[test]
    fn several_budgets_terminating_namespaces_and_the_rest() {
        assert_eq!(
            Verdict::of(&api(
                500,
                "This pod has more than one PodDisruptionBudget, which the eviction subresource does not support.",
                None
            )),
            Verdict::SeveralBudgets
        );
        assert_eq!(
            Verdict::of(&api(
                403,
                "forbidden: namespace is being terminated",
                details(0, "NamespaceTerminating", "")
            )),
            Verdict::NamespaceTerminating
        );
        assert!(
            matches!(Verdict::of(&api(403, "RBAC: access denied", None)), Verdict::Fatal(m) if m.contains("RBAC"))
        );
        assert!(
            matches!(Verdict::of(&api(500, "etcd timeout", None)), Verdict::Retryable(m) if m.contains("etcd"))
        );
        assert!(matches!(
            Verdict::of(&api(503, "unavailable", None)),
            Verdict::Retryable(_)
        ));
    }
}
