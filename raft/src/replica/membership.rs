//! The group's membership: initializing a new group, adding a replica (a learner that
//! catches up, then a voter) and removing one, each change bounded in time.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use openraft::error::{ClientWriteError, RaftError};
use openraft::{ChangeMembers, ServerState};

use super::Replica;
use super::error::{CatchUpError, MembershipRefusal, ReplicaError, not_leader};
use crate::state_machine::StateMachine;
use crate::types::{Node, NodeId, RaftMetrics};

/// Time a new replica has to acknowledge its first replication message.
const CATCH_UP_FIRST_CONTACT: Duration = Duration::from_secs(10);
/// Time a membership change has to commit.
const MEMBERSHIP_CHANGE_TIMEOUT: Duration = Duration::from_secs(30);
/// Time a new replica has to catch up with the leader's log.
const CATCH_UP_TIMEOUT: Duration = Duration::from_secs(120);

impl<S: StateMachine> Replica<S> {
    /// Initializes a new group with `members` (id → transport address) as its voters;
    /// an empty map means this replica alone.
    ///
    /// # Errors
    /// The group is already initialized, or this replica is not among the members.
    pub async fn initialize(&self, members: BTreeMap<NodeId, String>) -> Result<(), ReplicaError> {
        let members: BTreeMap<NodeId, Node> = if members.is_empty() {
            BTreeMap::from([(self.id, Node::new(self.raft_addr.clone()))])
        } else {
            members.into_iter().map(|(id, addr)| (id, Node::new(addr))).collect()
        };
        self.raft.initialize(members).await.map_err(|e| match e {
            RaftError::APIError(e) => MembershipRefusal::Initialize(Box::new(e)).into(),
            RaftError::Fatal(e) => e.into(),
        })
    }

    /// Whether this replica has a log (was initialized or joined a group).
    ///
    /// # Errors
    /// The raft core stopped.
    pub async fn is_initialized(&self) -> Result<bool, ReplicaError> {
        Ok(self.raft.is_initialized().await?)
    }

    /// Adds replica `id` at transport address `addr`: first as a learner that receives
    /// the log (or a snapshot), then — unless `learner_only` — promotes it to voter once
    /// it has caught up. Must run on the leader.
    ///
    /// # Errors
    /// This replica does not lead, or the change was refused.
    pub async fn add_member(
        &self,
        id: NodeId,
        addr: String,
        learner_only: bool,
    ) -> Result<u64, ReplicaError> {
        self.ensure_leader()?;
        let already_member =
            self.raft.metrics().borrow().membership_config.membership().get_node(&id).is_some();
        let response = self
            .raft
            .add_learner(id, Node::new(addr.clone()), false)
            .await
            .map_err(|e| self.membership_error(e))?;
        if let Err(error) = self.wait_for_catch_up(id, response.log_id.index).await {
            if !already_member {
                // Do not leave an unreachable learner behind for the leader to chase.
                let _ = self.change(ChangeMembers::RemoveNodes(BTreeSet::from([id]))).await;
            }
            let removed = !already_member;
            return Err(MembershipRefusal::NotCaughtUp { id, addr, source: error, removed }.into());
        }
        if learner_only {
            return Ok(response.log_id.index);
        }
        self.change(ChangeMembers::AddVoterIds(BTreeSet::from([id]))).await
    }

    /// Commits one membership change, bounded in time: a change that cannot reach a
    /// quorum (or a leader that steps down mid-change) is reported, never waited on
    /// forever. Returns the log index of the change.
    async fn change(&self, change: ChangeMembers<NodeId, Node>) -> Result<u64, ReplicaError> {
        match tokio::time::timeout(
            MEMBERSHIP_CHANGE_TIMEOUT,
            self.raft.change_membership(change, false),
        )
        .await
        {
            Ok(Ok(response)) => Ok(response.log_id.index),
            Ok(Err(error)) => Err(self.membership_error(error)),
            Err(_) => Err(ReplicaError::Timeout(
                MEMBERSHIP_CHANGE_TIMEOUT,
                "the membership change to commit",
            )),
        }
    }

    /// Waits until learner `id` has replicated up to `index`: fails if it shows no
    /// progress at all within [`CATCH_UP_FIRST_CONTACT`], or has not caught up within
    /// [`CATCH_UP_TIMEOUT`].
    async fn wait_for_catch_up(&self, id: NodeId, index: u64) -> Result<(), CatchUpError> {
        let matched = |m: &RaftMetrics| {
            m.replication.as_ref().and_then(|r| r.get(&id).copied()).flatten().map(|l| l.index)
        };
        self.raft
            .wait(Some(CATCH_UP_FIRST_CONTACT))
            .metrics(|m| matched(m).is_some(), "learner's first acknowledgement")
            .await
            .map_err(|_| CatchUpError::NoAnswer { within: CATCH_UP_FIRST_CONTACT })?;
        self.raft
            .wait(Some(CATCH_UP_TIMEOUT))
            .metrics(|m| matched(m).is_some_and(|i| i >= index), "learner to catch up")
            .await
            .map_err(|_| CatchUpError::Behind { index, within: CATCH_UP_TIMEOUT })?;
        Ok(())
    }

    /// Removes replica `id` from the group (as voter and learner). Must run on the leader.
    ///
    /// # Errors
    /// This replica does not lead, the id is unknown, or the change was refused.
    pub async fn remove_member(&self, id: NodeId) -> Result<u64, ReplicaError> {
        self.ensure_leader()?;
        let membership = self.raft.metrics().borrow().membership_config.clone();
        let is_voter = membership.membership().voter_ids().any(|v| v == id);
        let is_learner = membership.membership().learner_ids().any(|v| v == id);
        if !is_voter && !is_learner {
            return Err(MembershipRefusal::NotAMember { id }.into());
        }
        let mut index = 0;
        if is_voter {
            index = self.change(ChangeMembers::RemoveVoters(BTreeSet::from([id]))).await?;
        }
        let still_node =
            self.raft.metrics().borrow().membership_config.membership().get_node(&id).is_some();
        if still_node {
            index = self.change(ChangeMembers::RemoveNodes(BTreeSet::from([id]))).await?;
        }
        Ok(index)
    }

    fn ensure_leader(&self) -> Result<(), ReplicaError> {
        let metrics = self.raft.metrics().borrow().clone();
        if metrics.state == ServerState::Leader {
            return Ok(());
        }
        match metrics.current_leader {
            Some(leader_id) => {
                let leader_addr = metrics
                    .membership_config
                    .membership()
                    .get_node(&leader_id)
                    .map(|n| n.addr.clone())
                    .unwrap_or_default();
                Err(ReplicaError::NotLeader { this: self.id, leader_id, leader_addr })
            }
            None => Err(ReplicaError::NoLeader),
        }
    }

    fn membership_error(
        &self,
        error: RaftError<NodeId, openraft::error::ClientWriteError<NodeId, Node>>,
    ) -> ReplicaError {
        match error {
            RaftError::APIError(ClientWriteError::ForwardToLeader(forward)) => {
                not_leader(self.id, forward)
            }
            RaftError::APIError(e) => MembershipRefusal::Change(Box::new(e)).into(),
            RaftError::Fatal(e) => e.into(),
        }
    }
}
