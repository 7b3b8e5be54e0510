//! The endpoint table and the choice of an endpoint: P2C over peak-EWMA, round robin, random
//! and consistent hash, each skipping ejected endpoints. Everything here runs under the
//! backend's mutex.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use ambit_core::meshconfig::backend::{BackendPolicySpec, LoadBalancerType, OutlierDetectionSpec};
use rand::rngs::StdRng;
use rand::Rng;

use super::ewma::PeakEwma;
use super::outlier::{max_ejected, OutlierState};
use super::ring::Ring;
use super::{Endpoint, Outcome};

/// The policy, flattened for the hot path.
pub(crate) struct Settings {
    pub(crate) lb: LoadBalancerType,
    pub(crate) hash_header: Option<String>,
    pub(crate) max_connections: u32,
    pub(crate) max_pending: u32,
    pub(crate) max_requests: u32,
    pub(crate) connect_timeout: Duration,
    pub(crate) outlier: Option<OutlierDetectionSpec>,
}

impl Settings {
    pub(crate) fn from_policy(policy: Option<BackendPolicySpec>) -> Settings {
        let (lb, pool, outlier) = match policy {
            Some(p) => (p.load_balancer, p.connection_pool, p.outlier_detection),
            None => (Default::default(), None, None),
        };
        let pool = pool.unwrap_or_default();
        Settings {
            lb: lb.kind,
            hash_header: match lb.kind {
                LoadBalancerType::ConsistentHash => lb.hash_header,
                _ => None,
            },
            max_connections: pool.max_connections.unwrap_or(u32::MAX),
            max_pending: pool.max_pending_requests.unwrap_or(u32::MAX),
            max_requests: pool.max_requests.unwrap_or(u32::MAX),
            connect_timeout: pool.connect_timeout,
            outlier,
        }
    }
}

pub(crate) struct Slot {
    pub(crate) id: u64,
    /// `workload|addr`: what identifies an endpoint across updates and places it on the ring.
    pub(crate) key: String,
    pub(crate) endpoint: Endpoint,
    pub(crate) in_flight: u32,
    pub(crate) ewma: PeakEwma,
    pub(crate) outlier: OutlierState,
}

impl Slot {
    pub(crate) fn new(
        id: u64,
        key: String,
        endpoint: Endpoint,
        rtt: Duration,
        now: Instant,
    ) -> Self {
        Slot {
            id,
            key,
            endpoint,
            in_flight: 0,
            ewma: PeakEwma::new(rtt, now),
            outlier: OutlierState::default(),
        }
    }
}

pub(crate) struct State {
    pub(crate) settings: Settings,
    pub(crate) slots: Vec<Slot>,
    pub(crate) by_id: HashMap<u64, usize>,
    pub(crate) ring: Ring,
    pub(crate) next_id: u64,
    pub(crate) rr_next: usize,
    pub(crate) rng: StdRng,
    pub(crate) in_flight: u32,
    pub(crate) pending: u32,
    pub(crate) connections: u32,
    /// The last outlier-detection interval tick that has been applied.
    pub(crate) last_tick: Instant,
}

impl State {
    pub(crate) fn install(&mut self, slots: Vec<Slot>) {
        self.slots = slots;
        self.by_id = self
            .slots
            .iter()
            .enumerate()
            .map(|(i, s)| (s.id, i))
            .collect();
        self.ring = Ring::build(self.slots.iter().map(|s| s.key.as_str()));
    }

    /// Returns endpoints whose ejection is over and applies the interval ticks up to `now`.
    pub(crate) fn sweep(&mut self, now: Instant) {
        let Some(spec) = &self.settings.outlier else {
            self.last_tick = now;
            return;
        };
        let interval = spec.interval.as_nanos().max(1);
        let elapsed = now.saturating_duration_since(self.last_tick).as_nanos();
        let ticks = (elapsed / interval) as u64;
        for slot in &mut self.slots {
            if slot.outlier.sweep(now, self.last_tick, ticks, spec) {
                tracing::info!(endpoint = %slot.endpoint.addr, workload = %slot.endpoint.workload,
                    "ejected endpoint returned");
            }
        }
        self.last_tick = now - Duration::from_nanos((elapsed % interval) as u64);
    }

    /// After the endpoint list shrank or the policy changed, more endpoints may be ejected than
    /// `maxEjectionPercent` allows; those due back soonest return now, so a backend below 100%
    /// still always has an endpoint to send to.
    pub(crate) fn enforce_ejection_cap(&mut self, now: Instant) {
        let Some(spec) = &self.settings.outlier else {
            return;
        };
        let cap = max_ejected(self.slots.len(), spec.max_ejection_percent);
        let mut ejected: Vec<(Instant, usize)> = (0..self.slots.len())
            .filter_map(|i| self.slots[i].outlier.ejected_until.map(|u| (u, i)))
            .collect();
        if ejected.len() <= cap {
            return;
        }
        ejected.sort();
        for &(_, i) in &ejected[..ejected.len() - cap] {
            self.slots[i].outlier.return_now(now);
            tracing::info!(endpoint = %self.slots[i].endpoint.addr,
                "ejected endpoint returned early: maxEjectionPercent");
        }
    }

    /// Counts an outcome for outlier detection. `Some(Ok(d))`: ejected for `d`;
    /// `Some(Err(()))`: due for ejection but `maxEjectionPercent` refused it.
    pub(crate) fn record_outlier(
        &mut self,
        i: usize,
        outcome: &Outcome,
        now: Instant,
    ) -> Option<Result<Duration, ()>> {
        let spec = self.settings.outlier.as_ref()?;
        if !self.slots[i].outlier.record(outcome, spec) {
            return None;
        }
        let ejected = self.slots.iter().filter(|s| s.outlier.is_ejected()).count();
        if ejected >= max_ejected(self.slots.len(), spec.max_ejection_percent) {
            return Some(Err(()));
        }
        Some(Ok(self.slots[i].outlier.eject(now, spec)))
    }

    /// The index of the endpoint for the next request, or `None` if none is usable. Endpoints
    /// in `avoid` (a retry's previous tries) are skipped like ejected ones while another
    /// usable endpoint exists (Envoy's `previous_hosts` predicate, exact rather than re-picks:
    /// P2C over two endpoints would otherwise keep choosing a fast-failing one).
    pub(crate) fn choose(
        &mut self,
        hash_key: Option<&[u8]>,
        avoid: &[SocketAddr],
        now: Instant,
        decay: Duration,
    ) -> Option<usize> {
        let n = self.slots.len();
        let avoided = |s: &Slot| avoid.contains(&s.endpoint.addr);
        let avoiding = !avoid.is_empty()
            && self
                .slots
                .iter()
                .any(|s| !s.outlier.is_ejected() && !avoided(s));
        let skip = |s: &Slot| s.outlier.is_ejected() || (avoiding && avoided(s));
        let skipped = self.slots.iter().filter(|s| skip(s)).count();
        let usable = n - skipped;
        if usable == 0 {
            return None;
        }
        // k-th usable endpoint; the common case (nothing skipped) is a plain index.
        let nth = |slots: &[Slot], k: usize| -> usize {
            if skipped == 0 {
                k
            } else {
                (0..slots.len())
                    .filter(|&i| !skip(&slots[i]))
                    .nth(k)
                    .unwrap_or(0)
            }
        };
        match (self.settings.lb, hash_key) {
            (LoadBalancerType::RoundRobin, _) => {
                let start = self.rr_next % n;
                let i = (0..n)
                    .map(|k| (start + k) % n)
                    .find(|&i| !skip(&self.slots[i]))?;
                self.rr_next = i + 1;
                Some(i)
            }
            (LoadBalancerType::ConsistentHash, Some(key)) => {
                let slots = &self.slots;
                self.ring.lookup(key, |i| !skip(&slots[i]))
            }
            (LoadBalancerType::Random | LoadBalancerType::ConsistentHash, _) => {
                let k = self.rng.gen_range(0..usable);
                Some(nth(&self.slots, k))
            }
            (LoadBalancerType::LeastRequest, _) => {
                if usable == 1 {
                    return Some(nth(&self.slots, 0));
                }
                let a = self.rng.gen_range(0..usable);
                let mut b = self.rng.gen_range(0..usable - 1);
                if b >= a {
                    b += 1;
                }
                let (a, b) = (nth(&self.slots, a), nth(&self.slots, b));
                let ca = self.cost(a, now, decay);
                let cb = self.cost(b, now, decay);
                Some(if cb < ca { b } else { a })
            }
        }
    }

    /// Linkerd's load: latency estimate × (outstanding requests + 1).
    fn cost(&mut self, i: usize, now: Instant, decay: Duration) -> f64 {
        let s = &mut self.slots[i];
        s.ewma.get(now, decay) * f64::from(s.in_flight + 1)
    }
}
