//! `federator support-bundle DIR`: what a maintainer asks for first when something is
//! wrong, gathered into one new directory — the group's status, every check (with the
//! local agents'), and each local agent's status. It holds no private key, no join
//! token and no certificate: only what `status`, `check` and `agent status` print.
//!
//! A bundle is most needed when the federation is broken, so a part that cannot be
//! gathered (no quorum, an unreachable replica, a missing agent directory) is written to
//! `errors.txt` and the rest goes on.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context as _;

use super::client::{Connection, ConnectionArgs};
use super::{agent, check, output, status};

/// `federator support-bundle`.
#[derive(Debug, clap::Args)]
#[command(after_help = "Example:\n  federator support-bundle /tmp/federator-support \
                        --agent-state-dir /var/lib/federator-agent\n  \
                        tar czf federator-support.tar.gz -C /tmp federator-support")]
pub struct SupportBundleArgs {
    /// The directory to write (created; it must not exist yet).
    dir: PathBuf,
    /// Also gather the agent whose state directory is DIR (repeatable).
    #[arg(long = "agent-state-dir", value_name = "DIR")]
    agent_state_dirs: Vec<PathBuf>,
}

/// What the bundle's README says it holds.
const README: &str = "\
A Federator support bundle (federator support-bundle).

version.txt      the federator binary that gathered it
status.txt/json  every replica: role, term, log indexes, versions (federator status -o wide)
check.txt/json   every check, with the agents below (federator check)
agents/N/        each agent given with --agent-state-dir: status.txt, status.json
errors.txt       what could not be gathered, and why (absent when everything was)

Never included: private keys, join tokens, certificates, bundles, the replicas' data.
Read it before you send it: names of clusters, trust domains, services and addresses
are in it.
";

/// Writes the bundle.
///
/// # Errors
/// The directory exists or cannot be written. Parts that cannot be gathered are listed
/// in `errors.txt` instead.
pub async fn run(
    args: SupportBundleArgs,
    connection_args: &ConnectionArgs,
) -> anyhow::Result<ExitCode> {
    let dir = &args.dir;
    if dir.exists() {
        anyhow::bail!(
            "{} exists: name a new directory (the bundle never overwrites anything)",
            dir.display()
        );
    }
    // Owner only: it names the federation's members, services and addresses.
    std::os::unix::fs::DirBuilderExt::mode(std::fs::DirBuilder::new().recursive(true), 0o700)
        .create(dir)
        .with_context(|| format!("create {}", dir.display()))?;
    let mut errors = String::new();
    write(dir, "README.txt", README)?;
    write(dir, "version.txt", &format!("federator {}\n", super::VERSION))?;

    match Connection::new(connection_args) {
        Ok(connection) => match status::collect(&connection).await {
            Ok(view) => {
                write(dir, "status.txt", &status::view_table(&view, true))?;
                write(dir, "status.json", &json(&view)?)?;
            }
            Err(error) => {
                let _ = writeln!(errors, "status: {error:#}");
            }
        },
        Err(error) => {
            let _ = writeln!(errors, "status: cannot reach the federation: {error:#}");
        }
    }

    let report =
        check::check_once(&check::CheckArgs::gathering(&args.agent_state_dirs), connection_args)
            .await;
    write(dir, "check.txt", &check::render(&report))?;
    write(dir, "check.json", &json(&report)?)?;

    for (n, state_dir) in args.agent_state_dirs.iter().enumerate() {
        let into = dir.join("agents").join((n + 1).to_string());
        std::fs::create_dir_all(&into).with_context(|| format!("create {}", into.display()))?;
        write(&into, "state-dir.txt", &format!("{}\n", state_dir.display()))?;
        match agent::read_status(state_dir) {
            Ok(status) => {
                write(&into, "status.txt", &agent::render(&status, crate::clock::unix_now_ms()).0)?;
                write(&into, "status.json", &json(&status)?)?;
            }
            Err(error) => {
                let _ = writeln!(errors, "agent {}: {error:#}", state_dir.display());
            }
        }
    }

    if !errors.is_empty() {
        write(dir, "errors.txt", &errors)?;
    }
    let gaps = errors.lines().count();
    output::eprint_line(format_args!(
        "support bundle written to {}{}; read it, then e.g. `tar czf federator-support.tar.gz -C {} {}`",
        dir.display(),
        if gaps == 0 {
            String::new()
        } else {
            format!(" ({gaps} part(s) missing: see errors.txt)")
        },
        dir.parent().map_or_else(|| ".".into(), |p| p.display().to_string()),
        dir.file_name().map_or_else(String::new, |n| n.to_string_lossy().into_owned()),
    ));
    Ok(ExitCode::SUCCESS)
}

fn json(value: &impl serde::Serialize) -> anyhow::Result<String> {
    Ok(format!("{}\n", serde_json::to_string_pretty(value)?))
}

fn write(dir: &Path, name: &str, text: &str) -> anyhow::Result<()> {
    let path = dir.join(name);
    std::fs::write(&path, text).with_context(|| format!("write {}", path.display()))
}
