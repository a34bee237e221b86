//! The effects as the agent's executor runs them against the API server, played on the
//! simulated cluster: the same preconditions (resourceVersions, UIDs, ownership, the
//! node still cordoned before a ztunnel delete) and the API server's failures — no
//! answer, an answer lost after the change applied, 503, throttling.

use crate::api_errors::{ApiFailure, ApiStatus};
use crate::labels::{
    CORDON_ID_ANNOTATION, OWNER_ANNOTATION, WAITING_TAINT, WAS_UNSCHEDULABLE_ANNOTATION,
};
use crate::rollout::ownership::owner;
use crate::rollout::pass::{CallDone, CallError, CallKind, NodeCall};

use super::cluster::{Actor, Cluster};

/// How the API server treats one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApiFault {
    None,
    /// Connection refused or reset before the server saw it: not applied.
    NoAnswer,
    /// Applied, but the answer was lost (a timeout): the caller does not know.
    AnswerLost,
    /// 503: not applied.
    Unavailable,
    /// 429 from API Priority and Fairness: not applied.
    Throttled,
}

impl ApiFault {
    fn before(self) -> Option<CallError> {
        Some(CallError::Api(match self {
            ApiFault::None | ApiFault::AnswerLost => return None,
            ApiFault::NoAnswer => ApiFailure::Transport("connection refused".into()),
            ApiFault::Unavailable => status(503, "ServiceUnavailable", 0),
            ApiFault::Throttled => status(429, "TooManyRequests", 1),
        }))
    }

    fn after(self) -> Option<CallError> {
        (self == ApiFault::AnswerLost).then(|| {
            CallError::Api(ApiFailure::Transport(
                "timed out waiting for the answer".into(),
            ))
        })
    }

    /// The failure a request with this fault returns before or after applying, as an
    /// API failure (owner-object calls).
    pub fn failure(self) -> Option<ApiFailure> {
        match self.before().or(self.after()) {
            Some(CallError::Api(f)) => Some(f),
            _ => None,
        }
    }

    pub fn applies(self) -> bool {
        matches!(self, ApiFault::None | ApiFault::AnswerLost)
    }
}

fn status(code: u16, reason: &str, retry: u32) -> ApiFailure {
    ApiFailure::Status(ApiStatus {
        code,
        reason: reason.into(),
        message: reason.into(),
        causes: Vec::new(),
        retry_after_seconds: retry,
    })
}

fn conflict() -> CallError {
    CallError::Api(status(409, "Conflict", 0))
}

/// What a node call did, for the invariants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Applied {
    Nothing,
    /// Cordoned by the rollout: a start (the node did not carry its annotation yet), or
    /// again (someone uncordoned a node in its sequence, or a new term resumes).
    Cordon {
        node: String,
        was_schedulable: bool,
        start: bool,
    },
    DeletedZtunnel {
        node: String,
        node_schedulable: bool,
    },
    Released {
        node: String,
        uncordoned: bool,
        cordoned_by: Option<Actor>,
    },
    Taint,
}

/// Runs `call` of `rollout` on the cluster with `fault`.
pub fn node_call(
    c: &mut Cluster,
    rollout: &str,
    call: &NodeCall,
    fault: ApiFault,
) -> (Result<CallDone, CallError>, Applied) {
    if let Some(e) = fault.before() {
        return (Err(e), Applied::Nothing);
    }
    let name = call.node.as_str();
    let Some(current) = c.nodes.get(name) else {
        return (Err(CallError::NodeGone), Applied::Nothing);
    };
    let current_rv = current.rv.to_string();
    let mut applied = Applied::Nothing;
    let result = match &call.kind {
        CallKind::Cordon {
            was_unschedulable,
            drain_check,
        } => {
            let Some(observed) = call.observed.as_deref() else {
                return (Err(CallError::NodeGone), Applied::Nothing);
            };
            if let Some(other) = owner(observed).filter(|o| *o != rollout) {
                return (Err(CallError::OwnedBy(other.to_owned())), Applied::Nothing);
            }
            if drain_check.is_some()
                && let Some(why) = blockers(c, name)
            {
                return (Err(CallError::Blocked(why)), Applied::Nothing);
            }
            if observed.metadata.resource_version.as_deref() != Some(current_rv.as_str()) {
                return (Err(conflict()), Applied::Nothing);
            }
            let was_schedulable = !current.unschedulable;
            let start = current.owner() != Some(rollout);
            c.set_unschedulable(name, true, Actor::Rollout(rollout.to_owned()));
            let n = c.nodes.get_mut(name).expect("node");
            n.annotations
                .insert(OWNER_ANNOTATION.into(), rollout.to_owned());
            n.annotations.insert(
                WAS_UNSCHEDULABLE_ANNOTATION.into(),
                was_unschedulable.to_string(),
            );
            n.annotations
                .insert(CORDON_ID_ANNOTATION.into(), current_rv.clone());
            n.taints
                .retain(|t| !(t.key == WAITING_TAINT && t.value.as_deref() == Some(rollout)));
            applied = Applied::Cordon {
                node: name.to_owned(),
                was_schedulable,
                start,
            };
            Ok(CallDone::Applied {
                over: vec![current_rv],
            })
        }
        CallKind::Disown { cordon } => match current.owner() {
            Some(o)
                if o == rollout
                    && (cordon.is_none()
                        || current.annotations.get(CORDON_ID_ANNOTATION) == cordon.as_ref()) =>
            {
                c.touch(name);
                let n = c.nodes.get_mut(name).expect("node");
                n.annotations
                    .insert(WAS_UNSCHEDULABLE_ANNOTATION.into(), "true".into());
                Ok(CallDone::Applied {
                    over: vec![current_rv.clone()],
                })
            }
            _ => Ok(CallDone::NotOwned),
        },
        CallKind::Check { .. } => {
            if current.owner() == Some(rollout) {
                Ok(CallDone::Owned {
                    was_unschedulable: super::cluster::was_unschedulable(current).unwrap_or(true),
                    unschedulable: current.unschedulable,
                    version: current_rv.clone(),
                })
            } else {
                Ok(CallDone::NotOwned)
            }
        }
        // The simulation runs no istio-cni: the call's only rule is the cordon.
        CallKind::DeleteCniPod { .. } => {
            if !current.unschedulable {
                return (Err(CallError::Schedulable), Applied::Nothing);
            }
            Ok(CallDone::Applied { over: Vec::new() })
        }
        CallKind::DeleteZtunnelPod { uid, .. } => {
            let schedulable = !current.unschedulable;
            if schedulable {
                return (Err(CallError::Schedulable), Applied::Nothing);
            }
            let now = c.now;
            if let Some(p) = c.pods.get_mut(uid)
                && p.terminating_since.is_none()
            {
                p.terminating_since = Some(now);
            }
            applied = Applied::DeletedZtunnel {
                node: name.to_owned(),
                node_schedulable: schedulable,
            };
            Ok(CallDone::Applied { over: Vec::new() })
        }
        CallKind::Release { uncordon } => {
            // As the executor: from the watched copy when it shows our ownership and is
            // current, else from the node read afresh.
            let mut over = Vec::new();
            if let Some(o) = call
                .observed
                .as_deref()
                .filter(|o| owner(o) == Some(rollout))
            {
                over.extend(o.metadata.resource_version.clone());
            }
            over.push(current_rv.clone());
            over.dedup();
            match current.owner() {
                None => Ok(CallDone::NotOwned),
                Some(other) if other != rollout => Err(CallError::OwnedBy(other.to_owned())),
                Some(_) => {
                    let was = super::cluster::was_unschedulable(&c.nodes[name]).unwrap_or(true);
                    let cordoned_by = c.nodes[name].cordoned_by.clone();
                    // managedFields: someone else set unschedulable since our cordon.
                    let foreign = c.nodes[name].unschedulable
                        && cordoned_by != Some(Actor::Rollout(rollout.to_owned()));
                    let uncordoned = *uncordon && !was && !foreign && c.nodes[name].unschedulable;
                    if *uncordon && !was && foreign {
                        c.touch(name);
                        let n = c.nodes.get_mut(name).expect("node");
                        n.annotations.remove(OWNER_ANNOTATION);
                        n.annotations.remove(WAS_UNSCHEDULABLE_ANNOTATION);
                        n.annotations.remove(CORDON_ID_ANNOTATION);
                        return (
                            Ok(CallDone::LeftCordoned {
                                over,
                                by: format!("{:?}", cordoned_by),
                            }),
                            Applied::Released {
                                node: name.to_owned(),
                                uncordoned: false,
                                cordoned_by,
                            },
                        );
                    }
                    if *uncordon && !was {
                        c.set_unschedulable(name, false, Actor::Rollout(rollout.to_owned()));
                    } else {
                        c.touch(name);
                    }
                    let n = c.nodes.get_mut(name).expect("node");
                    n.annotations.remove(OWNER_ANNOTATION);
                    n.annotations.remove(WAS_UNSCHEDULABLE_ANNOTATION);
                    n.annotations.remove(CORDON_ID_ANNOTATION);
                    applied = Applied::Released {
                        node: name.to_owned(),
                        uncordoned,
                        cordoned_by,
                    };
                    Ok(CallDone::Applied { over })
                }
            }
        }
        CallKind::Uncordon => match current.owner() {
            // As the executor: from the node read afresh; a cordon someone else put on
            // it since the rollout's stays.
            None => Ok(CallDone::NotOwned),
            Some(other) if other != rollout => Err(CallError::OwnedBy(other.to_owned())),
            Some(_) => {
                let cordoned_by = current.cordoned_by.clone();
                let ours = cordoned_by == Some(Actor::Rollout(rollout.to_owned()));
                let uncordoned = current.unschedulable && ours;
                if uncordoned {
                    c.set_unschedulable(name, false, Actor::Rollout(rollout.to_owned()));
                } else {
                    c.touch(name);
                }
                let n = c.nodes.get_mut(name).expect("node");
                n.annotations
                    .insert(WAS_UNSCHEDULABLE_ANNOTATION.into(), "true".into());
                let kept = !uncordoned && n.unschedulable;
                let by = format!("{cordoned_by:?}");
                applied = Applied::Released {
                    node: name.to_owned(),
                    uncordoned,
                    cordoned_by,
                };
                let over = vec![current_rv.clone()];
                if kept {
                    Ok(CallDone::LeftCordoned { over, by })
                } else {
                    Ok(CallDone::Applied { over })
                }
            }
        },
        CallKind::WaitingTaint { waiting } => {
            let Some(observed) = call.observed.as_deref() else {
                return (Err(CallError::NodeGone), Applied::Nothing);
            };
            let has = |taints: &[k8s_openapi::api::core::v1::Taint]| {
                taints
                    .iter()
                    .any(|t| t.key == WAITING_TAINT && t.value.as_deref() == Some(rollout))
            };
            let observed_taints = crate::rollout::ownership::taints_of(observed);
            // A removal reads afresh when the watched copy does not show the taint.
            let fresh = !*waiting && !has(observed_taints);
            let base_rv = if fresh {
                current_rv.clone()
            } else {
                observed
                    .metadata
                    .resource_version
                    .clone()
                    .unwrap_or_default()
            };
            if base_rv != current_rv {
                return (Err(conflict()), Applied::Nothing);
            }
            let n = c.nodes.get(name).expect("node");
            let any = n.taints.iter().any(|t| t.key == WAITING_TAINT);
            let change = if *waiting { !any } else { has(&n.taints) };
            if change {
                let rv = c.next_rv();
                let n = c.nodes.get_mut(name).expect("node");
                if *waiting {
                    n.taints.push(k8s_openapi::api::core::v1::Taint {
                        key: WAITING_TAINT.into(),
                        value: Some(rollout.to_owned()),
                        effect: "PreferNoSchedule".into(),
                        time_added: None,
                    });
                } else {
                    n.taints.retain(|t| {
                        !(t.key == WAITING_TAINT && t.value.as_deref() == Some(rollout))
                    });
                }
                n.rv = rv;
                applied = Applied::Taint;
                Ok(CallDone::Applied {
                    over: vec![base_rv],
                })
            } else {
                Ok(CallDone::Applied { over: Vec::new() })
            }
        }
    };
    match (result, fault.after()) {
        (Ok(_), Some(e)) => (Err(e), applied),
        (result, _) => (result, applied),
    }
}

/// Pods on `node` no drain can ever evict, as the executor's check before a cordon sees
/// them.
pub fn blockers(c: &Cluster, node: &str) -> Option<String> {
    let pods: Vec<String> = c
        .pods
        .values()
        .filter(|p| p.node.as_deref() == Some(node) && p.terminating_since.is_none())
        .filter_map(|p| {
            let app = p.app?;
            (c.apps[app].two_pdbs || c.pdb_never_allows(app)).then(|| p.name.clone())
        })
        .collect();
    (!pods.is_empty()).then(|| format!("pods {}", pods.join(", ")))
}

/// Whether the rollout `name` still owns `node` (our annotation on it), by `obj`.
pub fn owned_by(obj: &k8s_openapi::api::core::v1::Node, name: &str) -> bool {
    owner(obj) == Some(name)
}
