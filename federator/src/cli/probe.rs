//! `federator probe`: the diagnostic keyspace, replicated through the log like any
//! federation write. Operators use it to prove the write path end to end.

use std::process::ExitCode;

use federator_proto::admin as pb;
use serde::Serialize;

use super::client::{Connection, ConnectionArgs, status_error};
use super::output::{self, OutputFormat, Table, print};

/// Read and write the diagnostic probe keyspace.
#[derive(Debug, clap::Subcommand)]
pub enum ProbeCommand {
    /// Write KEY=VALUE through the log (any replica; followers forward to the leader).
    Put {
        /// Key (printable ASCII, no spaces).
        #[arg(id = "probe_key", value_name = "KEY")]
        key: String,
        /// Value (stored as UTF-8 bytes).
        value: String,
    },
    /// Read KEY (linearizable unless --stale).
    Get {
        /// Key.
        #[arg(id = "probe_key", value_name = "KEY")]
        key: String,
        /// Serve from the replica's applied state without asking the leader.
        #[arg(long)]
        stale: bool,
    },
    /// List keys under PREFIX.
    List {
        /// Key prefix.
        #[arg(default_value = "")]
        prefix: String,
        /// Serve from the replica's applied state without asking the leader.
        #[arg(long)]
        stale: bool,
    },
}

#[derive(Serialize)]
struct ProbeView {
    key: String,
    value: String,
    version: u64,
}

/// Runs a `probe` subcommand.
pub async fn run(
    command: ProbeCommand,
    args: &ConnectionArgs,
    out: OutputFormat,
) -> anyhow::Result<ExitCode> {
    let connection = Connection::new(args)?;
    let mut client = connection.any_admin().await?;
    let consistency = |stale: bool| {
        if stale { pb::Consistency::Stale } else { pb::Consistency::Linearizable }.into()
    };
    match command {
        ProbeCommand::Put { key, value } => {
            let r = client
                .put(pb::PutRequest { key: key.clone(), value: value.into_bytes() })
                .await
                .map_err(status_error)?
                .into_inner();
            #[derive(Serialize)]
            struct Put {
                key: String,
                index: u64,
                version: u64,
            }
            print(out, &Put { key, index: r.index, version: r.version }, |p| {
                output::print_line(format_args!(
                    "{} written at log index {} (version {})",
                    p.key, p.index, p.version
                ));
            })?;
            Ok(ExitCode::SUCCESS)
        }
        ProbeCommand::Get { key, stale } => {
            let r = client
                .get(pb::GetRequest { key: key.clone(), consistency: consistency(stale) })
                .await
                .map_err(status_error)?
                .into_inner();
            if !r.found {
                output::eprint_line(format_args!(
                    "{key}: not found (applied index {})",
                    r.applied_index
                ));
                return Ok(ExitCode::FAILURE);
            }
            let view = ProbeView {
                key,
                value: String::from_utf8_lossy(&r.value).into_owned(),
                version: r.version,
            };
            print(out, &view, |v| output::print_line(&v.value))?;
            Ok(ExitCode::SUCCESS)
        }
        ProbeCommand::List { prefix, stale } => {
            let r = client
                .list_probes(pb::ListProbesRequest { prefix, consistency: consistency(stale) })
                .await
                .map_err(status_error)?
                .into_inner();
            let views: Vec<ProbeView> = r
                .entries
                .into_iter()
                .map(|e| ProbeView {
                    key: e.key,
                    value: String::from_utf8_lossy(&e.value).into_owned(),
                    version: e.version,
                })
                .collect();
            print(out, &views, |vs| {
                let mut t = Table::new(&["KEY", "VERSION", "VALUE"]);
                for v in vs {
                    t.add_row(vec![v.key.clone(), v.version.to_string(), v.value.clone()]);
                }
                println!("{t}");
            })?;
            Ok(ExitCode::SUCCESS)
        }
    }
}
