//! Stopping a replica: a leader first hands its leadership over to a voter that holds its
//! whole log, so the group need not wait out its lease to elect another.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use openraft::ServerState;

use super::Replica;
use super::error::{ReplicaError, StopReason};
use crate::state_machine::StateMachine;
use crate::types::{NodeId, RaftMetrics};

/// Longest of each of the two waits of a stopping leader's hand-over (a voter catching up,
/// the successor being elected).
const HAND_OVER_STEP: Duration = Duration::from_secs(2);

/// Why a stopping leader did not hand over (its followers then elect after its lease).
#[derive(Debug, thiserror::Error)]
enum HandOverError {
    /// No voter held the leader's whole log in time.
    #[error("no voter caught up: {0}")]
    NoVoterCaughtUp(String),
    /// It lost the lead while waiting.
    #[error("no longer leads")]
    NoLongerLeads,
    /// The chosen voter has no address in the membership.
    #[error("replica {0} has no address")]
    NoAddress(NodeId),
    /// The chosen voter refused to campaign.
    #[error("replica {0} refused to campaign: {1}")]
    Refused(NodeId, String),
    /// It campaigned, and no new leader was heard of in time.
    #[error("replica {0} campaigned, no successor known: {1}")]
    NoSuccessor(NodeId, String),
}

impl<S: StateMachine> Replica<S> {
    /// Stops the raft core. A leader first hands over ([`Self::hand_over`]): a voter
    /// whose log is as long as its own campaigns at once and wins with this replica's vote,
    /// so a three-voter group has a new leader within a round trip or two instead of
    /// after the lease (the upper election timeout) plus a random timeout. Where that
    /// does not work (no voter caught up in time, more than three voters: the others still
    /// hold the lease and refuse their votes, a peer of an older build) the followers
    /// elect after the lease as before.
    ///
    /// Then stops and joins this replica's own tasks ([`Replica::running_tasks`] is 0
    /// after it returns): the proposal loop (writes still queued fail, their outcome
    /// unknown) and the background tasks.
    ///
    /// # Errors
    /// The core task failed.
    pub async fn shutdown(&self) -> Result<(), ReplicaError> {
        match self.hand_over().await {
            Ok(Some(successor)) => {
                tracing::info!(replica = self.id, successor, "leadership handed over");
            }
            Ok(None) => {}
            Err(reason) => {
                tracing::info!(
                    replica = self.id,
                    %reason,
                    "leadership not handed over; the others elect after the lease"
                );
            }
        }
        let stopped = self.raft.shutdown().await;
        // With the core gone, nothing the proposal loop or the background tasks do could
        // matter: stop them and wait until each has ended.
        self.proposer.stop().await;
        self.tasks.stop().await;
        stopped.map_err(|e| StopReason::Shutdown(Arc::new(e)).into())
    }

    /// Leadership hand-over by a stopping leader (openraft 0.9 has no leadership
    /// transfer): stops proposing, so its log stops growing; waits (up to one upper
    /// election timeout, at most 2 s) for a voter whose replicated log reaches this
    /// leader's last entry; asks it to campaign now ([`Network::timeout_now`]); and waits
    /// (as long again) until a new leader is known. The candidate's vote request, for a
    /// higher term with a log as long as ours, is granted by this replica — a leader's own
    /// vote is refreshed only when it changes, so past its first lease after election it
    /// does not refuse, and once it has seen the candidate's term its vote is no longer a
    /// committed one that a lease protects — and with three voters the two votes are a
    /// quorum. The other followers refuse until the lease runs out, so with five or more
    /// voters this is no faster than the lease. Returns the successor asked, or `None`
    /// when this replica does not lead.
    ///
    /// # Errors
    /// Why the hand-over did not happen (the caller stops the core anyway).
    ///
    /// [`Network::timeout_now`]: crate::network::Network::timeout_now
    async fn hand_over(&self) -> Result<Option<NodeId>, HandOverError> {
        let m = self.raft.metrics().borrow().clone();
        if m.state != ServerState::Leader || m.running_state.is_err() {
            return Ok(None);
        }
        let term = m.current_term;
        let voters: BTreeSet<NodeId> =
            m.membership_config.membership().voter_ids().filter(|v| *v != self.id).collect();
        if voters.is_empty() {
            return Ok(None);
        }
        // Nothing more is proposed here: the log stops growing, so a voter can hold all
        // of it (its vote request is refused by a longer log).
        self.network.close_proposals();
        let caught_up = |m: &RaftMetrics| {
            let last = m.last_log_index?;
            let replication = m.replication.as_ref()?;
            voters.iter().copied().find(|v| {
                replication.get(v).copied().flatten().is_some_and(|matched| matched.index >= last)
            })
        };
        // Each wait at most one upper election timeout, and at most HAND_OVER_STEP: the
        // whole hand-over stays well inside a supervisor's stop timeout.
        let within = self.election_timeout_max.min(HAND_OVER_STEP);
        let m = self
            .raft
            .wait(Some(within))
            .metrics(|m| caught_up(m).is_some(), "a voter to hold the leader's whole log")
            .await
            .map_err(|e| HandOverError::NoVoterCaughtUp(e.to_string()))?;
        if m.state != ServerState::Leader || m.current_term != term {
            return Err(HandOverError::NoLongerLeads);
        }
        let successor =
            caught_up(&m).ok_or_else(|| HandOverError::NoVoterCaughtUp("none".into()))?;
        let addr = m
            .membership_config
            .membership()
            .get_node(&successor)
            .map(|n| n.addr.clone())
            .ok_or(HandOverError::NoAddress(successor))?;
        self.network
            .timeout_now(&addr, self.id, term)
            .await
            .map_err(|status| HandOverError::Refused(successor, status.to_string()))?;
        // Not only until this replica steps down — it may do so on seeing the candidate's
        // term in a replication answer, before the vote request arrives — but until it
        // hears from a new leader: its core must still be running to grant the vote.
        let id = self.id;
        self.raft
            .wait(Some(within))
            .metrics(
                |m| m.current_term > term && m.current_leader.is_some_and(|l| l != id),
                "a successor to lead",
            )
            .await
            .map_err(|e| HandOverError::NoSuccessor(successor, e.to_string()))?;
        Ok(Some(successor))
    }
}
