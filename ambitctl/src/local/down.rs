//! `ambitctl local down`: stops every sandbox process, deletes its network namespaces, host
//! bridge and state directory. Idempotent; works after a crashed or killed `local up`.

use std::time::Duration;

use anyhow::bail;
use serde_json::{json, Value};

use super::layout::Layout;
use super::{net, procs};

#[derive(clap::Args)]
pub struct DownArgs {
    #[arg(long, default_value = super::layout::DEFAULT_NAME)]
    pub name: String,
    #[arg(short = 'o', long, value_parser = ["text", "json"], default_value = "text")]
    pub output: String,
}

pub fn run(args: DownArgs) -> anyhow::Result<()> {
    let layout = Layout::new(&args.name)?;
    if !nix::unistd::geteuid().is_root() {
        bail!("removing the sandbox's network namespaces needs root: run it with sudo");
    }
    let report = clean(&layout);
    if args.output == "json" {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        eprintln!(
            "sandbox {:?}: stopped {} processes, deleted {} network namespaces, state dir removed: {}",
            layout.name, report["processesStopped"], report["netnsDeleted"], report["stateDirRemoved"]
        );
    }
    let left = &report["leftover"];
    if left["processes"].as_array().is_some_and(|a| !a.is_empty())
        || left["netns"].as_array().is_some_and(|a| !a.is_empty())
    {
        bail!("some of the sandbox could not be removed: {left}");
    }
    Ok(())
}

/// Removes everything of the sandbox that exists; safe to call on a partial or absent one.
/// The node agents' nftables rules live in the node and pod namespaces, so they go with them.
pub fn clean(layout: &Layout) -> Value {
    let stopped = procs::stop_all(layout, Duration::from_secs(5));
    let slot = layout.slot();
    let deleted = net::teardown(layout, slot);
    layout.release_slot();
    let removed = layout.dir.exists() && std::fs::remove_dir_all(&layout.dir).is_ok();
    json!({
        "name": layout.name,
        "processesStopped": stopped,
        "netnsDeleted": deleted,
        "stateDirRemoved": removed,
        "leftover": {"processes": procs::all_live(layout), "netns": net::remaining_netns(layout),
                     "stateDir": layout.dir.exists()},
    })
}
