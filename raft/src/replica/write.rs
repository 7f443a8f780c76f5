//! Writes: proposed through the batching proposer (forwarded to the leader when another
//! replica leads, retried while no leader took them), proposed on this replica only, or
//! queued here in order; and, for a write forwarded through this replica, the wait until
//! it is applied here too.

use std::time::Duration;

use openraft::error::{ClientWriteError, RaftError};
use serde_bytes::ByteBuf;

use super::Replica;
use super::error::{RaftFailure, ReplicaError, not_leader};
use crate::proposer::{Pending, ProposeError};
use crate::state_machine::StateMachine;
use crate::types::{Command, NodeId};

/// Time one write attempt has to commit.
const WRITE_ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a forwarded write waits to be applied on the replica that forwarded it.
const READ_YOUR_WRITES_TIMEOUT: Duration = Duration::from_secs(5);

/// What a committed write returned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WriteOutcome {
    /// Log index the command was committed at.
    pub index: u64,
    /// The state machine's response.
    pub response: Vec<u8>,
}

/// A write queued by [`Replica::queue_here`].
#[must_use = "a queued write's outcome is known only once it is awaited"]
pub struct QueuedWrite {
    pending: Pending,
    this: NodeId,
}

impl QueuedWrite {
    /// Waits until the write is committed and applied here (or refused).
    ///
    /// # Errors
    /// This replica does not lead (or stopped leading), raft refused the write, or it did
    /// not commit in time; the outcome is then unknown.
    pub async fn outcome(self) -> Result<WriteOutcome, ReplicaError> {
        let proposed = tokio::time::timeout(WRITE_ATTEMPT_TIMEOUT, self.pending.outcome())
            .await
            .map_err(|_| ReplicaError::Timeout(WRITE_ATTEMPT_TIMEOUT, "the write to commit"))?
            .map_err(|e| queued_write_error(self.this, e))?;
        Ok(WriteOutcome {
            index: proposed.log_id.index,
            response: proposed.responses.into_iter().next().unwrap_or_default(),
        })
    }
}

fn queued_write_error(this: NodeId, error: ProposeError) -> ReplicaError {
    match error {
        ProposeError::ForwardToLeader(forward) => not_leader(this, forward),
        ProposeError::Forward { leader_id, leader_addr, source, .. } => {
            ReplicaError::Forward { leader_id, leader_addr, source }
        }
        ProposeError::Refused(e) => RaftFailure::Write(e).into(),
        ProposeError::Stopped(e) => e.into(),
    }
}

impl<S: StateMachine> Replica<S> {
    /// Proposes `command`, on this replica if it leads or forwarded to the leader, and
    /// waits until it is committed and applied. Retries while no leader took it (none
    /// known, the one called does not lead or cannot be reached); never once a leader may
    /// have proposed it: a write forwarded to a leader that hangs, or that is replaced
    /// while the write waits there, fails at once with its outcome unknown, and the caller
    /// retries (proposing it again here could apply it twice).
    ///
    /// # Errors
    /// No leader took it within the retries, or one may have and did not answer; the
    /// outcome of the command is then unknown (it may still commit).
    #[tracing::instrument(level = "debug", skip_all, fields(replica = self.id, bytes = command.len()))]
    pub async fn write(&self, command: Vec<u8>) -> Result<WriteOutcome, ReplicaError> {
        self.check_cluster_version(&command).await?;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let proposed =
                tokio::time::timeout(WRITE_ATTEMPT_TIMEOUT, self.proposer.propose(command.clone()));
            let Ok(proposed) = proposed.await else {
                // Not committed in time (no quorum, or this replica leads a group it was
                // removed from): the outcome is unknown; let the caller decide.
                return Err(ReplicaError::Timeout(WRITE_ATTEMPT_TIMEOUT, "the write to commit"));
            };
            let error = match proposed {
                Ok(proposed) => {
                    if proposed.forwarded {
                        // Read your writes: once acknowledged here, the write is visible
                        // in this replica's state too — or the call fails.
                        self.wait_applied(proposed.log_id.index).await?;
                    }
                    return Ok(WriteOutcome {
                        index: proposed.log_id.index,
                        response: proposed.responses.into_iter().next().unwrap_or_default(),
                    });
                }
                // Not proposed anywhere (this replica's core, or the replica it forwarded
                // to, does not lead): retry once the leader is known again.
                Err(ProposeError::ForwardToLeader(_)) => ReplicaError::NoLeader,
                // Sent to the leader, no answer: proposing it again could apply it
                // twice (a second write of the same value between two others breaks a
                // register), so the caller learns the outcome is unknown and decides.
                Err(ProposeError::Forward { leader_id, leader_addr, source, maybe_proposed }) => {
                    let error = ReplicaError::Forward { leader_id, leader_addr, source };
                    if maybe_proposed {
                        return Err(error);
                    }
                    error
                }
                Err(ProposeError::Refused(e)) => return Err(RaftFailure::Write(e).into()),
                Err(ProposeError::Stopped(e)) => return Err(e.into()),
            };
            if attempt > self.write_retries {
                return Err(error);
            }
            tracing::debug!(%error, attempt, "write not accepted yet, retrying");
            self.wait_for_leader(Duration::from_millis(50 * u64::from(attempt))).await;
        }
    }

    /// Proposes `command` on this replica only — never forwarded, never batched, never
    /// retried — and waits until it is committed and applied. For writes only the
    /// current leader may make (a deposed leader's write must fail rather than reach its
    /// successor).
    ///
    /// # Errors
    /// This replica does not lead, raft refused the write, or it did not commit within
    /// `timeout` (its outcome is then unknown).
    pub async fn propose_here(
        &self,
        command: Vec<u8>,
        timeout: Duration,
    ) -> Result<WriteOutcome, ReplicaError> {
        self.check_cluster_version(&command).await?;
        if self.network.proposals_closed() {
            // Stopping and handing over: see `hand_over`.
            return Err(ReplicaError::NoLeader);
        }
        let written =
            tokio::time::timeout(timeout, self.raft.client_write(Command::single(command)))
                .await
                .map_err(|_| ReplicaError::Timeout(timeout, "the write to commit"))?;
        match written {
            Ok(written) => Ok(WriteOutcome {
                index: written.log_id.index,
                response: written
                    .data
                    .0
                    .into_iter()
                    .next()
                    .map(ByteBuf::into_vec)
                    .unwrap_or_default(),
            }),
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(forward))) => {
                Err(not_leader(self.id, forward))
            }
            Err(RaftError::APIError(e)) => Err(RaftFailure::Write(Box::new(e)).into()),
            Err(RaftError::Fatal(e)) => Err(e.into()),
        }
    }

    /// Queues `command` to be proposed on this replica only — never forwarded, never
    /// retried — and returns as soon as it is queued, with the write to await. Commands
    /// queued one after the other are committed in that order while this replica leads,
    /// so a caller can keep several in flight (a large upload in chunks) and still rely
    /// on their order. When leadership moves, the queued writes fail (`NotLeader`,
    /// `NoLeader`); some of them may have committed all the same.
    ///
    /// # Errors
    /// The replica is shutting down.
    pub async fn queue_here(&self, command: Vec<u8>) -> Result<QueuedWrite, ReplicaError> {
        self.check_cluster_version(&command).await?;
        let pending = self
            .proposer
            .enqueue_here(command)
            .await
            .map_err(|e| queued_write_error(self.id, e))?;
        Ok(QueuedWrite { pending, this: self.id })
    }

    /// Waits (bounded) until this replica has applied `index`, so that a write
    /// acknowledged through it is visible in its own state (read your writes).
    ///
    /// # Errors
    /// [`ReplicaError::NotAppliedHere`] when it did not apply the entry in time (it lags
    /// far behind, or its core stopped): the write is committed, but answering "written"
    /// would let the next stale read here miss it.
    async fn wait_applied(&self, index: u64) -> Result<(), ReplicaError> {
        self.raft
            .wait(Some(READ_YOUR_WRITES_TIMEOUT))
            .applied_index_at_least(Some(index), "a forwarded write to apply here")
            .await
            .map(|_| ())
            .map_err(|reason| ReplicaError::NotAppliedHere { index, reason })
    }
}
