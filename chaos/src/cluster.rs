//! A [`Federation`] of real `federator server`
//! processes on loopback, with certificates, free ports, the CLI, admin clients and
//! bounded waits. Every process is killed when the [`Federation`] is dropped.
//!
//! Here: the replica processes (configured, started, signalled, stopped, restarted). The
//! CLI and admin connections are in `cli`, what the replicas report and the waits on it
//! in `status`, the write load and the check that no acknowledged write was lost in
//! `load`, TLS identities other than the replicas' own in `tls`. Everything public is
//! re-exported here.

mod cli;
mod load;
mod status;
mod tls;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use anyhow::{Context as _, bail};

pub use self::load::{LoadResult, load_commits, write_load};
pub use self::tls::{RawVoteError, WebCertificate, raw_raft_vote};
pub use crate::wait::{eventually, eventually_every};

/// The `federator` binary: `$FEDERATOR_BIN`, or the workspace's debug build, brought up
/// to date once per test process (a no-op when `tests/run.sh` has just built it).
///
/// # Panics
/// The binary is missing and cannot be built.
pub fn federator_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Some(bin) = std::env::var_os("FEDERATOR_BIN") {
            return PathBuf::from(bin);
        }
        let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default();
        let target = std::env::var_os("CARGO_TARGET_DIR")
            .map_or_else(|| workspace.join("target"), PathBuf::from);
        let bin = target.join("debug").join("federator");
        {
            let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
                .args(["build", "--quiet", "-p", "federator", "--bin", "federator"])
                .current_dir(&workspace)
                .status()
                .expect("cargo runs");
            assert!(status.success(), "building the federator binary failed");
        }
        bin
    })
    .clone()
}

/// A free TCP port on 127.0.0.1 for a server (see [`federator::net::free_local_port`]).
///
/// # Panics
/// No free port was found.
pub fn free_port() -> u16 {
    federator::net::free_local_port().expect("a free port on 127.0.0.1")
}

/// One replica process and its addresses.
#[derive(Debug)]
pub struct ReplicaProcess {
    /// Replica id.
    pub id: u64,
    /// Raft transport address.
    pub raft_addr: String,
    /// API address.
    pub api_addr: String,
    /// Metrics address.
    pub metrics_addr: String,
    /// Data directory.
    pub data_dir: PathBuf,
    /// Where stdout and stderr go.
    pub log: PathBuf,
    child: Option<Child>,
}

impl ReplicaProcess {
    /// The process id, while running.
    #[must_use]
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }
}

/// A federation of replica processes in a temporary directory.
pub struct Federation {
    dir: tempfile::TempDir,
    /// Certificates directory (`federator certs init`).
    pub certs: PathBuf,
    /// The federation's trust domain.
    pub trust_domain: String,
    replicas: BTreeMap<u64, ReplicaProcess>,
    /// Extra flags for every replica (e.g. raft tuning through a config file).
    pub extra_config: String,
    /// Extra `[raft]` settings of single replicas (the chaos suite's `dial` overrides).
    pub replica_config: BTreeMap<u64, String>,
    /// Environment variables of single replicas, set at every (re)start (e.g.
    /// `FEDERATOR_CLAIM_COMMAND_KINDS` to make one behave as an older build).
    pub replica_env: BTreeMap<u64, Vec<(String, String)>>,
    /// The replicas' `[raft] timing` profile: `lan` (every replica on loopback) unless a
    /// test or scenario wants the shipped default, `wan`.
    pub timing: federator_raft::Timing,
    /// Transport addresses chosen before their replica starts ([`Federation::plan_raft_addr`]).
    planned_raft: BTreeMap<u64, String>,
    /// API addresses chosen before their replica starts ([`Federation::plan_api_addr`]).
    planned_api: BTreeMap<u64, String>,
    /// Print the tail of every replica's log when dropped (tests: the harness shows it
    /// only for failing tests); benchmarks turn it off.
    pub show_logs_on_drop: bool,
}

impl Federation {
    /// A new federation with certificates for replicas 1..=`max_replicas`.
    ///
    /// # Errors
    /// The certificates could not be created.
    pub fn new(max_replicas: u64) -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new().prefix("federator-e2e-").tempdir()?;
        let certs = dir.path().join("certs");
        let trust_domain = "federation.test".to_string();
        let out = Command::new(federator_bin())
            .args(["certs", "init"])
            .arg(&certs)
            .args(["--trust-domain", &trust_domain, "--replicas", &max_replicas.to_string()])
            // A replica may be named as well as numbered (as in Kubernetes, where each
            // is its pod's DNS name): the certificates carry both.
            .args(["--ip", "127.0.0.1", "--dns", "localhost"])
            .output()?;
        if !out.status.success() {
            bail!("certs init failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(Self {
            dir,
            certs,
            trust_domain,
            replicas: BTreeMap::new(),
            extra_config: String::new(),
            replica_config: BTreeMap::new(),
            timing: federator_raft::Timing::Lan,
            replica_env: BTreeMap::new(),
            planned_raft: BTreeMap::new(),
            planned_api: BTreeMap::new(),
            show_logs_on_drop: true,
        })
    }

    /// The transport address replica `id` will listen on, chosen now so that proxies
    /// and other replicas' settings can name it before it starts.
    pub fn plan_raft_addr(&mut self, id: u64) -> String {
        self.planned_raft.entry(id).or_insert_with(|| format!("127.0.0.1:{}", free_port())).clone()
    }

    /// The API address replica `id` will listen on, chosen now so that clients can name
    /// it before it starts; a replica started again from nothing (after
    /// [`Federation::wipe`]) keeps it. Without a plan every start picks a new port.
    pub fn plan_api_addr(&mut self, id: u64) -> String {
        self.planned_api.entry(id).or_insert_with(|| format!("127.0.0.1:{}", free_port())).clone()
    }

    /// SIGKILLs replica `id` and deletes everything in its data directory but its config
    /// and its log: [`Federation::restart`] then starts it from nothing, on the same
    /// addresses (as a replica removed from the group and wiped before it is re-added).
    ///
    /// # Errors
    /// No such replica, or a file could not be removed.
    pub fn wipe(&mut self, id: u64) -> anyhow::Result<()> {
        self.kill(id);
        let process = self.replicas.get(&id).context("no such replica")?;
        for entry in std::fs::read_dir(&process.data_dir)? {
            let entry = entry?;
            let name = entry.file_name();
            if name == "server.toml" || name == "server.log" {
                continue;
            }
            let path = entry.path();
            if entry.file_type()?.is_dir() {
                std::fs::remove_dir_all(&path)?;
            } else {
                std::fs::remove_file(&path)?;
            }
        }
        let mut log = std::fs::OpenOptions::new().append(true).open(&process.log)?;
        std::io::Write::write_all(&mut log, b"\n===== data directory wiped =====\n\n")?;
        Ok(())
    }

    /// Whether replica `id` has been started (it may have exited since).
    #[must_use]
    pub fn has_started(&self, id: u64) -> bool {
        self.replicas.contains_key(&id)
    }

    /// Keeps the directory (data, logs, certificates) after the federation is dropped,
    /// for a failed run to be examined; returns where it is.
    pub fn keep_dir(&mut self) -> PathBuf {
        self.dir.disable_cleanup(true);
        self.dir.path().to_path_buf()
    }

    /// SIGSTOPs replica `id` (it keeps its sockets but answers nothing).
    pub fn pause(&self, id: u64) {
        self.signal(id, "-STOP");
    }

    /// SIGCONTs a paused replica.
    pub fn resume(&self, id: u64) {
        self.signal(id, "-CONT");
    }

    fn signal(&self, id: u64, signal: &str) {
        if let Some(pid) = self.replicas.get(&id).and_then(ReplicaProcess::pid) {
            let _ = Command::new("kill").args([signal, &pid.to_string()]).status();
        }
    }

    /// Root of the temporary directory.
    #[must_use]
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Replica `id`.
    ///
    /// # Panics
    /// No such replica was started.
    #[must_use]
    pub fn replica(&self, id: u64) -> &ReplicaProcess {
        &self.replicas[&id]
    }

    /// Ids of every replica started so far.
    #[must_use]
    pub fn ids(&self) -> Vec<u64> {
        self.replicas.keys().copied().collect()
    }

    /// Starts replica `id` for the first time (new ports and data directory), using
    /// certificate files `cert_name` (normally `replica-ID`).
    ///
    /// # Errors
    /// The process could not be spawned.
    pub fn start(&mut self, id: u64, bootstrap: bool) -> anyhow::Result<()> {
        self.start_with_certs(id, bootstrap, &self.certs.clone(), &format!("replica-{id}"))
    }

    /// Starts replica `id` with the certificate `name` from `certs`.
    ///
    /// # Errors
    /// The process could not be spawned.
    pub fn start_with_certs(
        &mut self,
        id: u64,
        bootstrap: bool,
        certs: &Path,
        name: &str,
    ) -> anyhow::Result<()> {
        let data_dir = self.dir.path().join(format!("replica-{id}"));
        std::fs::create_dir_all(&data_dir)?;
        let config = data_dir.join("server.toml");
        let raft_addr = self.plan_raft_addr(id);
        let api_addr = self
            .planned_api
            .get(&id)
            .cloned()
            .unwrap_or_else(|| format!("127.0.0.1:{}", free_port()));
        let metrics_addr = format!("127.0.0.1:{}", free_port());
        std::fs::write(
            &config,
            format!(
                "id = {id}\ntrust_domain = \"{td}\"\ndata_dir = \"{data}\"\n\n[listen]\nraft = \"{raft_addr}\"\napi = \"{api_addr}\"\nmetrics = \"{metrics_addr}\"\n\n[tls]\nca = \"{certs}/ca.pem\"\ncert = \"{certs}/{name}.pem\"\nkey = \"{certs}/{name}.key\"\n\n[raft]\nbootstrap = {bootstrap}\ntiming = \"{timing}\"\n{extra}\n{own}\n",
                td = self.trust_domain,
                timing = self.timing.name(),
                data = data_dir.display(),
                certs = certs.display(),
                extra = self.extra_config,
                own = self.replica_config.get(&id).map_or("", String::as_str),
            ),
        )?;
        // Beside the data directory, not in it: a test may fill that disk.
        let log = self.dir.path().join(format!("replica-{id}.log"));
        let mut process =
            ReplicaProcess { id, raft_addr, api_addr, metrics_addr, data_dir, log, child: None };
        spawn(&mut process, self.replica_env.get(&id).map_or(&[][..], Vec::as_slice))?;
        self.replicas.insert(id, process);
        Ok(())
    }

    /// Restarts a stopped replica with the same ports and data directory.
    ///
    /// # Errors
    /// It is still running, or could not be spawned.
    pub fn restart(&mut self, id: u64) -> anyhow::Result<()> {
        let env = self.replica_env.get(&id).cloned().unwrap_or_default();
        let process = self.replicas.get_mut(&id).context("no such replica")?;
        if process.child.is_some() {
            bail!("replica {id} is still running");
        }
        spawn(process, &env)
    }

    /// SIGKILLs replica `id` and reaps it.
    pub fn kill(&mut self, id: u64) {
        if let Some(mut child) = self.replicas.get_mut(&id).and_then(|p| p.child.take()) {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGKILLs every replica at once (all signals sent before any is reaped).
    pub fn kill_all(&mut self) {
        let mut children: Vec<Child> =
            self.replicas.values_mut().filter_map(|p| p.child.take()).collect();
        for child in &mut children {
            let _ = child.kill();
        }
        for child in &mut children {
            let _ = child.wait();
        }
    }

    /// SIGTERMs replica `id` (a graceful stop; see [`Federation::wait_exit`]).
    pub fn terminate(&self, id: u64) {
        self.signal(id, "-TERM");
    }

    /// Waits up to `timeout` for replica `id`'s process to exit, reaps it and returns its
    /// exit status.
    ///
    /// # Errors
    /// It is not running, or still running after `timeout`.
    pub async fn wait_exit(
        &mut self,
        id: u64,
        timeout: Duration,
    ) -> anyhow::Result<std::process::ExitStatus> {
        let process = self.replicas.get_mut(&id).context("no such replica")?;
        let child = process.child.as_mut().context("replica is not running")?;
        let what = format!("replica {id} to exit after it was asked to stop");
        let exited = eventually_every(&what, timeout, Duration::from_millis(20), || {
            std::future::ready(child.try_wait().transpose())
        })
        .await?;
        let status = exited?;
        process.child = None;
        Ok(status)
    }

    /// Whether replica `id`'s process has exited (it is reaped if so).
    pub fn has_exited(&mut self, id: u64) -> bool {
        let Some(process) = self.replicas.get_mut(&id) else {
            return true;
        };
        match process.child.as_mut().map(Child::try_wait) {
            Some(Ok(Some(_))) | None => {
                process.child = None;
                true
            }
            _ => false,
        }
    }

    /// The log of replica `id`, for failure messages.
    #[must_use]
    pub fn log_of(&self, id: u64) -> String {
        self.replicas
            .get(&id)
            .and_then(|p| std::fs::read_to_string(&p.log).ok())
            .unwrap_or_default()
    }

    /// A federation of `n` replicas started with `extra_config` and formed into a group.
    ///
    /// # Errors
    /// A replica did not start or the group did not form.
    pub async fn formed(n: u64, extra_config: &str) -> anyhow::Result<Self> {
        let mut fed = Self::new(n)?;
        fed.extra_config = extra_config.to_string();
        let ids: Vec<u64> = (1..=n).collect();
        for id in &ids {
            fed.start(*id, false)?;
        }
        fed.form_group(&ids).await?;
        Ok(fed)
    }

    /// The federation CA certificate (PEM), which agents trust for the API.
    ///
    /// # Panics
    /// The certificate files were removed.
    #[must_use]
    pub fn ca_pem(&self) -> String {
        std::fs::read_to_string(self.certs.join("ca.pem")).expect("the federation CA file")
    }
}

impl Drop for Federation {
    fn drop(&mut self) {
        self.kill_all();
        // The test harness shows this only for failing tests (it captures their output),
        // including those that fail by returning an error rather than panicking.
        if self.show_logs_on_drop {
            for (id, process) in &self.replicas {
                eprintln!(
                    "--- replica {id} log (last 60 lines) ---\n{}",
                    tail(&std::fs::read_to_string(&process.log).unwrap_or_default(), 60)
                );
            }
        }
    }
}

fn spawn(process: &mut ReplicaProcess, env: &[(String, String)]) -> anyhow::Result<()> {
    let log = std::fs::OpenOptions::new().create(true).append(true).open(&process.log)?;
    let child = Command::new(federator_bin())
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .args(["server", "--config"])
        .arg(process.data_dir.join("server.toml"))
        .env(
            "RUST_LOG",
            std::env::var("FEDERATOR_TEST_LOG").unwrap_or_else(|_| "info,openraft=warn".into()),
        )
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .context("spawn federator server")?;
    process.child = Some(child);
    Ok(())
}

/// The last `lines` lines of `text`.
#[must_use]
pub fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
