//! Config from the operator's config stream (`--control-plane`), target
//! `waypoint/<namespace>/<service account>`. The first valid config starts the waypoint (its
//! listeners, readiness included, open only then); later ones replace it like a file reload.
//! A config the waypoint rejects (other trust domain, or [`State::build`] fails) is NACKed
//! through the stream client's validation hook, counted
//! (`ambit_config_reloads_total{result="error"}`) and never applied: the last good stays.

use std::sync::Arc;

use ambit_core::control::client::StreamStatus;
use ambit_core::control::proto::Target;
use ambit_core::control::{ConfigStream, Endpoint, StreamOptions};
use ambit_core::meshconfig::{MeshConfig, WaypointRef};
use tokio::sync::watch;
use tracing::{error, info};

use crate::metrics::Metrics;
use crate::state::State;

pub struct StreamSource {
    pub endpoint: Endpoint,
    /// The waypoint's namespace and service account: the stream carries
    /// `waypoint/<namespace>/<service account>`, the only target its token may read.
    pub namespace: String,
    pub service_account: String,
    /// The waypoint's name as Services and workloads name it.
    pub me: WaypointRef,
    pub trust_domain: String,
}

/// Checks a candidate config as the waypoint would load it.
pub fn check(cfg: &MeshConfig, trust_domain: &str, me: &WaypointRef) -> Result<State, String> {
    if cfg.trust_domain != trust_domain {
        return Err(format!(
            "trustDomain {:?} does not match the waypoint's trust domain {trust_domain:?}",
            cfg.trust_domain
        ));
    }
    State::build(cfg, me, 0).map_err(|e| e.to_string())
}

impl StreamSource {
    pub fn target(&self) -> Target {
        Target::Waypoint {
            namespace: self.namespace.clone(),
            name: self.service_account.clone(),
        }
    }

    /// Waits (retrying for as long as it takes) for the first valid config, then follows the
    /// stream in the background. Returns the state and the stream's status.
    pub async fn start(
        self,
        metrics: Arc<Metrics>,
    ) -> (watch::Receiver<Arc<State>>, watch::Receiver<StreamStatus>) {
        let mut opts = StreamOptions::new(self.endpoint.clone(), self.target());
        let (m, td, me) = (metrics.clone(), self.trust_domain.clone(), self.me.clone());
        opts.validate = Arc::new(move |cfg| {
            let checked = check(cfg, &td, &me).map(drop);
            if checked.is_err() {
                m.config_reload("error");
            }
            checked
        });
        info!(control_plane = %self.endpoint.address, target = %self.target(), "waiting for the first config from the control plane");
        let stream = ConfigStream::connect(opts).await;
        let mut configs = stream.config;
        let mut generation = 1;
        let (td, me) = (self.trust_domain, self.me);
        let build = move |cfg: &MeshConfig, generation: u64| {
            check(cfg, &td, &me).map(|mut s| {
                s.generation = generation;
                s
            })
        };
        // Validated before it was ACKed, so it builds; a failure here would be a bug.
        let first = build(&configs.borrow_and_update(), generation)
            .expect("the first config passed the same validation");
        metrics.config_reload("ok");
        info!(
            services = first.services.len(),
            routes = first.routes.len(),
            "first config from the control plane"
        );
        let (tx, rx) = watch::channel(Arc::new(first));
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    changed = configs.changed() => if changed.is_err() { return },
                    _ = tx.closed() => return,
                }
                let cfg = configs.borrow_and_update().clone();
                match build(&cfg, generation + 1) {
                    Ok(state) => {
                        generation += 1;
                        info!(
                            generation,
                            services = state.services.len(),
                            routes = state.routes.len(),
                            "config from the control plane applied"
                        );
                        metrics.config_reload("ok");
                        tx.send_replace(Arc::new(state));
                    }
                    Err(e) => {
                        error!(error = %e, "config rejected after validation; keeping the last good config");
                        metrics.config_reload("error");
                    }
                }
            }
        });
        (rx, stream.status)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn me() -> WaypointRef {
        WaypointRef {
            name: "wp".into(),
            namespace: "shop".into(),
        }
    }

    #[test]
    fn the_check_rejects_another_trust_domain_and_what_the_state_builder_rejects() {
        let ok: MeshConfig = serde_yaml::from_str("trustDomain: cluster.local\n").unwrap();
        assert!(check(&ok, "cluster.local", &me()).is_ok());
        let e = check(&ok, "other.org", &me()).err().unwrap();
        assert!(
            e.contains("\"cluster.local\"") && e.contains("other.org"),
            "{e}"
        );
        let bad: MeshConfig = serde_yaml::from_str(
            "trustDomain: cluster.local\nroutes: [{name: r, namespace: shop, service: {name: nope, namespace: shop}, rules: []}]\n",
        )
        .unwrap();
        let e = check(&bad, "cluster.local", &me()).err().unwrap();
        assert!(e.contains("shop/nope"), "{e}");
    }

    #[test]
    fn the_target_is_the_waypoints_namespace_and_service_account() {
        let src = StreamSource {
            endpoint: Endpoint {
                address: "op:15012".into(),
                root_cert: "/nonexistent".into(),
                operator_identity: ambit_core::control::operator_identity("cluster.local").unwrap(),
                token_file: "/nonexistent".into(),
                connect_timeout: std::time::Duration::from_secs(1),
            },
            namespace: "shop".into(),
            service_account: "wp-sa".into(),
            me: me(),
            trust_domain: "cluster.local".into(),
        };
        assert_eq!(src.target().to_string(), "waypoint/shop/wp-sa");
    }
}
