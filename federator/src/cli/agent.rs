//! `federator agent`: run a member cluster's agent, or show its status.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;

use super::output::{self, OutputFormat};
use crate::agent::sinks::xds::bootstrap::{BootstrapOptions, envoy_bootstrap};
use crate::agent::status::AgentStatus;
use crate::agent::{AgentConfig, store::Store};
use crate::clock::unix_now_ms;

mod status_json;

/// Run the agent of a member cluster, or show its status.
///
/// The agent joins the federation once (with a token from `federator token create`),
/// then publishes the cluster's bundle and exports, keeps the cluster's member lease
/// alive, and writes every other member's bundles and this cluster's imports into its
/// sinks: files, etcd keys, an Envoy xDS server, and Kubernetes objects
/// (`ServiceImport`s, EndpointSlices, `ClusterTrustBundle`s). It keeps what it applied in its
/// state directory and goes on serving it while no replica is reachable.
#[derive(Debug, clap::Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct AgentArgs {
    #[command(subcommand)]
    command: Option<AgentCommand>,
    /// Config file (TOML); see deploy/local/agent.toml for every setting.
    #[arg(long, short = 'c', env = "FEDERATOR_AGENT_CONFIG")]
    config: Option<PathBuf>,
    /// Join token for the first run (also FEDERATOR_JOIN_TOKEN or `token_file`).
    #[arg(long)]
    token: Option<String>,
}

#[derive(Debug, clap::Subcommand)]
enum AgentCommand {
    /// Show a running agent's status: the replica it talks to, the revision it applied
    /// and how far it lags, its lease, and the health of every sink and source.
    Status(StatusArgs),
    /// Print the bootstrap of an Envoy that takes everything from this agent over ADS:
    /// the imported services' clusters (mTLS per exporter, outlier detection, retries
    /// across clusters), their endpoints and trust bundles, and with
    /// `[sinks.xds.egress]` a listener that routes `NAME.NS.svc.clusterset.local` to
    /// them. Start Envoy with it: `envoy -c bootstrap.json`.
    EnvoyBootstrap(BootstrapArgs),
    /// Print the CustomResourceDefinitions of the Multi-Cluster Services API objects the
    /// agent reads and writes with `[exports.kubernetes]` and `[sinks.kubernetes]`
    /// (`ServiceExport`, `ServiceImport`, group `multicluster.x-k8s.io`), as shipped in
    /// deploy/crds/mcs.yaml: `federator agent crds | kubectl apply -f -`.
    Crds,
}

#[derive(Debug, clap::Args)]
struct BootstrapArgs {
    /// The agent's config file: the bootstrap follows its [sinks.xds] tables.
    #[arg(long, short = 'c', env = "FEDERATOR_AGENT_CONFIG")]
    config: PathBuf,
    /// Envoy's node id (shown in the agent's xDS logs).
    #[arg(long, default_value = "envoy")]
    node_id: String,
    /// Envoy's admin listener (keep it on loopback).
    #[arg(long, default_value = "127.0.0.1:9901")]
    admin: std::net::SocketAddr,
    /// Use incremental xDS (DELTA_GRPC) instead of state of the world (GRPC).
    #[arg(long)]
    delta: bool,
    /// The unix socket of the SDS server named by
    /// `[sinks.xds.clusters] certificate_sds_cluster` (the SPIRE agent's).
    #[arg(long)]
    certificate_sds_socket: Option<PathBuf>,
}

#[derive(Debug, clap::Args)]
struct StatusArgs {
    /// The agent's state directory (`state_dir` in its config).
    #[arg(long, env = "FEDERATOR_AGENT_STATE_DIR")]
    state_dir: PathBuf,
}

/// Runs the agent until SIGINT or SIGTERM, or prints its status.
pub async fn run(args: AgentArgs, out: OutputFormat) -> anyhow::Result<ExitCode> {
    match args.command {
        Some(AgentCommand::Status(status)) => show_status(&status.state_dir, out),
        Some(AgentCommand::Crds) => {
            print!("{}", crate::agent::kubernetes::crd::definitions_yaml()?);
            Ok(ExitCode::SUCCESS)
        }
        Some(AgentCommand::EnvoyBootstrap(bootstrap)) => {
            let config = AgentConfig::load(&bootstrap.config, None)?;
            print_bootstrap(&config, &bootstrap)
        }
        None => {
            let path = args.config.context("--config is required to run the agent")?;
            let config = AgentConfig::load(&path, args.token)?;
            crate::agent::run(config, super::server::shutdown_signal()).await?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn print_bootstrap(config: &AgentConfig, args: &BootstrapArgs) -> anyhow::Result<ExitCode> {
    let xds = config.file.sinks.xds.as_ref().context(
        "the agent serves no xDS: add [sinks.xds] listen = \"127.0.0.1:18000\" to its config",
    )?;
    let options = BootstrapOptions {
        node_id: &args.node_id,
        xds: xds.listen,
        admin: args.admin,
        delta: args.delta,
        certificate_sds_socket: args.certificate_sds_socket.as_deref(),
    };
    let bootstrap = envoy_bootstrap(&options, config.mesh.as_ref())?;
    println!("{}", serde_json::to_string_pretty(&bootstrap)?);
    Ok(ExitCode::SUCCESS)
}

fn show_status(state_dir: &std::path::Path, out: OutputFormat) -> anyhow::Result<ExitCode> {
    let status = read_status(state_dir)?;
    let (text, healthy) = render(&status, unix_now_ms());
    output::print(out, &status_json::StatusJson::from(&status), |_| print!("{text}"))?;
    Ok(exit_code(healthy))
}

/// The status the agent whose state directory is `state_dir` last wrote.
///
/// # Errors
/// No such directory (never created: a mistyped `--state-dir` is an error), no status in
/// it, or one that does not parse.
pub(super) fn read_status(state_dir: &std::path::Path) -> anyhow::Result<AgentStatus> {
    if !state_dir.is_dir() {
        anyhow::bail!(
            "no agent state directory at {} (the agent's state_dir; check --state-dir)",
            state_dir.display()
        );
    }
    let store = Store::open(state_dir)?;
    let path = store.status_path();
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("no agent status at {} (has the agent run?)", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{} does not parse", path.display()))
}

/// Success exactly when the status shows no `×`.
fn exit_code(healthy: bool) -> ExitCode {
    if healthy { ExitCode::SUCCESS } else { ExitCode::FAILURE }
}

/// How long before `now_ms` the instant `at_ms` was.
fn ago(now_ms: i64, at_ms: i64) -> String {
    super::services::ms_ago(u64::try_from(now_ms - at_ms).unwrap_or(0))
}

/// The status for people: one line per concern, `√` or `×` first, and whether no line
/// is `×` (the command's exit status). Every line is escaped ([`output::Text`]): names,
/// errors and problems come from the cluster's sources.
pub(super) fn render(s: &AgentStatus, now: i64) -> (String, bool) {
    let failed = std::cell::Cell::new(false);
    let mark = |ok: bool| {
        if ok {
            "√"
        } else {
            failed.set(true);
            "×"
        }
    };
    let mut text = output::Text::new();
    let stale = s.is_too_old(now);
    text.line(format_args!(
        "{} agent pid {} for cluster {} ({}), status written {}{}",
        mark(!stale),
        s.pid,
        if s.cluster.is_empty() { "(not joined)" } else { &s.cluster },
        s.trust_domain,
        ago(now, s.written_at_ms),
        if stale {
            format!(
                " — stale (older than {}s, the lease TTL): the agent is not running or stuck; \
                 every line below is as of then (hint: check that the agent runs, and its log)",
                s.stale_after_ms() / 1000
            )
        } else {
            String::new()
        }
    ));
    match (&s.connected_replica, s.connected_since_ms) {
        (Some(replica), since) => text.line(format_args!(
            "√ connected to {replica} since {} ({} connections)",
            since.map_or_else(|| "?".into(), |t| ago(now, t)),
            s.connections
        )),
        (None, _) => text.line(format_args!(
            "{} not connected{} — serving the last applied view (revision {})",
            mark(false),
            s.last_error.as_ref().map_or_else(String::new, |e| format!(": {e}")),
            s.applied_revision
        )),
    };
    if let Some(f) = &s.last_failover {
        text.line(format_args!(
            "  left {} {}{} (failovers: {}): {}",
            f.from,
            ago(now, f.at_ms),
            match (&f.to, f.connected_at_ms) {
                (Some(to), Some(at)) => format!(", connected to {to} {} ms later", at - f.at_ms),
                _ => String::new(),
            },
            s.failovers,
            f.reason
        ));
    }
    text.line(format_args!(
        "{} revision {} applied, {} received (lag {}), {} resyncs",
        mark(s.applied_revision >= s.received_revision),
        s.applied_revision,
        s.received_revision,
        s.received_revision.saturating_sub(s.applied_revision),
        s.resyncs
    ));
    match &s.lease {
        Some(lease) => text.line(format_args!(
            "{} lease {} (ttl {}s), last keep-alive {}{}{}",
            mark(s.lease_is_live(now)),
            lease.id,
            lease.ttl_seconds,
            lease.last_keepalive_ms.map_or_else(|| "never".into(), |t| ago(now, t)),
            if lease.failed_keepalives > 0 {
                format!(", {} failed since", lease.failed_keepalives)
            } else {
                String::new()
            },
            if stale {
                " — as of a stale status: the lease may have expired"
            } else if lease
                .last_keepalive_ms
                .is_none_or(|at| now - at > i64::from(lease.ttl_seconds) * 1000)
            {
                " — older than the TTL: the lease may have expired"
            } else {
                ""
            }
        )),
        None => text.line(format_args!(
            "{} no lease: this cluster's endpoints are not ready anywhere",
            mark(false)
        )),
    };
    for (name, sink) in &s.sinks {
        text.line(format_args!(
            "{} sink {name}: revision {}{}",
            mark(sink.healthy),
            sink.applied_revision,
            sink.error.as_ref().map_or_else(String::new, |e| format!(", failing: {e}"))
        ));
        for skipped in &sink.skipped {
            text.line(format_args!("    ‼ skipped {}: {}", skipped.location, skipped.message));
        }
    }
    let bundle = &s.bundle;
    let same_authorities =
        bundle.published_current == Some(true) && bundle.sequence != bundle.published_sequence;
    let federation = match (bundle.federation_sequence, bundle.federation_current) {
        (None, _) => String::new(),
        (Some(held), Some(false)) => format!(
            "; the federation holds sequence {held}, with other authorities: the other \
             members do not trust this source's yet"
        ),
        (Some(held), _) => format!(", the federation holds {held}"),
    };
    text.line(format_args!(
        "{} own bundle: sequence {}, published {}{}{federation}{}",
        mark(s.own_bundle_published()),
        bundle.sequence.map_or_else(|| "-".into(), |v| v.to_string()),
        bundle.published_sequence.map_or_else(|| "-".into(), |v| v.to_string()),
        if same_authorities { " (the same authorities)" } else { "" },
        bundle
            .problem
            .as_ref()
            .map_or_else(String::new, |p| format!("; {}: {}", p.location, p.message))
    ));
    text.line(format_args!(
        "{} exports: {} from sources, {} published, {} problems",
        mark(s.exports.problems.is_empty()),
        s.exports.exports,
        s.exports.published,
        s.exports.problems.len()
    ));
    for problem in &s.exports.problems {
        text.line(format_args!("    ‼ {}: {}", problem.location, problem.message));
    }
    text.line(format_args!(
        "  federated bundles: {}; imports: {}",
        if s.bundles.is_empty() {
            "none".to_string()
        } else {
            s.bundles.iter().map(|(td, seq)| format!("{td}#{seq}")).collect::<Vec<_>>().join(", ")
        },
        s.imports
    ));
    if let Some(p) = &s.last_propagation {
        text.line(format_args!(
            "  propagation: last {} ms from {} ({}, {})",
            p.millis,
            p.source_trust_domain,
            p.kind,
            ago(now, p.at_ms)
        ));
    }
    (text.into(), !failed.get())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::status::{LeaseStatus, SinkStatus};
    use crate::agent::view::SourceProblem;

    #[test]
    fn status_lines_say_what_is_wrong() {
        let mut s = AgentStatus {
            pid: 42,
            written_at_ms: 10_000,
            cluster: "a".into(),
            trust_domain: "a.test".into(),
            applied_revision: 7,
            received_revision: 9,
            lease: Some(LeaseStatus {
                id: 3,
                ttl_seconds: 10,
                last_keepalive_ms: Some(9_000),
                failed_keepalives: 0,
            }),
            ..AgentStatus::default()
        };
        s.sinks.insert(
            "etcd".into(),
            SinkStatus {
                healthy: false,
                applied_revision: 5,
                error: Some("refused".into()),
                skipped: Vec::new(),
            },
        );
        s.exports.problems.push(SourceProblem {
            location: "/federator/exports/ns/bad".into(),
            message: "ports: required".into(),
        });
        let (text, _) = render(&s, 11_000);
        assert!(
            text.contains("× not connected — serving the last applied view (revision 7)"),
            "{text}"
        );
        assert!(text.contains("lag 2"), "{text}");
        assert!(text.contains("√ lease 3 (ttl 10s), last keep-alive 2.0s ago"), "{text}");
        assert!(text.contains("× sink etcd: revision 5, failing: refused"), "{text}");
        assert!(text.contains("‼ /federator/exports/ns/bad: ports: required"), "{text}");
        assert!(render(&s, 60_000).0.contains("not running or stuck"));
        assert!(!render(&s, 11_000).1, "× lines make the status unhealthy");
        assert!(!text.contains("propagation"), "{text}");
        s.last_propagation = Some(crate::agent::status::PropagationStatus {
            kind: "bundle".into(),
            source_trust_domain: "b.test".into(),
            millis: 42,
            at_ms: 10_000,
        });
        let (text, _) = render(&s, 11_000);
        assert!(text.contains("propagation: last 42 ms from b.test (bundle, 1.0s ago)"), "{text}");
        assert!(!text.contains("left"), "{text}");
        s.connected_replica = Some("127.0.0.1:7102".into());
        s.failovers = 1;
        s.last_failover = Some(crate::agent::status::FailoverStatus {
            from: "127.0.0.1:7101".into(),
            reason: "keep-alive: no answer within 1000 ms".into(),
            at_ms: 8_000,
            to: Some("127.0.0.1:7102".into()),
            connected_at_ms: Some(8_150),
        });
        let (text, _) = render(&s, 11_000);
        assert!(
            text.contains(
                "left 127.0.0.1:7101 3.0s ago, connected to 127.0.0.1:7102 150 ms later \
                 (failovers: 1): keep-alive: no answer within 1000 ms"
            ),
            "{text}"
        );
    }

    #[test]
    fn hostile_names_and_errors_stay_on_their_line() {
        let hostile = "\n\x1b]0;pwned\x07\x1b[1A";
        let mut s = AgentStatus {
            written_at_ms: 10_000,
            cluster: hostile.into(),
            trust_domain: hostile.into(),
            last_error: Some(hostile.into()),
            ..AgentStatus::default()
        };
        s.sinks.insert(
            hostile.into(),
            SinkStatus {
                healthy: false,
                applied_revision: 1,
                error: Some(hostile.into()),
                skipped: vec![SourceProblem { location: hostile.into(), message: hostile.into() }],
            },
        );
        s.exports
            .problems
            .push(SourceProblem { location: hostile.into(), message: hostile.into() });
        let clean =
            render(&AgentStatus { written_at_ms: 10_000, ..AgentStatus::default() }, 11_000).0;
        let (text, _) = render(&s, 11_000);
        assert_eq!(text.lines().count(), clean.lines().count() + 3, "{text}");
        assert!(!text.contains(|c: char| c.is_control() && c != '\n'), "{text:?}");
        assert!(text.contains(r"× not connected: \n\x1b]0;pwned\x07\x1b[1A — serving"), "{text}");
    }

    /// A status every line of which is `√` at 11 s: connected, lease renewed a second
    /// ago, sinks healthy, own bundle published.
    fn healthy() -> AgentStatus {
        let mut s = AgentStatus {
            pid: 42,
            written_at_ms: 10_000,
            cluster: "a".into(),
            trust_domain: "a.test".into(),
            connected_replica: Some("127.0.0.1:7101".into()),
            connected_since_ms: Some(1_000),
            applied_revision: 9,
            received_revision: 9,
            lease: Some(LeaseStatus {
                id: 3,
                ttl_seconds: 10,
                last_keepalive_ms: Some(10_000),
                failed_keepalives: 0,
            }),
            ..AgentStatus::default()
        };
        s.sinks.insert(
            "etcd".into(),
            SinkStatus { healthy: true, applied_revision: 9, error: None, skipped: Vec::new() },
        );
        s.bundle.sequence = Some(5);
        s.bundle.published_sequence = Some(5);
        s
    }

    /// What `federator agent status` exits with for `status` written now.
    fn exit_of(status: &AgentStatus) -> String {
        let dir = tempfile::tempdir().expect("dir");
        let store = Store::open(dir.path()).expect("store");
        let mut status = status.clone();
        let age = 11_000 - status.written_at_ms;
        status.written_at_ms = unix_now_ms() - age;
        if let Some(lease) = &mut status.lease {
            lease.last_keepalive_ms =
                lease.last_keepalive_ms.map(|at| unix_now_ms() - (11_000 - at));
        }
        std::fs::write(store.status_path(), serde_json::to_vec(&status).expect("json"))
            .expect("write");
        let code = show_status(dir.path(), OutputFormat::Table).expect("status");
        format!("{code:?}")
    }

    #[test]
    fn agent_status_exits_non_zero_exactly_when_it_prints_a_cross() {
        let ok = format!("{:?}", ExitCode::SUCCESS);
        let failure = format!("{:?}", ExitCode::FAILURE);
        let s = healthy();
        let (text, good) = render(&s, 11_000);
        assert!(good && !text.contains('×'), "{text}");
        assert_eq!(exit_of(&s), ok);
        // Each × alone makes the command fail.
        let mut broken = Vec::new();
        let mut no_lease = healthy();
        no_lease.lease = None;
        broken.push(no_lease);
        let mut failed_keepalive = healthy();
        if let Some(l) = &mut failed_keepalive.lease {
            l.failed_keepalives = 1;
        }
        broken.push(failed_keepalive);
        let mut unpublished = healthy();
        unpublished.bundle.published_sequence = Some(4);
        broken.push(unpublished);
        let mut lagging = healthy();
        lagging.received_revision = 10;
        broken.push(lagging);
        let mut export_problem = healthy();
        export_problem
            .exports
            .problems
            .push(SourceProblem { location: "x".into(), message: "bad".into() });
        broken.push(export_problem);
        for s in broken {
            let (text, good) = render(&s, 11_000);
            assert!(!good && text.contains('×'), "{text}");
            assert_eq!(exit_of(&s), failure, "{text}");
        }
    }

    #[test]
    fn a_restart_that_renumbers_the_same_authorities_is_no_cross() {
        let mut s = healthy();
        // A restarted agent read the same PEM file: a new local sequence, same authorities.
        s.bundle.sequence = Some(1_700_000_123);
        s.bundle.published_current = Some(true);
        let (text, good) = render(&s, 11_000);
        assert!(good, "{text}");
        assert!(
            text.contains("√ own bundle: sequence 1700000123, published 5 (the same authorities)"),
            "{text}"
        );
        // Really new authorities not yet accepted are a ×.
        s.bundle.published_current = Some(false);
        assert!(!render(&s, 11_000).1);
    }

    #[test]
    fn the_bundle_the_federation_holds_is_compared_with_the_source() {
        let mut s = healthy();
        s.bundle.federation_sequence = Some(5);
        s.bundle.federation_current = Some(true);
        let (text, good) = render(&s, 11_000);
        assert!(good, "{text}");
        assert!(text.contains(", the federation holds 5"), "{text}");
        // The federation holds other authorities (restored from an older backup): ×,
        // whatever the agent's record of its publication says.
        s.bundle.federation_sequence = Some(3);
        s.bundle.federation_current = Some(false);
        let (text, good) = render(&s, 11_000);
        assert!(!good, "{text}");
        assert!(text.contains("× own bundle"), "{text}");
        assert!(text.contains("the federation holds sequence 3, with other authorities"), "{text}");
        assert_eq!(exit_of(&s), format!("{:?}", ExitCode::FAILURE));
    }

    #[test]
    fn a_status_older_than_the_lease_ttl_is_stale_and_vouches_for_no_lease() {
        let s = healthy();
        // Written 5 m 6 s ago, its last keep-alive with it.
        let now = 10_000 + 306_000;
        let (text, good) = render(&s, now);
        assert!(!good, "{text}");
        assert!(text.contains("× agent pid 42"), "{text}");
        assert!(text.contains("stale (older than 10s, the lease TTL)"), "{text}");
        assert!(text.contains("hint: check that the agent runs"), "{text}");
        assert!(
            text.contains("× lease 3 (ttl 10s), last keep-alive 5m6s ago — as of a stale status"),
            "{text}"
        );
        // Within the TTL it is not stale (the agent writes it every second).
        assert!(render(&s, 10_000 + 9_000).1);
        let mut old = healthy();
        old.written_at_ms = 10_000 - 300_000;
        assert_eq!(exit_of(&old), format!("{:?}", ExitCode::FAILURE));
    }
}
