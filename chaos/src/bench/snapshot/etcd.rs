//! The etcd side of `bench snapshot`: a cluster loaded through the KV `Put`,
//! `etcdctl snapshot save`, a member added after compaction, and
//! `etcdctl snapshot restore` plus starting the restored member.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use etcd_client::{Client, CompactionOptions, ConnectOptions};

use super::{
    CATCH_UP_TIMEOUT, CLI_TIMEOUT, CONNECTIONS_PER_MEMBER, Install, InstallTrial, SnapshotConfig,
    SystemSnapshot, key, load, poll, run_command, value,
};
use crate::bench::progress::Progress;
use crate::bench::{GROUP_SIZE, HEALTHY_TIMEOUT};
use crate::cluster::{free_port, tail};
use crate::etcd::{EtcdCluster, etcd_bin};

/// `--snapshot-count` of every member: etcd snapshots (and then compacts its in-memory
/// raft log, keeping 5,000 entries) every this many applied entries, so that a member
/// added after the load is sent a snapshot.
pub const SNAPSHOT_COUNT: u64 = 1_000;
/// What etcd 3.4 logs when a member has received a snapshot from the leader.
const RECEIVED_SNAPSHOT: &str = "received and saved database snapshot";
/// Time one client call may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(2);

/// The `etcdctl` binary: `$ETCDCTL_BIN`, or Debian's `/usr/bin/etcdctl`.
#[must_use]
pub fn etcdctl_bin() -> PathBuf {
    std::env::var_os("ETCDCTL_BIN").map_or_else(|| PathBuf::from("/usr/bin/etcdctl"), PathBuf::from)
}

/// Loads a cluster, then saves, installs on new members and restores, `trials` times each.
///
/// # Errors
/// The cluster did not start, the load failed, or a save or restore failed.
pub async fn measure(
    config: &SnapshotConfig,
    progress: &Progress,
) -> anyhow::Result<SystemSnapshot> {
    let step = progress.step(format!("starting {GROUP_SIZE} etcd members"));
    let flags = vec!["--snapshot-count".to_string(), SNAPSHOT_COUNT.to_string()];
    let mut cluster = EtcdCluster::start_with_flags(GROUP_SIZE, &flags)?;
    cluster.wait_healthy(HEALTHY_TIMEOUT).await?;
    step.finish_and_clear();

    let ids = cluster.ids();
    let mut conns = Vec::new();
    for id in ids.iter().cycle().take(ids.len() * CONNECTIONS_PER_MEMBER) {
        conns.push(cluster.client(&[*id]).await?.kv_client());
    }
    let put = |mut conn: etcd_client::KvClient, key: String, value: Vec<u8>| async move {
        conn.put(key, value, None).await.map(|_| ()).map_err(anyhow::Error::from)
    };
    let load_time = load("etcd", conns, config, progress, put).await?;

    // Save, from the leader (etcdctl takes a snapshot from exactly one endpoint).
    let leader = cluster.wait_healthy(HEALTHY_TIMEOUT).await?;
    let leader_url = cluster.member(leader)?.client_url.clone();
    let file = cluster.dir().join("bench.db");
    let mut save = Vec::new();
    let step = progress.step(format!("etcd: {} × etcdctl snapshot save", config.trials));
    for _ in 0..config.trials {
        let _ = std::fs::remove_file(&file);
        let mut command = etcdctl();
        command.args(["snapshot", "save"]).arg(&file).args(["--endpoints", &leader_url]);
        let started = Instant::now();
        run_command(command, CLI_TIMEOUT).await?;
        save.push(started.elapsed());
    }
    step.finish_and_clear();
    let file_size = std::fs::metadata(&file)?.len();

    // Follower install.
    let step = progress.step(format!("etcd: {} × member add", config.trials));
    let install = match install_trials(&mut cluster, config, &flags).await {
        Ok(trials) => Install::Measured(trials),
        Err(error) => Install::NotMeasured(format!("{error:#}")),
    };
    step.finish_and_clear();

    // Restore, with the loaded cluster gone (its directory, holding the file, stays).
    cluster.kill_all();
    let restores = tempfile::Builder::new().prefix("federator-etcd-restore-").tempdir()?;
    let step = progress.step(format!("etcd: {} × etcdctl snapshot restore", config.trials));
    let mut restore = Vec::new();
    for trial in 0..config.trials {
        restore
            .push(restore_trial(&file, &restores.path().join(format!("r{trial}")), config).await?);
    }
    step.finish_and_clear();
    drop(cluster);
    Ok(SystemSnapshot { system: "etcd", load: load_time, save, file_size, restore, install })
}

/// Compacts the key space, then runs the install trials, one new member each.
async fn install_trials(
    cluster: &mut EtcdCluster,
    config: &SnapshotConfig,
    flags: &[String],
) -> anyhow::Result<Vec<InstallTrial>> {
    let leader = cluster.wait_healthy(HEALTHY_TIMEOUT).await?;
    let mut client = cluster.client(&[leader]).await?;
    let status = bounded(client.status()).await?;
    let revision = status.header().context("a status header")?.revision();
    bounded(client.compact(revision, Some(CompactionOptions::new().with_physical())))
        .await
        .context("compacting the key space")?;
    let mut trials = Vec::new();
    for trial in 0..config.trials {
        let name = format!("m{}", GROUP_SIZE + 1 + trial as u64);
        trials.push(
            install_trial(cluster, &name, flags)
                .await
                .with_context(|| format!("trial {} (member {name})", trial + 1))?,
        );
    }
    Ok(trials)
}

/// Adds member `name` and starts it, timing from the `MemberAdd` call until its applied
/// raft index (read from its metrics listener) reaches the leader's committed index, and
/// until it also answers its status on its client URL; then removes and kills it.
///
/// # Errors
/// A step failed or did not finish in time.
pub async fn install_trial(
    cluster: &mut EtcdCluster,
    name: &str,
    flags: &[String],
) -> anyhow::Result<InstallTrial> {
    let leader = cluster.wait_healthy(HEALTHY_TIMEOUT).await?;
    let peer_url = format!("http://127.0.0.1:{}", free_port());
    let client_url = format!("http://127.0.0.1:{}", free_port());
    let metrics_url = format!("http://127.0.0.1:{}", free_port());
    let mut initial_cluster: Vec<String> = cluster
        .ids()
        .into_iter()
        .filter_map(|id| cluster.member(id).ok())
        .filter(|m| m.is_running())
        .map(|m| format!("{}={}", m.name, m.peer_url))
        .collect();
    initial_cluster.push(format!("{name}={peer_url}"));
    let spec = MemberSpec {
        name: name.to_string(),
        data_dir: cluster.dir().join(name),
        log: cluster.dir().join(format!("{name}.log")),
        client_url: client_url.clone(),
        peer_url: peer_url.clone(),
        initial_cluster: initial_cluster.join(","),
        state: "existing",
        token: None,
        flags: [flags, &["--listen-metrics-urls".to_string(), metrics_url.clone()]].concat(),
    };
    let mut client = cluster.client(&[leader]).await?;

    // etcd refuses a new voting member ("unhealthy cluster") until the leader has been
    // connected to every member for 5 s (its strict reconfiguration check, on by
    // default): such refusals are retried, and the time starts at the accepted call.
    let deadline = Instant::now() + HEALTHY_TIMEOUT;
    let (started, added) = loop {
        let started = Instant::now();
        match bounded(client.member_add([peer_url.as_str()], None)).await {
            Ok(added) => break (started, added),
            Err(error)
                if format!("{error:#}").contains("unhealthy cluster")
                    && Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            Err(error) => return Err(error.context("MemberAdd")),
        }
    };
    let member_id = added.member().context("MemberAdd answered no member")?.id();
    let process = spawn(&spec)?;
    // Its applied index from its metrics listener, which serves from the start (the
    // client URL only once the member has published itself through raft).
    poll("the new member to apply what the leader has committed", CATCH_UP_TIMEOUT, || {
        let cluster = &*cluster;
        let metrics_url = &metrics_url;
        async move {
            let leader = cluster.status(leader).await?;
            let applied = applied_index(metrics_url).await?;
            (applied >= leader.raft_index()).then_some(())
        }
    })
    .await
    .with_context(|| format!("member {name} log:\n{}", tail(&process.log(), 20)))?;
    let time = started.elapsed();
    poll("the new member to answer its status", CATCH_UP_TIMEOUT, || {
        let cluster = &*cluster;
        let client_url = &client_url;
        async move {
            let leader = cluster.status(leader).await?;
            let new = status_of(client_url).await?;
            (new.raft_applied_index() >= leader.raft_index()).then_some(())
        }
    })
    .await
    .with_context(|| format!("member {name} log:\n{}", tail(&process.log(), 20)))?;
    let serving = started.elapsed();
    let via_snapshot = process.log().contains(RECEIVED_SNAPSHOT);

    bounded(client.member_remove(member_id)).await.context("removing the new member")?;
    drop(process);
    cluster.wait_healthy(HEALTHY_TIMEOUT).await?;
    Ok(InstallTrial { time, via_snapshot: Some(via_snapshot), serving: Some(serving) })
}

/// Times `etcdctl snapshot restore FILE` into `data_dir` plus starting that one member
/// until it answers a linearizable `Get` of the last key with its value.
///
/// # Errors
/// A step failed or did not finish in time.
pub async fn restore_trial(
    file: &Path,
    data_dir: &Path,
    config: &SnapshotConfig,
) -> anyhow::Result<Duration> {
    let name = "restored";
    let peer_url = format!("http://127.0.0.1:{}", free_port());
    let client_url = format!("http://127.0.0.1:{}", free_port());
    let initial_cluster = format!("{name}={peer_url}");
    let token = format!("restored-{}", free_port());
    let spec = MemberSpec {
        name: name.to_string(),
        data_dir: data_dir.to_path_buf(),
        log: data_dir.with_extension("log"),
        client_url: client_url.clone(),
        peer_url: peer_url.clone(),
        initial_cluster: initial_cluster.clone(),
        state: "new",
        token: Some(token.clone()),
        flags: Vec::new(),
    };
    let last = key(config.keys.saturating_sub(1));
    let expected = value(config.keys.saturating_sub(1), config.value_size);

    let started = Instant::now();
    let mut command = etcdctl();
    command
        .args(["snapshot", "restore"])
        .arg(file)
        .arg("--data-dir")
        .arg(data_dir)
        .args(["--name", name, "--initial-cluster", &initial_cluster])
        .args(["--initial-advertise-peer-urls", &peer_url, "--initial-cluster-token", &token]);
    run_command(command, CLI_TIMEOUT).await?;
    let process = spawn(&spec)?;
    poll("the restored member to answer a linearizable Get", CATCH_UP_TIMEOUT, || {
        let (client_url, last, expected) = (&client_url, &last, &expected);
        async move {
            let mut client = connect(client_url).await?;
            let got = tokio::time::timeout(CALL_TIMEOUT, client.get(last.as_str(), None))
                .await
                .ok()?
                .ok()?;
            (got.kvs().first().map(etcd_client::KeyValue::value) == Some(expected.as_slice()))
                .then_some(())
        }
    })
    .await
    .with_context(|| format!("restored member log:\n{}", tail(&process.log(), 20)))?;
    let time = started.elapsed();
    drop(process);
    Ok(time)
}

/// `etcdctl` speaking the v3 API, with no other `ETCDCTL_*` setting from the caller.
fn etcdctl() -> tokio::process::Command {
    let mut command = tokio::process::Command::new(etcdctl_bin());
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("ETCDCTL_") {
            command.env_remove(name);
        }
    }
    command.env("ETCDCTL_API", "3");
    command
}

/// Bounds one client call by [`CALL_TIMEOUT`].
async fn bounded<T>(
    call: impl Future<Output = Result<T, etcd_client::Error>>,
) -> anyhow::Result<T> {
    Ok(tokio::time::timeout(CALL_TIMEOUT * 5, call)
        .await
        .context("no answer from etcd within 10 s")??)
}

/// A client of the member at `url` once its port accepts connections (so that the
/// client does not back off from a refused first connection).
async fn connect(url: &str) -> Option<Client> {
    let addr = url.trim_start_matches("http://");
    tokio::time::timeout(CALL_TIMEOUT, tokio::net::TcpStream::connect(addr)).await.ok()?.ok()?;
    let options = ConnectOptions::new().with_connect_timeout(CALL_TIMEOUT);
    tokio::time::timeout(CALL_TIMEOUT, Client::connect([url], Some(options))).await.ok()?.ok()
}

/// The applied raft index of the member whose metrics listener is at `url`
/// (`etcd_server_proposals_applied_total`, a gauge of the applied index).
async fn applied_index(url: &str) -> Option<u64> {
    let body = crate::http::get(url, "/metrics", CALL_TIMEOUT).await.ok()?.body;
    body.lines().find_map(|line| {
        let value = line.strip_prefix("etcd_server_proposals_applied_total ")?;
        value.trim().parse::<f64>().ok().map(|v| v as u64)
    })
}

/// The status of the member at `url` as it reports it.
async fn status_of(url: &str) -> Option<etcd_client::StatusResponse> {
    let mut client = connect(url).await?;
    tokio::time::timeout(CALL_TIMEOUT, client.status()).await.ok()?.ok()
}

/// How to start one etcd member outside an [`EtcdCluster`].
struct MemberSpec {
    name: String,
    data_dir: PathBuf,
    log: PathBuf,
    client_url: String,
    peer_url: String,
    initial_cluster: String,
    /// `--initial-cluster-state`.
    state: &'static str,
    /// `--initial-cluster-token`, for a new cluster.
    token: Option<String>,
    flags: Vec<String>,
}

/// An etcd process, SIGKILLed and reaped when dropped.
struct MemberProcess {
    child: Child,
    log: PathBuf,
}

impl MemberProcess {
    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for MemberProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spawn(spec: &MemberSpec) -> anyhow::Result<MemberProcess> {
    let log = std::fs::OpenOptions::new().create(true).append(true).open(&spec.log)?;
    let mut command = Command::new(etcd_bin());
    command
        .arg("--name")
        .arg(&spec.name)
        .arg("--data-dir")
        .arg(&spec.data_dir)
        .args(["--listen-client-urls", &spec.client_url])
        .args(["--advertise-client-urls", &spec.client_url])
        .args(["--listen-peer-urls", &spec.peer_url])
        .args(["--initial-advertise-peer-urls", &spec.peer_url])
        .args(["--initial-cluster", &spec.initial_cluster])
        .args(["--initial-cluster-state", spec.state])
        .args(["--logger", "zap", "--log-outputs", "stderr"])
        .args(&spec.flags)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    if let Some(token) = &spec.token {
        command.args(["--initial-cluster-token", token]);
    }
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("ETCD_") {
            command.env_remove(name);
        }
    }
    let child = command.spawn().with_context(|| format!("starting etcd member {}", spec.name))?;
    Ok(MemberProcess { child, log: spec.log.clone() })
}
