//! Which API changes wake the compile loop: a spec change or deletion of an Ambit object
//! does, a status write (the operator's own, after every compile) does not; Pods wake it on
//! any change, since their IP and readiness live in status.
mod apisim_common;

use std::sync::Arc;
use std::time::Duration;

use ambit_operator::controller::meshstate::Caches;
use ambit_operator::crd::AuthorizationPolicy;
use apisim_common::api_with;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use serde_json::json;
use tokio::sync::Notify;

/// Whether `changed` fires within `within`.
async fn woken(changed: &Notify, within: Duration) -> bool {
    tokio::time::timeout(within, changed.notified())
        .await
        .is_ok()
}

/// Drains notifications until none arrives for a while (startup lists, earlier writes).
async fn settle(changed: &Notify) {
    while woken(changed, Duration::from_millis(300)).await {}
}

#[tokio::test]
async fn status_writes_do_not_wake_the_compiler_but_spec_changes_do() {
    let (_server, client) =
        api_with(&[("prod", json!({"ambit.dev/dataplane-mode": "ambient"}))]).await;
    let policies: Api<AuthorizationPolicy> = Api::namespaced(client.clone(), "prod");
    let policy = json!({
        "apiVersion": "ambit.dev/v1alpha1", "kind": "AuthorizationPolicy",
        "metadata": {"name": "deny-all", "namespace": "prod"},
        "spec": {"action": "DENY", "rules": [{}]},
    });
    policies
        .create(
            &PostParams::default(),
            &serde_json::from_value(policy).unwrap(),
        )
        .await
        .unwrap();

    let changed = Arc::new(Notify::new());
    let caches = Caches::start(&client, changed.clone());
    tokio::time::timeout(Duration::from_secs(20), caches.wait_until_ready())
        .await
        .expect("caches load");
    settle(&changed).await;

    let status = json!({"status": {"observedGeneration": 1, "conditions": [{
        "type": "Accepted", "status": "True", "reason": "Accepted", "message": "",
        "lastTransitionTime": "2026-01-01T00:00:00Z", "observedGeneration": 1}]}});
    policies
        .patch_status("deny-all", &PatchParams::default(), &Patch::Merge(&status))
        .await
        .unwrap();
    assert!(
        !woken(&changed, Duration::from_secs(1)).await,
        "a status-only write woke the compiler"
    );

    let spec = json!({"spec": {"action": "ALLOW"}});
    policies
        .patch("deny-all", &PatchParams::default(), &Patch::Merge(&spec))
        .await
        .unwrap();
    assert!(
        woken(&changed, Duration::from_secs(10)).await,
        "spec change"
    );
    settle(&changed).await;

    policies
        .delete("deny-all", &DeleteParams::default())
        .await
        .unwrap();
    assert!(woken(&changed, Duration::from_secs(10)).await, "deletion");
    settle(&changed).await;

    // A pod's status (its IP) matters: it wakes the compiler.
    let pods: Api<Pod> = Api::namespaced(client.clone(), "prod");
    let pod = json!({"metadata": {"name": "p", "namespace": "prod",
            "annotations": {"kubectl.kubernetes.io/last-applied-configuration": "{\"big\": true}", "keep": "me"},
            "managedFields": [{"manager": "kubectl", "operation": "Apply", "apiVersion": "v1",
                "fieldsType": "FieldsV1", "fieldsV1": {"f:metadata": {}}}]},
        "spec": {"nodeName": "n1", "containers": [{"name": "app", "image": "demo"}]}});
    pods.create(
        &PostParams::default(),
        &serde_json::from_value(pod).unwrap(),
    )
    .await
    .unwrap();
    assert!(
        woken(&changed, Duration::from_secs(10)).await,
        "pod created"
    );
    settle(&changed).await;
    let ip = json!({"status": {"podIP": "10.0.0.7"}});
    pods.patch_status("p", &PatchParams::default(), &Patch::Merge(&ip))
        .await
        .unwrap();
    assert!(woken(&changed, Duration::from_secs(10)).await, "pod status");
}
