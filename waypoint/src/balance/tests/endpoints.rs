use ambit_core::meshconfig::backend::LoadBalancerType::RoundRobin;
use ambit_core::meshconfig::backend::OutlierDetectionSpec;

use super::*;

#[test]
fn set_endpoints_keeps_state_of_endpoints_that_stay() {
    let od = OutlierDetectionSpec {
        consecutive_5xx_errors: 1,
        max_ejection_percent: 50,
        ..OutlierDetectionSpec::default()
    };
    let (b, _) = backend(Some(with_outlier(RoundRobin, od)), eps(4));
    pick_endpoint(&b, &ep(1)).finish(Outcome::Response {
        status: 200,
        latency: Duration::from_millis(700),
    });
    pick_endpoint(&b, &ep(2)).finish(respond(500));
    let held = pick_endpoint(&b, &ep(3));
    assert_eq!(b.ejected().len(), 1);

    // Endpoint 4 goes, 5 arrives; 1-3 stay (3 with a new identity: same pod, new SA).
    let mut next = eps(3);
    next[2].identity = ambit_core::Identity::new("cluster.local", "shop", "cart-v2").unwrap();
    next.push(ep(5));
    next.push(ep(5)); // duplicates are ignored
    b.set_endpoints(next.clone());
    let st = b.endpoints();
    assert_eq!(st.len(), 4);
    assert!(
        st[0].latency_estimate >= Duration::from_millis(690),
        "{:?}",
        st[0]
    );
    assert!(st[1].ejected_for.is_some(), "ejection survives the update");
    assert_eq!(st[2].in_flight, 1);
    assert_eq!(st[2].endpoint, next[2], "the new identity is used");
    assert_eq!(st[3].endpoint, ep(5));
    assert_eq!(
        st[3].latency_estimate,
        Duration::from_millis(30),
        "new: default RTT"
    );

    held.finish(respond(200));
    assert_eq!(b.endpoints()[2].in_flight, 0);
}

#[test]
fn requests_to_a_removed_endpoint_finish_cleanly() {
    let (b, _) = backend(None, eps(2));
    let held = pick_endpoint(&b, &ep(2));
    b.set_endpoints(eps(1));
    assert_eq!(b.load().0, 1);
    // Re-added before the old request ends: a fresh endpoint, the old guard doesn't touch it.
    b.set_endpoints(eps(2));
    held.finish(Outcome::Timeout);
    assert_eq!(b.load().0, 0);
    let st = b.endpoints();
    assert!(st.iter().all(|s| s.in_flight == 0));
    assert_eq!(st[1].latency_estimate, Duration::from_millis(30));
}

#[test]
fn failures_are_recorded_as_slow_so_fast_failing_endpoints_are_avoided() {
    let (b, _) = backend(None, eps(2));
    pick_endpoint(&b, &ep(1)).finish(Outcome::ConnectFailure);
    let st = b.endpoints();
    assert!(
        st[0].latency_estimate >= Duration::from_millis(999),
        "{st:?}"
    );
    // P2C over two endpoints always compares both: the failing one loses.
    for _ in 0..50 {
        assert_eq!(b.pick(None).unwrap().endpoint, ep(2));
    }
}

#[test]
fn pick_parts_can_be_split() {
    let (b, _) = backend(None, eps(1));
    let (endpoint, guard) = b.pick(None).unwrap().into_parts();
    assert_eq!(endpoint, ep(1));
    assert_eq!(b.load().0, 1);
    guard.finish(respond(200));
    assert_eq!(b.load().0, 0);
}

#[test]
fn shrinking_the_list_never_leaves_only_ejected_endpoints() {
    let od = OutlierDetectionSpec {
        consecutive_5xx_errors: 1,
        max_ejection_percent: 50,
        ..OutlierDetectionSpec::default()
    };
    let (b, clock) = backend(Some(with_outlier(RoundRobin, od.clone())), eps(4));
    pick_endpoint(&b, &ep(1)).finish(respond(500));
    clock.advance(secs(1));
    pick_endpoint(&b, &ep(2)).finish(respond(500));
    assert_eq!(b.ejected().len(), 2);
    // Two endpoints left at 50%: one may stay ejected, the one due back first returns.
    b.set_endpoints(eps(2));
    let ejected: Vec<Endpoint> = b.ejected().into_iter().map(|s| s.endpoint).collect();
    assert_eq!(ejected, vec![ep(2)]);
    assert_eq!(b.pick(None).unwrap().endpoint, ep(1));
    // Lowering the percentage does the same.
    b.set_endpoints(eps(4));
    clock.advance(secs(1));
    pick_endpoint(&b, &ep(3)).finish(respond(500));
    assert_eq!(b.ejected().len(), 2);
    let stricter = OutlierDetectionSpec {
        max_ejection_percent: 25,
        ..od
    };
    b.set_policy(Some(with_outlier(RoundRobin, stricter)));
    let ejected: Vec<Endpoint> = b.ejected().into_iter().map(|s| s.endpoint).collect();
    assert_eq!(ejected, vec![ep(3)], "ep 2 was due back first");
}

#[test]
fn retries_avoid_tried_endpoints_even_when_they_look_best() {
    use LoadBalancerType::*;
    for lb in [LeastRequest, RoundRobin, Random] {
        let (b, _) = backend(Some(policy(lb)), eps(3));
        // ep(1) answers fast (a fast 503 looks like a great endpoint to P2C).
        for _ in 0..20 {
            pick_endpoint(&b, &ep(1)).finish(Outcome::Response {
                status: 503,
                latency: Duration::from_micros(100),
            });
        }
        let tried = [ep(1).addr, ep(2).addr];
        for _ in 0..50 {
            assert_eq!(
                b.pick_avoiding(None, &tried).unwrap().endpoint,
                ep(3),
                "{lb:?}"
            );
        }
        // Every endpoint tried: the choice falls back to all of them.
        let all = [ep(1).addr, ep(2).addr, ep(3).addr];
        assert!(b.pick_avoiding(None, &all).is_ok());
    }
}
