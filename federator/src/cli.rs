//! The `federator` command line: one binary, noun-verb commands, `-o table|json|yaml`
//! on every read.

mod agent;
mod certs;
mod check;
mod client;
mod dev;
mod logging;
mod output;
mod policy;
mod probe;
mod raft;
mod server;
mod services;
mod snapshot;
mod status;
mod support;
mod tokens;
mod trust;

use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

pub use client::{Connection, ConnectionArgs};
pub use output::OutputFormat;

/// `federator --version`: the crate version and the commit it was built from.
const VERSION: &str = concat!(env!("CARGO_PKG_VERSION"), " (", env!("FEDERATOR_COMMIT"), ")");

/// Federator: Raft-replicated federation of SPIFFE trust bundles and service endpoints
/// between the clusters of a multi-cluster service mesh.
///
/// Commands that talk to a running federation find it through --endpoints (or
/// FEDERATOR_ENDPOINTS): a replica's admin socket (`unix:///var/lib/federator/1/admin.sock`)
/// or API addresses (`127.0.0.1:7101,127.0.0.1:7102`) with an admin certificate
/// (--ca/--cert/--key, as written by `federator certs init`).
#[derive(Debug, Parser)]
#[command(name = "federator", version = VERSION, propagate_version = true, max_term_width = 100)]
pub struct Cli {
    #[command(flatten)]
    connection: ConnectionArgs,

    /// Output format of reads.
    #[arg(short = 'o', long = "output", global = true, value_enum, default_value_t = OutputFormat::Table)]
    output: OutputFormat,

    /// Format of the logs on stderr: text (escaped, coloured only on a terminal) or json,
    /// one object per line with the span fields (member cluster, trust domain).
    #[arg(long, global = true, env = "LOG_FORMAT", value_enum, ignore_case = true, default_value_t = logging::LogFormat::Text)]
    log_format: logging::LogFormat,

    #[command(subcommand)]
    command: Commands,
}

#[derive(Debug, Subcommand)]
enum Commands {
    /// Run a whole federation on loopback with a live status view (start here).
    ///
    /// Starts, as child processes on 127.0.0.1, N replicas and M member clusters. Each
    /// member cluster has its own CA and trust domain (`cluster-a.federator.test`, ...), a
    /// `federator agent` that joins with a token, keeps a lease, publishes its bundle and
    /// exports, and writes what it imports to DIR/clusters/NAME/out (and serves it to Envoy
    /// over xDS); and a demo HTTP service `demo/echo` that every cluster exports, so each
    /// imports `echo.demo.svc.clusterset.local` with the others' endpoints.
    ///
    /// Try: kill the leader's pid (a new leader within a second or two); kill an agent's
    /// pid (its lease expires, its endpoints turn not ready everywhere, dev restarts it);
    /// `touch DIR/clusters/cluster-a/rotate` (a CA rotation: old and new CA together until
    /// every member applied them, then the new one only); edit
    /// DIR/clusters/NAME/exports.json (exports follow).
    ///
    /// Without --dir the state lives in a temporary directory removed on exit. With --dir
    /// it is kept (a second run resumes it) and DIR/env holds the variables that point the
    /// other `federator` commands at it: `source DIR/env && federator status`.
    Dev(dev::DevArgs),
    /// Run one federator replica.
    Server(server::ServerArgs),
    /// Run a member cluster's agent (`--config agent.toml`), or show its status.
    Agent(agent::AgentArgs),
    /// Inspect and change the replica group (status, init, add-member, remove-member).
    #[command(subcommand)]
    Raft(raft::RaftCommand),
    /// Show every replica of the federation: role, term, indexes, lag.
    Status(status::StatusArgs),
    /// Check the federation's health: quorum, leader, lag, certificate expiry, member
    /// leases, bundle propagation, local agents and disks; non-zero exit on failure.
    ///
    /// Every line starts with `√` (fine), `‼` (works, look at it soon: a certificate that
    /// expires within --expiry-warning-days, an unreachable minority replica, a rotation
    /// still propagating) or `×` (broken), and each `‼`/`×` line has a hint. The exit
    /// status is non-zero when any line is `×`, so the command fits a cron job, a
    /// readiness gate or a CI step:
    ///
    ///   federator check --wait 60s --agent-state-dir /var/lib/federator-agent && echo healthy
    ///
    /// Groups: replicas (quorum, leader, replication lag, state digests that agree),
    /// certificates (--ca and --cert files, every replica's serving certificate, every
    /// member's newest CA), members (lease freshness), bundles (the newest sequence of
    /// every trust domain applied by every member), agents (with --agent-state-dir: a
    /// fresh status file, the connection, every sink, skipped export documents), disk
    /// (with --disk: p50 and p99 of 200 durable log appends in each directory, as a
    /// replica makes them; `‼` above 10 ms p99, etcd's guidance for its WAL fsync, `×`
    /// above 100 ms). With --disk and no --endpoints only the local checks run, so a disk
    /// can be checked before a replica is installed on it:
    ///
    ///   federator check --disk /var/lib/federator
    Check(check::CheckArgs),
    /// Create single-use join tokens for clusters; list and revoke them.
    #[command(subcommand)]
    Token(tokens::TokenCommand),
    /// List, show and remove member clusters; grant them namespaces and bind their
    /// locality.
    #[command(subcommand)]
    Cluster(trust::ClusterCommand),
    /// Show federated trust bundles and who has applied them.
    #[command(subcommand)]
    Bundle(trust::BundleCommand),
    /// Services member clusters export to the clusterset: who exports them, their
    /// merged ports, ready endpoints and conflicts (list, show).
    ///
    /// A member cluster *exports* a Kubernetes service to share it with the other members:
    /// its ports, its endpoints, the SPIFFE IDs its workloads run as, which members may
    /// import it (every member, or an allowlist: SCOPE) and how it is reached (its
    /// endpoints directly, or the cluster's east-west gateway: MODE). Every cluster that
    /// exports the same NAMESPACE/NAME contributes to one service of the clusterset, named
    /// as in the Kubernetes Multi-Cluster Services API (KEP-1645):
    /// `NAME.NAMESPACE.svc.clusterset.local`.
    ///
    /// Exporters must agree on the service's ports. When they do not, the oldest export's
    /// port definition wins: the merged ports keep its definition of every clashing port,
    /// and the service carries a `Conflict` condition naming the clusters whose definition
    /// lost (CONFLICTING: yes) and what each defined. Their endpoints are still imported,
    /// under the winning definition; fix the losing clusters' services to clear the
    /// condition.
    ///
    /// An export's endpoints count as ready only while its cluster's lease is live (see
    /// `federator cluster list`).
    #[command(subcommand)]
    Service(services::ServiceCommand),
    /// What a member cluster imports: each service's exporters merged, in failover order
    /// (list).
    ///
    /// An *import* is what one consuming cluster receives for a service of the clusterset
    /// (KEP-1645's ServiceImport, `NAME.NAMESPACE.svc.clusterset.local`): the merged ports,
    /// the SPIFFE IDs to accept, and the endpoints of every exporting cluster whose scope
    /// admits the consumer. An endpoint is ready when its cluster reports it ready and
    /// that cluster's lease is live. Endpoints are ordered by failover priority from the
    /// consumer's locality (its lease's region/zone): 0 same zone, 1 same region,
    /// 2 elsewhere. A cluster exporting through its gateway contributes one endpoint, the
    /// gateway.
    ///
    /// A `Conflict` condition means exporters disagree on ports; the oldest export's port
    /// definition wins (see `federator service show`).
    #[command(subcommand)]
    Import(services::ImportCommand),
    /// The audit trail of accepted and refused federation writes.
    Audit(trust::AuditArgs),
    /// Show or change federation-wide settings: whether any member may export into any
    /// namespace (open exports) and whether loopback endpoints are accepted.
    Settings(policy::SettingsArgs),
    /// Back up the federation's state to a file, check a backup, or restore one into a
    /// new group (save, status, restore).
    #[command(subcommand)]
    Snapshot(snapshot::SnapshotCommand),
    /// Create the federation's CA and certificates for replicas and operators.
    #[command(subcommand)]
    Certs(certs::CertsCommand),
    /// Read and write the diagnostic probe keyspace (exercises the replicated log).
    #[command(subcommand)]
    Probe(probe::ProbeCommand),
    /// Gather what a maintainer asks for first (status, checks, local agents' status)
    /// into a new directory: no keys, tokens or certificates.
    SupportBundle(support::SupportBundleArgs),
    /// Print a shell completion script.
    ///
    ///   federator completion bash > /etc/bash_completion.d/federator
    ///   federator completion zsh > "${fpath[1]}/_federator"
    ///   federator completion fish > ~/.config/fish/completions/federator.fish
    Completion {
        /// The shell.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

/// Entry point of the binary.
#[must_use]
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing(matches!(cli.command, Commands::Server(_) | Commands::Agent(_)), cli.log_format);
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            let _ = writeln!(std::io::stderr(), "error: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(error) => {
            // The server's messages were escaped whole where they entered the error
            // (`client::status_error`); its own line breaks stay.
            // Not eprintln!: it panics when stderr cannot be written (a log file on the
            // full disk that stopped this replica), turning exit status 1 into a panic.
            let _ = writeln!(
                std::io::stderr(),
                "error: {}",
                output::escape_control_keep_newlines(&output::error_chain(&error))
            );
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let out = cli.output;
    match cli.command {
        Commands::Dev(args) => dev::run(args).await,
        Commands::Server(args) => server::run(args).await,
        Commands::Agent(args) => agent::run(args, out).await,
        Commands::Raft(command) => raft::run(command, &cli.connection, out).await,
        Commands::Status(args) => status::run(args, &cli.connection, out).await,
        Commands::Check(args) => check::run(args, &cli.connection, out).await,
        Commands::Token(command) => tokens::run_token(command, &cli.connection, out).await,
        Commands::Cluster(command) => trust::run_cluster(command, &cli.connection, out).await,
        Commands::Bundle(command) => trust::run_bundle(command, &cli.connection, out).await,
        Commands::Service(command) => services::run_service(command, &cli.connection, out).await,
        Commands::Import(command) => services::run_import(command, &cli.connection, out).await,
        Commands::Audit(args) => trust::run_audit(args, &cli.connection, out).await,
        Commands::Settings(args) => policy::run_settings(args, &cli.connection, out).await,
        Commands::Snapshot(command) => snapshot::run(command, &cli.connection, out).await,
        Commands::Certs(command) => certs::run(command, cli.connection.ca.as_deref(), out),
        Commands::Probe(command) => probe::run(command, &cli.connection, out).await,
        Commands::SupportBundle(args) => support::run(args, &cli.connection).await,
        Commands::Completion { shell } => {
            use clap::CommandFactory as _;
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "federator", &mut script);
            let mut stdout = std::io::stdout().lock();
            match stdout.write_all(&script).and_then(|()| stdout.flush()) {
                // `federator completion bash | head`: the reader took what it wanted.
                Err(error) if error.kind() != std::io::ErrorKind::BrokenPipe => Err(error.into()),
                _ => Ok(ExitCode::SUCCESS),
            }
        }
    }
}

/// Logs go to stderr; `--log-format json` (or `LOG_FORMAT=json`) makes them
/// machine-readable, `RUST_LOG` filters them (default: `info` for the server, `warn` for
/// other commands). Text lines have every value escaped and are coloured only on a
/// terminal (see [`logging`]).
fn init_tracing(server: bool, format: logging::LogFormat) {
    logging::init(server, format);
}

/// Expands a leading `~/` in a user-supplied path.
fn expand_home(path: PathBuf) -> PathBuf {
    match (path.strip_prefix("~"), std::env::var_os("HOME")) {
        (Ok(rest), Some(home)) => PathBuf::from(home).join(rest),
        _ => path,
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory as _;

    use super::*;

    #[test]
    fn command_line_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn completion_scripts_name_the_subcommands() {
        for shell in
            [clap_complete::Shell::Bash, clap_complete::Shell::Zsh, clap_complete::Shell::Fish]
        {
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "federator", &mut script);
            let script = String::from_utf8(script).expect("utf-8");
            for word in ["dev", "status", "check", "bundle", "completion"] {
                assert!(script.contains(word), "{shell}: {word}");
            }
            if shell == clap_complete::Shell::Bash {
                let mut check = std::process::Command::new("bash")
                    .arg("-n")
                    .stdin(std::process::Stdio::piped())
                    .spawn()
                    .expect("bash runs");
                check.stdin.take().expect("stdin").write_all(script.as_bytes()).expect("written");
                assert!(check.wait().expect("bash exits").success(), "bash -n on the script");
            }
        }
    }

    #[test]
    fn every_read_accepts_an_output_format() {
        for args in [
            &["federator", "status", "-o", "json"][..],
            &["federator", "raft", "status", "-o", "yaml"],
            &["federator", "probe", "get", "k", "-o", "json"],
            &["federator", "probe", "put", "--key", "admin.key", "k", "v"],
            &["federator", "service", "list", "--cluster", "a", "--stale", "-o", "yaml"],
            &["federator", "service", "show", "shop/cart", "-o", "json"],
            &["federator", "import", "list", "--cluster", "a", "-o", "json"],
        ] {
            Cli::try_parse_from(args).unwrap_or_else(|e| panic!("{args:?}: {e}"));
        }
    }

    #[test]
    fn admin_client_flags_stand_apart_in_a_servers_help() {
        use clap::CommandFactory as _;
        let mut command = Cli::command();
        command.build();
        let server = command.find_subcommand_mut("server").expect("server");
        let help = server.render_long_help().to_string();
        let heading = help.find("Admin client (for the commands that call the federation)");
        let cert = help.find("--cert <CERT>");
        assert!(heading.is_some() && cert > heading, "{help}");
    }

    #[test]
    fn certificate_names_are_comma_separated_or_repeated() {
        let cli = Cli::try_parse_from([
            "federator",
            "certs",
            "init",
            "certs",
            "--dns",
            "*.federator-headless.federator.svc.cluster.local,federator.federator.svc.cluster.local",
            "--dns",
            "replica-1.federation.example",
            "--ip",
            "127.0.0.1,::1",
        ])
        .expect("parses");
        let Commands::Certs(certs::CertsCommand::Init { dns, ips, .. }) = cli.command else {
            panic!("certs init");
        };
        assert_eq!(dns.len(), 3, "{dns:?}");
        assert_eq!(ips.len(), 2, "{ips:?}");
    }

    #[test]
    fn service_and_import_arguments_are_checked() {
        let error = Cli::try_parse_from(["federator", "service", "show", "cart"])
            .expect_err("no namespace");
        assert!(error.to_string().contains("is not NAMESPACE/NAME"), "{error}");
        Cli::try_parse_from(["federator", "import", "list"]).expect_err("--cluster is required");
    }
}
