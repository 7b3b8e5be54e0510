//! Retry decisions: which failures are retried, and the exponential backoff with full jitter
//! between tries (Envoy's defaults: 25 ms base, 10× base ceiling).

use std::time::Duration;

use ambit_core::meshconfig::route::RetrySpec;
use rand::Rng;

const DEFAULT_BASE: Duration = Duration::from_millis(25);

/// How one try ended, as far as retrying is concerned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Failure {
    Status(u16),
    ConnectFailure,
    Reset,
    /// The per-try timeout fired.
    Timeout,
}

#[derive(Clone, Debug)]
pub struct RetryPolicy {
    /// Total tries, the first included.
    pub attempts: u32,
    pub per_try_timeout: Option<Duration>,
    on_5xx: bool,
    on_gateway: bool,
    on_connect: bool,
    on_reset: bool,
    codes: Vec<u16>,
    base: Duration,
    max: Duration,
}

impl RetryPolicy {
    /// No spec: one try, no retries.
    pub fn new(spec: Option<&RetrySpec>) -> Self {
        let Some(s) = spec else {
            return Self {
                attempts: 1,
                per_try_timeout: None,
                on_5xx: false,
                on_gateway: false,
                on_connect: false,
                on_reset: false,
                codes: vec![],
                base: DEFAULT_BASE,
                max: DEFAULT_BASE * 10,
            };
        };
        let has = |c: &str| s.retry_on.iter().any(|x| x == c);
        let base = s.backoff.as_ref().map_or(DEFAULT_BASE, |b| b.base_interval);
        let max = s
            .backoff
            .as_ref()
            .and_then(|b| b.max_interval)
            .unwrap_or(base * 10);
        Self {
            attempts: s.attempts.max(1),
            per_try_timeout: s.per_try_timeout,
            on_5xx: has("5xx"),
            on_gateway: has("gateway-error"),
            on_connect: has("connect-failure"),
            on_reset: has("reset"),
            codes: if has("retriable-status-codes") {
                s.retriable_status_codes.clone()
            } else {
                vec![]
            },
            base,
            max,
        }
    }

    pub fn retryable(&self, f: Failure) -> bool {
        match f {
            Failure::Status(s) => {
                (self.on_5xx && (500..600).contains(&s))
                    || (self.on_gateway && matches!(s, 502..=504))
                    || self.codes.contains(&s)
            }
            // `5xx` covers connect failures and resets too, as in Envoy.
            Failure::ConnectFailure => self.on_connect || self.on_5xx || self.on_gateway,
            Failure::Reset => self.on_reset || self.on_5xx,
            // A per-try timeout is retried whenever retries are configured, as in Envoy.
            Failure::Timeout => self.attempts > 1,
        }
    }

    /// Wait before retry number `n` (1 for the first retry): uniform in [0, min(max, base·2ⁿ⁻¹)].
    pub fn backoff(&self, n: u32, rng: &mut impl Rng) -> Duration {
        let ceiling = self
            .base
            .saturating_mul(1u32 << (n.saturating_sub(1)).min(20))
            .min(self.max);
        ceiling.mul_f64(rng.gen::<f64>())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(json: &str) -> RetryPolicy {
        RetryPolicy::new(Some(&serde_json::from_str(json).unwrap()))
    }

    #[test]
    fn conditions() {
        let p = policy(r#"{"attempts": 3, "retryOn": ["gateway-error"]}"#);
        assert!(p.retryable(Failure::Status(503)) && !p.retryable(Failure::Status(500)));
        assert!(p.retryable(Failure::ConnectFailure) && !p.retryable(Failure::Reset));
        let p = policy(
            r#"{"attempts": 3, "retryOn": ["retriable-status-codes"], "retriableStatusCodes": [409]}"#,
        );
        assert!(p.retryable(Failure::Status(409)) && !p.retryable(Failure::Status(503)));
        let p = policy(r#"{"attempts": 2, "retryOn": ["5xx"]}"#);
        assert!(p.retryable(Failure::Status(500)) && p.retryable(Failure::Reset));
        assert!(!p.retryable(Failure::Status(404)));
        let none = RetryPolicy::new(None);
        assert_eq!(none.attempts, 1);
        assert!(!none.retryable(Failure::Timeout));
    }

    #[test]
    fn backoff_is_capped_full_jitter() {
        let p = policy(
            r#"{"attempts": 5, "backoff": {"baseInterval": "10ms", "maxInterval": "40ms"}}"#,
        );
        let mut rng = rand::thread_rng();
        for n in 1..8 {
            let cap = Duration::from_millis((10u64 << (n - 1)).min(40));
            let waits: Vec<_> = (0..200).map(|_| p.backoff(n, &mut rng)).collect();
            assert!(waits.iter().all(|w| *w <= cap), "retry {n}");
            // Full jitter: waits spread over the range, some in its lower half.
            assert!(waits.iter().any(|w| *w < cap / 2) && waits.iter().any(|w| *w > cap / 2));
        }
    }
}
