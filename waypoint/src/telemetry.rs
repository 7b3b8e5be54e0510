//! Per-request telemetry: W3C trace context, the metrics of one finished request, and JSON
//! access-log lines on stdout.

use std::io::Write;
use std::time::Instant;

use http::{HeaderMap, HeaderValue};
use rand::Rng;

use crate::metrics::{Metrics, RequestLabels};

pub const TRACEPARENT: &str = "traceparent";

/// The span the waypoint adds for one request: a child of the caller's span when the request
/// carried a valid `traceparent`, else the root of a new trace.
#[derive(Clone, Debug)]
pub struct Trace {
    pub trace_id: String,
    pub span_id: String,
    pub parent_span_id: Option<String>,
    pub flags: String,
}

fn hex(n: usize) -> String {
    let mut rng = rand::thread_rng();
    loop {
        let s: String = (0..n)
            .map(|_| char::from_digit(rng.gen_range(0..16), 16).expect("digit < 16"))
            .collect();
        // All-zero IDs are invalid in W3C trace context.
        if s.bytes().any(|b| b != b'0') {
            return s;
        }
    }
}

fn is_hex(s: &str, n: usize) -> bool {
    s.len() == n
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        && s.bytes().any(|b| b != b'0')
}

impl Trace {
    pub fn from_headers(headers: &HeaderMap) -> Self {
        let parent = headers
            .get(TRACEPARENT)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                let parts: Vec<&str> = v.trim().split('-').collect();
                match parts[..] {
                    [ver, trace, span, flags]
                        if ver.len() == 2
                            && ver != "ff"
                            && is_hex(trace, 32)
                            && is_hex(span, 16)
                            && flags.len() == 2 =>
                    {
                        Some((trace.to_string(), span.to_string(), flags.to_string()))
                    }
                    _ => None,
                }
            });
        match parent {
            Some((trace_id, parent, flags)) => Self {
                trace_id,
                span_id: hex(16),
                parent_span_id: Some(parent),
                flags,
            },
            None => Self {
                trace_id: hex(32),
                span_id: hex(16),
                parent_span_id: None,
                flags: "01".into(),
            },
        }
    }

    /// The `traceparent` to send upstream: same trace, our span as the parent.
    pub fn header(&self) -> HeaderValue {
        HeaderValue::from_str(&format!(
            "00-{}-{}-{}",
            self.trace_id, self.span_id, self.flags
        ))
        .expect("hex is a valid header value")
    }
}

/// Everything known about a request when it finishes.
pub struct Record {
    pub start: Instant,
    pub labels: RequestLabels,
    pub method: String,
    pub path: String,
    pub authority: String,
    pub protocol: &'static str,
    pub upstream: Option<String>,
    pub attempts: u32,
    pub trace: Trace,
    pub request_bytes: u64,
}

impl Record {
    /// Records metrics and, when enabled, writes the access-log line.
    pub fn finish(self, metrics: &Metrics, access_log: bool, response_bytes: u64) {
        let ms = self.start.elapsed().as_secs_f64() * 1000.0;
        metrics.requests.get_or_create(&self.labels).inc();
        metrics.duration.get_or_create(&self.labels).observe(ms);
        metrics
            .request_bytes
            .get_or_create(&self.labels)
            .observe(self.request_bytes as f64);
        metrics
            .response_bytes
            .get_or_create(&self.labels)
            .observe(response_bytes as f64);
        if self.attempts > 1 {
            metrics
                .retries
                .get_or_create(&self.labels)
                .inc_by(u64::from(self.attempts - 1));
        }
        if !access_log {
            return;
        }
        let line = serde_json::json!({
            "start_time": humantime::format_rfc3339_millis(std::time::SystemTime::now() - self.start.elapsed()).to_string(),
            "method": self.method,
            "path": self.path,
            "authority": self.authority,
            "protocol": self.protocol,
            "response_code": self.labels.response_code.parse::<u16>().unwrap_or(0),
            "response_flags": self.labels.response_flags,
            "duration_ms": (ms * 1000.0).round() / 1000.0,
            "bytes_received": self.request_bytes,
            "bytes_sent": response_bytes,
            "upstream_host": self.upstream,
            "attempts": self.attempts,
            "route": self.labels.route,
            "source_principal": self.labels.source_principal,
            "source_workload": self.labels.source_workload,
            "source_workload_namespace": self.labels.source_workload_namespace,
            "destination_service": self.labels.destination_service,
            "trace_id": self.trace.trace_id,
            "span_id": self.trace.span_id,
            "parent_span_id": self.trace.parent_span_id,
        });
        // One write per line so concurrent requests never interleave inside a line.
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{line}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn continues_or_starts_a_trace() {
        let mut h = HeaderMap::new();
        h.insert(
            TRACEPARENT,
            HeaderValue::from_static("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
        );
        let t = Trace::from_headers(&h);
        assert_eq!(t.trace_id, "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(t.parent_span_id.as_deref(), Some("00f067aa0ba902b7"));
        assert_ne!(t.span_id, "00f067aa0ba902b7");
        let out = t.header();
        let out = out.to_str().unwrap();
        assert!(out.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-") && out.ends_with("-01"));
        h.insert(
            TRACEPARENT,
            HeaderValue::from_static("00-zz-00f067aa0ba902b7-01"),
        );
        let fresh = Trace::from_headers(&h);
        assert!(fresh.parent_span_id.is_none() && is_hex(&fresh.trace_id, 32));
    }
}
