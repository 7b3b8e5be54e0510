//! `ambitctl`: Ambit's front door.
#![forbid(unsafe_code)]

mod cluster;
mod cmd;
mod ctx;
mod demo;
mod demo_app;
mod error;
mod http_get;
mod local;
mod manifest;
mod output;
mod prom;
mod targets;

use clap::{CommandFactory, Parser, Subcommand};

use cmd::{apply, check, config_dump, delete, get, status, top};
use ctx::{Ctx, GlobalArgs};
use error::CliError;

const EXIT_CODES: &str = "Exit codes: 0 ok; 1 an operation or check failed; 2 usage error; \
3 could not reach the API server or a proxy.

The API server is --server / AMBIT_SERVER, else the sandbox's (state file
/run/ambit-sandbox/state.json, --sandbox-state / AMBIT_SANDBOX_STATE), else your kubeconfig.
Proxies come from the sandbox state file, --ztunnel-admin NODE=ADDR / --metrics ADDR, or the
cluster's ztunnel and waypoint pods through the API server. See docs/ambitctl.md.";

#[derive(Parser)]
#[command(version, about = "Ambit's command line", after_help = EXIT_CODES)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create or update objects from files (server-side apply; Ambit objects are validated first).
    Apply {
        #[command(flatten)]
        args: apply::ApplyArgs,
        #[command(flatten)]
        g: GlobalArgs,
    },
    /// List or show Ambit objects, pods, services and namespaces.
    Get {
        #[command(flatten)]
        args: get::GetArgs,
        #[command(flatten)]
        g: GlobalArgs,
    },
    /// Delete objects named in files, or one object by kind and name.
    Delete {
        #[command(flatten)]
        args: delete::DeleteArgs,
        #[command(flatten)]
        g: GlobalArgs,
    },
    /// Health of every ztunnel and waypoint, and objects whose conditions report a problem.
    Status {
        #[command(flatten)]
        args: status::StatusArgs,
        #[command(flatten)]
        g: GlobalArgs,
    },
    /// What a proxy holds right now.
    Config {
        #[command(subcommand)]
        cmd: config_dump::ConfigCmd,
        #[command(flatten)]
        g: GlobalArgs,
    },
    /// The workload certificates a node's ztunnel holds.
    Certs {
        #[command(flatten)]
        args: config_dump::CertsArgs,
        #[command(flatten)]
        g: GlobalArgs,
    },
    /// Preflight checks of this machine and, if reachable, the cluster.
    Check {
        #[command(flatten)]
        args: check::CheckArgs,
        #[command(flatten)]
        g: GlobalArgs,
    },
    /// Live per-service request rate, success rate, p99 latency and TCP traffic.
    #[command(visible_alias = "traffic")]
    Top {
        #[command(flatten)]
        args: top::TopArgs,
        #[command(flatten)]
        g: GlobalArgs,
    },
    /// Print a shell completion script.
    #[command(after_help = "Examples:
  ambitctl completions bash > /etc/bash_completion.d/ambitctl
  ambitctl completions zsh > \"${fpath[1]}/_ambitctl\"
  ambitctl completions fish > ~/.config/fish/completions/ambitctl.fish")]
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
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
    /// Starts the sandbox: API server, operator, nodes with ztunnel and node agent, the demo
    /// app through the real CNI plugin, a waypoint; shows the mesh working. It keeps running
    /// until `down`.
    Up(local::UpArgs),
    /// Stops and removes a sandbox (processes, network namespaces, bridge, state); idempotent.
    Down(local::DownArgs),
    /// What a sandbox runs: processes, Mesh/Waypoint conditions, nodes, captured pods.
    Status(local::StatusArgs),
    /// Sends demo requests from the sandbox's client pod and reports the reviews versions'
    /// shares (e.g. after `ambitctl apply -f examples/canary-90-10.yaml`).
    Traffic(local::TrafficArgs),
    #[command(hide = true, name = "__apisim")]
    Apisim(local::ApisimArgs),
    #[command(hide = true, name = "__operator")]
    Operator(local::OperatorArgs),
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}

/// Runs one of the API/proxy commands with its context, mapping errors to exit codes.
fn front_door(g: GlobalArgs, f: impl AsyncFnOnce(&Ctx) -> Result<(), CliError>) -> ! {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("AMBITCTL_LOG")
                .unwrap_or_else(|_| "warn,kube_client=off,kube=off".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let result = match runtime() {
        Ok(rt) => rt.block_on(async {
            let ctx = Ctx::new(g)?;
            f(&ctx).await
        }),
        Err(e) => Err(CliError::Failed(format!("starting the runtime: {e}"))),
    };
    match result {
        Ok(()) => std::process::exit(0),
        Err(e) => {
            let msg = e.to_string();
            if !msg.is_empty() {
                eprintln!("error: {msg}");
            }
            std::process::exit(e.code())
        }
    }
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Apply { args, g } => front_door(g, async |c| apply::run(c, args).await),
        Command::Get { args, g } => front_door(g, async |c| get::run(c, args).await),
        Command::Delete { args, g } => front_door(g, async |c| delete::run(c, args).await),
        Command::Status { args, g } => front_door(g, async |c| status::run(c, args).await),
        Command::Config { cmd, g } => front_door(g, async |c| config_dump::dump(c, cmd).await),
        Command::Certs { args, g } => front_door(g, async |c| config_dump::certs(c, args).await),
        Command::Check { args, g } => front_door(g, async |c| check::run(c, args).await),
        Command::Top { args, g } => front_door(g, async |c| top::run(c, args).await),
        Command::Completions { shell } => {
            clap_complete::generate(
                shell,
                &mut Cli::command(),
                "ambitctl",
                &mut std::io::stdout(),
            );
            Ok(())
        }
        Command::Ztunnel { args } => ambit_ztunnel::cli::main_with_args(args),
        Command::DemoApp(args) => runtime()?.block_on(demo_app::run(args)),
        Command::Local { command } => match command {
            Local::Demo(args) => demo::run(args),
            Local::Up(args) => local::up(args),
            Local::Down(args) => local::down(args),
            Local::Status(args) => local::status(args),
            Local::Traffic(args) => local::traffic(args),
            Local::Apisim(args) => local::apisim(args),
            Local::Operator(args) => local::operator(args),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_tree_is_consistent() {
        Cli::command().debug_assert();
    }
}
