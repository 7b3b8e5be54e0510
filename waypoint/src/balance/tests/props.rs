//! Random operation sequences against one backend: the counts stay consistent, ejected
//! endpoints are never picked, and the ejection cap holds.

use ambit_core::meshconfig::backend::LoadBalancerType::*;
use ambit_core::meshconfig::backend::{ConnectionPoolSpec, OutlierDetectionSpec};
use proptest::prelude::*;

use super::*;
use crate::balance::Unavailable;

#[derive(Clone, Debug)]
enum Op {
    Pick(Option<u8>),
    Finish(usize, u16),
    Fail(usize),
    Cancel(usize),
    Advance(u64),
    SetEndpoints(u8),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => proptest::option::of(any::<u8>()).prop_map(Op::Pick),
        3 => (any::<usize>(), prop_oneof![Just(200u16), Just(500), Just(503)])
            .prop_map(|(i, s)| Op::Finish(i, s)),
        1 => any::<usize>().prop_map(Op::Fail),
        1 => any::<usize>().prop_map(Op::Cancel),
        1 => (0u64..20_000).prop_map(Op::Advance),
        1 => (0u8..64).prop_map(Op::SetEndpoints),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn backend_invariants_hold(
        lb in prop_oneof![Just(RoundRobin), Just(LeastRequest), Just(Random), Just(ConsistentHash)],
        pct in 0u32..=100,
        max_requests in 1u32..10,
        ops in proptest::collection::vec(op(), 1..120),
    ) {
        let mut p = with_outlier(lb, OutlierDetectionSpec {
            consecutive_5xx_errors: 2,
            consecutive_gateway_errors: 1,
            interval: secs(1),
            base_ejection_time: secs(5),
            max_ejection_percent: pct,
        });
        p.connection_pool = Some(ConnectionPoolSpec {
            max_requests: Some(max_requests),
            ..ConnectionPoolSpec::default()
        });
        let (b, clock) = backend(Some(p), eps(6));
        let mut live: Vec<Pick> = Vec::new();
        for op in ops {
            match op {
                Op::Pick(key) => {
                    let ejected: Vec<Endpoint> =
                        b.ejected().into_iter().map(|s| s.endpoint).collect();
                    let n = b.endpoints().len();
                    let key = key.map(|k| [k]);
                    match b.pick(key.as_ref().map(|k| k.as_slice())) {
                        Ok(pick) => {
                            prop_assert!(!ejected.contains(&pick.endpoint));
                            live.push(pick);
                        }
                        Err(Unavailable::Overflow(_)) => {
                            prop_assert_eq!(live.len() as u32, max_requests)
                        }
                        Err(Unavailable::NoHealthyUpstream) => {
                            prop_assert!(n == 0 || (pct == 100 && ejected.len() == n))
                        }
                    }
                }
                Op::Finish(i, status) if !live.is_empty() => {
                    live.swap_remove(i % live.len()).finish(respond(status));
                }
                Op::Fail(i) if !live.is_empty() => {
                    live.swap_remove(i % live.len()).finish(Outcome::ConnectFailure);
                }
                Op::Cancel(i) if !live.is_empty() => drop(live.swap_remove(i % live.len())),
                Op::Advance(ms) => clock.advance(Duration::from_millis(ms)),
                Op::SetEndpoints(mask) => b.set_endpoints(
                    (1..=6).filter(|i| mask & (1 << (i - 1)) != 0).map(ep).collect(),
                ),
                _ => {}
            }
            let st = b.endpoints();
            prop_assert_eq!(b.load().0 as usize, live.len());
            prop_assert!(st.iter().map(|s| s.in_flight as usize).sum::<usize>() <= live.len());
            let ejected = st.iter().filter(|s| s.ejected_for.is_some()).count();
            let cap = match pct {
                0 => 0,
                100 => st.len(),
                p => (st.len() * p as usize / 100).max(1).min(st.len().saturating_sub(1)),
            };
            prop_assert!(ejected <= cap, "{} ejected, cap {}", ejected, cap);
        }
        drop(live);
        prop_assert_eq!(b.load(), (0, 0, 0));
        prop_assert!(b.endpoints().iter().all(|s| s.in_flight == 0));
    }
}
