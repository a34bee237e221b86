//! Leader election against the real Lease API: one holder, fast hand-over, and a holder
//! that loses its lease stops counting itself leader at once. What the replicas did is
//! read from the Lease object (holder, acquire and renew times, transitions), not from
//! wall-clock bounds.

mod support;

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::Api;
use support::TestEnv;
use ztunnel_rollout::leader::{self, LeaderConfig, Leadership};

const TTL: Duration = Duration::from_secs(3);

fn config(env: &TestEnv, lease: &str, identity: &str) -> LeaderConfig {
    LeaderConfig {
        namespace: env.namespace.clone(),
        lease_name: lease.to_owned(),
        identity: identity.to_owned(),
        lease_duration: TTL,
    }
}

/// Waits (a generous deadline: a stuck election fails the test, it is no timing goal)
/// until `l` counts itself leader.
async fn until_leader(l: &mut Leadership, who: &str) {
    tokio::time::timeout(Duration::from_secs(60), l.acquired())
        .await
        .unwrap_or_else(|_| panic!("{who} did not become leader"));
}

/// The Lease as the API server has it.
async fn lease(env: &TestEnv, name: &str) -> LeaseSpec {
    Api::<Lease>::namespaced(env.client.clone(), &env.namespace)
        .get(name)
        .await
        .expect("read the lease")
        .spec
        .expect("a lease spec")
}

fn holder(l: &LeaseSpec) -> &str {
    l.holder_identity.as_deref().unwrap_or("")
}

fn renewed(l: &LeaseSpec) -> Timestamp {
    l.renew_time.as_ref().expect("renewTime").0
}

fn acquired(l: &LeaseSpec) -> Timestamp {
    l.acquire_time.as_ref().expect("acquireTime").0
}

fn transitions(l: &LeaseSpec) -> i32 {
    l.lease_transitions.unwrap_or(0)
}

/// Waits until the Lease's renewTime moves past `after` (the holder renewing).
async fn renewed_after(env: &TestEnv, name: &str, after: Timestamp) -> LeaseSpec {
    loop {
        let l = lease(env, name).await;
        if renewed(&l) > after {
            return l;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn one_leader_at_a_time_and_a_killed_leader_is_replaced_after_its_lease_expires() {
    let env = TestEnv::new("leader", 0).await;
    let (mut a, a_task) = leader::spawn(env.client.clone(), config(&env, "agent", "replica-a"));
    until_leader(&mut a, "replica-a").await;
    let first = lease(&env, "agent").await;
    assert_eq!(holder(&first), "replica-a");
    let (mut b, b_task) = leader::spawn(env.client.clone(), config(&env, "agent", "replica-b"));
    // Two renewals by a while b tries: the Lease stays a's, and b does not act.
    let once = renewed_after(&env, "agent", renewed(&first)).await;
    let twice = renewed_after(&env, "agent", renewed(&once)).await;
    assert_eq!(holder(&twice), "replica-a", "the holder keeps renewing");
    assert_eq!(acquired(&twice), acquired(&first), "never taken over");
    assert_eq!(transitions(&twice), transitions(&first));
    assert!(a.is_leader());
    assert!(!b.is_leader(), "two leaders at once");
    assert!(b.check().is_err());

    // SIGKILL-like: the holder stops renewing without releasing the lease.
    a_task.abort();
    // a's last renewal as the API server has it (one still in flight would land later,
    // which only moves the expiry later than this).
    let left = lease(&env, "agent").await;
    assert_eq!(holder(&left), "replica-a");
    let last_a = renewed(&left);
    until_leader(&mut b, "replica-b").await;
    assert!(
        !a.is_leader(),
        "a holder that stopped renewing must not act"
    );
    let taken = lease(&env, "agent").await;
    assert_eq!(holder(&taken), "replica-b");
    assert_eq!(transitions(&taken), transitions(&first) + 1);
    let expiry = last_a
        .checked_add(SignedDuration::try_from(TTL).expect("ttl"))
        .expect("time");
    assert!(
        acquired(&taken) >= expiry,
        "b took the lease at {} before a's last renewal {last_a} expired",
        acquired(&taken)
    );
    eprintln!(
        "take-over {} after the lease expired",
        acquired(&taken).duration_since(expiry)
    );
    b_task.abort();
}

#[tokio::test]
async fn a_holder_that_loses_its_lease_stops_at_once() {
    let env = TestEnv::new("leader-lost", 0).await;
    let (mut a, a_task) = leader::spawn(env.client.clone(), config(&env, "agent", "replica-a"));
    until_leader(&mut a, "replica-a").await;
    a.check().expect("leader");

    // Someone else takes the lease (as after a network partition healed).
    support::take_lease(&env, "agent", "intruder").await;
    support::until_not_leader(&a, TTL).await;
    let err = a.check().expect_err("not the leader");
    assert!(
        err.to_string()
            .contains(&format!("{}/agent", env.namespace)),
        "{err}"
    );
    a_task.abort();
}

#[tokio::test]
async fn stepping_down_hands_over_without_waiting_for_expiry() {
    let env = TestEnv::new("leader-step", 0).await;
    let first = config(&env, "agent", "replica-a");
    let (mut a, a_task) = leader::spawn(env.client.clone(), first.clone());
    until_leader(&mut a, "replica-a").await;
    let (mut b, b_task) = leader::spawn(env.client.clone(), config(&env, "agent", "replica-b"));
    a_task.abort();
    let held = lease(&env, "agent").await;
    assert_eq!(holder(&held), "replica-a");
    leader::step_down(env.client.clone(), &first)
        .await
        .expect("step down");
    until_leader(&mut b, "replica-b").await;
    let taken = lease(&env, "agent").await;
    assert_eq!(holder(&taken), "replica-b");
    assert_eq!(transitions(&taken), transitions(&held) + 1);
    let expiry = renewed(&held)
        .checked_add(SignedDuration::try_from(TTL).expect("ttl"))
        .expect("time");
    assert!(
        acquired(&taken) < expiry,
        "b took the lease at {}, not before a's lease ({}) would have expired",
        acquired(&taken),
        expiry
    );
    b_task.abort();
}
