//! The stores under test behind one interface, so that the load generator and the
//! failover loop drive Federator and etcd exactly alike: same connections per member,
//! same keys, same values, same deadlines.

use std::future::Future;
use std::time::Duration;

use anyhow::Context as _;
use federator_proto::admin as pb;
use federator_proto::admin::admin_client::AdminClient;
use tonic::transport::Channel;

use super::steps::StepTotals;
use crate::cluster::Federation;
use crate::etcd::{EtcdCluster, EtcdTransport};

/// A write that was not acknowledged.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PutError {
    /// The store answered with an error (or the connection failed).
    #[error("{system} put failed: {message}")]
    Failed {
        /// Which store.
        system: &'static str,
        /// The error as the client library reported it.
        message: String,
    },
    /// No answer within the caller's deadline.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// The connection does not offer the operation.
    #[error("{0} is not offered by this connection")]
    Unsupported(&'static str),
}

/// One client connection (its own TCP connection) to one member of a [`KvTarget`].
/// Clones share the connection, as gRPC clients do.
pub trait KvConn: Clone + Send + Sync + 'static {
    /// Writes `value` at `key` and waits for the store's acknowledgement (committed by a
    /// quorum and made durable).
    fn put(
        &mut self,
        key: String,
        value: Vec<u8>,
    ) -> impl Future<Output = Result<(), PutError>> + Send;

    /// Reads `key` as the member holds it, without consensus (no quorum, no log entry):
    /// the same client API, connection and authentication as [`KvConn::put`], so it
    /// measures the call's floor.
    fn local_read(&mut self, _key: String) -> impl Future<Output = Result<(), PutError>> + Send {
        std::future::ready(Err(PutError::Unsupported("a local read")))
    }
}

/// A replicated key-value store: a group of processes on loopback that can be
/// connected to, probed, and killed and restarted member by member.
pub trait KvTarget: Send + Sync {
    /// A client connection.
    type Conn: KvConn;

    /// Display name.
    fn name(&self) -> &'static str;

    /// Ids of every member.
    fn ids(&self) -> Vec<u64>;

    /// Opens a new connection to member `id`.
    fn connect(&self, id: u64) -> impl Future<Output = anyhow::Result<Self::Conn>> + Send;

    /// Waits until every running member answers and all agree on a leader; returns it.
    fn wait_healthy(
        &mut self,
        timeout: Duration,
    ) -> impl Future<Output = anyhow::Result<u64>> + Send;

    /// The highest raft term any running member reports.
    fn term(&self) -> impl Future<Output = anyhow::Result<u64>> + Send;

    /// Leader changes counted by the running members themselves (summed), for stores
    /// that export such a counter.
    fn leader_changes(&self) -> impl Future<Output = Option<u64>> + Send;

    /// The write-path step histograms summed over the running members, for stores that
    /// export them (Federator; see [`super::steps`]).
    fn step_totals(&self) -> impl Future<Output = Option<StepTotals>> + Send {
        std::future::ready(None)
    }

    /// SIGKILLs member `id` and reaps it.
    fn kill(&mut self, id: u64);

    /// Restarts killed member `id` with its ports and data.
    ///
    /// # Errors
    /// It could not be spawned.
    fn restart(&mut self, id: u64) -> anyhow::Result<()>;
}

/// `count` connections spread round-robin over `members` (the first member gets the
/// first connection, then the next, and so on).
///
/// # Errors
/// A member could not be connected to.
pub async fn pool<T: KvTarget>(
    target: &T,
    members: &[u64],
    count: usize,
) -> anyhow::Result<Vec<T::Conn>> {
    let mut conns = Vec::with_capacity(count);
    for member in members.iter().cycle().take(count) {
        conns.push(
            target
                .connect(*member)
                .await
                .with_context(|| format!("connecting to {} member {member}", target.name()))?,
        );
    }
    Ok(conns)
}

// === impl FederatorTarget ===

/// Federator replicas, written through the admin API's `Put` over mTLS (a replicated
/// probe write: any replica accepts it and forwards it to the leader).
pub struct FederatorTarget {
    federation: Federation,
}

impl FederatorTarget {
    /// Starts `replicas` replicas at `timing` and forms them into one group.
    ///
    /// # Errors
    /// A replica did not start or the group did not form.
    pub async fn start(replicas: u64, timing: federator_raft::Timing) -> anyhow::Result<Self> {
        let mut federation = Federation::new(replicas)?;
        federation.show_logs_on_drop = false;
        federation.timing = timing;
        let ids: Vec<u64> = (1..=replicas).collect();
        for id in &ids {
            federation.start(*id, false)?;
        }
        federation.form_group(&ids).await?;
        Ok(Self { federation })
    }

    /// The federation, for callers that need more than the [`KvTarget`] interface.
    #[must_use]
    pub fn federation(&self) -> &Federation {
        &self.federation
    }

    fn running(&self) -> Vec<u64> {
        self.federation
            .ids()
            .into_iter()
            .filter(|id| self.federation.replica(*id).pid().is_some())
            .collect()
    }
}

/// A connection to one Federator replica's admin API.
#[derive(Clone, Debug)]
pub struct FederatorConn(AdminClient<Channel>);

impl KvConn for FederatorConn {
    async fn put(&mut self, key: String, value: Vec<u8>) -> Result<(), PutError> {
        self.0.put(pb::PutRequest { key, value }).await.map(|_| ()).map_err(|status| {
            PutError::Failed {
                system: "Federator",
                message: format!("{:?}: {}", status.code(), status.message()),
            }
        })
    }

    /// The admin API's `Get` at local consistency: the replica answers from its applied
    /// state.
    async fn local_read(&mut self, key: String) -> Result<(), PutError> {
        let request = pb::GetRequest { key, consistency: pb::Consistency::Stale.into() };
        self.0.get(request).await.map(|_| ()).map_err(|status| PutError::Failed {
            system: "Federator",
            message: format!("{:?}: {}", status.code(), status.message()),
        })
    }
}

impl KvTarget for FederatorTarget {
    type Conn = FederatorConn;

    fn name(&self) -> &'static str {
        "Federator"
    }

    fn ids(&self) -> Vec<u64> {
        self.federation.ids()
    }

    async fn connect(&self, id: u64) -> anyhow::Result<FederatorConn> {
        Ok(FederatorConn(self.federation.admin(id).await?))
    }

    async fn wait_healthy(&mut self, timeout: Duration) -> anyhow::Result<u64> {
        let running = self.running();
        for id in &running {
            if self.federation.has_exited(*id) {
                anyhow::bail!(
                    "replica {id} exited; its log ends:\n{}",
                    crate::cluster::tail(&self.federation.log_of(*id), 30)
                );
            }
        }
        self.federation.wait_for_leader(&running, timeout).await
    }

    /// From the metrics listener, which answers without touching the state (a status
    /// answer carries the state's digest, which a benchmark polling it would pay for).
    async fn term(&self) -> anyhow::Result<u64> {
        let mut term = None;
        for id in self.running() {
            if let Ok(text) = self.federation.metrics(id).await {
                term = term.max(counter(&text, "federator_raft_term"));
            }
        }
        term.context("no Federator replica answered on its metrics listener")
    }

    async fn leader_changes(&self) -> Option<u64> {
        let mut total = 0;
        for id in self.running() {
            let text = self.federation.metrics(id).await.ok()?;
            total += counter(&text, "federator_raft_leader_changes_total")
                .or_else(|| counter(&text, "raft_leader_changes_total"))?;
        }
        Some(total)
    }

    async fn step_totals(&self) -> Option<StepTotals> {
        let mut totals = StepTotals::default();
        for id in self.running() {
            totals.add_exposition(&self.federation.metrics(id).await.ok()?);
        }
        Some(totals)
    }

    fn kill(&mut self, id: u64) {
        self.federation.kill(id);
    }

    fn restart(&mut self, id: u64) -> anyhow::Result<()> {
        self.federation.restart(id)
    }
}

/// The value of an unlabelled counter in a Prometheus text exposition.
fn counter(exposition: &str, name: &str) -> Option<u64> {
    exposition.lines().find_map(|line| {
        let value = line.strip_prefix(name)?.strip_prefix(' ')?;
        // Counters are exposed as integers or floats ("3" or "3.0").
        value.split_whitespace().next()?.parse::<f64>().ok().map(|v| v as u64)
    })
}

// === impl EtcdTarget ===

/// etcd members, written through the KV API's `Put` (over plain HTTP/2 or mTLS, as
/// started).
#[derive(Debug)]
pub struct EtcdTarget {
    cluster: EtcdCluster,
}

impl EtcdTarget {
    /// Starts `members` members forming one cluster (not yet waited for).
    ///
    /// # Errors
    /// A member could not be spawned.
    pub fn start(members: u64) -> anyhow::Result<Self> {
        Self::start_with_flags(members, &[])
    }

    /// Like [`EtcdTarget::start`], with `flags` added to every member's command line.
    ///
    /// # Errors
    /// A member could not be spawned.
    pub fn start_with_flags(members: u64, flags: &[String]) -> anyhow::Result<Self> {
        Self::start_with(members, flags, EtcdTransport::Plain)
    }

    /// Like [`EtcdTarget::start_with_flags`], with clients and peers over `transport`.
    ///
    /// # Errors
    /// The certificates could not be made or a member could not be spawned.
    pub fn start_with(
        members: u64,
        flags: &[String],
        transport: EtcdTransport,
    ) -> anyhow::Result<Self> {
        Ok(Self { cluster: EtcdCluster::start_with(members, flags, transport)? })
    }
}

/// A connection to one etcd member's KV API.
#[derive(Clone)]
pub struct EtcdConn(etcd_client::KvClient);

impl KvConn for EtcdConn {
    async fn put(&mut self, key: String, value: Vec<u8>) -> Result<(), PutError> {
        self.0
            .put(key, value, None)
            .await
            .map(|_| ())
            .map_err(|error| PutError::Failed { system: "etcd", message: error.to_string() })
    }

    /// The KV API's serializable `Range`: the member answers from its own store.
    async fn local_read(&mut self, key: String) -> Result<(), PutError> {
        let options = etcd_client::GetOptions::new().with_serializable();
        self.0
            .get(key, Some(options))
            .await
            .map(|_| ())
            .map_err(|error| PutError::Failed { system: "etcd", message: error.to_string() })
    }
}

impl KvTarget for EtcdTarget {
    type Conn = EtcdConn;

    fn name(&self) -> &'static str {
        "etcd"
    }

    fn ids(&self) -> Vec<u64> {
        self.cluster.ids()
    }

    async fn connect(&self, id: u64) -> anyhow::Result<EtcdConn> {
        Ok(EtcdConn(self.cluster.client(&[id]).await?.kv_client()))
    }

    async fn wait_healthy(&mut self, timeout: Duration) -> anyhow::Result<u64> {
        Ok(self.cluster.wait_healthy(timeout).await?)
    }

    async fn term(&self) -> anyhow::Result<u64> {
        self.cluster.term().await.context("no etcd member answered its status")
    }

    async fn leader_changes(&self) -> Option<u64> {
        let mut total = 0;
        for id in self.cluster.ids() {
            if !self.cluster.member(id).ok()?.is_running() {
                continue;
            }
            let text = self.cluster.metrics(id).await.ok()?;
            total += counter(&text, "etcd_server_leader_changes_seen_total")?;
        }
        Some(total)
    }

    fn kill(&mut self, id: u64) {
        self.cluster.kill(id);
    }

    fn restart(&mut self, id: u64) -> anyhow::Result<()> {
        Ok(self.cluster.restart(id)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counter_is_read_from_a_prometheus_exposition() {
        let text = "# HELP raft_leader_changes Times the known leader changed\n\
                    # TYPE raft_leader_changes counter\n\
                    raft_leader_changes_total 3\n\
                    raft_leader_changes_total_other 9\n";
        assert_eq!(counter(text, "raft_leader_changes_total"), Some(3));
        assert_eq!(counter(text, "raft_term"), None);
    }
}
