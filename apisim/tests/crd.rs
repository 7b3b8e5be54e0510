//! CustomResourceDefinitions: registration, custom resources through DynamicObject
//! (create, list, watch, patch, status subresource), discovery, unregistration.

mod common;

use common::{api_err, start};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{
    Api, ApiResource, DeleteParams, DynamicObject, GroupVersionKind, ListParams, Patch,
    PatchParams, PostParams, WatchEvent, WatchParams,
};
use kube::runtime::{conditions, wait::await_condition, watcher};
use kube::ResourceExt;
use serde_json::json;
use std::time::Duration;
use tokio::time::timeout;

const CRD: &str = r#"
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: widgets.ambit.dev
spec:
  group: ambit.dev
  scope: Namespaced
  names: {plural: widgets, singular: widget, kind: Widget, shortNames: [wd]}
  versions:
  - name: v1alpha1
    served: true
    storage: true
    schema:
      openAPIV3Schema: {type: object, x-kubernetes-preserve-unknown-fields: true}
    subresources:
      status: {}
"#;

fn widget(ar: &ApiResource, name: &str, size: i64) -> DynamicObject {
    let mut o = DynamicObject::new(name, ar);
    o.data = json!({"spec": {"size": size}, "status": {"ready": true}});
    o
}

#[tokio::test]
async fn custom_resources_after_registering_a_crd() {
    let (_server, client) = start().await;
    let gvk = GroupVersionKind::gvk("ambit.dev", "v1alpha1", "Widget");
    let ar = ApiResource::from_gvk_with_plural(&gvk, "widgets");
    let widgets: Api<DynamicObject> = Api::namespaced_with(client.clone(), "default", &ar);
    assert_eq!(
        api_err(widgets.list(&ListParams::default()).await.unwrap_err()).0,
        404,
        "not served before the CRD"
    );

    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let crd: CustomResourceDefinition = serde_yaml::from_str(CRD).unwrap();
    crds.create(&PostParams::default(), &crd).await.unwrap();
    timeout(
        Duration::from_secs(10),
        await_condition(
            crds.clone(),
            "widgets.ambit.dev",
            conditions::is_crd_established(),
        ),
    )
    .await
    .unwrap()
    .unwrap();

    let d = kube::Discovery::new(client.clone()).run().await.unwrap();
    let (found, caps) = d.resolve_gvk(&gvk).expect("discovered");
    assert_eq!(found.plural, "widgets");
    assert_eq!(caps.scope, kube::discovery::Scope::Namespaced);

    let mut w = watcher(widgets.clone(), watcher::Config::default()).boxed();
    let created = widgets
        .create(&PostParams::default(), &widget(&ar, "w1", 1))
        .await
        .unwrap();
    assert_eq!(created.metadata.generation, Some(1));
    assert!(
        created.data.get("status").is_none(),
        "create drops status when the CRD declares the subresource"
    );
    widgets
        .create(&PostParams::default(), &widget(&ar, "w2", 2))
        .await
        .unwrap();
    let names: Vec<String> = widgets
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .iter()
        .map(|o| o.name_any())
        .collect();
    assert_eq!(names, vec!["w1", "w2"]);

    let pp = PatchParams::default();
    let p = widgets
        .patch(
            "w1",
            &pp,
            &Patch::Merge(json!({"spec": {"size": 5}, "status": {"ready": false}})),
        )
        .await
        .unwrap();
    assert_eq!(p.data["spec"]["size"], 5);
    assert_eq!(p.metadata.generation, Some(2));
    assert!(
        p.data.get("status").is_none(),
        "main resource writes ignore status"
    );
    let s = widgets
        .patch_status(
            "w1",
            &pp,
            &Patch::Merge(
                json!({"spec": {"size": 99}, "status": {"ready": true, "observedGeneration": 2}}),
            ),
        )
        .await
        .unwrap();
    assert_eq!(s.data["status"]["observedGeneration"], 2);
    assert_eq!(s.data["spec"]["size"], 5, "status writes ignore spec");
    assert_eq!(s.metadata.generation, Some(2));

    let ssa = PatchParams::apply("ambit-operator");
    let applied = widgets
        .patch_status("w1", &ssa, &Patch::Apply(json!({"apiVersion": "ambit.dev/v1alpha1", "kind": "Widget", "status": {"phase": "Ready"}})))
        .await
        .unwrap();
    assert_eq!(applied.data["status"]["phase"], "Ready");

    let (code, _, _) = api_err(
        widgets
            .patch("w1", &pp, &Patch::Strategic(json!({"spec": {"size": 1}})))
            .await
            .unwrap_err(),
    );
    assert_eq!(
        code, 415,
        "strategic merge is not supported for custom resources"
    );

    // The watcher saw both objects and the updates.
    let mut seen = std::collections::BTreeSet::new();
    while seen.len() < 2 {
        if let watcher::Event::Apply(o) | watcher::Event::InitApply(o) =
            timeout(Duration::from_secs(10), w.try_next())
                .await
                .unwrap()
                .unwrap()
                .unwrap()
        {
            seen.insert(o.name_any());
        }
    }

    // Deleting the CRD deletes its objects (watchers see DELETED) and stops serving the type.
    let rv = widgets
        .list(&ListParams::default())
        .await
        .unwrap()
        .metadata
        .resource_version
        .unwrap();
    let mut raw = widgets
        .watch(&WatchParams::default().disable_bookmarks(), &rv)
        .await
        .unwrap()
        .boxed();
    crds.delete("widgets.ambit.dev", &DeleteParams::default())
        .await
        .unwrap();
    let mut deleted = Vec::new();
    while deleted.len() < 2 {
        match timeout(Duration::from_secs(10), raw.try_next())
            .await
            .unwrap()
            .unwrap()
            .unwrap()
        {
            WatchEvent::Deleted(o) => deleted.push(o.name_any()),
            other => panic!("expected deletions, got {other:?}"),
        }
    }
    assert_eq!(deleted, vec!["w1", "w2"]);
    assert_eq!(api_err(widgets.get("w1").await.unwrap_err()).0, 404);
    let d = kube::Discovery::new(client.clone()).run().await.unwrap();
    assert!(d.resolve_gvk(&gvk).is_none());
}

#[tokio::test]
async fn cluster_scoped_custom_resources_and_invalid_crds() {
    let (_server, client) = start().await;
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let mesh = CRD
        .replace("widgets", "meshes")
        .replace("widget", "mesh")
        .replace("Widget", "Mesh")
        .replace("Namespaced", "Cluster");
    crds.create(
        &PostParams::default(),
        &serde_yaml::from_str(&mesh).unwrap(),
    )
    .await
    .unwrap();
    let ar = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("ambit.dev", "v1alpha1", "Mesh"),
        "meshes",
    );
    let meshes: Api<DynamicObject> = Api::all_with(client.clone(), &ar);
    let mut m = DynamicObject::new("default", &ar);
    m.data = json!({"spec": {"trustDomain": "cluster.local"}});
    let created = meshes.create(&PostParams::default(), &m).await.unwrap();
    assert!(created.metadata.namespace.is_none());
    assert_eq!(
        meshes.get("default").await.unwrap().data["spec"]["trustDomain"],
        "cluster.local"
    );

    let bad = CRD.replace("name: widgets.ambit.dev", "name: wrong.ambit.dev");
    let (code, reason, msg) = api_err(
        crds.create(&PostParams::default(), &serde_yaml::from_str(&bad).unwrap())
            .await
            .unwrap_err(),
    );
    assert_eq!((code, reason.as_str()), (422, "Invalid"), "{msg}");
    assert!(msg.contains("metadata.name"), "{msg}");
}
