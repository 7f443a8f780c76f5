//! Federator under `bench propagation`: a 3-replica group, a publisher member exporting
//! `bench/svc`, watcher members whose `Watch` streams are spread over the replicas, and
//! a member that loads endpoints for the memory figures.

use std::time::{Duration, Instant};

use anyhow::Context as _;
use federator_proto::admin as admin_pb;
use federator_proto::federation as pb;
use federator_proto::federation::federation_client::FederationClient;
use federator_proto::federation::watch_event::Event;
use tonic::transport::Channel;

use super::memory::{EndpointStore, endpoint_address};
use super::watch::{Process, Receipts, WatchTarget, WatcherSpec};
use super::{OPEN_TIMEOUT, SERVICE_NAME, SERVICE_NAMESPACE};
use crate::bench::{GROUP_SIZE, HEALTHY_TIMEOUT};
use crate::cluster::Federation;
use crate::member::MemberCluster;
use crate::wait::eventually;

/// Lease of the publisher and the loading member: longer than any run.
const LEASE_TTL_SECONDS: u32 = 3_600;
/// Port of the exported services.
const SERVICE_PORT: u32 = 8080;

/// A formed group with its leader, started for one part of the benchmark.
async fn formed_group() -> anyhow::Result<(Federation, u64)> {
    // A few member identities stand in for the watches of many agents: lift the cap on
    // one member's watch streams per replica (an agent holds one).
    let mut fed =
        Federation::formed(GROUP_SIZE, "[limits]\nmax_watches_per_member = 100000\n").await?;
    fed.show_logs_on_drop = false;
    let leader = fed.wait_for_leader(&fed.ids(), HEALTHY_TIMEOUT).await?;
    Ok((fed, leader))
}

/// Joins member `name` through replica `via` and returns it with a client of `via`.
async fn joined(
    fed: &Federation,
    name: &str,
    via: u64,
) -> anyhow::Result<(MemberCluster, FederationClient<Channel>)> {
    let mut member = MemberCluster::new(name, &format!("{name}.bench.test"))?;
    member.join(fed, via).await.with_context(|| format!("joining member {name}"))?;
    let client = member.client(&fed.replica(via).api_addr, &fed.ca_pem()).await?;
    Ok((member, client))
}

/// A live lease for the member of `client`, so its endpoints are imported as ready.
pub async fn grant_lease(client: &mut FederationClient<Channel>) -> anyhow::Result<()> {
    client
        .grant_lease(pb::GrantLeaseRequest {
            ttl_seconds: LEASE_TTL_SECONDS,
            region: "region-1".into(),
            zone: "zone-1".into(),
        })
        .await
        .context("granting a lease")?;
    Ok(())
}

/// The marker of `bench/svc` in a watch event: the endpoint weight minus one.
#[must_use]
pub fn marker(event: &pb::WatchEvent) -> Option<u64> {
    let Some(Event::ImportPut(import)) = &event.event else {
        return None;
    };
    if import.namespace != SERVICE_NAMESPACE || import.name != SERVICE_NAME {
        return None;
    }
    let weight = import.clusters.iter().flat_map(|c| &c.endpoints).map(|e| e.weight).max()?;
    Some(u64::from(weight).saturating_sub(1))
}

/// The watch group: publisher `pub` exporting `bench/svc` through the leader, and
/// `watcher_members` members each with a connection to every replica.
pub struct FederatorWatch {
    fed: Federation,
    leader: u64,
    publisher: FederationClient<Channel>,
    /// The publisher's export; change k sets its endpoint's weight to k + 1.
    export: pb::ServiceExport,
    /// Connections, member-major: `[m0 r1, m0 r2, m0 r3, m1 r1, …]`, so that
    /// consecutive watchers go to consecutive replicas.
    clients: Vec<FederationClient<Channel>>,
}

impl FederatorWatch {
    /// Starts a group, joins the members and makes the initial export (change 0).
    ///
    /// # Errors
    /// The group did not form, or a join, lease or export failed.
    pub async fn start(watcher_members: usize) -> anyhow::Result<Self> {
        let (fed, leader) = formed_group().await?;
        let ids = fed.ids();
        let (publisher_member, mut publisher) = joined(&fed, "pub", leader).await?;
        grant_lease(&mut publisher).await?;
        let export = publisher_member.export(
            SERVICE_NAMESPACE,
            SERVICE_NAME,
            SERVICE_PORT,
            &[&endpoint_address(1)],
        );
        let ca = fed.ca_pem();
        let mut clients = Vec::new();
        for m in 0..watcher_members {
            let (member, _) = joined(&fed, &format!("w{m}"), ids[m % ids.len()]).await?;
            for id in &ids {
                clients.push(member.client(&fed.replica(*id).api_addr, &ca).await?);
            }
        }
        let mut this = Self { fed, leader, publisher, export, clients };
        this.write(0).await.context("initial export")?;
        Ok(this)
    }

    /// The group.
    #[must_use]
    pub fn federation(&self) -> &Federation {
        &self.fed
    }

    /// The replica that led when the group formed (the publisher's).
    #[must_use]
    pub fn leader(&self) -> u64 {
        self.leader
    }
}

impl WatchTarget for FederatorWatch {
    fn name(&self) -> &'static str {
        "Federator"
    }

    fn processes(&self) -> Vec<Process> {
        processes(&self.fed, self.leader)
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
        let mut export = self.export.clone();
        let weight = u32::try_from(change + 1)?;
        for endpoint in &mut export.endpoints {
            endpoint.weight = weight;
        }
        self.publisher
            .export_service(pb::ExportServiceRequest { export: Some(export) })
            .await
            .map(|_| ())
            .map_err(|s| anyhow::anyhow!("ExportService: {:?}: {}", s.code(), s.message()))
    }
}

/// Every replica of `fed`, `leader` first.
fn processes(fed: &Federation, leader: u64) -> Vec<Process> {
    let mut ids = fed.ids();
    ids.sort_by_key(|id| (*id != leader, *id));
    ids.into_iter()
        .filter_map(|id| fed.replica(id).pid().map(|pid| Process { id, pid, leader: id == leader }))
        .collect()
}

/// One watcher: opens a `Watch` from revision 0, reads the snapshot, reports ready, then
/// records every marker of `bench/svc` until it holds the last change or is stopped.
async fn watcher(mut client: FederationClient<Channel>, spec: WatcherSpec) -> Receipts {
    let WatcherSpec { changes, ready, mut stop } = spec;
    let mut receipts = Receipts::new(changes);
    let status_text = |s: tonic::Status| anyhow::anyhow!("Watch: {:?}: {}", s.code(), s.message());
    let open = async {
        let mut stream = client
            .watch(pb::WatchRequest { after_revision: 0 })
            .await
            .map_err(status_text)?
            .into_inner();
        loop {
            match stream.message().await.map_err(status_text)? {
                Some(event) if matches!(event.event, Some(Event::SnapshotEnd(_))) => {
                    return Ok(stream);
                }
                Some(_) => {}
                None => anyhow::bail!("the watch ended before its snapshot did"),
            }
        }
    };
    let opened = tokio::time::timeout(OPEN_TIMEOUT, open)
        .await
        .unwrap_or_else(|_| Err(anyhow::anyhow!("no snapshot within {OPEN_TIMEOUT:?}")));
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
                    Ok(Some(event)) => {
                        if let Some(marker) = marker(&event) {
                            receipts.record(marker, now);
                            if receipts.complete() {
                                break;
                            }
                        }
                    }
                    Ok(None) => {
                        receipts.error = Some("the watch ended".into());
                        break;
                    }
                    Err(status) => {
                        receipts.error = Some(format!("{:#}", status_text(status)));
                        break;
                    }
                }
            }
            _ = stop.changed() => break,
        }
    }
    receipts
}

/// The endpoint group: member `mem` exporting services `bench/ep-NNNNN` through the
/// leader.
pub struct FederatorEndpoints {
    fed: Federation,
    leader: u64,
    member: MemberCluster,
    client: FederationClient<Channel>,
}

impl FederatorEndpoints {
    /// Starts a fresh group and joins the loading member.
    ///
    /// # Errors
    /// The group did not form, or the join or lease failed.
    pub async fn start() -> anyhow::Result<Self> {
        let (fed, leader) = formed_group().await?;
        let (member, mut client) = joined(&fed, "mem", leader).await?;
        grant_lease(&mut client).await?;
        Ok(Self { fed, leader, member, client })
    }
}

impl EndpointStore for FederatorEndpoints {
    fn name(&self) -> &'static str {
        "Federator"
    }

    fn leader_and_follower(&self) -> (Process, Process) {
        let all = processes(&self.fed, self.leader);
        let leader = all[0];
        (leader, all.get(1).copied().unwrap_or(leader))
    }

    fn store_export(
        &mut self,
        index: usize,
        first: usize,
        count: usize,
    ) -> impl Future<Output = anyhow::Result<()>> + Send {
        let addresses: Vec<String> = (first..first + count).map(endpoint_address).collect();
        let refs: Vec<&str> = addresses.iter().map(String::as_str).collect();
        let export =
            self.member.export(SERVICE_NAMESPACE, &format!("ep-{index:05}"), SERVICE_PORT, &refs);
        let mut client = self.client.clone();
        async move {
            client
                .export_service(pb::ExportServiceRequest { export: Some(export) })
                .await
                .context("ExportService")?;
            Ok(())
        }
    }

    async fn wait_applied(&self, endpoints: usize, _exports: usize) -> anyhow::Result<()> {
        // The replicas' own gauge (refreshed every 2 s), not `Status`: that call hashes
        // the whole state whenever the applied index moved.
        for id in self.fed.ids() {
            eventually(
                &format!("replica {id} to hold {endpoints} endpoints"),
                Duration::from_secs(120),
                || async {
                    let text = self.fed.metrics(id).await.ok()?;
                    let held = gauge(&text, "federator_endpoints")?;
                    (held >= endpoints as f64).then_some(())
                },
            )
            .await?;
        }
        Ok(())
    }

    async fn compact(&self) -> anyhow::Result<bool> {
        for id in self.fed.ids() {
            self.fed
                .admin(id)
                .await?
                .trigger_snapshot(admin_pb::TriggerSnapshotRequest { purge: true })
                .await
                .with_context(|| format!("TriggerSnapshot on replica {id}"))?;
        }
        Ok(true)
    }
}

/// The value of an unlabelled metric in a Prometheus text exposition.
fn gauge(exposition: &str, name: &str) -> Option<f64> {
    exposition.lines().find_map(|line| {
        let value = line.strip_prefix(name)?.strip_prefix(' ')?;
        value.split_whitespace().next()?.parse().ok()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn import_put(namespace: &str, name: &str, weights: &[u32]) -> pb::WatchEvent {
        pb::WatchEvent {
            revision: 7,
            event: Some(Event::ImportPut(pb::ServiceImport {
                namespace: namespace.into(),
                name: name.into(),
                clusters: vec![pb::ImportedCluster {
                    endpoints: weights
                        .iter()
                        .map(|w| pb::ImportEndpoint { weight: *w, ..Default::default() })
                        .collect(),
                    ..Default::default()
                }],
                ..Default::default()
            })),
            applied_at_ms: 0,
        }
    }

    #[test]
    fn the_marker_is_the_weight_of_bench_svc_minus_one() {
        assert_eq!(marker(&import_put("bench", "svc", &[43])), Some(42));
        assert_eq!(marker(&import_put("bench", "svc", &[1])), Some(0));
        assert_eq!(marker(&import_put("bench", "other", &[43])), None);
        assert_eq!(marker(&import_put("bench", "svc", &[])), None);
        let checkpoint = pb::WatchEvent {
            event: Some(Event::Checkpoint(pb::Checkpoint {})),
            revision: 7,
            applied_at_ms: 0,
        };
        assert_eq!(marker(&checkpoint), None);
    }

    #[test]
    fn gauges_are_read_from_an_exposition() {
        let text = "# TYPE federator_endpoints gauge\nfederator_endpoints 100000\n\
                    federator_endpoints_other 3\n";
        assert_eq!(gauge(text, "federator_endpoints"), Some(100_000.0));
        assert_eq!(gauge(text, "federator_services"), None);
    }
}
