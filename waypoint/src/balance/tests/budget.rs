use std::sync::Arc;

use ambit_core::meshconfig::backend::RetryBudgetSpec;
use proptest::prelude::*;

use super::*;
use crate::balance::RetryBudget;

fn budget(pct: u32, min: u32, ttl: Duration) -> (RetryBudget, FakeClock) {
    let clock = FakeClock::new();
    let spec = RetryBudgetSpec {
        percent_can_retry: pct,
        min_retries_per_second: min,
        ttl,
    };
    (
        RetryBudget::new(Some(&spec), Arc::new(clock.clone())),
        clock,
    )
}

#[test]
fn with_every_attempt_failing_retries_stay_within_the_budget() {
    // Defaults: 20%, 10/s, 10 s. Each request retries up to 3 times, every attempt failing.
    let (b, _) = backend(None, eps(2));
    let budget = b.retry_budget();
    let requests = 1000u64;
    let mut attempts = 0u64;
    for _ in 0..requests {
        budget.on_request();
        attempts += 1;
        for _ in 0..3 {
            if !budget.try_retry() {
                break;
            }
            attempts += 1;
        }
    }
    let bound = requests + requests * 20 / 100 + 10 * 10;
    assert!(attempts <= bound, "{attempts} attempts > {bound}");
    // And the budget is actually usable: the whole allowance was spent.
    assert_eq!(attempts, bound);
    assert_eq!(budget.retries_total(), 300);
    assert!(budget.exhausted_total() > 0);
}

#[test]
fn min_retries_per_second_lets_idle_services_retry() {
    let (b, _) = budget(20, 10, secs(10));
    let granted = (0..200).filter(|_| b.try_retry()).count();
    assert_eq!(granted, 100, "10/s × 10 s with no requests at all");
    let (none, _) = budget(20, 0, secs(10));
    assert!(!none.try_retry());
}

#[test]
fn budget_refills_as_the_window_slides() {
    let (b, clock) = budget(0, 10, secs(10));
    // Spend half the allowance at t=0 and half at t=5.
    assert_eq!((0..50).filter(|_| b.try_retry()).count(), 50);
    clock.advance(secs(5));
    assert_eq!((0..80).filter(|_| b.try_retry()).count(), 50);
    assert!(!b.try_retry());
    // At t=10.5 only the t=0 retries have left the window (a reset-every-ttl counter would
    // allow 100 here).
    clock.advance(Duration::from_millis(5500));
    assert_eq!((0..80).filter(|_| b.try_retry()).count(), 50);
    // Long idle: everything is back.
    clock.advance(secs(60));
    assert_eq!((0..200).filter(|_| b.try_retry()).count(), 100);
}

#[test]
fn requests_raise_the_budget_and_reconfigure_applies() {
    let (b, clock) = budget(50, 0, secs(10));
    assert!(!b.try_retry());
    for _ in 0..10 {
        b.on_request();
    }
    assert_eq!((0..20).filter(|_| b.try_retry()).count(), 5);
    b.reconfigure(Some(&RetryBudgetSpec {
        percent_can_retry: 100,
        min_retries_per_second: 0,
        ttl: secs(10),
    }));
    assert_eq!((0..20).filter(|_| b.try_retry()).count(), 5, "counts kept");
    clock.advance(secs(11));
    assert!(!b.try_retry(), "requests aged out too");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// For every stretch of 0.9 × ttl, the retries granted in it never exceed pct% of the
    /// requests from one ttl before it to its end, plus min × ttl. (The budget's own window is
    /// 9 to 10 buckets of ttl / 10; when the last retry in the stretch was granted, the window
    /// held every retry of the stretch and only requests from that range.)
    #[test]
    fn retries_never_exceed_the_budget_in_any_window(
        pct in 0u32..=100,
        min in 0u32..5,
        steps in proptest::collection::vec((0u64..300, 0u32..20, 0u32..20), 1..60),
    ) {
        let ttl = secs(1);
        let (b, clock) = budget(pct, min, ttl);
        let mut now = 0u64; // ms
        let (mut requests, mut retries) = (Vec::new(), Vec::new());
        for (advance, reqs, tries) in steps {
            now += advance;
            clock.advance(Duration::from_millis(advance));
            for _ in 0..reqs {
                b.on_request();
                requests.push(now);
            }
            for _ in 0..tries {
                if b.try_retry() {
                    retries.push(now);
                }
            }
        }
        let count = |v: &[u64], from: i64, to: i64| {
            v.iter().filter(|&&t| t as i64 >= from && t as i64 <= to).count() as f64
        };
        for &start in requests.iter().chain(&retries) {
            let start = start as i64;
            let granted = count(&retries, start, start + 899);
            let base = count(&requests, start - 1000, start + 899);
            let allowed = base * f64::from(pct) / 100.0 + f64::from(min) * ttl.as_secs_f64();
            prop_assert!(granted <= allowed + 1e-9, "at {}: {} > {}", start, granted, allowed);
        }
    }
}
