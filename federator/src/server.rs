//! One federator replica: its consensus core, the replica transport, the API server
//! (admin and health, over mTLS and the local admin socket), and Prometheus metrics.

mod admin;
mod attempts;
mod bundle_endpoint;
pub mod config;
mod federation;
mod federation_metrics;
mod grpc_status;
mod health;
mod leases;
mod refusals;

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use federator_proto::admin::admin_server::AdminServer;
use federator_proto::federation::federation_server::FederationServer;
use federator_raft::metrics::ConsensusMetrics;
use federator_raft::network::client::TransportOptions;
use federator_raft::{Replica, ReplicaConfig};
use prometheus_client::registry::Registry;
use tokio::sync::watch;

pub use admin::AdminService;
pub use federation::{DEFAULT_MAX_WATCHES_PER_MEMBER, FederationService, Leaving};
pub use federation_metrics::FederationMetrics;
pub use leases::{EXPIRY_CHECK, LeaderRequest, LeaderResponse, Lessor};
pub use refusals::RefusalRecorder;

use crate::identity::{self, peer_spiffe_id};
use crate::state::{Command, FederationState};
use config::ServerConfig;

/// Connections one source address may hold open on the API port (agents hold one or
/// two each; a NAT may front a thousand of them).
const API_MAX_CONNECTIONS_PER_SOURCE: usize = 2_048;

/// How often certificate files are checked for changes.
const CERTIFICATE_CHECK_PERIOD: Duration = Duration::from_secs(5);

/// How long a stopping replica waits for its connections to close (watch streams are
/// ended at once; this bounds unary calls in flight) before it closes them: well under
/// the 30 s a supervisor gives before SIGKILL.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a replica that failed (its raft core stopped on a storage error) lets its API
/// flush the statuses that send its callers elsewhere before it exits.
const FAILED_FLUSH: Duration = Duration::from_secs(1);

/// The replica type of a federator server.
pub type FederationReplica = Replica<FederationState>;

/// Errors that stop a replica.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServerError {
    /// Certificates could not be loaded.
    #[error(transparent)]
    Identity(#[from] identity::IdentityError),
    /// The consensus layer failed.
    #[error(transparent)]
    Replica(#[from] federator_raft::ReplicaError),
    /// A listener could not be bound.
    #[error("{what}: cannot listen on {addr}: {source}")]
    Bind {
        /// Which listener.
        what: &'static str,
        /// Address.
        addr: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A server task failed.
    #[error("{0} server failed: {1}")]
    Serve(&'static str, String),
    /// The raft core stopped on its own: a storage error (disk full, I/O error, a failed
    /// fsync) fail-stops it. The process exits so that a supervisor restarts it once the
    /// disk accepts writes again; the log and snapshots on disk are intact.
    #[error(
        "the raft core stopped: {0}; this replica exits (a supervisor restarts it) — free \
         space or fix the disk under its data directory, then it recovers from its log"
    )]
    CoreStopped(String),
}

/// Runs one replica until `shutdown` resolves, then stops it cleanly.
///
/// # Errors
/// Start-up failed (certificates, storage, listeners) or a server failed.
pub async fn run(
    config: ServerConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError> {
    let started = Instant::now();
    let material = config.tls.load()?;
    material.identity.watch(CERTIFICATE_CHECK_PERIOD);
    let server_tls = material.server_config()?;
    let client_tls = material.client_config()?;

    let mut registry = Registry::default();
    let consensus_metrics = ConsensusMetrics::default();
    consensus_metrics.register(registry.sub_registry_with_prefix("federator"));
    crate::metrics_http::register_build_info(&mut registry, config.id);
    let federation_metrics = FederationMetrics::default();
    federation_metrics.register(registry.sub_registry_with_prefix("federator"));
    let certificate_expiry =
        prometheus_client::metrics::gauge::Gauge::<i64, std::sync::atomic::AtomicI64>::default();
    registry.register(
        "federator_replica_certificate_expiry_timestamp_seconds",
        "When this replica's own certificate expires (unix seconds), as last read from its file",
        certificate_expiry.clone(),
    );

    let mut replica_config =
        ReplicaConfig::new(config.id, config.advertise_raft.clone(), config.data_dir.clone());
    replica_config.heartbeat_interval = config.heartbeat;
    replica_config.election_timeout_min = config.election_timeout.0;
    replica_config.election_timeout_max = config.election_timeout.1;
    replica_config.snapshot_after_entries = config.snapshot_after_entries;
    replica_config.keep_entries_after_snapshot = config.keep_entries_after_snapshot;
    replica_config.transport =
        TransportOptions { dial_overrides: config.dial.clone(), ..TransportOptions::default() };
    let replica =
        Replica::open(replica_config, FederationState::default(), client_tls, consensus_metrics)
            .await?;
    tracing::info!(replica = config.id, raft = %config.advertise_raft, api = %config.advertise_api, "replica opened");

    let (stop_tx, stop_rx) = watch::channel(false);
    let (leaving_tx, leaving_rx) = watch::channel(None::<String>);
    let stopped = move |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|stop| *stop).await;
    };
    // Every task below ends when `stop_tx` says so, and the replica waits for it (bounded)
    // before it exits: none is left detached.
    let mut background = Tasks::default();

    // The certificate's expiry, for alerts: files are re-read as they change.
    background.push(tokio::spawn({
        let identity = Arc::clone(&material.identity);
        let stop = stopped(stop_rx.clone());
        async move {
            tokio::select! {
                () = stop => {}
                () = async {
                    loop {
                        if let Some(at) = identity::leaf_not_after(&identity.current()) {
                            certificate_expiry.set(at);
                        }
                        tokio::time::sleep(CERTIFICATE_CHECK_PERIOD).await;
                    }
                } => {}
            }
        }
    }));

    // Member leases: the leader keeps their deadlines; keep-alives reach it from any
    // replica as leader calls.
    let lessor = Lessor::new(replica.clone(), federation_metrics.clone());
    replica.set_leader_handler(Arc::new(leases::LessorHandler(Arc::clone(&lessor))))?;
    background.push(tokio::spawn(lessor.run(stopped(stop_rx.clone()))));

    // Replica transport: only certificates of this federation's replicas may speak raft.
    let raft_listener = bind("listen.raft", config.listen_raft).await?;
    let td = config.trust_domain.clone();
    let peer_policy: federator_raft::network::server::PeerPolicy = Arc::new(move |cert| {
        peer_spiffe_id(cert).is_some_and(|id| identity::is_replica_spiffe_id(&td, &id))
    });
    // The transport stops last, after the raft core (which may still talk to its peers
    // while it hands over leadership).
    let (transport_stop_tx, transport_stop_rx) = watch::channel(false);
    let transport = {
        let replica = replica.clone();
        let stop = stopped(transport_stop_rx);
        tokio::spawn(async move {
            replica
                .serve_transport(raft_listener, server_tls.clone(), Some(peer_policy), stop)
                .await
        })
    };

    if config.bootstrap && !replica.is_initialized().await? {
        tracing::info!(replica = config.id, "bootstrapping a one-replica group");
        replica.initialize(Default::default()).await?;
    }

    // Refusals decided before the log reach the audit trail in one entry a second.
    let refusals = Arc::new(RefusalRecorder::default());
    registry.register(
        "federator_refusals",
        "Calls refused before the log (counted for the audit trail, reported coalesced)",
        refusals.refusals.clone(),
    );
    background
        .push(tokio::spawn(Arc::clone(&refusals).run(replica.clone(), stopped(stop_rx.clone()))));
    let ca_roots: Vec<Vec<u8>> = material.ca.iter().map(|c| c.as_ref().to_vec()).collect();
    let admin =
        AdminService::new(replica.clone(), &config, ca_roots, started, Arc::clone(&refusals));
    let federation = FederationService::new(
        replica.clone(),
        federation_metrics.clone(),
        Arc::clone(&refusals),
        config.max_watches_per_member,
        leaving_rx,
    );
    background
        .push(tokio::spawn(federation_metrics.refresh(replica.clone(), stopped(stop_rx.clone()))));
    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    health_reporter.set_not_serving::<AdminServer<AdminService>>().await;
    let serving = health::Serving::default();
    background.push(tokio::spawn(health::report(
        replica.clone(),
        health_reporter.clone(),
        Arc::clone(&serving),
        config.max_lag_entries,
        stopped(stop_rx.clone()),
    )));
    background.push(tokio::spawn(register_api_address(
        replica.clone(),
        config.clone(),
        stopped(stop_rx.clone()),
    )));

    let api_listener = bind("listen.api", config.listen_api).await?;
    let api_incoming = federator_raft::tls::IncomingMetrics::default();
    api_incoming.register(registry.sub_registry_with_prefix("federator_api"));
    // Agents present SVIDs of their own trust domains: the handshake proves possession
    // of the key, and each request verifies the chain against the right bundle.
    let api_tls = material.server_config_deferring_client_trust()?;
    let api = {
        let router = tonic::transport::Server::builder()
            .trace_fn(admin::calls::rpc_span("api"))
            .add_service(health_service.clone())
            // The caller is checked before the body is decoded.
            .add_service(admin::calls::LoggedCalls::new(
                tonic::service::interceptor::InterceptedService::new(
                    AdminServer::new(admin.clone()).max_decoding_message_size(16 << 20),
                    {
                        let admin = admin.clone();
                        move |request| admin.intercept(request)
                    },
                ),
            ))
            .add_service(FederationServer::new(federation).max_decoding_message_size(4 << 20));
        // Pending handshakes are bounded per source (the oldest evicted at the global
        // cap); established connections per source too, generously: one address may be a
        // NAT in front of a thousand agents.
        let incoming = federator_raft::tls::incoming(api_listener, api_tls)
            .with_metrics(api_incoming)
            .with_max_connections_per_source(API_MAX_CONNECTIONS_PER_SOURCE);
        let stop = stopped(stop_rx.clone());
        tokio::spawn(async move { router.serve_with_incoming_shutdown(incoming, stop).await })
    };
    let socket = {
        let path = config.admin_socket.clone();
        let _ = std::fs::remove_file(&path);
        let listener =
            tokio::net::UnixListener::bind(&path).map_err(|source| ServerError::Bind {
                what: "listen.admin_socket",
                addr: path.display().to_string(),
                source,
            })?;
        restrict_socket(&path);
        let incoming = tokio_stream::wrappers::UnixListenerStream::new(listener);
        let router = tonic::transport::Server::builder()
            .trace_fn(admin::calls::rpc_span("socket"))
            .add_service(health_service)
            .add_service(admin::calls::LoggedCalls::new(AdminServer::new(admin)));
        let stop = stopped(stop_rx.clone());
        tokio::spawn(async move { router.serve_with_incoming_shutdown(incoming, stop).await })
    };
    let bundle_endpoints =
        bundle_endpoint::spawn_all(&config, &material, replica.clone(), &stop_rx).await?;
    let metrics = match config.listen_metrics {
        Some(addr) => {
            let listener = bind("listen.metrics", addr).await?;
            let serving = Arc::clone(&serving);
            let ready: crate::metrics_http::Readiness = Arc::new(move || {
                if serving.load(std::sync::atomic::Ordering::Relaxed) {
                    Ok(())
                } else {
                    Err(crate::metrics_http::NotReady(
                        "no leader known, too far behind it, or stopping (`federator status`)"
                            .into(),
                    ))
                }
            });
            Some(tokio::spawn(crate::metrics_http::serve(
                listener,
                registry,
                ready,
                stopped(stop_rx.clone()),
            )))
        }
        None => None,
    };
    tracing::info!(replica = config.id, "serving");

    // Run until asked to stop, until the API or the transport server fails, or until the
    // raft core stops on its own (a storage error): a replica that can no longer serve
    // must not linger as a half-working process that agents stay attached to.
    let mut api = api;
    let mut transport = transport;
    // A task that ended here is not polled again.
    let (mut api_ended, mut transport_ended) = (false, false);
    let failure = tokio::select! {
        () = shutdown => None,
        result = &mut api => {
            api_ended = true;
            Some(task_failure("api", result))
        }
        result = &mut transport => {
            transport_ended = true;
            Some(task_failure("raft transport", result))
        }
        reason = core_stopped(replica.clone()) => Some(ServerError::CoreStopped(reason)),
    };
    let stopping = Instant::now();
    let reason = match &failure {
        None => {
            tracing::info!(replica = config.id, "shutting down");
            format!("replica {} is stopping", config.id)
        }
        Some(error) => {
            tracing::error!(replica = config.id, %error, "shutting down");
            format!("replica {} failed and is stopping", config.id)
        }
    };
    // Out of service first: health NOT_SERVING, watch streams end with UNAVAILABLE (their
    // agents reconnect elsewhere), new watches are refused.
    health::not_serving(&health_reporter, &serving).await;
    let _ = leaving_tx.send(Some(reason));
    // Then every server task but the replica transport: the API drains its connections
    // (unary calls in flight still reach a running raft core), the lessor, the refusal
    // recorder and the other background tasks end. They are joined (bounded) before the
    // raft core stops, so none of them outlives it.
    let _ = stop_tx.send(true);
    let mut tasks = background;
    tasks.push(socket);
    if let Some(metrics) = metrics {
        tasks.push(metrics);
    }
    for endpoint in bundle_endpoints {
        tasks.push(endpoint);
    }
    if failure.is_none() {
        tasks.push(api);
    } else if !api_ended {
        // A failed replica leaves promptly, but first lets the API deliver what it just
        // told its callers — watch streams ended with UNAVAILABLE, health NOT_SERVING —
        // so that agents learn it left from its answer, not from a reset connection.
        if tokio::time::timeout(FAILED_FLUSH, &mut api).await.is_err() {
            api.abort();
            let _ = api.await;
        }
    }
    if !tasks.join(DRAIN_TIMEOUT).await {
        tracing::warn!(
            replica = config.id,
            timeout = ?DRAIN_TIMEOUT,
            "connections still open after the drain timeout; closed them"
        );
    }
    // (Again: the health task may have evaluated between the first call and its end.)
    health::not_serving(&health_reporter, &serving).await;
    // Then the raft core: a leader first hands over to a voter that holds its whole log
    // (`Replica::shutdown`), else stops heartbeating and the others elect after its lease.
    let was_leader = replica.metrics().borrow().state == openraft::ServerState::Leader;
    match tokio::time::timeout(DRAIN_TIMEOUT, replica.shutdown()).await {
        Ok(Ok(())) => {}
        Ok(Err(error)) => {
            tracing::warn!(replica = config.id, %error, "raft core did not stop cleanly");
        }
        Err(_) => tracing::warn!(
            replica = config.id,
            timeout = ?DRAIN_TIMEOUT,
            "raft core did not stop in time (a stuck disk?); leaving it"
        ),
    }
    tracing::info!(replica = config.id, was_leader, "raft core stopped; closing the transport");
    // Last the replica transport, once the core no longer needs it.
    let _ = transport_stop_tx.send(true);
    let mut last = Tasks::default();
    if !transport_ended {
        if failure.is_some() {
            transport.abort();
        }
        last.push(transport);
    }
    if !last.join(DRAIN_TIMEOUT).await {
        tracing::warn!(replica = config.id, "the replica transport did not stop in time");
    }
    let _ = std::fs::remove_file(&config.admin_socket);
    tracing::info!(replica = config.id, elapsed = ?stopping.elapsed(), "stopped");
    failure.map_or(Ok(()), Err)
}

/// Server tasks a stopping replica waits for (bounded), whatever they return.
#[derive(Default)]
struct Tasks {
    aborts: Vec<tokio::task::AbortHandle>,
    joins: Vec<std::pin::Pin<Box<dyn Future<Output = ()> + Send>>>,
}

impl Tasks {
    fn push<T: Send + 'static>(&mut self, task: tokio::task::JoinHandle<T>) {
        self.aborts.push(task.abort_handle());
        self.joins.push(Box::pin(async move {
            let _ = task.await;
        }));
    }

    /// Waits for every task, at most `timeout`; then aborts those still running and waits
    /// for them to end (an aborted task ends at its next await). Whether all ended in
    /// time.
    async fn join(self, timeout: Duration) -> bool {
        let Self { aborts, joins } = self;
        let mut all = futures::future::join_all(joins);
        if tokio::time::timeout(timeout, &mut all).await.is_ok() {
            return true;
        }
        for abort in aborts {
            abort.abort();
        }
        all.await;
        false
    }
}

/// Resolves with openraft's reason once `replica`'s raft core stopped on its own (it
/// fail-stops on a storage error); never while it runs.
async fn core_stopped(replica: FederationReplica) -> String {
    let mut metrics = replica.metrics();
    loop {
        if let Err(fatal) = &metrics.borrow_and_update().running_state {
            return fatal.to_string();
        }
        if metrics.changed().await.is_err() {
            return "the raft core ended".to_string();
        }
    }
}

/// Why a server task that should run until shutdown ended.
fn task_failure<E: std::fmt::Display>(
    what: &'static str,
    result: Result<Result<(), E>, tokio::task::JoinError>,
) -> ServerError {
    let message = match result {
        Ok(Ok(())) => "stopped unexpectedly".to_string(),
        Ok(Err(error)) => error.to_string(),
        Err(error) => error.to_string(),
    };
    ServerError::Serve(what, message)
}

async fn bind(
    what: &'static str,
    addr: std::net::SocketAddr,
) -> Result<tokio::net::TcpListener, ServerError> {
    tokio::net::TcpListener::bind(addr).await.map_err(|source| ServerError::Bind {
        what,
        addr: addr.to_string(),
        source,
    })
}

/// Only the owner may use the admin socket: it grants full admin rights.
fn restrict_socket(path: &std::path::Path) {
    use std::os::unix::fs::PermissionsExt as _;
    if let Err(error) = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)) {
        tracing::warn!(%error, path = %path.display(), "cannot restrict the admin socket");
    }
}

/// Keeps this replica's API address registered in the federation state, so that agents
/// and operators can find every replica from any one of them.
async fn register_api_address(
    replica: FederationReplica,
    config: ServerConfig,
    stop: impl Future<Output = ()>,
) {
    let work = async {
        let mut metrics = replica.metrics();
        loop {
            let (has_leader, is_member) = {
                let m = metrics.borrow_and_update();
                let is_member = m.membership_config.membership().get_node(&config.id).is_some();
                (m.current_leader.is_some(), is_member)
            };
            let registered = replica.state().read(|s| {
                s.replicas.get(&config.id).is_some_and(|r| {
                    r.api_addr == config.advertise_api && r.raft_addr == config.advertise_raft
                })
            });
            if has_leader && is_member && !registered {
                let command = Command::RegisterReplica {
                    id: config.id,
                    raft_addr: config.advertise_raft.clone(),
                    api_addr: config.advertise_api.clone(),
                };
                match replica.write(command.encode()).await {
                    Ok(outcome) => {
                        tracing::info!(
                            replica = config.id,
                            index = outcome.index,
                            "API address registered"
                        );
                        // Let the local state catch up before checking it again.
                        let _ = replica
                            .raft()
                            .wait(Some(Duration::from_secs(5)))
                            .applied_index_at_least(Some(outcome.index), "registration applied")
                            .await;
                    }
                    Err(error) => tracing::debug!(%error, "API address not registered yet"),
                }
            }
            // Re-check on every metrics change, and at least every few seconds in case a
            // snapshot install replaced the state.
            let _ = tokio::time::timeout(Duration::from_secs(3), metrics.changed()).await;
        }
    };
    tokio::select! {
        () = work => {}
        () = stop => {}
    }
}
