//! Runs `ambit-bench waypoint --quick` end to end (real namespaces, the waypoint as a separate
//! process, HBONE on both hops) and checks the shape of its JSON and that no request failed.
//! Needs root, like every netns test (CI is root).

mod common;

use common::{get, positive, run_report};
use serde_json::Value;

const LATENCY_POSITIVE: &[&str] = &[
    "rate_rps",
    "achieved_rps",
    "requests",
    "p50_us",
    "p90_us",
    "p99_us",
    "p999_us",
    "max_us",
];

#[test]
fn waypoint_quick_run_reports_every_figure() {
    if !ambit_testkit::is_root() {
        eprintln!("skipping: the waypoint benchmark needs root (network namespaces)");
        return;
    }
    let r = run_report(&["waypoint", "--quick"], "waypoint");

    assert_eq!(get(&r, "benchmark"), "waypoint");
    assert_eq!(get(&r, "requests_failed").as_u64(), Some(0), "{r:#}");
    for proto in ["http1", "http2"] {
        for side in ["baseline", "waypoint"] {
            for f in LATENCY_POSITIVE {
                positive(&r, &format!("{proto}.{side}.{f}"));
            }
            assert_eq!(get(&r, &format!("{proto}.{side}.errors")).as_u64(), Some(0));
            let rate = positive(&r, &format!("{proto}.{side}.achieved_rps"));
            assert!(
                (800.0..=1200.0).contains(&rate),
                "{proto} {side}: the fixed-rate series ran at {rate} req/s, not ~1000"
            );
        }
        for f in ["p50", "p90", "p99"] {
            assert!(get(&r, &format!("{proto}.added_latency_us.{f}")).is_number());
        }
        // The waypoint really carried the load: it burnt CPU for it.
        positive(&r, &format!("{proto}.waypoint_vcpu"));
        positive(&r, &format!("{proto}.waypoint_vcpu_per_1000_rps"));
        positive(&r, &format!("{proto}.waypoint_cpu_us_per_request"));
    }
    for side in ["baseline", "waypoint"] {
        positive(&r, &format!("max_throughput.{side}.achieved_rps"));
        assert_eq!(
            get(&r, &format!("max_throughput.{side}.errors")).as_u64(),
            Some(0)
        );
    }
    positive(&r, "max_throughput.ratio");
    for f in [
        "vcpu_per_1000_rps",
        "rss_mb_at_1000_rps",
        "rss_anon_mb_at_1000_rps",
        "rss_mb_per_1000_rps",
        "rss_mb_idle",
        "rss_anon_mb_idle",
    ] {
        positive(&r, &format!("waypoint.{f}"));
    }
    // The L7 path was exercised: the route's rule served the requests, both subsets got
    // traffic, and the ALLOW policy refused a path it does not list.
    assert_eq!(
        get(&r, "validation.policy_denied_status").as_u64(),
        Some(403)
    );
    assert!(positive(&r, "validation.waypoint_requests_route_canary") >= 1000.0);
    positive(&r, "validation.backend_v1_requests");
    positive(&r, "validation.backend_v2_requests");
    let v2 = positive(&r, "validation.v2_share_percent");
    assert!(
        (3.0..=20.0).contains(&v2),
        "v2 got {v2}% of the waypoint's requests, want ~10"
    );
    for t in [
        "vcpu_per_1000_rps_le_0_25",
        "rss_mb_per_1000_rps_le_60",
        "zero_failures",
        "all_met",
    ] {
        assert!(get(&r, &format!("targets.{t}")).is_boolean(), "targets.{t}");
    }
    assert_eq!(get(&r, "targets.zero_failures"), &Value::Bool(true));
    positive(&r, "machine.nproc");
    assert!(get(&r, "machine.timestamp").is_string());
    assert_eq!(get(&r, "config.quick"), &Value::Bool(true));
}
