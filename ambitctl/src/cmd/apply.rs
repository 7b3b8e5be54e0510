//! `ambitctl apply -f FILE|DIR|-`: validate Ambit objects client-side, then server-side apply.

use kube::api::{Patch, PatchParams};
use serde_json::json;

use crate::cluster;
use crate::ctx::Ctx;
use crate::error::{failed, from_kube, usage, CliError, Result};
use crate::manifest::{self, Doc};
use crate::output::{print_structured, Format};

pub const FIELD_MANAGER: &str = "ambitctl";

#[derive(clap::Args, Debug)]
#[command(after_help = "Examples:
  ambitctl apply -f crds/                 # install the CRDs
  ambitctl apply -f examples/canary-90-10.yaml
  cat route.yaml | ambitctl apply -f -
  ambitctl apply -f routes/ -n bookinfo   # namespace for objects that name none")]
pub struct ApplyArgs {
    /// File, directory (its .yaml/.yml/.json files) or `-` for stdin; repeatable.
    #[arg(short = 'f', long = "filename", required = true)]
    pub files: Vec<String>,
    /// Namespace for namespaced objects that do not name one (default: `default`).
    #[arg(short = 'n', long)]
    pub namespace: Option<String>,
    /// Take ownership of fields another manager set (server-side apply conflicts).
    #[arg(long)]
    pub force_conflicts: bool,
    /// Only validate; send nothing.
    #[arg(long)]
    pub dry_run: bool,
}

/// CRDs and Namespaces first, so the objects that need them can be created in the same run.
fn order(d: &Doc) -> u8 {
    match d.kind() {
        "CustomResourceDefinition" => 0,
        "Namespace" => 1,
        _ => 2,
    }
}

pub async fn run(ctx: &Ctx, args: ApplyArgs) -> Result<()> {
    let mut docs = manifest::load(&args.files)?;
    if docs.is_empty() {
        return Err(usage(format!(
            "no objects found in {}",
            args.files.join(", ")
        )));
    }
    let problems = manifest::validate(&docs);
    if !problems.is_empty() {
        return Err(failed(format!(
            "refusing to apply, {} problem(s) found (nothing was sent):\n  {}",
            problems.len(),
            problems.join("\n  ")
        )));
    }
    if args.dry_run {
        for d in &docs {
            println!("{}/{} valid", d.kind().to_lowercase(), d.name());
        }
        return Ok(());
    }
    docs.sort_by_key(order);
    let client = ctx.client().await?;
    let mut pp = PatchParams::apply(FIELD_MANAGER);
    pp.force = args.force_conflicts;
    let mut results = vec![];
    let mut errors = vec![];
    for d in &docs {
        match apply_one(&client, d, args.namespace.as_deref(), &pp).await {
            Ok((ns, outcome)) => {
                let line = format!("{}/{} {outcome}", d.kind().to_lowercase(), d.name());
                if ctx.format() == Format::Table {
                    println!("{line}");
                }
                results.push(
                    json!({"kind": d.kind(), "name": d.name(), "namespace": ns, "result": outcome}),
                );
            }
            Err(CliError::Unreachable(m)) => return Err(CliError::Unreachable(m)),
            Err(e) => {
                eprintln!("error: {}: {e}", d.place());
                errors.push(e.to_string());
            }
        }
    }
    if ctx.format() != Format::Table {
        print_structured(ctx.format(), &results);
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(CliError::Silent(1))
    }
}

/// Applies one object; returns its namespace and `created` / `configured` / `unchanged`.
async fn apply_one(
    client: &kube::Client,
    d: &Doc,
    default_ns: Option<&str>,
    pp: &PatchParams,
) -> Result<(Option<String>, &'static str)> {
    let (ar, namespaced) = cluster::resource_for(client, d.api_version(), d.kind()).await?;
    let ns = namespaced.then(|| {
        d.namespace()
            .or(default_ns)
            .unwrap_or("default")
            .to_string()
    });
    let api = cluster::api(client, &ar, namespaced, ns.as_deref());
    let what = format!("{} {}/{}", d.place(), d.kind(), d.name());
    let before = api
        .get_opt(d.name())
        .await
        .map_err(|e| from_kube(&format!("reading {what}"), e))?;
    let mut body = d.value.clone();
    if let (Some(ns), Some(meta)) = (
        &ns,
        body.get_mut("metadata").and_then(|m| m.as_object_mut()),
    ) {
        meta.insert("namespace".into(), json!(ns));
    }
    let after = api
        .patch(d.name(), pp, &Patch::Apply(&body))
        .await
        .map_err(|e| from_kube(&format!("applying {what}"), e))?;
    let outcome = match before {
        None => "created",
        Some(b) if b.metadata.resource_version == after.metadata.resource_version => "unchanged",
        Some(_) => "configured",
    };
    Ok((ns, outcome))
}
