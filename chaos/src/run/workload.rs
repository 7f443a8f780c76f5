//! What runs against the federation while faults are injected, and what it records.
//!
//! - **Register clients** write and linearizably read a few keys of the probe keyspace
//!   through random replicas. A write that errs or times out is indeterminate (it may
//!   have been committed by a leader that could not answer); a read that errs is
//!   dropped.
//! - **Members** rotate their trust bundles through random replicas; every acknowledged
//!   publish names the revision it committed at.
//! - **Watchers** (an observer member) follow the bundles, resuming after every broken
//!   stream from the last checkpoint, and record each change and every sequence seen.
//! - **An adversary** (member `a`) tries to publish a bundle for `b`'s trust domain.
//! - **A sampler** polls every replica's status: who leads which term, and state digests
//!   at applied indexes.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use federator_proto::admin as admin_pb;
use federator_proto::admin::admin_client::AdminClient;
use federator_proto::federation as pb;
use federator_proto::federation::federation_client::FederationClient;
use rand::rngs::StdRng;
use rand::{Rng as _, SeedableRng as _};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tonic::transport::Channel;

use super::topology::Topology;
use crate::check::history::{
    CrossDomainAttempt, DigestSample, History, LeaderSample, OpId, OpKind, Outcome, Process,
    SequenceSample, WatchEvent,
};
use crate::member::{MemberCluster, publish_request};

/// Limit on one client operation; past it the operation is indeterminate. Clients pick a
/// replica at random for each operation, so this is also how long one that picked a hung
/// replica is lost to the run.
const OP_TIMEOUT: Duration = Duration::from_millis(1_500);

/// Nanoseconds since the start of the run.
#[derive(Clone, Copy)]
pub struct Clock(Instant);

impl Clock {
    /// A clock starting now.
    #[must_use]
    pub fn start() -> Self {
        Self(Instant::now())
    }

    /// Nanoseconds since the start.
    #[must_use]
    pub fn now(&self) -> u64 {
        u64::try_from(self.0.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }
}

/// Everything the workload records, shared by its tasks.
#[derive(Default)]
pub struct Recorded {
    /// Register operations.
    pub history: History,
    /// Watch events in received order.
    pub watch_events: Vec<WatchEvent>,
    /// Acknowledged bundle publishes, exports and unexports: revision → the watch key
    /// they changed.
    pub published: BTreeMap<u64, String>,
    /// Bundle publishes acknowledged / failed.
    pub publishes: (u64, u64),
    /// Exports and unexports acknowledged / failed.
    pub exports: (u64, u64),
    /// Watch streams resumed after breaking.
    pub resumes: u64,
    /// Sequences watchers saw.
    pub sequences: Vec<SequenceSample>,
    /// Leaders seen.
    pub leaders: Vec<LeaderSample>,
    /// Digests seen.
    pub digests: Vec<DigestSample>,
    /// Cross-domain attempts.
    pub cross_domain: Vec<CrossDomainAttempt>,
}

/// The shared record.
pub type Shared = Arc<Mutex<Recorded>>;

fn lock(shared: &Shared) -> std::sync::MutexGuard<'_, Recorded> {
    shared.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Settings of the workload.
#[derive(Clone, Copy, Debug)]
pub struct WorkloadConfig {
    /// Concurrent register clients.
    pub clients: u32,
    /// Keys they share.
    pub keys: u32,
    /// Pause between a client's operations.
    pub think: Duration,
    /// Pause between a member's bundle rotations.
    pub rotation_every: Duration,
}

impl Default for WorkloadConfig {
    fn default() -> Self {
        Self {
            clients: 6,
            keys: 3,
            think: Duration::from_millis(20),
            rotation_every: Duration::from_millis(400),
        }
    }
}

/// The running workload.
pub struct Workload {
    /// What it recorded.
    pub shared: Shared,
    stop: watch::Sender<bool>,
    tasks: JoinSet<()>,
}

/// Key `k` of the register workload.
#[must_use]
pub fn key(k: u32) -> String {
    format!("chaos/{k}")
}

impl Workload {
    /// Joins the members and starts every task.
    ///
    /// # Errors
    /// A member could not join before the faults begin.
    pub async fn start(
        topo: &Topology,
        config: WorkloadConfig,
        seed: u64,
        clock: Clock,
    ) -> anyhow::Result<Self> {
        let shared = Shared::default();
        let (stop, stopped) = watch::channel(false);
        let mut tasks = JoinSet::new();
        // Every replica's, spares' too: a membership change brings them into the group.
        let apis: Vec<String> = topo.api_addrs.values().cloned().collect();
        let ca_pem = topo.fed.ca_pem();

        let mut members = Vec::new();
        for name in ["a", "b", "observer"] {
            let mut member = MemberCluster::new(name, &format!("{name}.chaos.test"))?;
            member.join(&topo.fed, topo.ids[0]).await?;
            members.push(member);
        }
        let observer = members.pop().expect("three members");
        let admins = Arc::new(topo.fed.connection(&topo.ids)?);

        for c in 0..config.clients {
            let rng = StdRng::seed_from_u64(seed.wrapping_add(u64::from(c)));
            tasks.spawn(register_client(
                c,
                Arc::clone(&admins),
                apis.clone(),
                config,
                rng,
                clock,
                shared.clone(),
                stopped.clone(),
            ));
        }
        for (i, member) in members.into_iter().enumerate() {
            let rng = StdRng::seed_from_u64(seed.wrapping_add(1_000 + i as u64));
            let adversary = i == 0;
            tasks.spawn(rotations(
                member,
                adversary,
                apis.clone(),
                ca_pem.clone(),
                config.rotation_every,
                rng,
                shared.clone(),
                stopped.clone(),
            ));
        }
        let observer = Arc::new(observer);
        for w in 0..2u32 {
            tasks.spawn(watcher(
                w,
                Arc::clone(&observer),
                apis.clone(),
                ca_pem.clone(),
                clock,
                shared.clone(),
                stopped.clone(),
            ));
        }
        tasks.spawn(sampler(Arc::clone(&admins), apis, clock, shared.clone(), stopped));
        Ok(Self { shared, stop, tasks })
    }

    /// Stops every task and waits for them.
    pub async fn stop(mut self) -> Shared {
        let _ = self.stop.send(true);
        while tokio::time::timeout(OP_TIMEOUT * 3, self.tasks.join_next())
            .await
            .ok()
            .flatten()
            .is_some()
        {}
        self.tasks.abort_all();
        self.shared
    }
}

/// Writes and reads random keys through random replicas until stopped.
#[allow(clippy::too_many_arguments)]
async fn register_client(
    c: u32,
    admins: Arc<federator::cli::Connection>,
    apis: Vec<String>,
    config: WorkloadConfig,
    mut rng: StdRng,
    clock: Clock,
    shared: Shared,
    stopped: watch::Receiver<bool>,
) {
    let mut next_value = 0u64;
    let mut clients: std::collections::HashMap<String, AdminClient<Channel>> =
        std::collections::HashMap::new();
    while !*stopped.borrow() {
        let k = key(rng.random_range(0..config.keys));
        let api = &apis[rng.random_range(0..apis.len())];
        let write = rng.random_bool(0.5);
        let kind = if write {
            next_value += 1;
            // Unique over clients: the client in the low bits.
            OpKind::Write { value: next_value << 8 | u64::from(c) }
        } else {
            OpKind::Read
        };
        let id = lock(&shared).history.invoke(Process(c), k.clone(), kind, clock.now());
        let outcome = tokio::time::timeout(OP_TIMEOUT, async {
            let mut admin = match clients.get(api) {
                Some(admin) => admin.clone(),
                None => match admins.admin(api).await {
                    Ok(admin) => {
                        clients.insert(api.clone(), admin.clone());
                        admin
                    }
                    // Never sent: it did not happen.
                    Err(_) => return Some(Outcome::Failed),
                },
            };
            match kind {
                OpKind::Write { value } => {
                    let put = admin_pb::PutRequest {
                        key: k.clone(),
                        value: value.to_string().into_bytes(),
                    };
                    admin.put(put).await.ok().map(|_| Outcome::Ok { read_value: None })
                }
                OpKind::Read => {
                    let get = admin_pb::GetRequest {
                        key: k.clone(),
                        consistency: admin_pb::Consistency::Linearizable.into(),
                    };
                    let got = admin.get(get).await.ok()?.into_inner();
                    let value = if got.found {
                        Some(String::from_utf8(got.value).ok()?.parse().ok()?)
                    } else {
                        None
                    };
                    Some(Outcome::Ok { read_value: value })
                }
            }
        })
        .await
        .ok()
        .flatten();
        if !matches!(outcome, Some(Outcome::Ok { .. })) {
            // Reconnect next time: the replica may have been restarted.
            clients.remove(api);
        }
        let outcome = outcome.unwrap_or(Outcome::Indeterminate);
        complete(&shared, id, clock.now(), outcome);
        tokio::time::sleep(config.think).await;
    }
}

fn complete(shared: &Shared, id: OpId, at: u64, outcome: Outcome) {
    lock(shared).history.complete(id, at, outcome);
}

/// Rotates `member`'s bundle through random replicas; the adversary also tries to
/// publish for `b`'s trust domain.
#[allow(clippy::too_many_arguments)]
async fn rotations(
    mut member: MemberCluster,
    adversary: bool,
    apis: Vec<String>,
    ca_pem: String,
    every: Duration,
    mut rng: StdRng,
    shared: Shared,
    stopped: watch::Receiver<bool>,
) {
    let mut attempt = 0u64;
    while !*stopped.borrow() {
        tokio::time::sleep(every).await;
        let api = &apis[rng.random_range(0..apis.len())];
        let Ok(bundle) = member.next_bundle() else { continue };
        let published = tokio::time::timeout(OP_TIMEOUT, async {
            let mut client = member.client(api, &ca_pem).await.ok()?;
            let request = publish_request(&member.trust_domain, bundle, false);
            client.publish_bundle(request).await.ok().map(tonic::Response::into_inner)
        })
        .await
        .ok()
        .flatten();
        {
            let mut recorded = lock(&shared);
            match published {
                Some(response) => {
                    recorded.publishes.0 += 1;
                    let key = format!("bundle/{}", member.trust_domain);
                    recorded.published.insert(response.revision, key);
                }
                None => recorded.publishes.1 += 1,
            }
        }
        churn_exports(&member, api, &ca_pem, &mut rng, &shared).await;
        if adversary && rng.random_bool(0.3) {
            attempt += 1;
            // Exports a service run by b's workloads: must be refused.
            let mut export = member.export(CHURN_NAMESPACE, "stolen", 80, &["127.0.0.99"]);
            export.identities = vec!["spiffe://b.chaos.test/ns/shop/sa/cart".into()];
            let request = pb::ExportServiceRequest { export: Some(export) };
            let committed = attempt_as(&member, api, &ca_pem, |mut client| async move {
                client.export_service(request).await.is_ok()
            });
            record_cross_domain(
                &shared,
                attempt,
                "b.chaos.test (export identities)",
                committed.await,
            );
            attempt += 1;
            let Ok(bundle) = member.bundle_at(1_000_000 + attempt) else { continue };
            // Claims b's trust domain with a's own CA.
            let request = publish_request("b.chaos.test", bundle, true);
            let committed = attempt_as(&member, api, &ca_pem, |mut client| async move {
                client.publish_bundle(request).await.is_ok()
            });
            record_cross_domain(&shared, attempt, "b.chaos.test", committed.await);
        }
    }
}

/// Runs `call` with a client of `member` through `api`, bounded in time; `None` when it
/// could not connect or did not finish.
async fn attempt_as<F, Fut>(
    member: &MemberCluster,
    api: &str,
    ca_pem: &str,
    call: F,
) -> Option<bool>
where
    F: FnOnce(FederationClient<Channel>) -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    tokio::time::timeout(OP_TIMEOUT, async {
        Some(call(member.client(api, ca_pem).await.ok()?).await)
    })
    .await
    .ok()
    .flatten()
}

/// Records a cross-domain attempt whose outcome is known (`Some(committed)`).
fn record_cross_domain(shared: &Shared, attempt: u64, claimed: &str, committed: Option<bool>) {
    if let Some(committed) = committed {
        lock(shared).cross_domain.push(CrossDomainAttempt {
            op: OpId(attempt),
            trust_domain_claimed: claimed.into(),
            committed,
        });
    }
}

/// Namespace of the services the members export and unexport.
const CHURN_NAMESPACE: &str = "chaos";

/// Watch key of the import of `namespace/name`.
fn import_key(namespace: &str, name: &str) -> String {
    format!("import/{namespace}/{name}")
}

/// Exports `member`'s service with 1 to 3 new endpoints, or withdraws it; records the
/// acknowledged change's revision under the import's watch key.
async fn churn_exports(
    member: &MemberCluster,
    api: &str,
    ca_pem: &str,
    rng: &mut StdRng,
    shared: &Shared,
) {
    let name = format!("svc-{}", member.name);
    let export = rng.random_bool(0.7);
    let addresses: Vec<String> = (0..rng.random_range(1..=3))
        .map(|_| format!("127.0.{}.{}", rng.random_range(1..=254), rng.random_range(1..=254)))
        .collect();
    let revision = tokio::time::timeout(OP_TIMEOUT, async {
        let mut client = member.client(api, ca_pem).await.ok()?;
        if export {
            let refs: Vec<&str> = addresses.iter().map(String::as_str).collect();
            let request = pb::ExportServiceRequest {
                export: Some(member.export(CHURN_NAMESPACE, &name, 8080, &refs)),
            };
            client.export_service(request).await.ok().map(|r| r.into_inner().revision)
        } else {
            let request = pb::UnexportServiceRequest {
                namespace: CHURN_NAMESPACE.into(),
                name: name.clone(),
            };
            match client.unexport_service(request).await {
                Ok(response) => Some(response.into_inner().revision),
                // Not exported: refused, nothing changed.
                Err(status) if status.code() == tonic::Code::NotFound => Some(0),
                Err(_) => None,
            }
        }
    })
    .await
    .ok()
    .flatten();
    let mut recorded = lock(shared);
    match revision {
        Some(0) => {}
        Some(revision) => {
            recorded.exports.0 += 1;
            recorded.published.insert(revision, import_key(CHURN_NAMESPACE, &name));
        }
        None => recorded.exports.1 += 1,
    }
}

/// Follows the federation's bundles as the observer member, resuming from the last
/// checkpoint when the stream breaks; a resync starts a new watcher identity (its
/// history before the resync is complete by itself).
async fn watcher(
    w: u32,
    observer: Arc<MemberCluster>,
    apis: Vec<String>,
    ca_pem: String,
    clock: Clock,
    shared: Shared,
    stopped: watch::Receiver<bool>,
) {
    let mut identity = w;
    let mut after = 0u64;
    let mut live = false;
    let mut attempt = 0usize;
    while !*stopped.borrow() {
        let api = &apis[(w as usize + attempt) % apis.len()];
        attempt += 1;
        let stream = tokio::time::timeout(OP_TIMEOUT, async {
            let mut client = observer.client(api, &ca_pem).await.ok()?;
            client.watch(pb::WatchRequest { after_revision: after }).await.ok()
        })
        .await
        .ok()
        .flatten();
        let Some(stream) = stream else {
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        };
        let mut stream = stream.into_inner();
        let mut resumed = live;
        if live {
            lock(&shared).resumes += 1;
        }
        let mut in_snapshot = !live;
        let mut stop = stopped.clone();
        loop {
            let message = tokio::select! {
                m = stream.message() => m,
                _ = stop.changed() => return,
            };
            let Ok(Some(event)) = message else { break };
            match event.event {
                Some(pb::watch_event::Event::BundlePut(bundle)) => {
                    let mut recorded = lock(&shared);
                    recorded.sequences.push(SequenceSample {
                        reader: w,
                        trust_domain: bundle.trust_domain.clone(),
                        sequence: bundle.sequence,
                        at: clock.now(),
                    });
                    if !in_snapshot {
                        recorded.watch_events.push(WatchEvent {
                            watcher: identity,
                            revision: event.revision,
                            key: format!("bundle/{}", bundle.trust_domain),
                            resumed,
                        });
                        resumed = false;
                    }
                }
                Some(
                    pb::watch_event::Event::ImportPut(pb::ServiceImport {
                        namespace, name, ..
                    })
                    | pb::watch_event::Event::ImportRemoved(pb::ImportRemoved { namespace, name }),
                ) if !in_snapshot => {
                    lock(&shared).watch_events.push(WatchEvent {
                        watcher: identity,
                        revision: event.revision,
                        key: import_key(&namespace, &name),
                        resumed,
                    });
                    resumed = false;
                }
                Some(pb::watch_event::Event::Resync(_)) => {
                    identity += 100;
                    in_snapshot = true;
                }
                Some(pb::watch_event::Event::SnapshotEnd(_)) => {
                    in_snapshot = false;
                    live = true;
                    after = event.revision;
                }
                Some(pb::watch_event::Event::Checkpoint(_)) => {
                    live = true;
                    after = after.max(event.revision);
                }
                _ => {}
            }
        }
    }
}

/// Polls every replica's status: leaders by term and digests by applied index.
async fn sampler(
    admins: Arc<federator::cli::Connection>,
    apis: Vec<String>,
    clock: Clock,
    shared: Shared,
    stopped: watch::Receiver<bool>,
) {
    while !*stopped.borrow() {
        for api in &apis {
            let status =
                tokio::time::timeout(Duration::from_millis(300), admins.status_of(api)).await;
            let Ok(Ok(status)) = status else { continue };
            let mut recorded = lock(&shared);
            if status.role == admin_pb::Role::Leader as i32 {
                recorded.leaders.push(LeaderSample {
                    replica: status.id,
                    term: status.term,
                    at: clock.now(),
                });
            }
            if status.digest_index > 0 {
                recorded.digests.push(DigestSample {
                    replica: status.id,
                    applied_index: status.digest_index,
                    digest: status.state_digest,
                });
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Final values of every register key on every current voter, read once they agree.
///
/// # Errors
/// A replica did not answer.
pub async fn final_states(
    topo: &Topology,
    keys: u32,
) -> anyhow::Result<Vec<crate::check::durability::FinalState>> {
    let mut finals = Vec::new();
    for &id in &topo.ids {
        let mut admin = topo.fed.admin(id).await?;
        let listed = admin
            .list_probes(admin_pb::ListProbesRequest {
                prefix: "chaos/".into(),
                consistency: admin_pb::Consistency::Stale.into(),
            })
            .await?
            .into_inner();
        let values: BTreeMap<String, u64> = listed
            .entries
            .into_iter()
            .filter_map(|e| Some((e.key, String::from_utf8(e.value).ok()?.parse().ok()?)))
            .collect();
        debug_assert!(values.len() <= keys as usize);
        finals.push(crate::check::durability::FinalState {
            replica: id,
            applied_index: listed.applied_index,
            values,
        });
    }
    Ok(finals)
}
