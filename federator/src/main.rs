//! The `federator` binary: replica server, agent and operator CLI in one.

fn main() -> std::process::ExitCode {
    federator::cli::main()
}
