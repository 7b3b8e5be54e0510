//! `ambit-bench`: repeatable Ambit benchmarks that print one JSON object.
//!
//! `ambit-bench l4 [--quick] [--out PATH]` runs the L4 benchmark (see [`l4`]).
//! `ambit-bench cni [--pods N] [--quick] [--out PATH]` runs the CNI ADD-to-ready benchmark
//! (see [`cni`]).
//! `ambit-bench control-plane [--pods N ...] [--out PATH]` runs the operator-scale benchmark
//! (see [`control_plane`]); `ambit-bench cp-operator` (hidden) is its operator process.
//! `ambit-bench cni-plugin` (hidden) is the `ambit-cni` plugin, run by the CNI benchmark as a
//! container runtime would, so the plugin is a separate process from the same build.
//! `ambit-bench waypoint [--quick] [--out PATH]` runs the waypoint (L7) benchmark (see
//! [`waypoint`]).
//! `ambit-bench bookinfo [--quick] [--out PATH]` runs the thesis-style Bookinfo evaluation on
//! the `ambitctl local` sandbox (see [`bookinfo`]).
//! `ambit-bench waypoint-proxy ARGS...` (hidden) runs the waypoint itself, as the `waypoint`
//! binary would, so the waypoint benchmark's proxy is a separate process from the same build.
//! `ambit-bench ztunnel ARGS...` (hidden) runs a ztunnel: the benchmark re-executes itself
//! that way for each node, so the ztunnels are separate processes whose CPU and memory can be
//! read from /proc while one `cargo run` does everything.
#![forbid(unsafe_code)]

mod bookinfo;
mod bookinfo_load;
mod bookinfo_report;
mod bookinfo_sandbox;
mod cni;
mod control_plane;
mod cp_compile;
mod cp_objects;
mod cp_operator;
mod cp_propagation;
mod http_load;
mod l4;
mod load;
mod procstat;
mod stats;
mod waypoint;
mod wp_env;
mod wp_report;

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
    /// Control-plane benchmark: compile cost at scale, propagation from an API change to
    /// every node's config stream (p50/p99), operator memory. No root needed.
    ControlPlane(control_plane::Args),
    /// Waypoint benchmark: the L7 hop's added latency, CPU and memory at 1000 req/s (HTTP/1.1
    /// and HTTP/2) and maximum throughput, against the same requests sent straight to the
    /// backend over HBONE. Needs root.
    Waypoint(waypoint::Args),
    /// Bookinfo evaluation (the App Mesh vs Istio thesis' scenarios) on the `ambitctl local`
    /// sandbox: max throughput, constant load, CPU and memory; mesh vs no mesh. Needs root.
    Bookinfo(bookinfo::Args),
}

fn main() -> ExitCode {
    // Before anything else: the plugin reads only CNI_* variables and stdin, like ambit-cni.
    if std::env::args_os().nth(1).as_deref() == Some(OsStr::new("cni-plugin")) {
        cni::plugin_main();
    }
    // The operator child of the control-plane benchmark.
    if std::env::args_os().nth(1).as_deref() == Some(OsStr::new(cp_operator::SUBCOMMAND)) {
        return match cp_operator::operator_main(std::env::args_os().skip(2)) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("operator: {e:#}");
                ExitCode::FAILURE
            }
        };
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
    if std::env::args_os().nth(1).as_deref() == Some(OsStr::new("waypoint-proxy")) {
        return match ambit_waypoint::cli::main_with_args(std::env::args_os().skip(2)) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("waypoint: {e:#}");
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
        Cmd::Waypoint(args) => waypoint::run(&args).and_then(|value| {
            println!("{}", serde_json::to_string_pretty(&value)?);
            l4::write_result(&args.out, &value)?;
            eprintln!("result written to {}", args.out.display());
            Ok(())
        }),
        Cmd::Bookinfo(args) => bookinfo::run(&args).and_then(|value| {
            println!("{}", serde_json::to_string_pretty(&value)?);
            l4::write_result(&args.out, &value)?;
            eprintln!("result written to {}", args.out.display());
            Ok(())
        }),
        Cmd::ControlPlane(args) => control_plane::run(&args).and_then(|value| {
            println!("{}", serde_json::to_string_pretty(&value)?);
            control_plane::write_result(&args.out, &value)?;
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
