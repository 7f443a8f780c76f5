//! `SnapshotMeta` and `SnapshotResponse`.

use federator_proto::raft as pb;

use super::{ConvertError, FromProto, IntoProto, required};
use crate::types::typ::SnapshotResponse;
use crate::types::{SnapshotMeta, StoredMembership, Vote};

impl IntoProto<pb::SnapshotMeta> for SnapshotMeta {
    fn into_proto(self) -> pb::SnapshotMeta {
        pb::SnapshotMeta {
            last_log_id: self.last_log_id.into_proto(),
            last_membership: Some(self.last_membership.into_proto()),
            snapshot_id: self.snapshot_id,
        }
    }
}

impl FromProto<pb::SnapshotMeta> for SnapshotMeta {
    fn from_proto(proto: pb::SnapshotMeta) -> Result<Self, ConvertError> {
        Ok(SnapshotMeta {
            last_log_id: FromProto::from_proto(proto.last_log_id)?,
            last_membership: StoredMembership::from_proto(required(
                proto.last_membership,
                "SnapshotMeta",
                "last_membership",
            )?)?,
            snapshot_id: proto.snapshot_id,
        })
    }
}

impl IntoProto<pb::SnapshotResponse> for SnapshotResponse {
    fn into_proto(self) -> pb::SnapshotResponse {
        pb::SnapshotResponse { vote: Some(self.vote.into_proto()) }
    }
}

impl FromProto<pb::SnapshotResponse> for SnapshotResponse {
    fn from_proto(proto: pb::SnapshotResponse) -> Result<Self, ConvertError> {
        Ok(SnapshotResponse::new(Vote::from_proto(required(
            proto.vote,
            "SnapshotResponse",
            "vote",
        )?)?))
    }
}

#[cfg(test)]
mod tests {
    use openraft::CommittedLeaderId;

    use super::*;
    use crate::convert::membership::tests::representative_memberships;
    use crate::types::LogId;

    #[test]
    fn snapshot_meta_round_trips() {
        for membership in representative_memberships() {
            for (last_log_id, membership_log_id) in [
                (None, None),
                (
                    Some(LogId::new(CommittedLeaderId::new(3, 1), 50)),
                    Some(LogId::new(CommittedLeaderId::new(2, 1), 12)),
                ),
            ] {
                let meta = SnapshotMeta {
                    last_log_id,
                    last_membership: StoredMembership::new(membership_log_id, membership.clone()),
                    snapshot_id: "3-1-50-0001".to_string(),
                };
                let back = SnapshotMeta::from_proto(meta.clone().into_proto())
                    .expect("a converted meta converts back");
                assert_eq!(back, meta);
            }
        }
    }

    #[test]
    fn snapshot_response_round_trips() {
        for vote in [Vote::new(1, 1), Vote::new_committed(8, 2)] {
            let back = SnapshotResponse::from_proto(SnapshotResponse::new(vote).into_proto())
                .expect("a converted response converts back");
            assert_eq!(back.vote, vote);
        }
    }

    #[test]
    fn snapshot_meta_without_membership_is_rejected() {
        let error = SnapshotMeta::from_proto(pb::SnapshotMeta::default())
            .expect_err("a snapshot meta needs its membership");
        assert_eq!(error.to_string(), "SnapshotMeta.last_membership is missing");
    }

    #[test]
    fn snapshot_response_without_vote_is_rejected() {
        let error = SnapshotResponse::from_proto(pb::SnapshotResponse::default())
            .expect_err("a snapshot response needs a vote");
        assert_eq!(error.to_string(), "SnapshotResponse.vote is missing");
    }
}
