//! `VoteRequest` and `VoteResponse`.

use federator_proto::raft as pb;

use super::{ConvertError, FromProto, IntoProto, required};
use crate::types::Vote;
use crate::types::typ::{VoteRequest, VoteResponse};

impl IntoProto<pb::VoteRequest> for VoteRequest {
    fn into_proto(self) -> pb::VoteRequest {
        pb::VoteRequest {
            vote: Some(self.vote.into_proto()),
            last_log_id: self.last_log_id.into_proto(),
        }
    }
}

impl FromProto<pb::VoteRequest> for VoteRequest {
    fn from_proto(proto: pb::VoteRequest) -> Result<Self, ConvertError> {
        Ok(VoteRequest {
            vote: Vote::from_proto(required(proto.vote, "VoteRequest", "vote")?)?,
            last_log_id: FromProto::from_proto(proto.last_log_id)?,
        })
    }
}

impl IntoProto<pb::VoteResponse> for VoteResponse {
    fn into_proto(self) -> pb::VoteResponse {
        pb::VoteResponse {
            vote: Some(self.vote.into_proto()),
            vote_granted: self.vote_granted,
            last_log_id: self.last_log_id.into_proto(),
        }
    }
}

impl FromProto<pb::VoteResponse> for VoteResponse {
    fn from_proto(proto: pb::VoteResponse) -> Result<Self, ConvertError> {
        Ok(VoteResponse {
            vote: Vote::from_proto(required(proto.vote, "VoteResponse", "vote")?)?,
            vote_granted: proto.vote_granted,
            last_log_id: FromProto::from_proto(proto.last_log_id)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use openraft::CommittedLeaderId;

    use super::*;
    use crate::types::LogId;

    fn last_log_ids() -> [Option<LogId>; 3] {
        [
            None,
            Some(LogId::new(CommittedLeaderId::new(1, 1), 0)),
            Some(LogId::new(CommittedLeaderId::new(6, 3), 1234)),
        ]
    }

    #[test]
    fn vote_request_round_trips() {
        for last_log_id in last_log_ids() {
            for vote in [Vote::new(1, 1), Vote::new(7, 3), Vote::new_committed(7, 3)] {
                let request = VoteRequest { vote, last_log_id };
                let back = VoteRequest::from_proto(request.clone().into_proto())
                    .expect("a converted request converts back");
                assert_eq!(back, request);
            }
        }
    }

    #[test]
    fn vote_response_round_trips() {
        for last_log_id in last_log_ids() {
            for vote_granted in [false, true] {
                let response =
                    VoteResponse { vote: Vote::new_committed(7, 3), vote_granted, last_log_id };
                let back = VoteResponse::from_proto(response.clone().into_proto())
                    .expect("a converted response converts back");
                assert_eq!(back, response);
            }
        }
    }

    #[test]
    fn vote_request_without_vote_is_rejected() {
        let error = VoteRequest::from_proto(pb::VoteRequest::default()).expect_err("needs a vote");
        assert_eq!(error.to_string(), "VoteRequest.vote is missing");
    }

    #[test]
    fn vote_response_without_vote_is_rejected() {
        let error =
            VoteResponse::from_proto(pb::VoteResponse::default()).expect_err("needs a vote");
        assert_eq!(error.to_string(), "VoteResponse.vote is missing");
    }
}
