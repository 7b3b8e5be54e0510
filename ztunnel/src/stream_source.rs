//! Config from the operator's config stream (`--control-plane`): the first valid config
//! starts ztunnel (readiness waits for it); later ones replace it. A config the state builder
//! rejects is NACKed, counted (`ambit_config_reloads_total{result="error"}`) and not applied.

use std::sync::Arc;

use ambit_core::certs::BoxFuture;
use ambit_core::control::proto::Target;
use ambit_core::control::{ConfigStream, Endpoint, StreamOptions};
use tokio::sync::watch;
use tracing::info;

use crate::metrics::{Metrics, ResultLabels};
use crate::source::{ConfigSource, SourceError, SourceStatus};
use crate::state::ProxyState;

pub struct StreamSource {
    pub endpoint: Endpoint,
    /// This node: the stream carries `node/<node>`.
    pub node: String,
    /// The CA's trust domain: a config naming another one is rejected.
    pub trust_domain: String,
}

fn count(metrics: &Metrics, result: &str) {
    metrics
        .config_reloads
        .get_or_create(&ResultLabels {
            result: result.into(),
        })
        .inc();
}

impl ConfigSource for StreamSource {
    fn start(
        self: Box<Self>,
        metrics: Arc<Metrics>,
        status: Arc<SourceStatus>,
    ) -> BoxFuture<'static, Result<watch::Receiver<Arc<ProxyState>>, SourceError>> {
        Box::pin(async move {
            let target = Target::Node(self.node.clone());
            let mut opts = StreamOptions::new(self.endpoint.clone(), target);
            let (m, td) = (metrics.clone(), self.trust_domain.clone());
            opts.validate = Arc::new(move |cfg| {
                let checked = if cfg.trust_domain != td {
                    Err(format!(
                        "trustDomain {:?} does not match the mesh CA's trust domain {td:?}",
                        cfg.trust_domain
                    ))
                } else {
                    ProxyState::build(cfg).map(drop).map_err(|e| e.to_string())
                };
                if checked.is_err() {
                    count(&m, "error");
                }
                checked
            });
            info!(control_plane = %self.endpoint.address, node = %self.node, "waiting for the first config from the control plane");
            let address = self.endpoint.address.clone();
            let report = move |s: &ambit_core::control::client::StreamStatus| {
                status.set(serde_json::json!({
                    "mode": "stream", "controlPlane": address, "connected": s.connected,
                    "version": s.version, "applied": s.applied, "rejected": s.rejected,
                    "subscriptions": s.subscriptions, "lastError": s.last_error,
                }))
            };
            report(&Default::default());
            let stream = ConfigStream::connect(opts).await;
            let mut stream_status = stream.status;
            report(&stream_status.borrow_and_update());
            tokio::spawn(async move {
                while stream_status.changed().await.is_ok() {
                    report(&stream_status.borrow_and_update());
                }
            });
            let mut configs = stream.config;
            let build = |cfg: &ambit_core::meshconfig::MeshConfig| {
                ProxyState::build(cfg).map_err(|e| SourceError::Stream(e.to_string()))
            };
            let first = build(&configs.borrow_and_update())?;
            count(&metrics, "ok");
            let (tx, rx) = watch::channel(Arc::new(first));
            tokio::spawn(async move {
                loop {
                    tokio::select! {
                        changed = configs.changed() => if changed.is_err() { return },
                        _ = tx.closed() => return,
                    }
                    let cfg = configs.borrow_and_update().clone();
                    // Validated before it was ACKed, so this builds.
                    match build(&cfg) {
                        Ok(state) => {
                            info!(
                                workloads = state.workloads.len(),
                                services = state.services.len(),
                                "config from the control plane applied"
                            );
                            count(&metrics, "ok");
                            tx.send_replace(Arc::new(state));
                        }
                        Err(e) => {
                            tracing::error!(error = %e, "config rejected after validation; keeping the last good config")
                        }
                    }
                }
            });
            Ok(rx)
        })
    }
}
