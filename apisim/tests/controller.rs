//! A kube-runtime Controller runs against apisim unmodified, and the request log lets a
//! test assert the exact API calls a reconciler makes.

mod common;

use common::{eventually, from, start};
use futures::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::watcher;
use kube::{Resource, ResourceExt};
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
#[error(transparent)]
struct Error(#[from] kube::Error);

/// Mirrors each ConfigMap into a Secret it owns, with server-side apply.
async fn reconcile(cm: Arc<ConfigMap>, client: Arc<kube::Client>) -> Result<Action, Error> {
    let secrets: Api<Secret> = Api::namespaced((*client).clone(), &cm.namespace().unwrap());
    let owner = cm.controller_owner_ref(&()).unwrap();
    let secret = json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": format!("mirror-{}", cm.name_any()), "ownerReferences": [owner]},
        "stringData": null,
        "data": cm.data.clone().unwrap_or_default().into_iter()
            .map(|(k, v)| (k, json!(base64(&v)))).collect::<serde_json::Map<_, _>>(),
    });
    secrets
        .patch(
            &format!("mirror-{}", cm.name_any()),
            &PatchParams::apply("mirror").force(),
            &Patch::Apply(secret),
        )
        .await?;
    Ok(Action::await_change())
}

fn base64(s: &str) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let b = s.as_bytes();
    let mut out = String::new();
    for c in b.chunks(3) {
        let n = (c[0] as u32) << 16
            | (*c.get(1).unwrap_or(&0) as u32) << 8
            | *c.get(2).unwrap_or(&0) as u32;
        for i in 0..4 {
            if i <= c.len() {
                out.push(T[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[tokio::test]
async fn controller_reconciles_with_exact_api_calls() {
    let (server, client) = start().await;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let secrets: Api<Secret> = Api::namespaced(client.clone(), "default");
    let ctx = Arc::new(client.clone());
    let controller = Controller::new(cms.clone(), watcher::Config::default())
        .owns(secrets.clone(), watcher::Config::default())
        .run(
            reconcile,
            |_, _, _| Action::requeue(Duration::from_secs(1)),
            ctx,
        )
        .for_each(|_| async {});
    let task = tokio::spawn(controller);

    cms.create(
        &PostParams::default(),
        &from(json!({"metadata": {"name": "app"}, "data": {"k": "hello"}})),
    )
    .await
    .unwrap();
    let s = eventually("mirrored secret", || async {
        secrets.get_opt("mirror-app").await.unwrap()
    })
    .await;
    assert_eq!(s.data.as_ref().unwrap()["k"].0, b"hello");
    assert_eq!(s.owner_references()[0].name, "app");

    // Exactly the calls the reconciler makes: apply patches to the one secret, nothing else
    // written. Its own write triggers one more (no-op) reconcile, and no hot loop follows.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let writes: Vec<_> = server
        .requests()
        .into_iter()
        .filter(|r| r.is_write())
        .collect();
    assert_eq!(writes[0].method, "POST");
    let patches = &writes[1..];
    assert!(!patches.is_empty() && patches.len() <= 3, "{patches:?}");
    for p in patches {
        assert_eq!(p.method, "PATCH");
        assert_eq!(p.path, "/api/v1/namespaces/default/secrets/mirror-app");
        assert!(
            p.query.contains("fieldManager=mirror") && p.query.contains("force=true"),
            "{}",
            p.query
        );
        assert_eq!(p.body.as_ref().unwrap()["data"]["k"], "aGVsbG8=");
    }
    let rv = secrets.get("mirror-app").await.unwrap().resource_version();

    // An update flows through; deleting the owner garbage-collects the secret.
    cms.patch(
        "app",
        &PatchParams::default(),
        &Patch::Merge(json!({"data": {"k": "bye"}})),
    )
    .await
    .unwrap();
    eventually("updated secret", || async {
        let s = secrets.get("mirror-app").await.unwrap();
        (s.data.unwrap()["k"].0 == b"bye").then_some(())
    })
    .await;
    assert_ne!(
        secrets.get("mirror-app").await.unwrap().resource_version(),
        rv
    );
    cms.delete("app", &DeleteParams::default()).await.unwrap();
    assert!(secrets.get_opt("mirror-app").await.unwrap().is_none());
    task.abort();
}
