//! `Waypoint` -> ServiceAccount, root-certificate ConfigMap, Deployment and Service in the
//! Waypoint's namespace, all owned by it (deleting the Waypoint garbage-collects them, so no
//! finalizer is needed). Status: ready replicas, the Service address, Accepted / Programmed.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Service, ServiceAccount};
use kube::api::Api;
use kube::runtime::controller::Action;
use kube::runtime::events::{Event as KubeEvent, EventType};
use kube::{Resource, ResourceExt};

use super::mesh::apply_object;
use super::status::{conditions, patch_status};
use super::{Context, Error};
use crate::crd::common::{find_condition, ConditionStatus as S, ConditionUpdate as C};
use crate::crd::mesh::{Mesh, DEFAULT_MESH_NAME};
use crate::crd::waypoint::{Waypoint, WaypointStatus};
use crate::crd::Validate;
use crate::render::waypoint::render;

pub const CONTROLLER: &str = "waypoint";

pub async fn reconcile(wp: Arc<Waypoint>, ctx: Arc<Context>) -> Result<Action, Error> {
    let _timer = ctx.metrics.start(CONTROLLER);
    let name = wp.name_any();
    let ns = wp
        .namespace()
        .ok_or_else(|| Error::Incomplete(format!("Waypoint {name}")))?;
    let api: Api<Waypoint> = Api::namespaced(ctx.client.clone(), &ns);
    let generation = wp.meta().generation;
    let previous = wp.status.clone().unwrap_or_default();

    if let Some(message) = wp.spec.problems() {
        let status = WaypointStatus {
            observed_generation: generation,
            conditions: conditions(
                &previous.conditions,
                vec![
                    C::new("Accepted", S::False, "Invalid", &message),
                    C::new(
                        "Programmed",
                        S::False,
                        "Invalid",
                        "nothing was deployed for an invalid spec",
                    ),
                ],
                generation,
            ),
            ..previous.clone()
        };
        patch_status(&api, &*wp, &status).await?;
        return Ok(Action::await_change());
    }

    // Images and defaults come from the Mesh; without one there is nothing to run.
    let mesh = Api::<Mesh>::all(ctx.client.clone())
        .get_opt(DEFAULT_MESH_NAME)
        .await
        .map_err(|source| Error::Read {
            what: format!("Mesh {DEFAULT_MESH_NAME}"),
            source,
        })?;
    // A Mesh being deleted takes the waypoints' proxies with it (its finalizer removes
    // them): deploy nothing for it, as for no Mesh at all.
    let deleting = mesh
        .as_ref()
        .is_some_and(|m| m.meta().deletion_timestamp.is_some());
    let Some(mesh) = mesh.filter(|_| !deleting) else {
        let message = if deleting {
            format!("the Mesh {DEFAULT_MESH_NAME:?} is being deleted, and its waypoint proxies with it; they come back when a Mesh is installed again")
        } else {
            format!(
                "there is no Mesh named {DEFAULT_MESH_NAME:?}; install Ambit (helm install) first"
            )
        };
        let status = WaypointStatus {
            observed_generation: generation,
            conditions: conditions(
                &previous.conditions,
                vec![
                    C::new("Accepted", S::True, "Accepted", "the spec is valid"),
                    C::new("Programmed", S::False, "NoMesh", message),
                ],
                generation,
            ),
            ..previous.clone()
        };
        patch_status(&api, &*wp, &status).await?;
        return Ok(Action::requeue(Duration::from_secs(30)));
    };

    let owner = wp
        .controller_owner_ref(&())
        .ok_or_else(|| Error::Incomplete(format!("Waypoint {ns}/{name}")))?;
    let objects = render(
        &name,
        &ns,
        &wp.spec,
        &mesh.spec,
        &ctx.root_cert_pem,
        &ctx.control_plane,
        &owner,
    );
    let client = ctx.client.clone();
    apply_object(
        &Api::<ServiceAccount>::namespaced(client.clone(), &ns),
        &objects.service_account,
    )
    .await?;
    apply_object(
        &Api::<ConfigMap>::namespaced(client.clone(), &ns),
        &objects.root_cert,
    )
    .await?;
    let deployment = apply_object(
        &Api::<Deployment>::namespaced(client.clone(), &ns),
        &objects.deployment,
    )
    .await?;
    let service = apply_object(&Api::<Service>::namespaced(client, &ns), &objects.service).await?;

    let ready = deployment
        .status
        .as_ref()
        .and_then(|s| s.ready_replicas)
        .unwrap_or(0);
    let address = service
        .spec
        .as_ref()
        .and_then(|s| s.cluster_ip.clone())
        .filter(|ip| !ip.is_empty() && ip != "None");
    let programmed = if ready > 0 {
        C::new(
            "Programmed",
            S::True,
            "Programmed",
            format!("{ready}/{} replicas ready", wp.spec.replicas),
        )
    } else {
        C::new(
            "Programmed",
            S::False,
            "Pending",
            format!("Deployment {ns}/{name} has no ready replica yet"),
        )
    };
    let was_programmed =
        find_condition(&previous.conditions, "Programmed").is_some_and(|c| c.status == "True");
    let now_programmed = ready > 0;
    let status = WaypointStatus {
        observed_generation: generation,
        conditions: conditions(
            &previous.conditions,
            vec![
                C::new("Accepted", S::True, "Accepted", "the spec is valid"),
                programmed,
            ],
            generation,
        ),
        ready_replicas: ready,
        address,
    };
    if status != previous {
        patch_status(&api, &*wp, &status).await?;
    }
    if now_programmed && !was_programmed {
        let event = KubeEvent {
            type_: EventType::Normal,
            reason: "Programmed".into(),
            note: Some(format!("waypoint {ns}/{name} is serving")),
            action: "Reconcile".into(),
            secondary: None,
        };
        if let Err(error) = ctx.recorder.publish(&event, &wp.object_ref(&())).await {
            tracing::debug!(%error, "could not publish event");
        }
    }
    Ok(Action::requeue(if now_programmed {
        Duration::from_secs(300)
    } else {
        Duration::from_secs(5)
    }))
}
