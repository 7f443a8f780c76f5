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
//! The lease comes first: once renewed (or granted) in a session, it is kept alive by a
//! task of its own ([`super::lease`]). Each sink applies on its own task, fed the latest
//! view through a watch channel and retrying on its own, and reports back; state files
//! (the view, what was published, the status) are written on blocking threads. So no
//! sink, source or disk can delay a keep-alive: a hung local etcd makes its sink report
//! unhealthy (see [`sinks`]) while the lease stays live. What is exported — the sources
//! merged, the set published — is in [`exports`].
//!
//! With `listen_metrics` set it serves Prometheus metrics (see [`super::metrics`]),
//! among them how long each change took from the replica to every sink.

use std::collections::BTreeMap;
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
use tokio::sync::{mpsc, watch};
use tonic::Code;
use tonic::transport::{Channel, Endpoint};

use super::config::AgentConfig;
use super::held::{self, HeldBundle, Verdict};
use super::lease::{HeldLease, LeaseError, LeaseKeeper, LeaseSnapshot, Renewal};
use super::metrics::{AgentMetrics, ChangeKind, Propagation, import_sources};
use super::sinks::etcd::{DEFAULT_BUNDLE_PREFIX, DEFAULT_IMPORT_PREFIX, EtcdSink};
use super::sinks::files::FileSink;
use super::sinks::xds::XdsServer;
use super::sources::bundle::{BundleState, watch_bundle};
use super::status::{AgentStatus, FailoverStatus, PropagationStatus};
use super::store::{Membership, Published, Store};
use super::view::{AgentView, ExportSet, Sink};
use crate::bundle::{TrustBundle, ValidationPolicy, parse_spiffe_bundle};
use crate::clock::unix_now_ms;
use crate::identity::CertifiedIdentity;
use crate::service::{ServiceKey, import_from_proto};
use crate::token::JoinToken;

mod exports;
mod sinks;

use exports::export_sources;
use sinks::{HandedView, SinkProgress, SinkReport, run_sink};

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
/// How long start-up waits for the sinks to serve the saved view before connecting.
const STARTUP_SINK_WAIT: Duration = Duration::from_secs(2);
/// Longest wait between sessions once the federation refused this agent (removed,
/// token used, SVID not verifying): nothing changes until an operator acts.
const REFUSED_BACKOFF: Duration = Duration::from_secs(30);
pub use crate::bundle::{REFUSAL_METADATA_KEY, REFUSAL_SEQUENCE_REPLAY};
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
pub(super) struct Deadlines {
    /// The lease TTL they derive from.
    pub(super) ttl: Duration,
    /// Between keep-alives: `T/5`.
    pub(super) keepalive_every: Duration,
    /// Of each call to the replica (keep-alive, acknowledgement, publication, export,
    /// grant, the watch's opening) and of each wait for the next message of a watch
    /// batch (events received, their checkpoint not yet): `T/4`. An idle watch stream
    /// carries nothing: the HTTP/2 pings and the keep-alives on the same connection
    /// vouch for it.
    pub(super) call: Duration,
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
    pub(super) unrenewed: Duration,
    /// Longest wait between connection attempts: `T/4`, at most [`MAX_BACKOFF`].
    max_backoff: Duration,
}

impl Deadlines {
    /// The deadlines for a lease of `ttl`.
    pub(super) fn for_ttl(ttl: Duration) -> Self {
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
pub(super) enum ReplicaFault {
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
    // Every line the session loop logs names the member (a federation of many clusters
    // is read from many agents' logs at once).
    let cluster_name = membership
        .as_ref()
        .map(|m| m.cluster.clone())
        .or_else(|| token.as_ref().map(|t| t.cluster.clone()))
        .unwrap_or_default();
    let span = tracing::info_span!("agent", cluster = %cluster_name, trust_domain = %trust_domain);

    let (stop_tx, stop_rx) = watch::channel(false);
    let stopped = move || {
        let mut rx = stop_rx.clone();
        async move {
            let _ = rx.wait_for(|s| *s).await;
        }
    };
    let mut sinks: Vec<Arc<dyn Sink>> = Vec::new();
    if let Some(files) = &config.file.sinks.files {
        let sink = FileSink::new(files.dir.clone()).with_refresh_hint(config.refresh_hint_secs);
        remove_leftovers("files sink", sink.dir(), || sink.remove_leftover_temporaries());
        sinks.push(Arc::new(sink));
    }
    if let Some(etcd) = &config.file.sinks.etcd {
        let sink = EtcdSink::connect_with(
            etcd.endpoints.clone(),
            &etcd.auth.clone().unwrap_or_default(),
            etcd.bundle_prefix.clone().unwrap_or_else(|| DEFAULT_BUNDLE_PREFIX.into()),
            etcd.import_prefix.clone().unwrap_or_else(|| DEFAULT_IMPORT_PREFIX.into()),
        )
        .await
        .context("sinks.etcd")?
        .with_refresh_hint(config.refresh_hint_secs);
        sinks.push(Arc::new(sink));
    }
    let kubernetes = match (&config.file.exports.kubernetes, &config.file.sinks.kubernetes) {
        (None, None) => None,
        _ => Some(config.kubernetes_connection().client().await?),
    };
    if let (Some(settings), Some(client)) = (&config.file.sinks.kubernetes, &kubernetes) {
        let signer = settings
            .signer_name
            .clone()
            .unwrap_or_else(|| super::kubernetes::imports::DEFAULT_SIGNER.into());
        let sink = super::kubernetes::sink::KubernetesSink::new(client.clone(), signer)
            .with_imports(settings.service_imports)
            .with_trust_bundles(settings.cluster_trust_bundles);
        sinks.push(Arc::new(sink));
    }
    if let Some(xds) = &config.file.sinks.xds {
        let listener = tokio::net::TcpListener::bind(xds.listen)
            .await
            .with_context(|| format!("sinks.xds.listen {}", xds.listen))?;
        let server = XdsServer::with_mesh(config.mesh.clone()).allowing_remote(xds.allow_remote);
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
        let ready = metrics.readiness();
        let stop = stopped();
        tokio::spawn(async move {
            if let Err(error) = crate::metrics_http::serve(listener, registry, ready, stop).await {
                tracing::error!(%error, "the metrics server failed");
            }
        });
    }

    let bundle_rx = watch_bundle(config.file.bundle.clone(), trust_domain.clone(), SOURCE_POLL);
    // What the federation refused of the exports, for sources that report it back.
    let (export_refusals, refusals_rx) = watch::channel(BTreeMap::new());
    let exports_rx = export_sources(&config, &trust_domain, kubernetes.as_ref(), refusals_rx).await;
    let view = store.view()?.unwrap_or_default();
    // What was published and acknowledged under an earlier membership counts for nothing.
    let published = store.published()?.for_membership(membership.as_ref());
    // Static stability: the sinks serve what was applied before, before anyone is asked.
    let (views, views_rx) =
        watch::channel(HandedView { generation: 0, view: Arc::new(view.clone()) });
    let (reports_tx, sink_reports) = mpsc::unbounded_channel();
    let mut progress = Vec::new();
    for (index, sink) in sinks.into_iter().enumerate() {
        progress.push(SinkProgress {
            name: sink.name().to_string(),
            done: None,
            applying_since: None,
        });
        tokio::spawn(run_sink(index, sink, views_rx.clone(), reports_tx.clone()));
    }
    drop(views_rx);
    let status_writer = spawn_status_writer(store.status_path());
    let mut agent = Agent {
        config,
        store,
        identity,
        sinks: progress,
        views,
        generation: 0,
        sink_reports,
        status_writer,
        membership,
        token,
        refused_tokens: std::collections::BTreeSet::new(),
        view,
        published,
        status: AgentStatus { pid: std::process::id(), ..AgentStatus::default() },
        lease: None,
        sinks_dirty: true,
        unwritten_trust_domains: None,
        metrics,
        batch_changes: Vec::new(),
        pending_changes: Vec::new(),
        republished_for: None,
        republish_bundle: false,
        export_refusals,
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
    // Give the sinks a moment to serve the saved view before connecting (bounded: a
    // hung sink must not keep the agent from its lease).
    agent.settle_sinks();
    let waited = tokio::time::Instant::now() + STARTUP_SINK_WAIT;
    while agent.sinks_dirty {
        match tokio::time::timeout_at(waited, agent.sink_reports.recv()).await {
            Ok(Some(report)) => agent.on_sink_report(report),
            Ok(None) | Err(_) => break,
        }
    }
    agent.write_status();

    tokio::pin!(shutdown);
    let result = tokio::select! {
        () = &mut shutdown => Ok(()),
        result = tracing::Instrument::instrument(agent.run_sessions(bundle_rx, exports_rx), span) => result,
    };
    let _ = stop_tx.send(true);
    agent.status.connected_replica = None;
    agent.write_status();
    // The last status reaches the disk before the process exits.
    let StatusWriter { sender, task } = agent.status_writer;
    drop(sender);
    if tokio::time::timeout(STATUS_PERIOD * 2, task).await.is_err() {
        tracing::debug!("the last status was not written in time");
    }
    result
}

/// The status file's writer: a task writing the latest status handed to it (atomically,
/// fsync'd) on a blocking thread.
struct StatusWriter {
    /// The latest status, encoded.
    sender: watch::Sender<Vec<u8>>,
    /// The task; it ends once `sender` is dropped and the last status written.
    task: tokio::task::JoinHandle<()>,
}

/// Starts the writer of the status file at `path`.
fn spawn_status_writer(path: std::path::PathBuf) -> StatusWriter {
    let (sender, mut latest) = watch::channel(Vec::new());
    let task = tokio::spawn(async move {
        while latest.changed().await.is_ok() {
            let bytes = latest.borrow_and_update().clone();
            let path = path.clone();
            let written = tokio::task::spawn_blocking(move || {
                super::store::write_atomic(&path, &bytes, 0o644)
            })
            .await;
            match written {
                Ok(Ok(())) => {}
                Ok(Err(error)) => tracing::debug!(%error, "cannot write the status file"),
                Err(error) => tracing::debug!(%error, "the status writer stopped"),
            }
        }
    });
    StatusWriter { sender, task }
}

/// Runs `write` (a state-file write, fsync'd) on a blocking thread.
async fn blocking<T: Send + 'static>(
    write: impl FnOnce() -> std::io::Result<T> + Send + 'static,
) -> std::io::Result<T> {
    tokio::task::spawn_blocking(write).await.map_err(std::io::Error::other)?
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
    /// The lease keeper changed the lease's state.
    Lease,
    /// The lease keeper stopped: the session must end.
    LeaseEnded(Result<LeaseError, tokio::task::JoinError>),
    /// A sink task reported (`None`: every sink task ended).
    Sink(Option<SinkReport>),
    /// Time to write the status file.
    Status,
}

/// The lease keeper of a session, on its own task.
struct KeeperTask {
    /// The task; aborted when the session ends.
    task: tokio::task::JoinHandle<LeaseError>,
    /// The lease as the keeper knows it.
    updates: watch::Receiver<LeaseSnapshot>,
}

/// The agent's working state.
struct Agent {
    config: AgentConfig,
    store: Store,
    identity: Arc<CertifiedIdentity>,
    /// Each sink's progress (the sinks run on their own tasks, in this order).
    sinks: Vec<SinkProgress>,
    /// Hands views to the sink tasks.
    views: watch::Sender<HandedView>,
    /// The generation of the view last handed to the sinks.
    generation: u64,
    /// What the sink tasks report.
    sink_reports: mpsc::UnboundedReceiver<SinkReport>,
    /// Writes the status file.
    status_writer: StatusWriter,
    membership: Option<Membership>,
    /// The token to join with: before the first join, or to join again once the
    /// federation refused the membership (a removed cluster) and a new token came.
    token: Option<JoinToken>,
    /// Hashes of the secrets of tokens the federation refused: not tried again.
    refused_tokens: std::collections::BTreeSet<String>,
    /// The applied view (saved, handed to the sinks).
    view: AgentView,
    published: Published,
    status: AgentStatus,
    lease: Option<HeldLease>,
    /// Some sink has not applied `view` yet (or has not reported on it).
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
    /// The held own bundle (its authorities digest) the agent last re-published for,
    /// having found its record contradicted: once per held bundle.
    republished_for: Option<String>,
    /// The record was found contradicted: publish the own bundle again.
    republish_bundle: bool,
    /// The exports the federation refused on the last publication, with why (the
    /// Kubernetes source marks their `ServiceExport`s `Refused`).
    export_refusals: watch::Sender<BTreeMap<ServiceKey, String>>,
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
        let mut refusals: u32 = 0;
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
                    self.metrics.session_failures.inc();
                    failures = failures.saturating_add(1);
                    if let Some(next_step) = self.refusal_next_step(&error) {
                        refusals = refusals.saturating_add(1);
                        if self.pick_up_token() {
                            // A new token: join with it at once.
                            refusals = 0;
                            failures = 0;
                        }
                        tracing::error!(
                            replica = %addr,
                            error = %reason,
                            retry_in_s = refused_backoff(refusals, deadlines.max_backoff).as_secs(),
                            "the federation refuses this agent: {next_step}"
                        );
                        self.status.last_error = Some(format!("{addr}: {reason} — {next_step}"));
                    } else {
                        refusals = 0;
                        tracing::warn!(replica = %addr, error = %reason, "session failed");
                        self.status.last_error = Some(format!("{addr}: {reason}"));
                    }
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
                    at_ms: unix_now_ms(),
                    to: None,
                    connected_at_ms: None,
                });
            }
            self.write_status();
            next += 1;
            let round = u32::try_from(endpoints.len()).unwrap_or(u32::MAX);
            let wait = if refusals > 0 {
                // Refused: nothing changes until an operator acts; ask again, slowly.
                refused_backoff(refusals, deadlines.max_backoff)
            } else if failures < round {
                backoff(0, deadlines.max_backoff)
            } else {
                backoff(failures - round + 1, deadlines.max_backoff)
            };
            self.pause(wait).await;
        }
    }

    /// Waits `wait`, keeping track of the sinks meanwhile.
    async fn pause(&mut self, wait: Duration) {
        let until = tokio::time::Instant::now() + wait;
        loop {
            match tokio::time::timeout_at(until, self.sink_reports.recv()).await {
                Ok(Some(report)) => self.on_sink_report(report),
                Ok(None) => {
                    tokio::time::sleep_until(until).await;
                    return;
                }
                Err(_) => return,
            }
        }
    }

    /// When `error` is the federation refusing this agent (permission denied,
    /// unauthenticated: a removed cluster, a used or expired token, an SVID that does not
    /// verify), what the operator should do; `None` for any other failure.
    fn refusal_next_step(&self, error: &anyhow::Error) -> Option<String> {
        refusal_next_step(error, self.membership.is_some(), self.config.file.token_file.as_deref())
    }

    /// After a refusal: forgets the token just refused, and takes a new one from
    /// `token_file` (re-read: an operator writes a new token there for a removed cluster
    /// to join again, no restart needed) or the token given at start-up, unless the
    /// federation refused it before or it is the current membership's own. Whether there
    /// is a new token to join with.
    fn pick_up_token(&mut self) -> bool {
        if let Some(refused) = self.token.take() {
            self.refused_tokens.insert(refused.secret_hash());
            if self.membership.is_none() {
                // Before the first join nothing else can be done: ask again with it.
                self.token = Some(refused);
            }
        }
        let text = match &self.config.file.token_file {
            Some(path) => match std::fs::read_to_string(path) {
                Ok(text) => Some(text),
                Err(error) => {
                    tracing::debug!(path = %path.display(), %error, "no token file");
                    None
                }
            },
            None => self.config.token.clone(),
        };
        let Some(candidate) = text.and_then(|t| JoinToken::decode(t.trim()).ok()) else {
            return false;
        };
        let hash = candidate.secret_hash();
        let own = self.membership.as_ref().and_then(|m| m.token_hash.as_ref()) == Some(&hash);
        if own || self.refused_tokens.contains(&hash) {
            return false;
        }
        tracing::info!(
            cluster = %candidate.cluster,
            trust_domain = %candidate.trust_domain,
            "a new join token: joining the federation again with it"
        );
        self.token = Some(candidate);
        true
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

    /// One session with the replica at `addr`; the lease keeper it started, if any, is
    /// stopped when it ends, and the lease as the keeper left it kept.
    async fn session(
        &mut self,
        addr: &str,
        bundle_rx: &mut watch::Receiver<BundleState>,
        exports_rx: &mut watch::Receiver<ExportSet>,
    ) -> anyhow::Result<SessionEnd> {
        let mut keeper = None;
        let result = self.session_with(addr, bundle_rx, exports_rx, &mut keeper).await;
        if let Some(keeper) = keeper {
            keeper.task.abort();
            self.absorb_lease(&keeper.updates.borrow());
        }
        result
    }

    /// The lease keeper for the replica `client` talks to, holding what the agent holds.
    fn lease_keeper(
        &self,
        client: &FederationClient<Channel>,
        deadlines: Deadlines,
    ) -> LeaseKeeper<FederationClient<Channel>> {
        let lease = &self.config.file.lease;
        LeaseKeeper {
            api: client.clone(),
            lease: self.lease,
            status: self.status.lease.clone(),
            deadlines,
            grant: pb::GrantLeaseRequest {
                ttl_seconds: u32::try_from(self.config.lease_ttl.as_secs()).unwrap_or(10),
                region: lease.region.clone(),
                zone: lease.zone.clone(),
            },
            metrics: self.metrics.clone(),
        }
    }

    /// Takes the lease as the keeper knows it into the agent's state and status.
    fn absorb_lease(&mut self, snapshot: &LeaseSnapshot) {
        self.lease = snapshot.lease;
        self.status.lease.clone_from(&snapshot.status);
    }

    /// Starts `keeper` on its own task.
    fn spawn_keeper(
        &mut self,
        keeper: LeaseKeeper<FederationClient<Channel>>,
        slot: &mut Option<KeeperTask>,
    ) {
        let snapshot = keeper.snapshot();
        self.absorb_lease(&snapshot);
        let (updates_tx, updates) = watch::channel(snapshot);
        let task = tokio::spawn(keeper.run(updates_tx));
        *slot = Some(KeeperTask { task, updates });
    }

    /// [`Agent::session`], its lease keeper left in `keeper`.
    async fn session_with(
        &mut self,
        addr: &str,
        bundle_rx: &mut watch::Receiver<BundleState>,
        exports_rx: &mut watch::Receiver<ExportSet>,
        keeper_slot: &mut Option<KeeperTask>,
    ) -> anyhow::Result<SessionEnd> {
        let identity = self.identity.current();
        let deadlines = self.deadlines();
        let mut client = self.connect(addr, &deadlines).await?;
        if self.membership.is_none() || self.token.is_some() {
            self.join(&mut client, bundle_rx).await?;
        }
        self.status.connections += 1;
        self.metrics.connections.inc();
        self.status.connected_replica = Some(addr.to_string());
        let now = unix_now_ms();
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
        // have held up the last keep-alives). Once renewed, it is kept alive by its own
        // task, whatever the rest of the session does. A lease found lost is granted
        // below, after the exports.
        let mut keeper = self.lease_keeper(&client, deadlines);
        if keeper.lease.is_some() {
            let renewal = keeper.keep_alive().await;
            self.absorb_lease(&keeper.snapshot());
            if renewal? != Renewal::Lost {
                self.spawn_keeper(keeper, keeper_slot);
                keeper = self.lease_keeper(&client, deadlines);
            }
        }
        self.write_status();

        self.publish_bundle(&mut client, &bundle_rx.borrow_and_update().clone()).await?;
        // Exports before the lease: a restarted agent's lease makes the exports the
        // federation still holds from before ready again, so they must be current first
        // (an endpoint that was ready before the crash may not be yet).
        self.sync_exports(&mut client, &exports_rx.borrow_and_update().clone()).await?;
        if keeper_slot.is_none() {
            keeper.grant().await?;
            self.spawn_keeper(keeper, keeper_slot);
        }
        let keeper = keeper_slot.as_mut().ok_or_else(|| anyhow!("no lease keeper"))?;

        let watch = client.watch(pb::WatchRequest { after_revision: self.view.revision });
        let mut stream = bounded("watch", deadlines.call, watch).await?.context("watch")?;
        let mut working = self.view.clone();
        self.batch_changes.clear();
        let deadlines = self.deadlines();
        let mut status_tick = tokio::time::interval(STATUS_PERIOD);
        // Every sink may hold the view by now: acknowledge what they do.
        self.acknowledge(&mut client).await?;
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
                ended = &mut keeper.task => Wake::LeaseEnded(ended),
                Ok(()) = keeper.updates.changed() => Wake::Lease,
                report = self.sink_reports.recv() => Wake::Sink(report),
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
                    if std::mem::take(&mut self.republish_bundle) {
                        let state = bundle_rx.borrow().clone();
                        self.publish_bundle(&mut client, &state).await?;
                    }
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
                Wake::Lease => {
                    let snapshot = keeper.updates.borrow_and_update().clone();
                    self.absorb_lease(&snapshot);
                }
                Wake::LeaseEnded(ended) => {
                    let error = ended.context("the lease keeper stopped")?;
                    return Err(anyhow::Error::new(error).context("lease"));
                }
                Wake::Sink(Some(report)) => {
                    self.on_sink_report(report);
                    self.acknowledge(&mut client).await?;
                }
                Wake::Sink(None) => bail!("the sink tasks stopped"),
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

    /// Joins with the token and the own bundle; records the membership.
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
        let joined_revision = response.revision;
        let membership = Membership {
            cluster: response.cluster,
            trust_domain: response.trust_domain,
            agent_id: response.agent_id,
            endpoints: token.endpoints.clone(),
            federation_ca_pem: token.federation_ca_pem.clone(),
            joined_at: unix_now_ms() / 1000,
            token_hash: Some(token.secret_hash()),
        };
        let (store, saved) = (self.store.clone(), membership.clone());
        blocking(move || store.save_membership(&saved)).await?;
        // A new membership: nothing published or acknowledged before counts (a cluster
        // that joins again after its removal publishes its exports and acknowledges every
        // bundle anew), and a lease held before is gone.
        self.published = Published {
            bundle_digest: Some(authorities_digest(&bundle)),
            bundle_sequence: Some(bundle.sequence),
            bundle_revision: Some(joined_revision),
            membership: membership.token_hash.clone(),
            ..Published::default()
        };
        self.save_published().await?;
        self.lease = None;
        self.status.lease = None;
        self.status.bundle.published_sequence = Some(bundle.sequence);
        self.status.bundle.published_current = Some(true);
        tracing::info!(cluster = %membership.cluster, trust_domain = %membership.trust_domain, "joined the federation");
        self.status.cluster.clone_from(&membership.cluster);
        self.status.trust_domain.clone_from(&membership.trust_domain);
        self.membership = Some(membership);
        self.token = None;
        Ok(())
    }

    /// Records what was published, on a blocking thread (the file is fsync'd).
    async fn save_published(&self) -> std::io::Result<()> {
        let (store, published) = (self.store.clone(), self.published.clone());
        blocking(move || store.save_published(&published)).await
    }

    /// Publishes the own bundle the source gives, unless the federation holds its
    /// authorities already. A refusal is logged at WARN and shown by the status; with
    /// `force_publish_bundle` set, a bundle that no longer certifies the agent's own SVID
    /// is published all the same (the federation audits it as forced).
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
            self.hand_view_to_sinks();
        }
        let digest = authorities_digest(bundle);
        if self.published.bundle_digest.as_deref() == Some(digest.as_str()) {
            // The federation holds these authorities at the sequence it accepted then (a
            // restarted agent numbers the same certificates anew: no rotation).
            self.status.bundle.published_sequence =
                self.published.bundle_sequence.or(Some(bundle.sequence));
            self.status.bundle.published_current = Some(true);
            return Ok(());
        }
        self.status.bundle.published_current = Some(false);
        let force = self.config.file.force_publish_bundle;
        let request = pb::PublishBundleRequest {
            bundle: Some(pb::TrustBundle {
                trust_domain: bundle.trust_domain.clone(),
                spiffe_bundle_json: bundle.to_spiffe_json(),
                sequence: bundle.sequence,
            }),
            force,
        };
        let mut accepted = bundle.sequence;
        let deadline = self.deadlines().call;
        match bounded("publish bundle", deadline, client.publish_bundle(request)).await? {
            Ok(response) => {
                accepted = response.sequence;
                self.published.bundle_revision = Some(response.revision);
                if force {
                    tracing::warn!(
                        sequence = accepted,
                        "bundle published with force (force_publish_bundle is set): remove the \
                         setting once this rotation is done"
                    );
                } else {
                    tracing::info!(sequence = accepted, "bundle published");
                }
            }
            // Already there (a restart after publishing): the federation has it.
            Err(status) if is_replay(&status) => {
                tracing::debug!("bundle already published");
                // When the federation accepted it is not known.
                self.published.bundle_revision = None;
            }
            Err(status) if status.code() == Code::InvalidArgument => {
                // The source gives a bundle the federation refuses: report, keep going.
                tracing::warn!(
                    sequence = bundle.sequence,
                    reason = status.message(),
                    "the federation refused the cluster's bundle; the last one it accepted \
                     stays in force: fix the bundle source (a bundle that no longer certifies \
                     this agent's SVID needs force_publish_bundle = true)"
                );
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
        self.status.bundle.published_current = Some(true);
        self.save_published().await?;
        Ok(())
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
                    &ValidationPolicy::at(unix_now_ms() / 1000),
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
            // The own bundle comes from the cluster's own source, not from the federation;
            // what the federation holds of it is kept to compare.
            Some(Event::BundlePut(b)) => {
                working.held_own_bundle = parse_spiffe_bundle(
                    &b.trust_domain,
                    b.spiffe_bundle_json.as_bytes(),
                    &ValidationPolicy::at(unix_now_ms() / 1000),
                )
                .ok()
                .map(|bundle| HeldBundle {
                    sequence: b.sequence,
                    authorities_digest: authorities_digest(&bundle),
                });
            }
            Some(Event::BundleRemoved(b)) if b.trust_domain == own_td => {
                working.held_own_bundle = None;
            }
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
                working.held_own_bundle = None;
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

    /// Makes `working` the applied view: saved (on a blocking thread), handed to the
    /// sinks; acknowledged once they report holding it.
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
        let (store, view) = (self.store.clone(), self.view.clone());
        blocking(move || store.save_view(&view)).await?;
        self.status.applied_revision = self.view.revision;
        self.status.bundles =
            self.view.bundles.iter().map(|(td, b)| (td.clone(), b.sequence)).collect();
        self.status.imports = self.view.imports.len();
        self.compare_held_bundle();
        let room = MAX_PENDING_PROPAGATION.saturating_sub(self.pending_changes.len());
        let batch = std::mem::take(&mut self.batch_changes);
        self.pending_changes.extend(batch.into_iter().take(room));
        self.hand_view_to_sinks();
        // Without sinks, nothing waits: acknowledge at once.
        self.acknowledge(client).await?;
        Ok(())
    }

    /// Compares the own bundle the federation holds (as of the view just committed) with
    /// the source's and the record of what was published; asks for a new publication
    /// when the record is contradicted.
    fn compare_held_bundle(&mut self) {
        let source = self.view.own_bundle.as_ref().map(authorities_digest);
        let held = self.view.held_own_bundle.as_ref();
        self.status.bundle.federation_sequence = held.map(|h| h.sequence);
        let recorded = held::Recorded {
            digest: self.published.bundle_digest.as_deref(),
            revision: self.published.bundle_revision,
        };
        let verdict = held::judge(
            held,
            self.view.revision,
            source.as_deref(),
            recorded,
            self.republished_for.as_deref(),
        );
        self.status.bundle.federation_current = match verdict {
            Verdict::Unknown => None,
            Verdict::Current => {
                // Agreed again: a later contradiction is acted on afresh.
                self.republished_for = None;
                Some(true)
            }
            Verdict::Republish | Verdict::Differs => Some(false),
        };
        if verdict == Verdict::Republish
            && let Some(held) = held
        {
            tracing::warn!(
                held_sequence = held.sequence,
                recorded_sequence = ?self.published.bundle_sequence,
                "the federation holds other authorities for this cluster's bundle than this \
                 agent recorded publishing (restored from an older backup?): publishing it again"
            );
            self.republished_for = Some(held.authorities_digest.clone());
            self.published.bundle_digest = None;
            self.published.bundle_revision = None;
            self.republish_bundle = true;
        }
    }

    /// Every sink holds the view: the committed changes have propagated.
    fn observe_propagation(&mut self) {
        let now = unix_now_ms();
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
        if changed && let Err(error) = self.save_published().await {
            tracing::warn!(%error, "cannot save what was acknowledged");
        }
        missed.map_or(Ok(()), Err)
    }

    /// Hands the status to its writer (which writes it on a blocking thread).
    fn write_status(&mut self) {
        self.mark_stalled_sinks();
        self.metrics.mirror(&self.status);
        self.status.written_at_ms = unix_now_ms();
        match serde_json::to_vec_pretty(&self.status) {
            Ok(bytes) => {
                self.status_writer.sender.send_replace(bytes);
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

/// When `error` is the federation refusing the agent (permission denied,
/// unauthenticated), what the operator should do (`joined`: the agent has a membership;
/// `token_file`: where it takes new tokens from); `None` for any other failure, retried
/// as usual.
fn refusal_next_step(
    error: &anyhow::Error,
    joined: bool,
    token_file: Option<&std::path::Path>,
) -> Option<String> {
    let status = error.chain().find_map(|e| e.downcast_ref::<tonic::Status>())?;
    if !matches!(status.code(), Code::PermissionDenied | Code::Unauthenticated) {
        return None;
    }
    let give = token_file.map_or_else(
        || "restart the agent with it (--token or FEDERATOR_JOIN_TOKEN)".to_string(),
        |path| {
            format!("write it to {}: the agent joins with it, no restart needed", path.display())
        },
    );
    Some(if joined {
        format!(
            "if this cluster was removed (`federator cluster remove`), create a new token with \
             `federator token create` and {give} (it republishes its bundle and exports and \
             acknowledges every bundle again; nothing to delete); if its SVID does not verify, \
             publish the bundle that certifies it"
        )
    } else {
        format!(
            "the join token was refused (used, expired, or for another cluster): create a new \
             one with `federator token create` and {give}"
        )
    })
}

/// The wait before asking again a federation that refused this agent: `max` (the
/// session's longest backoff) doubling with each refusal in a row, up to
/// [`REFUSED_BACKOFF`] (never below `max`).
fn refused_backoff(refusals: u32, max: Duration) -> Duration {
    max.saturating_mul(1u32 << refusals.saturating_sub(1).min(8)).min(REFUSED_BACKOFF.max(max))
}

/// Whether `status` refuses a bundle because its sequence is not above the one the
/// federation holds (a replay: the federation already has it).
///
/// Decided by the refusal kind a replica sets in the [`REFUSAL_METADATA_KEY`] metadata
/// ([`REFUSAL_SEQUENCE_REPLAY`]); replicas that set none are recognised by their
/// message, as before.
fn is_replay(status: &tonic::Status) -> bool {
    if let Some(kind) = status.metadata().get(REFUSAL_METADATA_KEY) {
        return kind.to_str().is_ok_and(|kind| kind == REFUSAL_SEQUENCE_REPLAY);
    }
    status.code() == Code::InvalidArgument
        && status.message().contains("not greater than the stored sequence")
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
    fn refusals_say_what_to_do_and_other_failures_are_retried_as_usual() {
        let refused = |code| anyhow::Error::new(tonic::Status::new(code, "no")).context("session");
        let file = std::path::Path::new("/etc/federator/join-token");
        let removed = refusal_next_step(&refused(Code::PermissionDenied), true, Some(file))
            .expect("a refusal");
        assert!(removed.contains("federator token create"), "{removed}");
        assert!(removed.contains("write it to /etc/federator/join-token"), "{removed}");
        assert!(removed.contains("no restart needed"), "{removed}");
        let token = refusal_next_step(&refused(Code::Unauthenticated), false, None).expect("one");
        assert!(token.contains("join token was refused"), "{token}");
        assert!(token.contains("--token"), "{token}");
        // Through a lease keeper's error too.
        let keeper = anyhow::Error::new(LeaseError::Answered {
            call: "keep-alive",
            status: tonic::Status::permission_denied("not a member"),
        });
        assert!(refusal_next_step(&keeper, true, Some(file)).is_some());
        for code in [Code::Unavailable, Code::DeadlineExceeded, Code::InvalidArgument] {
            assert_eq!(refusal_next_step(&refused(code), true, Some(file)), None, "{code:?}");
        }
        assert_eq!(refusal_next_step(&anyhow!("connect: refused"), true, None), None);
    }

    #[test]
    fn a_refused_agent_asks_again_slowly() {
        let max = Deadlines::for_ttl(Duration::from_secs(10)).max_backoff;
        assert_eq!(refused_backoff(1, max), max, "the first refusal waits the longest backoff");
        assert_eq!(refused_backoff(2, max), max * 2);
        assert!((1..100).all(|n| refused_backoff(n, max) <= REFUSED_BACKOFF));
        assert_eq!(refused_backoff(50, max), REFUSED_BACKOFF);
        // Never below the session's own backoff, however long the TTL.
        let long = Deadlines::for_ttl(Duration::from_secs(3600)).max_backoff;
        assert!(refused_backoff(1, long) >= long);
    }

    #[test]
    fn a_replay_is_recognised_by_its_refusal_kind_and_else_by_its_message() {
        let mut typed = tonic::Status::invalid_argument("any wording");
        typed
            .metadata_mut()
            .insert(REFUSAL_METADATA_KEY, REFUSAL_SEQUENCE_REPLAY.parse().expect("ascii"));
        assert!(is_replay(&typed));
        let mut other = tonic::Status::invalid_argument(
            "bundle: spiffe_sequence: 3 is not greater than the stored sequence 4 (replay)",
        );
        other.metadata_mut().insert(REFUSAL_METADATA_KEY, "lockout".parse().expect("ascii"));
        assert!(!is_replay(&other), "the kind, when given, decides");
        let legacy = tonic::Status::invalid_argument(
            "bundle: spiffe_sequence: 3 is not greater than the stored sequence 4 (replay)",
        );
        assert!(is_replay(&legacy), "replicas without the kind: the message");
        assert!(!is_replay(&tonic::Status::invalid_argument("keys: would lock the agent out")));
    }
}
