//! Phase 1 of the control-plane benchmark: what one recompile costs the operator, in process.
//!
//! The operator recompiles the whole snapshot on every change (after a 100 ms debounce), so
//! the cost of one pod changing is: copying the caches into a snapshot, compiling it, and
//! publishing the result to each node's config server target (which turns the config into
//! resources and compares them). Each subscribed proxy is then sent the delta between what it
//! holds and the new state.

use std::time::{Duration, Instant};

use ambit_core::control::held::Held;
use ambit_core::control::proto::{encode, ServerMessage, Target, Update};
use ambit_core::control::resources::{canonical, delta_between, Resource, ResourceSet};
use ambit_operator::compile::{compile, Snapshot};
use ambit_operator::control::ConfigServer;
use anyhow::{ensure, Context};
use serde_json::{json, Value};

use crate::cp_objects::Objects;
use crate::stats::round;

/// Label the benchmark changes on a pod.
pub const CHANGE_LABEL: &str = "bench.ambit.dev/change";

/// p50 / max / mean of a few timings, in milliseconds.
pub fn summary_ms(samples: &[Duration]) -> Value {
    let mut ms: Vec<f64> = samples.iter().map(|d| d.as_secs_f64() * 1e3).collect();
    ms.sort_by(f64::total_cmp);
    let p50 = ms
        .get(ms.len().saturating_sub(1) / 2)
        .copied()
        .unwrap_or(0.0);
    let mean = ms.iter().sum::<f64>() / ms.len().max(1) as f64;
    json!({
        "count": ms.len(),
        "p50_ms": round(p50, 3),
        "mean_ms": round(mean, 3),
        "max_ms": round(ms.last().copied().unwrap_or(0.0), 3),
    })
}

fn timed<T>(f: impl FnOnce() -> T) -> (T, Duration) {
    let start = Instant::now();
    let v = f();
    (v, start.elapsed())
}

/// Snapshot with the label of pod `index` set to `value` (what a pod change looks like).
fn with_pod_label(base: &Snapshot, index: usize, value: &str) -> Snapshot {
    let mut s = base.clone();
    let pod = std::sync::Arc::make_mut(&mut s.pods[index]);
    pod.metadata
        .labels
        .get_or_insert_with(Default::default)
        .insert(CHANGE_LABEL.into(), value.into());
    s
}

/// Runs the compile phase `reps` times over the cluster `objs`.
pub fn run(objs: &Objects, reps: usize) -> anyhow::Result<Value> {
    let (snapshot, _) = timed(|| objs.snapshot());
    let snapshot = snapshot?;
    ensure!(!snapshot.pods.is_empty(), "the cluster has no pods");
    // Warm-up (allocator, page faults), not reported.
    let base = compile(&snapshot);

    let mut clone = Vec::new();
    let mut full = Vec::new();
    for _ in 0..reps {
        let (copy, t) = timed(|| snapshot.clone());
        clone.push(t);
        let (compiled, t) = timed(|| compile(&copy));
        full.push(t);
        ensure!(
            compiled == base,
            "compiling the same snapshot twice differed"
        );
    }

    // One pod changes per step; the config server holds the previous state.
    let server = ConfigServer::new(
        Default::default(),
        Duration::from_secs(10),
        Duration::from_secs(30),
    );
    let target = Target::Node("node-0".into());
    let (published, publish_full) = timed(|| server.publish(&target, &base.config));
    published.context("publishing the full config")?;
    let base_resources = ResourceSet::from_config(&base.config)?;
    let full_state = Update {
        version: 1,
        full: true,
        upserts: base_resources
            .0
            .values()
            .map(|r| Resource::clone(r))
            .collect(),
        removes: Vec::new(),
    };
    let full_update = encode(&ServerMessage::Update(full_state.clone()));
    let mut prev = base_resources.clone();
    // What a proxy holds and assembles (core's config-stream client state).
    let mut proxy = Held::empty()?;
    proxy.apply(&full_state, |_| Ok(()))?;

    let (mut recompile, mut publish, mut delta_t, mut apply_t) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let (mut delta_bytes, mut delta_upserts) = (Vec::new(), Vec::new());
    let mut last = base.config.clone();
    for step in 0..reps {
        let index = (step * 7919) % snapshot.pods.len();
        let changed = with_pod_label(&snapshot, index, &format!("step-{step}"));
        let (compiled, t) = timed(|| compile(&changed));
        recompile.push(t);
        ensure!(
            compiled.config != last,
            "a pod label change did not change the config"
        );
        // Once per compile, whatever the number of nodes: the resources, shared by every
        // node's target.
        let (set, t) = timed(|| {
            let set = ResourceSet::from_config(&compiled.config)?;
            server.publish_set(std::slice::from_ref(&target), set.clone());
            anyhow::Ok(set)
        });
        let set = set.context("publishing the changed config")?;
        publish.push(t);
        // Once per version: the update from the ACKed state, shared by every proxy that holds it.
        let (update, t) = timed(|| {
            let d = delta_between(&prev, &set);
            Update {
                version: 2 + step as u64,
                full: false,
                upserts: d.upserts,
                removes: d.removes,
            }
        });
        let bytes = encode(&ServerMessage::Update(update.clone()));
        delta_t.push(t);
        delta_bytes.push(bytes.len());
        delta_upserts.push(update.upserts.len());
        // Per proxy: apply the update to what it holds.
        let (applied, t) = timed(|| proxy.apply(&update, |_| Ok(())));
        let config = applied?;
        ensure!(
            *config == canonical(&compiled.config)?,
            "the proxy assembled a different config"
        );
        apply_t.push(t);
        prev = set;
        last = compiled.config;
    }

    Ok(json!({
        "full": {
            "snapshot_objects": snapshot.pods.len() + snapshot.services.len()
                + snapshot.namespaces.len() + snapshot.authorization_policies.len()
                + snapshot.peer_authentications.len() + snapshot.meshes.len(),
            "snapshot_clone": summary_ms(&clone),
            "compile": summary_ms(&full),
            "config": {
                "workloads": base.config.workloads.len(),
                "services": base.config.services.len(),
                "policies": base.config.policies.len(),
                "resources": base_resources.0.len(),
                "full_update_bytes": full_update.len(),
            },
            "publish_first": summary_ms(&[publish_full]),
        },
        "per_pod_change": {
            "recompile": summary_ms(&recompile),
            "resources_and_publish_once_for_all_nodes": summary_ms(&publish),
            "delta_compute_once_per_version": summary_ms(&delta_t),
            "proxy_apply": summary_ms(&apply_t),
            "delta_bytes_max": delta_bytes.iter().max().copied().unwrap_or(0),
            "delta_bytes_p50": median(&mut delta_bytes),
            "delta_upserts_max": delta_upserts.iter().max().copied().unwrap_or(0),
        },
    }))
}

fn median(v: &mut [usize]) -> usize {
    v.sort_unstable();
    v.get(v.len().saturating_sub(1) / 2).copied().unwrap_or(0)
}
