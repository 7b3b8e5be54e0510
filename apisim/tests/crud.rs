//! Typed CRUD through the real kube client: bookkeeping, errors, patches, apply, selectors.

mod common;

use common::{api_err, from, start};
use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Pod, Service};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::ResourceExt;
use serde_json::json;

fn pod(name: &str, node: &str, labels: serde_json::Value) -> Pod {
    from(json!({
        "metadata": {"name": name, "labels": labels},
        "spec": {"nodeName": node, "containers": [{"name": "app", "image": "busybox"}]}
    }))
}

#[tokio::test]
async fn typed_crud_of_namespaces_pods_and_configmaps() {
    let (server, client) = start().await;
    let nss: Api<Namespace> = Api::all(client.clone());
    let ns = nss
        .create(
            &PostParams::default(),
            &from(json!({"metadata": {"name": "team-a"}})),
        )
        .await
        .unwrap();
    assert_eq!(ns.status.unwrap().phase.as_deref(), Some("Active"));
    let names: Vec<String> = nss
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .iter()
        .map(|n| n.name_any())
        .collect();
    for want in ["default", "kube-system", "team-a"] {
        assert!(names.contains(&want.to_string()), "{names:?}");
    }

    let pods: Api<Pod> = Api::namespaced(client.clone(), "team-a");
    let p = pods
        .create(
            &PostParams::default(),
            &pod("web", "n1", json!({"app": "web"})),
        )
        .await
        .unwrap();
    let meta = &p.metadata;
    assert_eq!(meta.namespace.as_deref(), Some("team-a"));
    assert_eq!(meta.uid.as_ref().unwrap().len(), 36);
    assert!(meta.creation_timestamp.is_some());
    assert_eq!(meta.generation, Some(1));
    let rv1: u64 = meta.resource_version.as_ref().unwrap().parse().unwrap();
    assert_eq!(
        p.spec.as_ref().unwrap().service_account_name.as_deref(),
        Some("default")
    );
    assert_eq!(p.status.as_ref().unwrap().phase.as_deref(), Some("Pending"));

    let got = pods.get("web").await.unwrap();
    assert_eq!(got.metadata.uid, p.metadata.uid);

    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "team-a");
    let mut cm = cms
        .create(
            &PostParams::default(),
            &from(json!({"metadata": {"name": "cfg"}, "data": {"k": "v"}})),
        )
        .await
        .unwrap();
    let rv2: u64 = cm.resource_version().unwrap().parse().unwrap();
    assert!(rv2 > rv1, "one global increasing counter");
    cm.data.as_mut().unwrap().insert("k2".into(), "v2".into());
    let cm2 = cms
        .replace("cfg", &PostParams::default(), &cm)
        .await
        .unwrap();
    assert_eq!(cm2.data.unwrap()["k2"], "v2");
    assert!(
        cm2.metadata
            .resource_version
            .unwrap()
            .parse::<u64>()
            .unwrap()
            > rv2
    );

    let list = cms.list(&ListParams::default()).await.unwrap();
    assert_eq!(list.items.len(), 1);
    assert!(list.metadata.resource_version.is_some());
    let all_pods: Api<Pod> = Api::all(client.clone());
    assert_eq!(
        all_pods
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .len(),
        1
    );

    cms.delete("cfg", &DeleteParams::default()).await.unwrap();
    let (code, reason, msg) = api_err(cms.get("cfg").await.unwrap_err());
    assert_eq!((code, reason.as_str()), (404, "NotFound"));
    assert_eq!(msg, "configmaps \"cfg\" not found");

    // The request log records exact calls.
    let creates: Vec<_> = server
        .requests()
        .into_iter()
        .filter(|r| r.method == "POST")
        .collect();
    assert_eq!(creates.len(), 3);
    assert_eq!(creates[1].path, "/api/v1/namespaces/team-a/pods");
    assert_eq!(creates[1].body.as_ref().unwrap()["metadata"]["name"], "web");
    assert_eq!(creates[1].status, 201);
}

#[tokio::test]
async fn errors_map_to_kube_errors() {
    let (_server, client) = start().await;
    let missing: Api<ConfigMap> = Api::namespaced(client.clone(), "nope");
    let (code, reason, msg) = api_err(
        missing
            .create(
                &PostParams::default(),
                &from(json!({"metadata": {"name": "x"}})),
            )
            .await
            .unwrap_err(),
    );
    assert_eq!(
        (code, reason.as_str(), msg.as_str()),
        (404, "NotFound", "namespaces \"nope\" not found")
    );

    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let cm: ConfigMap = from(json!({"metadata": {"name": "x"}, "data": {"a": "1"}}));
    let first = cms.create(&PostParams::default(), &cm).await.unwrap();
    let (code, reason, _) = api_err(cms.create(&PostParams::default(), &cm).await.unwrap_err());
    assert_eq!((code, reason.as_str()), (409, "AlreadyExists"));

    // A stale resourceVersion is a Conflict; the first writer wins.
    let mut a = first.clone();
    a.data.as_mut().unwrap().insert("a".into(), "2".into());
    cms.replace("x", &PostParams::default(), &a).await.unwrap();
    let mut b = first.clone();
    b.data.as_mut().unwrap().insert("a".into(), "3".into());
    let (code, reason, msg) = api_err(
        cms.replace("x", &PostParams::default(), &b)
            .await
            .unwrap_err(),
    );
    assert_eq!((code, reason.as_str()), (409, "Conflict"));
    assert!(msg.contains("the object has been modified"), "{msg}");
    assert_eq!(cms.get("x").await.unwrap().data.unwrap()["a"], "2");

    // Invalid names are 422 Invalid; generateName gets a suffix.
    let (code, reason, _) = api_err(
        cms.create(
            &PostParams::default(),
            &from(json!({"metadata": {"name": "Bad_Name"}})),
        )
        .await
        .unwrap_err(),
    );
    assert_eq!((code, reason.as_str()), (422, "Invalid"));
    let g = cms
        .create(
            &PostParams::default(),
            &from(json!({"metadata": {"generateName": "gen-"}})),
        )
        .await
        .unwrap();
    assert!(
        g.name_any().starts_with("gen-") && g.name_any().len() == 9,
        "{}",
        g.name_any()
    );

    // Unknown resource path: 404 Status.
    let resp = client
        .request_text(
            http::Request::get("/apis/nope.example/v1/things")
                .body(vec![])
                .unwrap(),
        )
        .await;
    assert_eq!(api_err(resp.unwrap_err()).0, 404);
}

#[tokio::test]
async fn generation_bumps_only_on_spec_change_and_status_is_isolated() {
    let (_server, client) = start().await;
    let deps: Api<Deployment> = Api::namespaced(client.clone(), "default");
    let d: Deployment = from(json!({
        "metadata": {"name": "web"},
        "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "web"}},
                 "template": {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [{"name": "c", "image": "i"}]}}},
        "status": {"replicas": 99}
    }));
    let d = deps.create(&PostParams::default(), &d).await.unwrap();
    assert_eq!(d.metadata.generation, Some(1));
    assert!(
        d.status.is_none(),
        "create drops status for types with a status subresource"
    );

    let pp = PatchParams::default();
    let d = deps
        .patch(
            "web",
            &pp,
            &Patch::Merge(json!({"metadata": {"labels": {"x": "y"}}})),
        )
        .await
        .unwrap();
    assert_eq!(
        d.metadata.generation,
        Some(1),
        "metadata changes keep the generation"
    );
    let d = deps
        .patch("web", &pp, &Patch::Merge(json!({"spec": {"replicas": 3}})))
        .await
        .unwrap();
    assert_eq!(d.metadata.generation, Some(2));

    // Writes to the main resource ignore status...
    let d = deps
        .patch(
            "web",
            &pp,
            &Patch::Merge(json!({"status": {"replicas": 7}})),
        )
        .await
        .unwrap();
    assert!(d.status.is_none());
    // ...writes to /status change only status.
    let before_rv = d.metadata.resource_version.clone();
    let d = deps
        .patch_status(
            "web",
            &pp,
            &Patch::Merge(
                json!({"spec": {"replicas": 50}, "status": {"replicas": 3, "readyReplicas": 2}}),
            ),
        )
        .await
        .unwrap();
    assert_eq!(d.status.as_ref().unwrap().ready_replicas, Some(2));
    assert_eq!(d.spec.as_ref().unwrap().replicas, Some(3));
    assert_eq!(d.metadata.generation, Some(2));
    assert_ne!(d.metadata.resource_version, before_rv);
    assert_eq!(
        deps.get_status("web")
            .await
            .unwrap()
            .status
            .unwrap()
            .replicas,
        Some(3)
    );

    // A no-op write keeps the resourceVersion (controllers rely on it to avoid hot loops).
    let again = deps
        .patch_status(
            "web",
            &pp,
            &Patch::Merge(json!({"status": {"readyReplicas": 2}})),
        )
        .await
        .unwrap();
    assert_eq!(again.metadata.resource_version, d.metadata.resource_version);
}

#[tokio::test]
async fn label_and_field_selectors() {
    let (_server, client) = start().await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    for (name, node, labels) in [
        ("a", "n1", json!({"app": "web", "tier": "front"})),
        ("b", "n2", json!({"app": "web", "tier": "back"})),
        ("c", "n1", json!({"app": "db"})),
    ] {
        pods.create(&PostParams::default(), &pod(name, node, labels))
            .await
            .unwrap();
    }
    let names =
        |l: kube::core::ObjectList<Pod>| l.items.iter().map(|p| p.name_any()).collect::<Vec<_>>();
    let q = |s: &str| ListParams::default().labels(s);
    assert_eq!(
        names(pods.list(&q("app=web")).await.unwrap()),
        vec!["a", "b"]
    );
    assert_eq!(names(pods.list(&q("app!=web")).await.unwrap()), vec!["c"]);
    assert_eq!(
        names(pods.list(&q("tier in (back,side)")).await.unwrap()),
        vec!["b"]
    );
    assert_eq!(
        names(pods.list(&q("tier notin (back)")).await.unwrap()),
        vec!["a", "c"]
    );
    assert_eq!(names(pods.list(&q("!tier")).await.unwrap()), vec!["c"]);
    assert_eq!(names(pods.list(&q("tier")).await.unwrap()), vec!["a", "b"]);
    let f = |s: &str| ListParams::default().fields(s);
    assert_eq!(
        names(pods.list(&f("spec.nodeName=n1")).await.unwrap()),
        vec!["a", "c"]
    );
    assert_eq!(
        names(
            pods.list(&f("spec.nodeName!=n1,metadata.name!=x"))
                .await
                .unwrap()
        ),
        vec!["b"]
    );
    assert_eq!(
        names(
            pods.list(&f("metadata.name=c").labels("app=db"))
                .await
                .unwrap()
        ),
        vec!["c"]
    );
    let all: Api<Pod> = Api::all(client.clone());
    assert_eq!(
        names(all.list(&f("metadata.namespace=default")).await.unwrap()).len(),
        3
    );
    let (code, reason, _) = api_err(pods.list(&q("app in (web")).await.unwrap_err());
    assert_eq!((code, reason.as_str()), (400, "BadRequest"));
}

#[tokio::test]
async fn services_get_cluster_ips_and_defaults() {
    let (_server, client) = start().await;
    let svcs: Api<Service> = Api::namespaced(client.clone(), "default");
    let mk = |name: &str| -> Service {
        from(json!({"metadata": {"name": name}, "spec": {"ports": [{"port": 80}]}}))
    };
    let a = svcs.create(&PostParams::default(), &mk("a")).await.unwrap();
    let b = svcs.create(&PostParams::default(), &mk("b")).await.unwrap();
    let (ia, ib) = (
        a.spec.as_ref().unwrap().cluster_ip.clone().unwrap(),
        b.spec.as_ref().unwrap().cluster_ip.clone().unwrap(),
    );
    assert!(ia.starts_with("10.") && ia != ib, "{ia} {ib}");
    let port = &a.spec.as_ref().unwrap().ports.as_ref().unwrap()[0];
    assert_eq!(port.protocol.as_deref(), Some("TCP"));
    assert!(port.target_port.is_some());
    // Patches that omit the IP keep it; changing it is refused.
    let a2 = svcs
        .patch(
            "a",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"x": "y"}}})),
        )
        .await
        .unwrap();
    assert_eq!(a2.spec.unwrap().cluster_ip, Some(ia));
    let (code, _, _) = api_err(
        svcs.patch(
            "a",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"clusterIP": ib}})),
        )
        .await
        .unwrap_err(),
    );
    assert_eq!(code, 422);
}

#[tokio::test]
async fn discovery_and_protobuf_accept() {
    let (_server, client) = start().await;
    let d = kube::Discovery::new(client.clone()).run().await.unwrap();
    for g in [
        "",
        "apps",
        "discovery.k8s.io",
        "coordination.k8s.io",
        "apiextensions.k8s.io",
        "rbac.authorization.k8s.io",
    ] {
        assert!(d.has_group(g), "group {g:?} discovered");
    }
    let (ar, caps) = d
        .resolve_gvk(&kube::api::GroupVersionKind::gvk(
            "apps",
            "v1",
            "Deployment",
        ))
        .unwrap();
    assert_eq!(ar.plural, "deployments");
    assert_eq!(caps.scope, kube::discovery::Scope::Namespaced);
    assert!(
        caps.subresources
            .iter()
            .any(|(sr, _)| sr.plural == "deployments/status" || sr.plural == "status"),
        "{:?}",
        caps.subresources
    );
    let agg = kube::Discovery::new(client.clone())
        .run_aggregated()
        .await
        .unwrap();
    assert!(agg
        .resolve_gvk(&kube::api::GroupVersionKind::gvk("", "v1", "Pod"))
        .is_some());
    let v = client.apiserver_version().await.unwrap();
    assert_eq!(v.major, "1");

    // A protobuf-preferring client still gets JSON.
    let req = http::Request::get("/api/v1/namespaces/default")
        .header(
            "accept",
            "application/vnd.kubernetes.protobuf, application/json",
        )
        .body(vec![])
        .unwrap();
    let text = client.request_text(req).await.unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["kind"], "Namespace");
}

#[tokio::test]
async fn metadata_only_list_get_and_watch() {
    use futures::TryStreamExt;
    let (_server, client) = start().await;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    cms.create(
        &PostParams::default(),
        &from(json!({"metadata": {"name": "m", "labels": {"a": "b"}}, "data": {"big": "x"}})),
    )
    .await
    .unwrap();
    let list = cms.list_metadata(&ListParams::default()).await.unwrap();
    assert_eq!(list.items.len(), 1);
    assert_eq!(list.items[0].labels()["a"], "b");
    let one = cms.get_metadata("m").await.unwrap();
    assert_eq!(one.name_any(), "m");
    let meta: Api<kube::core::PartialObjectMeta<ConfigMap>> =
        Api::namespaced(client.clone(), "default");
    let mut w = kube::runtime::watcher(meta, kube::runtime::watcher::Config::default()).boxed();
    loop {
        let ev = tokio::time::timeout(std::time::Duration::from_secs(10), w.try_next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        if let kube::runtime::watcher::Event::InitApply(o) = ev {
            assert_eq!(o.name_any(), "m");
            break;
        }
    }
}
