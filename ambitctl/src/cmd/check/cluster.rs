//! Checks of the cluster, when an API server is configured: CRDs, the Mesh, the operator.

use kube::api::{Api, DynamicObject, ListParams};
use kube::core::{ApiResource, GroupVersionKind};
use serde_json::Value;

use super::Check;
use crate::cluster::{ServerSource, KNOWN};
use crate::ctx::Ctx;

const CRD_NAMES: [&str; 6] = [
    "meshes.ambit.dev",
    "waypoints.ambit.dev",
    "trafficroutes.ambit.dev",
    "backendpolicies.ambit.dev",
    "authorizationpolicies.ambit.dev",
    "peerauthentications.ambit.dev",
];

fn ar(group: &str, version: &str, kind: &str, plural: &str) -> ApiResource {
    ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(group, version, kind), plural)
}

pub async fn all(ctx: &Ctx) -> Vec<Check> {
    let source = ctx.server_source();
    let client = match (&source, ctx.client().await) {
        (_, Ok(c)) => c,
        (ServerSource::Kubeconfig, Err(_)) => {
            return vec![Check::warn(
                "api server",
                "no API server configured: cluster checks skipped",
                "pass --server URL, set AMBIT_SERVER, start the sandbox, or configure kubectl",
            )]
        }
        (ServerSource::Url(_), Err(e)) => {
            return vec![Check::fail("api server", e.to_string(), "check the URL")]
        }
    };
    let crds: Api<DynamicObject> = Api::all_with(
        client.clone(),
        &ar(
            "apiextensions.k8s.io",
            "v1",
            "CustomResourceDefinition",
            "customresourcedefinitions",
        ),
    );
    let mut out = vec![];
    let mut crd_ok = true;
    for name in CRD_NAMES {
        let check = format!("crd {name}");
        match crds.get_opt(name).await {
            Ok(Some(crd)) => {
                let v = serde_json::to_value(&crd).expect("objects serialize");
                let versions: Vec<String> = v
                    .pointer("/spec/versions")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .filter(|x| x["served"] == true)
                    .filter_map(|x| x["name"].as_str().map(str::to_string))
                    .collect();
                if versions.iter().any(|v| v == "v1alpha1") {
                    out.push(Check::pass(
                        &check,
                        format!("installed, serves {}", versions.join(", ")),
                    ));
                } else {
                    crd_ok = false;
                    out.push(Check::fail(
                        &check,
                        format!("serves {versions:?}, not v1alpha1"),
                        "upgrade the CRDs: ambitctl apply -f crds/",
                    ));
                }
            }
            Ok(None) => {
                crd_ok = false;
                out.push(Check::fail(
                    &check,
                    "not installed",
                    "install the CRDs: ambitctl apply -f crds/ (or helm install)",
                ));
            }
            Err(kube::Error::Api(s)) => {
                out.push(Check::fail(
                    &check,
                    s.message,
                    "check your RBAC: reading CRDs needs get on customresourcedefinitions",
                ));
            }
            Err(e) => {
                return vec![Check::fail(
                    "api server",
                    format!("cannot reach the API server: {e}"),
                    "check --server / AMBIT_SERVER, the sandbox state file or your kubeconfig",
                )];
            }
        }
    }
    out.insert(0, Check::pass("api server", "reachable"));
    if crd_ok {
        out.push(mesh(&client).await);
    }
    out.push(operator(&client).await);
    out
}

async fn mesh(client: &kube::Client) -> Check {
    let k = KNOWN
        .iter()
        .find(|k| k.kind == "Mesh")
        .expect("Mesh is known");
    let api: Api<DynamicObject> = Api::all_with(client.clone(), &k.api_resource());
    let list = match api.list(&ListParams::default()).await {
        Ok(l) => l.items,
        Err(e) => {
            return Check::fail(
                "mesh",
                format!("listing meshes: {e}"),
                "check the CRDs and your RBAC",
            )
        }
    };
    let Some(m) = list.first() else {
        return Check::fail(
            "mesh",
            "no Mesh object",
            "create one: ambitctl apply -f examples/mesh.yaml (helm install creates it)",
        );
    };
    let name = m.metadata.name.clone().unwrap_or_default();
    let v = serde_json::to_value(m).expect("objects serialize");
    let ready = v
        .pointer("/status/conditions")
        .and_then(Value::as_array)
        .and_then(|cs| cs.iter().find(|c| c["type"] == "Ready").cloned());
    match ready {
        Some(c) if c["status"] == "True" => Check::pass("mesh", format!("{name} is Ready")),
        Some(c) => Check::warn(
            "mesh",
            format!(
                "{name} is not Ready: {} {}",
                c["reason"].as_str().unwrap_or(""),
                c["message"].as_str().unwrap_or("")
            ),
            "see `ambitctl get mesh -o yaml` and the operator's logs",
        ),
        None => Check::warn(
            "mesh",
            format!("{name} has no Ready condition yet"),
            "is the operator running? see `ambitctl status`",
        ),
    }
}

async fn operator(client: &kube::Client) -> Check {
    let api: Api<DynamicObject> = Api::all_with(
        client.clone(),
        &ar("apps", "v1", "Deployment", "deployments"),
    );
    let list = match api
        .list(&ListParams::default().labels("app.kubernetes.io/name=ambit-operator"))
        .await
    {
        Ok(l) => l.items,
        Err(e) => {
            return Check::warn(
                "operator",
                format!("cannot list deployments: {e}"),
                "check your RBAC (list deployments)",
            )
        }
    };
    let Some(d) = list.first() else {
        return Check::warn(
            "operator",
            "no ambit-operator Deployment found",
            "install the mesh: helm install ambit helm/ambit",
        );
    };
    let v = serde_json::to_value(d).expect("objects serialize");
    let version = v
        .pointer("/metadata/labels/app.kubernetes.io~1version")
        .and_then(Value::as_str)
        .map(str::to_string)
        .or_else(|| {
            v.pointer("/spec/template/spec/containers/0/image")
                .and_then(Value::as_str)
                .and_then(|i| i.rsplit_once(':').map(|(_, t)| t.to_string()))
        })
        .unwrap_or_else(|| "unknown".into());
    let ready = v
        .pointer("/status/readyReplicas")
        .and_then(Value::as_i64)
        .unwrap_or(0);
    let ns = d.metadata.namespace.clone().unwrap_or_default();
    if ready > 0 {
        Check::pass(
            "operator",
            format!("version {version} in {ns}, {ready} ready"),
        )
    } else {
        Check::warn(
            "operator",
            format!("version {version} in {ns}, no ready replica"),
            "see the operator's pods and logs",
        )
    }
}
