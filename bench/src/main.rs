//! `ambit-bench`: repeatable Ambit benchmarks that print one JSON object.
//!
//! `ambit-bench l4 [--quick] [--out PATH]` runs the L4 benchmark (see [`l4`]).
//! `ambit-bench cni [--pods N] [--quick] [--out PATH]` runs the CNI ADD-to-ready benchmark
//! (see [`cni`]).
//! `ambit-bench cni-plugin` (hidden) is the `ambit-cni` plugin, run by the CNI benchmark as a
//! container runtime would, so the plugin is a separate process from the same build.
//! `ambit-bench ztunnel ARGS...` (hidden) runs a ztunnel: the benchmark re-executes itself
//! that way for each node, so the ztunnels are separate processes whose CPU and memory can be
//! read from /proc while one `cargo run` does everything.
#![forbid(unsafe_code)]

mod cni;
mod l4;
mod load;
mod procstat;
mod stats;

use std::ffi::OsStr;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(
    name = "ambit-bench",
    version,
    about = "Ambit benchmarks with JSON output"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// L4 benchmark: plain TCP vs the mesh (throughput, latency at a fixed rate, connection
    /// rate, ztunnel CPU and memory). Needs root: it builds network namespaces.
    L4(l4::Args),
    /// CNI benchmark: time from a CNI ADD to the pod being captured and ready (p50/p99 over
    /// N pods), via the plugin process and straight to the node agent. Needs root.
    Cni(cni::Args),
}

fn main() -> ExitCode {
    // Before anything else: the plugin reads only CNI_* variables and stdin, like ambit-cni.
    if std::env::args_os().nth(1).as_deref() == Some(OsStr::new("cni-plugin")) {
        cni::plugin_main();
    }
    // The ztunnel children must not parse the bench's own arguments.
    if std::env::args_os().nth(1).as_deref() == Some(OsStr::new("ztunnel")) {
        return match ambit_ztunnel::cli::main_with_args(std::env::args_os().skip(2)) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("ztunnel: {e:#}");
                ExitCode::FAILURE
            }
        };
    }
    let cli = Cli::parse();
    let result = match cli.cmd {
        Cmd::L4(args) => l4::run(&args).and_then(|value| {
            println!("{}", serde_json::to_string_pretty(&value)?);
            l4::write_result(&args.out, &value)?;
            eprintln!("result written to {}", args.out.display());
            Ok(())
        }),
        Cmd::Cni(args) => cni::run(&args).and_then(|value| {
            println!("{}", serde_json::to_string_pretty(&value)?);
            cni::write_result(&args.out, &value)?;
            eprintln!("result written to {}", args.out.display());
            Ok(())
        }),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ambit-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}
