//! The cluster version: the command-format version every voter's build applies.
//!
//! A command that only newer builds apply ([`StateMachine::required_version`] above 0) is
//! proposed only once every voter answers that it supports it; until then the write is
//! refused with [`ReplicaError::VersionGate`], naming the replicas that are behind. During a
//! rolling upgrade a feature that needs a new kind of command thus stays off until the
//! last voter is upgraded, instead of stopping the replicas that do not know the command
//! ([`StateMachine::check_applicable`]).
//!
//! Nothing is cached and nothing is written to the log: each gated proposal asks every
//! voter (`NodeInfo` on the transport, bounded by its RPC timeout). A voter that does not
//! answer counts as behind. A voter rolled back between the question and the commit still
//! meets the command; it then stops at it instead of diverging, as any older build does.

use std::fmt;

use super::Replica;
use super::error::{NoAnswer, ReplicaError, VoterVersion, VotersBehind};
use crate::state_machine::StateMachine;
use crate::types::NodeId;

/// Every voter's answer, in id order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClusterVersion {
    /// The voters of the current membership.
    pub voters: Vec<VoterVersion>,
}

impl ClusterVersion {
    /// The version every voter applies: the lowest answer, or `None` when a voter did not
    /// answer (or there are none).
    #[must_use]
    pub fn version(&self) -> Option<u32> {
        let mut lowest: Option<u32> = None;
        for voter in &self.voters {
            let supported = *voter.supported.as_ref().ok()?;
            lowest = Some(lowest.map_or(supported, |l| l.min(supported)));
        }
        lowest
    }

    /// The voters that do not (or may not) apply commands of version `required`.
    #[must_use]
    pub fn behind(&self, required: u32) -> Vec<&VoterVersion> {
        self.voters
            .iter()
            .filter(|v| v.supported.as_ref().map_or(true, |supported| *supported < required))
            .collect()
    }
}

impl fmt::Display for VoterVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.supported {
            Ok(version) => write!(f, "replica {} applies version {version}", self.id),
            Err(error) => {
                write!(f, "replica {} did not say which version it applies ({error})", self.id)
            }
        }
    }
}

impl<S: StateMachine> Replica<S> {
    /// Asks every voter of the current membership which command-format version its build
    /// applies (this replica answers for itself without a call).
    pub async fn cluster_version(&self) -> ClusterVersion {
        let voters: Vec<(NodeId, Option<String>)> = {
            let metrics = self.raft.metrics();
            let metrics = metrics.borrow();
            let membership = metrics.membership_config.membership();
            membership
                .voter_ids()
                .map(|id| (id, membership.get_node(&id).map(|node| node.addr.clone())))
                .collect()
        };
        let asks = voters.into_iter().map(|(id, addr)| async move {
            let supported = if id == self.id {
                Ok(S::supported_version())
            } else if let Some(addr) = addr {
                self.network
                    .supported_version(&addr)
                    .await
                    .map_err(|status| NoAnswer::Call(status.message().to_string()))
            } else {
                Err(NoAnswer::NoAddress)
            };
            VoterVersion { id, supported }
        });
        let mut voters = futures::future::join_all(asks).await;
        voters.sort_by_key(|v| v.id);
        ClusterVersion { voters }
    }

    /// Refuses `command` when it needs a version some voter does not apply.
    ///
    /// # Errors
    /// [`ReplicaError::VersionGate`], naming the voters behind.
    pub(super) async fn check_cluster_version(&self, command: &[u8]) -> Result<(), ReplicaError> {
        let required = S::required_version(command);
        if required == 0 {
            return Ok(());
        }
        let cluster = self.cluster_version().await;
        let behind = cluster.behind(required);
        if behind.is_empty() {
            return Ok(());
        }
        let behind = VotersBehind(behind.into_iter().cloned().collect());
        tracing::warn!(replica = self.id, required, %behind, "command refused by the cluster version");
        Err(ReplicaError::VersionGate { required, behind })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn voter(id: NodeId, supported: Result<u32, &str>) -> VoterVersion {
        VoterVersion { id, supported: supported.map_err(|e| NoAnswer::Call(e.to_string())) }
    }

    #[test]
    fn the_cluster_version_is_the_lowest_answer_and_unknown_if_one_is_missing() {
        let all =
            ClusterVersion { voters: vec![voter(1, Ok(22)), voter(2, Ok(21)), voter(3, Ok(22))] };
        assert_eq!(all.version(), Some(21));
        assert_eq!(all.behind(22), vec![&all.voters[1]]);
        assert!(all.behind(21).is_empty());

        let silent = ClusterVersion { voters: vec![voter(1, Ok(22)), voter(2, Err("timed out"))] };
        assert_eq!(silent.version(), None);
        assert_eq!(silent.behind(1), vec![&silent.voters[1]]);
        assert_eq!(
            silent.voters[1].to_string(),
            "replica 2 did not say which version it applies (timed out)"
        );
        assert_eq!(ClusterVersion::default().version(), None);
    }
}
