//! Two operator replicas and one Lease (in the in-memory API server): exactly one leads; a
//! released lease passes at once; a leader that stops renewing is replaced after the lease
//! expires, and never before.

use std::time::{Duration, Instant};

use ambit_apisim::ApiServer;
use ambit_operator::leader::{LeaderElector, LeaseTimings};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, PostParams};
use kube::Client;
use serde_json::json;
use tokio::sync::watch;

fn timings() -> LeaseTimings {
    LeaseTimings {
        lease_duration: Duration::from_secs(2),
        renew_deadline: Duration::from_millis(1500),
        retry_period: Duration::from_millis(200),
    }
}

async fn setup() -> (ambit_apisim::ApiServerHandle, Api<Lease>) {
    let server = ApiServer::start("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let client = Client::try_from(kube::Config::new(server.url().parse().unwrap())).unwrap();
    Api::<Namespace>::all(client.clone())
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": "ambit-system"}})).unwrap(),
        )
        .await
        .unwrap();
    (server, Api::namespaced(client, "ambit-system"))
}

async fn holder(api: &Api<Lease>) -> Option<String> {
    api.get("ambit-operator").await.ok()?.spec?.holder_identity
}

#[tokio::test]
async fn only_one_replica_leads_and_a_released_lease_passes_at_once() {
    let (_server, api) = setup().await;
    let mut a = LeaderElector::new(api.clone(), "ambit-operator", "op-a", timings());
    let mut b = LeaderElector::new(api.clone(), "ambit-operator", "op-b", timings());
    assert!(a.try_acquire_or_renew().await.unwrap());
    assert!(!b.try_acquire_or_renew().await.unwrap());
    // Renewing keeps it, and the follower still can't take it.
    assert!(a.try_acquire_or_renew().await.unwrap());
    assert!(!b.try_acquire_or_renew().await.unwrap());
    assert_eq!(holder(&api).await.as_deref(), Some("op-a"));
    a.release().await.unwrap();
    assert!(
        b.try_acquire_or_renew().await.unwrap(),
        "a released lease is free at once"
    );
    assert_eq!(holder(&api).await.as_deref(), Some("op-b"));
    let lease = api.get("ambit-operator").await.unwrap().spec.unwrap();
    assert_eq!(lease.lease_transitions, Some(1));
}

#[tokio::test]
async fn a_silent_leader_is_replaced_only_after_the_lease_expires() {
    let (_server, api) = setup().await;
    let (a_tx, a_rx) = watch::channel(false);
    let (a_stop_tx, a_stop_rx) = watch::channel(false);
    let a = LeaderElector::new(api.clone(), "ambit-operator", "op-a", timings());
    let a_task = tokio::spawn(a.run(a_tx, a_stop_rx));
    let mut a_leading = a_rx.clone();
    tokio::time::timeout(Duration::from_secs(5), a_leading.wait_for(|l| *l))
        .await
        .unwrap()
        .unwrap();

    let (b_tx, mut b_rx) = watch::channel(false);
    let (_b_stop_tx, b_stop_rx) = watch::channel(false);
    let b = LeaderElector::new(api.clone(), "ambit-operator", "op-b", timings());
    tokio::spawn(b.run(b_tx, b_stop_rx));
    // While A renews, B never leads.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(!*b_rx.borrow(), "B took a lease that A was renewing");

    // A dies without releasing (abort: no clean shutdown).
    a_task.abort();
    let _ = a_stop_tx;
    let died = Instant::now();
    tokio::time::timeout(Duration::from_secs(10), b_rx.wait_for(|l| *l))
        .await
        .unwrap()
        .unwrap();
    let waited = died.elapsed();
    assert!(
        waited >= Duration::from_millis(1800),
        "B took over after {waited:?}, before the 2 s lease could expire"
    );
    assert_eq!(holder(&api).await.as_deref(), Some("op-b"));
}
