//! Counters the waypoint exports as Prometheus metrics. Plain atomics: bumping one never
//! takes a lock.

use std::sync::atomic::{AtomicU64, Ordering};

/// `Unavailable::Overflow` names, as in the BackendPolicy's `connectionPool`.
pub const MAX_REQUESTS: &str = "maxRequests";
pub const MAX_PENDING_REQUESTS: &str = "maxPendingRequests";
pub const MAX_CONNECTIONS: &str = "maxConnections";

#[derive(Debug, Default)]
pub struct BackendStats {
    ejections: AtomicU64,
    ejections_refused: AtomicU64,
    overflow_requests: AtomicU64,
    overflow_pending: AtomicU64,
    overflow_connections: AtomicU64,
    no_healthy_upstream: AtomicU64,
}

impl BackendStats {
    /// Endpoints ejected by outlier detection.
    pub fn ejections_total(&self) -> u64 {
        self.ejections.load(Ordering::Relaxed)
    }

    /// Ejections that were due but refused by `maxEjectionPercent` (Envoy's
    /// `ejections_overflow`).
    pub fn ejections_refused_total(&self) -> u64 {
        self.ejections_refused.load(Ordering::Relaxed)
    }

    /// Requests (or connections) refused by the circuit breaker, by limit name
    /// ([`MAX_REQUESTS`], [`MAX_PENDING_REQUESTS`], [`MAX_CONNECTIONS`]); 0 for other names.
    pub fn overflow_total(&self, limit: &str) -> u64 {
        match limit {
            MAX_REQUESTS => self.overflow_requests.load(Ordering::Relaxed),
            MAX_PENDING_REQUESTS => self.overflow_pending.load(Ordering::Relaxed),
            MAX_CONNECTIONS => self.overflow_connections.load(Ordering::Relaxed),
            _ => 0,
        }
    }

    /// Picks that found no endpoint (none known, or all ejected).
    pub fn no_healthy_upstream_total(&self) -> u64 {
        self.no_healthy_upstream.load(Ordering::Relaxed)
    }

    pub(crate) fn ejected(&self) {
        self.ejections.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn ejection_refused(&self) {
        self.ejections_refused.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn no_healthy(&self) {
        self.no_healthy_upstream.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn overflow(&self, limit: &'static str) {
        let c = match limit {
            MAX_REQUESTS => &self.overflow_requests,
            MAX_PENDING_REQUESTS => &self.overflow_pending,
            _ => &self.overflow_connections,
        };
        c.fetch_add(1, Ordering::Relaxed);
    }
}
