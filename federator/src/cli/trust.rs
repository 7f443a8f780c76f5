//! `federator cluster`, `bundle` and `audit`: member clusters and watching their trust
//! bundles propagate (`token` is in `tokens.rs`).

use std::io::IsTerminal as _;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::bail;
use federator_proto::admin as pb;
use serde::Serialize;

use super::client::{Connection, ConnectionArgs, status_error};
use super::output::{self, OutputFormat, Table, UnixTime, print};
use super::services::LeaseView;
use crate::clock::unix_now;

/// Inspect and remove member clusters.
#[derive(Debug, clap::Subcommand)]
pub enum ClusterCommand {
    /// Every member cluster with its trust domain, agent and bundle.
    List,
    /// One member cluster.
    Show {
        /// Cluster name.
        name: String,
    },
    /// Remove a cluster: its bundle disappears from every member, its streams close,
    /// and its agent can no longer connect.
    Remove {
        /// Cluster name.
        name: String,
    },
    /// Let a cluster export into namespaces (before or after it joins).
    Grant {
        /// Cluster name.
        name: String,
        /// A namespace (repeat for more).
        #[arg(long = "namespace", value_name = "NAMESPACE", required = true)]
        namespaces: Vec<String>,
    },
    /// Take namespaces back: the cluster's exports in them are withdrawn at once.
    Revoke {
        /// Cluster name.
        name: String,
        /// A namespace (repeat for more).
        #[arg(long = "namespace", value_name = "NAMESPACE", required = true)]
        namespaces: Vec<String>,
    },
    /// Bind where a cluster runs: importers order failover by it, and the cluster's
    /// endpoints may claim no other region (nor, with --zone, another zone).
    Locality {
        /// Cluster name.
        name: String,
        /// Region.
        #[arg(long)]
        region: String,
        /// Zone within the region (leave it out when the cluster spans zones).
        #[arg(long, default_value = "")]
        zone: String,
    },
}

/// Inspect federated trust bundles.
#[derive(Debug, clap::Subcommand)]
pub enum BundleCommand {
    /// Every member's bundle: trust domain, sequence, digest.
    List,
    /// One trust domain's bundle.
    Show {
        /// Trust domain.
        trust_domain: String,
        /// Document format.
        #[arg(long, value_enum, default_value_t = BundleFormatArg::Spiffe)]
        format: BundleFormatArg,
    },
    /// Which members have applied which sequence: when every member has the newest, it
    /// is safe to sign with the new key. Exits 0 when every member has, 3 when some have
    /// not (1 on errors), so a rotation script can wait on it.
    Status {
        /// Trust domain.
        trust_domain: String,
        /// Ask again every second until every member has applied the newest sequence, for
        /// at most this long (e.g. `5m`), then report as without it.
        #[arg(long, value_name = "DURATION", value_parser = parse_duration_secs)]
        wait: Option<u64>,
    },
}

/// Bundle document format.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum BundleFormatArg {
    /// SPIFFE bundle (JWKS) JSON.
    Spiffe,
    /// PEM X.509 authorities.
    Pem,
}

/// Exit code of `bundle status` while some member has not applied the newest sequence
/// (2 is a usage error, 1 any other error).
pub const ROTATION_INCOMPLETE: u8 = 3;

/// Why a duration on the command line does not parse; the text is quoted.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    /// No number first.
    #[error("{0:?} is not a duration like 30m, 1h or 2d")]
    NotADuration(String),
    /// An unknown unit.
    #[error("{0:?}: unit must be s, m, h or d")]
    Unit(String),
    /// Zero.
    #[error("must be positive")]
    Zero,
    /// More seconds than fit.
    #[error("{0:?} is too long")]
    TooLong(String),
}

/// Parses `90`, `90s`, `30m`, `1h`, `2d` into seconds.
///
/// # Errors
/// Not a positive duration of that form.
pub fn parse_duration_secs(text: &str) -> Result<u64, DurationError> {
    let text = text.trim();
    let (digits, unit) =
        text.split_at(text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len()));
    let value: u64 = digits.parse().map_err(|_| DurationError::NotADuration(text.to_string()))?;
    let factor = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(DurationError::Unit(text.to_string())),
    };
    match value.checked_mul(factor) {
        Some(0) => Err(DurationError::Zero),
        Some(secs) => Ok(secs),
        None => Err(DurationError::TooLong(text.to_string())),
    }
}

#[derive(Serialize)]
struct ClusterView {
    name: String,
    trust_domain: String,
    agent_id: String,
    joined_at: UnixTime,
    bundle_sequence: u64,
    bundle_digest: String,
    bundle_updated_at: UnixTime,
    x509_authorities: u32,
    jwt_authorities: u32,
    status: String,
    lease: Option<LeaseView>,
    exports: u32,
    /// Namespaces it may export into.
    namespaces: Vec<String>,
    /// Its bound region and zone (empty: not bound).
    region: String,
    zone: String,
}

impl From<pb::Cluster> for ClusterView {
    fn from(c: pb::Cluster) -> Self {
        Self {
            name: c.name,
            trust_domain: c.trust_domain,
            agent_id: c.agent_id,
            joined_at: UnixTime(c.joined_at),
            bundle_sequence: c.bundle_sequence,
            bundle_digest: c.bundle_digest,
            bundle_updated_at: UnixTime(c.bundle_updated_at),
            x509_authorities: c.x509_authorities,
            jwt_authorities: c.jwt_authorities,
            status: c.status,
            lease: c.lease.map(Into::into),
            exports: c.exports,
            namespaces: c.policy.as_ref().map(|p| p.namespaces.clone()).unwrap_or_default(),
            region: c.policy.as_ref().map(|p| p.region.clone()).unwrap_or_default(),
            zone: c.policy.map(|p| p.zone).unwrap_or_default(),
        }
    }
}

fn cluster_table(clusters: &[ClusterView]) -> Table {
    let mut t = Table::new(&[
        "CLUSTER",
        "TRUST DOMAIN",
        "AGENT",
        "SEQUENCE",
        "X509",
        "JWT",
        "DIGEST",
        "STATUS",
        "LEASE",
        "EXPORTS",
        "NAMESPACES",
        "LOCALITY",
    ]);
    let now = unix_now();
    for c in clusters {
        t.add_row(vec![
            c.name.clone(),
            c.trust_domain.clone(),
            c.agent_id.clone(),
            c.bundle_sequence.to_string(),
            c.x509_authorities.to_string(),
            c.jwt_authorities.to_string(),
            c.bundle_digest.chars().take(12).collect(),
            c.status.clone(),
            c.lease.as_ref().map_or_else(|| "-".into(), |l| l.cell(now)),
            c.exports.to_string(),
            if c.namespaces.is_empty() { "-".into() } else { c.namespaces.join(",") },
            super::policy::locality_cell(&c.region, &c.zone),
        ]);
    }
    t
}

/// Runs `federator cluster`.
pub async fn run_cluster(
    command: ClusterCommand,
    args: &ConnectionArgs,
    out: OutputFormat,
) -> anyhow::Result<ExitCode> {
    let connection = Connection::new(args)?;
    let mut client = connection.any_admin().await?;
    match command {
        ClusterCommand::List => {
            let r = client
                .list_clusters(pb::ListClustersRequest::default())
                .await
                .map_err(status_error)?
                .into_inner();
            let views: Vec<ClusterView> = r.clusters.into_iter().map(Into::into).collect();
            print(out, &views, |v| println!("{}", cluster_table(v)))?;
        }
        ClusterCommand::Show { name } => {
            let r = client
                .get_cluster(pb::GetClusterRequest { name, consistency: 0 })
                .await
                .map_err(status_error)?
                .into_inner();
            let view = ClusterView::from(r);
            print(out, &view, |v| println!("{}", cluster_table(std::slice::from_ref(v))))?;
        }
        ClusterCommand::Remove { name } => {
            let r = client
                .remove_cluster(pb::RemoveClusterRequest { name: name.clone() })
                .await
                .map_err(status_error)?
                .into_inner();
            output::eprint_line(format_args!("cluster {name} removed at revision {}", r.revision));
            if r.served_empty_until > 0 {
                output::eprint_line(format_args!(
                    "the bundle endpoint serves {} with no keys until {}: SPIFFE consumers \
                     federating with it drop its CA at their next refresh",
                    output::escape_control(&r.trust_domain),
                    crate::clock::rfc3339(r.served_empty_until),
                ));
            }
        }
        ClusterCommand::Grant { name, namespaces } => {
            let request = pb::UpdateClusterPolicyRequest {
                cluster: name,
                grant: namespaces,
                ..Default::default()
            };
            return super::policy::run_update(&connection, request, out).await;
        }
        ClusterCommand::Revoke { name, namespaces } => {
            let request = pb::UpdateClusterPolicyRequest {
                cluster: name,
                revoke: namespaces,
                ..Default::default()
            };
            return super::policy::run_update(&connection, request, out).await;
        }
        ClusterCommand::Locality { name, region, zone } => {
            let request = pb::UpdateClusterPolicyRequest {
                cluster: name,
                set_locality: true,
                region,
                zone,
                ..Default::default()
            };
            return super::policy::run_update(&connection, request, out).await;
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[derive(Serialize)]
struct BundleStatusView {
    trust_domain: String,
    owner: String,
    sequence: u64,
    updated_at: UnixTime,
    complete: bool,
    /// Members that have not applied `sequence`: what holds the rotation up.
    blocking: Vec<String>,
    members: Vec<MemberAckView>,
}

#[derive(Serialize)]
struct MemberAckView {
    cluster: String,
    applied_sequence: u64,
    applied_at: UnixTime,
    current: bool,
    /// Whether its lease is live (a blocking member without one is down or gone).
    lease_live: bool,
}

/// Runs `federator bundle`.
pub async fn run_bundle(
    command: BundleCommand,
    args: &ConnectionArgs,
    out: OutputFormat,
) -> anyhow::Result<ExitCode> {
    let connection = Connection::new(args)?;
    let mut client = connection.any_admin().await?;
    match command {
        BundleCommand::List => {
            let r = client
                .list_clusters(pb::ListClustersRequest::default())
                .await
                .map_err(status_error)?
                .into_inner();
            #[derive(Serialize)]
            struct Row {
                trust_domain: String,
                cluster: String,
                sequence: u64,
                digest: String,
                updated_at: UnixTime,
            }
            let rows: Vec<Row> = r
                .clusters
                .into_iter()
                .map(|c| Row {
                    trust_domain: c.trust_domain,
                    cluster: c.name,
                    sequence: c.bundle_sequence,
                    digest: c.bundle_digest,
                    updated_at: UnixTime(c.bundle_updated_at),
                })
                .collect();
            print(out, &rows, |rows| {
                let mut t =
                    Table::new(&["TRUST DOMAIN", "CLUSTER", "SEQUENCE", "DIGEST", "UPDATED"]);
                let now = unix_now();
                for r in rows {
                    t.add_row(vec![
                        r.trust_domain.clone(),
                        r.cluster.clone(),
                        r.sequence.to_string(),
                        r.digest.chars().take(12).collect(),
                        super::services::ago(now, r.updated_at),
                    ]);
                }
                println!("{t}");
            })?;
        }
        BundleCommand::Show { trust_domain, format } => {
            let format = match format {
                BundleFormatArg::Spiffe => pb::BundleFormat::Spiffe,
                BundleFormatArg::Pem => pb::BundleFormat::Pem,
            };
            let r = client
                .get_bundle(pb::GetBundleRequest {
                    trust_domain,
                    format: format.into(),
                    consistency: 0,
                })
                .await
                .map_err(status_error)?
                .into_inner();
            match out {
                OutputFormat::Table | OutputFormat::Wide => {
                    println!("{}", output::escape_control_keep_newlines(r.document.trim_end()));
                }
                _ => {
                    #[derive(Serialize)]
                    struct Doc {
                        trust_domain: String,
                        sequence: u64,
                        digest: String,
                        updated_at: UnixTime,
                        refresh_hint_seconds: u64,
                        document: String,
                    }
                    let doc = Doc {
                        trust_domain: r.trust_domain,
                        sequence: r.sequence,
                        digest: r.digest,
                        updated_at: UnixTime(r.updated_at),
                        refresh_hint_seconds: r.refresh_hint_seconds,
                        document: r.document,
                    };
                    print(out, &doc, |_| {})?;
                }
            }
        }
        BundleCommand::Status { trust_domain, wait } => {
            let deadline = wait.map(|secs| std::time::Instant::now() + Duration::from_secs(secs));
            let r = loop {
                let request =
                    pb::BundleStatusRequest { trust_domain: trust_domain.clone(), consistency: 0 };
                let r = client.bundle_status(request).await.map_err(status_error)?.into_inner();
                match deadline {
                    Some(deadline) if !r.complete && std::time::Instant::now() < deadline => {
                        if std::io::stderr().is_terminal() {
                            output::eprint_line(format_args!(
                                "waiting for {} to apply sequence {}…",
                                r.blocking.join(", "),
                                r.sequence
                            ));
                        }
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                    _ => break r,
                }
            };
            let view = BundleStatusView {
                trust_domain: r.trust_domain,
                owner: r.owner,
                sequence: r.sequence,
                updated_at: UnixTime(r.updated_at),
                complete: r.complete,
                blocking: r.blocking,
                members: r
                    .members
                    .into_iter()
                    .map(|m| MemberAckView {
                        current: m.applied_sequence >= r.sequence,
                        cluster: m.cluster,
                        applied_sequence: m.applied_sequence,
                        applied_at: UnixTime(m.applied_at),
                        lease_live: m.lease_live,
                    })
                    .collect(),
            };
            print(out, &view, |v| {
                output::print_line(format_args!(
                    "bundle of {} (cluster {}): sequence {}",
                    v.trust_domain, v.owner, v.sequence
                ));
                let mut t =
                    Table::new(&["MEMBER", "APPLIED SEQUENCE", "APPLIED", "CURRENT", "LEASE"]);
                for m in &v.members {
                    t.add_row(vec![
                        m.cluster.clone(),
                        m.applied_sequence.to_string(),
                        super::services::ago(unix_now(), m.applied_at),
                        if m.current { "yes".into() } else { "NO".into() },
                        if m.lease_live { "live".into() } else { "NOT LIVE".into() },
                    ]);
                }
                println!("{t}");
                if v.complete {
                    println!(
                        "every member has applied sequence {}: safe to sign with the new key",
                        v.sequence
                    );
                } else {
                    let down: Vec<&str> = v
                        .members
                        .iter()
                        .filter(|m| !m.current && !m.lease_live)
                        .map(|m| m.cluster.as_str())
                        .collect();
                    output::print_line(format_args!(
                        "blocked by {}: not applied sequence {} yet — keep signing with the old key",
                        v.blocking.join(", "),
                        v.sequence
                    ));
                    if !down.is_empty() {
                        output::print_line(format_args!(
                            "{} hold(s) no live lease: down or gone, not slow — bring the agent back \
                             or remove the cluster (`federator cluster remove NAME`)",
                            down.join(", ")
                        ));
                    }
                }
            })?;
            if !view.complete {
                return Ok(ExitCode::from(ROTATION_INCOMPLETE));
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Show the audit trail of accepted and refused federation writes.
#[derive(Debug, clap::Args)]
pub struct AuditArgs {
    /// How many of the newest events.
    #[arg(long, default_value_t = 50)]
    limit: u32,
    /// Only refusals (kept apart from accepted changes; identical ones are one event with
    /// a count).
    #[arg(long, conflicts_with = "accepted")]
    refused: bool,
    /// Only accepted changes.
    #[arg(long)]
    accepted: bool,
}

/// Runs `federator audit`.
pub async fn run_audit(
    args: AuditArgs,
    conn: &ConnectionArgs,
    out: OutputFormat,
) -> anyhow::Result<ExitCode> {
    if args.limit == 0 {
        bail!("--limit must be positive");
    }
    let connection = Connection::new(conn)?;
    let mut client = connection.any_admin().await?;
    let r = client
        .list_audit(pb::ListAuditRequest {
            limit: args.limit,
            filter: if args.refused {
                pb::AuditFilter::Refused
            } else if args.accepted {
                pb::AuditFilter::Accepted
            } else {
                pb::AuditFilter::All
            }
            .into(),
        })
        .await
        .map_err(status_error)?
        .into_inner();
    let rows: Vec<AuditRow> = r
        .events
        .into_iter()
        .map(|e| AuditRow {
            seq: e.seq,
            at: UnixTime(e.at),
            index: e.index,
            actor: e.actor,
            action: e.action,
            target: e.target,
            accepted: e.accepted,
            reason: e.reason,
            count: e.count.max(1),
            first_at: UnixTime(e.first_at),
        })
        .collect();
    print(out, &rows, |rows| println!("{}", audit_table(rows)))?;
    Ok(ExitCode::SUCCESS)
}

/// One audit event as `federator audit` shows it.
#[derive(Serialize)]
struct AuditRow {
    seq: u64,
    at: UnixTime,
    index: u64,
    actor: String,
    action: String,
    target: String,
    accepted: bool,
    reason: String,
    /// How many identical refusals this event stands for (1 for accepted changes).
    count: u64,
    /// When the first of them happened; `at` is the last.
    first_at: UnixTime,
}

fn audit_table(rows: &[AuditRow]) -> Table {
    let mut t = Table::new(&["SEQ", "AT (UTC)", "ACTOR", "ACTION", "TARGET", "COUNT", "OUTCOME"]);
    for r in rows {
        t.add_row(vec![
            r.seq.to_string(),
            crate::clock::rfc3339(r.at.secs()),
            r.actor.clone(),
            r.action.clone(),
            r.target.clone(),
            if r.count > 1 {
                format!("{} (since {})", r.count, crate::clock::rfc3339(r.first_at.secs()))
            } else {
                r.count.to_string()
            },
            if r.accepted { "accepted".into() } else { format!("REFUSED: {}", r.reason) },
        ]);
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hostile_refusal_cannot_forge_audit_lines() {
        let hostile = "\n\x1b]0;pwned\x07\x1b[1A";
        let row = |seq: u64, accepted: bool| AuditRow {
            seq,
            at: UnixTime(1_700_000_000),
            index: 7,
            actor: format!("anonymous@{hostile}"),
            action: "export".into(),
            target: format!("{hostile}/cart"),
            accepted,
            reason: format!("namespace {hostile:?} is not a DNS label {hostile}"),
            count: seq,
            first_at: UnixTime(1_699_999_999),
        };
        let rendered = audit_table(&[row(1, false), row(2, true)]).to_string();
        // The header and two rows: the table's own line feeds are the only control
        // characters.
        assert_eq!(rendered.lines().count(), 3, "{rendered}");
        assert!(!rendered.contains(|c: char| c.is_control() && c != '\n'), "{rendered:?}");
        assert!(rendered.contains(r"REFUSED: namespace"), "{rendered}");
        assert!(rendered.contains(r"\n\x1b]0;pwned\x07\x1b[1A/cart"), "{rendered}");
        let clusters = cluster_table(&[ClusterView::from(pb::Cluster {
            name: format!("a{hostile}"),
            trust_domain: hostile.into(),
            status: hostile.into(),
            ..Default::default()
        })])
        .to_string();
        assert_eq!(clusters.lines().count(), 2, "{clusters}");
        assert!(!clusters.contains(|c: char| c.is_control() && c != '\n'), "{clusters:?}");
    }

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(parse_duration_secs("90"), Ok(90));
        assert_eq!(parse_duration_secs("30m"), Ok(1800));
        assert_eq!(parse_duration_secs("1h"), Ok(3600));
        assert_eq!(parse_duration_secs("2d"), Ok(172_800));
        for bad in ["", "h", "1w", "0", "-1h", "1.5h", "99999999999999999999d"] {
            assert!(parse_duration_secs(bad).is_err(), "{bad:?}");
        }
    }
}
