//! The agent's metrics and readiness, served over plain HTTP/1.0 (the agent is a small
//! synchronous program; a full HTTP stack would be most of its size).

use std::io::{Read, Write};
use std::net::TcpListener;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use super::Agent;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// add, del, check, status, gc
    pub request: String,
    /// captured, skipped, ok, error
    pub result: String,
}

pub struct AgentMetrics {
    registry: Registry,
    pub enrolled_pods: Gauge,
    pub enrollment_failures: Family<ReasonLabels, Counter>,
    pub plugin_requests: Family<RequestLabels, Histogram>,
    pub gc_released: Counter,
}

impl Default for AgentMetrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("ambit_cni");
        let enrolled_pods = Gauge::default();
        let enrollment_failures = Family::<ReasonLabels, Counter>::default();
        let plugin_requests = Family::<RequestLabels, Histogram>::new_with_constructor(|| {
            // 1 ms .. ~8 s: CNI calls wait on netns work and ztunnel.
            Histogram::new([
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 8.0,
            ])
        });
        registry.register(
            "enrolled_pods",
            "Pods on this node currently captured",
            enrolled_pods.clone(),
        );
        registry.register(
            "enrollment_failures",
            "Pods that should have been captured but could not be, by reason",
            enrollment_failures.clone(),
        );
        let gc_released = Counter::default();
        registry.register(
            "gc_released_attachments",
            "Captured pods released because a CNI GC no longer listed their attachment",
            gc_released.clone(),
        );
        registry.register(
            "plugin_request_duration_seconds",
            "Time the agent took to answer a CNI plugin request",
            plugin_requests.clone(),
        );
        Self {
            registry,
            enrolled_pods,
            enrollment_failures,
            plugin_requests,
            gc_released,
        }
    }
}

impl AgentMetrics {
    pub fn fail(&self, reason: &str) {
        self.enrollment_failures
            .get_or_create(&ReasonLabels {
                reason: reason.into(),
            })
            .inc();
    }

    pub fn observe(&self, request: &str, result: &str, took: Duration) {
        self.plugin_requests
            .get_or_create(&RequestLabels {
                request: request.into(),
                result: result.into(),
            })
            .observe(took.as_secs_f64());
    }

    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String");
        out
    }
}

/// Serves `/metrics` and `/healthz/ready` until the process exits.
pub fn serve(listener: TcpListener, agent: Agent) {
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else {
                std::thread::sleep(Duration::from_millis(50));
                continue;
            };
            let _ = conn.set_read_timeout(Some(Duration::from_secs(2)));
            // Read the whole request head: clients may send it in several pieces.
            let mut head = Vec::with_capacity(256);
            let mut buf = [0u8; 512];
            while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 8192 {
                match conn.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => head.extend_from_slice(&buf[..n]),
                }
            }
            let request = String::from_utf8_lossy(&head);
            let path = request.split_whitespace().nth(1).unwrap_or("/");
            let (status, body) = match path {
                "/metrics" => ("200 OK", agent.metrics().encode()),
                "/healthz/ready" => match agent.ready() {
                    Ok(()) => ("200 OK", "ready\n".to_string()),
                    Err(why) => ("503 Service Unavailable", format!("not ready: {why}\n")),
                },
                _ => (
                    "404 Not Found",
                    "try /metrics or /healthz/ready\n".to_string(),
                ),
            };
            let _ = write!(
                conn,
                "HTTP/1.0 {status}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            );
        }
    });
}
