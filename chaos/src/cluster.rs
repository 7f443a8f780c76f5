//! A [`Federation`] of real `federator server`
//! processes on loopback, with certificates, free ports, the CLI, admin clients and
//! bounded waits. Every process is killed when the [`Federation`] is dropped.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use anyhow::{Context as _, bail};
use federator::cli::{Connection, ConnectionArgs};
use federator_proto::admin::admin_client::AdminClient;
use federator_proto::admin::{self as pb, ReplicaStatus};
use tonic::transport::Channel;

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

/// The CLI's stdout when it exited 0, else an error with its status and output.
fn cli_stdout(args: &[&str], out: &Output) -> anyhow::Result<String> {
    if !out.status.success() {
        bail!(
            "`federator {}` failed ({}):\n{}{}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A free TCP port on 127.0.0.1 for a server (see [`federator::config::free_local_port`]).
///
/// # Panics
/// No free port was found.
pub fn free_port() -> u16 {
    federator::config::free_local_port().expect("a free port on 127.0.0.1")
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

    /// Each member's lease as replica `replica` has applied it (a stale read): its state,
    /// its id, and the milliseconds since the leader last heard a keep-alive (-1 if
    /// unknown).
    ///
    /// # Errors
    /// The replica did not answer within 2 s.
    pub async fn leases_seen_by(
        &self,
        replica: u64,
    ) -> anyhow::Result<BTreeMap<String, (String, u64, i64)>> {
        let mut admin = self.admin(replica).await?;
        let request = pb::ListClustersRequest { consistency: pb::Consistency::Stale as i32 };
        let clusters =
            tokio::time::timeout(Duration::from_secs(2), admin.list_clusters(request)).await??;
        Ok(clusters
            .into_inner()
            .clusters
            .into_iter()
            .map(|c| {
                let lease = c.lease.unwrap_or_default();
                (c.name, (lease.state, lease.id, lease.last_keepalive_ms))
            })
            .collect())
    }

    /// The sequence of `td`'s bundle that member `cluster` has applied, per `federator
    /// bundle status`.
    ///
    /// # Errors
    /// The CLI failed.
    pub fn applied_sequence(&self, td: &str, cluster: &str) -> anyhow::Result<Option<u64>> {
        let status = self.cli_json(&["bundle", "status", td])?;
        Ok(status["members"]
            .as_array()
            .and_then(|m| m.iter().find(|m| m["cluster"] == cluster))
            .and_then(|m| m["applied_sequence"].as_u64()))
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

    /// Connection arguments reaching the given replicas' APIs with the admin identity.
    #[must_use]
    pub fn connection_args(&self, ids: &[u64]) -> ConnectionArgs {
        ConnectionArgs {
            endpoints: ids
                .iter()
                .filter_map(|id| self.replicas.get(id))
                .map(|p| p.api_addr.clone())
                .collect(),
            ca: Some(self.certs.join("ca.pem")),
            cert: Some(self.certs.join("admin.pem")),
            key: Some(self.certs.join("admin.key")),
        }
    }

    /// An admin connection to the given replicas.
    ///
    /// # Errors
    /// The admin certificate could not be loaded.
    pub fn connection(&self, ids: &[u64]) -> anyhow::Result<Connection> {
        Connection::new(&self.connection_args(ids))
    }

    /// An admin client of replica `id`.
    ///
    /// # Errors
    /// It cannot be reached.
    pub async fn admin(&self, id: u64) -> anyhow::Result<AdminClient<Channel>> {
        let connection = self.connection(&[id])?;
        connection.admin(&self.replica(id).api_addr).await
    }

    /// Status of replica `id`, if it answers.
    pub async fn status(&self, id: u64) -> Option<ReplicaStatus> {
        let mut client = self.admin(id).await.ok()?;
        client.status(pb::StatusRequest {}).await.ok().map(tonic::Response::into_inner)
    }

    /// The applied index of replica `id`.
    ///
    /// # Errors
    /// It did not answer.
    pub async fn applied_index(&self, id: u64) -> anyhow::Result<u64> {
        let status = self.status(id).await;
        Ok(status.ok_or_else(|| anyhow::anyhow!("replica {id} gave no status"))?.applied_index)
    }

    /// Runs the `federator` CLI against `ids` (all running replicas when empty).
    ///
    /// # Errors
    /// The process could not be run.
    pub fn cli(&self, ids: &[u64], args: &[&str]) -> anyhow::Result<Output> {
        let ids = if ids.is_empty() { self.ids() } else { ids.to_vec() };
        let output = Command::new(federator_bin())
            .args(args)
            .envs(self.cli_env(&ids))
            .stdin(Stdio::null())
            .output()?;
        Ok(output)
    }

    /// The `federator` command with `args`, pointed at every replica with the admin
    /// identity, not started (for one that runs beside the test, e.g. a `--wait`).
    #[must_use]
    pub fn cli_command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(federator_bin());
        command.args(args).envs(self.cli_env(&self.ids())).stdin(Stdio::null());
        command
    }

    /// The environment that points the CLI at replicas `ids` with the admin identity.
    fn cli_env(&self, ids: &[u64]) -> [(&'static str, std::ffi::OsString); 4] {
        let conn = self.connection_args(ids);
        [
            ("FEDERATOR_ENDPOINTS", conn.endpoints.join(",").into()),
            ("FEDERATOR_CA", self.certs.join("ca.pem").into()),
            ("FEDERATOR_CERT", self.certs.join("admin.pem").into()),
            ("FEDERATOR_KEY", self.certs.join("admin.key").into()),
        ]
    }

    /// Runs the CLI against `ids` like [`Federation::cli_ok`], without blocking the
    /// runtime, killed after `timeout`; returns stdout.
    ///
    /// # Errors
    /// It could not be run, timed out, or exited non-zero (the error holds stderr).
    pub async fn cli_ok_within(
        &self,
        ids: &[u64],
        args: &[&str],
        timeout: Duration,
    ) -> anyhow::Result<String> {
        let child = tokio::process::Command::new(federator_bin())
            .args(args)
            .envs(self.cli_env(ids))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()?;
        let out = tokio::time::timeout(timeout, child.wait_with_output()).await.with_context(
            || format!("`federator {}` timed out after {timeout:?}", args.join(" ")),
        )??;
        cli_stdout(args, &out)
    }

    /// Runs the CLI and fails unless it exits 0; returns stdout.
    ///
    /// # Errors
    /// Non-zero exit; the error holds stderr.
    pub fn cli_ok(&self, ids: &[u64], args: &[&str]) -> anyhow::Result<String> {
        let out = self.cli(ids, args)?;
        cli_stdout(args, &out)
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

    /// A join token for `cluster` in `trust_domain`, valid for `ttl` (`1h`, `30s`…),
    /// made with the CLI.
    ///
    /// # Errors
    /// The CLI failed.
    pub fn token(&self, cluster: &str, trust_domain: &str, ttl: &str) -> anyhow::Result<String> {
        self.token_with(cluster, trust_domain, ttl, &[])
    }

    /// Like [`Federation::token`], with more `token create` arguments (`--namespace`,
    /// `--region`, `--zone`).
    ///
    /// # Errors
    /// The CLI failed.
    pub fn token_with(
        &self,
        cluster: &str,
        trust_domain: &str,
        ttl: &str,
        extra: &[&str],
    ) -> anyhow::Result<String> {
        let mut args = vec![
            "token",
            "create",
            "--cluster",
            cluster,
            "--trust-domain",
            trust_domain,
            "--ttl",
            ttl,
            "-o",
            "json",
        ];
        args.extend_from_slice(extra);
        let out = self.cli_ok(&[], &args)?;
        let v: serde_json::Value = serde_json::from_str(&out)?;
        v["token"].as_str().map(str::to_string).context("token create printed no token")
    }

    /// The newest audit events, as `federator audit -o json` prints them.
    ///
    /// # Errors
    /// The CLI failed.
    pub fn audit(&self) -> anyhow::Result<Vec<serde_json::Value>> {
        let out = self.cli_ok(&[], &["audit", "--limit", "200", "-o", "json"])?;
        let v: serde_json::Value = serde_json::from_str(&out)?;
        Ok(v.as_array().cloned().unwrap_or_default())
    }

    /// Runs the CLI with `-o json` appended and parses its output.
    ///
    /// # Errors
    /// The CLI failed or printed something else than JSON.
    pub fn cli_json(&self, args: &[&str]) -> anyhow::Result<serde_json::Value> {
        let mut args = args.to_vec();
        args.extend(["-o", "json"]);
        let out = self.cli_ok(&[], &args)?;
        serde_json::from_str(&out)
            .with_context(|| format!("`federator {}` printed {out}", args.join(" ")))
    }

    /// Waits until some replica among `ids` leads and every one of them knows it;
    /// returns the leader's id.
    ///
    /// # Errors
    /// No agreed leader within `timeout`.
    pub async fn wait_for_leader(&self, ids: &[u64], timeout: Duration) -> anyhow::Result<u64> {
        eventually("an agreed leader", timeout, || async {
            let mut leader = None;
            for id in ids {
                let s = self.status(*id).await?;
                if !s.has_leader {
                    return None;
                }
                match leader {
                    None => leader = Some(s.leader_id),
                    Some(l) if l != s.leader_id => return None,
                    Some(_) => {}
                }
            }
            let leader = leader?;
            ids.contains(&leader).then_some(leader)
        })
        .await
    }

    /// Forms a group of `ids` through the CLI: `raft init` on the first, then
    /// `raft add-member` for each other one.
    ///
    /// # Errors
    /// A CLI step failed.
    pub async fn form_group(&self, ids: &[u64]) -> anyhow::Result<()> {
        let first = ids[0];
        self.wait_for_api(first).await?;
        self.cli_ok(&[first], &["raft", "init"])?;
        self.wait_for_leader(&[first], Duration::from_secs(20)).await?;
        for id in &ids[1..] {
            self.wait_for_api(*id).await?;
            let addr = self.replica(*id).raft_addr.clone();
            self.cli_ok(&[first], &["raft", "add-member", &id.to_string(), &addr])?;
        }
        self.wait_for_leader(ids, Duration::from_secs(30)).await?;
        // The harness's members export into namespaces of their tests' choosing, at
        // loopback addresses: a test of the secure defaults turns these back off.
        self.cli_ok(
            &[first],
            &["settings", "--open-exports", "true", "--allow-loopback-endpoints", "true"],
        )?;
        Ok(())
    }

    /// Waits until replica `id` answers its admin API.
    ///
    /// # Errors
    /// It does not answer within 30 s.
    pub async fn wait_for_api(&self, id: u64) -> anyhow::Result<()> {
        eventually(&format!("replica {id} to answer"), Duration::from_secs(30), || async {
            self.status(id).await.map(|_| ())
        })
        .await
        .with_context(|| format!("replica {id} log:\n{}", tail(&self.log_of(id), 40)))
    }

    /// Waits until every replica in `ids` has applied the same index with the same state
    /// digest; returns (index, digest).
    ///
    /// # Errors
    /// They did not converge in time.
    pub async fn wait_for_convergence(
        &self,
        ids: &[u64],
        timeout: Duration,
    ) -> anyhow::Result<(u64, String)> {
        eventually("replicas to converge on one digest at one index", timeout, || async {
            let mut seen: Option<(u64, String)> = None;
            for id in ids {
                let mut client = self.admin(*id).await.ok()?;
                let d = client.digest(pb::DigestRequest {}).await.ok()?.into_inner();
                match &seen {
                    None => seen = Some((d.applied_index, d.digest)),
                    Some((index, digest)) if *index == d.applied_index && *digest == d.digest => {}
                    Some(_) => return None,
                }
            }
            seen
        })
        .await
    }

    /// Asserts that no member lease expired: `federator_lease_expirations_total` is 0 on
    /// every replica and the audit trail holds no `expire_lease`.
    ///
    /// # Errors
    /// A replica's metrics or the audit trail could not be read, or a lease expired.
    pub async fn assert_no_lease_expired(&self) -> anyhow::Result<()> {
        for id in self.ids() {
            let metrics = self.metrics(id).await?;
            anyhow::ensure!(
                metrics.lines().any(|l| l == "federator_lease_expirations_total 0"),
                "replica {id} expired a lease:\n{metrics}"
            );
        }
        let expiries: Vec<serde_json::Value> =
            self.audit()?.into_iter().filter(|e| e["action"] == "expire_lease").collect();
        anyhow::ensure!(expiries.is_empty(), "leases expired: {expiries:?}");
        Ok(())
    }

    /// Fetches `/metrics` of replica `id` (the body, whatever the status).
    ///
    /// # Errors
    /// The endpoint did not answer within five seconds.
    pub async fn metrics(&self, id: u64) -> anyhow::Result<String> {
        let addr = &self.replica(id).metrics_addr;
        Ok(crate::http::get(addr, "/metrics", Duration::from_secs(5)).await?.body)
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

/// A web PKI stand-in for the bundle endpoint's `https_web` profile: a CA that is not
/// the federation's, and a certificate it issued for 127.0.0.1 and localhost.
#[derive(Debug)]
pub struct WebCertificate {
    /// The CA certificate (PEM file): what an `https_web` consumer trusts.
    pub ca: PathBuf,
    /// The endpoint's certificate (PEM file).
    pub cert: PathBuf,
    /// Its key (PEM file).
    pub key: PathBuf,
    /// The CA certificate, PEM.
    pub ca_pem: String,
}

impl WebCertificate {
    /// Generates one into `dir` (created).
    ///
    /// # Errors
    /// Generation failed or a file could not be written.
    pub fn write(dir: &Path) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let hour = Duration::from_secs(3600);
        let ca = federator::identity::FederationCa::generate("web.invalid", "web CA", hour)?;
        let leaf = ca.issue(
            "spiffe://web.invalid/bundle-endpoint",
            &["127.0.0.1".parse()?],
            &["localhost".to_string()],
            hour,
        )?;
        let web = Self {
            ca: dir.join("ca.pem"),
            cert: dir.join("web.pem"),
            key: dir.join("web.key"),
            ca_pem: ca.cert_pem().to_string(),
        };
        std::fs::write(&web.ca, &web.ca_pem)?;
        std::fs::write(&web.cert, &leaf.cert_pem)?;
        std::fs::write(&web.key, &leaf.key_pem)?;
        Ok(web)
    }

    /// A `[bundle_endpoint]` section serving `https_spiffe` on `spiffe_port` and
    /// `https_web` with this certificate on `web_port`, both on 127.0.0.1.
    #[must_use]
    pub fn bundle_endpoint_config(&self, spiffe_port: u16, web_port: u16) -> String {
        format!(
            "\n[bundle_endpoint]\nlisten_spiffe = \"127.0.0.1:{spiffe_port}\"\nlisten_web = \
             \"127.0.0.1:{web_port}\"\nweb_cert = \"{}\"\nweb_key = \"{}\"\n",
            self.cert.display(),
            self.key.display()
        )
    }
}

/// Writes acknowledged by the federation during a [`write_load`].
#[derive(Debug, Default)]
pub struct LoadResult {
    /// Acknowledged (key, value) pairs.
    pub acked: Vec<(String, String)>,
    /// Writes whose outcome is unknown (timeout or connection lost mid-call).
    pub indeterminate: usize,
}

/// Runs `clients` concurrent writers of distinct keys under `prefix`, each rotating over
/// `endpoints` on failure, until `stop` turns true (or 50,000 writes per client).
pub async fn write_load(
    connection: Connection,
    clients: usize,
    prefix: &str,
    stop: tokio::sync::watch::Receiver<bool>,
) -> LoadResult {
    let tasks = (0..clients).map(|c| {
        let connection = connection.clone();
        let stop = stop.clone();
        let prefix = prefix.to_string();
        tokio::spawn(async move {
            let mut result = LoadResult::default();
            let endpoints = connection.endpoints().to_vec();
            let mut at = c % endpoints.len();
            let mut client = None;
            for i in 0..50_000u64 {
                if *stop.borrow() {
                    break;
                }
                if client.is_none() {
                    match connection.admin(&endpoints[at]).await {
                        Ok(c) => client = Some(c),
                        Err(_) => {
                            at = (at + 1) % endpoints.len();
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            continue;
                        }
                    }
                }
                let Some(admin) = client.as_mut() else {
                    continue;
                };
                let key = format!("{prefix}/c{c}/{i}");
                let value = format!("v{i}");
                let call = admin
                    .put(pb::PutRequest { key: key.clone(), value: value.clone().into_bytes() });
                match tokio::time::timeout(Duration::from_secs(5), call).await {
                    Ok(Ok(_)) => result.acked.push((key, value)),
                    Ok(Err(status)) if status.code() == tonic::Code::InvalidArgument => {
                        panic!("write refused as invalid: {status}")
                    }
                    _ => {
                        result.indeterminate += 1;
                        client = None;
                        at = (at + 1) % endpoints.len();
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                }
            }
            result
        })
    });
    let mut total = LoadResult::default();
    for r in futures::future::join_all(tasks).await.into_iter().flatten() {
        total.acked.extend(r.acked);
        total.indeterminate += r.indeterminate;
    }
    total
}

impl Federation {
    /// Every probe under `prefix` as replica `id` has applied it (stale read).
    ///
    /// # Errors
    /// The replica did not answer.
    pub async fn probes(&self, id: u64, prefix: &str) -> anyhow::Result<BTreeMap<String, String>> {
        let mut client = self.admin(id).await?;
        let list = client
            .list_probes(pb::ListProbesRequest {
                prefix: prefix.to_string(),
                consistency: pb::Consistency::Stale.into(),
            })
            .await?
            .into_inner();
        Ok(list
            .entries
            .into_iter()
            .map(|e| (e.key, String::from_utf8_lossy(&e.value).into_owned()))
            .collect())
    }

    /// Asserts every acknowledged write is on replica `id` with its value, once `id` has
    /// applied what the leader had committed (a linearizable read through it first: equal
    /// digests at an equal index right after a restart can still be below the commit
    /// index the leader has not yet announced).
    ///
    /// # Errors
    /// A write is missing or has another value.
    pub async fn assert_has_all(
        &self,
        id: u64,
        prefix: &str,
        acked: &[(String, String)],
    ) -> anyhow::Result<()> {
        let mut client = self.admin(id).await?;
        let barrier = pb::ListProbesRequest {
            prefix: "barrier/".into(),
            consistency: pb::Consistency::Linearizable.into(),
        };
        if let Err(status) = client.list_probes(barrier).await {
            tracing::debug!(replica = id, %status, "no linearizable barrier; reading what is applied");
        }
        let stored = self.probes(id, prefix).await?;
        let missing: Vec<&String> =
            acked.iter().filter(|(k, v)| stored.get(k) != Some(v)).map(|(k, _)| k).collect();
        if !missing.is_empty() {
            bail!(
                "replica {id} lacks {} of {} acknowledged writes, e.g. {:?}",
                missing.len(),
                acked.len(),
                &missing[..missing.len().min(5)]
            );
        }
        Ok(())
    }
}

/// Sends a harmless raft Vote RPC (term 0) to `raft_addr` as a raw peer that trusts the
/// CA in `trust/ca.pem`: with no client certificate (`None`), or with certificate `name`
/// from directory `certs`. Returns the error text when the call is refused at any layer.
///
/// # Errors
/// The handshake or the call was refused.
pub async fn raw_raft_vote(
    raft_addr: &str,
    trust: &Path,
    identity: Option<(&Path, &str)>,
) -> Result<(), String> {
    use federator_proto::raft as rpb;
    use rustls_pki_types::pem::PemObject as _;

    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let config = match identity {
        Some((certs, name)) => {
            let files = federator::identity::TlsFiles {
                ca: trust.join("ca.pem"),
                cert: certs.join(format!("{name}.pem")),
                key: certs.join(format!("{name}.key")),
            };
            files.load().map_err(|e| e.to_string())?.client_config().map_err(|e| e.to_string())?
        }
        None => {
            let mut roots = rustls::RootCertStore::empty();
            let ca = rustls_pki_types::CertificateDer::pem_file_iter(trust.join("ca.pem"))
                .map_err(|e| e.to_string())?;
            for cert in ca {
                roots.add(cert.map_err(|e| e.to_string())?).map_err(|e| e.to_string())?;
            }
            let mut config = rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .map_err(|e| e.to_string())?
                .with_root_certificates(roots)
                .with_no_client_auth();
            config.alpn_protocols = vec![b"h2".to_vec()];
            std::sync::Arc::new(config)
        }
    };
    let channel = tonic::transport::Endpoint::from_shared(format!("https://{raft_addr}"))
        .map_err(|e| e.to_string())?
        .connect_timeout(Duration::from_secs(2))
        .timeout(Duration::from_secs(5))
        .connect_with_connector(federator_raft::tls::connector(config))
        .await
        .map_err(|e| format!("connect: {e:?}"))?;
    let mut client = rpb::raft_service_client::RaftServiceClient::new(channel);
    let request = rpb::VoteRequest {
        vote: Some(rpb::Vote {
            leader_id: Some(rpb::LeaderId { term: 0, node_id: 99 }),
            committed: false,
        }),
        last_log_id: None,
    };
    client
        .vote(request)
        .await
        .map(|_| ())
        .map_err(|status| format!("{:?}: {}", status.code(), status.message()))
}
