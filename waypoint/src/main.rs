fn main() -> anyhow::Result<()> {
    ambit_waypoint::cli::main_with_args(std::env::args_os().skip(1))
}
