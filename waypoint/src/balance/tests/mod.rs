//! Balancer tests: deterministic (fake clock, seeded RNG), no sleeping.

mod breaker;
mod budget;
mod endpoints;
mod lb;
mod outlier;
mod props;

use std::sync::Arc;
use std::time::Duration;

use ambit_core::meshconfig::backend::{
    BackendPolicySpec, ConnectionPoolSpec, LoadBalancerSpec, LoadBalancerType,
    OutlierDetectionSpec, ServiceTarget,
};

use super::{Backend, BackendOptions, Endpoint, FakeClock, Outcome, Pick};

pub(super) fn ep(i: u8) -> Endpoint {
    Endpoint {
        addr: format!("10.0.0.{i}:8080").parse().unwrap(),
        identity: ambit_core::Identity::new("cluster.local", "shop", "cart").unwrap(),
        workload: format!("shop/cart-{i}"),
    }
}

pub(super) fn eps(n: u8) -> Vec<Endpoint> {
    (1..=n).map(ep).collect()
}

pub(super) fn policy(lb: LoadBalancerType) -> BackendPolicySpec {
    BackendPolicySpec {
        name: "p".into(),
        namespace: "shop".into(),
        service: ServiceTarget {
            name: "cart".into(),
            namespace: "shop".into(),
        },
        load_balancer: LoadBalancerSpec {
            kind: lb,
            hash_header: (lb == LoadBalancerType::ConsistentHash).then(|| "x-user".into()),
        },
        connection_pool: None,
        outlier_detection: None,
        retry_budget: None,
    }
}

pub(super) fn with_pool(pool: ConnectionPoolSpec) -> BackendPolicySpec {
    BackendPolicySpec {
        connection_pool: Some(pool),
        ..policy(LoadBalancerType::RoundRobin)
    }
}

pub(super) fn with_outlier(lb: LoadBalancerType, od: OutlierDetectionSpec) -> BackendPolicySpec {
    BackendPolicySpec {
        outlier_detection: Some(od),
        ..policy(lb)
    }
}

pub(super) fn backend(
    policy: Option<BackendPolicySpec>,
    endpoints: Vec<Endpoint>,
) -> (Arc<Backend>, FakeClock) {
    let clock = FakeClock::new();
    let b = Backend::with_options(
        "cart.shop".into(),
        policy,
        BackendOptions {
            clock: Arc::new(clock.clone()),
            seed: Some(7),
            ..BackendOptions::default()
        },
    );
    b.set_endpoints(endpoints);
    (b, clock)
}

/// Picks until `want` comes up (others are dropped = cancelled, which changes nothing).
pub(super) fn pick_endpoint(b: &Backend, want: &Endpoint) -> Pick {
    for _ in 0..1000 {
        let p = b.pick(None).expect("pick");
        if &p.endpoint == want {
            return p;
        }
    }
    panic!("{want:?} never picked");
}

pub(super) fn respond(status: u16) -> Outcome {
    Outcome::Response {
        status,
        latency: Duration::from_millis(5),
    }
}

pub(super) fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}
