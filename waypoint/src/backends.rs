//! The balance [`Backend`]s of this waypoint, one per (Service, port, subset) or directly
//! addressed workload. They outlive config versions so latency estimates, ejections and retry
//! budgets survive reloads: a reload only refreshes their endpoints and policy.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use crate::balance::{Backend, Endpoint};
use crate::state::{ServiceKey, State};

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum BackendKey {
    Service {
        service: ServiceKey,
        port: u16,
        subset: BTreeMap<String, String>,
    },
    /// A pod addressed by IP whose traffic this waypoint handles.
    Workload(SocketAddr),
}

impl BackendKey {
    fn name(&self) -> String {
        match self {
            BackendKey::Service {
                service,
                port,
                subset,
            } => {
                let subset: Vec<String> = subset.iter().map(|(k, v)| format!("{k}={v}")).collect();
                format!("{}/{}:{port}{{{}}}", service.0, service.1, subset.join(","))
            }
            BackendKey::Workload(addr) => format!("workload {addr}"),
        }
    }

    fn service(&self) -> Option<&ServiceKey> {
        match self {
            BackendKey::Service { service, .. } => Some(service),
            BackendKey::Workload(_) => None,
        }
    }
}

fn endpoints(state: &State, key: &BackendKey) -> Vec<Endpoint> {
    match key {
        BackendKey::Service {
            service,
            port,
            subset,
        } => state
            .service_endpoints(service, *port, subset)
            .into_iter()
            .map(|(addr, w)| Endpoint {
                addr,
                identity: w.identity.clone(),
                workload: format!("{}/{}", w.spec.namespace, w.spec.name),
            })
            .collect(),
        BackendKey::Workload(addr) => state
            .workloads
            .get(&addr.ip())
            .filter(|w| w.spec.healthy)
            .map(|w| Endpoint {
                addr: *addr,
                identity: w.identity.clone(),
                workload: format!("{}/{}", w.spec.namespace, w.spec.name),
            })
            .into_iter()
            .collect(),
    }
}

#[derive(Default)]
pub struct Backends {
    map: Mutex<HashMap<BackendKey, Arc<Backend>>>,
}

impl Backends {
    /// The backend for `key`, created from `state` on first use.
    pub fn get(&self, state: &State, key: &BackendKey) -> Arc<Backend> {
        let mut map = self.map.lock().expect("backends lock poisoned");
        if let Some(b) = map.get(key) {
            return b.clone();
        }
        let policy = key
            .service()
            .and_then(|s| state.backend_policies.get(s))
            .cloned();
        let backend = Backend::new(key.name(), policy);
        backend.set_endpoints(endpoints(state, key));
        map.insert(key.clone(), backend.clone());
        backend
    }

    /// Every live backend, sorted by name (for the admin config dump).
    pub fn snapshot(&self) -> Vec<Arc<Backend>> {
        let map = self.map.lock().expect("backends lock poisoned");
        let mut out: Vec<Arc<Backend>> = map.values().cloned().collect();
        out.sort_by(|a, b| a.name().cmp(b.name()));
        out
    }

    /// Applies a new config to every backend; backends of vanished Services are forgotten
    /// (requests still holding one finish with it).
    pub fn refresh(&self, state: &State) {
        let mut map = self.map.lock().expect("backends lock poisoned");
        map.retain(|key, _| match key {
            BackendKey::Service { service, .. } => state.services.contains_key(service),
            BackendKey::Workload(addr) => state.workloads.contains_key(&addr.ip()),
        });
        for (key, backend) in map.iter() {
            backend.set_policy(
                key.service()
                    .and_then(|s| state.backend_policies.get(s))
                    .cloned(),
            );
            backend.set_endpoints(endpoints(state, key));
        }
    }
}
