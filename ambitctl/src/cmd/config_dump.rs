//! `ambitctl config dump ztunnel NODE | waypoint NS/NAME` and `ambitctl certs NODE`: what a
//! proxy holds right now, from its admin port.

use serde_json::Value;

use crate::ctx::Ctx;
use crate::error::{failed, Result};
use crate::output::{print_structured, Format, Table};
use crate::targets::{fetch, Endpoint};

#[derive(clap::Subcommand, Debug)]
pub enum ConfigCmd {
    /// Print a proxy's current configuration (its admin `/config_dump`).
    #[command(after_help = "Examples:
  ambitctl config dump ztunnel node-1
  ambitctl config dump waypoint bookinfo/waypoint -o yaml")]
    Dump {
        #[command(subcommand)]
        proxy: DumpTarget,
    },
}

#[derive(clap::Subcommand, Debug)]
pub enum DumpTarget {
    /// The ztunnel of NODE.
    Ztunnel { node: String },
    /// The waypoint NAMESPACE/NAME.
    Waypoint {
        #[arg(value_name = "NAMESPACE/NAME")]
        waypoint: String,
    },
}

#[derive(clap::Args, Debug)]
#[command(after_help = "Examples:
  ambitctl certs node-1
  ambitctl certs node-1 -o json")]
pub struct CertsArgs {
    /// Node whose ztunnel to ask.
    pub node: String,
}

/// GETs `path` from `ep` and parses it as JSON.
pub async fn admin_json(client: Option<&kube::Client>, ep: &Endpoint, path: &str) -> Result<Value> {
    let body = fetch(client, ep, path).await?;
    serde_json::from_str(&body)
        .map_err(|e| failed(format!("{} {path} is not JSON: {e}", ep.describe())))
}

pub async fn dump(ctx: &Ctx, cmd: ConfigCmd) -> Result<()> {
    let ConfigCmd::Dump { proxy } = cmd;
    let client = ctx.optional_client().await;
    let targets = ctx.targets(client.as_ref()).await?;
    let ep = match &proxy {
        DumpTarget::Ztunnel { node } => targets.node(node)?.admin.clone(),
        DumpTarget::Waypoint { waypoint } => targets.waypoint(waypoint)?.admin.clone(),
    };
    let v = admin_json(client.as_ref(), &ep, "/config_dump").await?;
    print_structured(ctx.format(), &v);
    Ok(())
}

/// Seconds as `23h59m`, `5m12s`, `expired 3m ago`.
pub fn human_secs(s: i64) -> String {
    let (neg, a) = (s < 0, s.unsigned_abs());
    let txt = if a >= 3600 {
        format!("{}h{}m", a / 3600, (a % 3600) / 60)
    } else if a >= 60 {
        format!("{}m{}s", a / 60, a % 60)
    } else {
        format!("{a}s")
    };
    if neg {
        format!("expired {txt} ago")
    } else {
        txt
    }
}

pub fn rfc3339(unix: i64) -> String {
    k8s_openapi::jiff::Timestamp::from_second(unix)
        .map(|t| t.to_string())
        .unwrap_or_else(|_| unix.to_string())
}

pub async fn certs(ctx: &Ctx, args: CertsArgs) -> Result<()> {
    let client = ctx.optional_client().await;
    let targets = ctx.targets(client.as_ref()).await?;
    let ep = targets.node(&args.node)?.admin.clone();
    let v = admin_json(client.as_ref(), &ep, "/certs").await?;
    if ctx.format() != Format::Table {
        print_structured(ctx.format(), &v);
        return Ok(());
    }
    let mut t = Table::new(&["IDENTITY", "SERIAL", "NOT AFTER", "EXPIRES IN"]);
    for c in v.as_array().into_iter().flatten() {
        t.row(vec![
            c["identity"].as_str().unwrap_or("-").to_string(),
            c["serial"].as_str().unwrap_or("-").to_string(),
            c["notAfter"]
                .as_i64()
                .map(rfc3339)
                .unwrap_or_else(|| "-".into()),
            c["expiresInSeconds"]
                .as_i64()
                .map(human_secs)
                .unwrap_or_else(|| "-".into()),
        ]);
    }
    if t.is_empty() {
        println!("node {} holds no workload certificates", args.node);
    } else {
        print!("{}", t.render());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_like_a_person_wrote_them() {
        assert_eq!(human_secs(86_399), "23h59m");
        assert_eq!(human_secs(312), "5m12s");
        assert_eq!(human_secs(-180), "expired 3m0s ago");
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
    }
}
