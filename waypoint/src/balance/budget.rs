//! Retry budget (Linkerd / Finagle style): retries may add `percentCanRetry`% of the requests
//! seen in the last `ttl`, plus a floor of `minRetriesPerSecond × ttl` so low-traffic services can
//! still retry. Counts live in a sliding window of `BUCKETS` buckets, so the window moves
//! smoothly instead of resetting every `ttl` (which would allow a burst of retries right after
//! each reset).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ambit_core::meshconfig::backend::RetryBudgetSpec;

use super::clock::Clock;

const BUCKETS: usize = 10;

pub struct RetryBudget {
    clock: Arc<dyn Clock>,
    window: Mutex<Window>,
    retries: AtomicU64,
    exhausted: AtomicU64,
}

#[derive(Clone, Copy, Default)]
struct Bucket {
    /// Which bucket-width slice of time since `epoch` these counts belong to.
    index: u64,
    requests: u64,
    retries: u64,
}

struct Window {
    spec: RetryBudgetSpec,
    epoch: Instant,
    width: Duration,
    buckets: [Bucket; BUCKETS],
}

impl Window {
    fn new(spec: RetryBudgetSpec, now: Instant) -> Self {
        Window {
            width: (spec.ttl / BUCKETS as u32).max(Duration::from_millis(1)),
            spec,
            epoch: now,
            buckets: [Bucket::default(); BUCKETS],
        }
    }

    /// The bucket for `now`, cleared if it last held an older slice.
    fn current(&mut self, now: Instant) -> &mut Bucket {
        let index = self.index(now);
        let b = &mut self.buckets[(index % BUCKETS as u64) as usize];
        if b.index != index {
            *b = Bucket {
                index,
                ..Bucket::default()
            };
        }
        b
    }

    fn index(&self, now: Instant) -> u64 {
        let since = now.saturating_duration_since(self.epoch).as_nanos();
        (since / self.width.as_nanos()) as u64
    }

    /// (requests, retries) over the last ttl.
    fn totals(&self, now: Instant) -> (u64, u64) {
        let cur = self.index(now);
        self.buckets
            .iter()
            .filter(|b| b.index + (BUCKETS as u64) > cur && b.index <= cur)
            .fold((0, 0), |(q, r), b| (q + b.requests, r + b.retries))
    }

    fn allowed(&self, requests: u64, retries: u64) -> bool {
        let budget = requests as f64 * f64::from(self.spec.percent_can_retry) / 100.0
            + f64::from(self.spec.min_retries_per_second) * self.spec.ttl.as_secs_f64();
        (retries + 1) as f64 <= budget + 1e-9
    }
}

impl RetryBudget {
    /// `None` gets Linkerd's defaults (20%, 10/s, 10s).
    pub fn new(spec: Option<&RetryBudgetSpec>, clock: Arc<dyn Clock>) -> Self {
        let window = Window::new(spec.cloned().unwrap_or_default(), clock.now());
        RetryBudget {
            clock,
            window: Mutex::new(window),
            retries: AtomicU64::new(0),
            exhausted: AtomicU64::new(0),
        }
    }

    /// Counts one original request (call once per request, not per retry).
    pub fn on_request(&self) {
        let now = self.clock.now();
        self.lock().current(now).requests += 1;
    }

    /// Whether one more retry fits the budget; if so it is counted, so call this only when
    /// about to retry.
    pub fn try_retry(&self) -> bool {
        let now = self.clock.now();
        let mut w = self.lock();
        let (requests, retries) = w.totals(now);
        if w.allowed(requests, retries) {
            w.current(now).retries += 1;
            self.retries.fetch_add(1, Ordering::Relaxed);
            true
        } else {
            self.exhausted.fetch_add(1, Ordering::Relaxed);
            false
        }
    }

    /// Retries granted since creation.
    pub fn retries_total(&self) -> u64 {
        self.retries.load(Ordering::Relaxed)
    }

    /// Retries refused because the budget was spent.
    pub fn exhausted_total(&self) -> u64 {
        self.exhausted.load(Ordering::Relaxed)
    }

    /// Applies a new policy. Counts are kept unless the window length changed.
    pub(crate) fn reconfigure(&self, spec: Option<&RetryBudgetSpec>) {
        let spec = spec.cloned().unwrap_or_default();
        let now = self.clock.now();
        let mut w = self.lock();
        if w.spec.ttl == spec.ttl {
            w.spec = spec;
        } else {
            *w = Window::new(spec, now);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Window> {
        self.window.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl std::fmt::Debug for RetryBudget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let w = self.lock();
        f.debug_struct("RetryBudget")
            .field("spec", &w.spec)
            .field("retries", &self.retries_total())
            .field("exhausted", &self.exhausted_total())
            .finish()
    }
}
