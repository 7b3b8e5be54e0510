//! The CNI side of the node-agent tests: the real plugin binary and one node agent per node.

use std::path::{Path, PathBuf};
use std::time::Duration;

use ambit_cni::agent::{Agent, AgentOptions};
use ambit_testkit::mesh::{node_name, Mesh};

/// The `ambit-cni` plugin binary, next to the ztunnel binary under test.
pub fn cni_binary() -> PathBuf {
    let p = Path::new(env!("CARGO_BIN_EXE_ztunnel")).with_file_name("ambit-cni");
    assert!(
        p.exists(),
        "{} is missing: build it with `cargo build -p ambit-cni` (the full test suite does)",
        p.display()
    );
    p
}

/// Where `node`'s agent listens for the plugin.
pub fn plugin_socket(m: &Mesh, node: usize) -> PathBuf {
    m.dir.join(format!("agent-{node}.sock"))
}

/// `node`'s agent, reading the cluster from `cluster.json` in the mesh's directory and
/// re-reading it every `resync`.
pub fn agent_options(m: &Mesh, node: usize, resync: Duration) -> AgentOptions {
    AgentOptions {
        node: node_name(node),
        cluster_state: m.dir.join("cluster.json"),
        ztunnel_socket: m.inpod_socket(node),
        plugin_socket: plugin_socket(m, node),
        host_netns: m.topo.nodes[node].ns.path(),
        redirect: Default::default(),
        resync,
        netns_prefix: Some(m.topo.prefix().to_string()),
    }
}

/// `node`'s agent, resyncing every 200 ms.
pub fn start_agent(m: &Mesh, node: usize) -> Agent {
    Agent::start(agent_options(m, node, Duration::from_millis(200))).unwrap()
}
