//! `status` as tables: API server, nodes, waypoints, then problems and warnings.

use serde_json::Value;

use super::{NodeStatus, Warning, WaypointStatus};
use crate::cmd::config_dump::human_secs;
use crate::output::Table;

fn yes(b: bool) -> String {
    if b { "yes" } else { "NO" }.into()
}

pub fn print(api: &Value, nodes: &[NodeStatus], waypoints: &[WaypointStatus], warns: &[Warning]) {
    match api["reachable"].as_bool() {
        Some(true) => println!("API server: reachable"),
        Some(false) => println!(
            "API server: UNREACHABLE: {}",
            api["error"].as_str().unwrap_or("")
        ),
        None => println!("API server: not configured (policy warnings skipped)"),
    }
    if nodes.is_empty() {
        println!("\nNo ztunnels found (no sandbox state, --ztunnel-admin or ztunnel pods).");
    }
    let mut t = Table::new(&[
        "NODE",
        "ZTUNNEL",
        "CONFIG",
        "PODS",
        "CERTS VALID UNTIL",
        "EXPIRES IN",
    ]);
    for n in nodes {
        let config = match (&n.config_source, n.config_loaded) {
            (Some(src), _) if src["connected"] == false => "DISCONNECTED".to_string(),
            (_, true) => format!("{}w/{}s/{}p", n.workloads, n.services, n.policies),
            (_, false) if n.reachable => "NOT LOADED".into(),
            _ => "-".into(),
        };
        t.row(vec![
            n.name.clone(),
            if n.reachable {
                "up".into()
            } else {
                "UNREACHABLE".into()
            },
            config,
            if n.reachable {
                n.captured_pods.len().to_string()
            } else {
                "-".into()
            },
            n.certs_valid_until.clone().unwrap_or_else(|| "-".into()),
            n.certs_expire_in_seconds
                .map(human_secs)
                .unwrap_or_else(|| "-".into()),
        ]);
    }
    if !nodes.is_empty() {
        println!();
        print!("{}", t.render());
    }
    if !waypoints.is_empty() {
        let mut t = Table::new(&["WAYPOINT", "REACHABLE", "ROUTES"]);
        for w in waypoints {
            t.row(vec![
                format!("{}/{}", w.namespace, w.name),
                yes(w.reachable),
                if w.routes.is_empty() {
                    "-".into()
                } else {
                    w.routes.join(",")
                },
            ]);
        }
        println!();
        print!("{}", t.render());
    }
    let problems: Vec<String> = nodes
        .iter()
        .flat_map(|n| {
            n.problems
                .iter()
                .map(move |p| format!("node {}: {p}", n.name))
        })
        .chain(waypoints.iter().flat_map(|w| {
            w.problems
                .iter()
                .map(move |p| format!("waypoint {}/{}: {p}", w.namespace, w.name))
        }))
        .collect();
    for p in &problems {
        println!("\nPROBLEM  {p}");
    }
    for w in warns {
        let at = w
            .namespace
            .as_deref()
            .map(|n| format!("{n}/"))
            .unwrap_or_default();
        println!(
            "\nWARNING  {}/{at}{}: {} {}: {}",
            w.kind, w.name, w.condition, w.reason, w.message
        );
    }
}
