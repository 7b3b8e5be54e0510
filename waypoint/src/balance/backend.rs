//! [`Backend`]: the endpoint table of one (service, subset), its policy, and the guards that
//! keep in-flight, pending and connection counts.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use ambit_core::meshconfig::backend::BackendPolicySpec;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::budget::RetryBudget;
use super::clock::{Clock, SystemClock};
use super::lb::{Settings, Slot, State};
use super::stats::{BackendStats, MAX_CONNECTIONS, MAX_PENDING_REQUESTS, MAX_REQUESTS};
use super::{Endpoint, Outcome, Unavailable};

/// Knobs tests and benchmarks change; the defaults are Linkerd's.
#[derive(Clone)]
pub struct BackendOptions {
    pub clock: Arc<dyn Clock>,
    /// Seed for the balancer's RNG; `None` seeds from the OS.
    pub seed: Option<u64>,
    /// Latency assumed for an endpoint never heard from.
    pub default_rtt: Duration,
    /// Peak-EWMA time constant.
    pub decay: Duration,
    /// Latency recorded, at least, for a connect failure, reset or timeout.
    pub failure_penalty: Duration,
}

impl Default for BackendOptions {
    fn default() -> Self {
        BackendOptions {
            clock: Arc::new(SystemClock),
            seed: None,
            default_rtt: Duration::from_millis(30),
            decay: Duration::from_secs(10),
            failure_penalty: Duration::from_secs(1),
        }
    }
}

/// The endpoints of one (service, subset) and what the BackendPolicy says about them.
pub struct Backend {
    shared: Arc<Shared>,
}

pub(crate) struct Shared {
    name: String,
    opts: BackendOptions,
    state: Mutex<State>,
    stats: BackendStats,
    budget: RetryBudget,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Backend").field("name", &self.name).finish()
    }
}

impl std::fmt::Debug for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.shared.fmt(f)
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Backend {
    pub fn new(name: String, policy: Option<BackendPolicySpec>) -> Arc<Backend> {
        Self::with_options(name, policy, BackendOptions::default())
    }

    pub fn with_options(
        name: String,
        policy: Option<BackendPolicySpec>,
        opts: BackendOptions,
    ) -> Arc<Backend> {
        let mut rng = match opts.seed {
            Some(seed) => StdRng::seed_from_u64(seed),
            None => StdRng::from_entropy(),
        };
        let now = opts.clock.now();
        let budget = RetryBudget::new(
            policy.as_ref().and_then(|p| p.retry_budget.as_ref()),
            opts.clock.clone(),
        );
        let state = State {
            settings: Settings::from_policy(policy),
            slots: Vec::new(),
            by_id: HashMap::new(),
            ring: Default::default(),
            next_id: 0,
            rr_next: rng.gen(),
            rng,
            in_flight: 0,
            pending: 0,
            connections: 0,
            last_tick: now,
        };
        Arc::new(Backend {
            shared: Arc::new(Shared {
                name,
                opts,
                state: Mutex::new(state),
                stats: BackendStats::default(),
                budget,
            }),
        })
    }

    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// Replaces the endpoint list. Endpoints that stay (same workload and address) keep their
    /// latency estimate, in-flight count and ejection state; duplicates are ignored. If the
    /// list shrank below what the ejected endpoints may be, the ones due back soonest return.
    pub fn set_endpoints(&self, endpoints: Vec<Endpoint>) {
        let now = self.shared.opts.clock.now();
        let mut st = self.shared.lock();
        st.sweep(now);
        let mut old: HashMap<String, Slot> =
            st.slots.drain(..).map(|s| (s.key.clone(), s)).collect();
        let mut slots: Vec<Slot> = Vec::with_capacity(endpoints.len());
        let mut seen = HashSet::with_capacity(endpoints.len());
        for endpoint in endpoints {
            let key = format!("{}|{}", endpoint.workload, endpoint.addr);
            if !seen.insert(key.clone()) {
                continue;
            }
            let slot = match old.remove(&key) {
                Some(mut s) => {
                    s.endpoint = endpoint;
                    s
                }
                None => {
                    st.next_id += 1;
                    Slot::new(st.next_id, key, endpoint, self.shared.opts.default_rtt, now)
                }
            };
            slots.push(slot);
        }
        st.install(slots);
        st.enforce_ejection_cap(now);
        tracing::debug!(backend = %self.shared.name, endpoints = st.slots.len(), "endpoints updated");
    }

    /// Applies a new (or no) BackendPolicy. Turning outlier detection off returns every
    /// ejected endpoint; lowering `maxEjectionPercent` returns the ones due back soonest.
    pub fn set_policy(&self, policy: Option<BackendPolicySpec>) {
        self.shared
            .budget
            .reconfigure(policy.as_ref().and_then(|p| p.retry_budget.as_ref()));
        let now = self.shared.opts.clock.now();
        let mut st = self.shared.lock();
        st.sweep(now);
        st.settings = Settings::from_policy(policy);
        if st.settings.outlier.is_none() {
            st.slots.iter_mut().for_each(|s| s.outlier.reset());
        }
        st.enforce_ejection_cap(now);
    }

    /// Admission (circuit breaker limits) + endpoint choice (LB, skipping ejected endpoints).
    pub fn pick(&self, hash_key: Option<&[u8]>) -> Result<Pick, Unavailable> {
        self.pick_avoiding(hash_key, &[])
    }

    /// [`Backend::pick`] for a retry: endpoints in `avoid` (tried already) are not chosen
    /// while another usable endpoint exists.
    pub fn pick_avoiding(
        &self,
        hash_key: Option<&[u8]>,
        avoid: &[std::net::SocketAddr],
    ) -> Result<Pick, Unavailable> {
        let now = self.shared.opts.clock.now();
        let mut st = self.shared.lock();
        if st.in_flight >= st.settings.max_requests {
            self.shared.stats.overflow(MAX_REQUESTS);
            return Err(Unavailable::Overflow(MAX_REQUESTS));
        }
        st.sweep(now);
        let Some(i) = st.choose(hash_key, avoid, now, self.shared.opts.decay) else {
            self.shared.stats.no_healthy();
            return Err(Unavailable::NoHealthyUpstream);
        };
        st.in_flight += 1;
        let slot = &mut st.slots[i];
        slot.in_flight += 1;
        Ok(Pick {
            endpoint: slot.endpoint.clone(),
            guard: RequestGuard {
                shared: self.shared.clone(),
                id: slot.id,
                started: now,
                outcome: None,
            },
        })
    }

    /// Counts one upstream connection for `maxConnections`; hold the guard as long as the
    /// connection is open.
    pub fn connection_guard(&self) -> Result<ConnectionGuard, Unavailable> {
        let mut st = self.shared.lock();
        if st.connections >= st.settings.max_connections {
            self.shared.stats.overflow(MAX_CONNECTIONS);
            return Err(Unavailable::Overflow(MAX_CONNECTIONS));
        }
        st.connections += 1;
        Ok(ConnectionGuard {
            shared: self.shared.clone(),
        })
    }

    /// Counts one request waiting for a connection for `maxPendingRequests`; hold the guard
    /// while it waits.
    pub fn pending_guard(&self) -> Result<PendingGuard, Unavailable> {
        let mut st = self.shared.lock();
        if st.pending >= st.settings.max_pending {
            self.shared.stats.overflow(MAX_PENDING_REQUESTS);
            return Err(Unavailable::Overflow(MAX_PENDING_REQUESTS));
        }
        st.pending += 1;
        Ok(PendingGuard {
            shared: self.shared.clone(),
        })
    }

    pub fn retry_budget(&self) -> &RetryBudget {
        &self.shared.budget
    }

    pub fn stats(&self) -> &BackendStats {
        &self.shared.stats
    }

    /// The request header to hash, for `ConsistentHash` policies.
    pub fn hash_header(&self) -> Option<String> {
        self.shared.lock().settings.hash_header.clone()
    }

    /// Deadline for opening an upstream connection.
    pub fn connect_timeout(&self) -> Duration {
        self.shared.lock().settings.connect_timeout
    }

    /// (requests in flight, requests pending, connections).
    pub fn load(&self) -> (u32, u32, u32) {
        let st = self.shared.lock();
        (st.in_flight, st.pending, st.connections)
    }

    /// Endpoints currently ejected, for metrics and the admin page.
    pub fn ejected(&self) -> Vec<EndpointStatus> {
        self.endpoints()
            .into_iter()
            .filter(|e| e.ejected_for.is_some())
            .collect()
    }

    /// Every endpoint with its balancing and ejection state.
    pub fn endpoints(&self) -> Vec<EndpointStatus> {
        let now = self.shared.opts.clock.now();
        let mut st = self.shared.lock();
        st.sweep(now);
        let decay = self.shared.opts.decay;
        st.slots
            .iter_mut()
            .map(|s| EndpointStatus {
                endpoint: s.endpoint.clone(),
                in_flight: s.in_flight,
                latency_estimate: Duration::from_nanos(s.ewma.get(now, decay) as u64),
                ejected_for: s.outlier.ejected_until.map(|u| u - now),
                times_ejected: s.outlier.times_ejected,
            })
            .collect()
    }
}

/// One endpoint's state, as shown by [`Backend::endpoints`].
#[derive(Clone, Debug, PartialEq)]
pub struct EndpointStatus {
    pub endpoint: Endpoint,
    pub in_flight: u32,
    pub latency_estimate: Duration,
    /// Time left in the current ejection, if ejected.
    pub ejected_for: Option<Duration>,
    /// The ejection multiplier (decays while healthy).
    pub times_ejected: u32,
}

/// A chosen endpoint plus the guard that counts the request as in flight.
#[derive(Debug)]
pub struct Pick {
    pub endpoint: Endpoint,
    guard: RequestGuard,
}

impl Pick {
    /// Reports how the request ended (feeds latency estimates and outlier detection).
    pub fn finish(self, outcome: Outcome) {
        self.guard.finish(outcome);
    }

    /// Splits off the endpoint, for callers that need to own it.
    pub fn into_parts(self) -> (Endpoint, RequestGuard) {
        (self.endpoint, self.guard)
    }
}

/// Counts a request in flight until finished or dropped (dropped = cancelled: no latency
/// sample, no outlier verdict).
#[derive(Debug)]
pub struct RequestGuard {
    shared: Arc<Shared>,
    id: u64,
    started: Instant,
    outcome: Option<Outcome>,
}

impl RequestGuard {
    pub fn finish(mut self, outcome: Outcome) {
        self.outcome = Some(outcome);
    }
}

impl Drop for RequestGuard {
    fn drop(&mut self) {
        let sh = &self.shared;
        let now = sh.opts.clock.now();
        let mut st = sh.lock();
        st.in_flight = st.in_flight.saturating_sub(1);
        st.sweep(now);
        let Some(&i) = st.by_id.get(&self.id) else {
            return; // the endpoint was removed meanwhile
        };
        st.slots[i].in_flight = st.slots[i].in_flight.saturating_sub(1);
        let Some(outcome) = self.outcome.take() else {
            return;
        };
        let rtt = match outcome {
            Outcome::Response { latency, .. } => latency,
            _ => now
                .saturating_duration_since(self.started)
                .max(sh.opts.failure_penalty),
        };
        st.slots[i].ewma.observe(rtt, now, sh.opts.decay);
        if let Some(d) = st.record_outlier(i, &outcome, now) {
            match d {
                Ok(for_) => {
                    sh.stats.ejected();
                    tracing::info!(backend = %sh.name, endpoint = %st.slots[i].endpoint.addr,
                        workload = %st.slots[i].endpoint.workload, duration = ?for_, "endpoint ejected");
                }
                Err(()) => {
                    sh.stats.ejection_refused();
                    tracing::debug!(backend = %sh.name, endpoint = %st.slots[i].endpoint.addr,
                        "ejection refused: maxEjectionPercent reached");
                }
            }
        }
    }
}

/// One upstream connection, counted for `maxConnections` until dropped.
#[derive(Debug)]
pub struct ConnectionGuard {
    shared: Arc<Shared>,
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        let mut st = self.shared.lock();
        st.connections = st.connections.saturating_sub(1);
    }
}

/// One request waiting for a connection, counted for `maxPendingRequests` until dropped.
#[derive(Debug)]
pub struct PendingGuard {
    shared: Arc<Shared>,
}

impl Drop for PendingGuard {
    fn drop(&mut self) {
        let mut st = self.shared.lock();
        st.pending = st.pending.saturating_sub(1);
    }
}
