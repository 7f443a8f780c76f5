//! An [`EtcdCluster`] of real `etcd` processes on loopback: plain HTTP or client and peer
//! mTLS ([`EtcdTransport`]), default heartbeat and election settings, free ports, a
//! temporary data directory. The benchmarks compare Federator against it and the agent
//! tests write into it. Every process is killed when the [`EtcdCluster`] is dropped.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use etcd_client::{Client, ConnectOptions, StatusResponse};
use federator::agent::etcd_auth::{
    EtcdAuth, EtcdAuthError, EtcdConnect, EtcdTlsError, connect_tls,
};
use federator::identity::FederationCa;

use crate::cluster::{free_port, tail};

/// Time allowed for one status call while probing health.
const STATUS_TIMEOUT: Duration = Duration::from_secs(2);

/// What went wrong starting, probing or restarting etcd.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EtcdError {
    /// The temporary directory or a log file could not be created.
    #[error("etcd cluster directory: {0}")]
    Io(#[from] std::io::Error),
    /// The `etcd` binary could not be started.
    #[error("cannot start {bin} for member {member}: {source}")]
    Spawn {
        /// The binary that was run.
        bin: PathBuf,
        /// Member id (1-based).
        member: u64,
        /// Why the spawn failed.
        source: std::io::Error,
    },
    /// A member's process exited while it was expected to run.
    #[error("etcd member {member} exited ({status}); last log lines:\n{log}")]
    Exited {
        /// Member id (1-based).
        member: u64,
        /// How it exited.
        status: ExitStatus,
        /// The end of its log.
        log: String,
    },
    /// The cluster did not become healthy in time.
    #[error("etcd cluster not healthy after {after:?}: {detail}")]
    Unhealthy {
        /// How long we waited.
        after: Duration,
        /// What the last probe saw.
        detail: String,
    },
    /// A member's `/metrics` could not be fetched.
    #[error("etcd member {member} /metrics: {source:#}")]
    Metrics {
        /// Member id (1-based).
        member: u64,
        /// Why the fetch failed.
        source: anyhow::Error,
    },
    /// No member with this id was started.
    #[error("no etcd member {0}")]
    NoSuchMember(u64),
    /// A restart was asked for a member that is still running.
    #[error("etcd member {0} is still running")]
    StillRunning(u64),
    /// The client library refused the endpoints.
    #[error("etcd client: {0}")]
    Client(#[from] etcd_client::Error),
    /// The cluster's certificates could not be made.
    #[error("etcd certificates: {0}")]
    Certificates(#[from] federator::identity::IdentityError),
    /// The client's TLS configuration could not be loaded from the cluster's files.
    #[error("etcd client TLS: {0}")]
    ClientTls(#[from] EtcdAuthError),
    /// No TLS connection to the member.
    #[error("etcd TLS connection: {0}")]
    Connect(#[from] EtcdTlsError),
}

/// What one health probe found missing.
#[derive(Debug, thiserror::Error)]
enum NotHealthy {
    #[error("member {0} does not answer")]
    Silent(u64),
    #[error("member {0} knows no leader")]
    NoLeader(u64),
    #[error("members disagree on the leader ({0:x} vs {1:x})")]
    Disagree(u64, u64),
    #[error("no member is running")]
    NoneRunning,
    #[error("leader {0:x} is not a running member")]
    LeaderNotRunning(u64),
}

/// How clients and peers reach the members.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum EtcdTransport {
    /// Plain HTTP/2 for clients and peers (etcd's default).
    Plain,
    /// TLS with client certificates required, for clients (`--client-cert-auth`) and
    /// for peers (`--peer-client-cert-auth`), as Federator's replicas always run: ECDSA
    /// P-256 certificates from one CA, made like Federator's. `/metrics` moves to a
    /// plain-HTTP listener of its own.
    #[default]
    #[value(name = "mtls")]
    MutualTls,
}

impl EtcdTransport {
    /// How the reports name it.
    #[must_use]
    pub fn describe(self) -> &'static str {
        match self {
            Self::Plain => "plain HTTP/2 (no TLS) for clients and peers",
            Self::MutualTls => "mTLS for clients and peers (client certificates required)",
        }
    }

    fn scheme(self) -> &'static str {
        match self {
            Self::Plain => "http",
            Self::MutualTls => "https",
        }
    }
}

/// Certificate files of a [`EtcdTransport::MutualTls`] cluster, in its directory.
#[derive(Debug)]
struct TlsFiles {
    dir: PathBuf,
}

impl TlsFiles {
    /// Makes a CA, one certificate every member serves and presents to its peers
    /// (127.0.0.1, server and client use), and a client certificate.
    fn make(dir: PathBuf) -> Result<Self, EtcdError> {
        const VALIDITY: Duration = Duration::from_secs(24 * 3600);
        std::fs::create_dir_all(&dir)?;
        let ca = FederationCa::generate("etcd.bench.test", "etcd test CA", VALIDITY)?;
        let loopback = [IpAddr::V4(Ipv4Addr::LOCALHOST)];
        let member = ca.issue("spiffe://etcd.bench.test/member", &loopback, &[], VALIDITY)?;
        let client = ca.issue("spiffe://etcd.bench.test/client", &[], &[], VALIDITY)?;
        std::fs::write(dir.join("ca.pem"), ca.cert_pem())?;
        for (name, issued) in [("member", &member), ("client", &client)] {
            std::fs::write(dir.join(format!("{name}.pem")), &issued.cert_pem)?;
            std::fs::write(dir.join(format!("{name}.key")), &issued.key_pem)?;
        }
        Ok(Self { dir })
    }

    fn path(&self, file: &str) -> String {
        self.dir.join(file).to_string_lossy().into_owned()
    }

    /// The members' TLS flags.
    fn flags(&self) -> Vec<String> {
        let (ca, cert, key) =
            (self.path("ca.pem"), self.path("member.pem"), self.path("member.key"));
        vec![
            format!("--cert-file={cert}"),
            format!("--key-file={key}"),
            format!("--trusted-ca-file={ca}"),
            "--client-cert-auth".into(),
            format!("--peer-cert-file={cert}"),
            format!("--peer-key-file={key}"),
            format!("--peer-trusted-ca-file={ca}"),
            "--peer-client-cert-auth".into(),
        ]
    }

    /// The client's settings, as an agent would give them.
    fn client_auth(&self) -> EtcdAuth {
        EtcdAuth {
            ca: Some(self.dir.join("ca.pem")),
            cert: Some(self.dir.join("client.pem")),
            key: Some(self.dir.join("client.key")),
            ..EtcdAuth::default()
        }
    }
}

/// The `etcd` binary: `$ETCD_BIN`, or Debian's `/usr/bin/etcd`.
#[must_use]
pub fn etcd_bin() -> PathBuf {
    std::env::var_os("ETCD_BIN").map_or_else(|| PathBuf::from("/usr/bin/etcd"), PathBuf::from)
}

/// One etcd member process and its addresses.
#[derive(Debug)]
pub struct EtcdMember {
    /// Member id in this harness (1-based), not etcd's own member id.
    pub id: u64,
    /// The `--name` of the member (`m1`, `m2`, …).
    pub name: String,
    /// Client URL (`http://127.0.0.1:PORT`, or `https://` with mTLS).
    pub client_url: String,
    /// Peer URL (`http://127.0.0.1:PORT`, or `https://` with mTLS).
    pub peer_url: String,
    /// Where `/metrics` is served: the client URL, or a plain-HTTP listener of its own
    /// with mTLS (`--listen-metrics-urls`).
    pub metrics_url: String,
    /// Data directory.
    pub data_dir: PathBuf,
    /// Where stdout and stderr go.
    pub log: PathBuf,
    /// etcd's own member id, learned from the member's status once it answered (it is
    /// kept in the data directory, so restarts do not change it).
    raft_id: OnceLock<u64>,
    child: Option<Child>,
}

impl EtcdMember {
    /// The process id, while running.
    #[must_use]
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Whether the process has been started and not killed.
    #[must_use]
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }
}

/// A cluster of etcd members in a temporary directory.
pub struct EtcdCluster {
    dir: tempfile::TempDir,
    /// `--initial-cluster` of every member.
    initial_cluster: String,
    /// `--initial-cluster-token`, unique per cluster so stray peers cannot join.
    token: String,
    members: BTreeMap<u64, EtcdMember>,
    /// Extra flags for every member ([`EtcdCluster::start_with_flags`]).
    flags: Vec<String>,
    /// The certificates, with [`EtcdTransport::MutualTls`].
    tls: Option<TlsFiles>,
}

impl std::fmt::Debug for EtcdCluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdCluster")
            .field("dir", &self.dir.path())
            .field("members", &self.members)
            .finish_non_exhaustive()
    }
}

// === impl EtcdCluster ===

impl EtcdCluster {
    /// Starts `size` members (ids 1..=`size`) forming a new cluster. Does not wait for
    /// them; see [`EtcdCluster::wait_healthy`].
    ///
    /// # Errors
    /// The directory could not be created or a process could not be spawned.
    pub fn start(size: u64) -> Result<Self, EtcdError> {
        Self::start_with_flags(size, &[])
    }

    /// Like [`EtcdCluster::start`], with `flags` added to every member's command line
    /// (e.g. `--snapshot-count 1000`).
    ///
    /// # Errors
    /// The directory could not be created or a process could not be spawned.
    pub fn start_with_flags(size: u64, flags: &[String]) -> Result<Self, EtcdError> {
        Self::start_with(size, flags, EtcdTransport::Plain)
    }

    /// Like [`EtcdCluster::start_with_flags`], with clients and peers reaching the members
    /// over `transport`.
    ///
    /// # Errors
    /// The directory or the certificates could not be made, or a process could not be
    /// spawned.
    pub fn start_with(
        size: u64,
        flags: &[String],
        transport: EtcdTransport,
    ) -> Result<Self, EtcdError> {
        let dir = tempfile::Builder::new().prefix("federator-etcd-").tempdir()?;
        let tls = match transport {
            EtcdTransport::Plain => None,
            EtcdTransport::MutualTls => Some(TlsFiles::make(dir.path().join("tls"))?),
        };
        let scheme = transport.scheme();
        let mut members = BTreeMap::new();
        for id in 1..=size {
            let data_dir = dir.path().join(format!("m{id}"));
            let client_url = format!("{scheme}://127.0.0.1:{}", free_port());
            let metrics_url = match transport {
                EtcdTransport::Plain => client_url.clone(),
                EtcdTransport::MutualTls => format!("http://127.0.0.1:{}", free_port()),
            };
            members.insert(
                id,
                EtcdMember {
                    id,
                    name: format!("m{id}"),
                    client_url,
                    peer_url: format!("{scheme}://127.0.0.1:{}", free_port()),
                    metrics_url,
                    log: dir.path().join(format!("m{id}.log")),
                    data_dir,
                    raft_id: OnceLock::new(),
                    child: None,
                },
            );
        }
        let initial_cluster = members
            .values()
            .map(|m| format!("{}={}", m.name, m.peer_url))
            .collect::<Vec<_>>()
            .join(",");
        let token = dir
            .path()
            .file_name()
            .map_or_else(|| "federator-etcd".into(), |n| n.to_string_lossy().into_owned());
        let mut cluster = Self { dir, initial_cluster, token, members, flags: flags.to_vec(), tls };
        for id in 1..=size {
            cluster.spawn(id)?;
        }
        Ok(cluster)
    }

    /// Root of the temporary directory.
    #[must_use]
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Ids of every member.
    #[must_use]
    pub fn ids(&self) -> Vec<u64> {
        self.members.keys().copied().collect()
    }

    /// Member `id`.
    ///
    /// # Errors
    /// No such member.
    pub fn member(&self, id: u64) -> Result<&EtcdMember, EtcdError> {
        self.members.get(&id).ok_or(EtcdError::NoSuchMember(id))
    }

    /// Client URLs of the members that are running.
    #[must_use]
    pub fn client_urls(&self) -> Vec<String> {
        self.members.values().filter(|m| m.is_running()).map(|m| m.client_url.clone()).collect()
    }

    /// A client of the given members (all running members when empty). Connecting is
    /// lazy: an unreachable member surfaces as a failing or hanging call, so callers
    /// bound their calls with a timeout.
    ///
    /// # Errors
    /// The URLs were refused by the client library.
    pub async fn client(&self, ids: &[u64]) -> Result<Client, EtcdError> {
        let urls: Vec<String> = if ids.is_empty() {
            self.client_urls()
        } else {
            ids.iter()
                .map(|id| self.member(*id).map(|m| m.client_url.clone()))
                .collect::<Result<_, _>>()?
        };
        let options = ConnectOptions::new().with_connect_timeout(STATUS_TIMEOUT);
        let Some(tls) = &self.tls else {
            return Ok(Client::connect(urls, Some(options)).await?);
        };
        match tls.client_auth().connect(options)? {
            EtcdConnect::Plain(options) => Ok(Client::connect(urls, Some(options)).await?),
            // The agent's TLS connection: etcd-client over Federator's rustls connector.
            EtcdConnect::Tls { config, options } => {
                let keep_alive = (Duration::from_secs(10), Duration::from_secs(5));
                Ok(connect_tls(&urls, config, options, STATUS_TIMEOUT, keep_alive).await?)
            }
        }
    }

    /// Status of member `id` as it reports it, if it answers within two seconds.
    pub async fn status(&self, id: u64) -> Option<StatusResponse> {
        let mut client = self.client(&[id]).await.ok()?;
        tokio::time::timeout(STATUS_TIMEOUT, client.status()).await.ok()?.ok()
    }

    /// Waits until every running member answers, all name the same leader, and that
    /// leader is a running member; returns the leader's id.
    ///
    /// # Errors
    /// A member exited, or no agreed leader within `timeout`.
    pub async fn wait_healthy(&mut self, timeout: Duration) -> Result<u64, EtcdError> {
        let deadline = Instant::now() + timeout;
        loop {
            self.check_running()?;
            let detail = match self.probe().await {
                Ok(leader) => return Ok(leader),
                Err(detail) => detail,
            };
            if Instant::now() > deadline {
                return Err(EtcdError::Unhealthy { after: timeout, detail: detail.to_string() });
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// One health probe: the agreed leader, or what is missing.
    async fn probe(&self) -> Result<u64, NotHealthy> {
        let running: Vec<u64> =
            self.members.values().filter(|m| m.is_running()).map(|m| m.id).collect();
        let mut leader = None;
        for id in running {
            let status = self.status(id).await.ok_or(NotHealthy::Silent(id))?;
            if let (Some(member), Some(header)) = (self.members.get(&id), status.header()) {
                let _ = member.raft_id.set(header.member_id());
            }
            match (leader, status.leader()) {
                (_, 0) => return Err(NotHealthy::NoLeader(id)),
                (None, l) => leader = Some(l),
                (Some(a), b) if a != b => return Err(NotHealthy::Disagree(a, b)),
                _ => {}
            }
        }
        let leader = leader.ok_or(NotHealthy::NoneRunning)?;
        self.members
            .values()
            .find(|m| m.is_running() && m.raft_id.get() == Some(&leader))
            .map(|m| m.id)
            .ok_or(NotHealthy::LeaderNotRunning(leader))
    }

    /// The id of the member that leads now, as the running members agree.
    pub async fn leader(&self) -> Option<u64> {
        self.probe().await.ok()
    }

    /// The highest raft term any running member reports.
    pub async fn term(&self) -> Option<u64> {
        let mut term = None;
        for member in self.members.values().filter(|m| m.is_running()) {
            if let Some(status) = self.status(member.id).await {
                term = term.max(Some(status.raft_term()));
            }
        }
        term
    }

    /// Fetches `/metrics` of member `id` (served on its client URL): the body, whatever
    /// the status.
    ///
    /// # Errors
    /// The member did not answer within five seconds.
    pub async fn metrics(&self, id: u64) -> Result<String, EtcdError> {
        let url = &self.member(id)?.metrics_url;
        crate::http::get(url, "/metrics", Duration::from_secs(5))
            .await
            .map(|response| response.body)
            .map_err(|source| EtcdError::Metrics { member: id, source })
    }

    /// SIGKILLs member `id` and reaps it.
    pub fn kill(&mut self, id: u64) {
        if let Some(mut child) = self.members.get_mut(&id).and_then(|m| m.child.take()) {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGKILLs every member at once (all signals sent before any is reaped).
    pub fn kill_all(&mut self) {
        let mut children: Vec<Child> =
            self.members.values_mut().filter_map(|m| m.child.take()).collect();
        for child in &mut children {
            let _ = child.kill();
        }
        for child in &mut children {
            let _ = child.wait();
        }
    }

    /// Restarts a killed member with the same ports and data directory.
    ///
    /// # Errors
    /// It is still running, or could not be spawned.
    pub fn restart(&mut self, id: u64) -> Result<(), EtcdError> {
        if self.member(id)?.is_running() {
            return Err(EtcdError::StillRunning(id));
        }
        self.spawn(id)
    }

    /// The log of member `id`, for failure messages.
    #[must_use]
    pub fn log_of(&self, id: u64) -> String {
        self.members.get(&id).and_then(|m| std::fs::read_to_string(&m.log).ok()).unwrap_or_default()
    }

    /// Fails if a member that should run has exited (it is reaped).
    fn check_running(&mut self) -> Result<(), EtcdError> {
        for member in self.members.values_mut() {
            let exited = match member.child.as_mut().map(Child::try_wait) {
                Some(Ok(Some(status))) => status,
                _ => continue,
            };
            member.child = None;
            let log = tail(&std::fs::read_to_string(&member.log).unwrap_or_default(), 30);
            return Err(EtcdError::Exited { member: member.id, status: exited, log });
        }
        Ok(())
    }

    fn spawn(&mut self, id: u64) -> Result<(), EtcdError> {
        let member = self.members.get_mut(&id).ok_or(EtcdError::NoSuchMember(id))?;
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&member.log)?;
        let bin = etcd_bin();
        let mut command = Command::new(&bin);
        command
            .arg("--name")
            .arg(&member.name)
            .arg("--data-dir")
            .arg(&member.data_dir)
            .args(["--listen-client-urls", &member.client_url])
            .args(["--advertise-client-urls", &member.client_url])
            .args(["--listen-peer-urls", &member.peer_url])
            .args(["--initial-advertise-peer-urls", &member.peer_url])
            .args(["--initial-cluster", &self.initial_cluster])
            .args(["--initial-cluster-token", &self.token])
            // Ignored once the data directory holds a member: restarts rejoin as before.
            .args(["--initial-cluster-state", "new"])
            .args(["--logger", "zap", "--log-outputs", "stderr"])
            .args(self.tls.iter().flat_map(TlsFiles::flags))
            .args(
                (member.metrics_url != member.client_url)
                    .then(|| format!("--listen-metrics-urls={}", member.metrics_url)),
            )
            .args(&self.flags)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        // Only the flags above configure it: no ETCD_* from the caller's environment.
        for (name, _) in std::env::vars_os() {
            if name.to_string_lossy().starts_with("ETCD_") {
                command.env_remove(name);
            }
        }
        let child =
            command.spawn().map_err(|source| EtcdError::Spawn { bin, member: id, source })?;
        member.child = Some(child);
        Ok(())
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        self.kill_all();
        if std::thread::panicking() {
            for id in self.members.keys() {
                eprintln!(
                    "--- etcd member {id} log (last 40 lines) ---\n{}",
                    tail(&self.log_of(*id), 40)
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn three_members_elect_a_leader_and_elect_another_after_it_is_killed() {
        if !etcd_bin().exists() {
            eprintln!("skipped: no etcd binary at {}", etcd_bin().display());
            return;
        }
        let mut etcd = EtcdCluster::start(3).expect("etcd starts");
        let leader = etcd.wait_healthy(Duration::from_secs(30)).await.expect("healthy");
        let metrics = etcd.metrics(leader).await.expect("metrics");
        assert!(metrics.contains("\netcd_server_leader_changes_seen_total 1\n"), "{metrics}");
        let mut client = etcd.client(&[]).await.expect("client");
        client.put("k", "v", None).await.expect("put");

        etcd.kill(leader);
        let next = etcd.wait_healthy(Duration::from_secs(30)).await.expect("healthy again");
        assert_ne!(next, leader);

        etcd.restart(leader).expect("restart");
        etcd.wait_healthy(Duration::from_secs(30)).await.expect("healthy with all three");
        let value =
            etcd.client(&[leader]).await.expect("client").get("k", None).await.expect("get");
        assert_eq!(value.kvs()[0].value(), b"v");
    }

    #[tokio::test]
    async fn with_mtls_members_answer_only_clients_that_present_a_certificate() {
        if !etcd_bin().exists() {
            eprintln!("skipped: no etcd binary at {}", etcd_bin().display());
            return;
        }
        let mut etcd =
            EtcdCluster::start_with(3, &[], EtcdTransport::MutualTls).expect("etcd starts");
        let leader = etcd.wait_healthy(Duration::from_secs(30)).await.expect("healthy");
        for member in etcd.members.values() {
            assert!(member.client_url.starts_with("https://127.0.0.1:"), "{member:?}");
            assert!(member.peer_url.starts_with("https://127.0.0.1:"), "{member:?}");
        }
        // Peers really demand certificates of each other: etcd says so when it starts.
        let log = etcd.log_of(leader);
        let peer_tls = log.lines().find(|l| l.contains("starting with peer TLS"));
        assert!(
            peer_tls.is_some_and(|l| l.contains("client-cert-auth = true")),
            "{}",
            tail(&log, 20)
        );
        let metrics = etcd.metrics(leader).await.expect("metrics over plain HTTP");
        assert!(metrics.contains("etcd_server_has_leader 1"), "{metrics}");
        let mut client = etcd.client(&[]).await.expect("client");
        client.put("k", "v", None).await.expect("put with the client certificate");

        // The same CA, no client certificate: the members refuse the calls.
        let tls = etcd.tls.as_ref().expect("TLS files");
        let anonymous = EtcdAuth { ca: Some(tls.dir.join("ca.pem")), ..EtcdAuth::default() };
        let EtcdConnect::Tls { config, options } =
            anonymous.connect(ConnectOptions::new()).expect("config")
        else {
            panic!("a CA makes the connection TLS");
        };
        let second = Duration::from_secs(1);
        let refused = match connect_tls(
            &[etcd.member(leader).expect("leader").client_url.clone()],
            config,
            options,
            second * 5,
            (second * 10, second * 5),
        )
        .await
        {
            Err(_) => true,
            Ok(mut client) => matches!(
                tokio::time::timeout(second * 5, client.put("k", "stolen", None)).await,
                Ok(Err(_)) | Err(_)
            ),
        };
        assert!(refused, "a client without a certificate wrote to the mTLS etcd");
        let value = client.get("k", None).await.expect("get");
        assert_eq!(value.kvs()[0].value(), b"v");
    }
}
