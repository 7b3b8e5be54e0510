//! Runs `ambit-bench l4 --quick` end to end (real namespaces, real ztunnel processes) and
//! checks the shape and sanity of its JSON. Needs root, like every netns test (CI is root).

mod common;

use common::{get, positive, run_report};
use serde_json::Value;

/// Every figure the report must carry for each side, as dotted paths; each must be a
/// number > 0. (`relay`, the control side, has no connection-rate phase.)
const POSITIVE: &[&str] = &[
    "throughput_gbps.one_stream",
    "throughput_gbps.eight_streams",
    "throughput_machine_cpus.one_stream",
    "throughput_machine_cpus.eight_streams",
    "latency.rate_rps",
    "latency.achieved_rps",
    "latency.requests",
    "latency.p50_us",
    "latency.p90_us",
    "latency.p99_us",
    "latency.p999_us",
    "latency.max_us",
    "latency.machine_cpu_us_per_request",
];

const CONNECTION_RATE_POSITIVE: &[&str] = &[
    "connection_rate.connections_per_s",
    "connection_rate.connections",
    "connection_rate.p50_us",
    "connection_rate.p99_us",
];

const ZTUNNEL_POSITIVE: &[&str] = &[
    "cpu_seconds_per_1000_requests",
    "vcpu_at_1000_rps",
    "vcpu_per_1000_rps",
    "cpu_seconds_latency_phase.node_0",
    "cpu_seconds_latency_phase.node_1",
    "cpu_seconds_latency_phase.total",
    "latency_phase_seconds",
    "cpu_us_per_request",
    "vcpu_during_throughput.one_stream",
    "vcpu_during_throughput.eight_streams",
    "rss_mb_idle.node_0",
    "rss_mb_idle.node_1",
    "rss_mb_idle.max",
    "rss_mb_at_1000_rps.node_0",
    "rss_mb_at_1000_rps.node_1",
    "rss_mb_at_1000_rps.max",
    "rss_mb_open_tunnels.node_0",
    "rss_mb_open_tunnels.node_1",
    "rss_mb_open_tunnels.max",
    "rss_anon_mb_idle.max",
    "rss_anon_mb_at_1000_rps.max",
    "rss_anon_mb_open_tunnels.max",
    "open_tunnels",
    "workloads",
    "mesh_connections_opened.node_0_source",
    "mesh_connections_opened.node_1_destination",
];

#[test]
fn l4_quick_run_reports_every_figure() {
    if !ambit_testkit::is_root() {
        eprintln!("skipping: the L4 benchmark needs root (network namespaces)");
        return;
    }
    let r = run_report(&["l4", "--quick"], "l4");

    for side in ["direct", "mesh", "relay"] {
        for f in POSITIVE {
            positive(&r, &format!("{side}.{f}"));
        }
        assert!(
            get(&r, &format!("{side}.latency.errors")).is_u64(),
            "{side}.latency.errors must be a count"
        );
        let rate = positive(&r, &format!("{side}.latency.achieved_rps"));
        assert!(
            (900.0..=1100.0).contains(&rate),
            "{side}: the fixed-rate phase ran at {rate} req/s, not ~1000"
        );
    }
    for side in ["direct", "mesh"] {
        for f in CONNECTION_RATE_POSITIVE {
            positive(&r, &format!("{side}.{f}"));
        }
        assert!(
            get(&r, &format!("{side}.connection_rate.errors")).is_u64(),
            "{side}.connection_rate.errors must be a count"
        );
    }
    for f in ZTUNNEL_POSITIVE {
        positive(&r, &format!("ztunnel.{f}"));
    }
    // The mesh path really went through both ztunnels: they burnt CPU while it ran and
    // counted its mTLS connections (at least the 1000 held-open tunnels).
    assert!(positive(&r, "ztunnel.mesh_connections_opened.node_0_source") >= 1000.0);
    assert!(positive(&r, "ztunnel.mesh_connections_opened.node_1_destination") >= 1000.0);
    assert_eq!(positive(&r, "ztunnel.workloads"), 100.0);
    for f in ["p50", "p90", "p99"] {
        assert!(get(&r, &format!("added_latency_us.{f}")).is_number());
        assert!(get(&r, &format!("relay_added_latency_us.{f}")).is_number());
    }
    for f in ["one_stream", "eight_streams"] {
        positive(&r, &format!("throughput_ratio.{f}"));
        positive(&r, &format!("relay_throughput_ratio.{f}"));
    }
    assert!(get(&r, "ztunnel.idle_vcpu.total").is_number());
    assert!(get(&r, "ztunnel.page_faults_per_mib_throughput.one_stream").is_number());
    for t in [
        "added_p99_latency_le_100us",
        "vcpu_per_1000_rps_le_0_04",
        "rss_mb_per_1000_rps_le_10",
        "throughput_ratio_ge_0_40",
        "all_met",
    ] {
        assert!(get(&r, &format!("targets.{t}")).is_boolean(), "targets.{t}");
    }
    positive(&r, "machine.nproc");
    assert!(get(&r, "machine.kernel").is_string());
    assert!(get(&r, "machine.timestamp").is_string());
    assert_eq!(get(&r, "config.quick"), &Value::Bool(true));
    for f in [
        "throughput_duration_s",
        "latency_duration_s",
        "connection_rate_duration_s",
    ] {
        positive(&r, &format!("config.{f}"));
    }
}
