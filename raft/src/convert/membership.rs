//! `Node`, `Membership` and `StoredMembership`.

use std::collections::{BTreeMap, BTreeSet};

use federator_proto::raft as pb;

use super::{ConvertError, FromProto, IntoProto, required};
use crate::types::{LogId, Membership, Node, NodeId, StoredMembership};

impl IntoProto<pb::Node> for Node {
    fn into_proto(self) -> pb::Node {
        pb::Node { addr: self.addr }
    }
}

impl FromProto<pb::Node> for Node {
    fn from_proto(proto: pb::Node) -> Result<Self, ConvertError> {
        Ok(Node { addr: proto.addr })
    }
}

impl IntoProto<pb::Membership> for Membership {
    fn into_proto(self) -> pb::Membership {
        let configs = self
            .get_joint_config()
            .iter()
            .map(|config| pb::VoterSet { ids: config.iter().copied().collect() })
            .collect();
        let nodes = self.nodes().map(|(id, node)| (*id, node.clone().into_proto())).collect();
        pb::Membership { configs, nodes }
    }
}

impl FromProto<pb::Membership> for Membership {
    fn from_proto(proto: pb::Membership) -> Result<Self, ConvertError> {
        let configs: Vec<BTreeSet<NodeId>> =
            proto.configs.into_iter().map(|voters| voters.ids.into_iter().collect()).collect();
        let nodes = proto
            .nodes
            .into_iter()
            .map(|(id, node)| Ok((id, Node::from_proto(node)?)))
            .collect::<Result<BTreeMap<NodeId, Node>, ConvertError>>()?;
        // openraft would fill an unknown voter with a default (empty) address; a peer that
        // sends a voter without its address sent a broken membership, so refuse it.
        if let Some(voter) = configs.iter().flatten().find(|id| !nodes.contains_key(id)) {
            return Err(ConvertError::Invalid {
                message: "Membership",
                field: "nodes",
                reason: format!("voter {voter} has no node entry"),
            });
        }
        Ok(Membership::new(configs, nodes))
    }
}

impl IntoProto<pb::StoredMembership> for StoredMembership {
    fn into_proto(self) -> pb::StoredMembership {
        pb::StoredMembership {
            log_id: (*self.log_id()).into_proto(),
            membership: Some(self.membership().clone().into_proto()),
        }
    }
}

impl FromProto<pb::StoredMembership> for StoredMembership {
    fn from_proto(proto: pb::StoredMembership) -> Result<Self, ConvertError> {
        let log_id: Option<LogId> = FromProto::from_proto(proto.log_id)?;
        let membership =
            Membership::from_proto(required(proto.membership, "StoredMembership", "membership")?)?;
        Ok(StoredMembership::new(log_id, membership))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use openraft::CommittedLeaderId;

    use super::*;

    fn node(id: NodeId) -> Node {
        Node::new(format!("10.0.0.{id}:7000"))
    }

    /// Memberships worth round-tripping: empty, one voter, uniform, joint, with learners.
    pub(crate) fn representative_memberships() -> Vec<Membership> {
        let nodes =
            |ids: &[NodeId]| ids.iter().map(|id| (*id, node(*id))).collect::<BTreeMap<_, _>>();
        vec![
            Membership::new(vec![], BTreeMap::<NodeId, Node>::new()),
            Membership::new(vec![BTreeSet::from([1])], nodes(&[1])),
            Membership::new(vec![BTreeSet::from([1, 2, 3])], nodes(&[1, 2, 3])),
            // learners 4 and 5 beside three voters
            Membership::new(vec![BTreeSet::from([1, 2, 3])], nodes(&[1, 2, 3, 4, 5])),
            // joint: {1,2,3} → {3,4,5}, with learner 6
            Membership::new(
                vec![BTreeSet::from([1, 2, 3]), BTreeSet::from([3, 4, 5])],
                nodes(&[1, 2, 3, 4, 5, 6]),
            ),
        ]
    }

    #[test]
    fn node_round_trips() {
        for addr in ["", "127.0.0.11:7000", "[::1]:7000", "replica-2.federator.svc:7000"] {
            let node = Node::new(addr);
            assert_eq!(Node::from_proto(node.clone().into_proto()), Ok(node));
        }
    }

    #[test]
    fn membership_round_trips_including_joint_and_learners() {
        for membership in representative_memberships() {
            let back = Membership::from_proto(membership.clone().into_proto())
                .expect("a converted membership converts back");
            assert_eq!(back, membership);
            assert_eq!(
                back.learner_ids().collect::<Vec<_>>(),
                membership.learner_ids().collect::<Vec<_>>()
            );
        }
    }

    #[test]
    fn stored_membership_round_trips_with_and_without_log_id() {
        for membership in representative_memberships() {
            for log_id in [None, Some(LogId::new(CommittedLeaderId::new(2, 1), 9))] {
                let stored = StoredMembership::new(log_id, membership.clone());
                let back = StoredMembership::from_proto(stored.clone().into_proto())
                    .expect("a converted stored membership converts back");
                assert_eq!(back, stored);
            }
        }
    }

    #[test]
    fn membership_with_voter_missing_from_nodes_is_rejected() {
        let proto = pb::Membership {
            configs: vec![pb::VoterSet { ids: vec![1, 2] }],
            nodes: [(1, pb::Node { addr: "a:1".into() })].into_iter().collect(),
        };
        let error = Membership::from_proto(proto).expect_err("voter 2 has no address");
        assert_eq!(error.to_string(), "Membership.nodes is invalid: voter 2 has no node entry");
    }

    #[test]
    fn stored_membership_without_membership_is_rejected() {
        let error =
            StoredMembership::from_proto(pb::StoredMembership { log_id: None, membership: None })
                .expect_err("a stored membership needs its membership");
        assert_eq!(error.to_string(), "StoredMembership.membership is missing");
    }
}
