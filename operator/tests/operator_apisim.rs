//! The real operator (runtime::run) against the in-memory API server: the Mesh becomes the
//! data plane with status and events, spec changes roll it, an invalid Mesh is reported and
//! changes nothing, Waypoints become Deployments, deleting the Mesh removes the data plane.
//! The API calls the operator made are recorded and checked against the chart's RBAC.

mod apisim_common;

use std::collections::BTreeSet;
use std::time::Duration;

use ambit_apisim::ApiServerHandle;
use ambit_operator::crd::{Mesh, Waypoint};
use ambit_operator::runtime::run;
use apisim_common::{api_with, create_mesh, eventually, operator_client, options, OPERATOR_AGENT};
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment};
use k8s_openapi::api::core::v1::{ConfigMap, Secret, Service, ServiceAccount};
use k8s_openapi::api::rbac::v1::ClusterRole;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::ResourceExt;
use serde_json::json;

fn condition(status: &serde_json::Value, type_: &str) -> Option<(String, String)> {
    status["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == type_)
        .map(|c| {
            (
                c["status"].as_str().unwrap_or_default().to_string(),
                c["reason"].as_str().unwrap_or_default().to_string(),
            )
        })
}

async fn mesh_status(api: &Api<Mesh>) -> serde_json::Value {
    match api.get_opt("default").await.unwrap() {
        Some(m) => serde_json::to_value(m.status.unwrap_or_default()).unwrap(),
        None => serde_json::Value::Null,
    }
}

/// Plays the DaemonSet controller: every node runs the current template and is ready.
async fn roll_out(ds: &Api<DaemonSet>, name: &str, nodes: i32) {
    let current = ds.get(name).await.unwrap();
    let status = json!({"status": {
        "desiredNumberScheduled": nodes, "currentNumberScheduled": nodes, "numberMisscheduled": 0,
        "numberReady": nodes, "updatedNumberScheduled": nodes,
        "observedGeneration": current.metadata.generation,
    }});
    ds.patch_status(name, &PatchParams::default(), &Patch::Merge(&status))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mesh_and_waypoints_are_reconciled_and_cleaned_up() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()))
        .with_test_writer()
        .try_init();
    let (server, client) = api_with(&[("ambit-system", json!({})), ("shop", json!({}))]).await;
    let meshes: Api<Mesh> = Api::all(client.clone());
    create_mesh(
        &client,
        json!({"trustDomain": "example.org", "ztunnel": {"image": "reg/ztunnel:1.0.0"}}),
    )
    .await;

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let operator = tokio::spawn(run(
        operator_client(&server),
        options("127.0.0.1:0".parse().unwrap()),
        stop_rx,
    ));

    // The data plane appears, owned by the Mesh, and the CA is stored once.
    let ns = "ambit-system";
    let ds: Api<DaemonSet> = Api::namespaced(client.clone(), ns);
    let zt = eventually("ztunnel DaemonSet", || async {
        ds.get_opt("ztunnel").await.unwrap()
    })
    .await;
    let pod = zt.spec.as_ref().unwrap().template.spec.as_ref().unwrap();
    assert_eq!(
        pod.containers[0].image.as_deref(),
        Some("reg/ztunnel:1.0.0")
    );
    assert_eq!(zt.owner_references()[0].kind, "Mesh");
    eventually("node agent DaemonSet", || async {
        ds.get_opt("ambit-node-agent").await.unwrap()
    })
    .await;
    let secret = Api::<Secret>::namespaced(client.clone(), ns)
        .get("ambit-ca")
        .await
        .unwrap();
    let data = secret.data.unwrap();
    assert_eq!(
        String::from_utf8_lossy(&data["trust-domain"].0),
        "example.org"
    );
    let root = Api::<ConfigMap>::namespaced(client.clone(), ns)
        .get("ambit-ca-root-cert")
        .await
        .unwrap();
    assert_eq!(
        root.data.unwrap()["root-cert.pem"],
        String::from_utf8_lossy(&data["ca-cert.pem"].0)
    );
    for sa in ["ztunnel", "ambit-node-agent"] {
        Api::<ServiceAccount>::namespaced(client.clone(), ns)
            .get(sa)
            .await
            .unwrap();
    }
    Api::<ClusterRole>::all(client.clone())
        .get("ambit-node-agent")
        .await
        .unwrap();

    // Not ready until every node runs it; then Ready with an event.
    let status = eventually("Mesh accepted", || async {
        let s = mesh_status(&meshes).await;
        (condition(&s, "Accepted") == Some(("True".into(), "Accepted".into()))).then_some(s)
    })
    .await;
    assert_eq!(condition(&status, "Ready").unwrap().0, "False", "{status}");
    roll_out(&ds, "ztunnel", 3).await;
    roll_out(&ds, "ambit-node-agent", 3).await;
    let status = eventually("Mesh ready", || async {
        let s = mesh_status(&meshes).await;
        (condition(&s, "Ready").map(|c| c.0) == Some("True".into())).then_some(s)
    })
    .await;
    assert_eq!(status["components"]["ztunnel"]["readyNodes"], 3, "{status}");
    assert_eq!(status["components"]["ztunnel"]["version"], "1.0.0");

    // An upgrade rolls the DaemonSet (one node at a time) and shows as progressing.
    meshes
        .patch(
            "default",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"ztunnel": {"image": "reg/ztunnel:1.1.0"}}})),
        )
        .await
        .unwrap();
    let zt = eventually("ztunnel upgraded", || async {
        let d = ds.get("ztunnel").await.unwrap();
        let image = d.spec.as_ref()?.template.spec.as_ref()?.containers[0]
            .image
            .clone()?;
        (image == "reg/ztunnel:1.1.0").then_some(d)
    })
    .await;
    let ru = zt
        .spec
        .unwrap()
        .update_strategy
        .unwrap()
        .rolling_update
        .unwrap();
    // A node's new ztunnel starts beside the old one: one node at a time, none unserved.
    use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
    assert_eq!(ru.max_unavailable, Some(IntOrString::Int(0)));
    assert_eq!(ru.max_surge, Some(IntOrString::Int(1)));
    eventually("Mesh progressing", || async {
        let s = mesh_status(&meshes).await;
        (condition(&s, "Progressing").map(|c| c.0) == Some("True".into())
            && s["components"]["ztunnel"]["version"] == "1.1.0")
            .then_some(())
    })
    .await;

    // An invalid spec is reported and changes nothing.
    meshes
        .patch("default", &PatchParams::default(), &Patch::Merge(json!({"spec": {"certificateTtl": "1.5h", "ztunnel": {"image": "reg/ztunnel:9.9.9"}}})))
        .await
        .unwrap();
    let status = eventually("invalid Mesh reported", || async {
        let s = mesh_status(&meshes).await;
        (condition(&s, "Accepted") == Some(("False".into(), "Invalid".into()))).then_some(s)
    })
    .await;
    assert!(status.to_string().contains("certificateTtl"), "{status}");
    let image = ds
        .get("ztunnel")
        .await
        .unwrap()
        .spec
        .unwrap()
        .template
        .spec
        .unwrap()
        .containers[0]
        .image
        .clone();
    assert_eq!(image.as_deref(), Some("reg/ztunnel:1.1.0"));
    meshes
        .patch("default", &PatchParams::default(), &Patch::Merge(json!({"spec": {"certificateTtl": "24h", "ztunnel": {"image": "reg/ztunnel:1.1.0"}}})))
        .await
        .unwrap();

    // A Waypoint becomes a ServiceAccount, root cert, Deployment and Service.
    let waypoints: Api<Waypoint> = Api::namespaced(client.clone(), "shop");
    let wp: Waypoint = serde_json::from_value(json!({
        "apiVersion": "ambit.dev/v1alpha1", "kind": "Waypoint",
        "metadata": {"name": "shop-waypoint", "namespace": "shop"}, "spec": {"replicas": 2}
    }))
    .unwrap();
    waypoints.create(&PostParams::default(), &wp).await.unwrap();
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), "shop");
    let dep = eventually("waypoint Deployment", || async {
        deployments.get_opt("shop-waypoint").await.unwrap()
    })
    .await;
    assert_eq!(dep.spec.as_ref().unwrap().replicas, Some(2));
    Api::<Service>::namespaced(client.clone(), "shop")
        .get("shop-waypoint")
        .await
        .unwrap();
    Api::<ConfigMap>::namespaced(client.clone(), "shop")
        .get("shop-waypoint-root-cert")
        .await
        .unwrap();
    deployments
        .patch_status(
            "shop-waypoint",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"readyReplicas": 1, "replicas": 2}})),
        )
        .await
        .unwrap();
    eventually("waypoint programmed", || async {
        let w = waypoints.get("shop-waypoint").await.unwrap();
        let s = serde_json::to_value(w.status?).unwrap();
        (condition(&s, "Programmed").map(|c| c.0) == Some("True".into()) && s["readyReplicas"] == 1)
            .then_some(())
    })
    .await;

    // Deleting the Mesh removes the data plane before the Mesh goes.
    meshes
        .delete("default", &DeleteParams::default())
        .await
        .unwrap();
    eventually("Mesh gone", || async {
        meshes
            .get_opt("default")
            .await
            .unwrap()
            .is_none()
            .then_some(())
    })
    .await;
    assert!(ds.get_opt("ztunnel").await.unwrap().is_none());
    assert!(ds.get_opt("ambit-node-agent").await.unwrap().is_none());
    // ...and the waypoint's proxy with it; the Waypoint (the user's object) stays and says why.
    assert!(deployments
        .get_opt("shop-waypoint")
        .await
        .unwrap()
        .is_none());
    assert!(Api::<Service>::namespaced(client.clone(), "shop")
        .get_opt("shop-waypoint")
        .await
        .unwrap()
        .is_none());
    assert!(Api::<ConfigMap>::namespaced(client.clone(), "shop")
        .get_opt("shop-waypoint-root-cert")
        .await
        .unwrap()
        .is_none());
    eventually("Waypoint says its Mesh is gone", || async {
        let w = waypoints.get("shop-waypoint").await.unwrap();
        let s = serde_json::to_value(w.status?).unwrap();
        (condition(&s, "Programmed").map(|c| c.0) == Some("False".into())).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        deployments
            .get_opt("shop-waypoint")
            .await
            .unwrap()
            .is_none(),
        "the waypoint controller redeployed the proxy of a deleted Mesh"
    );

    let _ = stop_tx.send(true);
    let result = tokio::time::timeout(Duration::from_secs(10), operator)
        .await
        .unwrap()
        .unwrap();
    assert!(result.is_ok(), "{result:?}");

    check_calls_against_chart_rbac(&server);
}

/// Every (verb, group, resource) the operator used, as "verb group/resource".
fn recorded_calls(server: &ApiServerHandle) -> BTreeSet<String> {
    server
        .requests()
        .iter()
        .filter(|r| r.user_agent == OPERATOR_AGENT)
        .filter_map(|r| {
            let (group, resource, named, sub, ns) = resource_of(&r.path)?;
            let scope = match ns.as_deref() {
                None => "cluster",
                Some("ambit-system") => "release",
                Some(_) => "other",
            };
            let watch = r.query.contains("watch=true") || r.query.contains("watch=1");
            let verb = match r.method.as_str() {
                "GET" if watch => "watch",
                "GET" if named => "get",
                "GET" => "list",
                "POST" => "create",
                "PUT" => "update",
                "PATCH" => "patch",
                "DELETE" => "delete",
                _ => return None,
            };
            let resource = if sub.is_empty() {
                resource
            } else {
                format!("{resource}/{sub}")
            };
            Some(format!("{verb} {group}/{resource} {scope}"))
        })
        .collect()
}

/// (group, resource, whether a single object is named, subresource, namespace) of an API path.
fn resource_of(path: &str) -> Option<(String, String, bool, String, Option<String>)> {
    let parts: Vec<_> = path.trim_end_matches('/').split('/').collect();
    let (group, base) = match *parts.get(1)? {
        "api" => (String::new(), 3),
        "apis" => (parts.get(2)?.to_string(), 4),
        _ => return None,
    };
    let rest = parts.get(base..)?;
    // Namespaced paths: namespaces/<ns>/<resource>...; `namespaces/<name>` alone is a Namespace.
    let (rest, ns) = if rest.first() == Some(&"namespaces") && rest.len() > 2 {
        (&rest[2..], Some(rest[1].to_string()))
    } else {
        (rest, None)
    };
    let resource = rest.first()?.to_string();
    let sub = rest.get(2).map(|s| s.to_string()).unwrap_or_default();
    Some((group, resource, rest.len() > 1, sub, ns))
}

/// The chart's RBAC must grant every call the operator made (a call it can't make would fail
/// in a cluster), and the recorded list is committed so a reviewer sees what the operator does.
fn check_calls_against_chart_rbac(server: &ApiServerHandle) {
    let calls = recorded_calls(server);
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/api-calls.txt");
    let mut text = String::from("# verb group/resource scope (cluster | release namespace | other namespace) the operator called in operator_apisim.rs (generated; checked by scripts/lint-deploy against helm/ambit RBAC)\n");
    for c in &calls {
        text.push_str(c);
        text.push('\n');
    }
    let committed = std::fs::read_to_string(path).unwrap_or_default();
    if committed != text {
        std::fs::write(path, &text).unwrap();
        panic!("operator/tests/api-calls.txt was stale and has been rewritten; review and commit it:\n{text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_election_it_reconciles_and_it_stops_even_before_a_mesh_exists() {
    let (server, client) = api_with(&[("ambit-system", json!({}))]).await;

    // No Mesh yet: the operator waits for one, and a stop request still ends it promptly.
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut opts = options("127.0.0.1:0".parse().unwrap());
    opts.leader_elect = false;
    let waiting = tokio::spawn(run(operator_client(&server), opts.clone(), stop_rx));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let _ = stop_tx.send(true);
    let result = tokio::time::timeout(Duration::from_secs(5), waiting).await;
    assert!(matches!(result, Ok(Ok(Ok(())))), "{result:?}");

    // A single replica without election reconciles (and keeps running).
    create_mesh(&client, json!({})).await;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let operator = tokio::spawn(run(operator_client(&server), opts, stop_rx));
    let ds: Api<DaemonSet> = Api::namespaced(client.clone(), "ambit-system");
    eventually("ztunnel DaemonSet", || async {
        ds.get_opt("ztunnel").await.unwrap()
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!operator.is_finished(), "the operator stopped on its own");
    let _ = stop_tx.send(true);
    let result = tokio::time::timeout(Duration::from_secs(10), operator).await;
    assert!(matches!(result, Ok(Ok(Ok(())))), "{result:?}");
}
