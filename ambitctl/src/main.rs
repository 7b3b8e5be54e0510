//! `ambitctl`: Ambit's front door.
#![forbid(unsafe_code)]

mod demo;
mod demo_app;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(version, about = "Ambit's command line")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// The local sandbox: a mesh in network namespaces on this machine, no Kubernetes needed.
    Local {
        #[command(subcommand)]
        command: Local,
    },
    /// Runs one service of the Bookinfo-shaped demo application (the sandbox and kind-tests use it).
    DemoApp(demo_app::DemoAppArgs),
    /// Runs a ztunnel (used by the sandbox, which starts one per node from this binary).
    #[command(hide = true, name = "__ztunnel")]
    Ztunnel {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<std::ffi::OsString>,
    },
}

#[derive(Subcommand)]
enum Local {
    /// Builds nodes and pods as network namespaces with a ztunnel per node, runs demo
    /// traffic through the mesh and shows that it is mTLS; cleans everything up on exit.
    Demo(demo::DemoArgs),
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Ztunnel { args } => ambit_ztunnel::cli::main_with_args(args),
        Command::DemoApp(args) => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
            .block_on(demo_app::run(args)),
        Command::Local {
            command: Local::Demo(args),
        } => demo::run(args),
    }
}
