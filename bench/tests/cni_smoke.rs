//! Runs `ambit-bench cni --quick --pods 10` end to end (real namespaces, ztunnel processes,
//! node agents, the plugin as a separate process) and checks its JSON. Needs root.

mod common;

use common::{get, positive, run_report};
use serde_json::Value;

#[test]
fn cni_quick_run_reports_every_figure() {
    if !ambit_testkit::is_root() {
        eprintln!("skipping: the CNI benchmark needs root (network namespaces)");
        return;
    }
    let r = run_report(&["cni", "--quick", "--pods", "10"], "cni");

    assert_eq!(get(&r, "benchmark"), "cni");
    assert_eq!(get(&r, "errors").as_u64(), Some(0), "{r:#}");
    assert_eq!(get(&r, "count").as_u64(), Some(10));
    for series in ["add", "agent_direct"] {
        assert_eq!(get(&r, &format!("{series}.count")).as_u64(), Some(10));
        assert_eq!(get(&r, &format!("{series}.errors")).as_u64(), Some(0));
        for f in ["mean_ms", "p50_ms", "p90_ms", "p99_ms", "max_ms"] {
            positive(&r, &format!("{series}.{f}"));
        }
        for f in ["p50_ms", "p99_ms"] {
            positive(&r, &format!("{series}.call_ms.{f}"));
        }
        for f in ["p50_us", "p99_us", "max_us"] {
            positive(&r, &format!("{series}.first_request_us.{f}"));
        }
        let p50 = positive(&r, &format!("{series}.p50_ms"));
        let p99 = positive(&r, &format!("{series}.p99_ms"));
        assert!(p50 <= p99, "{series}: p50 {p50} > p99 {p99}");
    }
    for part in ["spawn_call", "start_to_main", "plugin_main"] {
        assert_eq!(
            get(&r, &format!("add.plugin_breakdown_ms.{part}.count")).as_u64(),
            Some(10),
            "the plugin reported its timing for every ADD"
        );
        positive(&r, &format!("add.plugin_breakdown_ms.{part}.p50_ms"));
    }
    for f in ["p50", "p99", "mean"] {
        assert!(get(&r, &format!("plugin_process_overhead_ms.{f}")).is_number());
    }
    assert_eq!(positive(&r, "target_p99_ms"), 50.0);
    assert!(get(&r, "target_met").is_boolean());
    // Every pod really is served by ztunnel and its request went over mTLS.
    assert_eq!(positive(&r, "validation.ztunnel_0_captured_pods"), 20.0);
    assert_eq!(positive(&r, "validation.agent_0_captured_pods"), 20.0);
    assert!(positive(&r, "validation.ztunnel_1_mtls_connections_accepted") >= 20.0);
    positive(&r, "machine.nproc");
    assert!(get(&r, "machine.kernel").is_string());
    assert_eq!(get(&r, "config.quick"), &Value::Bool(true));
    assert_eq!(get(&r, "config.pods_per_series").as_u64(), Some(10));
}
