//! Exact percentiles over recorded samples (a benchmark phase records at most a few hundred
//! thousand of them, so sorting beats approximating).

use serde::Serialize;

/// Latency distribution in microseconds.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Percentiles {
    pub p50_us: f64,
    pub p90_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
    pub max_us: f64,
}

/// Nearest-rank percentile (`q` in 0..=1) of sorted nanosecond samples, in microseconds.
fn rank(sorted: &[u64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let idx = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len()) - 1;
    us(sorted[idx])
}

/// Nanoseconds to microseconds, rounded to 0.1 µs.
fn us(ns: u64) -> f64 {
    (ns as f64 / 100.0).round() / 10.0
}

/// Sorts `samples_ns` in place and summarises it.
pub fn percentiles(samples_ns: &mut [u64]) -> Percentiles {
    samples_ns.sort_unstable();
    Percentiles {
        p50_us: rank(samples_ns, 0.50),
        p90_us: rank(samples_ns, 0.90),
        p99_us: rank(samples_ns, 0.99),
        p999_us: rank(samples_ns, 0.999),
        max_us: samples_ns.last().map(|&m| us(m)).unwrap_or(0.0),
    }
}

/// Rounds to `digits` decimals (keeps the JSON readable).
pub fn round(x: f64, digits: i32) -> f64 {
    let f = 10f64.powi(digits);
    (x * f).round() / f
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank() {
        let mut v: Vec<u64> = (1..=1000).rev().map(|i| i * 1000).collect();
        let p = percentiles(&mut v);
        assert_eq!(p.p50_us, 500.0);
        assert_eq!(p.p90_us, 900.0);
        assert_eq!(p.p99_us, 990.0);
        assert_eq!(p.p999_us, 999.0);
        assert_eq!(p.max_us, 1000.0);
        let mut one = vec![1500u64];
        assert_eq!(percentiles(&mut one).p999_us, 1.5);
        assert_eq!(percentiles(&mut []).max_us, 0.0);
    }

    #[test]
    fn rounding() {
        assert_eq!(round(1.23456, 2), 1.23);
    }
}
