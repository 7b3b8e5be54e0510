//! `Mesh` -> the node-level data plane: ServiceAccounts, the node agent's RBAC, the root
//! certificate ConfigMap and the ztunnel / node-agent DaemonSets (server-side applied, owned by
//! the Mesh), and the rollout state back into the Mesh status.
//!
//! Rollouts go node by node, `spec.upgrade.maxUnavailable` nodes at a time (capped below the
//! node count): ztunnel surges (`maxSurge` = that count, `maxUnavailable: 0`: the new ztunnel
//! takes the node's pods over before the old one leaves), the node agent is replaced
//! (`maxUnavailable` = that count, `maxSurge: 0`).
//!
//! Deleting the Mesh removes the data plane in order: the DaemonSets go first with foreground
//! deletion (each node agent sees its DaemonSet being deleted and takes the CNI plugin out of
//! the node's config and the rules out of the pods before it exits); the finalizer is removed
//! only when they are gone, or after a timeout with a warning event. The waypoints' proxies
//! (Deployments, Services, ServiceAccounts, root-certificate ConfigMaps the operator made for
//! each Waypoint) go too; the Waypoint objects stay, as the user's intent, and get their
//! proxies back when a Mesh is installed again.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment};
use k8s_openapi::api::core::v1::{ConfigMap, Service, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PropagationPolicy};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event as KubeEvent, EventType};
use kube::runtime::finalizer::{finalizer, Event};
use kube::{Resource, ResourceExt};
use serde::Serialize;
use tracing::info;

use super::status::{conditions, patch_status};
use super::{Context, Error};
use crate::crd::common::{find_condition, ConditionStatus as S, ConditionUpdate as C};
use crate::crd::mesh::{ComponentStatus, Mesh, MeshStatus, DEFAULT_MESH_NAME};
use crate::crd::Validate;
use crate::render::dataplane::{self, NODE_AGENT, ROOT_CERT_CONFIGMAP, ZTUNNEL};
use crate::render::{labels, FIELD_MANAGER};

pub const FINALIZER: &str = "ambit.dev/data-plane";
pub const CONTROLLER: &str = "mesh";
/// How long deletion waits for the node agents to clean their nodes before giving up.
const CLEANUP_TIMEOUT: Duration = Duration::from_secs(300);

pub async fn reconcile(mesh: Arc<Mesh>, ctx: Arc<Context>) -> Result<Action, Error> {
    let _timer = ctx.metrics.start(CONTROLLER);
    let api: Api<Mesh> = Api::all(ctx.client.clone());
    if mesh.name_any() != DEFAULT_MESH_NAME {
        // The data plane has fixed names: one Mesh owns it. Others are told so.
        let conds = conditions(
            mesh.status.as_ref().map(|s| &s.conditions[..]).unwrap_or(&[]),
            vec![C::new(
                "Accepted",
                S::False,
                "NotDefault",
                format!("only the Mesh named {DEFAULT_MESH_NAME:?} is reconciled; delete this one or rename it"),
            )],
            mesh.meta().generation,
        );
        let status = MeshStatus {
            observed_generation: mesh.meta().generation,
            conditions: conds,
            ..Default::default()
        };
        patch_status(&api, &*mesh, &status).await?;
        return Ok(Action::await_change());
    }
    finalizer(&api, FINALIZER, mesh, |event| async {
        match event {
            Event::Apply(mesh) => apply(&mesh, &ctx, &api).await,
            Event::Cleanup(mesh) => cleanup(&mesh, &ctx).await,
        }
    })
    .await
    .or_else(|e| match e {
        // A stale cached copy of a Mesh whose cleanup already finished: nothing left to do.
        kube::runtime::finalizer::Error::RemoveFinalizer(kube::Error::Api(s)) if s.code == 404 => {
            Ok(Action::await_change())
        }
        other => Err(other),
    })
    .map_err(|e| match e {
        kube::runtime::finalizer::Error::ApplyFailed(e)
        | kube::runtime::finalizer::Error::CleanupFailed(e) => e,
        other => Error::Finalizer {
            name: DEFAULT_MESH_NAME.into(),
            message: other.to_string(),
        },
    })
}

/// Server-side applies `obj` (the operator owns every field it sets).
pub(crate) async fn apply_object<K>(api: &Api<K>, obj: &K) -> Result<K, Error>
where
    K: Resource + Clone + Serialize + serde::de::DeserializeOwned + std::fmt::Debug,
    K::DynamicType: Default,
{
    let name = obj.meta().name.clone().unwrap_or_default();
    api.patch(
        &name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(obj),
    )
    .await
    .map_err(|source| Error::Apply {
        kind: K::kind(&Default::default()).to_string(),
        name,
        source,
    })
}

/// Applies everything the Mesh owns; returns the two DaemonSets' states.
async fn apply_components(
    mesh: &Mesh,
    ctx: &Context,
) -> Result<(ComponentStatus, ComponentStatus), Error> {
    let name = mesh.name_any();
    let owner = mesh
        .controller_owner_ref(&())
        .ok_or_else(|| Error::Incomplete(format!("Mesh {name}")))?;
    let cp = &ctx.control_plane;
    let ns = cp.namespace.as_str();
    let sas: Api<ServiceAccount> = Api::namespaced(ctx.client.clone(), ns);
    apply_object(
        &sas,
        &dataplane::service_account(ZTUNNEL, cp, &owner, ZTUNNEL),
    )
    .await?;
    apply_object(
        &sas,
        &dataplane::service_account(NODE_AGENT, cp, &owner, NODE_AGENT),
    )
    .await?;
    let (role, binding) = dataplane::node_agent_rbac(cp, &owner);
    apply_object(&Api::<ClusterRole>::all(ctx.client.clone()), &role).await?;
    apply_object(
        &Api::<ClusterRoleBinding>::all(ctx.client.clone()),
        &binding,
    )
    .await?;
    let (role, binding) = dataplane::node_agent_namespaced_rbac(cp, &owner);
    apply_object(&Api::<Role>::namespaced(ctx.client.clone(), ns), &role).await?;
    apply_object(
        &Api::<RoleBinding>::namespaced(ctx.client.clone(), ns),
        &binding,
    )
    .await?;
    let root = ConfigMap {
        metadata: ObjectMeta {
            name: Some(ROOT_CERT_CONFIGMAP.into()),
            namespace: Some(ns.into()),
            labels: Some(labels("ca")),
            owner_references: Some(vec![owner.clone()]),
            ..Default::default()
        },
        data: Some(
            [("root-cert.pem".to_string(), ctx.root_cert_pem.clone())]
                .into_iter()
                .collect(),
        ),
        ..Default::default()
    };
    apply_object(&Api::<ConfigMap>::namespaced(ctx.client.clone(), ns), &root).await?;

    let daemonsets: Api<DaemonSet> = Api::namespaced(ctx.client.clone(), ns);
    let mut components = Vec::new();
    let (zt_version, agent_version) = dataplane::versions(&mesh.spec);
    for (ds_name, version) in [(ZTUNNEL, zt_version), (NODE_AGENT, agent_version)] {
        let current = daemonsets
            .get_opt(ds_name)
            .await
            .map_err(|source| Error::Read {
                what: format!("DaemonSet {ns}/{ds_name}"),
                source,
            })?;
        let nodes = current
            .as_ref()
            .and_then(|d| d.status.as_ref())
            .map(|s| s.desired_number_scheduled)
            .unwrap_or(0);
        let max_unavailable = cap_unavailable(mesh.spec.upgrade.max_unavailable, nodes);
        let desired = if ds_name == ZTUNNEL {
            dataplane::ztunnel_daemonset(&mesh.spec, cp, &owner, max_unavailable)
        } else {
            dataplane::node_agent_daemonset(&mesh.spec, cp, &owner, max_unavailable)
        };
        let applied = apply_object(&daemonsets, &desired).await?;
        components.push(component_status(&applied, version));
    }
    let agent = components.pop().unwrap_or_default();
    let ztunnel = components.pop().unwrap_or_default();
    Ok((ztunnel, agent))
}

/// Tells the user, on the Mesh, that applying failed (the reconcile is retried with backoff).
async fn report_degraded(mesh: &Mesh, api: &Api<Mesh>, error: &Error) {
    let previous = mesh.status.clone().unwrap_or_default();
    let generation = mesh.meta().generation;
    let message = format!("{error}; the operator retries (see its logs and RBAC)");
    let status = MeshStatus {
        conditions: conditions(
            &previous.conditions,
            vec![C::new("Degraded", S::True, "ApplyFailed", &message)],
            generation,
        ),
        ..previous.clone()
    };
    if status != previous {
        if let Err(e) = patch_status(api, mesh, &status).await {
            tracing::warn!(error = %e, "could not report Degraded on the Mesh");
        }
    }
}

async fn apply(mesh: &Mesh, ctx: &Context, api: &Api<Mesh>) -> Result<Action, Error> {
    let name = mesh.name_any();
    let generation = mesh.meta().generation;
    let previous = mesh.status.clone().unwrap_or_default();
    if let Some(message) = mesh.spec.problems() {
        let status = MeshStatus {
            observed_generation: generation,
            conditions: conditions(
                &previous.conditions,
                vec![
                    C::new("Accepted", S::False, "Invalid", &message),
                    C::new(
                        "Ready",
                        S::False,
                        "Invalid",
                        "the spec is invalid; nothing was changed",
                    ),
                ],
                generation,
            ),
            components: previous.components.clone(),
        };
        patch_status(api, mesh, &status).await?;
        return Ok(Action::await_change());
    }

    let (ztunnel, agent) = match apply_components(mesh, ctx).await {
        Ok(components) => components,
        Err(error) => {
            report_degraded(mesh, api, &error).await;
            return Err(error);
        }
    };
    let ready = rolled_out(&ztunnel) && rolled_out(&agent);
    let summary = format!(
        "ztunnel {}/{} nodes ready ({} updated), node agent {}/{} ({} updated)",
        ztunnel.ready_nodes,
        ztunnel.desired_nodes,
        ztunnel.updated_nodes,
        agent.ready_nodes,
        agent.desired_nodes,
        agent.updated_nodes
    );
    let updates = vec![
        C::new("Accepted", S::True, "Accepted", "the spec is valid"),
        if ready {
            C::new("Ready", S::True, "RolledOut", &summary)
        } else {
            C::new("Ready", S::False, "RollingOut", &summary)
        },
        if ready {
            C::new("Progressing", S::False, "Complete", "no rollout under way")
        } else {
            C::new("Progressing", S::True, "RollingOut", &summary)
        },
        C::new(
            "Degraded",
            S::False,
            "AsExpected",
            "every component could be applied",
        ),
    ];
    let was_ready =
        find_condition(&previous.conditions, "Ready").is_some_and(|c| c.status == "True");
    let status = MeshStatus {
        observed_generation: generation,
        conditions: conditions(&previous.conditions, updates, generation),
        components: crate::crd::mesh::ComponentsStatus {
            ztunnel,
            node_agent: agent,
        },
    };
    if status != previous {
        patch_status(api, mesh, &status).await?;
    }
    if ready && !was_ready {
        info!(mesh = %name, %summary, "data plane ready");
        publish(ctx, mesh, EventType::Normal, "DataPlaneReady", &summary).await;
    } else if !ready && previous.observed_generation != generation {
        publish(ctx, mesh, EventType::Normal, "RollingOut", &summary).await;
    }
    // Owned DaemonSets wake us on every change; the periodic requeue is a safety net.
    Ok(Action::requeue(if ready {
        Duration::from_secs(300)
    } else {
        Duration::from_secs(5)
    }))
}

/// Deletes what the operator made for Waypoints in every namespace (found by their labels);
/// returns how many objects were still there. The Waypoint controller deploys nothing for a
/// Mesh being deleted, so a pass that finds none means they are gone for good.
async fn remove_waypoint_proxies(ctx: &Context) -> Result<usize, Error> {
    let selector = ListParams::default().labels(&waypoint_selector());
    let mut found = 0;
    found += delete_labelled::<Deployment>(ctx, "Deployment", &selector).await?;
    found += delete_labelled::<Service>(ctx, "Service", &selector).await?;
    found += delete_labelled::<ServiceAccount>(ctx, "ServiceAccount", &selector).await?;
    found += delete_labelled::<ConfigMap>(ctx, "ConfigMap", &selector).await?;
    if found > 0 {
        info!(objects = found, "removing waypoint proxies");
    }
    Ok(found)
}

/// `app.kubernetes.io/name=waypoint,app.kubernetes.io/managed-by=ambit-operator`.
fn waypoint_selector() -> String {
    labels("waypoint")
        .into_iter()
        .filter(|(k, _)| k != "app.kubernetes.io/part-of")
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

async fn delete_labelled<K>(
    ctx: &Context,
    kind: &'static str,
    selector: &ListParams,
) -> Result<usize, Error>
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
    K::DynamicType: Default,
{
    let list = Api::<K>::all(ctx.client.clone())
        .list(selector)
        .await
        .map_err(|source| Error::Read {
            what: format!("{kind}s labelled {:?}", selector.label_selector),
            source,
        })?;
    for object in &list.items {
        let (name, ns) = (object.name_any(), object.namespace().unwrap_or_default());
        if object.meta().deletion_timestamp.is_some() {
            continue;
        }
        match Api::<K>::namespaced(ctx.client.clone(), &ns)
            .delete(&name, &DeleteParams::default())
            .await
        {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(source) => {
                return Err(Error::Delete {
                    kind,
                    name: format!("{ns}/{name}"),
                    source,
                })
            }
        }
    }
    Ok(list.items.len())
}

/// Never lets a rollout take every node at once: at most `nodes - 1` (and at least 1).
pub fn cap_unavailable(requested: i32, nodes: i32) -> i32 {
    requested.min((nodes - 1).max(1)).max(1)
}

fn component_status(ds: &DaemonSet, version: String) -> ComponentStatus {
    let observed = ds
        .status
        .as_ref()
        .and_then(|s| s.observed_generation)
        .zip(ds.metadata.generation)
        .is_some_and(|(seen, current)| seen >= current);
    let s = ds.status.clone().unwrap_or_default();
    ComponentStatus {
        desired_nodes: s.desired_number_scheduled,
        ready_nodes: s.number_ready,
        // Until the DaemonSet controller has seen the new template, no node runs it.
        updated_nodes: if observed {
            s.updated_number_scheduled.unwrap_or(0)
        } else {
            0
        },
        version: Some(version),
    }
}

fn rolled_out(c: &ComponentStatus) -> bool {
    c.desired_nodes > 0 && c.ready_nodes == c.desired_nodes && c.updated_nodes == c.desired_nodes
}

async fn publish(ctx: &Context, mesh: &Mesh, type_: EventType, reason: &str, note: &str) {
    let event = KubeEvent {
        type_,
        reason: reason.into(),
        note: Some(note.chars().take(1000).collect()),
        action: "Reconcile".into(),
        secondary: None,
    };
    if let Err(error) = ctx.recorder.publish(&event, &mesh.object_ref(&())).await {
        tracing::debug!(%error, "could not publish event");
    }
}

async fn cleanup(mesh: &Mesh, ctx: &Context) -> Result<Action, Error> {
    let ns = ctx.control_plane.namespace.as_str();
    let daemonsets: Api<DaemonSet> = Api::namespaced(ctx.client.clone(), ns);
    let foreground = DeleteParams {
        propagation_policy: Some(PropagationPolicy::Foreground),
        ..Default::default()
    };
    let mut remaining = Vec::new();
    let waypoint_objects = remove_waypoint_proxies(ctx).await?;
    if waypoint_objects > 0 {
        remaining.push("waypoint proxies");
    }
    for name in [NODE_AGENT, ZTUNNEL] {
        match daemonsets.get_opt(name).await {
            Ok(Some(ds)) => {
                if ds.metadata.deletion_timestamp.is_none() {
                    daemonsets
                        .delete(name, &foreground)
                        .await
                        .map_err(|source| Error::Delete {
                            kind: "DaemonSet",
                            name: format!("{ns}/{name}"),
                            source,
                        })?;
                    info!(daemonset = name, "removing the data plane");
                }
                remaining.push(name);
            }
            Ok(None) => {}
            Err(source) => {
                return Err(Error::Read {
                    what: format!("DaemonSet {ns}/{name}"),
                    source,
                })
            }
        }
    }
    if remaining.is_empty() {
        publish(
            ctx,
            mesh,
            EventType::Normal,
            "DataPlaneRemoved",
            "ztunnel and node agents removed",
        )
        .await;
        return Ok(Action::await_change());
    }
    let waited = mesh
        .meta()
        .deletion_timestamp
        .as_ref()
        .map(|t| Timestamp::now().duration_since(t.0).as_secs_f64())
        .unwrap_or(0.0);
    if waited > CLEANUP_TIMEOUT.as_secs_f64() {
        let note = format!(
            "gave up waiting {}s for {remaining:?} to terminate; check the nodes' CNI config for a leftover ambit-cni entry (docs/operations.md)",
            CLEANUP_TIMEOUT.as_secs()
        );
        publish(ctx, mesh, EventType::Warning, "CleanupTimedOut", &note).await;
        return Ok(Action::await_change());
    }
    Err(Error::Waiting(format!(
        "waiting for {remaining:?} to terminate (node agents remove the CNI plugin first)"
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rollouts_never_take_every_node() {
        assert_eq!(cap_unavailable(1, 3), 1);
        assert_eq!(cap_unavailable(5, 3), 2);
        assert_eq!(cap_unavailable(5, 1), 1);
        assert_eq!(cap_unavailable(2, 0), 1);
    }
}
