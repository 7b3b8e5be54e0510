//! Prometheus metrics, named and labelled like Istio's TCP metrics so existing dashboards
//! translate directly (`istio_tcp_*` → `ambit_tcp_*`, same label names).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::state::Workload;

#[derive(Clone, Debug, Default, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ConnLabels {
    /// `source` (outbound side) or `destination` (inbound side).
    pub reporter: String,
    pub source_workload: String,
    pub source_workload_namespace: String,
    pub source_principal: String,
    /// For the source reporter of a connection sent to a waypoint: the waypoint's pod.
    pub destination_workload: String,
    pub destination_workload_namespace: String,
    pub destination_principal: String,
    /// The Service the caller addressed (also when it went through a waypoint).
    pub destination_service: String,
    /// `mutual_tls` or `none`.
    pub connection_security_policy: String,
}

impl ConnLabels {
    pub fn with_source(mut self, w: Option<&Workload>, principal: Option<String>) -> Self {
        if let Some(w) = w {
            self.source_workload = w.name.clone();
            self.source_workload_namespace = w.namespace.clone();
        }
        self.source_principal = principal
            .or_else(|| w.map(|w| w.identity.to_string()))
            .unwrap_or_else(|| "unknown".into());
        self
    }
    pub fn with_destination(mut self, w: Option<&Workload>) -> Self {
        if let Some(w) = w {
            self.destination_workload = w.name.clone();
            self.destination_workload_namespace = w.namespace.clone();
            self.destination_principal = w.identity.to_string();
        } else {
            self.destination_principal = "unknown".into();
        }
        self
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DeniedLabels {
    pub reporter: String,
    /// Why: `denied_by_policy`, `plaintext_in_strict_mode`, `no_healthy_endpoints`, ...
    pub reason: String,
    pub source_principal: String,
    pub destination_workload: String,
    pub destination_workload_namespace: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    pub result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FailureLabels {
    pub reporter: String,
    /// Why: `connect_failed`, `tls_failed`, `upstream_refused`, `upstream_connect_failed`,
    /// `waypoint_unavailable` (a waypoint-bound connection reset because its waypoint has no
    /// healthy pod, is missing from config or can't be reached), ...
    pub reason: String,
}

pub struct Metrics {
    pub registry: Registry,
    pub opened: Family<ConnLabels, Counter>,
    pub closed: Family<ConnLabels, Counter>,
    pub sent_bytes: Family<ConnLabels, Counter>,
    pub received_bytes: Family<ConnLabels, Counter>,
    pub denied: Family<DeniedLabels, Counter>,
    pub failures: Family<FailureLabels, Counter>,
    pub config_reloads: Family<ResultLabels, Counter>,
    pub captured_pods: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("ambit");
        let m = Metrics {
            opened: Family::default(),
            closed: Family::default(),
            sent_bytes: Family::default(),
            received_bytes: Family::default(),
            denied: Family::default(),
            failures: Family::default(),
            config_reloads: Family::default(),
            captured_pods: Gauge::default(),
            registry: Registry::default(),
        };
        registry.register(
            "tcp_connections_opened",
            "TCP connections opened through the mesh",
            m.opened.clone(),
        );
        registry.register(
            "tcp_connections_closed",
            "TCP connections closed through the mesh",
            m.closed.clone(),
        );
        registry.register(
            "tcp_sent_bytes",
            "Bytes sent towards the destination",
            m.sent_bytes.clone(),
        );
        registry.register(
            "tcp_received_bytes",
            "Bytes received from the destination",
            m.received_bytes.clone(),
        );
        registry.register(
            "tcp_connections_denied",
            "Connections refused, by reason",
            m.denied.clone(),
        );
        registry.register(
            "tcp_connection_failures",
            "Connections that could not be established, by reason",
            m.failures.clone(),
        );
        registry.register(
            "config_reloads",
            "Configuration updates applied (ok) or rejected (error)",
            m.config_reloads.clone(),
        );
        registry.register(
            "captured_pods",
            "Pods whose traffic this ztunnel currently serves",
            m.captured_pods.clone(),
        );
        Metrics { registry, ..m }
    }
}

impl Metrics {
    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }

    pub fn deny(&self, reporter: &str, reason: &str, src: &str, dst: Option<&Workload>) {
        self.denied
            .get_or_create(&DeniedLabels {
                reporter: reporter.into(),
                reason: reason.into(),
                source_principal: src.into(),
                destination_workload: dst.map(|w| w.name.clone()).unwrap_or_default(),
                destination_workload_namespace: dst
                    .map(|w| w.namespace.clone())
                    .unwrap_or_default(),
            })
            .inc();
    }

    pub fn fail(&self, reporter: &str, reason: &str) {
        self.failures
            .get_or_create(&FailureLabels {
                reporter: reporter.into(),
                reason: reason.into(),
            })
            .inc();
    }

    /// Counts a connection as opened and returns the handles to account its bytes and close.
    pub fn open(&self, labels: ConnLabels) -> ConnMetrics {
        self.opened.get_or_create(&labels).inc();
        ConnMetrics {
            sent: self.sent_bytes.get_or_create(&labels).clone(),
            received: self.received_bytes.get_or_create(&labels).clone(),
            closed: self.closed.get_or_create(&labels).clone(),
        }
    }
}

/// Per-connection counters, resolved once so the data path only does atomic adds.
pub struct ConnMetrics {
    pub sent: Counter,
    pub received: Counter,
    closed: Counter,
}

impl Drop for ConnMetrics {
    fn drop(&mut self) {
        self.closed.inc();
    }
}
