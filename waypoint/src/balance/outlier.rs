//! Outlier ejection (Envoy's consecutive-error detectors, configured as in Istio).
//!
//! - A response with status >= 500 counts toward `consecutive5xxErrors`; 502/503/504 also
//!   toward `consecutiveGatewayErrors`. Connect failures, resets and timeouts count toward both
//!   (Envoy maps locally originated failures to 503/504 unless told to split them). Any other
//!   response resets both counters.
//! - Reaching either threshold ejects the endpoint at once for `baseEjectionTime × n`, n being
//!   its ejection multiplier after the increment, capped at max(5m, baseEjectionTime) like
//!   Envoy's `max_ejection_time`. The endpoint returns exactly when that time is up.
//! - At each `interval` tick, an endpoint that has been back for at least the duration of its
//!   last ejection loses one from its multiplier (Envoy's backoff decay), so an endpoint that
//!   fails again soon after returning is ejected for longer, and a recovered one is forgiven.
//!   Ticks are evaluated lazily when the backend is used; the result is the same as a timer.
//! - Ejection is refused (and counted) when it would exceed `maxEjectionPercent`; see
//!   [`max_ejected`].

use std::time::{Duration, Instant};

use ambit_core::meshconfig::backend::OutlierDetectionSpec;

use super::Outcome;

/// Envoy's default `max_ejection_time`.
const MAX_EJECTION_TIME: Duration = Duration::from_secs(300);

#[derive(Clone, Debug, Default)]
pub(crate) struct OutlierState {
    consecutive_5xx: u32,
    consecutive_gateway: u32,
    pub(crate) ejected_until: Option<Instant>,
    /// The ejection multiplier.
    pub(crate) times_ejected: u32,
    returned_at: Option<Instant>,
}

impl OutlierState {
    pub(crate) fn is_ejected(&self) -> bool {
        self.ejected_until.is_some()
    }

    /// Counts an outcome; true when a threshold is reached and the endpoint should be ejected.
    pub(crate) fn record(&mut self, outcome: &Outcome, spec: &OutlierDetectionSpec) -> bool {
        let (is_5xx, is_gateway) = match outcome {
            Outcome::Response { status, .. } => (*status >= 500, matches!(status, 502..=504)),
            Outcome::ConnectFailure | Outcome::Reset | Outcome::Timeout => (true, true),
        };
        self.consecutive_5xx = if is_5xx { self.consecutive_5xx + 1 } else { 0 };
        self.consecutive_gateway = if is_gateway {
            self.consecutive_gateway + 1
        } else {
            0
        };
        let hit = |count: u32, threshold: u32| threshold > 0 && count >= threshold;
        !self.is_ejected()
            && (hit(self.consecutive_5xx, spec.consecutive_5xx_errors)
                || hit(self.consecutive_gateway, spec.consecutive_gateway_errors))
    }

    /// Ejects now; returns how long for.
    pub(crate) fn eject(&mut self, now: Instant, spec: &OutlierDetectionSpec) -> Duration {
        self.times_ejected = self.times_ejected.saturating_add(1);
        let d = ejection_time(spec, self.times_ejected);
        self.ejected_until = Some(now + d);
        self.consecutive_5xx = 0;
        self.consecutive_gateway = 0;
        d
    }

    /// Brings the endpoint back if its time is up, then applies the multiplier decay for the
    /// `ticks` interval ticks after `last_tick`. True if the endpoint returned.
    pub(crate) fn sweep(
        &mut self,
        now: Instant,
        last_tick: Instant,
        ticks: u64,
        spec: &OutlierDetectionSpec,
    ) -> bool {
        let mut returned = false;
        if let Some(until) = self.ejected_until.filter(|&u| u <= now) {
            self.ejected_until = None;
            self.returned_at = Some(until);
            returned = true;
        }
        if let (None, Some(back), true) = (self.ejected_until, self.returned_at, ticks > 0) {
            if self.times_ejected > 0 {
                // Decay starts at the first tick at which it has been back for as long as its
                // last ejection lasted; once true it stays true as the multiplier shrinks.
                let eligible = back + ejection_time(spec, self.times_ejected);
                let first = if eligible <= last_tick {
                    1
                } else {
                    let wait = (eligible - last_tick).as_nanos();
                    wait.div_ceil(spec.interval.as_nanos().max(1)) as u64
                };
                let decays = ticks.saturating_sub(first.saturating_sub(1));
                self.times_ejected = self
                    .times_ejected
                    .saturating_sub(decays.min(u64::from(u32::MAX)) as u32);
            }
        }
        returned
    }

    /// Ends the ejection early (the backend must shed ejections to respect its cap).
    pub(crate) fn return_now(&mut self, now: Instant) {
        if self.ejected_until.take().is_some() {
            self.returned_at = Some(now);
        }
    }

    /// Forgets everything (outlier detection was turned off).
    pub(crate) fn reset(&mut self) {
        *self = OutlierState::default();
    }
}

/// How long the n-th ejection lasts.
pub(crate) fn ejection_time(spec: &OutlierDetectionSpec, times: u32) -> Duration {
    let cap = MAX_EJECTION_TIME.max(spec.base_ejection_time);
    spec.base_ejection_time
        .saturating_mul(times.max(1))
        .min(cap)
}

/// How many of `n` endpoints may be ejected at once: `maxEjectionPercent` of them rounded
/// down, but at least one as in Envoy, and below 100% never all of them (a backend always keeps
/// an endpoint to send to). 0% disables ejection.
pub(crate) fn max_ejected(n: usize, percent: u32) -> usize {
    match percent {
        0 => 0,
        p if p >= 100 => n,
        p => (n * p as usize / 100).max(1).min(n.saturating_sub(1)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn max_ejected_bounds() {
        assert_eq!(max_ejected(10, 10), 1);
        assert_eq!(max_ejected(3, 10), 1, "at least one, as in Envoy");
        assert_eq!(max_ejected(1, 50), 0, "the last endpoint stays below 100%");
        assert_eq!(max_ejected(2, 99), 1);
        assert_eq!(max_ejected(1, 100), 1);
        assert_eq!(max_ejected(10, 55), 5);
        assert_eq!(max_ejected(10, 0), 0);
    }

    #[test]
    fn ejection_time_grows_linearly_and_is_capped() {
        let spec = OutlierDetectionSpec {
            base_ejection_time: Duration::from_secs(30),
            ..OutlierDetectionSpec::default()
        };
        assert_eq!(ejection_time(&spec, 1), Duration::from_secs(30));
        assert_eq!(ejection_time(&spec, 2), Duration::from_secs(60));
        assert_eq!(ejection_time(&spec, 1000), MAX_EJECTION_TIME);
        let long = OutlierDetectionSpec {
            base_ejection_time: Duration::from_secs(600),
            ..spec
        };
        assert_eq!(ejection_time(&long, 3), Duration::from_secs(600));
    }
}
