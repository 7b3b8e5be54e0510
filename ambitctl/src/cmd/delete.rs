//! `ambitctl delete -f FILE | KIND NAME`.

use kube::api::DeleteParams;
use serde_json::json;

use crate::cluster;
use crate::ctx::Ctx;
use crate::error::{from_kube, usage, CliError, Result};
use crate::manifest;
use crate::output::{print_structured, Format};

#[derive(clap::Args, Debug)]
#[command(after_help = "Examples:
  ambitctl delete -f examples/canary-90-10.yaml
  ambitctl delete trafficroute reviews-canary -n bookinfo
  ambitctl delete tr reviews-canary -n bookinfo --ignore-not-found")]
pub struct DeleteArgs {
    /// Kind and name, e.g. `tr reviews-canary` (instead of -f).
    #[arg(num_args = 0..=2, value_names = ["KIND", "NAME"])]
    pub target: Vec<String>,
    /// Delete the objects in these files / directories / `-`.
    #[arg(short = 'f', long = "filename", conflicts_with = "target")]
    pub files: Vec<String>,
    /// Namespace for objects that do not name one (default: `default`).
    #[arg(short = 'n', long)]
    pub namespace: Option<String>,
    /// Succeed when the object is already gone.
    #[arg(long)]
    pub ignore_not_found: bool,
}

pub async fn run(ctx: &Ctx, args: DeleteArgs) -> Result<()> {
    // (apiVersion, kind, name, namespace-from-file)
    let mut items: Vec<(String, String, String, Option<String>)> = vec![];
    if !args.files.is_empty() {
        for d in manifest::load(&args.files)? {
            items.push((
                d.api_version().into(),
                d.kind().into(),
                d.name().into(),
                d.namespace().map(str::to_string),
            ));
        }
    } else if args.target.len() == 2 {
        let k = cluster::resolve_kind(&args.target[0])?;
        items.push((
            k.api_resource().api_version,
            k.kind.into(),
            args.target[1].clone(),
            None,
        ));
    } else {
        return Err(usage("say what to delete: -f FILE, or KIND NAME"));
    }
    let client = ctx.client().await?;
    let mut results = vec![];
    let mut failed = false;
    // Reverse file order: objects before the CRDs / namespaces that hold them.
    for (api_version, kind, name, ns) in items.into_iter().rev() {
        let (ar, namespaced) = cluster::resource_for(&client, &api_version, &kind).await?;
        let ns = namespaced.then(|| {
            ns.or(args.namespace.clone())
                .unwrap_or_else(|| "default".into())
        });
        let api = cluster::api(&client, &ar, namespaced, ns.as_deref());
        let outcome = match api.delete(&name, &DeleteParams::default()).await {
            Ok(_) => "deleted",
            Err(kube::Error::Api(s)) if s.code == 404 && args.ignore_not_found => "not found",
            Err(e) => match from_kube(&format!("deleting {kind}/{name}"), e) {
                CliError::Unreachable(m) => return Err(CliError::Unreachable(m)),
                other => {
                    eprintln!("error: {other}");
                    failed = true;
                    continue;
                }
            },
        };
        if ctx.format() == Format::Table {
            println!("{}/{name} {outcome}", kind.to_lowercase());
        }
        results.push(json!({"kind": kind, "name": name, "namespace": ns, "result": outcome}));
    }
    if ctx.format() != Format::Table {
        print_structured(ctx.format(), &results);
    }
    if failed {
        Err(CliError::Silent(1))
    } else {
        Ok(())
    }
}
