//! `AppendEntriesRequest` and `AppendEntriesResponse`.

use federator_proto::raft as pb;
use federator_proto::raft::append_entries_response::{Conflict, Result as Outcome};

use super::{ConvertError, FromProto, IntoProto, required};
use crate::types::typ::{AppendEntriesRequest, AppendEntriesResponse};
use crate::types::{Entry, Vote};

impl IntoProto<pb::AppendEntriesRequest> for AppendEntriesRequest {
    fn into_proto(self) -> pb::AppendEntriesRequest {
        pb::AppendEntriesRequest {
            vote: Some(self.vote.into_proto()),
            prev_log_id: self.prev_log_id.into_proto(),
            entries: self.entries.into_iter().map(IntoProto::into_proto).collect(),
            leader_commit: self.leader_commit.into_proto(),
        }
    }
}

impl FromProto<pb::AppendEntriesRequest> for AppendEntriesRequest {
    fn from_proto(proto: pb::AppendEntriesRequest) -> Result<Self, ConvertError> {
        Ok(AppendEntriesRequest {
            vote: Vote::from_proto(required(proto.vote, "AppendEntriesRequest", "vote")?)?,
            prev_log_id: FromProto::from_proto(proto.prev_log_id)?,
            entries: proto.entries.into_iter().map(Entry::from_proto).collect::<Result<_, _>>()?,
            leader_commit: FromProto::from_proto(proto.leader_commit)?,
        })
    }
}

impl IntoProto<pb::AppendEntriesResponse> for AppendEntriesResponse {
    fn into_proto(self) -> pb::AppendEntriesResponse {
        let result = match self {
            AppendEntriesResponse::Success => Outcome::Success(pb::Blank {}),
            AppendEntriesResponse::PartialSuccess(matching) => {
                Outcome::PartialSuccess(pb::PartialSuccess { matching: matching.into_proto() })
            }
            AppendEntriesResponse::Conflict => Outcome::Conflict(Conflict {}),
            AppendEntriesResponse::HigherVote(vote) => Outcome::HigherVote(vote.into_proto()),
        };
        pb::AppendEntriesResponse { result: Some(result) }
    }
}

impl FromProto<pb::AppendEntriesResponse> for AppendEntriesResponse {
    fn from_proto(proto: pb::AppendEntriesResponse) -> Result<Self, ConvertError> {
        Ok(match required(proto.result, "AppendEntriesResponse", "result")? {
            Outcome::Success(pb::Blank {}) => AppendEntriesResponse::Success,
            Outcome::PartialSuccess(partial) => {
                AppendEntriesResponse::PartialSuccess(FromProto::from_proto(partial.matching)?)
            }
            Outcome::Conflict(Conflict {}) => AppendEntriesResponse::Conflict,
            Outcome::HigherVote(vote) => AppendEntriesResponse::HigherVote(Vote::from_proto(vote)?),
        })
    }
}

#[cfg(test)]
mod tests {
    use openraft::CommittedLeaderId;

    use super::*;
    use crate::convert::entry::tests::representative_entries;
    use crate::types::LogId;

    fn log_id(term: u64, index: u64) -> LogId {
        LogId::new(CommittedLeaderId::new(term, 2), index)
    }

    #[test]
    fn append_entries_request_round_trips() {
        let requests = [
            // heartbeat of a fresh leader: nothing before, nothing committed
            AppendEntriesRequest {
                vote: Vote::new_committed(1, 2),
                prev_log_id: None,
                entries: vec![],
                leader_commit: None,
            },
            AppendEntriesRequest {
                vote: Vote::new_committed(3, 2),
                prev_log_id: Some(log_id(2, 9)),
                entries: representative_entries(),
                leader_commit: Some(log_id(2, 8)),
            },
            AppendEntriesRequest {
                vote: Vote::new(4, 1),
                prev_log_id: Some(log_id(3, 100)),
                entries: vec![],
                leader_commit: None,
            },
        ];
        for request in requests {
            let back = AppendEntriesRequest::from_proto(request.clone().into_proto())
                .expect("a converted request converts back");
            assert_eq!(back.vote, request.vote);
            assert_eq!(back.prev_log_id, request.prev_log_id);
            assert_eq!(back.entries, request.entries);
            assert_eq!(back.leader_commit, request.leader_commit);
        }
    }

    /// Round-trips many random requests: any vote, optional log ids, any mix of entries.
    #[test]
    fn random_append_entries_requests_round_trip() {
        use std::collections::{BTreeMap, BTreeSet};

        use openraft::EntryPayload;
        use rand::rngs::StdRng;
        use rand::{Rng as _, SeedableRng as _};

        use crate::types::{Command, Membership, Node};

        let mut rng = StdRng::seed_from_u64(0x5eed);
        let random_log_id = |rng: &mut StdRng| {
            LogId::new(CommittedLeaderId::new(rng.random(), rng.random()), rng.random())
        };
        for _ in 0..500 {
            let vote = if rng.random() {
                Vote::new_committed(rng.random(), rng.random())
            } else {
                Vote::new(rng.random(), rng.random())
            };
            let prev_log_id = rng.random::<bool>().then(|| random_log_id(&mut rng));
            let leader_commit = rng.random::<bool>().then(|| random_log_id(&mut rng));
            let entries = (0..rng.random_range(0..6))
                .map(|_| {
                    let payload = match rng.random_range(0..3) {
                        0 => EntryPayload::Blank,
                        1 => {
                            let commands = (0..rng.random_range(0..4))
                                .map(|_| {
                                    let len = rng.random_range(0..64);
                                    serde_bytes::ByteBuf::from(
                                        (0..len).map(|_| rng.random()).collect::<Vec<u8>>(),
                                    )
                                })
                                .collect();
                            EntryPayload::Normal(Command(commands))
                        }
                        _ => {
                            let ids: Vec<u64> = (0..rng.random_range(1..7))
                                .map(|_| rng.random_range(1..10))
                                .collect();
                            let voters: BTreeSet<u64> = ids.iter().copied().take(3).collect();
                            let mut configs = vec![voters];
                            if rng.random() {
                                configs.push(ids.iter().copied().skip(1).take(3).collect());
                            }
                            let nodes: BTreeMap<u64, Node> = ids
                                .iter()
                                .map(|id| (*id, Node::new(format!("n{id}:7000"))))
                                .collect();
                            EntryPayload::Membership(Membership::new(configs, nodes))
                        }
                    };
                    Entry { log_id: random_log_id(&mut rng), payload }
                })
                .collect();
            let request = AppendEntriesRequest { vote, prev_log_id, entries, leader_commit };
            let back = AppendEntriesRequest::from_proto(request.clone().into_proto())
                .expect("a converted request converts back");
            assert_eq!(back.vote, request.vote);
            assert_eq!(back.prev_log_id, request.prev_log_id);
            assert_eq!(back.entries, request.entries);
            assert_eq!(back.leader_commit, request.leader_commit);
        }
    }

    #[test]
    fn append_entries_response_round_trips() {
        // The response is not `Clone`: build each twice.
        let responses = || {
            [
                AppendEntriesResponse::Success,
                AppendEntriesResponse::PartialSuccess(None),
                AppendEntriesResponse::PartialSuccess(Some(log_id(5, 77))),
                AppendEntriesResponse::Conflict,
                AppendEntriesResponse::HigherVote(Vote::new(9, 3)),
                AppendEntriesResponse::HigherVote(Vote::new_committed(9, 3)),
            ]
        };
        for (response, expected) in responses().into_iter().zip(responses()) {
            let back = AppendEntriesResponse::from_proto(response.into_proto())
                .expect("a converted response converts back");
            assert_eq!(back, expected);
        }
    }

    #[test]
    fn append_entries_request_without_vote_is_rejected() {
        let error = AppendEntriesRequest::from_proto(pb::AppendEntriesRequest::default())
            .expect_err("a request needs a vote");
        assert_eq!(error.to_string(), "AppendEntriesRequest.vote is missing");
    }

    #[test]
    fn append_entries_request_with_broken_entry_is_rejected() {
        let mut proto = AppendEntriesRequest {
            vote: Vote::new_committed(1, 2),
            prev_log_id: None,
            entries: representative_entries(),
            leader_commit: None,
        }
        .into_proto();
        proto.entries[1].payload = None;
        let error =
            AppendEntriesRequest::from_proto(proto).expect_err("an entry lacks its payload");
        assert_eq!(error.to_string(), "Entry.payload is missing");
    }

    #[test]
    fn append_entries_response_without_result_is_rejected() {
        let error = AppendEntriesResponse::from_proto(pb::AppendEntriesResponse { result: None })
            .expect_err("a response needs a result");
        assert_eq!(error.to_string(), "AppendEntriesResponse.result is missing");
    }
}
