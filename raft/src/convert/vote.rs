//! `LeaderId` and `Vote`.

use federator_proto::raft as pb;
use openraft::LeaderId;

use super::{ConvertError, FromProto, IntoProto, required};
use crate::types::{NodeId, Vote};

impl IntoProto<pb::LeaderId> for LeaderId<NodeId> {
    fn into_proto(self) -> pb::LeaderId {
        pb::LeaderId { term: self.term, node_id: self.node_id }
    }
}

impl FromProto<pb::LeaderId> for LeaderId<NodeId> {
    fn from_proto(proto: pb::LeaderId) -> Result<Self, ConvertError> {
        Ok(LeaderId::new(proto.term, proto.node_id))
    }
}

impl IntoProto<pb::Vote> for Vote {
    fn into_proto(self) -> pb::Vote {
        pb::Vote { leader_id: Some(self.leader_id.into_proto()), committed: self.committed }
    }
}

impl FromProto<pb::Vote> for Vote {
    fn from_proto(proto: pb::Vote) -> Result<Self, ConvertError> {
        let leader_id = LeaderId::from_proto(required(proto.leader_id, "Vote", "leader_id")?)?;
        Ok(Vote { leader_id, committed: proto.committed })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(vote: Vote) {
        let back = Vote::from_proto(vote.into_proto()).expect("a converted vote converts back");
        assert_eq!(back, vote);
    }

    #[test]
    fn vote_round_trips() {
        for term in [0, 1, 7, u64::MAX] {
            for node in [0, 1, 42, u64::MAX] {
                round_trip(Vote::new(term, node));
                round_trip(Vote::new_committed(term, node));
            }
        }
    }

    #[test]
    fn vote_without_leader_id_is_rejected() {
        let error = Vote::from_proto(pb::Vote { leader_id: None, committed: true })
            .expect_err("a vote needs a leader id");
        assert_eq!(error.to_string(), "Vote.leader_id is missing");
    }
}
