//! Runs a tiny `ambit-bench control-plane` end to end (in-memory API server, the operator as a
//! child process, 5 config-stream clients) and checks its JSON: every figure is there and every
//! change reached every proxy. No root needed.

mod common;

use common::{get, positive, run_report};

#[test]
fn control_plane_tiny_run_propagates_every_change() {
    let r = run_report(
        &[
            "control-plane",
            "--pods",
            "200",
            "--services",
            "20",
            "--policies",
            "10",
            "--nodes",
            "5",
            "--changes",
            "3",
            "--reps",
            "2",
        ],
        "control-plane",
    );

    assert_eq!(get(&r, "benchmark"), "control-plane");
    assert_eq!(get(&r, "inputs.pods").as_u64(), Some(200));
    assert_eq!(get(&r, "inputs.nodes").as_u64(), Some(5));
    // The compiled config holds the whole synthetic cluster.
    assert_eq!(get(&r, "compile.full.config.workloads").as_u64(), Some(200));
    assert_eq!(get(&r, "compile.full.config.services").as_u64(), Some(20));
    assert_eq!(get(&r, "compile.full.config.policies").as_u64(), Some(8));
    for f in ["p50_ms", "max_ms"] {
        positive(&r, &format!("compile.full.compile.{f}"));
        positive(&r, &format!("compile.per_pod_change.recompile.{f}"));
    }
    // One pod changed: the delta carries that workload, not the whole config.
    let upserts = positive(&r, "compile.per_pod_change.delta_upserts_max");
    assert!(
        upserts <= 3.0,
        "a one-pod delta upserted {upserts} resources"
    );
    let delta = positive(&r, "compile.per_pod_change.delta_bytes_max");
    let full = positive(&r, "compile.full.config.full_update_bytes");
    assert!(
        delta < full,
        "delta {delta} B not smaller than full {full} B"
    );

    // Every change reached every proxy.
    assert_eq!(get(&r, "propagation.changes_propagated").as_u64(), Some(3));
    assert_eq!(get(&r, "propagation.missing_samples").as_u64(), Some(0));
    assert_eq!(get(&r, "propagation.samples").as_u64(), Some(15));
    let per_change = get(&r, "propagation.per_change").as_array().unwrap();
    assert_eq!(per_change.len(), 3);
    for c in per_change {
        assert_eq!(c["proxies"].as_u64(), Some(5), "{c}");
    }
    let p50 = positive(&r, "propagation.latency_ms.p50");
    let p99 = positive(&r, "propagation.latency_ms.p99");
    assert!(p50 <= p99, "p50 {p50} > p99 {p99}");
    positive(&r, "propagation.operator_memory.max_rss_mb");
    positive(&r, "propagation.operator_memory.at_end.rss_mb");
    assert!(get(&r, "targets.propagation_p99_met").is_boolean());
    assert!(get(&r, "targets.operator_rss_met").is_boolean());
    positive(&r, "machine.nproc");
}
