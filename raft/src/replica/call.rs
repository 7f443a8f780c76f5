//! Leader calls made through a replica: run by its own [`LeaderHandler`] when it leads,
//! else forwarded to the leader it knows, and retried like writes.
//!
//! [`LeaderHandler`]: crate::LeaderHandler

use std::time::Duration;

use tonic::Code;

use super::Replica;
use super::error::{ReplicaError, forward_failed, rerouted};
use crate::leader::{KnownLeader, known_leader, leader_moved_from};
use crate::leader_call;
use crate::state_machine::StateMachine;

impl<S: StateMachine> Replica<S> {
    /// Has the leader's [`LeaderHandler`] handle `request` and returns its response,
    /// without going through the log: runs the handler here if this replica leads (by its
    /// own metrics), else forwards the call to the leader it knows, retrying like
    /// [`Replica::write`] when no leader is known or the leader changes.
    ///
    /// A local call is not bounded in time; each forwarded attempt is bounded by the
    /// transport's RPC timeout. "Leads" is this replica's own view: a deposed leader that
    /// has not noticed yet may still handle a call, and a call may be handled more than
    /// once (a forwarded attempt that timed out may have run), so handlers must tolerate
    /// both.
    ///
    /// # Errors
    /// [`ReplicaError::NoLeaderHandler`] when the leader has no handler installed (this
    /// replica's own, when it leads, is checked at once; a forwarded call is retried first);
    /// [`ReplicaError::LeaderHandler`] when this replica leads and its handler panicked;
    /// [`ReplicaError::NoLeader`] or [`ReplicaError::Forward`] when no leader could be
    /// reached within the retries.
    ///
    /// [`LeaderHandler`]: crate::LeaderHandler
    #[tracing::instrument(level = "debug", skip_all, fields(replica = self.id, bytes = request.len()))]
    pub async fn call_leader(&self, request: Vec<u8>) -> Result<Vec<u8>, ReplicaError> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let error = match self.known_leader() {
                KnownLeader::This => {
                    let handler = self
                        .leader_handler
                        .get()
                        .ok_or(ReplicaError::NoLeaderHandler { replica: self.id })?;
                    return leader_call::run(&handler, request)
                        .await
                        .map_err(ReplicaError::LeaderHandler);
                }
                KnownLeader::Other { leader_id, leader_addr } => {
                    let call = self.network.leader_call(&leader_addr, request.clone());
                    tokio::select! {
                        result = call => match result {
                            Ok(response) => return Ok(response),
                            Err(status) if status.code() == Code::Unimplemented => {
                                ReplicaError::NoLeaderHandler { replica: leader_id }
                            }
                            Err(status) => forward_failed(leader_id, leader_addr, status),
                        },
                        moved = leader_moved_from(&self.raft, leader_id) => {
                            self.metrics.forwards_rerouted.inc();
                            rerouted(leader_id, leader_addr, moved)
                        }
                    }
                }
                KnownLeader::Unknown => ReplicaError::NoLeader,
            };
            if attempt > self.write_retries {
                return Err(error);
            }
            tracing::debug!(%error, attempt, "leader call not accepted yet, retrying");
            self.wait_for_leader(Duration::from_millis(50 * u64::from(attempt))).await;
        }
    }

    /// The leader as this replica's metrics know it.
    fn known_leader(&self) -> KnownLeader {
        known_leader(&self.raft, self.id)
    }
}
