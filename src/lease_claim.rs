//! Taking, renewing and releasing the leader Lease, each write conditional on the
//! Lease's `resourceVersion`: of two replicas that read the same Lease and both write,
//! the API server takes one and answers the other 409 Conflict.
//!
//! Why not `kube-leader-election`'s lock: it writes with merge patches that carry no
//! `resourceVersion`, so two replicas that both found the Lease expired (after an API
//! server restart, say) both "acquire" it, the second write wins, and both act as leader
//! — the fault campaign's seed 1021 caught exactly that in the API server's audit log
//! (`tests/chaos.rs`). A renewal by the same lock also never checks that it still holds
//! the Lease it renews.
//!
//! The decision ([`claim`]) is pure; [`try_acquire_or_renew`] and [`release`] read the
//! Lease, ask it, and write what it says.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::Api;
use kube::api::PostParams;

/// What [`claim`] decided.
#[derive(Debug, Clone, PartialEq)]
pub enum Claim {
    /// Write this spec (on the Lease read, with its `resourceVersion`; or create it).
    Write(LeaseSpec),
    /// Another replica holds the Lease and it has not expired.
    HeldBy(String),
}

/// Whether we hold the lease after the write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Acquired,
    NotAcquired { holder: String },
}

#[derive(Debug, thiserror::Error)]
pub enum LeaseClaimError {
    #[error("reading Lease {lease}: {source}")]
    Read { lease: String, source: kube::Error },
    #[error("writing Lease {lease}: {source}")]
    Write { lease: String, source: kube::Error },
}

/// The claim `identity` makes on `current` (`None`: no Lease yet) at `now`: renew it if
/// ours, take it if nobody holds it or its holder's renewal is older than its duration,
/// else leave it.
pub fn claim(
    current: Option<&LeaseSpec>,
    identity: &str,
    now: Timestamp,
    duration: Duration,
) -> Claim {
    let seconds = i32::try_from(duration.as_secs()).unwrap_or(i32::MAX);
    let fresh = |acquired: Timestamp, transitions: i32| LeaseSpec {
        holder_identity: Some(identity.to_owned()),
        lease_duration_seconds: Some(seconds),
        acquire_time: Some(MicroTime(acquired)),
        renew_time: Some(MicroTime(now)),
        lease_transitions: Some(transitions),
        ..Default::default()
    };
    let Some(spec) = current else {
        return Claim::Write(fresh(now, 0));
    };
    let holder = spec.holder_identity.clone().unwrap_or_default();
    let transitions = spec.lease_transitions.unwrap_or(0);
    if holder == identity {
        let acquired = spec.acquire_time.as_ref().map_or(now, |t| t.0);
        return Claim::Write(fresh(acquired, transitions));
    }
    let expires = spec.renew_time.as_ref().map(|t| {
        let held_for =
            SignedDuration::from_secs(i64::from(spec.lease_duration_seconds.unwrap_or(0)));
        t.0.checked_add(held_for).unwrap_or(t.0)
    });
    let expired = holder.is_empty() || expires.is_none_or(|e| e <= now);
    if expired {
        Claim::Write(fresh(now, transitions + 1))
    } else {
        Claim::HeldBy(holder)
    }
}

fn conflict(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 409)
}

/// Reads Lease `name` and renews or takes it for `identity` if [`claim`] says so, on
/// the condition that nobody wrote it since it was read.
pub async fn try_acquire_or_renew(
    api: &Api<Lease>,
    name: &str,
    identity: &str,
    duration: Duration,
) -> Result<Outcome, LeaseClaimError> {
    let lease = || format!("{}/{name}", api.namespace().unwrap_or_default());
    let current = api
        .get_opt(name)
        .await
        .map_err(|source| LeaseClaimError::Read {
            lease: lease(),
            source,
        })?;
    let spec = current.as_ref().and_then(|l| l.spec.as_ref());
    let wanted = match claim(spec, identity, Timestamp::now(), duration) {
        Claim::HeldBy(holder) => return Ok(Outcome::NotAcquired { holder }),
        Claim::Write(spec) => spec,
    };
    let written = match current {
        Some(mut l) => {
            // The resourceVersion read stays in the metadata: the write's precondition.
            l.spec = Some(wanted);
            api.replace(name, &PostParams::default(), &l).await
        }
        None => {
            let l = Lease {
                metadata: ObjectMeta {
                    name: Some(name.to_owned()),
                    ..Default::default()
                },
                spec: Some(wanted),
            };
            api.create(&PostParams::default(), &l).await
        }
    };
    match written {
        Ok(_) => Ok(Outcome::Acquired),
        // Someone wrote it in between (a create racing a create answers 409 too).
        Err(e) if conflict(&e) => Ok(Outcome::NotAcquired {
            holder: "another replica (the Lease changed since it was read)".to_owned(),
        }),
        Err(source) => Err(LeaseClaimError::Write {
            lease: lease(),
            source,
        }),
    }
}

/// Releases Lease `name` if `identity` holds it (no holder, so another replica takes it
/// at once), on the same condition.
pub async fn release(api: &Api<Lease>, name: &str, identity: &str) -> Result<(), LeaseClaimError> {
    let lease = || format!("{}/{name}", api.namespace().unwrap_or_default());
    let Some(mut current) = api
        .get_opt(name)
        .await
        .map_err(|source| LeaseClaimError::Read {
            lease: lease(),
            source,
        })?
    else {
        return Ok(());
    };
    let Some(spec) = current.spec.as_mut() else {
        return Ok(());
    };
    if spec.holder_identity.as_deref() != Some(identity) {
        return Ok(());
    }
    spec.holder_identity = None;
    match api.replace(name, &PostParams::default(), &current).await {
        Ok(_) => Ok(()),
        Err(e) if conflict(&e) => Ok(()),
        Err(source) => Err(LeaseClaimError::Write {
            lease: lease(),
            source,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: Duration = Duration::from_secs(15);

    fn at(s: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + s).expect("time")
    }

    fn held(holder: &str, renewed: i64) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(holder.to_owned()),
            lease_duration_seconds: Some(15),
            acquire_time: Some(MicroTime(at(0))),
            renew_time: Some(MicroTime(at(renewed))),
            lease_transitions: Some(3),
            ..Default::default()
        }
    }

    fn written(c: Claim) -> LeaseSpec {
        match c {
            Claim::Write(spec) => spec,
            other => panic!("no write: {other:?}"),
        }
    }

    #[test]
    fn a_missing_lease_is_created_ours() {
        let spec = written(claim(None, "a", at(5), D));
        assert_eq!(spec.holder_identity.as_deref(), Some("a"));
        assert_eq!(spec.lease_transitions, Some(0));
        assert_eq!(spec.lease_duration_seconds, Some(15));
    }

    #[test]
    fn ours_is_renewed_keeping_its_acquisition() {
        let spec = written(claim(Some(&held("a", 10)), "a", at(20), D));
        assert_eq!(spec.renew_time, Some(MicroTime(at(20))));
        assert_eq!(spec.acquire_time, Some(MicroTime(at(0))));
        assert_eq!(spec.lease_transitions, Some(3));
    }

    #[test]
    fn anothers_is_left_until_it_expires_then_taken() {
        assert_eq!(
            claim(Some(&held("b", 10)), "a", at(24), D),
            Claim::HeldBy("b".into())
        );
        let spec = written(claim(Some(&held("b", 10)), "a", at(25), D));
        assert_eq!(spec.holder_identity.as_deref(), Some("a"));
        assert_eq!(spec.acquire_time, Some(MicroTime(at(25))));
        assert_eq!(spec.lease_transitions, Some(4));
        let mut released = held("b", 10);
        released.holder_identity = None;
        assert!(matches!(
            claim(Some(&released), "a", at(11), D),
            Claim::Write(_)
        ));
    }
}
