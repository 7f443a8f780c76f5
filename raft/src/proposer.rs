//! Proposal batching: writes that wait together share one log entry, and one forward.
//!
//! openraft 0.9 makes every client write an entry of its own, and its core waits for each
//! entry to be durable before it takes the next message (`append_to_log` awaits the log
//! flush). One entry per write would cap the group at one fsync per write however many
//! clients wait. The proposer queues writes and hands raft core everything queued as one
//! entry (a [`Command`] is a batch) while earlier proposals are still in flight; the
//! state machine applies the commands in order at the entry's index and each writer gets
//! its own response. A write alone waits for nothing but its own entry.
//!
//! On a follower the same batch goes to the leader in one `ForwardWrite` RPC, which the
//! leader proposes as one unit of its own next entry. Writes that arrived forwarded are
//! never forwarded again: a replica that does not lead answers them with the leader it
//! knows, and the follower that sent them retries.
//!
//! A batch shares its fate: committed, every command is applied; refused (this replica
//! does not lead, or stopped leading), every writer gets the refusal and retries or
//! forwards on its own.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use federator_proto::raft as pb;
use openraft::error::{ClientWriteError, ForwardToLeader};
use serde_bytes::ByteBuf;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot, watch};
use tokio::task::{JoinHandle, JoinSet};
use tonic::Status;

use crate::causes::{ForwardFailure, StopReason};
use crate::convert::IntoProto as _;
use crate::leader::{KnownLeader, known_leader, leader_moved_from};
use crate::metrics::ConsensusMetrics;
use crate::network::client::Network;
use crate::network::server::{ForwardedWrites, not_leader, stopped as stopped_status};
use crate::tasks::Live;
use crate::types::{Command, LogId, Node, NodeId, Raft};

/// Commands per proposal at most.
const MAX_COMMANDS: usize = 1024;
/// Bytes of commands per proposal at most; a larger write is proposed alone. Entries
/// stay within what one AppendEntries carries in openraft's short RPC timeout.
const MAX_BYTES: usize = 1 << 20;
/// Proposals (or forwards) in flight at once: while one is made durable and replicated,
/// the next is already appended behind it, and what arrives meanwhile waits to be the
/// one after.
const IN_FLIGHT: usize = 2;
/// Writes waiting for a proposal; more wait for room (back-pressure on callers).
const QUEUE: usize = 8192;

/// What committed writes returned.
#[derive(Debug)]
pub(crate) struct Proposed {
    /// The entry the commands were committed in.
    pub log_id: LogId,
    /// The state machine's response to each command, in order.
    pub responses: Vec<Vec<u8>>,
    /// Committed through the leader rather than proposed by this replica: it may not be
    /// applied here yet.
    pub forwarded: bool,
}

/// Why writes did not commit.
#[derive(Clone, Debug)]
pub(crate) enum ProposeError {
    /// This replica does not lead and did not forward; the leader, when known.
    ForwardToLeader(ForwardToLeader<NodeId, Node>),
    /// Forwarding to the leader failed.
    Forward {
        /// The leader the writes were sent to.
        leader_id: NodeId,
        /// Its transport address.
        leader_addr: String,
        /// What failed.
        source: ForwardFailure,
        /// Whether the leader may have proposed them (the call reached it and no answer
        /// came back): the outcome is then unknown, and proposing them again could apply
        /// them twice.
        maybe_proposed: bool,
    },
    /// Raft refused the write.
    Refused(Box<ClientWriteError<NodeId, Node>>),
    /// Raft core or the proposer stopped; the outcome is unknown.
    Stopped(StopReason),
}

/// A handle to one replica's proposal queue; clones share it, and the proposal loop's
/// task: [`Proposer::stop`] ends it, and dropping the last clone aborts it.
#[derive(Clone)]
pub(crate) struct Proposer {
    queue: mpsc::Sender<Queued>,
    task: Arc<LoopTask>,
}

/// The proposal loop's task, aborted when dropped.
struct LoopTask {
    /// Set to tell the loop to stop.
    stop: watch::Sender<bool>,
    handle: parking_lot::Mutex<Option<JoinHandle<()>>>,
}

impl Drop for LoopTask {
    fn drop(&mut self) {
        if let Some(handle) = self.handle.get_mut().take() {
            handle.abort();
        }
    }
}

/// Writes waiting for a proposal, kept together in one entry.
struct Queued {
    commands: Vec<Vec<u8>>,
    /// Whether this replica may forward them to the leader (false for writes that
    /// arrived forwarded).
    forwardable: bool,
    reply: oneshot::Sender<Result<Proposed, ProposeError>>,
    /// When the writes reached the proposer.
    queued: Instant,
}

/// Where a batch goes.
struct Route {
    raft: Raft,
    id: NodeId,
    /// Forwards to the leader; `None`: never forward.
    network: Option<Network>,
    /// Counts re-routed forwards.
    metrics: ConsensusMetrics,
    /// Counts the batch tasks.
    live: Live,
}

impl Proposer {
    /// Starts the proposal loop of replica `id` on the current tokio runtime; with a
    /// `network` it forwards to the leader when another replica leads. The loop and the
    /// tasks it spawns are counted in `live`; it ends at [`Proposer::stop`], or when
    /// the last handle is dropped.
    pub(crate) fn start(
        raft: Raft,
        id: NodeId,
        network: Option<Network>,
        metrics: ConsensusMetrics,
        live: Live,
    ) -> Self {
        let (queue, queued) = mpsc::channel(QUEUE);
        let (stop, stopping) = watch::channel(false);
        let route = Route { raft, id, network, metrics: metrics.clone(), live: live.clone() };
        let handle = tokio::spawn(live.track(run(Arc::new(route), queued, metrics, stopping)));
        let task = Arc::new(LoopTask { stop, handle: parking_lot::Mutex::new(Some(handle)) });
        Self { queue, task }
    }

    /// Stops the proposal loop and waits until it and every batch it had in flight have
    /// ended; their writers learn that the queue stopped (the outcome is unknown). Writes
    /// queued later fail the same way.
    pub(crate) async fn stop(&self) {
        let _ = self.task.stop.send(true);
        let handle = self.task.handle.lock().take();
        if let Some(handle) = handle {
            // Ended, or panicked (already reported by the runtime).
            let _ = handle.await;
        }
    }

    /// Proposes `command` with whatever else waits, on this replica if it leads or
    /// forwarded to the leader, and waits until it is committed (or refused).
    pub(crate) async fn propose(&self, command: Vec<u8>) -> Result<Proposed, ProposeError> {
        self.submit(vec![command], true).await
    }

    /// Proposes forwarded `commands` together in this replica's next entry, never
    /// forwarding them again.
    pub(crate) async fn propose_forwarded(
        &self,
        commands: Vec<Vec<u8>>,
    ) -> Result<Proposed, ProposeError> {
        self.submit(commands, false).await
    }

    /// Queues `command` to be proposed by this replica only (never forwarded) and returns
    /// once it is queued, with the receiver of its outcome. While this replica leads,
    /// commands queued one after the other are committed in that order.
    pub(crate) async fn enqueue_here(&self, command: Vec<u8>) -> Result<Pending, ProposeError> {
        self.enqueue(vec![command], false).await
    }

    async fn submit(
        &self,
        commands: Vec<Vec<u8>>,
        forwardable: bool,
    ) -> Result<Proposed, ProposeError> {
        self.enqueue(commands, forwardable).await?.outcome().await
    }

    async fn enqueue(
        &self,
        commands: Vec<Vec<u8>>,
        forwardable: bool,
    ) -> Result<Pending, ProposeError> {
        let (reply, answer) = oneshot::channel();
        let queued = Instant::now();
        let writes = Queued { commands, forwardable, reply, queued };
        self.queue.send(writes).await.map_err(|_| stopped())?;
        Ok(Pending(answer))
    }
}

impl ForwardedWrites for Proposer {
    fn propose(
        &self,
        commands: Vec<Vec<u8>>,
    ) -> Pin<Box<dyn Future<Output = Result<pb::ForwardWriteResponse, Status>> + Send + '_>> {
        Box::pin(async move {
            match self.propose_forwarded(commands).await {
                Ok(written) => Ok(pb::ForwardWriteResponse {
                    log_id: Some(written.log_id.into_proto()),
                    responses: written.responses,
                }),
                Err(ProposeError::ForwardToLeader(forward)) => Err(not_leader(&forward)),
                Err(ProposeError::Refused(error)) => {
                    Err(Status::internal(format!("write failed: {error}")))
                }
                Err(ProposeError::Forward { source, .. }) => {
                    Err(Status::internal(format!("write failed: {source}")))
                }
                Err(ProposeError::Stopped(error)) => Err(stopped_status(&error)),
            }
        })
    }
}

/// A queued proposal's outcome, to await.
pub(crate) struct Pending(oneshot::Receiver<Result<Proposed, ProposeError>>);

impl Pending {
    /// Waits until the proposal is committed (or refused).
    pub(crate) async fn outcome(self) -> Result<Proposed, ProposeError> {
        self.0.await.map_err(|_| stopped())?
    }
}

fn stopped() -> ProposeError {
    ProposeError::Stopped(StopReason::QueueClosed)
}

/// Takes what is queued, up to the limits, whenever fewer than [`IN_FLIGHT`] batches are
/// in flight, and proposes or forwards it as one batch.
/// Ends when every handle is dropped or `stopping` turns true; then stops the batches in
/// flight and waits for them.
async fn run(
    route: Arc<Route>,
    queued: mpsc::Receiver<Queued>,
    metrics: ConsensusMetrics,
    mut stopping: watch::Receiver<bool>,
) {
    // The tasks answering the batches in flight (at most `IN_FLIGHT` running, plus
    // finished ones until reaped).
    let mut batches = JoinSet::new();
    tokio::select! {
        () = batch_loop(&route, queued, &metrics, &mut batches) => {}
        _ = stopping.wait_for(|stop| *stop) => {}
    }
    batches.shutdown().await;
}

async fn batch_loop(
    route: &Arc<Route>,
    mut queued: mpsc::Receiver<Queued>,
    metrics: &ConsensusMetrics,
    batches: &mut JoinSet<()>,
) {
    let in_flight = Arc::new(Semaphore::new(IN_FLIGHT));
    let mut carried: Option<Queued> = None;
    loop {
        let first = match carried.take() {
            Some(first) => first,
            None => match queued.recv().await {
                Some(first) => first,
                None => return,
            },
        };
        // Wait for room first: what arrives meanwhile joins this batch.
        let Ok(permit) = Arc::clone(&in_flight).acquire_owned().await else { return };
        while batches.try_join_next().is_some() {}
        let mut commands = first.commands.len();
        let mut bytes = size(&first);
        let mut batch = vec![first];
        while commands < MAX_COMMANDS {
            let Ok(next) = queued.try_recv() else { break };
            if bytes + size(&next) > MAX_BYTES || commands + next.commands.len() > MAX_COMMANDS {
                carried = Some(next);
                break;
            }
            commands += next.commands.len();
            bytes += size(&next);
            batch.push(next);
        }
        metrics.proposal_commands.observe(commands as f64);
        route.dispatch(batch, permit, batches).await;
    }
}

fn size(queued: &Queued) -> usize {
    queued.commands.iter().map(Vec::len).sum()
}

impl Route {
    /// Forwards `batch` when another replica is known to lead, else proposes it here;
    /// the task that waits for the answer goes into `batches`. `permit` is held until the
    /// batch is answered.
    async fn dispatch(
        self: &Arc<Self>,
        mut batch: Vec<Queued>,
        permit: OwnedSemaphorePermit,
        batches: &mut JoinSet<()>,
    ) {
        if let Some(leader) = self.other_leader() {
            let route = Arc::clone(self);
            batches.spawn(self.live.track(async move {
                route.forward(batch, leader).await;
                drop(permit);
            }));
            return;
        }
        let counts: Vec<usize> = batch.iter().map(|q| q.commands.len()).collect();
        if self.network.as_ref().is_some_and(|n| n.fenced().is_some() || n.proposals_closed()) {
            // This replica leads a term it stepped down from (check-quorum), or hands over
            // as it stops: nothing it proposes could commit, or it would make its log
            // longer than its successor's. The writers retry once another leader is known.
            let none = ForwardToLeader { leader_id: None, leader_node: None };
            answer(batch, &counts, Err(ProposeError::ForwardToLeader(none)), false);
            return;
        }
        let queued = batch.iter().map(|q| q.queued).min().unwrap_or_else(Instant::now);
        let entry = Command(
            batch
                .iter_mut()
                .flat_map(|q| std::mem::take(&mut q.commands))
                .map(ByteBuf::from)
                .collect(),
        );
        let dispatched = Instant::now();
        let receiver = match self.raft.client_write_ff(entry).await {
            Ok(receiver) => receiver,
            Err(fatal) => {
                answer(batch, &counts, Err(ProposeError::Stopped(fatal.into())), false);
                return;
            }
        };
        let timeline = self.metrics.timeline.clone();
        batches.spawn(self.live.track(async move {
            let outcome = match receiver.await {
                Ok(Ok(written)) => {
                    timeline.answered(written.log_id.index, queued, dispatched);
                    Ok((
                        written.log_id,
                        written.data.0.into_iter().map(ByteBuf::into_vec).collect(),
                    ))
                }
                // Raft core knows another leader the metrics did not show yet: the
                // writers retry, and their next batch is forwarded.
                Ok(Err(ClientWriteError::ForwardToLeader(forward))) => {
                    Err(ProposeError::ForwardToLeader(forward))
                }
                Ok(Err(error)) => Err(ProposeError::Refused(Box::new(error))),
                Err(_) => Err(ProposeError::Stopped(StopReason::ProposalDropped)),
            };
            drop(permit);
            answer(batch, &counts, outcome, false);
        }));
    }

    /// The leader, when this replica can forward to it and it is another replica.
    fn other_leader(&self) -> Option<(NodeId, String)> {
        self.network.as_ref()?;
        match known_leader(&self.raft, self.id) {
            KnownLeader::Other { leader_id, leader_addr } => Some((leader_id, leader_addr)),
            KnownLeader::This | KnownLeader::Unknown => None,
        }
    }

    /// Sends the forwardable writes of `batch` to `leader` in one RPC; the others
    /// (writes that arrived forwarded) are answered with the leader to retry at.
    async fn forward(&self, batch: Vec<Queued>, (leader_id, leader_addr): (NodeId, String)) {
        let Some(network) = &self.network else { return };
        let (mut batch, kept): (Vec<_>, Vec<_>) = batch.into_iter().partition(|q| q.forwardable);
        if !kept.is_empty() {
            let forward = ForwardToLeader {
                leader_id: Some(leader_id),
                leader_node: Some(Node::new(leader_addr.clone())),
            };
            let counts: Vec<_> = kept.iter().map(|q| q.commands.len()).collect();
            answer(kept, &counts, Err(ProposeError::ForwardToLeader(forward)), false);
        }
        if batch.is_empty() {
            return;
        }
        let counts: Vec<_> = batch.iter().map(|q| q.commands.len()).collect();
        let commands = batch.iter_mut().flat_map(|q| std::mem::take(&mut q.commands)).collect();
        // A new leader known while the forward waits (the old one paused, partitioned or
        // deposed) ends the wait: the writers retry there at once instead of after the
        // transport's timeout. The outcome at the old leader is unknown either way.
        let outcome = tokio::select! {
            result = network.forward_write(&leader_addr, commands) => {
                result.map_err(|status| ProposeError::Forward {
                    leader_id,
                    leader_addr,
                    maybe_proposed: !not_proposed(&status),
                    source: status.into(),
                })
            }
            moved = leader_moved_from(&self.raft, leader_id) => {
                self.metrics.forwards_rerouted.inc();
                Err(ProposeError::Forward {
                    leader_id,
                    leader_addr,
                    source: ForwardFailure::LeaderMoved { moved },
                    maybe_proposed: true,
                })
            }
        };
        answer(batch, &counts, outcome, true);
    }
}

/// Whether a failed forward certainly proposed nothing: the replica called answered that
/// it does not lead, or no connection to it could be made.
fn not_proposed(status: &tonic::Status) -> bool {
    let message = status.message();
    status.code() == tonic::Code::FailedPrecondition
        || (status.code() == tonic::Code::Unavailable
            && (message.contains("TCP connect to") || message.contains("TLS handshake with")))
}

/// Gives each writer its share of the responses (`counts[i]` for `batch[i]`), or every
/// writer the batch's error. `forwarded`: the leader committed them.
fn answer(
    batch: Vec<Queued>,
    counts: &[usize],
    outcome: Result<(LogId, Vec<Vec<u8>>), ProposeError>,
    forwarded: bool,
) {
    let expected: usize = counts.iter().sum();
    let outcome = match outcome {
        Ok((log_id, responses)) if responses.len() != expected => {
            Err(ProposeError::Stopped(StopReason::ResponseCount {
                log_id,
                answered: responses.len(),
                expected,
            }))
        }
        other => other,
    };
    match outcome {
        Ok((log_id, responses)) => {
            let mut responses = responses.into_iter();
            for (queued, &count) in batch.into_iter().zip(counts) {
                let responses = responses.by_ref().take(count).collect();
                let _ = queued.reply.send(Ok(Proposed { log_id, responses, forwarded }));
            }
        }
        Err(error) => {
            for queued in batch {
                let _ = queued.reply.send(Err(error.clone()));
            }
        }
    }
}
