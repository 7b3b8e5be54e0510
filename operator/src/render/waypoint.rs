//! A `Waypoint` becomes a ServiceAccount (its identity), a Deployment of proxies, a Service in
//! front of them (port 15008, HBONE) and a copy of the mesh root certificate, all named after
//! the Waypoint and owned by it, so deleting the Waypoint garbage-collects them.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec};
use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMap, ConfigMapVolumeSource, Container, ContainerPort, EnvVar,
    HTTPGetAction, PodSecurityContext, PodSpec, PodTemplateSpec, Probe, ProjectedVolumeSource,
    SeccompProfile, SecurityContext, Service, ServiceAccount, ServiceAccountTokenProjection,
    ServicePort, ServiceSpec, Volume, VolumeMount, VolumeProjection,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::dataplane::{ControlPlane, TOKEN_AUDIENCE};
use super::{labels, log_level, pull_policy};
use crate::crd::mesh::MeshSpec;
use crate::crd::waypoint::WaypointSpec;

/// Label on waypoint pods naming their Waypoint.
pub const WAYPOINT_LABEL: &str = "ambit.dev/waypoint";

pub struct WaypointObjects {
    pub service_account: ServiceAccount,
    pub root_cert: ConfigMap,
    pub deployment: Deployment,
    pub service: Service,
}

pub fn root_cert_name(waypoint: &str) -> String {
    format!("{waypoint}-root-cert")
}

pub fn render(
    name: &str,
    namespace: &str,
    spec: &WaypointSpec,
    mesh: &MeshSpec,
    root_cert_pem: &str,
    control_plane: &ControlPlane,
    owner: &OwnerReference,
) -> WaypointObjects {
    let operator_identity = format!(
        "spiffe://{}/ns/{}/sa/ambit-operator",
        mesh.trust_domain, control_plane.namespace
    );
    let meta = ObjectMeta {
        name: Some(name.to_string()),
        namespace: Some(namespace.to_string()),
        labels: Some(labels("waypoint")),
        owner_references: Some(vec![owner.clone()]),
        ..Default::default()
    };
    let selector: BTreeMap<String, String> = [(WAYPOINT_LABEL.to_string(), name.to_string())]
        .into_iter()
        .collect();
    let mut pod_labels = labels("waypoint");
    pod_labels.extend(selector.clone());
    // The waypoint re-originates HBONE itself; capturing it would loop its traffic.
    pod_labels.insert("ambit.dev/dataplane-mode".into(), "none".into());

    let mut args = vec![
        format!("--name={name}"),
        format!("--namespace={namespace}"),
        format!("--control-plane={}", control_plane.address),
        format!("--trust-domain={}", mesh.trust_domain),
        format!("--operator-identity={operator_identity}"),
        "--root-cert=/var/run/secrets/ambit/ca/root-cert.pem".to_string(),
        "--token-file=/var/run/secrets/ambit/tokens/token".to_string(),
    ];
    if spec.access_log {
        args.push("--access-log".into());
    }
    let container = Container {
        name: "waypoint".into(),
        image: Some(mesh.waypoint.image.clone()),
        image_pull_policy: Some(pull_policy(mesh.waypoint.image_pull_policy)),
        args: Some(args),
        env: Some(vec![EnvVar {
            name: "RUST_LOG".into(),
            value: Some(log_level(mesh.waypoint.log_level, mesh.log_level).into()),
            ..Default::default()
        }]),
        ports: Some(vec![
            container_port("hbone", 15008),
            container_port("metrics", 15020),
            container_port("readiness", 15021),
        ]),
        readiness_probe: Some(Probe {
            http_get: Some(HTTPGetAction {
                path: Some("/healthz/ready".into()),
                port: IntOrString::Int(15021),
                ..Default::default()
            }),
            period_seconds: Some(2),
            ..Default::default()
        }),
        resources: spec
            .resources
            .clone()
            .or_else(|| mesh.waypoint.resources.clone()),
        security_context: Some(SecurityContext {
            run_as_non_root: Some(true),
            run_as_user: Some(65532),
            allow_privilege_escalation: Some(false),
            read_only_root_filesystem: Some(true),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".into()]),
                ..Default::default()
            }),
            ..Default::default()
        }),
        volume_mounts: Some(vec![
            VolumeMount {
                name: "root-cert".into(),
                mount_path: "/var/run/secrets/ambit/ca".into(),
                read_only: Some(true),
                ..Default::default()
            },
            VolumeMount {
                name: "token".into(),
                mount_path: "/var/run/secrets/ambit/tokens".into(),
                read_only: Some(true),
                ..Default::default()
            },
        ]),
        ..Default::default()
    };
    let deployment = Deployment {
        metadata: meta.clone(),
        spec: Some(DeploymentSpec {
            replicas: Some(spec.replicas),
            selector: LabelSelector {
                match_labels: Some(selector.clone()),
                ..Default::default()
            },
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(pod_labels),
                    ..Default::default()
                }),
                spec: Some(PodSpec {
                    service_account_name: Some(name.to_string()),
                    security_context: Some(PodSecurityContext {
                        seccomp_profile: Some(SeccompProfile {
                            type_: "RuntimeDefault".into(),
                            ..Default::default()
                        }),
                        ..Default::default()
                    }),
                    containers: vec![container],
                    volumes: Some(vec![
                        Volume {
                            name: "root-cert".into(),
                            config_map: Some(ConfigMapVolumeSource {
                                name: root_cert_name(name),
                                ..Default::default()
                            }),
                            ..Default::default()
                        },
                        Volume {
                            name: "token".into(),
                            projected: Some(ProjectedVolumeSource {
                                sources: Some(vec![VolumeProjection {
                                    service_account_token: Some(ServiceAccountTokenProjection {
                                        audience: Some(TOKEN_AUDIENCE.into()),
                                        expiration_seconds: Some(3600),
                                        path: "token".into(),
                                    }),
                                    ..Default::default()
                                }]),
                                ..Default::default()
                            }),
                            ..Default::default()
                        },
                    ]),
                    ..Default::default()
                }),
            },
            ..Default::default()
        }),
        ..Default::default()
    };
    let service = Service {
        metadata: meta.clone(),
        spec: Some(ServiceSpec {
            selector: Some(selector),
            ports: Some(vec![ServicePort {
                name: Some("tcp-hbone".into()),
                port: 15008,
                target_port: Some(IntOrString::Int(15008)),
                protocol: Some("TCP".into()),
                ..Default::default()
            }]),
            ..Default::default()
        }),
        ..Default::default()
    };
    let root_cert = ConfigMap {
        metadata: ObjectMeta {
            name: Some(root_cert_name(name)),
            ..meta.clone()
        },
        data: Some(
            [("root-cert.pem".to_string(), root_cert_pem.to_string())]
                .into_iter()
                .collect(),
        ),
        ..Default::default()
    };
    WaypointObjects {
        service_account: ServiceAccount {
            metadata: meta,
            ..Default::default()
        },
        root_cert,
        deployment,
        service,
    }
}

fn container_port(name: &str, port: i32) -> ContainerPort {
    ContainerPort {
        name: Some(name.into()),
        container_port: port,
        protocol: Some("TCP".into()),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waypoint_objects_are_named_after_it_and_owned_by_it() {
        let spec: WaypointSpec = serde_yaml::from_str("replicas: 2\naccessLog: true\n").unwrap();
        let mesh: MeshSpec = serde_yaml::from_str("waypoint: {image: reg/wp:9}\n").unwrap();
        let owner = OwnerReference {
            api_version: "ambit.dev/v1alpha1".into(),
            kind: "Waypoint".into(),
            name: "wp".into(),
            uid: "w1".into(),
            controller: Some(true),
            block_owner_deletion: Some(true),
        };
        let cp = ControlPlane {
            namespace: "mesh-ops".into(),
            address: "op:15012".into(),
        };
        let o = render("wp", "shop", &spec, &mesh, "PEM", &cp, &owner);
        assert_eq!(o.deployment.metadata.name.as_deref(), Some("wp"));
        let dspec = o.deployment.spec.unwrap();
        assert_eq!(dspec.replicas, Some(2));
        let pod = dspec.template.spec.unwrap();
        assert_eq!(pod.service_account_name.as_deref(), Some("wp"));
        let c = &pod.containers[0];
        assert_eq!(c.image.as_deref(), Some("reg/wp:9"));
        assert!(c
            .args
            .as_ref()
            .unwrap()
            .contains(&"--access-log".to_string()));
        let svc = o.service.spec.unwrap();
        assert_eq!(svc.ports.unwrap()[0].port, 15008);
        assert_eq!(svc.selector.unwrap()[WAYPOINT_LABEL], "wp");
        assert_eq!(o.root_cert.data.unwrap()["root-cert.pem"], "PEM");
        for meta in [&o.service_account.metadata, &o.root_cert.metadata] {
            assert_eq!(meta.owner_references.as_ref().unwrap()[0].uid, "w1");
            assert_eq!(meta.namespace.as_deref(), Some("shop"));
        }
    }
}
