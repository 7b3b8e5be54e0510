//! `ambitctl local up | down | status`: the whole mesh on one Linux machine, no Kubernetes.
//!
//! `up` starts the in-memory API server (apisim) and the operator on the host, builds nodes
//! as network namespaces on a host bridge, plays the kubelet for the operator's DaemonSets
//! (a ztunnel in stream mode and a node agent per node), creates the demo app's pods through
//! the real CNI plugin, enrolls their namespace, runs the waypoint, and shows traffic through
//! productpage reaching every reviews version, encrypted between nodes. `traffic` sends more
//! of it and reports the reviews versions' shares (the canary step of the tour).
//! Every process carries the sandbox marker ([`layout::MARKER_ENV`]) and has a pid file, so
//! `down` removes everything even after a crash. See docs/quickstart.md.

mod apps;
mod bins;
mod cluster;
mod daemons;
mod dataplane;
mod down;
mod l7;
mod layout;
mod net;
mod procs;
mod requests;
mod state;
mod status;
mod traffic;
mod up;

use serde_json::Value;

pub use daemons::{ApisimArgs, OperatorArgs};
pub use down::DownArgs;
pub use requests::TrafficArgs;
pub use status::StatusArgs;
pub use up::UpArgs;

/// Most nodes `local up` builds.
pub const MAX_NODES: usize = 8;

pub fn up(args: UpArgs) -> anyhow::Result<()> {
    up::run(args)
}
pub fn down(args: DownArgs) -> anyhow::Result<()> {
    down::run(args)
}
pub fn status(args: StatusArgs) -> anyhow::Result<()> {
    status::run(args)
}
pub fn traffic(args: TrafficArgs) -> anyhow::Result<()> {
    requests::run(args)
}
pub fn apisim(args: ApisimArgs) -> anyhow::Result<()> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(daemons::apisim(args))
}
pub fn operator(args: OperatorArgs) -> anyhow::Result<()> {
    daemons::operator(args)
}
/// Progress lines on stderr.
pub struct Progress {
    started: std::time::Instant,
}

impl Progress {
    pub fn new() -> Self {
        Progress {
            started: std::time::Instant::now(),
        }
    }
    pub fn step(&self, msg: &str) {
        eprintln!("==> [{:>5.1}s] {msg}", self.started.elapsed().as_secs_f64());
    }
}

fn print_summary(s: &Value) {
    let r = &s["requests"];
    eprintln!();
    eprintln!(
        "sandbox {} is up; API server {} (state file {})",
        s["name"].as_str().unwrap_or("?"),
        s["apiServer"].as_str().unwrap_or("?"),
        s["stateFile"].as_str().unwrap_or("?")
    );
    eprintln!("Mesh default Ready: {}", s["mesh"]["ready"]);
    eprintln!(
        "pods captured: {} of {}",
        s["pods"]["captured"], s["pods"]["total"]
    );
    let versions: Vec<String> = r["reviews"]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(v, x)| format!("{v} {}", x["count"]))
        .collect();
    eprintln!(
        "productpage: {} ok, {} failed; reviews versions reached through it: {}",
        r["ok"],
        r["failed"],
        versions.join(", ")
    );
    if let Some(n) = s["waypointReviewsRequests"].as_f64() {
        eprintln!("waypoint: {n} requests to reviews handled (L7 path, no route yet)");
    }
    eprintln!(
        "wire: {} HBONE segments to :15008 captured on the nodes; plaintext seen: {}",
        s["wire"]["hboneSegments"], s["wire"]["plaintextSeen"]
    );
    eprintln!(
        "ztunnels: {} mutual-TLS connections opened",
        s["mtlsConnectionsOpened"]
    );
    for st in s["steps"].as_array().into_iter().flatten() {
        eprintln!(
            "{}: {} ({})",
            st["step"].as_str().unwrap_or("?"),
            st["status"].as_str().unwrap_or("?"),
            st["detail"].as_str().unwrap_or("")
        );
    }
    let cmds: Vec<&str> = s["next"]["commands"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    if let [apply, traffic] = cmds.as_slice() {
        eprintln!();
        eprintln!(
            "next, a canary: 90% of reviews' requests to v1, 10% to v2, decided by the waypoint"
        );
        eprintln!("  {apply}");
        eprintln!("  {traffic}     # reviews versions seen through productpage, in percent");
    }
    eprintln!(
        "try: ambitctl get meshes; ambitctl status; ambitctl local status; ambitctl local down"
    );
}

/// The last lines of every process log (why a step failed).
fn print_log_tails(layout: &layout::Layout) {
    let Ok(entries) = std::fs::read_dir(layout.dir.join("logs")) else {
        return;
    };
    for e in entries.flatten() {
        let text = std::fs::read_to_string(e.path()).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        eprintln!("--- {} (last lines)", e.path().display());
        for l in &lines[lines.len().saturating_sub(8)..] {
            eprintln!("    {l}");
        }
    }
}
