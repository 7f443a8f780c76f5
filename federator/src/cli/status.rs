//! `federator status` and `federator raft status`: every replica's view of the group.

use std::process::ExitCode;
use std::time::Duration;

use federator_proto::admin::{ReplicaStatus, Role};
use serde::Serialize;

use super::client::{Connection, ConnectionArgs};
use super::output::{self, OutputFormat, Table, print};

/// Show every replica of the federation.
#[derive(Debug, clap::Args)]
pub struct StatusArgs {}

/// One replica as the operator sees it.
#[derive(Debug, Serialize)]
pub struct ReplicaRow {
    /// Replica id.
    pub id: u64,
    /// Voter or learner.
    pub membership: &'static str,
    /// Raft transport address.
    pub raft_addr: String,
    /// API address, if registered.
    pub api_addr: String,
    /// Whether it answered.
    pub reachable: bool,
    /// Why it did not answer.
    pub error: Option<String>,
    /// Process id.
    pub pid: Option<u32>,
    /// Role.
    pub role: Option<String>,
    /// Term.
    pub term: Option<u64>,
    /// Last log index.
    pub last_log_index: Option<u64>,
    /// Commit index (leader: quorum match; follower: applied).
    pub commit_index: Option<u64>,
    /// Applied index.
    pub applied_index: Option<u64>,
    /// Entries behind the leader's last log index.
    pub lag: Option<u64>,
    /// Index covered by the snapshot.
    pub snapshot_index: Option<u64>,
    /// Index up to which the log was purged.
    pub purged_index: Option<u64>,
    /// State digest (hex SHA-256) and the index it was taken at.
    pub state_digest: Option<String>,
    /// Applied index of the digest.
    pub digest_index: Option<u64>,
    /// Its build's version.
    pub version: Option<String>,
    /// The command-format version its build applies (0: a build from before the
    /// cluster-version gate).
    pub command_version: Option<u32>,
    /// How long log entries have waited for its log writer without it writing any
    /// (milliseconds; 0: none waits).
    pub log_stalled_ms: Option<u64>,
    /// Whether it makes every log append a durable database commit because it found no
    /// room for its log's redo file at start (`None`: unreachable).
    pub log_without_redo_file: Option<bool>,
}

impl ReplicaRow {
    /// A replica that did not answer: only what the membership says of it.
    #[must_use]
    pub fn unreachable(
        id: u64,
        membership: &'static str,
        raft_addr: String,
        api_addr: String,
        error: String,
    ) -> Self {
        Self {
            id,
            membership,
            raft_addr,
            api_addr,
            reachable: false,
            error: Some(error),
            pid: None,
            role: None,
            term: None,
            last_log_index: None,
            commit_index: None,
            applied_index: None,
            lag: None,
            snapshot_index: None,
            purged_index: None,
            state_digest: None,
            digest_index: None,
            version: None,
            command_version: None,
            log_stalled_ms: None,
            log_without_redo_file: None,
        }
    }
}

/// The whole group as seen by the operator.
#[derive(Debug, Serialize)]
pub struct GroupView {
    /// The leader, if any replica knows one.
    pub leader: Option<u64>,
    /// Highest term seen.
    pub term: u64,
    /// Voters that answered / voters.
    pub voters_up: usize,
    /// Voters in the membership.
    pub voters: usize,
    /// Whether a quorum of voters answered.
    pub quorum: bool,
    /// The command-format version every voter applies (the lowest voter's): commands of
    /// a newer format wait until it rises. `None` while a voter did not answer.
    pub cluster_version: Option<u32>,
    /// Every replica.
    pub replicas: Vec<ReplicaRow>,
}

impl GroupView {
    /// Counts the voters that take part in the quorum — those that answered with a
    /// running raft core; one whose core stopped (stopping, or fail-stopped on a storage
    /// error) answers but takes no part — and whether they are a majority.
    pub fn tally(&mut self) {
        self.voters_up = self.replicas.iter().filter(|r| r.counts_toward_quorum()).count();
        self.quorum = self.voters > 0 && self.voters_up > self.voters / 2;
    }
}

impl ReplicaRow {
    /// Whether this replica is a voter that answered with a running raft core.
    #[must_use]
    pub fn counts_toward_quorum(&self) -> bool {
        self.membership == "voter"
            && self.reachable
            && self.role.as_deref() != Some(role_name(Role::Shutdown))
    }
}

/// Runs `federator status`.
pub async fn run(
    _args: StatusArgs,
    args: &ConnectionArgs,
    out: OutputFormat,
) -> anyhow::Result<ExitCode> {
    let connection = Connection::new(args)?;
    print_replicas(&connection, out, out == OutputFormat::Wide).await
}

/// Collects every replica's status, starting from the first endpoint that answers.
///
/// # Errors
/// No endpoint answered.
pub async fn collect(connection: &Connection) -> anyhow::Result<GroupView> {
    let (first_endpoint, first) = connection.first_status().await?;
    let members: Vec<(u64, &'static str, String, String)> = first
        .voters
        .iter()
        .map(|m| (m.id, "voter", m.addr.clone(), m.api_addr.clone()))
        .chain(first.learners.iter().map(|m| (m.id, "learner", m.addr.clone(), m.api_addr.clone())))
        .collect();
    let lookups = members.iter().map(|(id, _, _, api)| {
        let connection = connection.clone();
        let endpoint = if *id == first.id { first_endpoint.clone() } else { api.clone() };
        async move {
            if endpoint.is_empty() {
                return Err(anyhow::anyhow!("API address not registered yet"));
            }
            match tokio::time::timeout(Duration::from_secs(3), connection.status_of(&endpoint))
                .await
            {
                Ok(result) => result,
                Err(_) => Err(anyhow::anyhow!("no answer within 3s")),
            }
        }
    });
    let statuses: Vec<anyhow::Result<ReplicaStatus>> = futures::future::join_all(lookups).await;
    let leader_last_log =
        statuses.iter().flatten().find(|s| s.role() == Role::Leader).map(|s| s.last_log_index);
    let mut view = GroupView {
        leader: statuses.iter().flatten().find(|s| s.role() == Role::Leader).map(|s| s.id),
        term: statuses.iter().flatten().map(|s| s.term).max().unwrap_or(first.term),
        voters_up: 0,
        voters: first.voters.len(),
        quorum: false,
        cluster_version: None,
        replicas: Vec::new(),
    };
    for ((id, membership, raft_addr, api_addr), status) in members.into_iter().zip(statuses) {
        let row = match status {
            Ok(s) => {
                ReplicaRow {
                    id,
                    membership,
                    raft_addr,
                    api_addr: s.api_addr.clone(),
                    reachable: true,
                    error: None,
                    pid: Some(s.pid),
                    role: Some(role_name(s.role()).to_string()),
                    term: Some(s.term),
                    last_log_index: Some(s.last_log_index),
                    commit_index: Some(s.commit_index),
                    applied_index: Some(s.applied_index),
                    lag: leader_last_log.map(|l| l.saturating_sub(s.applied_index)),
                    snapshot_index: Some(s.snapshot_index),
                    purged_index: Some(s.purged_index),
                    // Empty until the replica's first digest is computed.
                    state_digest: (!s.state_digest.is_empty()).then(|| s.state_digest.clone()),
                    digest_index: (!s.state_digest.is_empty()).then_some(s.digest_index),
                    version: Some(s.version.clone()),
                    command_version: Some(s.command_version),
                    log_stalled_ms: Some(s.log_stalled_ms),
                    log_without_redo_file: Some(s.log_without_redo_file),
                }
            }
            Err(error) => {
                ReplicaRow::unreachable(id, membership, raft_addr, api_addr, format!("{error:#}"))
            }
        };
        view.replicas.push(row);
    }
    view.tally();
    view.cluster_version = view
        .replicas
        .iter()
        .filter(|r| r.membership == "voter")
        .map(|r| r.command_version)
        .collect::<Option<Vec<u32>>>()
        .and_then(|versions| versions.into_iter().min());
    Ok(view)
}

/// Prints the group, with raft details when `detailed`. Exits non-zero without quorum.
///
/// # Errors
/// No endpoint answered.
pub async fn print_replicas(
    connection: &Connection,
    out: OutputFormat,
    detailed: bool,
) -> anyhow::Result<ExitCode> {
    let view = collect(connection).await?;
    print(out, &view, |v| print_view_table(v, detailed))?;
    Ok(if view.quorum { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

/// Prints the group as a summary line and a table of replicas (with raft details when
/// `detailed`).
pub fn print_view_table(v: &GroupView, detailed: bool) {
    print!("{}", view_table(v, detailed));
}

/// [`print_view_table`]'s text, each line ending in a line feed.
pub fn view_table(v: &GroupView, detailed: bool) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let leader = v.leader.map_or_else(|| "none".to_string(), |l| l.to_string());
    // Writing to a String cannot fail.
    let _ = writeln!(
        out,
        "leader: {leader}  term: {}  voters up: {}/{}  quorum: {}  cluster version: {}",
        v.term,
        v.voters_up,
        v.voters,
        if v.quorum { "yes" } else { "NO" },
        v.cluster_version
            .map_or_else(|| "unknown (a voter did not answer)".into(), |c| c.to_string())
    );
    let mut header = vec![
        "ID",
        "ROLE",
        "RAFT ADDR",
        "API ADDR",
        "PID",
        "TERM",
        "LAST LOG",
        "COMMIT",
        "APPLIED",
        "LAG",
        "VERSION",
    ];
    if detailed {
        header.extend(["SNAPSHOT", "PURGED", "DIGEST@INDEX"]);
    }
    let mut t = Table::new(&header);
    let opt = |v: Option<u64>| v.map_or_else(|| "-".to_string(), |v| v.to_string());
    for r in &v.replicas {
        let role = match (&r.role, r.membership) {
            (Some(role), _) => role.clone(),
            (None, m) => format!("{m} (unreachable)"),
        };
        let mut row = vec![
            r.id.to_string(),
            role,
            r.raft_addr.clone(),
            r.api_addr.clone(),
            r.pid.map_or_else(|| "-".to_string(), |p| p.to_string()),
            opt(r.term),
            opt(r.last_log_index),
            opt(r.commit_index),
            opt(r.applied_index),
            opt(r.lag),
            version_cell(r, v.cluster_version),
        ];
        if detailed {
            row.push(opt(r.snapshot_index));
            row.push(opt(r.purged_index));
            row.push(r.state_digest.as_ref().map_or_else(
                || "-".to_string(),
                |d| format!("{}@{}", &d[..d.len().min(12)], opt(r.digest_index)),
            ));
        }
        t.add_row(row);
    }
    let _ = writeln!(out, "{t}");
    for r in v.replicas.iter().filter(|r| !r.reachable) {
        let line = format!("replica {}: {}", r.id, r.error.as_deref().unwrap_or("unreachable"));
        let _ = writeln!(out, "{}", output::escape_control(&line));
    }
    for r in v.replicas.iter().filter(|r| r.log_without_redo_file == Some(true)) {
        let _ = writeln!(out, "replica {}: {}", r.id, WITHOUT_REDO_FILE);
    }
    out
}

/// What a replica that found no room for its log's redo file at start is doing.
pub const WITHOUT_REDO_FILE: &str = "runs without its log's redo file (no room for it at \
     start): every append is a durable database commit, which is slower";

/// A replica's build and command-format version, marked when it is ahead of the cluster
/// version (what it knows waits for the others).
fn version_cell(r: &ReplicaRow, cluster: Option<u32>) -> String {
    match (&r.version, r.command_version) {
        (Some(build), Some(commands)) => {
            let ahead = cluster.is_some_and(|c| commands > c);
            format!("{build} (commands {commands}{})", if ahead { ", ahead" } else { "" })
        }
        _ => "-".to_string(),
    }
}

/// Lower-case role name.
#[must_use]
pub fn role_name(role: Role) -> &'static str {
    match role {
        Role::Leader => "leader",
        Role::Follower => "follower",
        Role::Candidate => "candidate",
        Role::Learner => "learner",
        Role::Shutdown => "shutdown",
        Role::Unspecified => "unknown",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(id: u64, membership: &'static str, role: Option<Role>) -> ReplicaRow {
        let unreachable =
            ReplicaRow::unreachable(id, membership, String::new(), String::new(), "down".into());
        match role {
            Some(role) => ReplicaRow {
                reachable: true,
                error: None,
                role: Some(role_name(role).to_string()),
                ..unreachable
            },
            None => unreachable,
        }
    }

    fn view(replicas: Vec<ReplicaRow>) -> GroupView {
        let mut view = GroupView {
            leader: None,
            term: 1,
            voters_up: 0,
            voters: 3,
            quorum: false,
            cluster_version: None,
            replicas,
        };
        view.tally();
        view
    }

    #[test]
    fn a_voter_whose_core_stopped_is_not_counted_towards_the_quorum() {
        let all = view(vec![
            row(1, "voter", Some(Role::Leader)),
            row(2, "voter", Some(Role::Follower)),
            row(3, "voter", Some(Role::Follower)),
        ]);
        assert_eq!((all.voters_up, all.quorum), (3, true));
        let one_stopped = view(vec![
            row(1, "voter", Some(Role::Leader)),
            row(2, "voter", Some(Role::Follower)),
            row(3, "voter", Some(Role::Shutdown)),
        ]);
        assert_eq!((one_stopped.voters_up, one_stopped.quorum), (2, true), "not 3/3");
        let two_stopped = view(vec![
            row(1, "voter", Some(Role::Shutdown)),
            row(2, "voter", Some(Role::Follower)),
            row(3, "voter", Some(Role::Shutdown)),
        ]);
        assert_eq!((two_stopped.voters_up, two_stopped.quorum), (1, false), "no quorum");
        let learner_and_down = view(vec![
            row(1, "voter", Some(Role::Leader)),
            row(2, "voter", None),
            row(3, "voter", Some(Role::Follower)),
            row(4, "learner", Some(Role::Learner)),
        ]);
        assert_eq!((learner_and_down.voters_up, learner_and_down.quorum), (2, true));
    }
}
