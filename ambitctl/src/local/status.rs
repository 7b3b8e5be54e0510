//! `ambitctl local status`: what runs, what the API says (Mesh and Waypoint conditions,
//! nodes), and which pods each node's ztunnel has captured.

use kube::Client;
use serde_json::{json, Value};

use super::cluster;
use super::layout::{node_name, Layout};
use super::{dataplane, net, procs};

#[derive(clap::Args)]
pub struct StatusArgs {
    #[arg(long, default_value = super::layout::DEFAULT_NAME)]
    pub name: String,
    #[arg(short = 'o', long, value_parser = ["text", "json"], default_value = "text")]
    pub output: String,
}

pub fn run(args: StatusArgs) -> anyhow::Result<()> {
    let layout = Layout::new(&args.name)?;
    let state = super::state::require(&layout)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let report = rt.block_on(collect(&layout, &state));
    if args.output == "json" {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_text(&report);
    }
    Ok(())
}

async fn collect(layout: &Layout, state: &Value) -> Value {
    let processes: Vec<Value> = procs::pid_files(layout)
        .into_iter()
        .map(|(name, pid)| json!({"name": name, "pid": pid, "alive": procs::alive(pid)}))
        .collect();
    let api = state["apiServer"].as_str().unwrap_or_default().to_string();
    let mut report = json!({"name": layout.name, "apiServer": api, "processes": processes,
        "netns": net::remaining_netns(layout), "steps": state["sandbox"]["steps"]});
    let nodes = state["nodes"].as_array().map(Vec::len).unwrap_or(0);
    report["capturedPods"] = (0..nodes)
        .map(|i| {
            let v = match dataplane::captured_pods(layout, i) {
                Ok(ips) => json!(ips),
                Err(e) => json!(format!("unreachable: {e:#}")),
            };
            (node_name(i), v)
        })
        .collect::<serde_json::Map<_, _>>()
        .into();
    match api_view(&api).await {
        Ok(v) => report["api"] = v,
        Err(e) => report["api"] = json!({"error": format!("{e:#}")}),
    }
    report
}

async fn api_view(api: &str) -> anyhow::Result<Value> {
    let c = Client::try_from(kube::Config::new(api.parse()?))?;
    let mesh = cluster::mesh(&c).await?.unwrap_or_default();
    let waypoints = cluster::get(&c, "/apis/ambit.dev/v1alpha1/waypoints")
        .await?
        .unwrap_or_default();
    let nodes = cluster::get(&c, "/api/v1/nodes").await?.unwrap_or_default();
    let names = |list: &Value| -> Vec<Value> {
        list["items"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|o| o["metadata"]["name"].clone())
            .collect()
    };
    Ok(json!({
        "mesh": {"conditions": mesh["status"]["conditions"]},
        "waypoints": waypoints["items"].as_array().into_iter().flatten().map(|w| json!({
            "name": w["metadata"]["name"], "namespace": w["metadata"]["namespace"],
            "conditions": w["status"]["conditions"]})).collect::<Vec<_>>(),
        "nodes": names(&nodes),
    }))
}

fn print_text(r: &Value) {
    let mut out = String::new();
    print_into(&mut out, r);
    // A closed pipe (`| head`) is not an error worth a panic.
    let _ = std::io::Write::write_all(&mut std::io::stdout(), out.as_bytes());
}

fn print_into(out: &mut String, r: &Value) {
    use std::fmt::Write as _;
    let _ = writeln!(
        out,
        "sandbox {}  (API server {})",
        r["name"].as_str().unwrap_or("?"),
        r["apiServer"].as_str().unwrap_or("?")
    );
    let _ = writeln!(out, "processes:");
    for p in r["processes"].as_array().into_iter().flatten() {
        let alive = if p["alive"] == true {
            "running"
        } else {
            "STOPPED"
        };
        let _ = writeln!(
            out,
            "  {:<28} pid {:<8} {alive}",
            p["name"].as_str().unwrap_or("?"),
            p["pid"]
        );
    }
    let _ = writeln!(
        out,
        "network namespaces: {}",
        r["netns"].as_array().map(Vec::len).unwrap_or(0)
    );
    if let Some(e) = r["api"]["error"].as_str() {
        let _ = writeln!(out, "API server: unreachable: {e}");
    } else {
        let _ = writeln!(out, "nodes: {}", r["api"]["nodes"]);
        for c in r["api"]["mesh"]["conditions"]
            .as_array()
            .into_iter()
            .flatten()
        {
            let _ = writeln!(
                out,
                "Mesh default: {}={} ({}) {}",
                c["type"].as_str().unwrap_or("?"),
                c["status"].as_str().unwrap_or("?"),
                c["reason"].as_str().unwrap_or(""),
                c["message"].as_str().unwrap_or("")
            );
        }
        let wps = r["api"]["waypoints"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        if wps.is_empty() {
            let _ = writeln!(out, "waypoints: none");
        }
        for w in wps {
            let _ = writeln!(
                out,
                "waypoint {}/{}: {}",
                w["namespace"].as_str().unwrap_or("?"),
                w["name"].as_str().unwrap_or("?"),
                conditions(&w["conditions"])
            );
        }
    }
    for (node, pods) in r["capturedPods"].as_object().into_iter().flatten() {
        let _ = writeln!(out, "{node}: captured pods {pods}");
    }
    for s in r["steps"].as_array().into_iter().flatten() {
        let _ = writeln!(
            out,
            "step {}: {} ({})",
            s["step"].as_str().unwrap_or("?"),
            s["status"].as_str().unwrap_or("?"),
            s["detail"].as_str().unwrap_or("")
        );
    }
}

/// `Type=Status (Reason), ...`
fn conditions(v: &Value) -> String {
    let list: Vec<String> = v
        .as_array()
        .into_iter()
        .flatten()
        .map(|c| {
            format!(
                "{}={} ({})",
                c["type"].as_str().unwrap_or("?"),
                c["status"].as_str().unwrap_or("?"),
                c["reason"].as_str().unwrap_or("")
            )
        })
        .collect();
    if list.is_empty() {
        "no conditions yet".into()
    } else {
        list.join(", ")
    }
}
