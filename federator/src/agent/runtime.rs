//! The agent's main loop: its start-up (this file) and the working state every part
//! of the loop shares ([`Agent`]).
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
//!
//! The parts: the session loop ([`session`]), why a session failed ([`session_error`]),
//! the deadlines and backoff ([`super::deadlines`]), the own bundle published ([`own_bundle`]),
//! the federation's changes applied and acknowledged ([`events`]), the exports
//! ([`exports`]), the sink tasks ([`sinks`]) and the status file ([`status_writer`]).

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};

use super::config::AgentConfig;
use super::lease::HeldLease;
use super::metrics::{AgentMetrics, Propagation};
use super::sinks::etcd::{DEFAULT_BUNDLE_PREFIX, DEFAULT_IMPORT_PREFIX, EtcdSink};
use super::sinks::files::FileSink;
use super::sinks::xds::XdsServer;
use super::sources::bundle::spawn_watch as spawn_bundle_watch;
use super::status::AgentStatus;
use super::store::{Membership, Published, Store};
use super::view::{AgentView, Sink};
use crate::identity::{CertifiedIdentity, IdentityError};
use crate::service::ServiceKey;
use crate::token::{JoinToken, TokenError};

mod events;
mod exports;
mod own_bundle;
mod session;
mod session_error;
mod sinks;
mod status_writer;
mod tasks;

use super::deadlines::Deadlines;
use exports::export_sources;
use sinks::{HandedView, SinkProgress, SinkReport, run_sink};
use status_writer::{StatusWriter, spawn_status_writer};
use tasks::Tasks;

/// How often sources are polled for changes.
const SOURCE_POLL: Duration = Duration::from_secs(1);
/// How long start-up waits for the sinks to serve the saved view before connecting.
const STARTUP_SINK_WAIT: Duration = Duration::from_secs(2);
/// How long a stopping agent waits for its tasks (a sink in the middle of an apply) before
/// it aborts them.
const STOP_TIMEOUT: Duration = Duration::from_secs(2);
pub use crate::bundle::{REFUSAL_METADATA_KEY, REFUSAL_SEQUENCE_REPLAY};

/// Why the agent could not start, or stopped.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The state directory cannot be opened.
    #[error("state_dir {}", path.display())]
    StateDir {
        /// The directory.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A file of the state directory (the membership, the view, what was published)
    /// cannot be read.
    #[error(transparent)]
    State(#[from] std::io::Error),
    /// The agent's SVID cannot be had.
    #[error("svid")]
    Svid(#[source] IdentityError),
    /// The join token does not decode.
    #[error("join token")]
    Token(#[source] TokenError),
    /// A first run without a join token.
    #[error(
        "this agent has not joined yet: give a join token (--token, FEDERATOR_JOIN_TOKEN or \
         token_file) from `federator token create`"
    )]
    NotJoined,
    /// The etcd sink cannot start.
    #[error("sinks.etcd")]
    EtcdSink(#[source] super::view::SinkError),
    /// No Kubernetes client for the Kubernetes exports or sink.
    #[error(transparent)]
    Kubernetes(#[from] super::kubernetes::ConnectError),
    /// The xDS server cannot listen.
    #[error("sinks.xds.listen {addr}")]
    XdsListen {
        /// Its address.
        addr: SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The metrics server cannot listen.
    #[error("listen_metrics {addr}")]
    MetricsListen {
        /// Its address.
        addr: SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// No replica to connect to.
    #[error("no federation endpoints: set `endpoints` in the config")]
    NoEndpoints,
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
/// A [`RunError`]: start-up failed (the state directory, the SVID files, a sink that
/// cannot start, or a first run without a token), or no replica is known to connect to.
pub async fn run(
    config: AgentConfig,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), RunError> {
    let store = Store::open(&config.file.state_dir)
        .map_err(|source| RunError::StateDir { path: config.file.state_dir.clone(), source })?;
    // Before anything writes: a temporary file of a write in progress is never taken.
    remove_leftovers("state directory", store.dir(), || {
        super::store::remove_leftover_temporaries(store.dir())
    });
    let identity = config
        .start_identity(store.membership()?.as_ref().map(|m| m.trust_domain.as_str()), SOURCE_POLL)
        .await
        .map_err(RunError::Svid)?;
    let membership = store.membership()?;
    let token = match (&membership, &config.token) {
        (Some(_), _) => None,
        (None, Some(text)) => Some(JoinToken::decode(text).map_err(RunError::Token)?),
        (None, None) => return Err(RunError::NotJoined),
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
    // Every task started below is owned here and joined (bounded) when the agent stops.
    let mut tasks = Tasks::default();
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
        .map_err(RunError::EtcdSink)?
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
            .map_err(|source| RunError::XdsListen { addr: xds.listen, source })?;
        let server = XdsServer::with_mesh(config.mesh.clone()).allowing_remote(xds.allow_remote);
        sinks.push(Arc::new(server.sink()));
        let stop = stopped();
        tasks.spawn("xds server", async move {
            if let Err(error) = server.serve(listener, stop).await {
                tracing::error!(%error, "the xDS server failed");
            }
        });
    }
    let metrics = AgentMetrics::default();
    if let Some(addr) = config.file.listen_metrics {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|source| RunError::MetricsListen { addr, source })?;
        let registry = metrics.registry();
        let ready = metrics.readiness();
        let stop = stopped();
        tasks.spawn("metrics server", async move {
            if let Err(error) = crate::metrics_http::serve(listener, registry, ready, stop).await {
                tracing::error!(%error, "the metrics server failed");
            }
        });
    }

    let (bundle_rx, bundle_task) =
        spawn_bundle_watch(config.file.bundle.clone(), trust_domain.clone(), SOURCE_POLL);
    tasks.own("bundle source", bundle_task);
    // What the federation refused of the exports, for sources that report it back.
    let (export_refusals, refusals_rx) = watch::channel(BTreeMap::new());
    let exports_rx =
        export_sources(&config, &trust_domain, kubernetes.as_ref(), refusals_rx, &mut tasks).await;
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
        tasks.spawn("sink", run_sink(index, sink, views_rx.clone(), reports_tx.clone()));
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
    // The session loop is gone, and with it the receivers of the sources (which end), and
    // its lease keeper (aborted). The servers stop; the sinks end once the agent (their
    // views and reports) is dropped.
    let _ = stop_tx.send(true);
    agent.status.connected_replica = None;
    agent.write_status();
    agent.into_status_writer().finish().await;
    let aborted = tasks.join(STOP_TIMEOUT).await;
    if !aborted.is_empty() {
        tracing::debug!(?aborted, "tasks that did not stop in time were aborted");
    }
    result
}

/// Runs `write` (a state-file write, fsync'd) on a blocking thread.
async fn blocking<T: Send + 'static>(
    write: impl FnOnce() -> std::io::Result<T> + Send + 'static,
) -> std::io::Result<T> {
    tokio::task::spawn_blocking(write).await.map_err(std::io::Error::other)?
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

impl Agent {
    /// Drops the agent (the sink tasks' views and reports with it), but its status writer.
    fn into_status_writer(self) -> StatusWriter {
        self.status_writer
    }

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

    /// Records what was published, on a blocking thread (the file is fsync'd).
    async fn save_published(&self) -> std::io::Result<()> {
        let (store, published) = (self.store.clone(), self.published.clone());
        blocking(move || store.save_published(&published)).await
    }
}
