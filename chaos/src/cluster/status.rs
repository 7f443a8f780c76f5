//! What the replicas report — status, leader, digests, leases, metrics — and the waits
//! on it: an agreed leader, an answering API, one digest at one index; forming a group
//! through the CLI.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::Context as _;
use federator_proto::admin::{self as pb, ReplicaStatus};

use super::{Federation, tail};
use crate::wait::eventually;

impl Federation {
    /// Status of replica `id`, if it answers.
    pub async fn status(&self, id: u64) -> Option<ReplicaStatus> {
        let mut client = self.admin(id).await.ok()?;
        client.status(pb::StatusRequest {}).await.ok().map(tonic::Response::into_inner)
    }

    /// The applied index of replica `id`.
    ///
    /// # Errors
    /// It did not answer.
    pub async fn applied_index(&self, id: u64) -> anyhow::Result<u64> {
        let status = self.status(id).await;
        Ok(status.ok_or_else(|| anyhow::anyhow!("replica {id} gave no status"))?.applied_index)
    }

    /// Each member's lease as replica `replica` has applied it (a stale read): its state,
    /// its id, and the milliseconds since the leader last heard a keep-alive (-1 if
    /// unknown).
    ///
    /// # Errors
    /// The replica did not answer within 2 s.
    pub async fn leases_seen_by(
        &self,
        replica: u64,
    ) -> anyhow::Result<BTreeMap<String, (String, u64, i64)>> {
        let mut admin = self.admin(replica).await?;
        let request = pb::ListClustersRequest { consistency: pb::Consistency::Stale as i32 };
        let clusters =
            tokio::time::timeout(Duration::from_secs(2), admin.list_clusters(request)).await??;
        Ok(clusters
            .into_inner()
            .clusters
            .into_iter()
            .map(|c| {
                let lease = c.lease.unwrap_or_default();
                (c.name, (lease.state, lease.id, lease.last_keepalive_ms))
            })
            .collect())
    }

    /// Waits until some replica among `ids` leads and every one of them knows it;
    /// returns the leader's id.
    ///
    /// # Errors
    /// No agreed leader within `timeout`.
    pub async fn wait_for_leader(&self, ids: &[u64], timeout: Duration) -> anyhow::Result<u64> {
        eventually("an agreed leader", timeout, || async {
            let mut leader = None;
            for id in ids {
                let s = self.status(*id).await?;
                if !s.has_leader {
                    return None;
                }
                match leader {
                    None => leader = Some(s.leader_id),
                    Some(l) if l != s.leader_id => return None,
                    Some(_) => {}
                }
            }
            let leader = leader?;
            ids.contains(&leader).then_some(leader)
        })
        .await
    }

    /// Forms a group of `ids` through the CLI: `raft init` on the first, then
    /// `raft add-member` for each other one.
    ///
    /// # Errors
    /// A CLI step failed.
    pub async fn form_group(&self, ids: &[u64]) -> anyhow::Result<()> {
        let first = ids[0];
        self.wait_for_api(first).await?;
        self.cli_ok(&[first], &["raft", "init"])?;
        self.wait_for_leader(&[first], Duration::from_secs(20)).await?;
        for id in &ids[1..] {
            self.wait_for_api(*id).await?;
            let addr = self.replica(*id).raft_addr.clone();
            self.cli_ok(&[first], &["raft", "add-member", &id.to_string(), &addr])?;
        }
        self.wait_for_leader(ids, Duration::from_secs(30)).await?;
        // The harness's members export into namespaces of their tests' choosing, at
        // loopback addresses: a test of the secure defaults turns these back off.
        self.cli_ok(
            &[first],
            &["settings", "--open-exports", "true", "--allow-loopback-endpoints", "true"],
        )?;
        Ok(())
    }

    /// Waits until replica `id` answers its admin API.
    ///
    /// # Errors
    /// It does not answer within 30 s.
    pub async fn wait_for_api(&self, id: u64) -> anyhow::Result<()> {
        eventually(&format!("replica {id} to answer"), Duration::from_secs(30), || async {
            self.status(id).await.map(|_| ())
        })
        .await
        .with_context(|| format!("replica {id} log:\n{}", tail(&self.log_of(id), 40)))
    }

    /// Waits until every replica in `ids` has applied the same index with the same state
    /// digest; returns (index, digest).
    ///
    /// # Errors
    /// They did not converge in time.
    pub async fn wait_for_convergence(
        &self,
        ids: &[u64],
        timeout: Duration,
    ) -> anyhow::Result<(u64, String)> {
        eventually("replicas to converge on one digest at one index", timeout, || async {
            let mut seen: Option<(u64, String)> = None;
            for id in ids {
                let mut client = self.admin(*id).await.ok()?;
                let d = client.digest(pb::DigestRequest {}).await.ok()?.into_inner();
                match &seen {
                    None => seen = Some((d.applied_index, d.digest)),
                    Some((index, digest)) if *index == d.applied_index && *digest == d.digest => {}
                    Some(_) => return None,
                }
            }
            seen
        })
        .await
    }

    /// Asserts that no member lease expired: `federator_lease_expirations_total` is 0 on
    /// every replica and the audit trail holds no `expire_lease`.
    ///
    /// # Errors
    /// A replica's metrics or the audit trail could not be read, or a lease expired.
    pub async fn assert_no_lease_expired(&self) -> anyhow::Result<()> {
        for id in self.ids() {
            let metrics = self.metrics(id).await?;
            anyhow::ensure!(
                metrics.lines().any(|l| l == "federator_lease_expirations_total 0"),
                "replica {id} expired a lease:\n{metrics}"
            );
        }
        let expiries: Vec<serde_json::Value> =
            self.audit()?.into_iter().filter(|e| e["action"] == "expire_lease").collect();
        anyhow::ensure!(expiries.is_empty(), "leases expired: {expiries:?}");
        Ok(())
    }

    /// Fetches `/metrics` of replica `id` (the body, whatever the status).
    ///
    /// # Errors
    /// The endpoint did not answer within five seconds.
    pub async fn metrics(&self, id: u64) -> anyhow::Result<String> {
        let addr = &self.replica(id).metrics_addr;
        Ok(crate::http::get(addr, "/metrics", Duration::from_secs(5)).await?.body)
    }
}
