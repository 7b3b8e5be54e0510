//! The waypoint's view of the mesh config: which destinations it serves, their endpoints,
//! compiled routes and policies. Built once per config version and shared as `Arc<State>`;
//! a request keeps the `Arc` it started with, so a reload never changes a request mid-way.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use ambit_core::meshconfig::backend::BackendPolicySpec;
use ambit_core::meshconfig::route::RouteError;
use ambit_core::meshconfig::{MeshConfig, PolicySpec, ServiceSpec, WaypointRef, WorkloadSpec};
use ambit_core::Identity;

use crate::authz::{self, PolicyError};
use crate::routes::CompiledRoute;

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error(transparent)]
    Route(#[from] RouteError),
    #[error(transparent)]
    Policy(#[from] PolicyError),
    #[error(transparent)]
    BackendPolicy(#[from] ambit_core::meshconfig::backend::BackendPolicyError),
    #[error("route {route}: service {service} is not in `services`; add the Service or fix the route's service")]
    RouteTarget { route: String, service: String },
    #[error(
        "workload {workload}: service account {sa:?} does not make a valid SPIFFE identity: {why}"
    )]
    Identity {
        workload: String,
        sa: String,
        why: String,
    },
}

pub type ServiceKey = (String, String);

#[derive(Debug)]
pub struct Workload {
    pub spec: std::sync::Arc<WorkloadSpec>,
    pub identity: Identity,
}

/// What a tunnel's `:authority` resolves to.
#[derive(Clone, Debug)]
pub enum Target {
    /// A Service VIP and the service port.
    Service { key: ServiceKey, port: u16 },
    /// A pod IP and port, for a workload that names this waypoint.
    Workload { ip: IpAddr, port: u16 },
}

#[derive(Debug)]
pub struct State {
    pub trust_domain: String,
    pub services: HashMap<ServiceKey, ServiceSpec>,
    vips: HashMap<SocketAddr, ServiceKey>,
    pub workloads: HashMap<IpAddr, Workload>,
    served_workloads: HashMap<IpAddr, ()>,
    pub routes: HashMap<ServiceKey, Arc<CompiledRoute>>,
    pub policies: Vec<PolicySpec>,
    pub backend_policies: HashMap<ServiceKey, BackendPolicySpec>,
    /// Counts accepted configs, for logs.
    pub generation: u64,
}

fn serves(w: &Option<WaypointRef>, me: &WaypointRef) -> bool {
    w.as_ref() == Some(me)
}

impl State {
    pub fn build(cfg: &MeshConfig, me: &WaypointRef, generation: u64) -> Result<Self, StateError> {
        let mut workloads = HashMap::new();
        let mut served_workloads = HashMap::new();
        for w in &cfg.workloads {
            let identity = Identity::new(&cfg.trust_domain, &w.namespace, &w.service_account)
                .map_err(|e| StateError::Identity {
                    workload: format!("{}/{}", w.namespace, w.name),
                    sa: w.service_account.clone(),
                    why: e.to_string(),
                })?;
            if serves(&w.waypoint, me) {
                served_workloads.insert(w.ip, ());
            }
            workloads.insert(
                w.ip,
                Workload {
                    spec: w.clone(),
                    identity,
                },
            );
        }
        let mut services = HashMap::new();
        let mut vips = HashMap::new();
        for s in &cfg.services {
            let key = (s.namespace.clone(), s.name.clone());
            if serves(&s.waypoint, me) {
                for vip in &s.vips {
                    for p in &s.ports {
                        vips.insert(SocketAddr::new(*vip, p.port), key.clone());
                    }
                }
            }
            services.insert(key, s.clone());
        }
        let mut routes = HashMap::new();
        for r in &cfg.routes {
            let key = (r.service.namespace.clone(), r.service.name.clone());
            if !services.contains_key(&key) {
                return Err(StateError::RouteTarget {
                    route: r.key(),
                    service: format!("{}/{}", key.0, key.1),
                });
            }
            routes.insert(key, Arc::new(CompiledRoute::compile(r)?));
        }
        for p in &cfg.policies {
            authz::validate(p)?;
        }
        for b in &cfg.backend_policies {
            b.validate()?;
        }
        let backend_policies = cfg
            .backend_policies
            .iter()
            .map(|b| {
                (
                    (b.service.namespace.clone(), b.service.name.clone()),
                    b.clone(),
                )
            })
            .collect();
        Ok(Self {
            trust_domain: cfg.trust_domain.clone(),
            services,
            vips,
            workloads,
            served_workloads,
            routes,
            policies: cfg.policies.clone(),
            backend_policies,
            generation,
        })
    }

    /// What this waypoint does with a tunnel to `authority`; `None`: not ours.
    pub fn target(&self, authority: SocketAddr) -> Option<Target> {
        if let Some(key) = self.vips.get(&authority) {
            return Some(Target::Service {
                key: key.clone(),
                port: authority.port(),
            });
        }
        self.served_workloads
            .contains_key(&authority.ip())
            .then_some(Target::Workload {
                ip: authority.ip(),
                port: authority.port(),
            })
    }

    /// Services whose traffic this waypoint handles, sorted by namespace/name.
    pub fn served_services(&self) -> Vec<&ServiceSpec> {
        let mut keys: Vec<&ServiceKey> = self.vips.values().collect();
        keys.sort();
        keys.dedup();
        keys.into_iter()
            .filter_map(|k| self.services.get(k))
            .collect()
    }

    /// Workloads whose traffic (addressed to the pod IP) this waypoint handles.
    pub fn served_workloads(&self) -> Vec<&Workload> {
        let mut out: Vec<&Workload> = self
            .served_workloads
            .keys()
            .filter_map(|ip| self.workloads.get(ip))
            .collect();
        out.sort_by_key(|w| w.spec.ip);
        out
    }

    /// Healthy endpoints of a Service narrowed by `subset`, at the target port of `port`.
    pub fn service_endpoints(
        &self,
        key: &ServiceKey,
        port: u16,
        subset: &BTreeMap<String, String>,
    ) -> Vec<(SocketAddr, &Workload)> {
        let Some(svc) = self.services.get(key) else {
            return vec![];
        };
        let target_port = svc
            .ports
            .iter()
            .find(|p| p.port == port)
            .map(|p| p.target_port.unwrap_or(p.port))
            .unwrap_or(port);
        let mut out: Vec<_> = self
            .workloads
            .values()
            .filter(|w| {
                w.spec.namespace == svc.namespace
                    && w.spec.healthy
                    && svc
                        .selector
                        .iter()
                        .chain(subset.iter())
                        .all(|(k, v)| w.spec.labels.get(k) == Some(v))
            })
            .map(|w| (SocketAddr::new(w.spec.ip, target_port), w))
            .collect();
        out.sort_by_key(|(a, _)| *a);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CFG: &str = r#"
workloads:
- {name: api-v1, namespace: shop, ip: 10.0.0.1, node: n, labels: {app: api, version: v1}}
- {name: api-v2, namespace: shop, ip: 10.0.0.2, node: n, labels: {app: api, version: v2}}
- {name: api-v2b, namespace: shop, ip: 10.0.0.3, node: n, labels: {app: api, version: v2}, healthy: false}
- {name: db, namespace: shop, ip: 10.0.0.9, node: n, waypoint: {name: wp, namespace: shop}}
services:
- {name: api, namespace: shop, vips: [10.96.0.1], ports: [{port: 80, targetPort: 8080}], selector: {app: api}, waypoint: {name: wp, namespace: shop}}
- {name: other, namespace: shop, vips: [10.96.0.2], ports: [{port: 80}], selector: {app: other}}
routes:
- {name: api, namespace: shop, service: {name: api, namespace: shop}, rules: [{backends: [{service: api, subset: {version: v2}}]}]}
"#;

    fn me() -> WaypointRef {
        WaypointRef {
            name: "wp".into(),
            namespace: "shop".into(),
        }
    }

    #[test]
    fn serves_only_its_destinations_and_resolves_endpoints() {
        let cfg: MeshConfig = serde_yaml::from_str(CFG).unwrap();
        let s = State::build(&cfg, &me(), 1).unwrap();
        assert!(matches!(
            s.target("10.96.0.1:80".parse().unwrap()),
            Some(Target::Service { .. })
        ));
        assert!(s.target("10.96.0.2:80".parse().unwrap()).is_none());
        assert!(s.target("10.96.0.1:81".parse().unwrap()).is_none());
        assert!(matches!(
            s.target("10.0.0.9:5432".parse().unwrap()),
            Some(Target::Workload { .. })
        ));
        assert!(s.target("10.0.0.1:8080".parse().unwrap()).is_none());
        let key = ("shop".to_string(), "api".to_string());
        let all: Vec<_> = s
            .service_endpoints(&key, 80, &BTreeMap::new())
            .into_iter()
            .map(|e| e.0.to_string())
            .collect();
        assert_eq!(all, ["10.0.0.1:8080", "10.0.0.2:8080"]);
        let v2: BTreeMap<_, _> = [("version".to_string(), "v2".to_string())].into();
        assert_eq!(s.service_endpoints(&key, 80, &v2).len(), 1);
        assert!(s.routes.contains_key(&key));
    }

    #[test]
    fn route_to_unknown_service_is_rejected() {
        let cfg: MeshConfig =
            serde_yaml::from_str(&CFG.replace("service: {name: api,", "service: {name: nope,"))
                .unwrap();
        let e = State::build(&cfg, &me(), 1).err().unwrap().to_string();
        assert!(e.contains("shop/api") && e.contains("shop/nope"), "{e}");
    }
}
