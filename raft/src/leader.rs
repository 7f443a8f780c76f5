//! The leader as one replica sees it: who leads by its raft metrics, the read index a
//! leader confirms with its quorum, and the moment another replica takes over. Shared by
//! the replica's own calls ([`crate::replica`]), the proposer that forwards writes
//! ([`crate::proposer`]) and the transport server that answers peers
//! ([`crate::network::server`]).

use openraft::ServerState;
use openraft::error::{CheckIsLeaderError, RaftError};

use crate::types::{LogId, Node, NodeId, Raft};

/// The leader as one replica's metrics know it.
pub(crate) enum KnownLeader {
    /// This replica leads.
    This,
    /// Another replica leads.
    Other {
        /// Its id.
        leader_id: NodeId,
        /// Its transport address.
        leader_addr: String,
    },
    /// No leader is known (or its address is not), or this replica is named leader but is
    /// not in the leader state yet.
    Unknown,
}

/// The leader as replica `id`'s raft metrics know it.
pub(crate) fn known_leader(raft: &Raft, id: NodeId) -> KnownLeader {
    let metrics = raft.metrics();
    let metrics = metrics.borrow();
    match metrics.current_leader {
        Some(leader) if leader == id && metrics.state == ServerState::Leader => KnownLeader::This,
        Some(leader) if leader != id => {
            match metrics.membership_config.membership().get_node(&leader) {
                Some(node) => {
                    KnownLeader::Other { leader_id: leader, leader_addr: node.addr.clone() }
                }
                None => KnownLeader::Unknown,
            }
        }
        _ => KnownLeader::Unknown,
    }
}

/// What a linearizable read served through this replica as leader waits for: openraft's
/// read log id, confirmed with a quorum, and the index to wait for — the higher of that
/// log id's index and the last index in this leader's log once leadership is confirmed.
///
/// openraft 0.9 restores a replica that led before a restart as the leader of its old
/// term at once, without a new blank entry: its read log id (its committed index as it
/// saved it, or the first entry of its term) can then be below entries the group
/// committed, and acknowledged, before the crash, until replication tells it again — a
/// read in that window missed them (found by the `kill-all` chaos scenario). Every
/// acknowledged write is in the leader's log, and every entry of it is committed or will
/// be while it leads, so the last one is safe to wait for; it costs a read at most the
/// commit of the writes in flight beside it.
///
/// # Errors
/// openraft's: this replica does not lead (the leader it knows), or its quorum did not
/// confirm it.
pub(crate) async fn leader_read_index(
    raft: &Raft,
) -> Result<(Option<LogId>, Option<u64>), RaftError<NodeId, CheckIsLeaderError<NodeId, Node>>> {
    let (read_log_id, _applied) = raft.get_read_log_id().await?;
    let last = raft.metrics().borrow().last_log_index;
    Ok((read_log_id, read_log_id.map(|id| id.index).max(last)))
}

/// Resolves with the new leader once `raft`'s metrics name a leader other than `from`
/// (possibly this replica): a call forwarded to `from` need not wait out its timeout —
/// `from` was deposed, or will be when it hears of the new term. Never resolves
/// otherwise.
pub(crate) async fn leader_moved_from(raft: &Raft, from: NodeId) -> NodeId {
    let mut metrics = raft.metrics();
    loop {
        if let Some(leader) = metrics.borrow_and_update().current_leader
            && leader != from
        {
            return leader;
        }
        if metrics.changed().await.is_err() {
            return std::future::pending().await;
        }
    }
}
