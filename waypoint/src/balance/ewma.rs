//! Peak-EWMA latency estimate, as in Finagle and Linkerd (tower's `PeakEwma`).
//!
//! A sample above the current estimate replaces it at once (so a slowing endpoint is avoided
//! immediately); lower samples pull it down exponentially with time constant `tau`. Reading the
//! estimate also decays it toward zero with the same time constant: an endpoint that stopped
//! getting traffic because it looked slow becomes attractive again after a while and is probed,
//! instead of being shunned forever on a stale peak.

use std::time::{Duration, Instant};

#[derive(Clone, Debug)]
pub(crate) struct PeakEwma {
    /// Nanoseconds.
    estimate: f64,
    updated: Instant,
}

impl PeakEwma {
    pub(crate) fn new(initial: Duration, now: Instant) -> Self {
        PeakEwma {
            estimate: nanos(initial),
            updated: now,
        }
    }

    /// Records one observed latency.
    pub(crate) fn observe(&mut self, rtt: Duration, now: Instant, tau: Duration) {
        self.sample(nanos(rtt), now, tau);
    }

    /// The current estimate, decayed to `now` (nanoseconds).
    pub(crate) fn get(&mut self, now: Instant, tau: Duration) -> f64 {
        self.sample(0.0, now, tau);
        self.estimate
    }

    fn sample(&mut self, rtt: f64, now: Instant, tau: Duration) {
        if rtt > self.estimate {
            self.estimate = rtt;
        } else {
            let elapsed = nanos(now.saturating_duration_since(self.updated));
            let w = (-elapsed / nanos(tau).max(1.0)).exp();
            self.estimate = self.estimate * w + rtt * (1.0 - w);
        }
        self.updated = self.updated.max(now);
    }
}

fn nanos(d: Duration) -> f64 {
    d.as_secs_f64() * 1e9
}

#[cfg(test)]
mod tests {
    use super::*;

    const TAU: Duration = Duration::from_secs(10);
    const MS: f64 = 1e6;

    #[test]
    fn peak_replaces_estimate_immediately() {
        let t0 = Instant::now();
        let mut e = PeakEwma::new(Duration::from_millis(30), t0);
        e.observe(Duration::from_millis(500), t0, TAU);
        assert_eq!(e.get(t0, TAU), 500.0 * MS);
    }

    #[test]
    fn lower_samples_and_idle_time_decay_with_tau() {
        let t0 = Instant::now();
        let mut e = PeakEwma::new(Duration::from_millis(100), t0);
        // One time constant later the estimate has lost ~63% of the way toward the sample.
        e.observe(Duration::from_millis(10), t0 + TAU, TAU);
        let v = e.get(t0 + TAU, TAU) / MS;
        let want = 100.0 * (-1f64).exp() + 10.0 * (1.0 - (-1f64).exp());
        assert!((v - want).abs() < 0.01, "{v} vs {want}");
        // Idle: decays toward zero, so a shunned endpoint is eventually tried again.
        let idle = e.get(t0 + TAU * 4, TAU) / MS;
        assert!((idle - want * (-3f64).exp()).abs() < 0.01, "{idle}");
    }

    #[test]
    fn reading_twice_equals_reading_once() {
        let t0 = Instant::now();
        let mut a = PeakEwma::new(Duration::from_millis(80), t0);
        let mut b = a.clone();
        a.get(t0 + Duration::from_secs(3), TAU);
        let va = a.get(t0 + Duration::from_secs(7), TAU);
        let vb = b.get(t0 + Duration::from_secs(7), TAU);
        assert!((va - vb).abs() < 1.0, "{va} vs {vb}");
    }
}
