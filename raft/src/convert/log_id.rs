//! `LogId`.

use federator_proto::raft as pb;
use openraft::CommittedLeaderId;

use super::{ConvertError, FromProto, IntoProto, required};
use crate::types::{LogId, NodeId};

impl IntoProto<pb::LogId> for LogId {
    fn into_proto(self) -> pb::LogId {
        pb::LogId { leader_id: Some(self.leader_id.into_proto()), index: self.index }
    }
}

impl FromProto<pb::LogId> for LogId {
    fn from_proto(proto: pb::LogId) -> Result<Self, ConvertError> {
        let leader_id: CommittedLeaderId<NodeId> =
            FromProto::from_proto(required(proto.leader_id, "LogId", "leader_id")?)?;
        Ok(LogId::new(leader_id, proto.index))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_id_round_trips() {
        for (term, node, index) in
            [(0, 0, 0), (1, 1, 1), (3, 2, 17), (u64::MAX, u64::MAX, u64::MAX)]
        {
            let id = LogId::new(CommittedLeaderId::new(term, node), index);
            let back =
                LogId::from_proto(id.into_proto()).expect("a converted log id converts back");
            assert_eq!(back, id);
        }
    }

    #[test]
    fn absent_log_id_round_trips_as_none() {
        let none: Option<LogId> = None;
        let proto: Option<pb::LogId> = none.into_proto();
        assert_eq!(proto, None);
        let back: Option<LogId> = FromProto::from_proto(proto).expect("None converts back");
        assert_eq!(back, None);
    }

    #[test]
    fn log_id_without_leader_id_is_rejected() {
        let error = LogId::from_proto(pb::LogId { leader_id: None, index: 5 })
            .expect_err("a log id needs a leader id");
        assert_eq!(error.to_string(), "LogId.leader_id is missing");
    }
}
