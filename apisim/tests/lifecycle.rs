//! Deletion: finalizers, owner-reference garbage collection (background, foreground,
//! orphan), preconditions and namespace termination.

mod common;

use common::{api_err, from, start};
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Pod};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams, Preconditions};
use kube::ResourceExt;
use serde_json::{json, Value};

fn owner_ref(kind: &str, name: &str, uid: &str, block: bool) -> Value {
    json!({"apiVersion": if kind == "ConfigMap" || kind == "Pod" { "v1" } else { "apps/v1" }, "kind": kind, "name": name, "uid": uid, "controller": true, "blockOwnerDeletion": block})
}

fn deployment(name: &str) -> Deployment {
    from(json!({
        "metadata": {"name": name},
        "spec": {"selector": {"matchLabels": {"app": name}},
                 "template": {"metadata": {"labels": {"app": name}}, "spec": {"containers": [{"name": "c", "image": "i"}]}}}
    }))
}

#[tokio::test]
async fn finalizer_blocks_deletion_until_removed() {
    let (_server, client) = start().await;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    cms.create(
        &PostParams::default(),
        &from(json!({"metadata": {"name": "f", "finalizers": ["ambit.dev/cleanup"]}})),
    )
    .await
    .unwrap();
    let r = cms.delete("f", &DeleteParams::default()).await.unwrap();
    let pending = r
        .left()
        .expect("a terminating object comes back, not a Status");
    assert!(pending.metadata.deletion_timestamp.is_some());
    let still = cms.get("f").await.unwrap();
    assert!(still.metadata.deletion_timestamp.is_some());

    // No new finalizers on a terminating object.
    let (code, _, msg) = api_err(
        cms.patch(
            "f",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"finalizers": ["ambit.dev/cleanup", "other"]}})),
        )
        .await
        .unwrap_err(),
    );
    assert_eq!(code, 422, "{msg}");

    // Other updates still work, then removing the last finalizer deletes it.
    cms.patch(
        "f",
        &PatchParams::default(),
        &Patch::Merge(json!({"data": {"x": "y"}})),
    )
    .await
    .unwrap();
    cms.patch(
        "f",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"finalizers": null}})),
    )
    .await
    .unwrap();
    assert_eq!(api_err(cms.get("f").await.unwrap_err()).0, 404);
}

#[tokio::test]
async fn owner_reference_garbage_collection_background() {
    let (_server, client) = start().await;
    let deps: Api<Deployment> = Api::namespaced(client.clone(), "default");
    let rss: Api<ReplicaSet> = Api::namespaced(client.clone(), "default");
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let d = deps
        .create(&PostParams::default(), &deployment("web"))
        .await
        .unwrap();
    let mut rs: Value = serde_json::to_value(deployment("web-1")).unwrap();
    rs.as_object_mut()
        .unwrap()
        .retain(|k, _| k != "kind" && k != "apiVersion");
    rs["metadata"]["ownerReferences"] =
        json!([owner_ref("Deployment", "web", &d.uid().unwrap(), true)]);
    let rs = rss.create(&PostParams::default(), &from(rs)).await.unwrap();
    let pod = |name: &str, owners: Value| -> Pod {
        from(
            json!({"metadata": {"name": name, "ownerReferences": owners}, "spec": {"containers": [{"name": "c", "image": "i"}]}}),
        )
    };
    pods.create(
        &PostParams::default(),
        &pod(
            "web-1-a",
            json!([owner_ref("ReplicaSet", "web-1", &rs.uid().unwrap(), true)]),
        ),
    )
    .await
    .unwrap();
    // A pod with a second, live owner survives.
    let other = ConfigMapApi::create(&client, "keeper").await;
    pods.create(
        &PostParams::default(),
        &pod(
            "shared",
            json!([
                owner_ref("ReplicaSet", "web-1", &rs.uid().unwrap(), false),
                owner_ref("ConfigMap", "keeper", &other, false)
            ]),
        ),
    )
    .await
    .unwrap();

    deps.delete("web", &DeleteParams::default()).await.unwrap();
    assert_eq!(
        api_err(rss.get("web-1").await.unwrap_err()).0,
        404,
        "replicaset collected"
    );
    assert_eq!(
        api_err(pods.get("web-1-a").await.unwrap_err()).0,
        404,
        "pod collected transitively"
    );
    assert!(pods.get("shared").await.is_ok());
}

struct ConfigMapApi;
impl ConfigMapApi {
    async fn create(client: &kube::Client, name: &str) -> String {
        let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
        cms.create(
            &PostParams::default(),
            &from(json!({"metadata": {"name": name}})),
        )
        .await
        .unwrap()
        .uid()
        .unwrap()
    }
}

#[tokio::test]
async fn foreground_deletion_waits_for_blocking_dependents() {
    let (_server, client) = start().await;
    let deps: Api<Deployment> = Api::namespaced(client.clone(), "default");
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let d = deps
        .create(&PostParams::default(), &deployment("fg"))
        .await
        .unwrap();
    let dep: ConfigMap = from(
        json!({"metadata": {"name": "dep", "finalizers": ["ambit.dev/hold"],
        "ownerReferences": [owner_ref("Deployment", "fg", &d.uid().unwrap(), true)]}}),
    );
    cms.create(&PostParams::default(), &dep).await.unwrap();

    deps.delete("fg", &DeleteParams::foreground())
        .await
        .unwrap();
    let owner = deps
        .get("fg")
        .await
        .expect("owner waits for its blocking dependent");
    assert!(owner.metadata.deletion_timestamp.is_some());
    assert!(owner
        .finalizers()
        .contains(&"foregroundDeletion".to_string()));
    let dep = cms.get("dep").await.unwrap();
    assert!(
        dep.metadata.deletion_timestamp.is_some(),
        "dependent is being deleted"
    );

    cms.patch(
        "dep",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"finalizers": null}})),
    )
    .await
    .unwrap();
    assert_eq!(api_err(cms.get("dep").await.unwrap_err()).0, 404);
    assert_eq!(
        api_err(deps.get("fg").await.unwrap_err()).0,
        404,
        "owner goes once the dependent is gone"
    );
}

#[tokio::test]
async fn orphan_deletion_and_preconditions() {
    let (_server, client) = start().await;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let owner_uid = ConfigMapApi::create(&client, "owner").await;
    let child: ConfigMap = from(
        json!({"metadata": {"name": "child", "ownerReferences": [owner_ref("ConfigMap", "owner", &owner_uid, false)]}}),
    );
    cms.create(&PostParams::default(), &child).await.unwrap();

    let wrong = DeleteParams {
        preconditions: Some(Preconditions {
            uid: Some("not-it".into()),
            resource_version: None,
        }),
        ..Default::default()
    };
    let (code, reason, _) = api_err(cms.delete("owner", &wrong).await.unwrap_err());
    assert_eq!((code, reason.as_str()), (409, "Conflict"));

    cms.delete("owner", &DeleteParams::orphan()).await.unwrap();
    let child = cms.get("child").await.expect("orphaned dependents stay");
    assert!(child.owner_references().is_empty());
}

#[tokio::test]
async fn namespace_deletion_removes_its_objects() {
    let (_server, client) = start().await;
    let nss: Api<Namespace> = Api::all(client.clone());
    nss.create(
        &PostParams::default(),
        &from(json!({"metadata": {"name": "doomed"}})),
    )
    .await
    .unwrap();
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "doomed");
    cms.create(
        &PostParams::default(),
        &from(json!({"metadata": {"name": "plain"}})),
    )
    .await
    .unwrap();
    cms.create(
        &PostParams::default(),
        &from(json!({"metadata": {"name": "held", "finalizers": ["x/y"]}})),
    )
    .await
    .unwrap();

    nss.delete("doomed", &DeleteParams::default())
        .await
        .unwrap();
    let ns = nss.get("doomed").await.expect("waits for the held object");
    assert_eq!(ns.status.unwrap().phase.as_deref(), Some("Terminating"));
    assert_eq!(api_err(cms.get("plain").await.unwrap_err()).0, 404);
    let (code, reason, _) = api_err(
        cms.create(
            &PostParams::default(),
            &from(json!({"metadata": {"name": "late"}})),
        )
        .await
        .unwrap_err(),
    );
    assert_eq!((code, reason.as_str()), (403, "Forbidden"));

    cms.patch(
        "held",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"finalizers": null}})),
    )
    .await
    .unwrap();
    assert_eq!(api_err(nss.get("doomed").await.unwrap_err()).0, 404);
}

#[tokio::test]
async fn delete_collection_by_label() {
    let (_server, client) = start().await;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    for (name, app) in [("a", "x"), ("b", "x"), ("c", "y")] {
        cms.create(
            &PostParams::default(),
            &from(json!({"metadata": {"name": name, "labels": {"app": app}}})),
        )
        .await
        .unwrap();
    }
    let gone = cms
        .delete_collection(
            &DeleteParams::default(),
            &kube::api::ListParams::default().labels("app=x"),
        )
        .await
        .unwrap()
        .left()
        .unwrap();
    assert_eq!(gone.items.len(), 2);
    let left: Vec<String> = cms
        .list(&Default::default())
        .await
        .unwrap()
        .items
        .iter()
        .map(|c| c.name_any())
        .collect();
    assert_eq!(left, vec!["c"]);
}
