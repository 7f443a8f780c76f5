//! `federator raft`: the replica group's membership and state.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context as _, bail};
use federator_proto::admin as pb;

use super::client::{Connection, ConnectionArgs, status_error};
use super::output::{self, OutputFormat, Table, print};
use super::status;

/// Inspect and change the replica group.
#[derive(Debug, clap::Subcommand)]
pub enum RaftCommand {
    /// Every replica's role, term, log/commit/applied indexes, snapshot and state digest.
    Status,
    /// Form a new group on the endpoint's replica, alone or with the given voters.
    Init {
        /// Initial voters as ID=HOST:PORT (raft transport address); none means the replica
        /// alone.
        #[arg(long = "member", value_name = "ID=ADDR")]
        members: Vec<String>,
        /// Succeed without doing anything when the replica already belongs to a group
        /// (for scripts that may run twice, such as the Helm chart's init job).
        #[arg(long)]
        if_needed: bool,
    },
    /// Add a replica: it joins as a learner, catches up, then becomes a voter.
    AddMember {
        /// The new replica's id.
        id: u64,
        /// The new replica's raft transport address (HOST:PORT).
        addr: String,
        /// Keep it a non-voting learner.
        #[arg(long)]
        learner: bool,
    },
    /// Remove a replica from the group (voter or learner).
    RemoveMember {
        /// The replica's id.
        id: u64,
    },
    /// Snapshot the state now on the endpoint's replica and purge the log it covers.
    Compact,
}

/// Runs a `raft` subcommand.
pub async fn run(
    command: RaftCommand,
    args: &ConnectionArgs,
    out: OutputFormat,
) -> anyhow::Result<ExitCode> {
    let connection = Connection::new(args)?;
    match command {
        RaftCommand::Status => status::print_replicas(&connection, out, true).await,
        RaftCommand::Init { members, if_needed } => {
            let members =
                members.iter().map(|m| parse_member(m)).collect::<anyhow::Result<Vec<_>>>()?;
            let endpoint = &connection.endpoints()[0];
            let mut client = connection.admin(endpoint).await?;
            match client.initialize(pb::InitializeRequest { members }).await {
                Ok(_) => output::eprint_line(format_args!("initialized the group on {endpoint}")),
                Err(status) if if_needed && status.code() == tonic::Code::AlreadyExists => {
                    output::eprint_line(format_args!(
                        "{endpoint} already belongs to a group: nothing to do"
                    ));
                }
                Err(status) => return Err(status_error(status)),
            }
            Ok(ExitCode::SUCCESS)
        }
        RaftCommand::AddMember { id, addr, learner } => {
            let request = pb::AddMemberRequest { id, addr, learner_only: learner };
            let response = on_leader(&connection, |mut client| {
                let request = request.clone();
                async move { client.add_member(request).await }
            })
            .await?;
            print_membership(&response, out)
        }
        RaftCommand::RemoveMember { id } => {
            let response = on_leader(&connection, |mut client| async move {
                client.remove_member(pb::RemoveMemberRequest { id }).await
            })
            .await?;
            print_membership(&response, out)
        }
        RaftCommand::Compact => {
            let endpoint = &connection.endpoints()[0];
            let mut client = connection.admin(endpoint).await?;
            let response = client
                .trigger_snapshot(pb::TriggerSnapshotRequest { purge: true })
                .await
                .map_err(status_error)?
                .into_inner();
            eprintln!("snapshot at index {} written; log purged up to it", response.snapshot_index);
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Runs `call` on the leader, following leader changes a bounded number of times.
async fn on_leader<T, F, Fut>(connection: &Connection, call: F) -> anyhow::Result<T>
where
    F: Fn(federator_proto::admin::admin_client::AdminClient<tonic::transport::Channel>) -> Fut,
    Fut: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
{
    let mut last_error = None;
    for attempt in 0..10u32 {
        if attempt > 0 {
            tokio::time::sleep(Duration::from_millis(200 * u64::from(attempt))).await;
        }
        let client = match connection.leader().await {
            Ok(client) => client,
            Err(error) => {
                last_error = Some(error);
                continue;
            }
        };
        match call(client).await {
            Ok(response) => return Ok(response.into_inner()),
            Err(status) if leader_may_have_moved(&status) => {
                last_error = Some(status_error(status))
            }
            Err(status) => return Err(status_error(status)),
        }
    }
    Err(last_error.unwrap_or_else(|| anyhow::anyhow!("no leader reached")))
        .context("the leader could not be reached after 10 attempts")
}

/// A refusal that another attempt on the (new) leader may not meet.
fn leader_may_have_moved(status: &tonic::Status) -> bool {
    status.code() == tonic::Code::Unavailable
        || (status.code() == tonic::Code::FailedPrecondition
            && status.metadata().get("x-leader-id").is_some())
}

fn parse_member(text: &str) -> anyhow::Result<pb::MemberAddr> {
    let Some((id, addr)) = text.split_once('=') else {
        bail!("--member {text:?}: expected ID=HOST:PORT");
    };
    let id: u64 =
        id.parse().with_context(|| format!("--member {text:?}: id {id:?} is not a number"))?;
    if id == 0 {
        bail!("--member {text:?}: id must be positive");
    }
    Ok(pb::MemberAddr { id, addr: addr.to_string(), api_addr: String::new() })
}

#[derive(serde::Serialize)]
struct MembershipView {
    log_index: u64,
    voters: Vec<(u64, String)>,
    learners: Vec<(u64, String)>,
}

fn print_membership(
    response: &pb::MembershipResponse,
    out: OutputFormat,
) -> anyhow::Result<ExitCode> {
    let view = MembershipView {
        log_index: response.log_index,
        voters: response.voters.iter().map(|m| (m.id, m.addr.clone())).collect(),
        learners: response.learners.iter().map(|m| (m.id, m.addr.clone())).collect(),
    };
    print(out, &view, |v| {
        let mut table = Table::new(&["ID", "ROLE", "RAFT ADDR"]);
        for (id, addr) in &v.voters {
            table.add_row(vec![id.to_string(), "voter".into(), addr.clone()]);
        }
        for (id, addr) in &v.learners {
            table.add_row(vec![id.to_string(), "learner".into(), addr.clone()]);
        }
        println!("membership committed at log index {}", v.log_index);
        println!("{table}");
    })?;
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn member_flags_are_checked() {
        assert_eq!(parse_member("2=127.0.0.1:7002").expect("ok").id, 2);
        assert!(parse_member("2").is_err());
        assert!(parse_member("x=127.0.0.1:1").is_err());
        assert!(parse_member("0=127.0.0.1:1").is_err());
    }
}
