//! The real operator against the in-memory API: TrafficRoute and BackendPolicy status is written
//! (Accepted / ResolvedRefs / Programmed, observedGeneration), an older route wins a conflict,
//! and removing the waypoint label turns `Programmed` to `NoWaypoint`.

mod apisim_common;

use std::time::Duration;

use ambit_operator::crd::{BackendPolicy, TrafficRoute, Waypoint};
use ambit_operator::runtime::run;
use apisim_common::{api_with, client_for, create_mesh, eventually, options};
use k8s_openapi::api::core::v1::{Namespace, Service};
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::{json, Value};

async fn create<K>(api: Api<K>, obj: Value)
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + serde::Serialize + std::fmt::Debug,
    K::DynamicType: Default,
{
    api.create(
        &PostParams::default(),
        &serde_json::from_value(obj).unwrap(),
    )
    .await
    .unwrap();
}

/// (status, reason) of condition `type_` once `observedGeneration` matches the object's.
async fn condition<K>(api: &Api<K>, name: &str, type_: &str) -> Option<(String, String)>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + serde::Serialize + std::fmt::Debug,
    K::DynamicType: Default,
{
    let obj = serde_json::to_value(api.get(name).await.ok()?).unwrap();
    let status = &obj["status"];
    if status["observedGeneration"] != obj["metadata"]["generation"] {
        return None;
    }
    let c = status["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == type_)?;
    Some((
        c["status"].as_str()?.to_string(),
        c["reason"].as_str()?.to_string(),
    ))
}

async fn wait_for<K>(api: &Api<K>, name: &str, type_: &str, want: (&str, &str))
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + serde::Serialize + std::fmt::Debug,
    K::DynamicType: Default,
{
    let what = format!("{name} {type_}={want:?}");
    eventually(&what, || async {
        condition(api, name, type_)
            .await
            .filter(|(s, r)| (s.as_str(), r.as_str()) == want)
    })
    .await;
}

fn canary() -> Value {
    json!({"targetRef": {"name": "reviews"}, "rules": [{"backends": [
        {"subset": {"version": "v1"}, "weight": 90}, {"subset": {"version": "v2"}, "weight": 10}]}]})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn route_and_policy_status_is_written_and_follows_the_waypoint_label() {
    let (server, client) = api_with(&[
        ("ambit-system", json!({})),
        (
            "shop",
            json!({"ambit.dev/dataplane-mode": "ambient", "ambit.dev/use-waypoint": "wp"}),
        ),
    ])
    .await;
    create_mesh(&client, json!({})).await;
    create::<Service>(
        Api::namespaced(client.clone(), "shop"),
        json!({"metadata": {"name": "reviews", "namespace": "shop"},
        "spec": {"selector": {"app": "reviews"}, "ports": [{"port": 9080}]}}),
    )
    .await;
    create::<Waypoint>(
        Api::namespaced(client.clone(), "shop"),
        json!({"apiVersion": "ambit.dev/v1alpha1", "kind": "Waypoint",
        "metadata": {"name": "wp", "namespace": "shop"}, "spec": {"serves": "Services"}}),
    )
    .await;
    let route = |name: &str| {
        json!({"apiVersion": "ambit.dev/v1alpha1", "kind": "TrafficRoute",
            "metadata": {"name": name, "namespace": "shop"}, "spec": canary()})
    };
    create::<TrafficRoute>(Api::namespaced(client.clone(), "shop"), route("a-first")).await;
    // Created later (or in the same second: then the name decides), so it loses.
    create::<TrafficRoute>(Api::namespaced(client.clone(), "shop"), route("b-second")).await;
    create::<BackendPolicy>(
        Api::namespaced(client.clone(), "shop"),
        json!({"apiVersion": "ambit.dev/v1alpha1", "kind": "BackendPolicy",
        "metadata": {"name": "reviews", "namespace": "shop"},
        "spec": {"targetRef": {"name": "reviews"}, "loadBalancer": {"type": "RoundRobin"}}}),
    )
    .await;

    let listen = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let operator = tokio::spawn(run(client_for(&server), options(listen), stop_rx));

    let routes: Api<TrafficRoute> = Api::namespaced(client.clone(), "shop");
    let policies: Api<BackendPolicy> = Api::namespaced(client.clone(), "shop");
    wait_for(&routes, "a-first", "Programmed", ("True", "Programmed")).await;
    wait_for(&routes, "a-first", "Accepted", ("True", "Accepted")).await;
    wait_for(&routes, "a-first", "ResolvedRefs", ("True", "ResolvedRefs")).await;
    wait_for(&routes, "b-second", "Accepted", ("False", "Conflicted")).await;
    wait_for(&policies, "reviews", "Programmed", ("True", "Programmed")).await;

    // Without the label no waypoint serves the Service: both kinds say so.
    Api::<Namespace>::all(client.clone())
        .patch(
            "shop",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"ambit.dev/use-waypoint": null}}})),
        )
        .await
        .unwrap();
    wait_for(&routes, "a-first", "Programmed", ("False", "NoWaypoint")).await;
    wait_for(&policies, "reviews", "Programmed", ("False", "NoWaypoint")).await;

    let _ = stop_tx.send(true);
    let _ = tokio::time::timeout(Duration::from_secs(10), operator).await;
}
