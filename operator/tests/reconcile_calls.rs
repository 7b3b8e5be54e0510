//! Each reconciler called once against the in-memory API, asserting the exact API calls it
//! makes (the controller-rs pattern), on the happy path and on error paths.

mod apisim_common;

use std::sync::Arc;

use ambit_apisim::{ApiServer, ApiServerHandle};
use ambit_operator::controller::{mesh, on_error, waypoint, Context, Error, ReconcileMetrics};
use ambit_operator::crd::{Mesh, Waypoint};
use ambit_operator::render::dataplane::ControlPlane;
use apisim_common::{client_for, install, operator_client, OPERATOR_AGENT};
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::controller::Action;
use serde_json::json;

async fn setup(namespaces: &[&str]) -> (ApiServerHandle, Arc<Context>) {
    let server = ApiServer::start("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let ns: Vec<_> = namespaces.iter().map(|n| (*n, json!({}))).collect();
    install(&client_for(&server), &ns).await;
    let ctx = Context::new(
        operator_client(&server),
        ControlPlane {
            namespace: "ambit-system".into(),
            address: "ambit-operator.ambit-system.svc:15012".into(),
        },
        "ROOT PEM".into(),
        Arc::new(ReconcileMetrics::default()),
        "op-0",
    );
    (server, ctx)
}

/// The operator's calls since the last clear, as "METHOD path".
fn calls(server: &ApiServerHandle) -> Vec<String> {
    let out = server
        .requests()
        .into_iter()
        .filter(|r| r.user_agent == OPERATOR_AGENT)
        .map(|r| format!("{} {}", r.method, r.path))
        .collect();
    server.clear_requests();
    out
}

async fn create_mesh(server: &ApiServerHandle, spec: serde_json::Value) -> Arc<Mesh> {
    let api: Api<Mesh> = Api::all(client_for(server));
    let mesh: Mesh =
        serde_json::from_value(json!({"apiVersion": "ambit.dev/v1alpha1", "kind": "Mesh",
        "metadata": {"name": "default"}, "spec": spec}))
        .unwrap();
    let created = api.create(&PostParams::default(), &mesh).await.unwrap();
    server.clear_requests();
    Arc::new(created)
}

async fn fresh_mesh(server: &ApiServerHandle) -> Arc<Mesh> {
    let m = Api::<Mesh>::all(client_for(server))
        .get("default")
        .await
        .unwrap();
    server.clear_requests();
    Arc::new(m)
}

const SA: &str = "/api/v1/namespaces/ambit-system/serviceaccounts";
const DS: &str = "/apis/apps/v1/namespaces/ambit-system/daemonsets";

#[tokio::test]
async fn mesh_first_reconcile_adds_the_finalizer_then_applies_the_data_plane() {
    let (server, ctx) = setup(&["ambit-system"]).await;
    let m = create_mesh(&server, json!({})).await;
    mesh::reconcile(m, ctx.clone()).await.unwrap();
    // The finalizer goes on first (and that change wakes the next reconcile).
    assert_eq!(
        calls(&server),
        vec!["PATCH /apis/ambit.dev/v1alpha1/meshes/default"]
    );

    mesh::reconcile(fresh_mesh(&server).await, ctx.clone())
        .await
        .unwrap();
    let got = calls(&server);
    let want = vec![
        format!("PATCH {SA}/ztunnel"),
        format!("PATCH {SA}/ambit-node-agent"),
        "PATCH /apis/rbac.authorization.k8s.io/v1/clusterroles/ambit-node-agent".to_string(),
        "PATCH /apis/rbac.authorization.k8s.io/v1/clusterrolebindings/ambit-node-agent".to_string(),
        "PATCH /apis/rbac.authorization.k8s.io/v1/namespaces/ambit-system/roles/ambit-node-agent"
            .to_string(),
        "PATCH /apis/rbac.authorization.k8s.io/v1/namespaces/ambit-system/rolebindings/ambit-node-agent"
            .to_string(),
        "PATCH /api/v1/namespaces/ambit-system/configmaps/ambit-ca-root-cert".to_string(),
        format!("GET {DS}/ztunnel"),
        format!("PATCH {DS}/ztunnel"),
        format!("GET {DS}/ambit-node-agent"),
        format!("PATCH {DS}/ambit-node-agent"),
        "PATCH /apis/ambit.dev/v1alpha1/meshes/default/status".to_string(),
        // "RollingOut" event for the new generation.
        "POST /apis/events.k8s.io/v1/namespaces/default/events".to_string(),
    ];
    assert_eq!(got, want);
    assert_eq!(ctx.metrics.reconciles(mesh::CONTROLLER), 2);

    // Nothing changed: the same applies (server-side apply is idempotent), no status write,
    // no event.
    mesh::reconcile(fresh_mesh(&server).await, ctx.clone())
        .await
        .unwrap();
    let again = calls(&server);
    assert_eq!(again, want[..11].to_vec());
}

#[tokio::test]
async fn an_invalid_mesh_only_gets_a_status_condition() {
    let (server, ctx) = setup(&["ambit-system"]).await;
    create_mesh(&server, json!({"certificateTtl": "1.5h"})).await;
    mesh::reconcile(fresh_mesh(&server).await, ctx.clone())
        .await
        .unwrap(); // finalizer
    calls(&server);
    mesh::reconcile(fresh_mesh(&server).await, ctx.clone())
        .await
        .unwrap();
    assert_eq!(
        calls(&server),
        vec!["PATCH /apis/ambit.dev/v1alpha1/meshes/default/status"]
    );
    let status = Api::<Mesh>::all(client_for(&server))
        .get("default")
        .await
        .unwrap()
        .status
        .unwrap();
    let accepted = status
        .conditions
        .iter()
        .find(|c| c.type_ == "Accepted")
        .unwrap();
    assert_eq!(
        (accepted.status.as_str(), accepted.reason.as_str()),
        ("False", "Invalid")
    );
    assert!(
        accepted.message.contains("spec.certificateTtl"),
        "{}",
        accepted.message
    );
}

#[tokio::test]
async fn an_api_failure_stops_the_reconcile_at_the_failing_call() {
    // No ambit-system namespace: the first namespaced apply fails with 404.
    let (server, ctx) = setup(&[]).await;
    create_mesh(&server, json!({})).await;
    mesh::reconcile(fresh_mesh(&server).await, ctx.clone())
        .await
        .unwrap(); // finalizer
    calls(&server);
    let err = mesh::reconcile(fresh_mesh(&server).await, ctx.clone())
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::Apply { kind, name, .. } if kind == "ServiceAccount" && name == "ztunnel"),
        "{err}"
    );
    assert_eq!(err.reason(), "apply");
    assert!(
        err.to_string().contains("applying ServiceAccount ztunnel"),
        "{err}"
    );
    // Nothing after the failing call was attempted but telling the user on the Mesh.
    assert_eq!(
        calls(&server),
        vec![
            format!("PATCH {SA}/ztunnel"),
            "PATCH /apis/ambit.dev/v1alpha1/meshes/default/status".to_string(),
        ]
    );
    let mesh = fresh_mesh(&server).await;
    let degraded = mesh
        .status
        .as_ref()
        .and_then(|s| s.conditions.iter().find(|c| c.type_ == "Degraded"))
        .expect("Degraded condition");
    assert_eq!(
        (degraded.status.as_str(), degraded.reason.as_str()),
        ("True", "ApplyFailed")
    );
    assert!(
        degraded.message.contains("applying ServiceAccount ztunnel")
            && degraded.message.contains("retries"),
        "{}",
        degraded.message
    );
    // The same failure again changes nothing on the Mesh: no second status write.
    calls(&server);
    mesh::reconcile(mesh, ctx.clone()).await.unwrap_err();
    assert_eq!(calls(&server), vec![format!("PATCH {SA}/ztunnel")]);
    // The controller's error policy counts it and retries.
    let action = ambit_operator::controller::on_error(mesh::CONTROLLER, &err, &ctx);
    assert_eq!(ctx.metrics.errors(mesh::CONTROLLER, "apply"), 1);
    assert!(format!("{action:?}").contains("5s"), "{action:?}");
}

/// Two writers share the Mesh's conditions (its reconciler and the config-rejection
/// reporter). A reconcile working from an older copy must not put back what the other wrote:
/// its status write is conditional on the version it read, the conflict is not counted as an
/// error, and the reconcile from the newer copy keeps the other writer's condition.
#[tokio::test]
async fn a_status_computed_from_a_stale_mesh_does_not_overwrite_a_newer_condition() {
    let (server, ctx) = setup(&["ambit-system"]).await;
    let m = create_mesh(&server, json!({})).await;
    mesh::reconcile(m, ctx.clone()).await.unwrap(); // finalizer
    let stale = fresh_mesh(&server).await;
    let api: Api<Mesh> = Api::all(client_for(&server));
    let other_writer = json!({"status": {"conditions": [{
        "type": "ConfigAccepted", "status": "False", "reason": "Rejected",
        "message": "ztunnel-1 rejected version 3", "lastTransitionTime": "2026-01-01T00:00:00Z"}]}});
    api.patch_status(
        "default",
        &PatchParams::default(),
        &Patch::Merge(&other_writer),
    )
    .await
    .unwrap();
    calls(&server);

    let error = mesh::reconcile(stale, ctx.clone())
        .await
        .expect_err("a write based on an older version is refused");
    assert!(error.is_conflict(), "{error}");
    assert_eq!(
        on_error(mesh::CONTROLLER, &error, &ctx),
        Action::requeue(std::time::Duration::from_millis(200))
    );
    assert_eq!(ctx.metrics.errors(mesh::CONTROLLER, "status"), 0);
    let condition = |m: &Mesh, t: &str| {
        m.status
            .as_ref()
            .and_then(|s| s.conditions.iter().find(|c| c.type_ == t).cloned())
    };
    let now = api.get("default").await.unwrap();
    assert_eq!(
        condition(&now, "ConfigAccepted").map(|c| c.status),
        Some("False".to_string())
    );
    assert!(condition(&now, "Accepted").is_none(), "nothing was written");

    mesh::reconcile(Arc::new(now), ctx.clone()).await.unwrap();
    let now = api.get("default").await.unwrap();
    assert_eq!(
        condition(&now, "ConfigAccepted").map(|c| c.status),
        Some("False".to_string()),
        "the reconcile keeps the other writer's condition"
    );
    assert_eq!(
        condition(&now, "Accepted").map(|c| c.status),
        Some("True".to_string())
    );
}

#[tokio::test]
async fn a_mesh_not_named_default_is_told_so_and_nothing_else() {
    let (server, ctx) = setup(&["ambit-system"]).await;
    let api: Api<Mesh> = Api::all(client_for(&server));
    let other: Mesh =
        serde_json::from_value(json!({"apiVersion": "ambit.dev/v1alpha1", "kind": "Mesh",
        "metadata": {"name": "second"}, "spec": {}}))
        .unwrap();
    let other = api.create(&PostParams::default(), &other).await.unwrap();
    server.clear_requests();
    mesh::reconcile(Arc::new(other), ctx).await.unwrap();
    assert_eq!(
        calls(&server),
        vec!["PATCH /apis/ambit.dev/v1alpha1/meshes/second/status"]
    );
    let status = api.get("second").await.unwrap().status.unwrap();
    assert_eq!(status.conditions[0].reason, "NotDefault");
}

#[tokio::test]
async fn waypoint_reconcile_calls_with_and_without_a_mesh() {
    let (server, ctx) = setup(&["ambit-system", "shop"]).await;
    let api: Api<Waypoint> = Api::namespaced(client_for(&server), "shop");
    let wp: Waypoint = serde_json::from_value(
        json!({"apiVersion": "ambit.dev/v1alpha1", "kind": "Waypoint",
        "metadata": {"name": "wp", "namespace": "shop"}, "spec": {}}),
    )
    .unwrap();
    let wp = Arc::new(api.create(&PostParams::default(), &wp).await.unwrap());
    server.clear_requests();

    // Without a Mesh there is nothing to deploy: read it, say so in status.
    waypoint::reconcile(wp.clone(), ctx.clone()).await.unwrap();
    assert_eq!(
        calls(&server),
        vec![
            "GET /apis/ambit.dev/v1alpha1/meshes/default",
            "PATCH /apis/ambit.dev/v1alpha1/namespaces/shop/waypoints/wp/status",
        ]
    );
    let programmed = api.get("wp").await.unwrap().status.unwrap();
    let c = programmed
        .conditions
        .iter()
        .find(|c| c.type_ == "Programmed")
        .unwrap();
    assert_eq!(c.reason, "NoMesh");

    create_mesh(&server, json!({})).await;
    let wp = Arc::new(api.get("wp").await.unwrap());
    server.clear_requests();
    waypoint::reconcile(wp, ctx).await.unwrap();
    assert_eq!(
        calls(&server),
        vec![
            "GET /apis/ambit.dev/v1alpha1/meshes/default",
            "PATCH /api/v1/namespaces/shop/serviceaccounts/wp",
            "PATCH /api/v1/namespaces/shop/configmaps/wp-root-cert",
            "PATCH /apis/apps/v1/namespaces/shop/deployments/wp",
            "PATCH /api/v1/namespaces/shop/services/wp",
            "PATCH /apis/ambit.dev/v1alpha1/namespaces/shop/waypoints/wp/status",
        ]
    );
}
