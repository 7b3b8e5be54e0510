//! Writes the CRD YAML (`crds/`, `helm/ambit/crds/`) and the CRD reference (`docs/crds.md`) from
//! the Rust types. `--check` only compares, and exits 1 listing stale files.
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;

use ambit_operator::crd::generate::{self, REGENERATE_COMMAND};

const USAGE: &str = "usage: crdgen [--check] [--root <workspace root>]

Writes crds/*.yaml, helm/ambit/crds/*.yaml and docs/crds.md from operator/src/crd/.
  --check   write nothing; exit 1 and list the files that are missing or out of date
  --root    the workspace root (default: the one this binary was built from)";

fn main() -> ExitCode {
    let mut check = false;
    let mut root = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/.."));
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--check" => check = true,
            "--root" => match args.next() {
                Some(r) => root = PathBuf::from(r),
                None => return usage_error("--root needs a directory"),
            },
            "-h" | "--help" => {
                println!("{USAGE}");
                return ExitCode::SUCCESS;
            }
            other => return usage_error(&format!("unknown argument {other:?}")),
        }
    }
    if check {
        match generate::check(&root) {
            Ok(stale) if stale.is_empty() => {
                println!("CRDs and docs/crds.md are up to date");
                ExitCode::SUCCESS
            }
            Ok(stale) => {
                for s in &stale {
                    eprintln!("stale: {s}");
                }
                eprintln!("regenerate them with: {REGENERATE_COMMAND}");
                ExitCode::FAILURE
            }
            Err(e) => {
                eprintln!("crdgen: {e}");
                ExitCode::from(2)
            }
        }
    } else {
        match generate::write(&root) {
            Ok(changed) => {
                for p in &changed {
                    println!("updated {}", p.display());
                }
                if changed.is_empty() {
                    println!("everything was up to date");
                }
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("crdgen: {e}");
                ExitCode::from(2)
            }
        }
    }
}

fn usage_error(msg: &str) -> ExitCode {
    eprintln!("crdgen: {msg}\n\n{USAGE}");
    ExitCode::from(2)
}
