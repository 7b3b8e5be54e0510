//! The waypoint's backend machinery: one [`Backend`] per (service, subset) chooses an endpoint
//! for each request and applies the Service's BackendPolicy
//! ([`BackendPolicySpec`](ambit_core::meshconfig::backend::BackendPolicySpec)).
//!
//! # Using it
//!
//! ```text
//! backend.retry_budget().on_request();                 // once per original request
//! let pick = backend.pick(hash_key)?;                  // admission + endpoint choice
//! // connection: reuse an idle one, else
//! //   backend.connection_guard()  -> open a new one (keep the guard with the connection), or
//! //   on Overflow: backend.pending_guard()? and wait for one to free up.
//! pick.finish(Outcome::Response { status, latency });  // or drop it if cancelled
//! if retryable && backend.retry_budget().try_retry() { /* pick again */ }
//! ```
//!
//! # Choices
//!
//! - **Load balancing.** `LeastRequest` (the default) is Linkerd's balancer: power of two
//!   random choices, keeping the one with the lower cost = peak-EWMA latency × (requests in
//!   flight + 1). Endpoints start at a 30 ms estimate; the estimate decays with a 10 s time
//!   constant (see `ewma.rs`). Connect failures, resets and timeouts are recorded as at least
//!   1 s, so an endpoint that fails fast doesn't look fast. `RoundRobin` cycles from a random
//!   start; `Random` is uniform; `ConsistentHash` uses a ring (see `ring.rs`) keyed by the
//!   endpoint's `workload|addr`, and falls back to random without a hash key. Every policy
//!   skips ejected endpoints (the ring walks on to the next endpoint).
//! - **Circuit breaking** never queues: a request over a limit fails at once with
//!   [`Unavailable::Overflow`] naming the limit, as Envoy does. `maxRequests` counts live
//!   [`Pick`]s. `maxConnections` counts live [`ConnectionGuard`]s (the caller holds one per
//!   upstream connection it opens). `maxPendingRequests` counts live [`PendingGuard`]s: the
//!   caller takes one while a request waits for a connection because `maxConnections` was
//!   reached, exactly Envoy's notion of a pending request. Without a `connectionPool` there
//!   are no limits (Istio's effective default).
//! - **Outlier ejection**: see `outlier.rs`. Without `outlierDetection` nothing is ejected.
//!   There is no panic mode: with every endpoint ejected (only possible at 100%), picks fail
//!   with [`Unavailable::NoHealthyUpstream`].
//! - **Retry budget**: see [`RetryBudget`]; without `retryBudget`, Linkerd's defaults apply.
//! - One mutex per backend guards the endpoint table; it is never held across an await (the
//!   API is synchronous). Counters are atomics ([`BackendStats`]).

mod backend;
mod budget;
mod clock;
mod ewma;
mod lb;
mod outlier;
mod ring;
mod stats;

#[cfg(test)]
mod tests;

use std::net::SocketAddr;
use std::time::Duration;

pub use backend::{
    Backend, BackendOptions, ConnectionGuard, EndpointStatus, PendingGuard, Pick, RequestGuard,
};
pub use budget::RetryBudget;
pub use clock::{Clock, FakeClock, SystemClock};
pub use stats::{BackendStats, MAX_CONNECTIONS, MAX_PENDING_REQUESTS, MAX_REQUESTS};

/// One endpoint of a backend.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Endpoint {
    /// `pod_ip:target_port`.
    pub addr: SocketAddr,
    /// The identity the endpoint's certificate must carry.
    pub identity: ambit_core::Identity,
    /// `namespace/name` of the workload.
    pub workload: String,
}

/// Why a request cannot be sent. Both mean HTTP 503 to the caller.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Unavailable {
    #[error("no healthy upstream")]
    NoHealthyUpstream,
    /// A circuit-breaker limit was reached; names the `connectionPool` field.
    #[error("upstream overflow: {0} limit reached")]
    Overflow(&'static str),
}

impl Unavailable {
    /// Envoy's access-log response flag: `UH` (no healthy upstream) or `UO` (overflow).
    pub fn response_flag(&self) -> &'static str {
        match self {
            Unavailable::NoHealthyUpstream => "UH",
            Unavailable::Overflow(_) => "UO",
        }
    }
}

/// How a request to an endpoint ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// A response arrived; `latency` is to its headers.
    Response {
        status: u16,
        latency: Duration,
    },
    ConnectFailure,
    /// The upstream reset the stream or connection before responding.
    Reset,
    Timeout,
}
