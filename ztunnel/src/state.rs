//! The compiled, validated view of mesh config that the proxies read on every connection.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use ambit_core::Identity;
use serde::Serialize;

use crate::authz::{CompiledPolicy, PolicyError};
use crate::config::{MeshConfig, MtlsMode, WaypointRef, WorkloadSpec};

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Workload {
    pub uid: String,
    pub name: String,
    pub namespace: String,
    pub ip: IpAddr,
    pub node: String,
    pub identity: Identity,
    pub labels: BTreeMap<String, String>,
    pub captured: bool,
    pub mtls_mode: MtlsMode,
    pub healthy: bool,
    pub netns: Option<std::path::PathBuf>,
    /// Traffic addressed to this pod's IP goes through this waypoint.
    pub waypoint: Option<WaypointRef>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Endpoint {
    pub workload: Arc<Workload>,
    pub port: u16,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Service {
    pub name: String,
    pub namespace: String,
    pub port: u16,
    pub selector: BTreeMap<String, String>,
    /// Healthy endpoints only.
    pub endpoints: Vec<Endpoint>,
    /// Traffic addressed to this service goes through this waypoint.
    pub waypoint: Option<WaypointRef>,
    #[serde(skip)]
    next: AtomicUsize,
}

impl Service {
    pub fn hostname(&self) -> String {
        format!("{}.{}.svc", self.name, self.namespace)
    }

    /// Whether `w` is one of this service's workloads, healthy or not.
    pub fn selects(&self, w: &Workload) -> bool {
        w.namespace == self.namespace && selects(&self.selector, &w.labels)
    }

    /// Round robin over healthy endpoints.
    pub fn pick(&self) -> Option<&Endpoint> {
        if self.endpoints.is_empty() {
            return None;
        }
        let i = self.next.fetch_add(1, Ordering::Relaxed);
        Some(&self.endpoints[i % self.endpoints.len()])
    }
}

/// Everything a ztunnel knows, immutable once built; a reload builds a new one.
#[derive(Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ProxyState {
    pub trust_domain: String,
    pub workloads: BTreeMap<IpAddr, Arc<Workload>>,
    /// Keyed by VIP:port.
    pub services: BTreeMap<SocketAddr, Arc<Service>>,
    /// Keyed by (namespace, name): how a [`WaypointRef`] finds the Service in front of the
    /// waypoint's pods. Endpoints don't depend on the port, so the first port's entry will do.
    #[serde(skip)]
    pub services_by_name: BTreeMap<(String, String), Arc<Service>>,
    pub policies: Vec<CompiledPolicy>,
}

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("{path}: {message}")]
    Invalid { path: String, message: String },
    #[error("{path}: {source}")]
    Policy {
        path: String,
        #[source]
        source: PolicyError,
    },
}

fn invalid(path: String, message: impl Into<String>) -> StateError {
    StateError::Invalid {
        path,
        message: message.into(),
    }
}

fn build_workload(i: usize, w: &WorkloadSpec, cfg: &MeshConfig) -> Result<Workload, StateError> {
    let path = format!("workloads[{i}] ({}/{})", w.namespace, w.name);
    let identity = Identity::new(&cfg.trust_domain, &w.namespace, &w.service_account)
        .map_err(|e| invalid(path.clone(), e.to_string()))?;
    if w.name.is_empty() || w.node.is_empty() {
        return Err(invalid(path, "name and node must not be empty"));
    }
    Ok(Workload {
        uid: w
            .uid
            .clone()
            .unwrap_or_else(|| format!("{}/{}", w.namespace, w.name)),
        name: w.name.clone(),
        namespace: w.namespace.clone(),
        ip: w.ip,
        node: w.node.clone(),
        identity,
        labels: w.labels.clone(),
        captured: w.captured,
        mtls_mode: w.mtls_mode.unwrap_or(cfg.default_mtls_mode),
        healthy: w.healthy,
        netns: w.netns.clone(),
        waypoint: w.waypoint.clone(),
    })
}

fn selects(selector: &BTreeMap<String, String>, labels: &BTreeMap<String, String>) -> bool {
    selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

impl ProxyState {
    /// Validates and compiles config. Every error names the offending entry.
    pub fn build(cfg: &MeshConfig) -> Result<Self, StateError> {
        if Identity::new(&cfg.trust_domain, "x", "x").is_err() {
            return Err(invalid(
                "trustDomain".into(),
                format!("{:?} is not a valid SPIFFE trust domain", cfg.trust_domain),
            ));
        }
        let mut workloads = BTreeMap::new();
        let mut uids = HashMap::new();
        for (i, spec) in cfg.workloads.iter().enumerate() {
            let w = Arc::new(build_workload(i, spec, cfg)?);
            if let Some(prev) = uids.insert(w.uid.clone(), i) {
                return Err(invalid(
                    format!("workloads[{i}]"),
                    format!("uid {:?} is also used by workloads[{prev}]", w.uid),
                ));
            }
            if let Some(prev) = workloads.insert(w.ip, w.clone()) {
                return Err(invalid(
                    format!("workloads[{i}] ({}/{})", w.namespace, w.name),
                    format!(
                        "IP {} is also used by {}/{}",
                        w.ip, prev.namespace, prev.name
                    ),
                ));
            }
        }
        let mut services = BTreeMap::new();
        let mut services_by_name: BTreeMap<_, (usize, Arc<Service>)> = BTreeMap::new();
        for (i, svc) in cfg.services.iter().enumerate() {
            let path = format!("services[{i}] ({}/{})", svc.namespace, svc.name);
            // A waypoint reference names a Service: two with one name would make it ambiguous.
            if let Some((prev, _)) =
                services_by_name.get(&(svc.namespace.clone(), svc.name.clone()))
            {
                return Err(invalid(
                    path,
                    format!("the name is also used by services[{prev}]"),
                ));
            }
            if svc.vips.is_empty() || svc.ports.is_empty() {
                return Err(invalid(
                    path,
                    "a service needs at least one VIP and one port",
                ));
            }
            for port in &svc.ports {
                let target = port.target_port.unwrap_or(port.port);
                if port.port == 0 || target == 0 {
                    return Err(invalid(path, "ports must be 1-65535"));
                }
                let endpoints: Vec<Endpoint> = workloads
                    .values()
                    .filter(|w| {
                        w.namespace == svc.namespace
                            && w.healthy
                            && selects(&svc.selector, &w.labels)
                    })
                    .map(|w| Endpoint {
                        workload: w.clone(),
                        port: target,
                    })
                    .collect();
                let service = Arc::new(Service {
                    name: svc.name.clone(),
                    namespace: svc.namespace.clone(),
                    port: port.port,
                    selector: svc.selector.clone(),
                    endpoints,
                    waypoint: svc.waypoint.clone(),
                    next: AtomicUsize::new(0),
                });
                services_by_name
                    .entry((svc.namespace.clone(), svc.name.clone()))
                    .or_insert_with(|| (i, service.clone()));
                for vip in &svc.vips {
                    let key = SocketAddr::new(*vip, port.port);
                    if workloads.contains_key(vip) {
                        return Err(invalid(path, format!("VIP {vip} is also a workload IP")));
                    }
                    if services.insert(key, service.clone()).is_some() {
                        return Err(invalid(
                            path,
                            format!("{key} is used twice (by this or another service)"),
                        ));
                    }
                }
            }
        }
        let policies = cfg
            .policies
            .iter()
            .enumerate()
            .map(|(i, p)| {
                CompiledPolicy::compile(p).map_err(|source| StateError::Policy {
                    path: format!("policies[{i}] ({}/{})", p.namespace, p.name),
                    source,
                })
            })
            .collect::<Result<_, _>>()?;
        Ok(Self {
            trust_domain: cfg.trust_domain.clone(),
            workloads,
            services,
            services_by_name: services_by_name
                .into_iter()
                .map(|(k, (_, svc))| (k, svc))
                .collect(),
            policies,
        })
    }

    pub fn workload(&self, ip: &IpAddr) -> Option<&Arc<Workload>> {
        self.workloads.get(ip)
    }

    pub fn service(&self, addr: &SocketAddr) -> Option<&Arc<Service>> {
        self.services.get(addr)
    }

    /// The Service a waypoint reference names, if the config has it.
    pub fn waypoint_service(&self, wp: &WaypointRef) -> Option<&Arc<Service>> {
        self.services_by_name
            .get(&(wp.namespace.clone(), wp.name.clone()))
    }

    /// Workloads this node's ztunnel must serve: on `node`, captured, with a namespace.
    pub fn local_workloads<'a>(&'a self, node: &'a str) -> impl Iterator<Item = &'a Arc<Workload>> {
        self.workloads
            .values()
            .filter(move |w| w.node == node && w.captured)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(yaml: &str) -> Result<ProxyState, String> {
        let cfg: MeshConfig = serde_yaml::from_str(yaml).map_err(|e| e.to_string())?;
        ProxyState::build(&cfg).map_err(|e| e.to_string())
    }

    const BASE: &str = r#"
workloads:
  - {name: a, namespace: ns1, serviceAccount: sa-a, ip: 10.0.0.1, node: n1, labels: {app: a}}
  - {name: b1, namespace: ns1, ip: 10.0.0.2, node: n2, labels: {app: b}}
  - {name: b2, namespace: ns1, ip: 10.0.0.3, node: n1, labels: {app: b}}
  - {name: b3, namespace: ns1, ip: 10.0.0.4, node: n1, labels: {app: b}, healthy: false}
  - {name: x, namespace: ns2, ip: 10.0.0.5, node: n1, labels: {app: b}, captured: false}
services:
  - {name: b, namespace: ns1, vips: [10.96.0.1], ports: [{port: 80, targetPort: 8080}], selector: {app: b}}
"#;

    #[test]
    fn builds_workloads_and_service_endpoints() {
        let s = parse(BASE).unwrap();
        let a = s.workload(&"10.0.0.1".parse().unwrap()).unwrap();
        assert_eq!(
            a.identity.to_string(),
            "spiffe://cluster.local/ns/ns1/sa/sa-a"
        );
        assert_eq!(a.mtls_mode, MtlsMode::Permissive);
        let svc = s.service(&"10.96.0.1:80".parse().unwrap()).unwrap();
        let mut ips: Vec<String> = svc
            .endpoints
            .iter()
            .map(|e| e.workload.ip.to_string())
            .collect();
        ips.sort();
        // b3 is unhealthy, x is in another namespace.
        assert_eq!(ips, ["10.0.0.2", "10.0.0.3"]);
        assert!(svc.endpoints.iter().all(|e| e.port == 8080));
        let picks: std::collections::HashSet<_> =
            (0..4).map(|_| svc.pick().unwrap().workload.ip).collect();
        assert_eq!(picks.len(), 2, "round robin reaches every endpoint");
        let local: Vec<_> = s.local_workloads("n1").map(|w| w.name.as_str()).collect();
        assert_eq!(local, ["a", "b2", "b3"]);
    }

    #[test]
    fn waypoint_references_are_kept_and_resolve_by_name() {
        let yaml = format!(
            "{BASE}  - {{name: wp, namespace: ns1, vips: [10.96.0.9], ports: [{{port: 15008}}, {{port: 15021}}], selector: {{app: a}}}}\n"
        )
        .replace(
            "selector: {app: b}}",
            "selector: {app: b}, waypoint: {name: wp, namespace: ns1}}",
        )
        .replace(
            "labels: {app: b}, healthy: false}",
            "labels: {app: b}, healthy: false, waypoint: {name: other, namespace: ns1}}",
        );
        let s = parse(&yaml).unwrap();
        let svc = s.service(&"10.96.0.1:80".parse().unwrap()).unwrap();
        let wp = svc.waypoint.as_ref().expect("service waypoint");
        let wp_svc = s.waypoint_service(wp).expect("resolves by namespace/name");
        assert_eq!(wp_svc.hostname(), "wp.ns1.svc");
        let a = s.workload(&"10.0.0.1".parse().unwrap()).unwrap();
        assert!(wp_svc.selects(a) && !svc.selects(a));
        let b3 = s.workload(&"10.0.0.4".parse().unwrap()).unwrap();
        assert_eq!(b3.waypoint.as_ref().unwrap().name, "other");
        assert!(svc.selects(b3), "selects ignores health");
        assert!(s.waypoint_service(b3.waypoint.as_ref().unwrap()).is_none());
    }

    #[test]
    fn errors_name_the_offending_entry() {
        let dup = format!("{BASE}  - {{name: c, namespace: ns1, vips: [10.96.0.1], ports: [{{port: 80}}], selector: {{}}}}\n");
        let err = parse(&dup).unwrap_err();
        assert!(
            err.contains("services[1] (ns1/c)") && err.contains("used twice"),
            "{err}"
        );

        let err = parse("workloads:\n  - {name: a, namespace: 'bad ns', ip: 10.0.0.1, node: n1}\n")
            .unwrap_err();
        assert!(err.contains("workloads[0] (bad ns/a)"), "{err}");

        let err = parse("workloads:\n  - {name: a, namespace: n, ip: 10.0.0.1, node: n1}\n  - {name: b, namespace: n, ip: 10.0.0.1, node: n1}\n").unwrap_err();
        assert!(err.contains("IP 10.0.0.1 is also used by n/a"), "{err}");

        let err =
            parse("workloads:\n  - {name: a, namespace: n, ip: 10.0.0.1, node: n1, colour: red}\n")
                .unwrap_err();
        assert!(err.contains("unknown field `colour`"), "{err}");

        let twice = format!("{BASE}  - {{name: b, namespace: ns1, vips: [10.96.0.2], ports: [{{port: 80}}], selector: {{}}}}\n");
        let err = parse(&twice).unwrap_err();
        assert!(
            err.contains("services[1] (ns1/b): the name is also used by services[0]"),
            "{err}"
        );

        let err = parse("trustDomain: Bad_Domain\n").unwrap_err();
        assert!(err.contains("trustDomain"), "{err}");
    }
}
