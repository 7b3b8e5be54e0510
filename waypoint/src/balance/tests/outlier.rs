use ambit_core::meshconfig::backend::LoadBalancerType::{self, *};
use ambit_core::meshconfig::backend::OutlierDetectionSpec;

use super::*;
use crate::balance::Unavailable;

fn od(c5xx: u32, gateway: u32, max_pct: u32) -> OutlierDetectionSpec {
    OutlierDetectionSpec {
        consecutive_5xx_errors: c5xx,
        consecutive_gateway_errors: gateway,
        interval: secs(5),
        base_ejection_time: secs(30),
        max_ejection_percent: max_pct,
    }
}

fn fail(b: &Backend, target: &Endpoint, times: usize, outcome: Outcome) {
    for _ in 0..times {
        pick_endpoint(b, target).finish(outcome);
    }
}

fn ejected_for(b: &Backend, target: &Endpoint) -> Option<Duration> {
    b.ejected()
        .into_iter()
        .find(|s| &s.endpoint == target)
        .and_then(|s| s.ejected_for)
}

fn never_picked(b: &Backend, target: &Endpoint, key: Option<&[u8]>) -> bool {
    (0..200).all(|_| &b.pick(key).unwrap().endpoint != target)
}

#[test]
fn consecutive_5xx_eject_for_base_time_then_double() {
    let (b, clock) = backend(Some(with_outlier(RoundRobin, od(3, 0, 50))), eps(4));
    let a = ep(1);
    fail(&b, &a, 2, respond(500));
    assert!(b.ejected().is_empty());
    fail(&b, &a, 1, respond(503));
    assert_eq!(ejected_for(&b, &a), Some(secs(30)));
    assert_eq!(b.stats().ejections_total(), 1);
    assert!(never_picked(&b, &a, None));

    clock.advance(secs(29));
    assert!(never_picked(&b, &a, None));
    clock.advance(secs(1));
    assert!(b.ejected().is_empty(), "back after exactly the base time");
    // Failing again right away: the second ejection lasts twice as long.
    fail(&b, &a, 3, respond(500));
    assert_eq!(ejected_for(&b, &a), Some(secs(60)));
    assert_eq!(b.ejected()[0].times_ejected, 2);
    clock.advance(secs(60));
    assert!(b.ejected().is_empty());
    pick_endpoint(&b, &a).finish(respond(200));
}

#[test]
fn success_resets_the_consecutive_count() {
    let (b, _) = backend(Some(with_outlier(RoundRobin, od(3, 0, 50))), eps(2));
    let a = ep(1);
    for status in [500, 500, 200, 500, 500, 404, 500, 500] {
        pick_endpoint(&b, &a).finish(respond(status));
    }
    assert!(b.ejected().is_empty());
    fail(&b, &a, 1, respond(500));
    assert!(ejected_for(&b, &a).is_some());
}

#[test]
fn gateway_errors_count_separately() {
    let (b, _) = backend(Some(with_outlier(RoundRobin, od(0, 2, 50))), eps(2));
    let a = ep(1);
    fail(&b, &a, 5, respond(500));
    assert!(b.ejected().is_empty(), "500 is not a gateway error");
    fail(&b, &a, 1, respond(502));
    fail(&b, &a, 1, Outcome::ConnectFailure);
    assert!(ejected_for(&b, &a).is_some());

    for last in [Outcome::Reset, Outcome::Timeout, respond(504)] {
        let (b, _) = backend(Some(with_outlier(RoundRobin, od(0, 2, 50))), eps(2));
        fail(&b, &a, 1, respond(503));
        fail(&b, &a, 1, last);
        assert!(ejected_for(&b, &a).is_some(), "{last:?}");
    }
}

#[test]
fn local_failures_count_as_5xx() {
    let (b, _) = backend(Some(with_outlier(RoundRobin, od(3, 0, 50))), eps(2));
    let a = ep(1);
    fail(&b, &a, 1, Outcome::ConnectFailure);
    fail(&b, &a, 1, Outcome::Reset);
    fail(&b, &a, 1, Outcome::Timeout);
    assert!(ejected_for(&b, &a).is_some());
}

#[test]
fn max_ejection_percent_is_respected() {
    let (b, clock) = backend(Some(with_outlier(RoundRobin, od(1, 0, 50))), eps(4));
    for i in 1..=4 {
        // An ejected endpoint can't be picked, so only try live ones.
        if b.ejected().iter().all(|s| s.endpoint != ep(i)) {
            fail(&b, &ep(i), 1, respond(500));
        }
    }
    assert_eq!(b.ejected().len(), 2);
    assert_eq!(b.stats().ejections_total(), 2);
    assert_eq!(b.stats().ejections_refused_total(), 2);
    // The refused ones are ejected on their next failure once there is room again.
    clock.advance(secs(30));
    assert!(b.ejected().is_empty());
    fail(&b, &ep(3), 1, respond(500));
    assert_eq!(b.ejected().len(), 1);

    // Below 100% the last endpoint always stays; at 100% it can go.
    let (one, _) = backend(Some(with_outlier(RoundRobin, od(1, 0, 99))), eps(1));
    fail(&one, &ep(1), 5, respond(500));
    assert!(one.ejected().is_empty());
    let (one, _) = backend(Some(with_outlier(RoundRobin, od(1, 0, 100))), eps(1));
    fail(&one, &ep(1), 1, respond(500));
    assert_eq!(one.pick(None).unwrap_err(), Unavailable::NoHealthyUpstream);
}

#[test]
fn default_ten_percent_still_ejects_one_of_three() {
    let (b, _) = backend(Some(with_outlier(Random, od(1, 0, 10))), eps(3));
    fail(&b, &ep(2), 1, respond(500));
    fail(&b, &ep(3), 1, respond(500));
    assert_eq!(b.ejected().len(), 1);
}

#[test]
fn multiplier_decays_once_healthy_for_the_ejection_time() {
    // interval 5 s, base 30 s. First ejection (30 s), back at t=30, second ejection at t=30
    // (60 s), back at t=90 with multiplier 2.
    let (b, clock) = backend(Some(with_outlier(RoundRobin, od(1, 0, 50))), eps(2));
    let a = ep(1);
    fail(&b, &a, 1, respond(500));
    clock.advance(secs(30));
    fail(&b, &a, 1, respond(500));
    clock.advance(secs(60));
    assert!(b.ejected().is_empty());
    // Back for 59 s (< 60 s, its last ejection): no decay yet, a failure now means 3 × 30 s.
    clock.advance(secs(59));
    let snapshot = b.endpoints();
    assert_eq!(snapshot[0].times_ejected, 2);
    // At the first interval tick >= 60 s back (t=150) one is forgiven, at the next (t=155) the
    // other.
    clock.advance(secs(1));
    assert_eq!(b.endpoints()[0].times_ejected, 1);
    clock.advance(secs(5));
    assert_eq!(b.endpoints()[0].times_ejected, 0);
    fail(&b, &a, 1, respond(500));
    assert_eq!(ejected_for(&b, &a), Some(secs(30)));
}

#[test]
fn lazy_sweep_equals_a_timer() {
    // The same history observed every second or only at the end gives the same multiplier.
    let run = |observe_every_second: bool, seconds: u64| {
        let (b, clock) = backend(Some(with_outlier(RoundRobin, od(1, 0, 50))), eps(2));
        fail(&b, &ep(1), 1, respond(500));
        clock.advance(secs(30));
        fail(&b, &ep(1), 1, respond(500));
        for _ in 0..seconds {
            clock.advance(secs(1));
            if observe_every_second {
                b.endpoints();
            }
        }
        b.endpoints()[0].times_ejected
    };
    // Back at t=90; decays at the ticks t=150 and t=155.
    for (seconds, want) in [(50, 2), (119, 2), (122, 1), (150, 0)] {
        assert_eq!(run(true, seconds), want, "observed, t={}", 30 + seconds);
        assert_eq!(run(false, seconds), want, "lazy, t={}", 30 + seconds);
    }
}

#[test]
fn every_policy_skips_ejected_endpoints() {
    let lbs: [LoadBalancerType; 4] = [RoundRobin, LeastRequest, Random, ConsistentHash];
    for lb in lbs {
        let (b, clock) = backend(Some(with_outlier(lb, od(1, 0, 50))), eps(3));
        // For the hash policy, eject the owner of a key and check the key moves and comes back.
        let key = b"user-1".as_slice();
        let target = if lb == ConsistentHash {
            b.pick(Some(key)).unwrap().endpoint
        } else {
            ep(2)
        };
        fail(&b, &target, 1, respond(500));
        assert!(never_picked(&b, &target, Some(key)), "{lb:?}");
        clock.advance(secs(30));
        assert!(!never_picked(&b, &target, Some(key)), "{lb:?}");
    }
}

#[test]
fn without_outlier_detection_nothing_is_ejected_and_disabling_returns_endpoints() {
    let (b, _) = backend(None, eps(2));
    fail(&b, &ep(1), 100, respond(503));
    assert!(b.ejected().is_empty());

    let (b, _) = backend(Some(with_outlier(RoundRobin, od(1, 0, 50))), eps(2));
    fail(&b, &ep(1), 1, respond(503));
    assert_eq!(b.ejected().len(), 1);
    b.set_policy(Some(policy(RoundRobin)));
    assert!(b.ejected().is_empty());
    assert!(!never_picked(&b, &ep(1), None));
}

#[test]
fn cancelled_requests_do_not_count() {
    let (b, _) = backend(Some(with_outlier(RoundRobin, od(2, 0, 50))), eps(2));
    fail(&b, &ep(1), 1, respond(500));
    drop(pick_endpoint(&b, &ep(1)));
    assert!(b.ejected().is_empty());
    fail(&b, &ep(1), 1, respond(500));
    assert_eq!(b.ejected().len(), 1);
}
