//! `federator dev`: a whole federation on loopback — replicas and member-cluster agents as
//! separate child processes, each cluster with its own CA and an exported demo service —
//! with progress while starting, then a live status view. Ctrl-C stops everything.

mod clusters;
mod view;

use std::io::IsTerminal as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use federator_proto::admin as pb;
use indicatif::{ProgressBar, ProgressStyle};
use tokio::process::{Child, Command};

use super::client::{Connection, ConnectionArgs};
use super::status;
use view::{Facts, Screen, render, stamped, stdout_closed, write_stdout};

/// `federator dev`'s flags (its help text is on the subcommand in `cli.rs`).
#[derive(Debug, clap::Args)]
pub struct DevArgs {
    /// Keep state here and write DIR/env for the other commands.
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Number of replicas (3 or 5 tolerate 1 or 2 failures).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..=7))]
    replicas: u64,
    /// Number of member clusters, each with its own CA, agent and demo service.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u8).range(0..=8))]
    clusters: u8,
    /// Restart a replica that died (e.g. one you killed), after this many seconds; 0
    /// leaves it down.
    #[arg(long, default_value_t = 5)]
    restart_after: u64,
    /// Restart an agent that died after this many seconds; 0 leaves it down. The default
    /// is past the agents' lease TTL, so a killed agent's lease is seen to expire and its
    /// endpoints to turn not ready before it comes back.
    #[arg(long, default_value_t = clusters::AGENT_RESTART_AFTER_SECS)]
    restart_agents_after: u64,
    /// Refresh period of the status view, in seconds.
    #[arg(long, default_value_t = 1)]
    refresh: u64,
}

struct DevReplica {
    id: u64,
    dir: PathBuf,
    raft_addr: String,
    api_addr: String,
    /// The SPIFFE bundle endpoint under each profile: (`https_spiffe`, `https_web`).
    bundle_endpoints: (Option<SocketAddr>, Option<SocketAddr>),
    child: Option<Child>,
    died_at: Option<Instant>,
}

/// Runs `federator dev` until Ctrl-C.
pub async fn run(args: DevArgs) -> anyhow::Result<ExitCode> {
    let (root, _temp) = match &args.dir {
        Some(dir) => (super::expand_home(dir.clone()), None),
        None => {
            let temp = tempfile::Builder::new().prefix("federator-dev-").tempdir()?;
            (temp.path().to_path_buf(), Some(temp))
        }
    };
    std::fs::create_dir_all(&root).with_context(|| format!("create {}", root.display()))?;
    let root = root.canonicalize()?;
    let exe = std::env::current_exe().context("locate the federator binary")?;
    let progress = Progress::new();

    progress.step("certificates");
    let certs = root.join("certs");
    if !certs.join("ca.key").exists() {
        let out = std::process::Command::new(&exe)
            .args(["certs", "init"])
            .arg(&certs)
            .args(["--replicas", &args.replicas.to_string(), "-o", "json"])
            .output()?;
        if !out.status.success() {
            bail!("certs init: {}", String::from_utf8_lossy(&out.stderr));
        }
    }
    if !certs.join("web.pem").exists() {
        write_web_certificate(&certs)?;
    }

    progress.step("starting replicas");
    let mut replicas = Vec::new();
    for id in 1..=args.replicas {
        let mut replica = prepare_replica(&root, &certs, id)?;
        replica.child = Some(spawn(&exe, &replica)?);
        replicas.push(replica);
    }
    let env = write_env(&root, &certs, &replicas)?;
    let connection = Connection::new(&ConnectionArgs {
        endpoints: replicas.iter().map(|r| r.api_addr.clone()).collect(),
        ca: Some(certs.join("ca.pem")),
        cert: Some(certs.join("admin.pem")),
        key: Some(certs.join("admin.key")),
    })?;

    let outcome = tokio::select! {
        result = form_group(&connection, &replicas, &progress) => result,
        () = super::server::shutdown_signal() => Err(anyhow::anyhow!("interrupted")),
    };
    if let Err(error) = outcome {
        progress.finish();
        stop_all(&mut replicas, &mut []).await;
        return Err(
            error.context(format!("replica logs are in {}/replica-*/server.log", root.display()))
        );
    }
    let mut members = Vec::new();
    let started = tokio::select! {
        result = start_clusters(&exe, &root, &certs, &connection, args.clusters, &progress, &mut members) => result,
        () = super::server::shutdown_signal() => Err(anyhow::anyhow!("interrupted")),
    };
    if let Err(error) = started {
        progress.finish();
        stop_all(&mut replicas, &mut members).await;
        return Err(
            error.context(format!("agent logs are in {}/clusters/*/agent.log", root.display()))
        );
    }
    progress.finish();

    let interactive = std::io::stdout().is_terminal();
    let refresh = Duration::from_secs(args.refresh.max(1));
    let mut ticker = tokio::time::interval(refresh);
    let mut events: Vec<String> = Vec::new();
    // Not on a terminal: the first frame whole, then one line per change.
    let mut changes: Option<Facts> = None;
    loop {
        tokio::select! {
            () = super::server::shutdown_signal() => break,
            _ = ticker.tick() => {}
        }
        supervise(&exe, &mut replicas, args.restart_after);
        supervise_agents(&exe, &mut members, args.restart_agents_after);
        let mut new_events = Vec::new();
        for member in &mut members {
            match member.advance_rotation(&connection).await {
                Ok(Some(line)) => new_events.push(line),
                Ok(None) => {}
                Err(error) => new_events.push(format!("{}: rotation: {error:#}", member.name)),
            }
        }
        events.extend(new_events.iter().cloned());
        let keep = events.len().saturating_sub(5);
        events.drain(..keep);
        let view = status::collect(&connection).await;
        let clusters = list_clusters(&connection).await;
        let screen = Screen {
            root: &root,
            env: &env,
            replicas: &replicas,
            members: &members,
            events: &events,
        };
        let view = view.as_ref();
        let text = match &mut changes {
            Some(facts) if !interactive => {
                let mut lines = facts.changed(&screen, view, &clusters);
                lines.extend(
                    new_events.iter().map(|e| super::output::escape_control(e).into_owned()),
                );
                lines.iter().map(|line| format!("{}\n", stamped(line))).collect()
            }
            _ => {
                if !interactive {
                    let mut facts = Facts::default();
                    facts.changed(&screen, view, &clusters);
                    changes = Some(facts);
                }
                render(interactive, &screen, view, &clusters)
            }
        };
        // Nothing to write for a while must not hide a reader that is gone.
        if !interactive && stdout_closed() {
            break;
        }
        if let Err(error) = write_stdout(&text) {
            // `federator dev | head`: the reader is gone; stop everything quietly.
            if error.kind() != std::io::ErrorKind::BrokenPipe {
                eprintln!("federator dev: writing to stdout: {error}");
            }
            break;
        }
    }
    eprintln!("\nstopping {} replicas and {} agents…", replicas.len(), members.len());
    stop_all(&mut replicas, &mut members).await;
    if args.dir.is_some() {
        eprintln!(
            "state kept in {}; run `federator dev --dir {}` to resume",
            root.display(),
            root.display()
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// Reuses DIR/replica-N/server.toml if present (same ports), else writes one with free
/// loopback ports.
fn prepare_replica(root: &Path, certs: &Path, id: u64) -> anyhow::Result<DevReplica> {
    let dir = root.join(format!("replica-{id}"));
    std::fs::create_dir_all(&dir)?;
    let config = dir.join("server.toml");
    if !config.exists() {
        let raft = free_port()?;
        let api = free_port()?;
        let metrics = free_port()?;
        let bundle_spiffe = free_port()?;
        let bundle_web = free_port()?;
        std::fs::write(
            &config,
            format!(
                "# Written by `federator dev`.\nid = {id}\ndata_dir = \"data\"\n\n[listen]\nraft = \"127.0.0.1:{raft}\"\napi = \"127.0.0.1:{api}\"\nmetrics = \"127.0.0.1:{metrics}\"\n\n[tls]\nca = \"{c}/ca.pem\"\ncert = \"{c}/replica-{id}.pem\"\nkey = \"{c}/replica-{id}.key\"\n\n[raft]\n# Every replica on this machine: the fast-failover profile.\ntiming = \"lan\"\n\n[bundle_endpoint]\n# https_spiffe: this replica's own SVID; https_web: the dev web certificate\n# (its CA is {c}/web-ca.pem).\nlisten_spiffe = \"127.0.0.1:{bundle_spiffe}\"\nlisten_web = \"127.0.0.1:{bundle_web}\"\nweb_cert = \"{c}/web.pem\"\nweb_key = \"{c}/web.key\"\n",
                c = certs.display()
            ),
        )?;
    }
    let parsed = crate::server::config::ServerConfig::load(
        Some(&config),
        &crate::server::config::ServerOverrides::default(),
    )?;
    let endpoint = |e: &crate::server::config::BundleEndpoint| e.as_ref().map(|(addr, _)| *addr);
    Ok(DevReplica {
        id,
        dir,
        raft_addr: parsed.advertise_raft,
        api_addr: parsed.advertise_api,
        bundle_endpoints: (
            endpoint(&parsed.bundle_endpoint.spiffe),
            endpoint(&parsed.bundle_endpoint.web),
        ),
        child: None,
        died_at: None,
    })
}

/// A web PKI stand-in for the bundle endpoint's `https_web` profile: a dev CA
/// (`web-ca.pem`, which consumers trust) and a certificate for 127.0.0.1 and localhost.
fn write_web_certificate(certs: &Path) -> anyhow::Result<()> {
    let year = Duration::from_secs(365 * 86_400);
    let ca = crate::identity::FederationCa::generate("web.invalid", "federator dev web CA", year)?;
    let leaf = ca.issue(
        "spiffe://web.invalid/bundle-endpoint",
        &[std::net::IpAddr::from([127, 0, 0, 1])],
        &["localhost".to_string()],
        year,
    )?;
    std::fs::write(certs.join("web-ca.pem"), ca.cert_pem())?;
    std::fs::write(certs.join("web.pem"), &leaf.cert_pem)?;
    super::certs::write_private(&certs.join("web.key"), &leaf.key_pem)?;
    Ok(())
}

fn free_port() -> anyhow::Result<u16> {
    Ok(crate::net::free_local_port()?)
}

fn spawn(exe: &Path, replica: &DevReplica) -> anyhow::Result<Child> {
    spawn_child(
        exe,
        "server",
        &replica.dir.join("server.toml"),
        &replica.dir.join("server.log"),
        "info,openraft=warn",
    )
    .with_context(|| format!("start replica {}", replica.id))
}

/// Starts `federator SUBCOMMAND --config CONFIG` with its output appended to `log`,
/// `RUST_LOG` from the environment or `default_log`, killed if dev drops it.
fn spawn_child(
    exe: &Path,
    subcommand: &str,
    config: &Path,
    log: &Path,
    default_log: &str,
) -> anyhow::Result<Child> {
    let log = std::fs::OpenOptions::new().create(true).append(true).open(log)?;
    Ok(Command::new(exe)
        .args([subcommand, "--config"])
        .arg(config)
        .env("RUST_LOG", std::env::var("RUST_LOG").unwrap_or_else(|_| default_log.into()))
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .kill_on_drop(true)
        .spawn()?)
}

/// Writes DIR/env: sourced, it puts this `federator` on the `PATH` and points it at the
/// dev federation.
fn write_env(root: &Path, certs: &Path, replicas: &[DevReplica]) -> anyhow::Result<PathBuf> {
    let path = root.join("env");
    let endpoints: Vec<&str> = replicas.iter().map(|r| r.api_addr.as_str()).collect();
    let exe = std::env::current_exe().context("the path of this federator binary")?;
    let bin = exe.parent().unwrap_or_else(|| Path::new("."));
    let quote = |p: &Path| shell_quote(&p.display().to_string());
    std::fs::write(
        &path,
        format!(
            "# Source this file to put `federator` on the PATH and point it at the dev federation.\n\
             export PATH={}:\"$PATH\"\nexport FEDERATOR_ENDPOINTS={}\nexport FEDERATOR_CA={}\n\
             export FEDERATOR_CERT={}\nexport FEDERATOR_KEY={}\n",
            quote(bin),
            endpoints.join(","),
            quote(&certs.join("ca.pem")),
            quote(&certs.join("admin.pem")),
            quote(&certs.join("admin.key")),
        ),
    )?;
    Ok(path)
}

/// `text` as one word for a POSIX shell: as is when it holds only characters no shell
/// treats specially, else in single quotes.
fn shell_quote(text: &str) -> String {
    let plain = |c: char| c.is_ascii_alphanumeric() || "/._-+,:@%=".contains(c);
    if !text.is_empty() && text.chars().all(plain) {
        text.to_string()
    } else {
        format!("'{}'", text.replace('\'', "'\\''"))
    }
}

/// Initializes the group on replica 1 unless it already has a log, then adds the others.
async fn form_group(
    connection: &Connection,
    replicas: &[DevReplica],
    progress: &Progress,
) -> anyhow::Result<()> {
    progress.step("waiting for replicas to answer");
    for replica in replicas {
        wait(&format!("replica {} to answer", replica.id), Duration::from_secs(30), || async {
            connection.status_of(&replica.api_addr).await.ok()
        })
        .await?;
    }
    let first = connection.status_of(&replicas[0].api_addr).await?;
    if first.last_log_index == 0 {
        progress.step("forming the group");
        connection
            .admin(&replicas[0].api_addr)
            .await?
            .initialize(pb::InitializeRequest { members: Vec::new() })
            .await
            .map_err(super::client::status_error)?;
    }
    progress.step("electing a leader");
    wait("a leader", Duration::from_secs(30), || async {
        connection.status_of(&replicas[0].api_addr).await.ok().filter(|s| s.has_leader)
    })
    .await?;
    for replica in &replicas[1..] {
        let status = connection.first_status().await?.1;
        let known = status.voters.iter().any(|m| m.id == replica.id);
        if !known {
            progress.step(&format!("adding replica {}", replica.id));
            // Again while it fails: on a loaded machine the leader may change meanwhile,
            // and adding a member that already is one changes nothing.
            let request = pb::AddMemberRequest {
                id: replica.id,
                addr: replica.raft_addr.clone(),
                learner_only: false,
            };
            wait(&format!("replica {} to be added", replica.id), Duration::from_secs(30), || {
                let request = request.clone();
                async move { connection.leader().await.ok()?.add_member(request).await.ok() }
            })
            .await?;
        }
    }
    progress.step("waiting for every replica to be healthy");
    wait("every replica to know the leader", Duration::from_secs(30), || async {
        let view = status::collect(connection).await.ok()?;
        (view.quorum && view.replicas.iter().all(|r| r.reachable && r.lag.is_some_and(|l| l < 10)))
            .then_some(())
    })
    .await
}

async fn wait<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return Ok(value);
        }
        if Instant::now() > deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Notices dead replicas and restarts them after `restart_after` seconds.
fn supervise(exe: &Path, replicas: &mut [DevReplica], restart_after: u64) {
    for replica in replicas.iter_mut() {
        if let Some(child) = replica.child.as_mut()
            && let Ok(Some(_)) = child.try_wait()
        {
            replica.child = None;
            replica.died_at = Some(Instant::now());
        }
        let due =
            replica.died_at.is_some_and(|t| t.elapsed() >= Duration::from_secs(restart_after));
        if replica.child.is_none() && restart_after > 0 && due {
            match spawn(exe, replica) {
                Ok(child) => {
                    replica.child = Some(child);
                    replica.died_at = None;
                }
                Err(error) => tracing::warn!(%error, replica = replica.id, "restart failed"),
            }
        }
    }
}

/// Member clusters as the federation sees them (empty when it does not answer).
async fn list_clusters(connection: &Connection) -> Vec<pb::Cluster> {
    let Ok(mut admin) = connection.any_admin().await else { return Vec::new() };
    let request = pb::ListClustersRequest { consistency: pb::Consistency::Stale.into() };
    admin.list_clusters(request).await.map(|r| r.into_inner().clusters).unwrap_or_default()
}

/// Prepares and starts every member cluster: CA, agent, demo service; waits until every
/// agent has joined and connected.
async fn start_clusters(
    exe: &Path,
    root: &Path,
    certs: &Path,
    connection: &Connection,
    count: u8,
    progress: &Progress,
    members: &mut Vec<clusters::DevCluster>,
) -> anyhow::Result<()> {
    // Everything runs on this machine: the demo's endpoints are loopback addresses, which
    // a federation refuses unless told otherwise.
    connection
        .leader()
        .await?
        .update_settings(pb::UpdateSettingsRequest {
            open_exports: None,
            allow_loopback_endpoints: Some(true),
        })
        .await
        .map_err(super::client::status_error)?;
    for index in 0..usize::from(count) {
        let mut member =
            clusters::DevCluster::prepare(root, index, connection, &certs.join("ca.pem")).await?;
        progress.step(&format!("starting {} ({})", member.name, member.trust_domain));
        let (name, port) = (member.name.clone(), member.echo_port);
        // The demo's echo service runs for as long as the `federator dev` process (it
        // stops with the process, after its agents and replicas were stopped): no owner.
        tokio::spawn(async move {
            if let Err(error) = clusters::serve_echo(name, port).await {
                tracing::warn!(error = %format!("{error:#}"), "demo service stopped");
            }
        });
        member.spawn(exe)?;
        members.push(member);
    }
    for member in members.iter() {
        progress.step(&format!("waiting for {} to join and connect", member.name));
        wait(
            &format!("the agent of {} to connect", member.name),
            Duration::from_secs(60),
            || async {
                member.status().filter(|s| s.connected_replica.is_some() && s.lease.is_some())
            },
        )
        .await?;
    }
    Ok(())
}

/// Notices dead agents and restarts them after `restart_after` seconds.
fn supervise_agents(exe: &Path, members: &mut [clusters::DevCluster], restart_after: u64) {
    for member in members.iter_mut() {
        if let Some(child) = member.child.as_mut()
            && let Ok(Some(_)) = child.try_wait()
        {
            member.child = None;
            member.died_at = Some(Instant::now());
        }
        let due = member.died_at.is_some_and(|t| t.elapsed() >= Duration::from_secs(restart_after));
        if member.child.is_none()
            && restart_after > 0
            && due
            && let Err(error) = member.spawn(exe)
        {
            tracing::warn!(%error, cluster = %member.name, "agent restart failed");
        }
    }
}

async fn stop_all(replicas: &mut [DevReplica], members: &mut [clusters::DevCluster]) {
    use nix::sys::signal::{Signal, kill};
    use nix::unistd::Pid;
    // SIGTERM every process first so they stop together, then reap (SIGKILL stragglers).
    let children = members
        .iter_mut()
        .filter_map(|m| m.child.as_mut())
        .chain(replicas.iter_mut().filter_map(|r| r.child.as_mut()));
    let mut all: Vec<&mut Child> = children.collect();
    for child in &all {
        if let Some(pid) = child.id().and_then(|p| i32::try_from(p).ok()) {
            let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
        }
    }
    for child in &mut all {
        if tokio::time::timeout(Duration::from_secs(5), child.wait()).await.is_err() {
            let _ = child.kill().await;
        }
    }
    for member in members.iter_mut() {
        member.child = None;
    }
    for replica in replicas.iter_mut() {
        replica.child = None;
    }
}

/// Start-up progress on stderr.
struct Progress {
    bar: ProgressBar,
    started: Instant,
}

impl Progress {
    fn new() -> Self {
        let bar = ProgressBar::new_spinner();
        bar.set_style(
            ProgressStyle::with_template("{spinner} {msg} ({elapsed})")
                .unwrap_or_else(|_| ProgressStyle::default_spinner()),
        );
        bar.enable_steady_tick(Duration::from_millis(120));
        Self { bar, started: Instant::now() }
    }

    fn step(&self, message: &str) {
        self.bar.set_message(message.to_string());
        if !std::io::stderr().is_terminal() {
            eprintln!("[{:>5.1}s] {message}", self.started.elapsed().as_secs_f64());
        }
    }

    fn finish(&self) {
        self.bar.finish_and_clear();
        eprintln!("ready in {:.1}s", self.started.elapsed().as_secs_f64());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shell_words_are_quoted_only_when_needed() {
        assert_eq!(
            shell_quote("/tmp/federator-dev/certs/ca.pem"),
            "/tmp/federator-dev/certs/ca.pem"
        );
        assert_eq!(shell_quote("/tmp/my dir"), "'/tmp/my dir'");
        assert_eq!(shell_quote("it's"), "'it'\\''s'");
        assert_eq!(shell_quote("$HOME"), "'$HOME'");
        assert_eq!(shell_quote(""), "''");
    }

    proptest::proptest! {
        /// Whatever the path, `sh` reads the quoted word back as it was.
        #[test]
        fn a_quoted_word_reads_back_in_sh(text in "[ -~]{0,24}") {
            let out = std::process::Command::new("sh")
                .args(["-c", &format!("printf %s {}", shell_quote(&text))])
                .output()
                .expect("sh runs");
            proptest::prop_assert_eq!(String::from_utf8_lossy(&out.stdout), text);
        }
    }
}
