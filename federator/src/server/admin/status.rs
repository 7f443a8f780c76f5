//! What `federator status` shows of one replica: its role, term and indexes, the group's
//! members and how far each matched, and the state digest; and the membership an
//! `add-member`/`remove-member` answers with.

use std::collections::BTreeMap;

use federator_proto::admin as pb;
use openraft::ServerState;

use super::AdminService;
use crate::state::FederationState;

/// How old the state digest in a status answer may be (see `digest_cached`).
const STATUS_DIGEST_MAX_AGE: std::time::Duration = std::time::Duration::from_secs(1);

impl AdminService {
    pub(super) fn status(&self) -> pb::ReplicaStatus {
        let m = self.replica.metrics().borrow().clone();
        let membership = m.membership_config.membership();
        let (replicas, cached) = {
            let state = self.replica.state();
            // The digest comes with the index it was computed at, refreshed in the
            // background at most once a second however often status is polled (never
            // computed while the caller waits; none until the first refresh ends).
            (state.read(|s| s.replicas.clone()), state.digest_cached(STATUS_DIGEST_MAX_AGE))
        };
        let member = |id: u64, addr: &str| pb::MemberAddr {
            id,
            addr: addr.to_string(),
            api_addr: replicas.get(&id).map(|r| r.api_addr.clone()).unwrap_or_default(),
        };
        let voters: Vec<_> = membership
            .voter_ids()
            .map(|id| member(id, membership.get_node(&id).map_or("", |n| n.addr.as_str())))
            .collect();
        let learners: Vec<_> = membership
            .learner_ids()
            .map(|id| member(id, membership.get_node(&id).map_or("", |n| n.addr.as_str())))
            .collect();
        let role = match m.state {
            ServerState::Leader => pb::Role::Leader,
            ServerState::Follower => pb::Role::Follower,
            ServerState::Candidate => pb::Role::Candidate,
            ServerState::Learner => pb::Role::Learner,
            ServerState::Shutdown => pb::Role::Shutdown,
        };
        let matched: BTreeMap<u64, u64> = m
            .replication
            .as_ref()
            .map(|r| r.iter().map(|(id, log)| (*id, log.map_or(0, |l| l.index))).collect())
            .unwrap_or_default();
        let applied = m.last_applied.map_or(0, |l| l.index);
        pb::ReplicaStatus {
            id: m.id,
            raft_addr: self.raft_addr.clone(),
            api_addr: self.api_addr.clone(),
            pid: std::process::id(),
            role: role.into(),
            term: m.current_term,
            leader_id: m.current_leader.unwrap_or(0),
            has_leader: m.current_leader.is_some(),
            last_log_index: m.last_log_index.unwrap_or(0),
            // On the leader, the commit index is the highest index a quorum matched; a
            // follower reports what it has applied (it trails commit by one apply batch).
            commit_index: if m.state == ServerState::Leader {
                quorum_index(&matched, membership.voter_ids().collect(), applied)
            } else {
                applied
            },
            applied_index: applied,
            snapshot_index: m.snapshot.map_or(0, |l| l.index),
            purged_index: m.purged.map_or(0, |l| l.index),
            voters,
            learners,
            matched: matched.into_iter().collect(),
            state_digest: cached.map(|(_, digest)| hex::encode(digest)).unwrap_or_default(),
            digest_index: cached.and_then(|(at, _)| at).map_or(0, |l| l.index),
            version: env!("CARGO_PKG_VERSION").to_string(),
            uptime_ms: u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX),
            data_dir: self.data_dir.clone(),
            command_version: <FederationState as federator_raft::StateMachine>::supported_version(),
            log_stalled_ms: self
                .replica
                .log_durability()
                .stalled_for()
                .map_or(0, |stalled| u64::try_from(stalled.as_millis()).unwrap_or(u64::MAX)),
            log_without_redo_file: !self.replica.log_durability().redo_file(),
        }
    }

    pub(super) fn membership_response(&self, log_index: u64) -> pb::MembershipResponse {
        let status = self.status();
        pb::MembershipResponse { voters: status.voters, learners: status.learners, log_index }
    }
}

/// The highest index matched by a majority of `voters`.
fn quorum_index(matched: &BTreeMap<u64, u64>, voters: Vec<u64>, fallback: u64) -> u64 {
    if voters.is_empty() {
        return fallback;
    }
    let mut indexes: Vec<u64> =
        voters.iter().map(|id| matched.get(id).copied().unwrap_or(0)).collect();
    indexes.sort_unstable_by(|a, b| b.cmp(a));
    indexes[voters.len() / 2]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quorum_index_is_the_majority_match() {
        let matched = BTreeMap::from([(1, 10), (2, 7), (3, 3)]);
        assert_eq!(quorum_index(&matched, vec![1, 2, 3], 0), 7);
        let matched = BTreeMap::from([(1, 10), (2, 9), (3, 3), (4, 2), (5, 1)]);
        assert_eq!(quorum_index(&matched, vec![1, 2, 3, 4, 5], 0), 3);
    }
}
