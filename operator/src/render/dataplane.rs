//! The node-level data plane a `Mesh` turns into: the ztunnel and node-agent DaemonSets, their
//! ServiceAccounts and the node agent's read-only cluster access. Pure functions, so tests can
//! check exactly what would be applied.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{
    DaemonSet, DaemonSetSpec, DaemonSetUpdateStrategy, RollingUpdateDaemonSet,
};
use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMapVolumeSource, Container, ContainerPort, EnvVar, EnvVarSource,
    HTTPGetAction, HostPathVolumeSource, ObjectFieldSelector, PodSpec, PodTemplateSpec, Probe,
    ProjectedVolumeSource, SecurityContext, ServiceAccount, ServiceAccountTokenProjection,
    Toleration, Volume, VolumeMount, VolumeProjection,
};
use k8s_openapi::api::rbac::v1::{
    ClusterRole, ClusterRoleBinding, PolicyRule, Role, RoleBinding, RoleRef, Subject,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::{image_tag, labels, log_level, pull_policy};
use crate::crd::mesh::{FailurePolicy, MeshSpec};

pub const ZTUNNEL: &str = "ztunnel";
pub const NODE_AGENT: &str = "ambit-node-agent";
/// ConfigMap the operator publishes the mesh root certificate in.
pub const ROOT_CERT_CONFIGMAP: &str = "ambit-ca-root-cert";
/// Audience of the ServiceAccount tokens proxies present to the operator.
pub const TOKEN_AUDIENCE: &str = "ambit";
/// Host directory shared by ztunnel and the node agent (the in-pod socket lives there).
pub const HOST_RUN_DIR: &str = "/var/run/ambit";

/// Where the control plane runs, as the data plane needs to know it.
#[derive(Clone, Debug)]
pub struct ControlPlane {
    /// Namespace of the operator and the DaemonSets.
    pub namespace: String,
    /// `host:port` of the operator's CA + config endpoint.
    pub address: String,
}

fn object_meta(
    name: &str,
    cp: &ControlPlane,
    owner: &OwnerReference,
    component: &str,
) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.to_string()),
        namespace: Some(cp.namespace.clone()),
        labels: Some(labels(component)),
        owner_references: Some(vec![owner.clone()]),
        ..Default::default()
    }
}

pub fn service_account(
    name: &str,
    cp: &ControlPlane,
    owner: &OwnerReference,
    component: &str,
) -> ServiceAccount {
    ServiceAccount {
        metadata: object_meta(name, cp, owner, component),
        ..Default::default()
    }
}

/// The node agent watches pods (on its node) and namespaces, to enroll running pods.
pub fn node_agent_rbac(
    cp: &ControlPlane,
    owner: &OwnerReference,
) -> (ClusterRole, ClusterRoleBinding) {
    let meta = ObjectMeta {
        name: Some(NODE_AGENT.to_string()),
        labels: Some(labels(NODE_AGENT)),
        owner_references: Some(vec![owner.clone()]),
        ..Default::default()
    };
    let role = ClusterRole {
        metadata: meta.clone(),
        rules: Some(vec![PolicyRule {
            api_groups: Some(vec![String::new()]),
            resources: Some(vec!["pods".into(), "namespaces".into()]),
            verbs: vec!["get".into(), "list".into(), "watch".into()],
            ..Default::default()
        }]),
        ..Default::default()
    };
    let binding = ClusterRoleBinding {
        metadata: meta,
        role_ref: RoleRef {
            api_group: "rbac.authorization.k8s.io".into(),
            kind: "ClusterRole".into(),
            name: NODE_AGENT.into(),
        },
        subjects: Some(vec![Subject {
            kind: "ServiceAccount".into(),
            name: NODE_AGENT.into(),
            namespace: Some(cp.namespace.clone()),
            ..Default::default()
        }]),
    };
    (role, binding)
}

/// On SIGTERM the node agent reads its own DaemonSet: gone or terminating means the mesh is
/// being removed (clean the node), present means a restart (leave pods captured).
pub fn node_agent_namespaced_rbac(
    cp: &ControlPlane,
    owner: &OwnerReference,
) -> (Role, RoleBinding) {
    let meta = object_meta(NODE_AGENT, cp, owner, NODE_AGENT);
    let role = Role {
        metadata: meta.clone(),
        rules: Some(vec![PolicyRule {
            api_groups: Some(vec!["apps".into()]),
            resources: Some(vec!["daemonsets".into()]),
            resource_names: Some(vec![NODE_AGENT.into()]),
            verbs: vec!["get".into()],
            ..Default::default()
        }]),
    };
    let binding = RoleBinding {
        metadata: meta,
        role_ref: RoleRef {
            api_group: "rbac.authorization.k8s.io".into(),
            kind: "Role".into(),
            name: NODE_AGENT.into(),
        },
        subjects: Some(vec![Subject {
            kind: "ServiceAccount".into(),
            name: NODE_AGENT.into(),
            namespace: Some(cp.namespace.clone()),
            ..Default::default()
        }]),
    };
    (role, binding)
}

fn env_from_field(name: &str, path: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                field_path: path.into(),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn host_path(name: &str, path: &str, kind: &str) -> Volume {
    Volume {
        name: name.into(),
        host_path: Some(HostPathVolumeSource {
            path: path.into(),
            type_: Some(kind.into()),
        }),
        ..Default::default()
    }
}

fn mount(name: &str, path: &str, read_only: bool) -> VolumeMount {
    VolumeMount {
        name: name.into(),
        mount_path: path.into(),
        read_only: Some(read_only),
        ..Default::default()
    }
}

fn ready_probe(port: i32, path: &str) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.into()),
            port: IntOrString::Int(port),
            ..Default::default()
        }),
        period_seconds: Some(2),
        failure_threshold: Some(3),
        ..Default::default()
    }
}

/// ztunnel and the node agent enter pod network namespaces (SYS_ADMIN for setns), change
/// their nftables rules and routes (NET_ADMIN) and bind transparent sockets (NET_RAW).
fn node_security_context() -> SecurityContext {
    SecurityContext {
        run_as_user: Some(0),
        run_as_non_root: Some(false),
        privileged: Some(false),
        allow_privilege_escalation: Some(false),
        read_only_root_filesystem: Some(true),
        capabilities: Some(Capabilities {
            add: Some(vec![
                "NET_ADMIN".into(),
                "SYS_ADMIN".into(),
                "NET_RAW".into(),
            ]),
            drop: Some(vec!["ALL".into()]),
        }),
        ..Default::default()
    }
}

/// How a DaemonSet rolls over `nodes` nodes at a time.
enum Roll {
    /// The old pod goes, then the new one comes (the node agent: nothing is cut meanwhile).
    Replace,
    /// The new pod starts beside the old one, which goes once the new one is ready
    /// (ztunnel: the pods' listeners are never all closed).
    Surge,
}

fn daemonset(
    name: &str,
    cp: &ControlPlane,
    owner: &OwnerReference,
    (roll, nodes): (Roll, i32),
    pod: PodSpec,
) -> DaemonSet {
    let nodes = IntOrString::Int(nodes.max(1));
    let (max_unavailable, max_surge) = match roll {
        Roll::Replace => (nodes, IntOrString::Int(0)),
        Roll::Surge => (IntOrString::Int(0), nodes),
    };
    let selector: BTreeMap<String, String> = [("app".to_string(), name.to_string())]
        .into_iter()
        .collect();
    let mut pod_labels = labels(name);
    pod_labels.insert("app".into(), name.into());
    // The data plane itself is never captured.
    pod_labels.insert("ambit.dev/dataplane-mode".into(), "none".into());
    DaemonSet {
        metadata: object_meta(name, cp, owner, name),
        spec: Some(DaemonSetSpec {
            selector: LabelSelector {
                match_labels: Some(selector),
                ..Default::default()
            },
            update_strategy: Some(DaemonSetUpdateStrategy {
                type_: Some("RollingUpdate".into()),
                rolling_update: Some(RollingUpdateDaemonSet {
                    max_unavailable: Some(max_unavailable),
                    max_surge: Some(max_surge),
                }),
            }),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(pod_labels),
                    ..Default::default()
                }),
                spec: Some(pod),
            },
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn tolerations(user: &[Toleration]) -> Vec<Toleration> {
    if user.is_empty() {
        // A node-level proxy must run wherever meshed pods can.
        vec![Toleration {
            operator: Some("Exists".into()),
            ..Default::default()
        }]
    } else {
        user.to_vec()
    }
}

pub fn ztunnel_daemonset(
    mesh: &MeshSpec,
    cp: &ControlPlane,
    owner: &OwnerReference,
    max_unavailable: i32,
) -> DaemonSet {
    let args = vec![
        "--node=$(NODE_NAME)".to_string(),
        format!("--control-plane={}", cp.address),
        "--root-cert=/var/run/secrets/ambit/ca/root-cert.pem".into(),
        "--token-file=/var/run/secrets/ambit/tokens/token".into(),
        format!("--trust-domain={}", mesh.trust_domain),
        // The operator's SPIFFE ID follows its namespace (any install namespace works).
        format!(
            "--operator-identity=spiffe://{}/ns/{}/sa/ambit-operator",
            mesh.trust_domain, cp.namespace
        ),
        format!("--inpod-socket={HOST_RUN_DIR}/ztunnel.sock"),
        "--log-format=json".into(),
    ];
    let container = Container {
        name: ZTUNNEL.into(),
        image: Some(mesh.ztunnel.image.clone()),
        image_pull_policy: Some(pull_policy(mesh.ztunnel.image_pull_policy)),
        args: Some(args),
        env: Some(vec![
            env_from_field("NODE_NAME", "spec.nodeName"),
            EnvVar {
                name: "RUST_LOG".into(),
                value: Some(log_level(mesh.ztunnel.log_level, mesh.log_level).into()),
                ..Default::default()
            },
        ]),
        ports: Some(vec![port("metrics", 15020), port("readiness", 15021)]),
        readiness_probe: Some(ready_probe(15021, "/healthz/ready")),
        resources: mesh.ztunnel.resources.clone(),
        security_context: Some(node_security_context()),
        volume_mounts: Some(vec![
            mount("ambit-run", HOST_RUN_DIR, false),
            mount("root-cert", "/var/run/secrets/ambit/ca", true),
            mount("token", "/var/run/secrets/ambit/tokens", true),
        ]),
        ..Default::default()
    };
    let pod = PodSpec {
        service_account_name: Some(ZTUNNEL.into()),
        priority_class_name: Some("system-node-critical".into()),
        termination_grace_period_seconds: Some(30),
        tolerations: Some(tolerations(&mesh.ztunnel.tolerations)),
        containers: vec![container],
        volumes: Some(vec![
            host_path("ambit-run", HOST_RUN_DIR, "DirectoryOrCreate"),
            Volume {
                name: "root-cert".into(),
                config_map: Some(ConfigMapVolumeSource {
                    name: ROOT_CERT_CONFIGMAP.into(),
                    ..Default::default()
                }),
                ..Default::default()
            },
            token_volume(),
        ]),
        ..Default::default()
    };
    daemonset(ZTUNNEL, cp, owner, (Roll::Surge, max_unavailable), pod)
}

fn token_volume() -> Volume {
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
    }
}

fn port(name: &str, number: i32) -> ContainerPort {
    ContainerPort {
        name: Some(name.into()),
        container_port: number,
        protocol: Some("TCP".into()),
        ..Default::default()
    }
}

pub fn node_agent_daemonset(
    mesh: &MeshSpec,
    cp: &ControlPlane,
    owner: &OwnerReference,
    max_unavailable: i32,
) -> DaemonSet {
    let mut args = vec![
        format!("--cni-conf-dir={}", "/host/etc/cni/net.d"),
        format!("--cni-bin-dir={}", "/host/opt/cni/bin"),
        "run".to_string(),
        "--node=$(NODE_NAME)".into(),
        "--kube".into(),
        "--plugin-binary=/usr/local/bin/ambit-cni".into(),
        format!(
            "--failure-policy={}",
            match mesh.cni.failure_policy {
                FailurePolicy::Closed => "closed",
                FailurePolicy::Open => "open",
            }
        ),
        format!("--ztunnel-socket={HOST_RUN_DIR}/ztunnel.sock"),
        format!("--plugin-socket={HOST_RUN_DIR}/cni-agent.sock"),
        format!("--daemonset={}/{NODE_AGENT}", cp.namespace),
    ];
    args.extend(
        mesh.cni
            .exclude_namespaces
            .iter()
            .map(|ns| format!("--exclude-namespace={ns}")),
    );
    let container = Container {
        name: "node-agent".into(),
        image: Some(mesh.node_agent.image.clone()),
        image_pull_policy: Some(pull_policy(mesh.node_agent.image_pull_policy)),
        args: Some(args),
        env: Some(vec![
            env_from_field("NODE_NAME", "spec.nodeName"),
            env_from_field("POD_NAMESPACE", "metadata.namespace"),
            EnvVar {
                name: "RUST_LOG".into(),
                value: Some(log_level(mesh.node_agent.log_level, mesh.log_level).into()),
                ..Default::default()
            },
        ]),
        ports: Some(vec![port("health", 15022)]),
        readiness_probe: Some(ready_probe(15022, "/healthz/ready")),
        resources: mesh.node_agent.resources.clone(),
        security_context: Some(node_security_context()),
        volume_mounts: Some(vec![
            mount("ambit-run", HOST_RUN_DIR, false),
            mount("cni-conf", "/host/etc/cni/net.d", false),
            mount("cni-bin", "/host/opt/cni/bin", false),
            // Pod network namespaces, to enroll pods that are already running.
            VolumeMount {
                mount_propagation: Some("HostToContainer".into()),
                ..mount("netns", "/var/run/netns", true)
            },
        ]),
        ..Default::default()
    };
    let pod = PodSpec {
        service_account_name: Some(NODE_AGENT.into()),
        priority_class_name: Some("system-node-critical".into()),
        // The plugin runs in the host's network namespace and reaches the agent over a host
        // socket; the agent must see the node's /proc and netns to find pods' namespaces.
        host_network: Some(true),
        host_pid: Some(true),
        dns_policy: Some("ClusterFirstWithHostNet".into()),
        termination_grace_period_seconds: Some(10),
        tolerations: Some(tolerations(&mesh.node_agent.tolerations)),
        containers: vec![container],
        volumes: Some(vec![
            host_path("ambit-run", HOST_RUN_DIR, "DirectoryOrCreate"),
            host_path("cni-conf", &mesh.cni.conf_dir, "DirectoryOrCreate"),
            host_path("cni-bin", &mesh.cni.bin_dir, "DirectoryOrCreate"),
            host_path("netns", "/var/run/netns", "DirectoryOrCreate"),
        ]),
        ..Default::default()
    };
    daemonset(NODE_AGENT, cp, owner, (Roll::Replace, max_unavailable), pod)
}

/// The image tag each component rolls out (shown in the Mesh status).
pub fn versions(mesh: &MeshSpec) -> (String, String) {
    (
        image_tag(&mesh.ztunnel.image),
        image_tag(&mesh.node_agent.image),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn owner() -> OwnerReference {
        OwnerReference {
            api_version: "ambit.dev/v1alpha1".into(),
            kind: "Mesh".into(),
            name: "default".into(),
            uid: "u1".into(),
            controller: Some(true),
            block_owner_deletion: Some(true),
        }
    }

    fn cp() -> ControlPlane {
        ControlPlane {
            namespace: "ambit-system".into(),
            address: "ambit-operator.ambit-system.svc:15012".into(),
        }
    }

    fn spec(yaml: &str) -> MeshSpec {
        serde_yaml::from_str(yaml).unwrap()
    }

    #[test]
    fn ztunnel_daemonset_follows_the_mesh_spec() {
        let mesh =
            spec("trustDomain: example.org\nlogLevel: debug\nztunnel: {image: reg/zt:1.2.3}\n");
        let ds = ztunnel_daemonset(&mesh, &cp(), &owner(), 1);
        let pod = ds.spec.as_ref().unwrap().template.spec.as_ref().unwrap();
        let c = &pod.containers[0];
        assert_eq!(c.image.as_deref(), Some("reg/zt:1.2.3"));
        let args = c.args.as_ref().unwrap();
        assert!(
            args.contains(&"--trust-domain=example.org".to_string()),
            "{args:?}"
        );
        assert!(args.contains(&"--control-plane=ambit-operator.ambit-system.svc:15012".to_string()));
        assert!(args.contains(
            &"--operator-identity=spiffe://example.org/ns/ambit-system/sa/ambit-operator"
                .to_string()
        ));
        let env = c.env.as_ref().unwrap();
        assert!(env
            .iter()
            .any(|e| e.name == "RUST_LOG" && e.value.as_deref() == Some("debug")));
        let caps = c
            .security_context
            .as_ref()
            .unwrap()
            .capabilities
            .as_ref()
            .unwrap();
        assert_eq!(caps.add.as_ref().unwrap().len(), 3);
        // One node at a time, and the new ztunnel starts beside the old one: no node is
        // ever without a ready ztunnel.
        let ru = ds
            .spec
            .unwrap()
            .update_strategy
            .unwrap()
            .rolling_update
            .unwrap();
        assert_eq!(ru.max_unavailable, Some(IntOrString::Int(0)));
        assert_eq!(ru.max_surge, Some(IntOrString::Int(1)));
        assert_eq!(ds.metadata.owner_references.unwrap()[0].uid, "u1");
    }

    #[test]
    fn node_agent_gets_cni_settings_and_host_paths() {
        let mesh = spec("cni: {binDir: /home/kubernetes/bin, confDir: /etc/cni/net.d, failurePolicy: Open, excludeNamespaces: [kube-system, infra]}\nnodeAgent: {logLevel: warn}\n");
        let ds = node_agent_daemonset(&mesh, &cp(), &owner(), 2);
        let pod = ds.spec.as_ref().unwrap().template.spec.as_ref().unwrap();
        let args = pod.containers[0].args.as_ref().unwrap();
        assert!(args.contains(&"--failure-policy=open".to_string()));
        assert!(args.contains(&"--exclude-namespace=infra".to_string()));
        assert!(args.contains(&"--daemonset=ambit-system/ambit-node-agent".to_string()));
        let bin = pod
            .volumes
            .as_ref()
            .unwrap()
            .iter()
            .find(|v| v.name == "cni-bin")
            .unwrap();
        assert_eq!(bin.host_path.as_ref().unwrap().path, "/home/kubernetes/bin");
        let env = pod.containers[0].env.as_ref().unwrap();
        assert!(env
            .iter()
            .any(|e| e.name == "RUST_LOG" && e.value.as_deref() == Some("warn")));
        let spec = ds.spec.unwrap();
        let ru = spec.update_strategy.unwrap().rolling_update.unwrap();
        assert_eq!(ru.max_unavailable, Some(IntOrString::Int(2)));
        assert_eq!(ru.max_surge, Some(IntOrString::Int(0)));
        let labels = spec.template.metadata.unwrap().labels.unwrap();
        assert_eq!(labels["ambit.dev/dataplane-mode"], "none");
    }

    #[test]
    fn no_mount_lies_under_the_host_run_dir() {
        // A container mount inside a hostPath mount makes the runtime create its mount point
        // on the node, where it outlives the mesh.
        let mesh = spec("{}");
        for ds in [
            ztunnel_daemonset(&mesh, &cp(), &owner(), 1),
            node_agent_daemonset(&mesh, &cp(), &owner(), 1),
        ] {
            let c = &ds.spec.unwrap().template.spec.unwrap().containers[0];
            for m in c.volume_mounts.as_ref().unwrap() {
                let nested = m.mount_path.starts_with(&format!("{HOST_RUN_DIR}/"));
                assert!(!nested, "{} mounted under {HOST_RUN_DIR}", m.mount_path);
            }
        }
    }

    #[test]
    fn user_tolerations_replace_the_default_tolerate_everything() {
        let mesh = spec("ztunnel: {tolerations: [{key: dedicated, operator: Equal, value: gpu, effect: NoSchedule}]}\n");
        let ds = ztunnel_daemonset(&mesh, &cp(), &owner(), 1);
        let t = ds.spec.unwrap().template.spec.unwrap().tolerations.unwrap();
        assert_eq!(t.len(), 1);
        assert_eq!(t[0].key.as_deref(), Some("dedicated"));
        let default = ztunnel_daemonset(&spec("{}"), &cp(), &owner(), 1);
        let t = default
            .spec
            .unwrap()
            .template
            .spec
            .unwrap()
            .tolerations
            .unwrap();
        assert_eq!(t[0].operator.as_deref(), Some("Exists"));
    }

    #[test]
    fn node_agent_may_only_read_pods_and_namespaces() {
        let (role, binding) = node_agent_rbac(&cp(), &owner());
        let rules = role.rules.unwrap();
        assert_eq!(rules.len(), 1);
        assert_eq!(rules[0].verbs, vec!["get", "list", "watch"]);
        assert_eq!(
            binding.subjects.unwrap()[0].namespace.as_deref(),
            Some("ambit-system")
        );
    }
}
