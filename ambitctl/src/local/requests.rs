//! `ambitctl local traffic`: sends demo requests from the sandbox's client pod and reports
//! which reviews versions answered, e.g. to watch a canary TrafficRoute take effect.

use std::time::Instant;

use anyhow::{bail, Context};
use serde_json::{json, Value};

use super::layout::Layout;
use super::net::netns_path;
use super::traffic::{self, Target};

#[derive(clap::Args)]
pub struct TrafficArgs {
    #[arg(long, default_value = super::layout::DEFAULT_NAME)]
    pub name: String,
    /// Requests to send.
    #[arg(short = 'n', long, default_value_t = 200, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub requests: u64,
    /// Requests in flight at a time.
    #[arg(short = 'c', long, default_value_t = 8, value_parser = clap::value_parser!(u16).range(1..=256))]
    pub concurrency: u16,
    /// Service the client pod calls (by its ClusterIP); both answers name the reviews version.
    #[arg(long, value_enum, default_value_t = Target::Productpage)]
    pub to: Target,
    #[arg(short = 'o', long, value_parser = ["text", "json"], default_value = "text")]
    pub output: String,
}

pub fn run(args: TrafficArgs) -> anyhow::Result<()> {
    let layout = Layout::new(&args.name)?;
    let state = super::state::require(&layout)?;
    if !nix::unistd::geteuid().is_root() {
        bail!("sending from the client pod enters its network namespace: run it as root (sudo)");
    }
    let client = client_netns(&state).with_context(|| {
        format!(
            "{} names no client pod: restart the sandbox (`ambitctl local down --name {1}`, then `up --name {1}`)",
            layout.state_file().display(),
            layout.name
        )
    })?;
    let started = Instant::now();
    let tally = traffic::send(
        &netns_path(&client),
        args.to,
        args.requests,
        usize::from(args.concurrency),
    )?;
    let mut report = tally.json();
    report["name"] = json!(layout.name);
    report["target"] = json!(args.to.url());
    report["requests"] = json!(args.requests);
    report["concurrency"] = json!(args.concurrency);
    report["seconds"] = json!(started.elapsed().as_secs_f64());
    if args.output == "json" {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_text(&report, args.to);
    }
    if tally.ok == 0 {
        bail!(
            "no request to {} succeeded (last error: {}); `ambitctl local status --name {}` shows what runs",
            args.to.name(),
            tally.last_error.unwrap_or_default(),
            layout.name
        );
    }
    Ok(())
}

fn client_netns(state: &Value) -> Option<String> {
    state["sandbox"]["pods"]
        .as_array()?
        .iter()
        .find(|p| p["name"] == "client")?["netns"]
        .as_str()
        .map(String::from)
}

fn print_text(r: &Value, to: Target) {
    println!(
        "{} requests to {} ({}) from pod client, {} at a time: {} ok, {} failed in {:.1}s",
        r["requests"],
        to.name(),
        r["target"].as_str().unwrap_or("?"),
        r["concurrency"],
        r["ok"],
        r["failed"],
        r["seconds"].as_f64().unwrap_or(0.0)
    );
    for (v, x) in r["reviews"].as_object().into_iter().flatten() {
        let pct = x["percent"].as_f64().unwrap_or(0.0);
        println!(
            "  reviews {v:<4} {:>7}  {pct:>6.2}%  {}",
            x["count"].as_u64().unwrap_or(0),
            "#".repeat((pct / 2.0).round() as usize)
        );
    }
    if let Some(e) = r["lastError"].as_str() {
        println!("  last error: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_client_pod_is_found_in_the_state_file() {
        let state = json!({"sandbox": {"pods": [
            {"name": "productpage-v1", "netns": "x-productpage-v1"},
            {"name": "client", "netns": "x-client"}]}});
        assert_eq!(client_netns(&state).as_deref(), Some("x-client"));
        assert_eq!(client_netns(&json!({"sandbox": {"pods": []}})), None);
        assert_eq!(client_netns(&json!({})), None);
    }
}
