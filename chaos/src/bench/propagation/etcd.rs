//! etcd under `bench propagation`: a 3-member cluster, a publisher `put`ting one key
//! through the leader, watchers of that key spread over several client connections per
//! member (each watcher its own gRPC `Watch` stream), and JSON export documents loaded
//! for the memory figures.

use std::time::{Duration, Instant};

use anyhow::Context as _;
use etcd_client::{GetOptions, KvClient, WatchClient};

use super::memory::{EndpointStore, endpoint_address};
use super::watch::{Process, Receipts, WatchTarget, WatcherSpec};
use super::{OPEN_TIMEOUT, SERVICE_NAME, SERVICE_NAMESPACE};
use crate::bench::{GROUP_SIZE, HEALTHY_TIMEOUT};
use crate::etcd::EtcdCluster;
use crate::wait::eventually;

/// The watched key.
const KEY: &str = "bench/exports/pub/bench/svc";

/// The JSON document of an export of `ns/name` by cluster `pub` with `count` endpoints
/// numbered from `first`, each of weight `weight`: the fields of a Federator export.
#[must_use]
pub fn export_document(name: &str, first: usize, count: usize, weight: u64) -> String {
    let endpoints: Vec<serde_json::Value> = (first..first + count)
        .map(|n| {
            serde_json::json!({
                "address": endpoint_address(n),
                "zone": "zone-1",
                "region": "region-1",
                "weight": weight,
                "ready": true,
            })
        })
        .collect();
    serde_json::json!({
        "cluster": "pub",
        "namespace": SERVICE_NAMESPACE,
        "name": name,
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP", "app_protocol": "http"}],
        "endpoints": endpoints,
        "identities": [format!("spiffe://pub.bench.test/ns/{SERVICE_NAMESPACE}/sa/{name}")],
    })
    .to_string()
}

/// The value written for change `change`: the change number on a line of its own, then
/// the export document with weight `change + 1`.
#[must_use]
pub fn value_of(change: u64) -> String {
    format!("{change}\n{}", export_document(SERVICE_NAME, 1, 1, change + 1))
}

/// The change number at the start of a value written by [`value_of`].
#[must_use]
pub fn marker(value: &[u8]) -> Option<u64> {
    let end = value.iter().position(|b| *b == b'\n').unwrap_or(value.len());
    std::str::from_utf8(&value[..end]).ok()?.parse().ok()
}

/// Every member of `cluster`, `leader` first.
fn processes(cluster: &EtcdCluster, leader: u64) -> Vec<Process> {
    let mut ids = cluster.ids();
    ids.sort_by_key(|id| (*id != leader, *id));
    ids.into_iter()
        .filter_map(|id| {
            let pid = cluster.member(id).ok()?.pid()?;
            Some(Process { id, pid, leader: id == leader })
        })
        .collect()
}

/// A started, healthy cluster and its leader.
async fn healthy_cluster() -> anyhow::Result<(EtcdCluster, u64)> {
    let mut cluster = EtcdCluster::start(GROUP_SIZE)?;
    let leader = cluster.wait_healthy(HEALTHY_TIMEOUT).await?;
    Ok((cluster, leader))
}

/// The watch cluster: a publisher connected to the leader and `per_member` watch
/// connections to every member.
pub struct EtcdWatch {
    cluster: EtcdCluster,
    leader: u64,
    publisher: KvClient,
    /// Connections, `[c0 m1, c0 m2, c0 m3, c1 m1, …]`, so that consecutive watchers go
    /// to consecutive members.
    clients: Vec<WatchClient>,
}

impl EtcdWatch {
    /// Starts a cluster, connects, and writes the initial value (change 0).
    ///
    /// # Errors
    /// The cluster did not become healthy or the first write failed.
    pub async fn start(per_member: usize) -> anyhow::Result<Self> {
        let (cluster, leader) = healthy_cluster().await?;
        let publisher = cluster.client(&[leader]).await?.kv_client();
        let mut clients = Vec::new();
        for _ in 0..per_member {
            for id in cluster.ids() {
                clients.push(cluster.client(&[id]).await?.watch_client());
            }
        }
        let mut this = Self { cluster, leader, publisher, clients };
        this.write(0).await.context("initial put")?;
        Ok(this)
    }
}

impl WatchTarget for EtcdWatch {
    fn name(&self) -> &'static str {
        "etcd"
    }

    fn processes(&self) -> Vec<Process> {
        processes(&self.cluster, self.leader)
    }

    fn connections(&self) -> usize {
        self.clients.len()
    }

    fn watcher(
        &self,
        index: usize,
        spec: WatcherSpec,
    ) -> impl Future<Output = Receipts> + Send + 'static {
        watcher(self.clients[index % self.clients.len()].clone(), spec)
    }

    async fn write(&mut self, change: u64) -> anyhow::Result<()> {
        self.publisher.put(KEY, value_of(change), None).await.map(|_| ()).context("put")
    }
}

/// One watcher: opens a `Watch` of [`KEY`] from the next revision, waits for etcd's
/// "created" answer, reports ready, then records every marker until it holds the last
/// change or is stopped.
async fn watcher(mut client: WatchClient, spec: WatcherSpec) -> Receipts {
    let WatcherSpec { changes, ready, mut stop } = spec;
    let mut receipts = Receipts::new(changes);
    let open = async {
        let mut stream = client.watch(KEY, None).await.context("watch")?;
        match stream.message().await.context("watch")? {
            Some(answer) if answer.created() => Ok(stream),
            Some(answer) => Err(anyhow::anyhow!("watch not created: {}", answer.cancel_reason())),
            None => Err(anyhow::anyhow!("the watch ended before it was created")),
        }
    };
    let opened = tokio::time::timeout(OPEN_TIMEOUT, open)
        .await
        .unwrap_or_else(|_| Err(anyhow::anyhow!("not created within {OPEN_TIMEOUT:?}")));
    let mut stream = match opened {
        Ok(stream) => stream,
        Err(error) => {
            receipts.error = Some(format!("{error:#}"));
            let _ = ready.send(Err(error)).await;
            return receipts;
        }
    };
    let _ = ready.send(Ok(())).await;
    drop(ready);
    loop {
        tokio::select! {
            message = stream.message() => {
                let now = Instant::now();
                match message {
                    Ok(Some(answer)) => {
                        if answer.canceled() {
                            receipts.error =
                                Some(format!("watch canceled: {}", answer.cancel_reason()));
                            break;
                        }
                        for event in answer.events() {
                            if let Some(marker) = event.kv().and_then(|kv| marker(kv.value())) {
                                receipts.record(marker, now);
                            }
                        }
                        if receipts.complete() {
                            break;
                        }
                    }
                    Ok(None) => {
                        receipts.error = Some("the watch ended".into());
                        break;
                    }
                    Err(error) => {
                        receipts.error = Some(format!("watch: {error}"));
                        break;
                    }
                }
            }
            _ = stop.changed() => break,
        }
    }
    receipts
}

/// The endpoint cluster: one JSON document per export under `bench/exports/mem/`,
/// written through the leader.
pub struct EtcdEndpoints {
    cluster: EtcdCluster,
    leader: u64,
    client: KvClient,
}

impl EtcdEndpoints {
    /// Starts a fresh cluster.
    ///
    /// # Errors
    /// It did not become healthy.
    pub async fn start() -> anyhow::Result<Self> {
        let (cluster, leader) = healthy_cluster().await?;
        let client = cluster.client(&[leader]).await?.kv_client();
        Ok(Self { cluster, leader, client })
    }

    fn key(index: usize) -> String {
        format!("bench/exports/mem/{SERVICE_NAMESPACE}/ep-{index:05}")
    }
}

impl EndpointStore for EtcdEndpoints {
    fn name(&self) -> &'static str {
        "etcd"
    }

    fn leader_and_follower(&self) -> (Process, Process) {
        let all = processes(&self.cluster, self.leader);
        let leader = all[0];
        (leader, all.get(1).copied().unwrap_or(leader))
    }

    fn store_export(
        &mut self,
        index: usize,
        first: usize,
        count: usize,
    ) -> impl Future<Output = anyhow::Result<()>> + Send {
        let value = export_document(&format!("ep-{index:05}"), first, count, 1);
        let mut client = self.client.clone();
        async move {
            client.put(Self::key(index), value, None).await.context("put")?;
            Ok(())
        }
    }

    async fn wait_applied(&self, _endpoints: usize, exports: usize) -> anyhow::Result<()> {
        let Some(last) = exports.checked_sub(1) else {
            return Ok(());
        };
        let key = Self::key(last);
        for id in self.cluster.ids() {
            let client = self.cluster.client(&[id]).await?.kv_client();
            eventually(
                &format!("etcd member {id} to hold {exports} documents"),
                Duration::from_secs(120),
                || {
                    let mut client = client.clone();
                    let key = key.clone();
                    async move {
                        // A serializable read answers from this member's own state.
                        let options = GetOptions::new().with_serializable().with_keys_only();
                        let found = client.get(key, Some(options)).await.ok()?;
                        (!found.kvs().is_empty()).then_some(())
                    }
                },
            )
            .await?;
        }
        Ok(())
    }

    async fn compact(&self) -> anyhow::Result<bool> {
        // etcd keeps its raft log in memory until it has `--snapshot-count` (100,000)
        // entries; there is no call to snapshot it now.
        Ok(false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_marker_is_the_first_line_of_the_value() {
        assert_eq!(marker(value_of(42).as_bytes()), Some(42));
        assert_eq!(marker(b"7"), Some(7));
        assert_eq!(marker(b"x\n{}"), None);
    }

    #[test]
    fn export_documents_hold_every_endpoint() {
        let doc: serde_json::Value =
            serde_json::from_str(&export_document("ep-00000", 0, 3, 1)).expect("json");
        let endpoints = doc["endpoints"].as_array().expect("endpoints");
        assert_eq!(endpoints.len(), 3);
        assert_eq!(endpoints[2]["address"], "127.0.0.3");
        assert_eq!(doc["namespace"], "bench");
    }
}
