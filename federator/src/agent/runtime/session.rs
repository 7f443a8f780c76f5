//! The session loop: one session with one replica at a time, moving to the next replica
//! when a session ends (see [`super`] for the order of a session): connecting (within
//! the session's deadlines), joining with a token, renewing or taking the lease and
//! starting its keeper, then publishing and watching until something ends the session.
//! A session that the federation refuses says what the operator should do, and takes a
//! new join token as soon as one is given.

use std::sync::Arc;
use std::time::{Duration, Instant};

use federator_proto::federation as pb;
use federator_proto::federation::federation_client::FederationClient;
use federator_proto::federation::watch_event::Event;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject as _;
use tokio::sync::watch;
use tonic::transport::{Channel, Endpoint};

use super::own_bundle::authorities_digest;
use super::session_error::{SessionError, refusal_next_step};
use super::sinks::SinkReport;
use super::status_writer::STATUS_PERIOD;
use super::{Agent, RunError, blocking};
use crate::agent::deadlines::{Deadlines, ReplicaFault, backoff, bounded, refused_backoff};
use crate::agent::lease::{LeaseError, LeaseKeeper, LeaseSnapshot, Renewal};
use crate::agent::sources::bundle::BundleState;
use crate::agent::status::FailoverStatus;
use crate::agent::store::{Membership, Published};
use crate::agent::view::ExportSet;
use crate::bundle::TrustBundle;
use crate::clock::unix_now_ms;
use crate::token::JoinToken;

/// How long a join may take. Generous, unlike the other calls: its token is single-use,
/// so a join that commits after the agent gave up on it could not be tried again, and no
/// lease is held yet.
const JOIN_TIMEOUT: Duration = Duration::from_secs(30);

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
    /// The task; aborted and joined when the session ends, aborted when dropped (the
    /// agent stopping in the middle of a session).
    task: tokio::task::JoinHandle<LeaseError>,
    /// The lease as the keeper knows it.
    updates: watch::Receiver<LeaseSnapshot>,
}

impl Drop for KeeperTask {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// How a session ended without an error.
enum SessionEnd {
    /// The watch stream ended; reconnect.
    StreamEnded,
    /// The agent's SVID changed: reconnect to present the new one.
    IdentityChanged,
}

impl Agent {
    /// The federation CA to verify replicas with: the configured file, or the one the
    /// membership (or the token) gives.
    fn federation_ca_pem(&self) -> Result<String, SessionError> {
        if let Some(path) = &self.config.file.federation_ca {
            return std::fs::read_to_string(path)
                .map_err(|source| SessionError::FederationCaFile { path: path.clone(), source });
        }
        self.membership
            .as_ref()
            .map(|m| m.federation_ca_pem.clone())
            .or_else(|| self.token.as_ref().map(|t| t.federation_ca_pem.clone()))
            .ok_or(SessionError::NoFederationCa)
    }

    /// Sessions, one replica at a time, forever. When a session ends the agent moves to
    /// the next replica of [`Agent::endpoints`]: at once while fewer failures in a row
    /// than there are replicas (a failover must not cost the lease), then with jittered
    /// exponential backoff up to [`Deadlines::max_backoff`].
    pub(super) async fn run_sessions(
        &mut self,
        mut bundle_rx: watch::Receiver<BundleState>,
        mut exports_rx: watch::Receiver<ExportSet>,
    ) -> Result<(), RunError> {
        let mut failures: u32 = 0;
        let mut refusals: u32 = 0;
        let mut next = 0usize;
        loop {
            let endpoints = self.endpoints();
            if endpoints.is_empty() {
                return Err(RunError::NoEndpoints);
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
                    let reason = error.describe();
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
    fn refusal_next_step(&self, error: &SessionError) -> Option<String> {
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
    ) -> Result<FederationClient<Channel>, SessionError> {
        let ca_pem = self.federation_ca_pem()?;
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
            let cert = cert.map_err(SessionError::FederationCaPem)?;
            roots.add(cert).map_err(SessionError::FederationCaCert)?;
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(SessionError::Tls)?
            .with_root_certificates(roots)
            .with_client_cert_resolver(self.identity.clone());
        tls.alpn_protocols = vec![b"h2".to_vec()];
        let endpoint = Endpoint::from_shared(format!("https://{addr}"))
            .map_err(SessionError::Endpoint)?
            .connect_timeout(deadlines.connect)
            .tcp_nodelay(true)
            .http2_keep_alive_interval(deadlines.ping_interval)
            .keep_alive_timeout(deadlines.ping_timeout)
            .keep_alive_while_idle(true);
        let connecting =
            endpoint.connect_with_connector(federator_raft::tls::connector(Arc::new(tls)));
        // The HTTP/2 handshake too: the connect timeout covers TCP and TLS.
        let channel = match tokio::time::timeout(deadlines.connect, connecting).await {
            Ok(Ok(channel)) => channel,
            Ok(Err(source)) => {
                return Err(SessionError::Connect { addr: addr.to_string(), source });
            }
            Err(_) => {
                let fault =
                    ReplicaFault::MissedDeadline { call: "connect", deadline: deadlines.connect };
                return Err(SessionError::ConnectTimeout { addr: addr.to_string(), fault });
            }
        };
        Ok(FederationClient::new(channel).max_decoding_message_size(64 << 20))
    }

    /// One session with the replica at `addr`; the lease keeper it started, if any, is
    /// stopped when it ends, and the lease as the keeper left it kept.
    async fn session(
        &mut self,
        addr: &str,
        bundle_rx: &mut watch::Receiver<BundleState>,
        exports_rx: &mut watch::Receiver<ExportSet>,
    ) -> Result<SessionEnd, SessionError> {
        let mut keeper = None;
        let result = self.session_with(addr, bundle_rx, exports_rx, &mut keeper).await;
        if let Some(mut keeper) = keeper {
            // (A task that ended may have been awaited already: not polled again.)
            if !keeper.task.is_finished() {
                keeper.task.abort();
                let _ = (&mut keeper.task).await;
            }
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
    ) -> Result<SessionEnd, SessionError> {
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
        let keeper = keeper_slot.as_mut().ok_or(SessionError::NoLeaseKeeper)?;

        let watch = client.watch(pb::WatchRequest { after_revision: self.view.revision });
        let mut stream = bounded("watch", deadlines.call, watch)
            .await?
            .map_err(|status| SessionError::Answered { call: "watch", status })?;
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
                    let Some(event) = message.map_err(SessionError::WatchBroke)? else {
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
                    let error = ended.map_err(SessionError::KeeperFailed)?;
                    return Err(SessionError::KeeperStopped(error));
                }
                Wake::Sink(Some(report)) => {
                    self.on_sink_report(report);
                    self.acknowledge(&mut client).await?;
                }
                Wake::Sink(None) => return Err(SessionError::SinksStopped),
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
    ) -> Result<(), SessionError> {
        let token = self.token.clone().ok_or(SessionError::NoJoinToken)?;
        let bundle = wait_for_bundle(bundle_rx).await?;
        let request = client.join(pb::JoinRequest {
            token: token.encode(),
            bundle: Some(pb::TrustBundle {
                trust_domain: token.trust_domain.clone(),
                spiffe_bundle_json: bundle.to_spiffe_json(),
                sequence: bundle.sequence,
            }),
        });
        let response = bounded("join", JOIN_TIMEOUT, request)
            .await?
            .map_err(|status| SessionError::Answered { call: "join", status })?;
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
}

/// Waits for the own bundle source to give a bundle (the join needs one).
async fn wait_for_bundle(
    rx: &mut watch::Receiver<BundleState>,
) -> Result<TrustBundle, SessionError> {
    loop {
        let state = rx.borrow_and_update().clone();
        if let Some(bundle) = state.bundle {
            return Ok(bundle);
        }
        if let Some(problem) = &state.problem {
            tracing::warn!(location = %problem.location, problem = %problem.message, "waiting for the cluster's bundle");
        }
        rx.changed().await.map_err(SessionError::BundleSourceStopped)?;
    }
}
