//! The agent's main loop.
//!
//! At start-up the agent removes the temporary files a killed predecessor left in its
//! directories, and serves the view it applied last (from its state directory) into
//! every sink before any replica answers. Then, for as long as it runs, it holds one
//! session with one replica at a time — moving to the next replica when a session ends,
//! at once for a first round over the replicas, then with jittered exponential backoff —
//! and in that session:
//! 1. joins (first run only) with the token and the cluster's own bundle;
//! 2. takes a member lease, or renews the one it holds first thing, and keeps it alive
//!    (keep-alives do not write to the log);
//! 3. publishes the own bundle when its source changes, and the exports its sources give
//!    (taking back those they no longer give);
//! 4. watches from the revision it applied, so a reconnect resumes without a resync;
//!    every checkpoint is applied to all sinks, saved, and then each foreign bundle
//!    sequence that every sink holds is acknowledged.
//!
//! Every call to the replica, and the connection itself, has a deadline derived from the
//! lease TTL ([`Deadlines`]): a replica that stops answering (SIGSTOPped, hung, cut off)
//! is left for the next one, where the lease is renewed, well before the TTL runs out.
//!
//! With `listen_metrics` set it serves Prometheus metrics (see [`super::metrics`]),
//! among them how long each change took from the replica to every sink.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, anyhow, bail};
use federator_proto::federation as pb;
use federator_proto::federation::federation_client::FederationClient;
use federator_proto::federation::watch_event::Event;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject as _;
use sha2::Digest as _;
use tokio::sync::watch;
use tokio::time::MissedTickBehavior;
use tonic::Code;
use tonic::transport::{Channel, Endpoint};

use super::config::AgentConfig;
use super::metrics::{AgentMetrics, ChangeKind, Propagation, import_sources};
use super::sinks::etcd::{DEFAULT_BUNDLE_PREFIX, DEFAULT_IMPORT_PREFIX, EtcdSink};
use super::sinks::files::FileSink;
use super::sinks::xds::XdsServer;
use super::sources::bundle::{BundleState, watch_bundle};
use super::status::{
    AgentStatus, FailoverStatus, LeaseStatus, PropagationStatus, SinkStatus, now_ms,
};
use super::store::{Membership, Published, Store};
use super::view::{AgentView, ExportSet, Sink};
use crate::bundle::{TrustBundle, ValidationPolicy, parse_spiffe_bundle};
use crate::identity::CertifiedIdentity;
use crate::service::{ServiceKey, export_to_proto, import_from_proto};
use crate::token::JoinToken;

/// How often sources are polled for changes.
const SOURCE_POLL: Duration = Duration::from_secs(1);
/// How often the status file is written.
const STATUS_PERIOD: Duration = Duration::from_secs(1);
/// Longest wait between connection attempts (less with a short lease TTL: see
/// [`Deadlines::max_backoff`]).
const MAX_BACKOFF: Duration = Duration::from_secs(10);
/// How long a connection attempt may take (less with a short lease TTL: see
/// [`Deadlines::connect`]).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// How long a join may take. Generous, unlike the other calls: its token is single-use,
/// so a join that commits after the agent gave up on it could not be tried again, and no
/// lease is held yet.
const JOIN_TIMEOUT: Duration = Duration::from_secs(30);
/// How often a failed sink is retried.
const SINK_RETRY: Duration = Duration::from_secs(2);
/// Most changes kept waiting for every sink to hold them (for the propagation metric);
/// beyond, while a sink keeps failing, further changes are not measured.
const MAX_PENDING_PROPAGATION: usize = 4096;

/// The deadlines of a session, all derived from the lease TTL `T`, so that the agent
/// notices an unresponsive replica and renews its lease through another one well within
/// the TTL (the shipped 10 s: pings after 1.25 s of silence, answered within 1.25 s;
/// keep-alives every 2 s; 2.5 s per call).
///
/// A replica that stops answering right after a renewal (stopped, hung, cut off) is
/// noticed within `T/4` by an unanswered HTTP/2 ping (sent `T/8` after its last frame,
/// given `T/8`). The agent then connects to the next replica at once (`T/4` at most) and
/// renews the lease there first (`T/4` at most): with a responsive next replica, renewed
/// about `T/4` after the last renewal, and by `3T/4` when each step takes its whole
/// deadline. A replica that still answers pings but not keep-alives is noticed by the
/// next keep-alive (sent `T/5` after the last one, given `T/4`), one that answers them
/// with errors at the second (`2T/5`). The lessor expires a lease only a full TTL after
/// the last keep-alive that reached the leader.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Deadlines {
    /// The lease TTL they derive from.
    ttl: Duration,
    /// Between keep-alives: `T/5`.
    keepalive_every: Duration,
    /// Of each call to the replica (keep-alive, acknowledgement, publication, export,
    /// grant, the watch's opening) and of each wait for the next message of a watch
    /// batch (events received, their checkpoint not yet): `T/4`. An idle watch stream
    /// carries nothing: the HTTP/2 pings and the keep-alives on the same connection
    /// vouch for it.
    call: Duration,
    /// An HTTP/2 ping goes out after this long without a frame from the replica: `T/8`.
    ping_interval: Duration,
    /// An unanswered ping closes the connection, and ends the session, after this long:
    /// `T/8`.
    ping_timeout: Duration,
    /// Of a connection attempt (TCP and TLS): `T/4`, at most [`CONNECT_TIMEOUT`].
    connect: Duration,
    /// Keep-alives answered with errors (the replica cannot reach the leader: an
    /// election, a partition) are retried on the same replica until the lease has gone
    /// this long unrenewed, then the agent moves on: `T/3`.
    unrenewed: Duration,
    /// Longest wait between connection attempts: `T/4`, at most [`MAX_BACKOFF`].
    max_backoff: Duration,
}

impl Deadlines {
    /// The deadlines for a lease of `ttl`.
    fn for_ttl(ttl: Duration) -> Self {
        Self {
            ttl,
            keepalive_every: ttl / 5,
            call: ttl / 4,
            ping_interval: ttl / 8,
            ping_timeout: ttl / 8,
            connect: (ttl / 4).min(CONNECT_TIMEOUT),
            unrenewed: ttl / 3,
            max_backoff: (ttl / 4).min(MAX_BACKOFF),
        }
    }
}

/// Why the agent leaves a replica that may still be running: the replica missed a
/// deadline, or cannot renew the lease. Either way the agent moves to the next replica
/// and renews the lease there first.
#[derive(Debug, thiserror::Error)]
enum ReplicaFault {
    /// A call, or the next message of a watch batch, got no answer in time.
    #[error("{call}: no answer within {} ms", deadline.as_millis())]
    MissedDeadline {
        /// What was waited for.
        call: &'static str,
        /// For how long.
        deadline: Duration,
    },
    /// Keep-alives through the replica have been answered with errors for too long.
    #[error(
        "keep-alives through this replica have not renewed the lease for {} ms: {last_error}",
        unrenewed.as_millis()
    )]
    NotRenewing {
        /// Since the last renewal.
        unrenewed: Duration,
        /// The last keep-alive's error.
        last_error: String,
    },
}

/// One call to the replica, bounded by `deadline`: the replica's answer, or
/// [`ReplicaFault::MissedDeadline`] when none came in time.
async fn bounded<T>(
    call: &'static str,
    deadline: Duration,
    request: impl Future<Output = Result<tonic::Response<T>, tonic::Status>>,
) -> Result<Result<T, tonic::Status>, ReplicaFault> {
    tokio::time::timeout(deadline, request)
        .await
        .map(|answer| answer.map(tonic::Response::into_inner))
        .map_err(|_| ReplicaFault::MissedDeadline { call, deadline })
}

/// Removes the temporary files atomic writes left in `what` (a killed agent's).
fn remove_leftovers(
    what: &str,
    dir: &std::path::Path,
    remove: impl FnOnce() -> std::io::Result<usize>,
) {
    match remove() {
        Ok(0) => tracing::debug!(dir = %dir.display(), "no temporary file left in the {what}"),
        Ok(removed) => tracing::info!(
            dir = %dir.display(),
            removed,
            "removed the temporary files an interrupted run left in the {what}"
        ),
        Err(error) => tracing::warn!(
            dir = %dir.display(),
            %error,
            "cannot remove the temporary files left in the {what}"
        ),
    }
}

/// Runs the agent until `shutdown` resolves.
///
/// # Errors
/// Start-up failed: the state directory, the SVID files, a sink that cannot start, or a
/// first run without a token.
pub async fn run(
    config: AgentConfig,
    shutdown: impl Future<Output = ()> + Send,
) -> anyhow::Result<()> {
    let store = Store::open(&config.file.state_dir)
        .with_context(|| format!("state_dir {}", config.file.state_dir.display()))?;
    // Before anything writes: a temporary file of a write in progress is never taken.
    remove_leftovers("state directory", store.dir(), || {
        super::store::remove_leftover_temporaries(store.dir())
    });
    let identity = config
        .start_identity(store.membership()?.as_ref().map(|m| m.trust_domain.as_str()), SOURCE_POLL)
        .await
        .context("svid")?;
    let membership = store.membership()?;
    let token = match (&membership, &config.token) {
        (Some(_), _) => None,
        (None, Some(text)) => Some(JoinToken::decode(text).context("join token")?),
        (None, None) => bail!(
            "this agent has not joined yet: give a join token (--token, FEDERATOR_JOIN_TOKEN \
             or token_file) from `federator token create`"
        ),
    };
    let trust_domain = membership
        .as_ref()
        .map(|m| m.trust_domain.clone())
        .or_else(|| token.as_ref().map(|t| t.trust_domain.clone()))
        .unwrap_or_default();

    let (stop_tx, stop_rx) = watch::channel(false);
    let stopped = move || {
        let mut rx = stop_rx.clone();
        async move {
            let _ = rx.wait_for(|s| *s).await;
        }
    };
    let mut sinks: Vec<Arc<dyn Sink>> = Vec::new();
    if let Some(files) = &config.file.sinks.files {
        let sink = FileSink::new(files.dir.clone());
        remove_leftovers("files sink", sink.dir(), || sink.remove_leftover_temporaries());
        sinks.push(Arc::new(sink));
    }
    if let Some(etcd) = &config.file.sinks.etcd {
        let sink = EtcdSink::connect(
            etcd.endpoints.clone(),
            etcd.bundle_prefix.clone().unwrap_or_else(|| DEFAULT_BUNDLE_PREFIX.into()),
            etcd.import_prefix.clone().unwrap_or_else(|| DEFAULT_IMPORT_PREFIX.into()),
        )
        .await
        .context("sinks.etcd")?;
        sinks.push(Arc::new(sink));
    }
    if let Some(xds) = &config.file.sinks.xds {
        let listener = tokio::net::TcpListener::bind(xds.listen)
            .await
            .with_context(|| format!("sinks.xds.listen {}", xds.listen))?;
        let server = XdsServer::new();
        sinks.push(Arc::new(server.sink()));
        let stop = stopped();
        tokio::spawn(async move {
            if let Err(error) = server.serve(listener, stop).await {
                tracing::error!(%error, "the xDS server failed");
            }
        });
    }
    let metrics = AgentMetrics::default();
    if let Some(addr) = config.file.listen_metrics {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("listen_metrics {addr}"))?;
        let registry = metrics.registry();
        let stop = stopped();
        tokio::spawn(async move {
            if let Err(error) = super::metrics::serve(listener, registry, stop).await {
                tracing::error!(%error, "the metrics server failed");
            }
        });
    }

    let bundle_rx = watch_bundle(config.file.bundle.clone(), trust_domain.clone(), SOURCE_POLL);
    let exports_rx = export_sources(&config, &trust_domain).await;
    let view = store.view()?.unwrap_or_default();
    let published = store.published()?;
    let mut agent = Agent {
        config,
        store,
        identity,
        sinks,
        membership,
        token,
        view,
        published,
        status: AgentStatus { pid: std::process::id(), ..AgentStatus::default() },
        lease: None,
        sinks_dirty: true,
        unwritten_trust_domains: None,
        metrics,
        batch_changes: Vec::new(),
        pending_changes: Vec::new(),
    };
    if let Some(m) = &agent.membership {
        agent.status.cluster.clone_from(&m.cluster);
        agent.status.trust_domain.clone_from(&m.trust_domain);
    }
    // The saved view is what is served until a replica answers: the status says so.
    agent.status.applied_revision = agent.view.revision;
    agent.status.received_revision = agent.view.revision;
    agent.status.bundles =
        agent.view.bundles.iter().map(|(td, b)| (td.clone(), b.sequence)).collect();
    agent.status.imports = agent.view.imports.len();
    // Static stability: serve what was applied before, before asking anyone.
    agent.apply_sinks().await;
    agent.write_status();

    tokio::pin!(shutdown);
    let result = tokio::select! {
        () = &mut shutdown => Ok(()),
        result = agent.run_sessions(bundle_rx, exports_rx) => result,
    };
    let _ = stop_tx.send(true);
    agent.status.connected_replica = None;
    agent.write_status();
    result
}

/// Merges the configured export sources into one receiver (empty when none is set).
async fn export_sources(config: &AgentConfig, trust_domain: &str) -> watch::Receiver<ExportSet> {
    let mut inputs = Vec::new();
    if let Some(prefix) = &config.file.exports.etcd_prefix {
        inputs.push(
            super::sources::etcd_exports::watch_etcd_exports(
                config.file.exports.etcd_endpoints.clone(),
                prefix.clone(),
                trust_domain.to_string(),
            )
            .await,
        );
    }
    if let Some(path) = &config.file.exports.file {
        inputs.push(super::sources::file_exports::watch_export_file(
            path.clone(),
            trust_domain.to_string(),
            SOURCE_POLL,
        ));
    }
    let (tx, rx) = watch::channel(ExportSet::default());
    if inputs.is_empty() {
        // Keep the sender alive so that the receiver never reports a closed channel.
        tokio::spawn(async move { tx.closed().await });
        return rx;
    }
    tokio::spawn(async move {
        loop {
            let merged =
                merge_export_sets(inputs.iter_mut().map(|r| r.borrow_and_update().clone()));
            if tx.send(merged).is_err() {
                return;
            }
            let changes = inputs.iter_mut().map(|r| Box::pin(r.changed()));
            let (changed, _, _) = futures::future::select_all(changes).await;
            if changed.is_err() {
                return;
            }
        }
    });
    rx
}

/// Merges export sets; the first source wins a service both name (the other is reported).
fn merge_export_sets(sets: impl Iterator<Item = ExportSet>) -> ExportSet {
    let mut merged = ExportSet::default();
    for set in sets {
        merged.problems.extend(set.problems);
        for (key, export) in set.exports {
            match merged.exports.entry(key) {
                std::collections::btree_map::Entry::Occupied(taken) => {
                    merged.problems.push(super::view::SourceProblem {
                        location: taken.key().to_string(),
                        message: "exported by two sources; the first one (etcd) wins".into(),
                    });
                }
                std::collections::btree_map::Entry::Vacant(free) => {
                    free.insert(export);
                }
            }
        }
    }
    merged
}

/// A held member lease.
#[derive(Clone, Copy, Debug)]
struct HeldLease {
    id: u64,
    ttl_secs: u32,
    /// When it was last granted or renewed.
    renewed: Instant,
}

/// What a keep-alive came to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Renewal {
    /// The lease lives a TTL more.
    Renewed,
    /// The lessor says the lease is not live (expired, revoked, replaced): none is held
    /// any more, a new one must be granted.
    Lost,
    /// The replica answered with an error: the lease is still held, and may well be
    /// live; retried at the next tick.
    Failed,
}

/// What woke a session up.
enum Wake {
    /// The watch stream's next message (`None`: it ended).
    Message(Result<Option<pb::WatchEvent>, tonic::Status>),
    /// A watch batch got no next message within its deadline.
    BatchStalled,
    /// The own bundle source changed (`false`: it stopped).
    Bundle(bool),
    /// The export sources changed (`false`: they stopped).
    Exports(bool),
    /// Time for a keep-alive.
    KeepAlive,
    /// Time to retry the sinks that failed.
    SinkRetry,
    /// Time to write the status file.
    Status,
}

/// The agent's working state.
struct Agent {
    config: AgentConfig,
    store: Store,
    identity: Arc<CertifiedIdentity>,
    sinks: Vec<Arc<dyn Sink>>,
    membership: Option<Membership>,
    token: Option<JoinToken>,
    /// The applied view (saved, in every healthy sink).
    view: AgentView,
    published: Published,
    status: AgentStatus,
    lease: Option<HeldLease>,
    /// Some sink has not applied `view` yet.
    sinks_dirty: bool,
    /// When the only failures of the last apply were some trust domains' bundles (the
    /// rest of the view was applied everywhere): those trust domains. Every other bundle
    /// is acknowledged all the same, so one bad trust domain never stalls the others'
    /// rotations.
    unwritten_trust_domains: Option<std::collections::BTreeSet<String>>,
    metrics: AgentMetrics,
    /// Changes received in the batch being worked on (up to the next checkpoint).
    batch_changes: Vec<Propagation>,
    /// Changes committed that not every sink holds yet.
    pending_changes: Vec<Propagation>,
}

/// How a session ended without an error.
enum SessionEnd {
    /// The watch stream ended; reconnect.
    StreamEnded,
    /// The agent's SVID changed: reconnect to present the new one.
    IdentityChanged,
}

impl Agent {
    /// Replica addresses to try, in order.
    fn endpoints(&self) -> Vec<String> {
        if !self.config.file.endpoints.is_empty() {
            return self.config.file.endpoints.clone();
        }
        self.membership
            .as_ref()
            .map(|m| m.endpoints.clone())
            .or_else(|| self.token.as_ref().map(|t| t.endpoints.clone()))
            .unwrap_or_default()
    }

    /// The deadlines of the lease held, or of the TTL the agent asks for.
    fn deadlines(&self) -> Deadlines {
        Deadlines::for_ttl(
            self.lease
                .map_or(self.config.lease_ttl, |l| Duration::from_secs(u64::from(l.ttl_secs))),
        )
    }

    fn federation_ca_pem(&self) -> anyhow::Result<String> {
        if let Some(path) = &self.config.file.federation_ca {
            return std::fs::read_to_string(path)
                .with_context(|| format!("federation_ca {}", path.display()));
        }
        self.membership
            .as_ref()
            .map(|m| m.federation_ca_pem.clone())
            .or_else(|| self.token.as_ref().map(|t| t.federation_ca_pem.clone()))
            .ok_or_else(|| anyhow!("no federation CA: set federation_ca or join with a token"))
    }

    /// Sessions, one replica at a time, forever. When a session ends the agent moves to
    /// the next replica of [`Agent::endpoints`]: at once while fewer failures in a row
    /// than there are replicas (a failover must not cost the lease), then with jittered
    /// exponential backoff up to [`Deadlines::max_backoff`].
    async fn run_sessions(
        &mut self,
        mut bundle_rx: watch::Receiver<BundleState>,
        mut exports_rx: watch::Receiver<ExportSet>,
    ) -> anyhow::Result<()> {
        let mut failures: u32 = 0;
        let mut next = 0usize;
        loop {
            let endpoints = self.endpoints();
            if endpoints.is_empty() {
                bail!("no federation endpoints: set `endpoints` in the config");
            }
            let addr = endpoints[next % endpoints.len()].clone();
            let started = Instant::now();
            let outcome = self.session(&addr, &mut bundle_rx, &mut exports_rx).await;
            let was_connected = self.status.connected_replica.is_some();
            self.status.connected_replica = None;
            self.status.connected_since_ms = None;
            let deadlines = self.deadlines();
            if was_connected && started.elapsed() >= deadlines.ttl {
                // A session that lasted a TTL was a good one: failures count anew.
                failures = 0;
            }
            let reason = match outcome {
                Ok(SessionEnd::StreamEnded) => {
                    tracing::info!(replica = %addr, "watch ended; reconnecting");
                    failures = 0;
                    "the replica ended the watch stream".to_string()
                }
                Ok(SessionEnd::IdentityChanged) => {
                    tracing::info!(replica = %addr, "the agent's SVID changed; reconnecting");
                    self.write_status();
                    // Same replica, at once: nothing failed.
                    continue;
                }
                Err(error) => {
                    let reason = format!("{error:#}");
                    tracing::warn!(replica = %addr, error = %reason, "session failed");
                    self.status.last_error = Some(format!("{addr}: {reason}"));
                    self.metrics.session_failures.inc();
                    failures = failures.saturating_add(1);
                    reason
                }
            };
            if was_connected {
                tracing::info!(replica = %addr, %reason, "left the replica; moving to the next one");
                self.status.failovers += 1;
                self.metrics.failovers.inc();
                self.status.last_failover = Some(FailoverStatus {
                    from: addr.clone(),
                    reason,
                    at_ms: now_ms(),
                    to: None,
                    connected_at_ms: None,
                });
            }
            self.write_status();
            next += 1;
            let round = u32::try_from(endpoints.len()).unwrap_or(u32::MAX);
            let wait = if failures < round {
                backoff(0, deadlines.max_backoff)
            } else {
                backoff(failures - round + 1, deadlines.max_backoff)
            };
            tokio::time::sleep(wait).await;
        }
    }

    /// A client of the replica at `addr`, connected within [`Deadlines::connect`], whose
    /// connection closes when the replica leaves an HTTP/2 ping unanswered.
    async fn connect(
        &self,
        addr: &str,
        deadlines: &Deadlines,
    ) -> anyhow::Result<FederationClient<Channel>> {
        let ca_pem = self.federation_ca_pem()?;
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
            roots.add(cert.context("federation CA")?).context("federation CA")?;
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_client_cert_resolver(self.identity.clone());
        tls.alpn_protocols = vec![b"h2".to_vec()];
        let endpoint = Endpoint::from_shared(format!("https://{addr}"))?
            .connect_timeout(deadlines.connect)
            .tcp_nodelay(true)
            .http2_keep_alive_interval(deadlines.ping_interval)
            .keep_alive_timeout(deadlines.ping_timeout)
            .keep_alive_while_idle(true);
        let connecting =
            endpoint.connect_with_connector(federator_raft::tls::connector(Arc::new(tls)));
        // The HTTP/2 handshake too: the connect timeout covers TCP and TLS.
        let channel = tokio::time::timeout(deadlines.connect, connecting)
            .await
            .map_err(|_| ReplicaFault::MissedDeadline {
                call: "connect",
                deadline: deadlines.connect,
            })
            .with_context(|| format!("connect to {addr}"))?
            .with_context(|| format!("connect to {addr}"))?;
        Ok(FederationClient::new(channel).max_decoding_message_size(64 << 20))
    }

    /// One session with the replica at `addr`.
    async fn session(
        &mut self,
        addr: &str,
        bundle_rx: &mut watch::Receiver<BundleState>,
        exports_rx: &mut watch::Receiver<ExportSet>,
    ) -> anyhow::Result<SessionEnd> {
        let identity = self.identity.current();
        let deadlines = self.deadlines();
        let mut client = self.connect(addr, &deadlines).await?;
        if self.membership.is_none() {
            self.join(&mut client, bundle_rx).await?;
        }
        self.status.connections += 1;
        self.metrics.connections.inc();
        self.status.connected_replica = Some(addr.to_string());
        let now = now_ms();
        self.status.connected_since_ms = Some(now);
        self.status.last_error = None;
        if let Some(failover) = &mut self.status.last_failover
            && failover.to.is_none()
        {
            failover.to = Some(addr.to_string());
            failover.connected_at_ms = Some(now);
        }
        tracing::info!(replica = %addr, revision = self.view.revision, "connected");
        // The lease first: after a failover it is what is at stake (the replica left may
        // have held up the last keep-alives). A lease found lost is granted below, after
        // the exports.
        if self.lease.is_some() {
            self.keep_alive(&mut client, &deadlines).await?;
        }
        self.write_status();

        self.publish_bundle(&mut client, &bundle_rx.borrow_and_update().clone()).await?;
        // Exports before the lease: a restarted agent's lease makes the exports the
        // federation still holds from before ready again, so they must be current first
        // (an endpoint that was ready before the crash may not be yet).
        self.sync_exports(&mut client, &exports_rx.borrow_and_update().clone()).await?;
        if self.lease.is_none() {
            self.grant_lease(&mut client).await?;
        }

        let watch = client.watch(pb::WatchRequest { after_revision: self.view.revision });
        let mut stream = bounded("watch", deadlines.call, watch).await?.context("watch")?;
        let mut working = self.view.clone();
        self.batch_changes.clear();
        let deadlines = self.deadlines();
        let mut keepalive = tokio::time::interval_at(
            tokio::time::Instant::now() + deadlines.keepalive_every,
            deadlines.keepalive_every,
        );
        keepalive.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut status_tick = tokio::time::interval(STATUS_PERIOD);
        let mut sink_retry = tokio::time::interval(SINK_RETRY);
        // While a watch batch is open (events received, their checkpoint not yet): how
        // long the session has waited for the replica's next message, its own work left
        // out.
        let mut batch_waited: Option<Duration> = None;
        loop {
            let waiting = Instant::now();
            let stall = batch_waited.map(|waited| deadlines.call.saturating_sub(waited));
            let wake = tokio::select! {
                message = stream.message() => Wake::Message(message),
                () = tokio::time::sleep(stall.unwrap_or_default()), if stall.is_some() => {
                    Wake::BatchStalled
                }
                changed = bundle_rx.changed() => Wake::Bundle(changed.is_ok()),
                changed = exports_rx.changed() => Wake::Exports(changed.is_ok()),
                _ = keepalive.tick() => Wake::KeepAlive,
                _ = sink_retry.tick() => Wake::SinkRetry,
                _ = status_tick.tick() => Wake::Status,
            };
            batch_waited = batch_waited.map(|waited| waited + waiting.elapsed());
            match wake {
                Wake::Message(message) => {
                    // A connection closed for an unanswered HTTP/2 ping ends here too.
                    let Some(event) = message.map_err(|status| {
                        anyhow!("the watch stream broke: {:?}: {}", status.code(), status.message())
                    })?
                    else {
                        return Ok(SessionEnd::StreamEnded);
                    };
                    let closes_batch =
                        matches!(event.event, Some(Event::Checkpoint(_) | Event::SnapshotEnd(_)));
                    self.on_event(&mut client, &mut working, event).await?;
                    batch_waited = (!closes_batch).then_some(Duration::ZERO);
                }
                Wake::BatchStalled => {
                    return Err(ReplicaFault::MissedDeadline {
                        call: "the watch batch's next message",
                        deadline: deadlines.call,
                    }
                    .into());
                }
                Wake::Bundle(true) => {
                    let state = bundle_rx.borrow_and_update().clone();
                    self.publish_bundle(&mut client, &state).await?;
                }
                Wake::Exports(true) => {
                    let set = exports_rx.borrow_and_update().clone();
                    self.sync_exports(&mut client, &set).await?;
                }
                Wake::Bundle(false) | Wake::Exports(false) => {}
                Wake::KeepAlive => {
                    if self.keep_alive(&mut client, &deadlines).await? == Renewal::Lost {
                        self.grant_lease(&mut client).await?;
                    }
                }
                Wake::SinkRetry => {
                    if self.sinks_dirty {
                        self.apply_sinks().await;
                        self.acknowledge(&mut client).await?;
                    }
                }
                Wake::Status => {
                    self.write_status();
                    if !Arc::ptr_eq(&identity, &self.identity.current()) {
                        return Ok(SessionEnd::IdentityChanged);
                    }
                }
            }
            self.metrics.mirror(&self.status);
        }
    }

    async fn join(
        &mut self,
        client: &mut FederationClient<Channel>,
        bundle_rx: &mut watch::Receiver<BundleState>,
    ) -> anyhow::Result<()> {
        let token = self.token.clone().ok_or_else(|| anyhow!("no join token"))?;
        let bundle = wait_for_bundle(bundle_rx).await?;
        let request = client.join(pb::JoinRequest {
            token: token.encode(),
            bundle: Some(pb::TrustBundle {
                trust_domain: token.trust_domain.clone(),
                spiffe_bundle_json: bundle.to_spiffe_json(),
                sequence: bundle.sequence,
            }),
        });
        let response = bounded("join", JOIN_TIMEOUT, request).await?.context("join")?;
        let membership = Membership {
            cluster: response.cluster,
            trust_domain: response.trust_domain,
            agent_id: response.agent_id,
            endpoints: token.endpoints.clone(),
            federation_ca_pem: token.federation_ca_pem.clone(),
            joined_at: now_ms() / 1000,
        };
        self.store.save_membership(&membership)?;
        self.published.bundle_digest = Some(authorities_digest(&bundle));
        self.published.bundle_sequence = Some(bundle.sequence);
        self.store.save_published(&self.published)?;
        tracing::info!(cluster = %membership.cluster, trust_domain = %membership.trust_domain, "joined the federation");
        self.status.cluster.clone_from(&membership.cluster);
        self.status.trust_domain.clone_from(&membership.trust_domain);
        self.membership = Some(membership);
        self.token = None;
        Ok(())
    }

    async fn grant_lease(&mut self, client: &mut FederationClient<Channel>) -> anyhow::Result<()> {
        let lease = &self.config.file.lease;
        let request = client.grant_lease(pb::GrantLeaseRequest {
            ttl_seconds: u32::try_from(self.config.lease_ttl.as_secs()).unwrap_or(10),
            region: lease.region.clone(),
            zone: lease.zone.clone(),
        });
        let granted =
            bounded("grant lease", self.deadlines().call, request).await?.context("grant lease")?;
        tracing::info!(lease_id = granted.lease_id, ttl = granted.ttl_seconds, "lease granted");
        self.lease = Some(HeldLease {
            id: granted.lease_id,
            ttl_secs: granted.ttl_seconds,
            renewed: Instant::now(),
        });
        self.status.lease = Some(LeaseStatus {
            id: granted.lease_id,
            ttl_seconds: granted.ttl_seconds,
            last_keepalive_ms: Some(now_ms()),
            failed_keepalives: 0,
        });
        Ok(())
    }

    /// One keep-alive of the held lease through the replica, within
    /// [`Deadlines::call`].
    ///
    /// Only the lessor's answer that the lease is not live loses it. A keep-alive that
    /// got no answer in time (a slow or stopped replica), or an error (the replica cannot
    /// reach the leader: an election, a partition), says nothing about the lease: it is
    /// kept, to be renewed at the next tick or through the next replica.
    ///
    /// # Errors
    /// The replica missed the deadline, or keep-alives through it have been failing for
    /// [`Deadlines::unrenewed`]: the session must end, for the next replica to renew it.
    async fn keep_alive(
        &mut self,
        client: &mut FederationClient<Channel>,
        deadlines: &Deadlines,
    ) -> Result<Renewal, ReplicaFault> {
        let Some(lease) = self.lease else { return Ok(Renewal::Lost) };
        let request = client.keep_alive(pb::KeepAliveRequest { lease_id: lease.id });
        let error = match bounded("keep-alive", deadlines.call, request).await {
            Ok(Ok(_)) => {
                self.lease = Some(HeldLease { renewed: Instant::now(), ..lease });
                if let Some(status) = &mut self.status.lease {
                    status.last_keepalive_ms = Some(now_ms());
                    status.failed_keepalives = 0;
                }
                return Ok(Renewal::Renewed);
            }
            Ok(Err(status)) if status.code() == Code::NotFound => {
                tracing::warn!(
                    lease_id = lease.id,
                    reason = status.message(),
                    "lease lost; granting a new one"
                );
                self.lease = None;
                return Ok(Renewal::Lost);
            }
            Ok(Err(status)) => format!("{:?}: {}", status.code(), status.message()),
            Err(fault) => {
                self.keep_alive_failed();
                tracing::warn!(lease_id = lease.id, %fault, "keep-alive missed its deadline");
                return Err(fault);
            }
        };
        self.keep_alive_failed();
        let unrenewed = lease.renewed.elapsed();
        if unrenewed >= deadlines.unrenewed {
            return Err(ReplicaFault::NotRenewing { unrenewed, last_error: error });
        }
        tracing::debug!(%error, "keep-alive failed; retried at the next tick");
        Ok(Renewal::Failed)
    }

    /// Counts a keep-alive that renewed nothing.
    fn keep_alive_failed(&mut self) {
        if let Some(lease) = &mut self.status.lease {
            lease.failed_keepalives += 1;
        }
        self.metrics.keepalive_failures.inc();
    }

    async fn publish_bundle(
        &mut self,
        client: &mut FederationClient<Channel>,
        state: &BundleState,
    ) -> anyhow::Result<()> {
        self.status.bundle.problem.clone_from(&state.problem);
        let Some(bundle) = &state.bundle else { return Ok(()) };
        self.status.bundle.sequence = Some(bundle.sequence);
        if self.view.own_bundle.as_ref() != Some(bundle) {
            self.view.own_bundle = Some(bundle.clone());
            self.sinks_dirty = true;
            // Nothing of the new view is known to be written until it is applied.
            self.unwritten_trust_domains = None;
        }
        let digest = authorities_digest(bundle);
        if self.published.bundle_digest.as_deref() == Some(digest.as_str()) {
            // The federation holds these authorities at the sequence it accepted then.
            self.status.bundle.published_sequence =
                self.published.bundle_sequence.or(Some(bundle.sequence));
            return Ok(());
        }
        let request = pb::PublishBundleRequest {
            bundle: Some(pb::TrustBundle {
                trust_domain: bundle.trust_domain.clone(),
                spiffe_bundle_json: bundle.to_spiffe_json(),
                sequence: bundle.sequence,
            }),
            force: false,
        };
        let mut accepted = bundle.sequence;
        let deadline = self.deadlines().call;
        match bounded("publish bundle", deadline, client.publish_bundle(request)).await? {
            Ok(response) => {
                accepted = response.sequence;
                tracing::info!(sequence = accepted, "bundle published");
            }
            // Already there (a restart after publishing): the federation has it.
            Err(status)
                if status.code() == Code::InvalidArgument
                    && status.message().contains("not greater than the stored sequence") =>
            {
                tracing::debug!("bundle already published");
            }
            Err(status) if status.code() == Code::InvalidArgument => {
                // The source gives a bundle the federation refuses: report, keep going.
                self.status.bundle.problem = Some(super::view::SourceProblem {
                    location: "bundle".into(),
                    message: format!("the federation refused it: {}", status.message()),
                });
                return Ok(());
            }
            Err(status) => return Err(anyhow!(status).context("publish bundle")),
        }
        self.published.bundle_digest = Some(digest);
        self.published.bundle_sequence = Some(accepted);
        self.status.bundle.published_sequence = Some(accepted);
        self.store.save_published(&self.published)?;
        Ok(())
    }

    async fn sync_exports(
        &mut self,
        client: &mut FederationClient<Channel>,
        set: &ExportSet,
    ) -> anyhow::Result<()> {
        self.status.exports.exports = set.exports.len();
        self.status.exports.problems.clone_from(&set.problems);
        for (key, export) in &set.exports {
            let digest = export_digest(export);
            let name = key.to_string();
            if self.published.exports.get(&name) == Some(&digest) {
                continue;
            }
            let request = pb::ExportServiceRequest { export: Some(export_to_proto(export)) };
            let deadline = self.deadlines().call;
            match bounded("export", deadline, client.export_service(request)).await? {
                Ok(_) => {
                    tracing::info!(service = %name, "exported");
                    self.published.exports.insert(name, digest);
                }
                Err(status)
                    if matches!(status.code(), Code::InvalidArgument | Code::PermissionDenied) =>
                {
                    tracing::warn!(service = %name, error = %status.message(), "export refused");
                    self.status.exports.problems.push(super::view::SourceProblem {
                        location: name,
                        message: format!("the federation refused it: {}", status.message()),
                    });
                }
                Err(status) => return Err(anyhow!(status).context("export")),
            }
        }
        // A source that cannot be read (etcd down, the file missing) says nothing about
        // what is exported: withdraw nothing until every source reads again.
        let sources_down: Vec<&str> = set
            .problems
            .iter()
            .filter(|p| self.is_source_location(&p.location))
            .map(|p| p.location.as_str())
            .collect();
        if !sources_down.is_empty() {
            tracing::debug!(?sources_down, "an export source is unreadable; withdrawing nothing");
            self.status.exports.published = self.published.exports.len();
            return Ok(());
        }
        let gone: Vec<String> = self
            .published
            .exports
            .keys()
            .filter(|name| !ServiceKey::parse(name).is_ok_and(|k| set.exports.contains_key(&k)))
            .cloned()
            .collect();
        for name in gone {
            let Ok(key) = ServiceKey::parse(&name) else {
                self.published.exports.remove(&name);
                continue;
            };
            let request = pb::UnexportServiceRequest { namespace: key.namespace, name: key.name };
            let deadline = self.deadlines().call;
            match bounded("unexport", deadline, client.unexport_service(request)).await? {
                Ok(_) => {}
                // Already gone (the federation removed it, or an earlier try did).
                Err(status) if status.code() == Code::NotFound => {}
                Err(status) => return Err(anyhow!(status).context("unexport")),
            }
            tracing::info!(service = %name, "unexported");
            self.published.exports.remove(&name);
        }
        self.status.exports.published = self.published.exports.len();
        self.store.save_published(&self.published)?;
        Ok(())
    }

    /// Whether a problem's location is a whole export source (not one document of it).
    fn is_source_location(&self, location: &str) -> bool {
        let exports = &self.config.file.exports;
        exports.etcd_prefix.as_deref() == Some(location)
            || exports.file.as_ref().is_some_and(|f| f.as_os_str() == location)
    }

    /// Applies one watch event to the working view; a checkpoint makes it the view.
    async fn on_event(
        &mut self,
        client: &mut FederationClient<Channel>,
        working: &mut AgentView,
        event: pb::WatchEvent,
    ) -> anyhow::Result<()> {
        let revision = event.revision;
        let applied_at_ms = event.applied_at_ms;
        self.status.received_revision = self.status.received_revision.max(revision);
        let own_td = self.membership.as_ref().map(|m| m.trust_domain.clone()).unwrap_or_default();
        match event.event {
            Some(Event::BundlePut(b)) if b.trust_domain != own_td => {
                match parse_spiffe_bundle(
                    &b.trust_domain,
                    b.spiffe_bundle_json.as_bytes(),
                    &ValidationPolicy::at(now_ms() / 1000),
                ) {
                    Ok(bundle) => {
                        // An unchanged re-put (same sequence and content) propagates nothing.
                        if working.bundles.get(&b.trust_domain) != Some(&bundle) {
                            self.note_change(ChangeKind::Bundle, &b.trust_domain, applied_at_ms);
                        }
                        working.bundles.insert(b.trust_domain, bundle);
                    }
                    Err(error) => tracing::warn!(
                        trust_domain = %b.trust_domain,
                        %error,
                        "a federated bundle does not validate here; keeping the last good one"
                    ),
                }
            }
            // The own bundle comes from the cluster's own source, not from the federation.
            Some(Event::BundlePut(_)) => {}
            Some(Event::BundleRemoved(b)) => {
                let removed = working.bundles.remove(&b.trust_domain);
                if removed.is_some() {
                    self.note_change(ChangeKind::Bundle, &b.trust_domain, applied_at_ms);
                }
            }
            Some(Event::ImportPut(i)) => match import_from_proto(i, revision) {
                Ok(import) => {
                    for td in import_sources(working.imports.get(&import.key), Some(&import)) {
                        self.note_change(ChangeKind::Import, &td, applied_at_ms);
                    }
                    working.imports.insert(import.key.clone(), import);
                }
                Err(error) => tracing::warn!(%error, "an import does not parse; skipped"),
            },
            Some(Event::ImportRemoved(i)) => {
                let old = working.imports.remove(&ServiceKey::new(i.namespace, i.name));
                for td in import_sources(old.as_ref(), None) {
                    self.note_change(ChangeKind::Import, &td, applied_at_ms);
                }
            }
            Some(Event::Resync(_)) => {
                tracing::warn!(revision, "the federation asked for a full resync");
                self.status.resyncs += 1;
                self.metrics.resyncs.inc();
                working.bundles.clear();
                working.imports.clear();
            }
            Some(Event::SnapshotEnd(_) | Event::Checkpoint(_)) => {
                working.revision = revision;
                self.commit(client, working).await?;
            }
            None => {}
        }
        Ok(())
    }

    /// Remembers a change of the working batch, to measure its propagation once every
    /// sink holds it; changes the replica cannot date (`applied_at_ms` 0) are skipped.
    fn note_change(&mut self, kind: ChangeKind, source_trust_domain: &str, applied_at_ms: i64) {
        if applied_at_ms <= 0 {
            return;
        }
        self.batch_changes.push(Propagation {
            kind,
            source_trust_domain: source_trust_domain.to_string(),
            applied_at_ms,
        });
    }

    /// Makes `working` the applied view: saved, written to every sink, acknowledged.
    async fn commit(
        &mut self,
        client: &mut FederationClient<Channel>,
        working: &AgentView,
    ) -> anyhow::Result<()> {
        let own_bundle = self.view.own_bundle.clone();
        let membership = self.membership.clone();
        self.view = working.clone();
        self.view.own_bundle = own_bundle;
        if let Some(m) = &membership {
            self.view.cluster.clone_from(&m.cluster);
            self.view.trust_domain.clone_from(&m.trust_domain);
        }
        self.store.save_view(&self.view)?;
        self.status.applied_revision = self.view.revision;
        self.status.bundles =
            self.view.bundles.iter().map(|(td, b)| (td.clone(), b.sequence)).collect();
        self.status.imports = self.view.imports.len();
        let room = MAX_PENDING_PROPAGATION.saturating_sub(self.pending_changes.len());
        let batch = std::mem::take(&mut self.batch_changes);
        self.pending_changes.extend(batch.into_iter().take(room));
        self.sinks_dirty = true;
        // Nothing of the new view is known to be written until it is applied.
        self.unwritten_trust_domains = None;
        self.apply_sinks().await;
        self.acknowledge(client).await?;
        Ok(())
    }

    /// Writes the view to every sink; records each one's health.
    async fn apply_sinks(&mut self) {
        let mut all_ok = true;
        let mut unwritten = Some(std::collections::BTreeSet::new());
        for sink in &self.sinks {
            let result = sink.apply(&self.view).await;
            self.metrics.sink_applied(sink.name(), result.is_ok());
            let entry = self.status.sinks.entry(sink.name().to_string()).or_default();
            match result {
                Ok(()) => {
                    *entry = SinkStatus {
                        healthy: true,
                        applied_revision: self.view.revision,
                        error: None,
                    };
                }
                Err(error) => {
                    all_ok = false;
                    if error.trust_domains.is_empty() {
                        unwritten = None;
                    } else if let Some(unwritten) = &mut unwritten {
                        unwritten.extend(error.trust_domains.iter().cloned());
                    }
                    tracing::warn!(sink = sink.name(), %error, "sink failed; will retry");
                    entry.healthy = false;
                    entry.error = Some(error.to_string());
                }
            }
        }
        self.sinks_dirty = !all_ok;
        self.unwritten_trust_domains = if all_ok { None } else { unwritten };
        if all_ok {
            self.observe_propagation();
        }
        self.metrics.mirror(&self.status);
    }

    /// Every sink holds the view: the committed changes have propagated.
    fn observe_propagation(&mut self) {
        let now = now_ms();
        for change in std::mem::take(&mut self.pending_changes) {
            let seconds = self.metrics.observe_propagation(&change, now);
            tracing::debug!(
                kind = change.kind.as_str(),
                source_trust_domain = %change.source_trust_domain,
                seconds,
                "propagated"
            );
            self.status.last_propagation = Some(PropagationStatus {
                kind: change.kind.as_str().to_string(),
                source_trust_domain: change.source_trust_domain,
                millis: now.saturating_sub(change.applied_at_ms).max(0),
                at_ms: now,
            });
        }
    }

    /// Acknowledges every federated bundle sequence that every sink holds; one the
    /// replica does not accept yet is tried again with the next view.
    ///
    /// # Errors
    /// An acknowledgement got no answer within [`Deadlines::call`] (those accepted before
    /// are recorded).
    async fn acknowledge(
        &mut self,
        client: &mut FederationClient<Channel>,
    ) -> Result<(), ReplicaFault> {
        let unwritten = match (&self.unwritten_trust_domains, self.sinks_dirty) {
            (_, false) => std::collections::BTreeSet::new(),
            (Some(unwritten), true) => unwritten.clone(),
            (None, true) => return Ok(()),
        };
        let pending: Vec<(String, u64)> = self
            .view
            .bundles
            .iter()
            .filter(|(td, _)| !unwritten.contains(*td))
            .filter(|(td, b)| self.published.acked.get(*td).is_none_or(|s| *s < b.sequence))
            .map(|(td, b)| (td.clone(), b.sequence))
            .collect();
        let mut changed = false;
        let mut missed = None;
        let deadline = self.deadlines().call;
        for (td, sequence) in pending {
            let request = pb::AckRequest { trust_domain: td.clone(), sequence };
            match bounded("ack", deadline, client.ack(request)).await {
                Ok(Ok(_)) => {
                    tracing::info!(trust_domain = %td, sequence, "acknowledged");
                    self.published.acked.insert(td, sequence);
                    self.metrics.acks.inc();
                    changed = true;
                }
                Ok(Err(error)) => {
                    tracing::debug!(trust_domain = %td, %error, "ack not accepted yet");
                }
                Err(fault) => {
                    missed = Some(fault);
                    break;
                }
            }
        }
        self.published.acked.retain(|td, _| self.view.bundles.contains_key(td));
        if changed && let Err(error) = self.store.save_published(&self.published) {
            tracing::warn!(%error, "cannot save what was acknowledged");
        }
        missed.map_or(Ok(()), Err)
    }

    fn write_status(&mut self) {
        self.metrics.mirror(&self.status);
        self.status.written_at_ms = now_ms();
        let path = self.store.status_path();
        match serde_json::to_vec_pretty(&self.status) {
            Ok(bytes) => {
                if let Err(error) = super::store::write_atomic(&path, &bytes, 0o644) {
                    tracing::debug!(%error, "cannot write the status file");
                }
            }
            Err(error) => tracing::debug!(%error, "cannot encode the status"),
        }
    }
}

/// Waits for the own bundle source to give a bundle (the join needs one).
async fn wait_for_bundle(rx: &mut watch::Receiver<BundleState>) -> anyhow::Result<TrustBundle> {
    loop {
        let state = rx.borrow_and_update().clone();
        if let Some(bundle) = state.bundle {
            return Ok(bundle);
        }
        if let Some(problem) = &state.problem {
            tracing::warn!(location = %problem.location, problem = %problem.message, "waiting for the cluster's bundle");
        }
        rx.changed().await.context("the bundle source stopped")?;
    }
}

/// Digest of a bundle's authorities: what decides whether it must be published again
/// (a restarted agent numbers the same PEM certificates anew, which is no rotation).
fn authorities_digest(bundle: &TrustBundle) -> String {
    let x509: Vec<&[u8]> = bundle.x509_authorities.iter().map(|a| a.der.as_slice()).collect();
    let jwt: Vec<&str> = bundle.jwt_authorities.iter().map(|a| a.jwk_json.as_str()).collect();
    let bytes = postcard::to_stdvec(&(x509, jwt)).unwrap_or_default();
    hex::encode(sha2::Sha256::digest(bytes))
}

/// Digest of an export, to publish only what changed.
fn export_digest(export: &crate::service::ServiceExport) -> String {
    let bytes = postcard::to_stdvec(export).unwrap_or_default();
    hex::encode(sha2::Sha256::digest(bytes))
}

/// Jittered exponential backoff: 100 ms doubling to `max`, ± 50 %.
fn backoff(failures: u32, max: Duration) -> Duration {
    if failures == 0 {
        return Duration::from_millis(100);
    }
    let base = Duration::from_millis(100).saturating_mul(1u32 << failures.min(8)).min(max);
    let jitter = rand::random_range(0.5..1.5);
    base.mul_f64(jitter)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    #[test]
    fn backoff_grows_is_jittered_and_bounded() {
        assert_eq!(backoff(0, MAX_BACKOFF), Duration::from_millis(100));
        for failures in 1..20 {
            let b = backoff(failures, MAX_BACKOFF);
            assert!(b >= Duration::from_millis(100), "{b:?}");
            assert!(b <= MAX_BACKOFF.mul_f64(1.5), "{b:?}");
        }
        let short = Deadlines::for_ttl(Duration::from_secs(4)).max_backoff;
        assert_eq!(short, Duration::from_secs(1));
        assert!((1..20).all(|failures| backoff(failures, short) <= short.mul_f64(1.5)));
    }

    #[test]
    fn deadlines_leave_the_lease_time_to_be_renewed_through_another_replica() {
        let shipped = Deadlines::for_ttl(Duration::from_secs(10));
        assert_eq!(shipped.keepalive_every, Duration::from_secs(2));
        assert_eq!(shipped.call, Duration::from_millis(2500));
        assert_eq!(shipped.ping_interval + shipped.ping_timeout, Duration::from_millis(2500));
        assert_eq!(shipped.connect, Duration::from_millis(2500));
        assert_eq!(Deadlines::for_ttl(Duration::from_secs(600)).connect, CONNECT_TIMEOUT);
        assert_eq!(Deadlines::for_ttl(Duration::from_secs(600)).max_backoff, MAX_BACKOFF);
        let ttls = crate::state::MIN_LEASE_TTL_SECS..=crate::state::MAX_LEASE_TTL_SECS;
        for secs in ttls.clone().take(60).chain([ttls.end() / 2, *ttls.end()]) {
            let ttl = Duration::from_secs(u64::from(secs));
            let d = Deadlines::for_ttl(ttl);
            assert!(d.call < ttl / 3, "a keep-alive's deadline is under a third of {ttl:?}");
            assert!(d.ping_interval + d.ping_timeout <= ttl / 4, "{d:?}");
            assert!(d.keepalive_every * 4 < ttl, "several keep-alives per TTL: {d:?}");
            // A replica that goes silent right after a renewal: noticed by the pings (or,
            // should it still answer them, by the next keep-alive), left for the next
            // replica at once, where the lease is renewed first — within the TTL even
            // when every step takes its whole deadline.
            let noticed = (d.ping_interval + d.ping_timeout).min(d.keepalive_every + d.call);
            let renewed = noticed + backoff(0, d.max_backoff) + d.connect + d.call;
            assert!(renewed < ttl, "renewed after {renewed:?} of {ttl:?}");
            // A replica that answers keep-alives with errors at once (it cannot reach the
            // leader) is left at the second one, and the lease renewed through the next.
            assert!(d.keepalive_every < d.unrenewed && d.unrenewed < d.keepalive_every * 2);
            let renewed = d.keepalive_every * 2 + backoff(0, d.max_backoff) + d.connect + d.call;
            assert!(renewed < ttl, "renewed after {renewed:?} of {ttl:?}");
        }
    }

    #[test]
    fn the_first_source_wins_a_service_both_export() {
        let key = ServiceKey::new("ns", "a");
        let export = |port| crate::service::ServiceExport {
            key: key.clone(),
            ports: vec![crate::service::ServicePort {
                name: "http".into(),
                port,
                protocol: crate::service::Protocol::Tcp,
                app_protocol: String::new(),
            }],
            endpoints: Vec::new(),
            identities: Vec::new(),
            scope: crate::service::ExportScope::AllMembers,
            mode: crate::service::ExportMode::Direct,
        };
        let one =
            ExportSet { exports: BTreeMap::from([(key.clone(), export(80))]), problems: vec![] };
        let two =
            ExportSet { exports: BTreeMap::from([(key.clone(), export(81))]), problems: vec![] };
        let merged = merge_export_sets([one, two].into_iter());
        assert_eq!(merged.exports[&key].ports[0].port, 80);
        assert_eq!(merged.problems.len(), 1);
    }
}
