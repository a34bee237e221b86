//! Leader election against the real Lease API: one holder, fast hand-over, and a holder
//! that loses its lease stops counting itself leader at once.

mod support;

use std::time::Duration;

use support::TestEnv;
use tokio::time::Instant;
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

async fn until_leader(l: &mut Leadership, within: Duration, who: &str) -> Duration {
    let started = Instant::now();
    tokio::time::timeout(within, l.acquired())
        .await
        .unwrap_or_else(|_| panic!("{who} did not become leader within {within:?}"));
    started.elapsed()
}

#[tokio::test]
async fn one_leader_at_a_time_and_a_killed_leader_is_replaced_within_the_lease() {
    let env = TestEnv::new("leader", 0).await;
    let (mut a, a_task) = leader::spawn(env.client.clone(), config(&env, "agent", "replica-a"));
    until_leader(&mut a, Duration::from_secs(10), "replica-a").await;
    let (mut b, b_task) = leader::spawn(env.client.clone(), config(&env, "agent", "replica-b"));
    tokio::time::sleep(TTL).await;
    assert!(a.is_leader(), "the holder keeps renewing");
    assert!(!b.is_leader(), "two leaders at once");
    assert!(b.check().is_err());

    // SIGKILL-like: the holder stops renewing without releasing the lease.
    a_task.abort();
    let took = until_leader(&mut b, TTL + Duration::from_secs(5), "replica-b").await;
    assert!(
        !a.is_leader(),
        "a holder that stopped renewing must not act"
    );
    eprintln!("take-over after the holder stopped: {took:?}");
    b_task.abort();
}

#[tokio::test]
async fn a_holder_that_loses_its_lease_stops_at_once() {
    let env = TestEnv::new("leader-lost", 0).await;
    let (mut a, a_task) = leader::spawn(env.client.clone(), config(&env, "agent", "replica-a"));
    until_leader(&mut a, Duration::from_secs(10), "replica-a").await;
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
    until_leader(&mut a, Duration::from_secs(10), "replica-a").await;
    let (mut b, b_task) = leader::spawn(env.client.clone(), config(&env, "agent", "replica-b"));
    a_task.abort();
    leader::step_down(env.client.clone(), &first)
        .await
        .expect("step down");
    let took = until_leader(&mut b, TTL, "replica-b").await;
    assert!(took < TTL, "hand-over took {took:?}, as long as an expiry");
    b_task.abort();
}
