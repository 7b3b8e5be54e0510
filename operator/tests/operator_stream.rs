//! The operator's config stream fed from the (in-memory) Kubernetes API: a ztunnel and a
//! waypoint, authenticated with ServiceAccount tokens the API server issued, receive the
//! compiled mesh; a change pushes only its delta; a deleted Service is withdrawn; an operator
//! restart keeps proxies on their config and resyncs them with nothing duplicated or lost.

mod apisim_common;
mod control_common;

use std::collections::BTreeMap;
use std::time::Duration;

use ambit_core::control::proto::{ClientMessage, Subscribe, Update};
use ambit_core::control::Endpoint;
use ambit_operator::crd::{Mesh, TrafficRoute, Waypoint};
use ambit_operator::runtime::run;
use apisim_common::{
    api_with, client_for, create_mesh, eventually, free_addr, options, pod, token_file,
    ztunnel_endpoint, ztunnel_pod,
};
use control_common::RawStream;
use k8s_openapi::api::core::v1::{Pod, Service};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use serde_json::json;

fn keys(u: &Update) -> Vec<String> {
    u.upserts.iter().map(|r| r.key.clone()).collect()
}

/// Applies `u` to `held` (key -> version) and acknowledges it.
fn apply(stream: &mut RawStream, held: &mut BTreeMap<String, String>, u: &Update) {
    if u.full {
        held.clear();
    }
    for k in &u.removes {
        held.remove(k);
    }
    for r in &u.upserts {
        held.insert(r.key.clone(), r.version.clone());
    }
    stream.tell(ClientMessage::Ack { version: u.version });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxies_get_the_compiled_mesh_deltas_and_survive_an_operator_restart() {
    let dir = std::env::temp_dir().join(format!("ambit-opstream-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (server, client) = api_with(&[
        ("ambit-system", json!({})),
        ("shop", json!({"ambit.dev/dataplane-mode": "ambient"})),
    ])
    .await;
    create_mesh(&client, json!({})).await;
    pod(
        &client,
        "shop",
        "reviews-v1",
        "node-1",
        "reviews",
        "10.1.1.10",
        json!({"app": "reviews", "version": "v1"}),
    )
    .await;
    pod(
        &client,
        "shop",
        "reviews-v2",
        "node-2",
        "reviews",
        "10.1.2.10",
        json!({"app": "reviews", "version": "v2"}),
    )
    .await;
    ztunnel_pod(&client, "node-1", "10.1.1.2").await;
    let services: Api<Service> = Api::namespaced(client.clone(), "shop");
    let svc = json!({"metadata": {"name": "reviews", "namespace": "shop"},
        "spec": {"selector": {"app": "reviews"}, "ports": [{"port": 9080, "targetPort": 9080}]}});
    services
        .create(
            &PostParams::default(),
            &serde_json::from_value(svc).unwrap(),
        )
        .await
        .unwrap();

    let listen = free_addr();
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let operator = tokio::spawn(run(client_for(&server), options(listen), stop_rx));

    let endpoint = ztunnel_endpoint(&client, &dir, listen, "ztunnel-node-1").await;
    let subscribe = |known: BTreeMap<String, String>| Subscribe {
        target: "node/node-1".parse().unwrap(),
        known,
        last_version: None,
    };

    let mut stream = RawStream::subscribe(&endpoint, subscribe(BTreeMap::new())).await;
    let mut held = BTreeMap::new();
    let first = stream
        .update(Duration::from_secs(10))
        .await
        .expect("initial config");
    let k = keys(&first);
    for want in [
        "workloads/shop/reviews-v1",
        "workloads/shop/reviews-v2",
        "services/shop/reviews",
    ] {
        assert!(k.iter().any(|x| x == want), "{want} missing from {k:?}");
    }
    assert!(
        !k.iter().any(|x| x.contains("ztunnel-node-1")),
        "ambit-system is not enrolled: {k:?}"
    );
    apply(&mut stream, &mut held, &first);

    // A pod opts out: only that workload changes.
    Api::<Pod>::namespaced(client.clone(), "shop")
        .patch(
            "reviews-v2",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"ambit.dev/dataplane-mode": "none"}}})),
        )
        .await
        .unwrap();
    let delta = stream.update(Duration::from_secs(10)).await.expect("delta");
    assert!(!delta.full);
    assert_eq!(keys(&delta), vec!["workloads/shop/reviews-v2"], "{delta:?}");
    assert!(delta.removes.is_empty());
    assert_eq!(delta.upserts[0].body["captured"], false);
    apply(&mut stream, &mut held, &delta);

    // The Service goes away: withdrawn, nothing else sent.
    services
        .delete("reviews", &DeleteParams::default())
        .await
        .unwrap();
    let delta = stream
        .update(Duration::from_secs(10))
        .await
        .expect("withdrawal");
    assert_eq!(delta.removes, vec!["services/shop/reviews".to_string()]);
    assert!(delta.upserts.is_empty(), "{delta:?}");
    apply(&mut stream, &mut held, &delta);

    // A rejected update is reported on the Mesh; the next accepted one clears it.
    let mesh_condition = |want: &'static str| {
        let client = client.clone();
        async move {
            eventually(&format!("ConfigAccepted={want} on the Mesh"), || async {
                let mesh = Api::<Mesh>::all(client.clone())
                    .get("default")
                    .await
                    .unwrap();
                mesh.status?
                    .conditions
                    .into_iter()
                    .find(|c| c.type_ == "ConfigAccepted" && c.status == want)
            })
            .await
        }
    };
    mesh_condition("True").await;
    let label = |tier: &'static str| json!({"metadata": {"labels": {"tier": tier}}});
    let pods: Api<Pod> = Api::namespaced(client.clone(), "shop");
    pods.patch(
        "reviews-v1",
        &PatchParams::default(),
        &Patch::Merge(label("a")),
    )
    .await
    .unwrap();
    let rejected = stream
        .update(Duration::from_secs(10))
        .await
        .expect("update");
    stream.tell(ClientMessage::Nack {
        version: rejected.version,
        error: "workloads[0] (shop/reviews-v1): refused by the test".into(),
    });
    let c = mesh_condition("False").await;
    assert_eq!(c.reason, "Rejected");
    for part in [
        "ambit-system/ztunnel-node-1",
        "node/node-1",
        "refused by the test",
    ] {
        assert!(c.message.contains(part), "{part} missing: {}", c.message);
    }
    pods.patch(
        "reviews-v1",
        &PatchParams::default(),
        &Patch::Merge(label("b")),
    )
    .await
    .unwrap();
    let accepted = stream
        .update(Duration::from_secs(10))
        .await
        .expect("next update");
    assert_eq!(keys(&accepted), vec!["workloads/shop/reviews-v1"]);
    apply(&mut stream, &mut held, &accepted);
    mesh_condition("True").await;

    // A waypoint authenticates as its own ServiceAccount and gets its own target.
    let wp: Waypoint = serde_json::from_value(
        json!({"apiVersion": "ambit.dev/v1alpha1", "kind": "Waypoint",
        "metadata": {"name": "shop-waypoint", "namespace": "shop"}, "spec": {}}),
    )
    .unwrap();
    Api::<Waypoint>::namespaced(client.clone(), "shop")
        .create(&PostParams::default(), &wp)
        .await
        .unwrap();
    pod(
        &client,
        "shop",
        "shop-waypoint-0",
        "node-2",
        "shop-waypoint",
        "10.1.2.20",
        json!({"ambit.dev/waypoint": "shop-waypoint", "ambit.dev/dataplane-mode": "none"}),
    )
    .await;
    let wp_endpoint = Endpoint {
        token_file: token_file(&client, &dir, "shop", "shop-waypoint", "shop-waypoint-0").await,
        ..endpoint.clone()
    };
    let mut wp_stream = RawStream::subscribe(
        &wp_endpoint,
        Subscribe {
            target: "waypoint/shop/shop-waypoint".parse().unwrap(),
            known: BTreeMap::new(),
            last_version: None,
        },
    )
    .await;
    let wp_first = wp_stream
        .update(Duration::from_secs(10))
        .await
        .expect("waypoint config");
    assert!(
        keys(&wp_first)
            .iter()
            .any(|k| k == "workloads/shop/reviews-v1"),
        "{:?}",
        keys(&wp_first)
    );
    // ...but not a node's: a waypoint may only read its own config.
    match RawStream::open(&wp_endpoint, subscribe(BTreeMap::new())).await {
        control_common::Opened::Refused(code, _) => assert_eq!(code, 403),
        control_common::Opened::Stream(_) => panic!("a waypoint subscribed to a node's config"),
    }
    // A canary route on a Service the waypoint serves reaches the waypoint; changing its
    // weights pushes that route alone.
    let ratings = json!({"metadata": {"name": "ratings", "namespace": "shop",
            "labels": {"ambit.dev/use-waypoint": "shop-waypoint"}},
        "spec": {"selector": {"app": "reviews"}, "ports": [{"port": 9080, "targetPort": 9080}]}});
    services
        .create(
            &PostParams::default(),
            &serde_json::from_value(ratings).unwrap(),
        )
        .await
        .unwrap();
    let route = |v1: u32, v2: u32| -> TrafficRoute {
        serde_json::from_value(
            json!({"apiVersion": "ambit.dev/v1alpha1", "kind": "TrafficRoute",
            "metadata": {"name": "ratings-canary", "namespace": "shop"},
            "spec": {"targetRef": {"kind": "Service", "name": "ratings"}, "rules": [{"backends": [
                {"subset": {"version": "v1"}, "weight": v1},
                {"subset": {"version": "v2"}, "weight": v2}]}]}}),
        )
        .unwrap()
    };
    let routes: Api<TrafficRoute> = Api::namespaced(client.clone(), "shop");
    routes
        .create(&PostParams::default(), &route(90, 10))
        .await
        .unwrap();
    let mut wp_held = BTreeMap::new();
    apply(&mut wp_stream, &mut wp_held, &wp_first);
    let route_key = "routes/shop/ratings-canary";
    let programmed = loop {
        let u = wp_stream
            .update(Duration::from_secs(10))
            .await
            .expect("route reaches the waypoint");
        apply(&mut wp_stream, &mut wp_held, &u);
        if let Some(r) = u.upserts.iter().find(|r| r.key == route_key) {
            break r.body.clone();
        }
    };
    assert_eq!(
        programmed["rules"][0]["backends"][0]["weight"], 90,
        "{programmed}"
    );
    routes
        .patch(
            "ratings-canary",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"rules": [{"backends": [
            {"subset": {"version": "v1"}, "weight": 50},
            {"subset": {"version": "v2"}, "weight": 50}]}]}})),
        )
        .await
        .unwrap();
    let delta = wp_stream
        .update(Duration::from_secs(10))
        .await
        .expect("weight change");
    assert_eq!(
        keys(&delta),
        vec![route_key.to_string()],
        "only the route changes: {delta:?}"
    );
    assert!(delta.removes.is_empty() && !delta.full, "{delta:?}");
    assert_eq!(
        delta.upserts[0].body["rules"][0]["backends"][1]["weight"],
        50
    );

    // The waypoint proxy rejects that update: its Waypoint says so, naming the proxy; the Mesh
    // does not (the ztunnels took theirs). Its next accepted update clears the condition.
    let waypoint_condition = |want: &'static str| {
        let client = client.clone();
        async move {
            eventually(
                &format!("ConfigAccepted={want} on the Waypoint"),
                || async {
                    let wp = Api::<Waypoint>::namespaced(client.clone(), "shop")
                        .get("shop-waypoint")
                        .await
                        .unwrap();
                    wp.status?
                        .conditions
                        .into_iter()
                        .find(|c| c.type_ == "ConfigAccepted" && c.status == want)
                },
            )
            .await
        }
    };
    waypoint_condition("True").await;
    wp_stream.tell(ClientMessage::Nack {
        version: delta.version,
        error: "routes[0] (shop/ratings-canary): refused by the test".into(),
    });
    let c = waypoint_condition("False").await;
    assert_eq!(c.reason, "Rejected");
    for part in [
        "shop/shop-waypoint-0",
        "waypoint/shop/shop-waypoint",
        "refused by the test",
    ] {
        assert!(c.message.contains(part), "{part} missing: {}", c.message);
    }
    mesh_condition("True").await;
    routes
        .patch(
            "ratings-canary",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"rules": [{"backends": [
            {"subset": {"version": "v1"}, "weight": 60},
            {"subset": {"version": "v2"}, "weight": 40}]}]}})),
        )
        .await
        .unwrap();
    let accepted = wp_stream
        .update(Duration::from_secs(10))
        .await
        .expect("next route change");
    assert_eq!(keys(&accepted), vec![route_key.to_string()]);
    apply(&mut wp_stream, &mut wp_held, &accepted);
    waypoint_condition("True").await;

    // The waypoint pod and its ztunnel change the node config; take that in before the restart.
    while let Some(u) = stream.update(Duration::from_millis(800)).await {
        apply(&mut stream, &mut held, &u);
    }

    // Restart the operator: the proxy keeps what it holds, reconnects with it, and is sent only
    // what changed while the operator was away (here: the pod that came back to the mesh).
    let _ = stop_tx.send(true);
    tokio::time::timeout(Duration::from_secs(10), operator)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(
        stream.ended(Duration::from_secs(5)).await,
        "the old stream ends with the operator"
    );
    Api::<Pod>::namespaced(client.clone(), "shop")
        .patch(
            "reviews-v2",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"ambit.dev/dataplane-mode": null}}})),
        )
        .await
        .unwrap();
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let operator = tokio::spawn(run(client_for(&server), options(listen), stop_rx));
    let mut stream = eventually("operator back", || {
        let (endpoint, held) = (endpoint.clone(), held.clone());
        async move {
            match RawStream::try_open(&endpoint, subscribe(held)).await? {
                control_common::Opened::Stream(s) => Some(s),
                control_common::Opened::Refused(..) => None,
            }
        }
    })
    .await;
    let resync = stream
        .update(Duration::from_secs(10))
        .await
        .expect("resync");
    assert!(
        !resync.full,
        "a resuming proxy gets a delta, not the whole state: {resync:?}"
    );
    assert_eq!(
        keys(&resync),
        vec!["workloads/shop/reviews-v2"],
        "{resync:?}"
    );
    assert!(resync.removes.is_empty(), "{resync:?}");
    apply(&mut stream, &mut held, &resync);
    assert_eq!(
        held.keys()
            .filter(|k| k.starts_with("workloads/shop/reviews"))
            .count(),
        2
    );

    let _ = stop_tx.send(true);
    let _ = tokio::time::timeout(Duration::from_secs(10), operator).await;
    let _ = std::fs::remove_dir_all(&dir);
}
