//! The real operator's CA follows the Mesh while it runs: a new `certificateTtl` applies to the
//! next certificate a ztunnel asks for, without restarting the operator, and an invalid value
//! keeps the last good lifetime.

mod apisim_common;

use std::sync::Arc;
use std::time::Duration;

use ambit_core::certs::CertManager;
use ambit_core::control::RemoteCa;
use ambit_core::Identity;
use ambit_operator::crd::Mesh;
use ambit_operator::runtime::run;
use apisim_common::{
    api_with, client_for, create_mesh, eventually, free_addr, options, pod, ztunnel_endpoint,
    ztunnel_pod,
};
use kube::api::{Api, Patch, PatchParams};
use serde_json::json;

/// Lifetime of a certificate freshly issued for `identity`.
async fn issued_lifetime(ca: &CertManager, identity: &Identity) -> Duration {
    let cert = ca.issue(identity).await.expect("certificate issued");
    cert.not_after.duration_since(cert.not_before).unwrap()
}

/// `life` is `want`, give or take the few minutes a CA may back-date a certificate by.
fn about(life: Duration, want: Duration) -> bool {
    let slack = Duration::from_secs(10 * 60);
    life + slack >= want && life <= want + slack
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_certificate_ttl_applies_to_the_next_certificate_without_a_restart() {
    let dir = std::env::temp_dir().join(format!("ambit-opca-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (server, client) = api_with(&[
        ("ambit-system", json!({})),
        ("shop", json!({"ambit.dev/dataplane-mode": "ambient"})),
    ])
    .await;
    create_mesh(&client, json!({})).await;
    let meshes: Api<Mesh> = Api::all(client.clone());
    pod(
        &client,
        "shop",
        "reviews-v1",
        "node-1",
        "reviews",
        "10.1.1.10",
        json!({"app": "reviews"}),
    )
    .await;
    ztunnel_pod(&client, "node-1", "10.1.1.2").await;

    let listen = free_addr();
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let operator = tokio::spawn(run(client_for(&server), options(listen), stop_rx));
    let endpoint = ztunnel_endpoint(&client, &dir, listen, "ztunnel-node-1").await;
    let ca = CertManager::new(Arc::new(RemoteCa { endpoint }));
    let reviews = Identity::new("cluster.local", "shop", "reviews").unwrap();

    let hours = |h: u64| Duration::from_secs(h * 3600);
    let first = eventually("a certificate from the operator", || async {
        ca.issue(&reviews).await.ok()
    })
    .await;
    let life = first.not_after.duration_since(first.not_before).unwrap();
    assert!(about(life, hours(24)), "default lifetime 24h: {life:?}");

    let set_ttl = |ttl: &'static str| {
        let meshes = meshes.clone();
        async move {
            meshes
                .patch(
                    "default",
                    &PatchParams::default(),
                    &Patch::Merge(json!({"spec": {"certificateTtl": ttl}})),
                )
                .await
                .unwrap();
        }
    };
    set_ttl("2h").await;
    eventually("certificates issued for 2h", || async {
        about(issued_lifetime(&ca, &reviews).await, hours(2)).then_some(())
    })
    .await;

    // An invalid value: the Mesh says so, and certificates keep the last good lifetime.
    set_ttl("1.5h").await;
    eventually("the Mesh reports the invalid certificateTtl", || async {
        let status = meshes.get("default").await.ok()?.status?;
        status
            .conditions
            .iter()
            .find(|c| c.type_ == "Accepted" && c.status == "False")
            .filter(|c| c.message.contains("certificateTtl"))
            .map(|_| ())
    })
    .await;
    let life = issued_lifetime(&ca, &reviews).await;
    assert!(about(life, hours(2)), "kept 2h: {life:?}");

    let _ = stop_tx.send(true);
    let _ = tokio::time::timeout(Duration::from_secs(10), operator).await;
    let _ = std::fs::remove_dir_all(&dir);
}
