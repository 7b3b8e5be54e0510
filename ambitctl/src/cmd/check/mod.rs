//! `ambitctl check`: preflight for this machine and, when reachable, the cluster.

mod cluster;
mod host;

use serde::Serialize;

use crate::ctx::Ctx;
use crate::error::{CliError, Result};
use crate::output::{print_structured, Format, Table};

#[derive(clap::Args, Debug)]
#[command(
    after_help = "Each check prints PASS, WARN or FAIL; every WARN and FAIL comes with a hint.
Exit code 1 when any check FAILs.

Examples:
  sudo ambitctl check
  ambitctl check -o json
  ambitctl check --cni-conf-dir /etc/cni/net.d --host-only"
)]
pub struct CheckArgs {
    /// Where the node's CNI configuration lives.
    #[arg(long, default_value = "/etc/cni/net.d")]
    pub cni_conf_dir: std::path::PathBuf,
    /// Skip the cluster checks.
    #[arg(long)]
    pub host_only: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Verdict {
    Pass,
    Warn,
    Fail,
}

#[derive(Clone, Debug, Serialize)]
pub struct Check {
    pub name: String,
    pub status: Verdict,
    pub message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hint: Option<String>,
}

impl Check {
    pub fn pass(name: &str, message: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            status: Verdict::Pass,
            message: message.into(),
            hint: None,
        }
    }
    pub fn warn(name: &str, message: impl Into<String>, hint: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            status: Verdict::Warn,
            message: message.into(),
            hint: Some(hint.into()),
        }
    }
    pub fn fail(name: &str, message: impl Into<String>, hint: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            status: Verdict::Fail,
            message: message.into(),
            hint: Some(hint.into()),
        }
    }
}

pub async fn run(ctx: &Ctx, args: CheckArgs) -> Result<()> {
    let cni_dir = args.cni_conf_dir.clone();
    let mut checks = tokio::task::spawn_blocking(move || host::all(&cni_dir))
        .await
        .map_err(|e| CliError::Failed(format!("host checks panicked: {e}")))?;
    if !args.host_only {
        checks.extend(cluster::all(ctx).await);
    }
    let count = |v| checks.iter().filter(|c| c.status == v).count();
    let (pass, warn, fail) = (
        count(Verdict::Pass),
        count(Verdict::Warn),
        count(Verdict::Fail),
    );
    if ctx.format() == Format::Table {
        let mut t = Table::new(&["STATUS", "CHECK", "DETAIL"]);
        for c in &checks {
            let s = match c.status {
                Verdict::Pass => "PASS",
                Verdict::Warn => "WARN",
                Verdict::Fail => "FAIL",
            };
            let detail = match &c.hint {
                Some(h) => format!("{}\n{:>w$}fix: {h}", c.message, "", w = 0),
                None => c.message.clone(),
            };
            let mut lines = detail.lines();
            t.row(vec![
                s.into(),
                c.name.clone(),
                lines.next().unwrap_or("").into(),
            ]);
            for l in lines {
                t.row(vec![String::new(), String::new(), format!("  {l}")]);
            }
        }
        print!("{}", t.render());
        println!("\n{pass} passed, {warn} warnings, {fail} failed");
    } else {
        print_structured(
            ctx.format(),
            &serde_json::json!({"checks": checks, "summary": {"pass": pass, "warn": warn, "fail": fail}}),
        );
    }
    if fail > 0 {
        Err(CliError::Silent(1))
    } else {
        Ok(())
    }
}
