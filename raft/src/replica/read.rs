//! Reads: served from this replica's applied state, linearizable (once the leader has
//! confirmed its read index with a quorum and this replica has applied up to it) or stale.

use std::time::Duration;

use openraft::error::RaftError;

use super::Replica;
use super::error::{RaftFailure, ReplicaError, forward_failed, rerouted};
use crate::leader::{leader_moved_from, leader_read_index};
use crate::state_machine::StateMachine;

/// How fresh a read must be.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Consistency {
    /// Confirmed with the leader and a quorum, and served once this replica has applied
    /// everything committed before the read started.
    #[default]
    Linearizable,
    /// Whatever this replica has applied, without asking anyone.
    Stale,
}

impl<S: StateMachine> Replica<S> {
    /// Runs `read` on the state at the requested consistency and returns its result with
    /// the applied index it was served at.
    ///
    /// # Errors
    /// A linearizable read could not be confirmed with the leader, or this replica's raft
    /// core stopped (then no read is served, not even a stale one).
    pub async fn read<R>(
        &self,
        consistency: Consistency,
        read: impl FnOnce(&S) -> R,
    ) -> Result<(R, u64), ReplicaError> {
        // A replica whose core stopped (a storage error) no longer applies anything: its
        // state would answer stale reads forever. It refuses them instead.
        if let Err(fatal) = &self.raft.metrics().borrow().running_state {
            return Err(fatal.clone().into());
        }
        if consistency == Consistency::Linearizable {
            let read_index = self.read_index().await?;
            if let Some(index) = read_index {
                self.raft
                    .wait(Some(Duration::from_secs(10)))
                    .applied_index_at_least(Some(index), "linearizable read")
                    .await
                    .map_err(|_| {
                        ReplicaError::Timeout(Duration::from_secs(10), "apply to reach read index")
                    })?;
            }
        }
        Ok(self.state.read_with_applied(read))
    }

    /// The log index a linearizable read must wait for, confirmed by the leader with a
    /// quorum (asked over the transport when this replica does not lead).
    ///
    /// # Errors
    /// No leader could confirm within the retries.
    pub async fn read_index(&self) -> Result<Option<u64>, ReplicaError> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let error = match leader_read_index(&self.raft).await {
                Ok((_, read_index)) => return Ok(read_index),
                Err(RaftError::APIError(openraft::error::CheckIsLeaderError::ForwardToLeader(
                    forward,
                ))) => match (forward.leader_id, forward.leader_node) {
                    (Some(leader_id), Some(node)) if leader_id != self.id => {
                        tokio::select! {
                            result = self.network.read_index(&node.addr) => match result {
                                Ok(index) => return Ok(index),
                                Err(status) => forward_failed(leader_id, node.addr, status),
                            },
                            moved = leader_moved_from(&self.raft, leader_id) => {
                                self.metrics.forwards_rerouted.inc();
                                rerouted(leader_id, node.addr, moved)
                            }
                        }
                    }
                    _ => ReplicaError::NoLeader,
                },
                Err(RaftError::APIError(e)) => RaftFailure::ReadIndex(Box::new(e)).into(),
                Err(RaftError::Fatal(e)) => return Err(e.into()),
            };
            if attempt > self.write_retries {
                return Err(error);
            }
            self.wait_for_leader(Duration::from_millis(50 * u64::from(attempt))).await;
        }
    }
}
