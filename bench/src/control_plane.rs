//! `ambit-bench control-plane`: the operator at scale (10,000 pods, 1,000 services, 500
//! policies by default). Two phases on the same synthetic cluster:
//!
//! 1. compile cost, in process: a full compile, and what one pod change costs (the operator
//!    recompiles the whole snapshot, publishes it, and sends each proxy a delta);
//! 2. propagation, end to end: the real operator (a child process) against the in-memory API
//!    server, one config-stream client per node; for each API change, the time until every
//!    client has applied and ACKed a config containing it. Plus the operator's RSS.
//!
//! Targets (issue 4): propagation p99 ≤ 500 ms, operator memory ≤ 256 MB.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::ensure;
use serde_json::{json, Value};

use crate::cp_objects::{generate, Size};
use crate::{cp_compile, cp_propagation, procstat};

pub const TARGET_P99_MS: f64 = 500.0;
pub const TARGET_RSS_MB: f64 = 256.0;

#[derive(clap::Args, Debug)]
pub struct Args {
    #[arg(long, default_value_t = 10_000)]
    pub pods: usize,
    #[arg(long, default_value_t = 1_000)]
    pub services: usize,
    /// AuthorizationPolicies and PeerAuthentications (one in five).
    #[arg(long, default_value_t = 500)]
    pub policies: usize,
    /// Nodes = connected config-stream clients.
    #[arg(long, default_value_t = 100)]
    pub nodes: usize,
    /// API changes measured one at a time (alternately a pod label and a new policy).
    #[arg(long, default_value_t = 50)]
    pub changes: usize,
    /// Repetitions of each compile-phase measurement.
    #[arg(long, default_value_t = 5)]
    pub reps: usize,
    /// Where to write the JSON result (it is also printed to stdout).
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/results/control-plane.json"))]
    pub out: PathBuf,
}

pub fn run(args: &Args) -> anyhow::Result<Value> {
    ensure!(
        args.pods >= 1 && args.services >= 1 && args.nodes >= 1 && args.reps >= 1,
        "--pods, --services, --nodes and --reps must be at least 1"
    );
    let size = Size {
        pods: args.pods,
        services: args.services,
        policies: args.policies,
        nodes: args.nodes,
    };
    let began = Instant::now();
    let objs = generate(size);
    eprintln!(
        "[{:>6.1}s] compile phase ({} reps)",
        began.elapsed().as_secs_f64(),
        args.reps
    );
    let compile = cp_compile::run(&objs, args.reps)?;
    eprintln!(
        "[{:>6.1}s] propagation phase: operator process, {} proxies, {} changes",
        began.elapsed().as_secs_f64(),
        args.nodes,
        args.changes
    );
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let propagation = runtime.block_on(cp_propagation::run(&objs, size, args.changes))?;
    eprintln!("[{:>6.1}s] done", began.elapsed().as_secs_f64());

    let p99 = propagation["latency_ms"]["p99"]
        .as_f64()
        .unwrap_or(f64::MAX);
    let rss = propagation["operator_memory"]["max_rss_mb"]
        .as_f64()
        .unwrap_or(f64::MAX);
    let all_propagated = propagation["changes_propagated"] == json!(args.changes);
    let timestamp = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
    Ok(json!({
        "benchmark": "control-plane",
        "inputs": {
            "pods": size.pods,
            "services": size.services,
            "policies": size.policies,
            "nodes": size.nodes,
            "namespaces": size.namespaces(),
            "authorization_policies": objs.authorization_policies.len(),
            "peer_authentications": objs.peer_authentications.len(),
            "changes": args.changes,
            "reps": args.reps,
        },
        "compile": compile,
        "propagation": propagation,
        "targets": {
            "propagation_p99_ms": TARGET_P99_MS,
            "operator_rss_mb": TARGET_RSS_MB,
            "propagation_p99_met": all_propagated && p99 <= TARGET_P99_MS,
            "operator_rss_met": rss <= TARGET_RSS_MB,
        },
        "machine": {
            "nproc": procstat::nproc(),
            "kernel": procstat::kernel(),
            "cpu_model": procstat::cpu_model(),
            "timestamp": timestamp,
        },
        "config": {
            "operator": "separate process: ambit-bench cp-operator = runtime::run on 2 worker threads, leader election on (one replica)",
            "api_server": "ambit-apisim in the benchmark process, objects loaded through its store",
            "proxies": "core ConfigStream clients in the benchmark process, one per node, TokenReview-authenticated",
            "debounce_ms": 100,
        },
    }))
}

/// Writes `value` to `path` like the other benchmarks do.
pub fn write_result(path: &Path, value: &Value) -> anyhow::Result<()> {
    crate::l4::write_result(path, value)
}
