//! Runs `ambit-bench l4 --quick` end to end (real namespaces, real ztunnel processes) and
//! checks the shape and sanity of its JSON. Needs root, like every netns test (CI is root).

use std::process::Command;

use serde_json::Value;

fn get<'a>(v: &'a Value, path: &str) -> &'a Value {
    path.split('.').fold(v, |v, k| match v.get(k) {
        Some(x) => x,
        None => panic!("missing field {path} (at {k}) in:\n{v:#}"),
    })
}

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

fn positive(v: &Value, path: &str) -> f64 {
    let x = get(v, path)
        .as_f64()
        .unwrap_or_else(|| panic!("{path} is not a number: {v:#}"));
    assert!(x.is_finite() && x > 0.0, "{path} = {x}, expected > 0");
    x
}

/// Every number anywhere in the report is finite.
fn all_finite(v: &Value, at: &str) {
    match v {
        Value::Number(n) => {
            let x = n.as_f64().expect("JSON number");
            assert!(x.is_finite(), "{at} = {x} is not finite");
        }
        Value::Array(a) => a
            .iter()
            .enumerate()
            .for_each(|(i, x)| all_finite(x, &format!("{at}[{i}]"))),
        Value::Object(o) => o
            .iter()
            .for_each(|(k, x)| all_finite(x, &format!("{at}.{k}"))),
        _ => {}
    }
}

#[test]
fn l4_quick_run_reports_every_figure() {
    if !ambit_testkit::is_root() {
        eprintln!("skipping: the L4 benchmark needs root (network namespaces)");
        return;
    }
    let dir = std::env::temp_dir().join(format!("ambit-l4-smoke-{}", std::process::id()));
    let out = dir.join("nested").join("l4.json");
    let run = Command::new(env!("CARGO_BIN_EXE_ambit-bench"))
        .args(["l4", "--quick", "--out"])
        .arg(&out)
        .output()
        .expect("running ambit-bench");
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(
        run.status.success(),
        "ambit-bench l4 --quick failed:\n{stderr}"
    );
    let printed: Value = serde_json::from_slice(&run.stdout)
        .unwrap_or_else(|e| panic!("stdout is not one JSON object ({e}):\n{stderr}"));
    let written: Value =
        serde_json::from_str(&std::fs::read_to_string(&out).expect("--out file written"))
            .expect("--out file is JSON");
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(printed, written, "stdout and --out differ");
    let r = printed;

    all_finite(&r, "");
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
