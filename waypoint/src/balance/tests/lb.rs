use std::collections::HashMap;
use std::time::Instant;

use ambit_core::meshconfig::backend::LoadBalancerType::{self, *};
use proptest::prelude::*;

use super::*;

fn counts(b: &Backend, picks: usize, key: impl Fn(usize) -> Option<Vec<u8>>) -> HashMap<u8, usize> {
    let mut c = HashMap::new();
    for i in 0..picks {
        let k = key(i);
        let p = b.pick(k.as_deref()).unwrap();
        *c.entry(host(&p.endpoint)).or_default() += 1;
    }
    c
}

fn host(e: &Endpoint) -> u8 {
    match e.addr.ip() {
        std::net::IpAddr::V4(v4) => v4.octets()[3],
        std::net::IpAddr::V6(_) => unreachable!(),
    }
}

#[test]
fn p2c_prefers_the_faster_endpoint_under_load_and_still_uses_the_slow_one() {
    let (b, clock) = backend(Some(policy(LeastRequest)), eps(3));
    let slow = ep(3);
    let mut in_flight: Vec<(Instant, Pick, Duration)> = Vec::new();
    let mut sent: HashMap<u8, usize> = HashMap::new();
    // 20 s of 3 requests per ms; endpoint 3 answers in 100 ms, the others in 10 ms.
    for _ in 0..20_000 {
        clock.advance(Duration::from_millis(1));
        let now = clock_now(&clock);
        let (done, rest): (Vec<_>, Vec<_>) = in_flight.drain(..).partition(|(due, ..)| *due <= now);
        in_flight = rest;
        for (_, p, latency) in done {
            p.finish(Outcome::Response {
                status: 200,
                latency,
            });
        }
        for _ in 0..3 {
            let p = b.pick(None).unwrap();
            let latency = Duration::from_millis(if p.endpoint == slow { 100 } else { 10 });
            *sent.entry(host(&p.endpoint)).or_default() += 1;
            in_flight.push((now + latency, p, latency));
        }
    }
    let (fast1, fast2, slow) = (sent[&1], sent[&2], sent.get(&3).copied().unwrap_or(0));
    let total = fast1 + fast2 + slow;
    assert!(
        slow > 0,
        "the slow endpoint must still get some traffic: {sent:?}"
    );
    assert!(
        slow * 10 < total,
        "the slow endpoint got too much: {sent:?}"
    );
    assert!(
        fast1.abs_diff(fast2) * 5 < fast1 + fast2,
        "fast ones uneven: {sent:?}"
    );
    let est = b.endpoints();
    assert!(
        est[2].latency_estimate > est[0].latency_estimate * 3,
        "{est:?}"
    );
}

fn clock_now(c: &FakeClock) -> Instant {
    use crate::balance::Clock;
    c.now()
}

#[test]
fn p2c_spreads_evenly_over_equal_endpoints() {
    let (b, _) = backend(None, eps(4));
    let c = counts(&b, 4000, |_| None);
    for n in 1..=4 {
        assert!((800..1200).contains(&c[&n]), "{c:?}");
    }
}

#[test]
fn p2c_avoids_an_endpoint_with_many_requests_in_flight() {
    // Endpoint 1 alone takes 20 long requests, then endpoint 2 joins.
    let (b, _) = backend(None, eps(1));
    let held: Vec<_> = (0..20).map(|_| b.pick(None).unwrap()).collect();
    b.set_endpoints(eps(2));
    let c = counts(&b, 100, |_| None);
    assert_eq!(c.get(&1), None, "{c:?}");
    drop(held);
}

#[test]
fn round_robin_is_even_and_cycles() {
    let (b, _) = backend(Some(policy(RoundRobin)), eps(4));
    let order: Vec<u8> = (0..8)
        .map(|_| host(&b.pick(None).unwrap().endpoint))
        .collect();
    assert_eq!(order[..4], order[4..], "{order:?}");
    let mut first: Vec<u8> = order[..4].to_vec();
    first.sort();
    assert_eq!(first, vec![1, 2, 3, 4]);
    let c = counts(&b, 400, |_| None);
    assert!(c.values().all(|&v| v == 100), "{c:?}");
}

#[test]
fn random_is_roughly_uniform() {
    let (b, _) = backend(Some(policy(Random)), eps(5));
    let c = counts(&b, 10_000, |_| None);
    let chi2: f64 = c
        .values()
        .map(|&o| (o as f64 - 2000.0).powi(2) / 2000.0)
        .sum();
    // 99.9th percentile of chi-square with 4 degrees of freedom.
    assert!(chi2 < 18.47, "chi2 {chi2}: {c:?}");
}

fn owners(b: &Backend, keys: &[String]) -> Vec<u8> {
    keys.iter()
        .map(|k| host(&b.pick(Some(k.as_bytes())).unwrap().endpoint))
        .collect()
}

fn hash_backend(endpoints: Vec<Endpoint>) -> Arc<Backend> {
    backend(Some(policy(ConsistentHash)), endpoints).0
}

#[test]
fn consistent_hash_is_stable_and_remaps_about_one_nth() {
    let keys: Vec<String> = (0..10_000).map(|i| format!("user-{i}")).collect();
    let b = hash_backend(eps(10));
    assert_eq!(b.hash_header().as_deref(), Some("x-user"));
    let before = owners(&b, &keys);
    assert_eq!(before, owners(&b, &keys), "same key, same endpoint");
    for n in 1..=10u8 {
        let share = before.iter().filter(|&&o| o == n).count();
        assert!(
            (500..1600).contains(&share),
            "endpoint {n} owns {share} keys"
        );
    }
    // Another replica with the endpoints in another order maps identically.
    let mut reversed = eps(10);
    reversed.reverse();
    assert_eq!(owners(&hash_backend(reversed), &keys), before);

    // Removing endpoint 5 moves exactly its keys, ~1/10.
    b.set_endpoints(eps(10).into_iter().filter(|e| host(e) != 5).collect());
    let after = owners(&b, &keys);
    let moved: Vec<usize> = (0..keys.len()).filter(|&i| before[i] != after[i]).collect();
    assert!(moved.iter().all(|&i| before[i] == 5));
    assert_eq!(moved.len(), before.iter().filter(|&&o| o == 5).count());
    assert!((500..1600).contains(&moved.len()), "{} moved", moved.len());

    // Adding an 11th moves ~1/11, all to the new endpoint.
    let b = hash_backend(eps(11));
    let grown = owners(&b, &keys);
    let moved: Vec<usize> = (0..keys.len()).filter(|&i| before[i] != grown[i]).collect();
    assert!(moved.iter().all(|&i| grown[i] == 11));
    assert!((450..1450).contains(&moved.len()), "{} moved", moved.len());
}

#[test]
fn consistent_hash_without_a_key_falls_back_to_random() {
    let b = hash_backend(eps(3));
    let c = counts(&b, 300, |_| None);
    assert!(c.len() == 3 && c.values().all(|&v| v > 50), "{c:?}");
}

#[test]
fn hash_header_is_only_set_for_consistent_hash() {
    for lb in [RoundRobin, LeastRequest, Random] {
        let (b, _) = backend(Some(policy(lb)), eps(1));
        assert_eq!(b.hash_header(), None);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]

    #[test]
    fn removing_an_endpoint_only_moves_its_own_keys(
        n in 2u8..12,
        removed in 1u8..12,
        keys in proptest::collection::vec("[a-z0-9]{1,12}", 1..100),
    ) {
        let removed = 1 + (removed - 1) % n;
        let b = hash_backend(eps(n));
        let before = owners(&b, &keys);
        b.set_endpoints(eps(n).into_iter().filter(|e| host(e) != removed).collect());
        let after = owners(&b, &keys);
        for i in 0..keys.len() {
            prop_assert!(before[i] == after[i] || before[i] == removed);
            prop_assert_ne!(after[i], removed);
        }
    }

    #[test]
    fn every_policy_only_picks_known_endpoints(
        lb in prop_oneof![Just(RoundRobin), Just(LeastRequest), Just(Random), Just(ConsistentHash)],
        n in 1u8..8,
        key in proptest::option::of("[a-z]{1,8}"),
    ) {
        let lb: LoadBalancerType = lb;
        let (b, _) = backend(Some(policy(lb)), eps(n));
        for _ in 0..20 {
            let p = b.pick(key.as_ref().map(|k| k.as_bytes())).unwrap();
            prop_assert!((1..=n).contains(&host(&p.endpoint)));
        }
    }
}
