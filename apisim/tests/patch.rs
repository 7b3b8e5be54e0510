//! Patches through the real kube client: merge, strategic merge, JSON patch, server-side apply.

mod common;

use common::{api_err, from, start};
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::ResourceExt;
use serde_json::json;

fn pod(name: &str, node: &str, labels: serde_json::Value) -> Pod {
    from(json!({
        "metadata": {"name": name, "labels": labels},
        "spec": {"nodeName": node, "containers": [{"name": "app", "image": "busybox"}]}
    }))
}

#[tokio::test]
async fn merge_strategic_and_json_patches() {
    let (_server, client) = start().await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    pods.create(
        &PostParams::default(),
        &pod("p", "n1", json!({"a": "1", "b": "2"})),
    )
    .await
    .unwrap();
    let pp = PatchParams::default();
    let p = pods
        .patch(
            "p",
            &pp,
            &Patch::Merge(json!({"metadata": {"labels": {"a": null, "c": "3"}}})),
        )
        .await
        .unwrap();
    assert_eq!(p.labels().len(), 2);
    assert_eq!(p.labels()["c"], "3");

    let p = pods
        .patch(
            "p",
            &pp,
            &Patch::Strategic(json!({"spec": {"containers": [{"name": "side", "image": "s"}]}})),
        )
        .await
        .unwrap();
    let names: Vec<_> = p
        .spec
        .unwrap()
        .containers
        .iter()
        .map(|c| c.name.clone())
        .collect();
    assert_eq!(
        names,
        vec!["app", "side"],
        "strategic merge merges containers by name"
    );

    let jp: json_patch::Patch = serde_json::from_value(json!([
        {"op": "replace", "path": "/metadata/labels/b", "value": "22"},
        {"op": "add", "path": "/metadata/annotations", "value": {"note": "x"}}
    ]))
    .unwrap();
    let p = pods.patch("p", &pp, &Patch::<()>::Json(jp)).await.unwrap();
    assert_eq!(p.labels()["b"], "22");
    assert_eq!(p.annotations()["note"], "x");
    let bad: json_patch::Patch = serde_json::from_value(
        json!([{"op": "test", "path": "/metadata/labels/b", "value": "no"}]),
    )
    .unwrap();
    let (code, reason, _) = api_err(
        pods.patch("p", &pp, &Patch::<()>::Json(bad))
            .await
            .unwrap_err(),
    );
    assert_eq!((code, reason.as_str()), (422, "Invalid"));

    // A resourceVersion inside a patch is a precondition.
    let (code, _, _) = api_err(
        pods.patch(
            "p",
            &pp,
            &Patch::Merge(json!({"metadata": {"resourceVersion": "1", "labels": {"z": "z"}}})),
        )
        .await
        .unwrap_err(),
    );
    assert_eq!(code, 409);
}

#[tokio::test]
async fn server_side_apply_creates_updates_and_removes_fields() {
    let (server, client) = start().await;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let ssa = PatchParams::apply("ambit-operator");
    let cfg = |data: serde_json::Value, labels: serde_json::Value| json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "mesh", "labels": labels}, "data": data});
    server.clear_requests();
    let c = cms
        .patch(
            "mesh",
            &ssa,
            &Patch::Apply(cfg(
                json!({"a": "1", "b": "2"}),
                json!({"l1": "x", "l2": "y"}),
            )),
        )
        .await
        .unwrap();
    assert_eq!(c.data.as_ref().unwrap().len(), 2);
    let mf = c.metadata.managed_fields.as_ref().unwrap();
    assert_eq!(mf.len(), 1);
    assert_eq!(mf[0].manager.as_deref(), Some("ambit-operator"));
    assert_eq!(mf[0].operation.as_deref(), Some("Apply"));
    let r = &server.requests()[0];
    assert_eq!(r.method, "PATCH");
    assert!(
        r.query.contains("fieldManager=ambit-operator"),
        "{}",
        r.query
    );
    assert_eq!(
        r.content_type.as_deref(),
        Some("application/apply-patch+yaml")
    );

    let c2 = cms
        .patch(
            "mesh",
            &ssa,
            &Patch::Apply(cfg(
                json!({"a": "1", "b": "2"}),
                json!({"l1": "x", "l2": "y"}),
            )),
        )
        .await
        .unwrap();
    assert_eq!(
        c2.metadata.resource_version, c.metadata.resource_version,
        "identical apply is a no-op"
    );

    let c3 = cms
        .patch(
            "mesh",
            &ssa,
            &Patch::Apply(cfg(json!({"a": "10"}), json!({"l1": "x"}))),
        )
        .await
        .unwrap();
    assert_eq!(
        c3.data.unwrap().into_iter().collect::<Vec<_>>(),
        vec![("a".to_string(), "10".to_string())]
    );
    assert_eq!(c3.metadata.labels.unwrap().len(), 1);

    // Another manager changing an owned field conflicts unless forced.
    let other = PatchParams::apply("someone-else");
    let (code, reason, msg) = api_err(
        cms.patch(
            "mesh",
            &other,
            &Patch::Apply(cfg(json!({"a": "20"}), json!({}))),
        )
        .await
        .unwrap_err(),
    );
    assert_eq!((code, reason.as_str()), (409, "Conflict"));
    assert!(
        msg.contains("ambit-operator") && msg.contains(".data.a"),
        "{msg}"
    );
    let forced = cms
        .patch(
            "mesh",
            &other.force(),
            &Patch::Apply(cfg(json!({"a": "20"}), json!({}))),
        )
        .await
        .unwrap();
    assert_eq!(forced.data.unwrap()["a"], "20");

    // fieldManager is required for apply.
    let (code, _, _) = api_err(
        cms.patch(
            "mesh",
            &PatchParams::default(),
            &Patch::Apply(cfg(json!({}), json!({}))),
        )
        .await
        .unwrap_err(),
    );
    assert_eq!(code, 422);
}
