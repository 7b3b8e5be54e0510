//! The sandbox state file (`state.json`, format in `crate::targets`), which every other
//! `ambitctl` command reads; the sandbox adds its own details under `sandbox`.

use serde_json::{json, Value};

use super::apps::PodInfo;
use super::layout::{node_name, Layout, Net};
use crate::targets::{NodeEntry, SandboxState, WaypointEntry};

pub fn write(
    layout: &Layout,
    net: Net,
    api: &str,
    nodes: usize,
    pods: &[PodInfo],
    waypoints: &[WaypointEntry],
    steps: &[Value],
) -> anyhow::Result<()> {
    let base = SandboxState {
        api_server: Some(api.to_string()),
        nodes: (0..nodes)
            .map(|i| NodeEntry {
                name: node_name(i),
                ztunnel_admin: "127.0.0.1:15000".into(),
                ztunnel_metrics: Some(format!("{}:15020", net.node_ip(i))),
                netns: Some(layout.netns(&node_name(i))),
            })
            .collect(),
        waypoints: waypoints.to_vec(),
    };
    let mut v = serde_json::to_value(base)?;
    v["sandbox"] = json!({
        "name": layout.name, "slot": net.slot, "operator": format!("{}:15012", net.host_ip()),
        "bridge": net.bridge(), "pods": pods, "steps": steps,
    });
    let path = layout.state_file();
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, serde_json::to_string_pretty(&v)?)?;
    std::fs::rename(&tmp, &path)?;
    Ok(())
}

pub fn read(layout: &Layout) -> Option<Value> {
    serde_json::from_str(&std::fs::read_to_string(layout.state_file()).ok()?).ok()
}

/// The state of a sandbox that must be up, or an error saying how to start it.
pub fn require(layout: &Layout) -> anyhow::Result<Value> {
    read(layout).ok_or_else(|| {
        anyhow::anyhow!(
            "sandbox {:?} is not up (no {}): start it with `ambitctl local up --name {0}`",
            layout.name,
            layout.state_file().display()
        )
    })
}
