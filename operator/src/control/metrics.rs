//! Control-plane metrics, in the style of Istio's pilot/citadel ones.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    pub result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TypeLabels {
    pub r#type: String,
}

#[derive(Default)]
pub struct ControlMetrics {
    /// CSRs by result: ok, denied, invalid, unauthenticated, unavailable.
    pub csr: Family<ResultLabels, Counter>,
    /// Config messages: sent (updates), ack, nack.
    pub config_updates: Family<TypeLabels, Counter>,
    /// Open config streams.
    pub connected_proxies: Gauge,
}

impl ControlMetrics {
    pub fn count_csr(&self, result: &str) {
        self.csr
            .get_or_create(&ResultLabels {
                result: result.into(),
            })
            .inc();
    }
    pub fn count_update(&self, kind: &str) {
        self.config_updates
            .get_or_create(&TypeLabels {
                r#type: kind.into(),
            })
            .inc();
    }

    /// Adds the metrics to `registry` (names start with `ambit_control_`).
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "ambit_control_csr_requests",
            "Certificate signing requests by result",
            self.csr.clone(),
        );
        registry.register(
            "ambit_control_config_messages",
            "Config stream messages: updates sent, ACKs and NACKs received",
            self.config_updates.clone(),
        );
        registry.register(
            "ambit_control_connected_proxies",
            "Proxies with an open config stream",
            self.connected_proxies.clone(),
        );
    }

    pub fn count(&self, kind: &str) -> u64 {
        self.config_updates
            .get_or_create(&TypeLabels {
                r#type: kind.into(),
            })
            .get()
    }
}
