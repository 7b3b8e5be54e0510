use ambit_core::meshconfig::backend::ConnectionPoolSpec;

use super::*;
use crate::balance::{Unavailable, MAX_CONNECTIONS, MAX_PENDING_REQUESTS, MAX_REQUESTS};

fn pool(conns: Option<u32>, pending: Option<u32>, requests: Option<u32>) -> ConnectionPoolSpec {
    ConnectionPoolSpec {
        max_connections: conns,
        max_pending_requests: pending,
        max_requests: requests,
        ..ConnectionPoolSpec::default()
    }
}

#[test]
fn max_requests_overflows_at_exactly_the_limit_and_recovers() {
    let (b, _) = backend(Some(with_pool(pool(None, None, Some(3)))), eps(2));
    let mut picks: Vec<_> = (0..3).map(|_| b.pick(None).unwrap()).collect();
    assert_eq!(
        b.pick(None).unwrap_err(),
        Unavailable::Overflow(MAX_REQUESTS)
    );
    assert_eq!(b.stats().overflow_total(MAX_REQUESTS), 1);
    assert_eq!(b.load().0, 3);
    // A finished request and a cancelled (dropped) one both free a slot.
    picks.pop().unwrap().finish(respond(200));
    let again = b.pick(None).unwrap();
    assert!(b.pick(None).is_err());
    drop(picks);
    assert_eq!(b.load().0, 1);
    let more: Vec<_> = (0..2).map(|_| b.pick(None).unwrap()).collect();
    assert_eq!(
        b.pick(None).unwrap_err(),
        Unavailable::Overflow(MAX_REQUESTS)
    );
    assert_eq!(b.stats().overflow_total(MAX_REQUESTS), 3);
    drop((again, more));
    assert_eq!(b.load(), (0, 0, 0));
}

#[test]
fn max_connections_and_pending_count_guards() {
    let (b, _) = backend(Some(with_pool(pool(Some(2), Some(1), None))), eps(2));
    let c1 = b.connection_guard().unwrap();
    let c2 = b.connection_guard().unwrap();
    let e = b.connection_guard().unwrap_err();
    assert_eq!(e, Unavailable::Overflow(MAX_CONNECTIONS));
    assert_eq!(e.response_flag(), "UO");
    // The caller queues the request: one may wait, the next overflows.
    let p1 = b.pending_guard().unwrap();
    assert_eq!(
        b.pending_guard().unwrap_err(),
        Unavailable::Overflow(MAX_PENDING_REQUESTS)
    );
    assert_eq!(b.load(), (0, 1, 2));
    drop(p1);
    drop(c1);
    let _p2 = b.pending_guard().unwrap();
    let _c3 = b.connection_guard().unwrap();
    assert!(b.connection_guard().is_err());
    drop(c2);
    assert_eq!(b.load(), (0, 1, 1));
    assert_eq!(b.stats().overflow_total(MAX_CONNECTIONS), 2);
    assert_eq!(b.stats().overflow_total(MAX_PENDING_REQUESTS), 1);
    assert_eq!(b.stats().overflow_total(MAX_REQUESTS), 0);
}

#[test]
fn no_policy_means_no_limits() {
    let (b, _) = backend(None, eps(3));
    let picks: Vec<_> = (0..5000).map(|_| b.pick(None).unwrap()).collect();
    let conns: Vec<_> = (0..5000).map(|_| b.connection_guard().unwrap()).collect();
    let pend: Vec<_> = (0..5000).map(|_| b.pending_guard().unwrap()).collect();
    assert_eq!(b.load(), (5000, 5000, 5000));
    drop((picks, conns, pend));
    assert_eq!(b.load(), (0, 0, 0));
}

#[test]
fn lowering_the_limit_applies_to_new_requests_only() {
    let (b, _) = backend(None, eps(2));
    let picks: Vec<_> = (0..4).map(|_| b.pick(None).unwrap()).collect();
    b.set_policy(Some(with_pool(pool(None, None, Some(2)))));
    assert!(b.pick(None).is_err(), "4 in flight > new limit 2");
    drop(picks);
    let _a = b.pick(None).unwrap();
    let _b = b.pick(None).unwrap();
    assert_eq!(
        b.pick(None).unwrap_err(),
        Unavailable::Overflow(MAX_REQUESTS)
    );
}

#[test]
fn no_endpoints_is_no_healthy_upstream() {
    let (b, _) = backend(None, vec![]);
    let e = b.pick(None).unwrap_err();
    assert_eq!(e, Unavailable::NoHealthyUpstream);
    assert_eq!(e.response_flag(), "UH");
    assert_eq!(e.to_string(), "no healthy upstream");
    assert_eq!(b.stats().no_healthy_upstream_total(), 1);
    b.set_endpoints(eps(1));
    assert!(b.pick(None).is_ok());
}
