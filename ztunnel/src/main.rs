//! `ztunnel`: Ambit's per-node L4 tunnel.
#![forbid(unsafe_code)]

fn main() -> anyhow::Result<()> {
    ambit_ztunnel::cli::main_with_args(std::env::args_os().skip(1))
}
