//! The `member-down` nemesis: a whole member cluster goes down and comes back.
//!
//! Member cluster `c` runs a real `federator agent` with its own single-node etcd, a
//! short lease TTL, and one service exported through its etcd export prefix. A round
//! SIGKILLs the agent and the etcd together, holds, and restarts both. The promises held
//! against what the other members see (`ListImports` of the admin API, linearizable):
//!
//! - while `c` is down, its endpoints are reported not ready within its lease TTL plus
//!   [`NOT_READY_MARGIN`], and they stay not ready until it comes back;
//! - after the restart the agent reconnects, takes a new lease, and `c`'s endpoints are
//!   ready again within [`READY_WITHIN`].
//!
//! Broken promises are reported as [`ViolationKind::StaleMemberReady`] and
//! [`ViolationKind::MemberNotRecovered`]; the measured times go into the report.
//!
//! `c` runs in every scenario, not only in `member-down`: its agent reaches the replicas
//! and its etcd through the [`Topology`]'s proxies, so the link faults hit it too. After
//! healing, [`MemberDown::check_converged`] holds that it caught up with the federation
//! (else [`ViolationKind::AgentNotConverged`]).

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use federator::agent::sinks::files::ImportDocument;
use federator_proto::admin as admin_pb;
use federator_proto::admin::admin_client::AdminClient;
use tonic::transport::Channel;

use super::report::{Measurement, TimelineEvent};
use super::topology::Topology;
use super::workload::Clock;
use crate::agent::{AgentOptions, AgentProcess};
use crate::check::{Violation, ViolationKind};
use crate::cluster::tail;
use crate::etcd::EtcdCluster;
use crate::member::MemberCluster;

/// Lease TTL of `c`'s agent, seconds.
pub const LEASE_TTL: u32 = 3;
/// How long past its lease TTL a dead member's endpoints may still be reported ready.
pub const NOT_READY_MARGIN: Duration = Duration::from_secs(3);
/// Bound from the restart to `c`'s endpoints being ready again.
pub const READY_WITHIN: Duration = Duration::from_secs(15);
/// How long `c` stays down: past the not-ready bound, to see it hold.
pub const HOLD: Duration = Duration::from_secs(LEASE_TTL as u64 + 4);
/// How long the replica `c`'s agent uses stays hung in `hung-replica`: 1.5 × the TTL.
pub const HANG_HOLD: Duration = Duration::from_millis(LEASE_TTL as u64 * 1_500);

const CLUSTER: &str = "c";
const TRUST_DOMAIN: &str = "c.chaos.test";
const NAMESPACE: &str = "shop";
const SERVICE: &str = "c-echo";
/// The members whose imports are read: the watching observer first.
const CONSUMERS: &[&str] = &["observer", "a", "b"];
/// Bound of one admin call.
const CALL: Duration = Duration::from_secs(2);
const POLL: Duration = Duration::from_millis(100);
/// Bound of start-up waits (etcd healthy, agent joined).
const SETUP: Duration = Duration::from_secs(30);
/// Bound from the federation's convergence to `c`'s agent holding its state: three lease
/// TTLs. The agent's reconnect back-off is at most a quarter TTL and each of its calls is
/// bounded by one, so a connected agent catches up well within one TTL (measured: 54 ms to
/// 1.12 s in the short set); the rest is margin for a loaded CI machine.
pub const AGENT_CONVERGE_WITHIN: Duration = Duration::from_secs(3 * LEASE_TTL as u64);
/// The members that rotate bundles and export services (the workload's).
const PEERS: &[&str] = &["a", "b", "observer"];

/// Member cluster `c` and what its rounds found.
pub struct MemberDown {
    etcd: EtcdCluster,
    agent: AgentProcess,
    admins: BTreeMap<u64, AdminClient<Channel>>,
    polls: usize,
    rounds: usize,
    /// Times measured, per round.
    pub measurements: Vec<Measurement>,
    /// Broken promises.
    pub violations: Vec<Violation>,
    /// What could not be decided (no replica answered).
    pub inconclusive: Vec<String>,
}

impl MemberDown {
    /// Starts `c`'s etcd and agent (after the workload's members joined: the observer
    /// must be a member to have imports), exports `shop/c-echo` through the etcd prefix
    /// and waits until the observer sees it ready.
    ///
    /// # Errors
    /// etcd or the agent did not start, or the export never turned ready.
    pub async fn start(topo: &mut Topology, seed: u64) -> anyhow::Result<Self> {
        let mut etcd = EtcdCluster::start(1)?;
        etcd.wait_healthy(SETUP).await?;
        let mut etcd_endpoints = Vec::new();
        for url in etcd.client_urls() {
            etcd_endpoints.push(topo.link_etcd(&url, seed)?);
        }
        let member = MemberCluster::new(CLUSTER, TRUST_DOMAIN)?;
        let options = AgentOptions {
            etcd_endpoints,
            lease_ttl_seconds: Some(LEASE_TTL),
            locality: Some(("region-c".into(), "zone-c".into())),
            ..AgentOptions::default()
        };
        let mut agent = AgentProcess::new(&topo.fed, member, &options)?;
        // Every replica through the topology's proxies (a top-level key: first).
        let endpoints: Vec<String> =
            topo.agent_endpoints().iter().map(|e| format!("\"{e}\"")).collect();
        let config_path = agent.dir.join("agent.toml");
        let config = std::fs::read_to_string(&config_path)?;
        std::fs::write(&config_path, format!("endpoints = [{}]\n{config}", endpoints.join(", ")))?;
        let document = serde_json::json!({
            "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
            "endpoints": [
                {"address": "127.0.0.31", "zone": "zone-c", "region": "region-c", "ready": true},
                {"address": "127.0.0.32", "zone": "zone-c", "region": "region-c", "ready": true},
            ],
            "identities": [format!("spiffe://{TRUST_DOMAIN}/ns/{NAMESPACE}/sa/{SERVICE}")],
        });
        let mut client = etcd.client(&[]).await?;
        let key = format!("/federator/exports/{NAMESPACE}/{SERVICE}");
        tokio::time::timeout(CALL * 5, client.put(key, document.to_string(), None)).await??;
        agent.start()?;
        agent
            .wait_status("member c to join, take a lease and export", SETUP, |s| {
                s.lease.is_some() && s.exports.published == 1
            })
            .await?;
        let mut this = Self {
            etcd,
            agent,
            admins: BTreeMap::new(),
            polls: 0,
            rounds: 0,
            measurements: Vec::new(),
            violations: Vec::new(),
            inconclusive: Vec::new(),
        };
        let deadline = Instant::now() + READY_WITHIN;
        while this.ready(topo, CONSUMERS[0]).await != Some(true) {
            anyhow::ensure!(
                Instant::now() < deadline,
                "member c's export never turned ready for the observer; agent log:\n{}",
                tail(&this.agent.log(), 30)
            );
            tokio::time::sleep(POLL).await;
        }
        Ok(this)
    }

    /// One round: SIGKILL `c`'s agent and etcd, hold for [`HOLD`] watching its endpoints
    /// turn not ready, restart both and wait until they are ready again.
    ///
    /// # Errors
    /// etcd or the agent could not be spawned again.
    pub async fn round(
        &mut self,
        topo: &Topology,
        clock: Clock,
        timeline: &mut Vec<TimelineEvent>,
    ) -> anyhow::Result<()> {
        self.rounds += 1;
        let round = self.rounds;
        let old_lease = self.agent.status().and_then(|s| s.lease).map(|l| l.id);

        // == Down. ==
        let killed = Instant::now();
        self.agent.kill();
        self.etcd.kill_all();
        push(timeline, clock, "SIGKILL member c: its agent and its etcd".into());
        let bound = Duration::from_secs(u64::from(LEASE_TTL)) + NOT_READY_MARGIN;
        let mut not_ready_at: Option<Duration> = None;
        let mut answered = false;
        let mut flapped = false;
        while killed.elapsed() < HOLD {
            let ready = self.ready(topo, CONSUMERS[0]).await;
            let at = killed.elapsed();
            match (ready, not_ready_at) {
                (Some(false), None) => {
                    not_ready_at = Some(at);
                    push(
                        timeline,
                        clock,
                        format!("observed: member c not ready ({} ms after the kill)", ms(at)),
                    );
                }
                (Some(true), Some(since)) if !flapped => {
                    flapped = true;
                    self.violations.push(Violation::new(
                        ViolationKind::StaleMemberReady,
                        format!(
                            "round {round}: member c, down for {} ms, was reported ready again \
                             to the observer after being not ready from {} ms",
                            ms(at),
                            ms(since)
                        ),
                    ));
                }
                _ => {}
            }
            answered |= ready.is_some();
            tokio::time::sleep(POLL).await;
        }
        match not_ready_at {
            Some(at) => {
                self.measure(format!("round {round}: c down → not ready in the observer's import (lease TTL {LEASE_TTL} s)"), at);
                if at > bound {
                    self.violations.push(Violation::new(
                        ViolationKind::StaleMemberReady,
                        format!(
                            "round {round}: member c's endpoints were still reported ready {} ms \
                             after it died (lease TTL {LEASE_TTL} s + {} s allowed)",
                            ms(at),
                            NOT_READY_MARGIN.as_secs()
                        ),
                    ));
                }
            }
            None if answered => self.violations.push(Violation::new(
                ViolationKind::StaleMemberReady,
                format!(
                    "round {round}: member c's endpoints were still reported ready {} ms after \
                     it died (lease TTL {LEASE_TTL} s + {} s allowed)",
                    ms(killed.elapsed()),
                    NOT_READY_MARGIN.as_secs()
                ),
            )),
            None => self.inconclusive.push(format!(
                "round {round}: no replica answered ListImports while member c was down"
            )),
        }
        // Every member, through every replica, sees it not ready by now.
        for &consumer in CONSUMERS {
            for &via in &topo.ids {
                if self.ready_via(topo, consumer, via).await == Some(true) {
                    self.violations.push(Violation::new(
                        ViolationKind::StaleMemberReady,
                        format!(
                            "round {round}: replica {via} reports member c's endpoints ready to \
                             {consumer} {} ms after c died",
                            ms(killed.elapsed())
                        ),
                    ));
                }
            }
        }

        // == Back. ==
        let restarted = Instant::now();
        let restarted_wall = wall_ms();
        self.etcd.restart(1)?;
        self.agent.start()?;
        push(timeline, clock, "healed: restarted member c's etcd and agent".into());
        let mut leased_at = None;
        let mut ready_at = None;
        while restarted.elapsed() < READY_WITHIN && (leased_at.is_none() || ready_at.is_none()) {
            if leased_at.is_none() {
                let status = self.agent.status().filter(|s| {
                    s.written_at_ms >= restarted_wall
                        && s.connected_replica.is_some()
                        && s.lease.as_ref().is_some_and(|l| Some(l.id) != old_lease)
                });
                if status.is_some() {
                    leased_at = Some(restarted.elapsed());
                }
            }
            if ready_at.is_none() && self.ready(topo, CONSUMERS[0]).await == Some(true) {
                let at = restarted.elapsed();
                ready_at = Some(at);
                push(
                    timeline,
                    clock,
                    format!("observed: member c ready again ({} ms after the restart)", ms(at)),
                );
            }
            tokio::time::sleep(POLL).await;
        }
        match leased_at {
            Some(at) => self.measure(
                format!("round {round}: c restart → agent status: reconnected with a new lease"),
                at,
            ),
            None => self.violations.push(Violation::new(
                ViolationKind::MemberNotRecovered,
                format!(
                    "round {round}: member c's agent did not reconnect with a new lease within \
                     {} s of its restart; status {:?}; agent log:\n{}",
                    READY_WITHIN.as_secs(),
                    self.agent.status(),
                    tail(&self.agent.log(), 15)
                ),
            )),
        }
        match ready_at {
            Some(at) => self
                .measure(format!("round {round}: c restart → ready in the observer's import"), at),
            None => self.violations.push(Violation::new(
                ViolationKind::MemberNotRecovered,
                format!(
                    "round {round}: member c's endpoints were not ready again within {} s of its \
                     restart",
                    READY_WITHIN.as_secs()
                ),
            )),
        }
        Ok(())
    }

    /// One `hung-replica` round: SIGSTOP the replica `c`'s agent is attached to for
    /// [`HANG_HOLD`] (1.5 × its lease TTL) and hold that `c` loses nothing: its endpoints
    /// stay ready for the observer (read through the other replicas) and it keeps the
    /// same lease, having moved to another replica. Returns the replica hung and when the
    /// fault started and healed (clock nanoseconds), for the availability check.
    ///
    /// # Errors
    /// Never: what goes wrong is a violation or inconclusive.
    pub async fn hang_round(
        &mut self,
        topo: &Topology,
        clock: Clock,
        timeline: &mut Vec<TimelineEvent>,
    ) -> anyhow::Result<Option<(String, u64, u64)>> {
        self.rounds += 1;
        let round = self.rounds;
        let status = self.agent.status();
        let lease = status.as_ref().and_then(|s| s.lease.as_ref()).map(|l| l.id);
        let attached = status.as_ref().and_then(|s| s.connected_replica.clone());
        // Its endpoints are the topology's proxies; replicas it learned of are direct.
        let victim = attached.as_deref().and_then(|addr| {
            topo.ids.iter().copied().find(|id| {
                topo.agent_links.get(id).is_some_and(|p| p.addr().to_string() == addr)
                    || topo.fed.replica(*id).api_addr == addr
            })
        });
        let (Some(victim), Some(lease)) = (victim, lease) else {
            self.inconclusive.push(format!(
                "round {round}: member c's agent reports no replica or lease ({attached:?}); \
                 nothing hung"
            ));
            return Ok(None);
        };
        let others: Vec<u64> = topo.ids.iter().copied().filter(|id| *id != victim).collect();
        let failovers = status.as_ref().map_or(0, |s| s.failovers);
        let what = format!("SIGSTOP replica {victim} (member c's agent attached)");
        let at = clock.now();
        let hung = Instant::now();
        topo.fed.pause(victim);
        push(timeline, clock, what.clone());
        let mut not_ready = None;
        let mut moved_at = None;
        while hung.elapsed() < HANG_HOLD {
            let via = others[self.polls % others.len()];
            self.polls += 1;
            if not_ready.is_none() && self.ready_via(topo, CONSUMERS[0], via).await == Some(false) {
                not_ready = Some(hung.elapsed());
            }
            if moved_at.is_none()
                && self.agent.status().is_some_and(|s| {
                    s.failovers > failovers
                        && s.connected_replica.is_some()
                        && s.connected_replica != attached
                })
            {
                moved_at = Some(hung.elapsed());
            }
            tokio::time::sleep(POLL).await;
        }
        topo.fed.resume(victim);
        let healed = clock.now();
        push(timeline, clock, format!("healed: {what}"));
        if let Some(at) = not_ready {
            self.violations.push(Violation::new(
                ViolationKind::StaleMemberReady,
                format!(
                    "round {round}: member c's endpoints turned not ready {} ms after replica \
                     {victim}, which its agent used, hung — a hung replica cost a live member \
                     its lease",
                    ms(at)
                ),
            ));
        }
        match moved_at {
            Some(at) => self.measure(
                format!("round {round}: replica hung → c's agent connected to another (lease TTL {LEASE_TTL} s)"),
                at,
            ),
            None => self.violations.push(Violation::new(
                ViolationKind::StaleMemberReady,
                format!(
                    "round {round}: member c's agent did not move off hung replica {victim} \
                     within {} ms; status {:?}",
                    ms(HANG_HOLD),
                    self.agent.status()
                ),
            )),
        }
        let kept = self.agent.status().and_then(|s| s.lease).map(|l| l.id);
        if kept != Some(lease) {
            self.violations.push(Violation::new(
                ViolationKind::StaleMemberReady,
                format!(
                    "round {round}: member c's lease {lease} was replaced by {kept:?} while only \
                     replica {victim} hung"
                ),
            ));
        }
        Ok(Some((what, at, healed)))
    }

    /// After healing and convergence: within [`AGENT_CONVERGE_WITHIN`], `c`'s agent is
    /// connected and has applied the federation's revision (as read when the check
    /// starts), holds every other member's newest bundle, its files sink holds the
    /// imports the federation has for `c` (those of the services `a` and `b` export
    /// included), and the federation holds the bundle `c`'s agent published.
    pub async fn check_converged(&mut self, topo: &Topology) {
        let started = Instant::now();
        let mut target = None;
        let mut last = String::from("no replica answered");
        while started.elapsed() < AGENT_CONVERGE_WITHIN {
            match self.federation_view(topo).await {
                Some(view) => {
                    let revision = *target.get_or_insert(view.revision);
                    match self.agent_mismatch(&view, revision) {
                        None => {
                            self.measure(
                                "federation converged → member c's agent converged".into(),
                                started.elapsed(),
                            );
                            return;
                        }
                        Some(why) => last = why,
                    }
                }
                None => last = "no replica answered the federation's view".into(),
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        if target.is_none() {
            self.inconclusive.push(format!("member c's agent not checked: {last}"));
            return;
        }
        self.violations.push(Violation::new(
            ViolationKind::AgentNotConverged,
            format!(
                "member c's agent did not converge within {} s after the federation did: {last}; \
                 status {:?}; agent log:\n{}",
                AGENT_CONVERGE_WITHIN.as_secs(),
                self.agent.status(),
                tail(&self.agent.log(), 15)
            ),
        ));
    }

    /// What the federation holds for `c`, read linearizably through one voter.
    async fn federation_view(&mut self, topo: &Topology) -> Option<FederationView> {
        for &via in &topo.ids.clone() {
            let read = tokio::time::timeout(CALL * 3, async {
                let mut admin = topo.fed.admin(via).await.ok()?;
                let linearizable = || admin_pb::Consistency::Linearizable.into();
                let imports = admin
                    .list_imports(admin_pb::ListImportsRequest {
                        cluster: CLUSTER.into(),
                        consistency: linearizable(),
                    })
                    .await
                    .ok()?
                    .into_inner();
                let mut view = FederationView {
                    revision: imports.revision,
                    imports: imports
                        .imports
                        .iter()
                        .map(|i| {
                            let clusters = i.clusters.iter().map(|c| c.cluster.clone()).collect();
                            ((i.namespace.clone(), i.name.clone()), clusters)
                        })
                        .collect(),
                    exported: BTreeMap::new(),
                    bundles: BTreeMap::new(),
                    own_bundle: None,
                };
                for peer in ["a", "b"] {
                    let services = admin
                        .list_services(admin_pb::ListServicesRequest {
                            cluster: peer.into(),
                            consistency: linearizable(),
                        })
                        .await
                        .ok()?
                        .into_inner();
                    view.revision = view.revision.max(services.revision);
                    for service in services.services {
                        view.exported.insert((service.namespace, service.name), peer);
                    }
                }
                for peer in PEERS {
                    let trust_domain = format!("{peer}.chaos.test");
                    let bundle = admin
                        .get_bundle(admin_pb::GetBundleRequest {
                            trust_domain: trust_domain.clone(),
                            format: admin_pb::BundleFormat::Pem.into(),
                            consistency: linearizable(),
                        })
                        .await
                        .ok()?
                        .into_inner();
                    view.bundles.insert(trust_domain, bundle.sequence);
                }
                let own = admin
                    .get_bundle(admin_pb::GetBundleRequest {
                        trust_domain: TRUST_DOMAIN.into(),
                        format: admin_pb::BundleFormat::Pem.into(),
                        consistency: linearizable(),
                    })
                    .await
                    .ok()?
                    .into_inner();
                view.own_bundle = Some((own.sequence, pem_bodies(&own.document)));
                Some(view)
            })
            .await
            .ok()
            .flatten();
            if read.is_some() {
                return read;
            }
        }
        None
    }

    /// Why `c`'s agent does not hold `view` (applied at least `revision`), if it does not.
    fn agent_mismatch(&self, view: &FederationView, revision: u64) -> Option<String> {
        let Some(status) = self.agent.status() else {
            return Some("the agent wrote no status".into());
        };
        if status.connected_replica.is_none() {
            return Some(format!("not connected (last error {:?})", status.last_error));
        }
        if status.applied_revision < revision {
            return Some(format!(
                "applied revision {} < the federation's {revision}",
                status.applied_revision
            ));
        }
        for (trust_domain, sequence) in &view.bundles {
            let held = status.bundles.get(trust_domain);
            if held != Some(sequence) {
                return Some(format!(
                    "holds {trust_domain}'s bundle at sequence {held:?}, the federation at \
                     {sequence}"
                ));
            }
        }
        let Some((sequence, federation_pem)) = &view.own_bundle else {
            return Some("no own bundle read".into());
        };
        // A restarted agent reads its unchanged CAs at a new sequence and publishes
        // nothing (same authorities): the federation keeps the older sequence.
        if status.bundle.published_sequence.is_none_or(|published| published < *sequence) {
            return Some(format!(
                "c's bundle: the federation holds sequence {sequence}, the agent published {:?}",
                status.bundle.published_sequence
            ));
        }
        if *federation_pem != pem_bodies(&self.agent.member.ca_pem()) {
            return Some(format!(
                "c's bundle in the federation (sequence {sequence}) is not c's CAs"
            ));
        }
        let imports = match std::fs::read_to_string(self.agent.out("imports.json")) {
            Ok(text) => match serde_json::from_str::<Vec<ImportDocument>>(&text) {
                Ok(imports) => imports,
                Err(error) => return Some(format!("imports.json unreadable: {error}")),
            },
            Err(error) => return Some(format!("imports.json unreadable: {error}")),
        };
        let held: BTreeMap<(String, String), BTreeSet<String>> = imports
            .into_iter()
            .map(|i| ((i.namespace, i.name), i.clusters.into_iter().map(|c| c.cluster).collect()))
            .collect();
        for (service, peer) in &view.exported {
            if !held.get(service).is_some_and(|clusters| clusters.contains(*peer)) {
                return Some(format!(
                    "its files sink does not import {}/{} from {peer}, which exports it",
                    service.0, service.1
                ));
            }
        }
        if held != view.imports {
            return Some(format!(
                "its files sink imports {held:?}, the federation has {:?} for c",
                view.imports
            ));
        }
        None
    }

    fn measure(&mut self, name: String, at: Duration) {
        self.measurements.push(Measurement { name, ms: ms(at) });
    }

    /// Whether `consumer` sees any of `c`'s endpoints ready, read through the next voter
    /// in turn (others are tried when it does not answer); `None` when none answers.
    async fn ready(&mut self, topo: &Topology, consumer: &str) -> Option<bool> {
        let ids = topo.ids.clone();
        for i in 0..ids.len() {
            let via = ids[(self.polls + i) % ids.len()];
            if let Some(ready) = self.ready_via(topo, consumer, via).await {
                self.polls += 1;
                return Some(ready);
            }
        }
        self.polls += 1;
        None
    }

    /// Whether `consumer` sees any of `c`'s endpoints ready, per a linearizable
    /// `ListImports` on replica `via`.
    async fn ready_via(&mut self, topo: &Topology, consumer: &str, via: u64) -> Option<bool> {
        let read = tokio::time::timeout(CALL, async {
            let mut admin = match self.admins.get(&via) {
                Some(admin) => admin.clone(),
                None => {
                    let admin = topo.fed.admin(via).await.ok()?;
                    self.admins.insert(via, admin.clone());
                    admin
                }
            };
            let request = admin_pb::ListImportsRequest {
                cluster: consumer.into(),
                consistency: admin_pb::Consistency::Linearizable.into(),
            };
            admin.list_imports(request).await.ok().map(tonic::Response::into_inner)
        })
        .await
        .ok()
        .flatten();
        let Some(listed) = read else {
            self.admins.remove(&via);
            return None;
        };
        Some(
            listed
                .imports
                .iter()
                .filter(|i| i.namespace == NAMESPACE && i.name == SERVICE)
                .flat_map(|i| &i.clusters)
                .filter(|c| c.cluster == CLUSTER)
                .flat_map(|c| &c.endpoints)
                .any(|e| e.ready),
        )
    }
}

/// What the federation holds that `c`'s agent must mirror.
struct FederationView {
    /// The highest revision the reads answered at.
    revision: u64,
    /// `c`'s imports: (namespace, name) → exporting clusters.
    imports: BTreeMap<(String, String), BTreeSet<String>>,
    /// Services `a` and `b` export → the exporter.
    exported: BTreeMap<(String, String), &'static str>,
    /// Every other member's bundle sequence.
    bundles: BTreeMap<String, u64>,
    /// `c`'s bundle: sequence and certificates.
    own_bundle: Option<(u64, BTreeSet<String>)>,
}

/// The base64 bodies of the PEM blocks in `pem`, whitespace removed.
fn pem_bodies(pem: &str) -> BTreeSet<String> {
    let mut bodies = BTreeSet::new();
    let mut current: Option<String> = None;
    for line in pem.lines().map(str::trim) {
        if line.starts_with("-----BEGIN") {
            current = Some(String::new());
        } else if line.starts_with("-----END") {
            bodies.extend(current.take());
        } else if let Some(body) = current.as_mut() {
            body.push_str(line);
        }
    }
    bodies
}

fn push(timeline: &mut Vec<TimelineEvent>, clock: Clock, what: String) {
    timeline.push(TimelineEvent { at_ms: clock.now() / 1_000_000, what });
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn wall_ms() -> i64 {
    federator::clock::unix_now_ms()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pem_bodies_ignore_line_breaks_and_order() {
        let one = "-----BEGIN CERTIFICATE-----\nAAAA\nBBBB\n-----END CERTIFICATE-----\n\
                   -----BEGIN CERTIFICATE-----\nCCCC\n-----END CERTIFICATE-----\n";
        let other = "-----BEGIN CERTIFICATE-----\nCCCC\n-----END CERTIFICATE-----\n\
                     -----BEGIN CERTIFICATE-----\nAAAABBBB\n-----END CERTIFICATE-----";
        assert_eq!(pem_bodies(one), pem_bodies(other));
        assert_eq!(pem_bodies(one).len(), 2);
        assert_ne!(pem_bodies(one), pem_bodies("-----BEGIN X-----\nAAAA\n-----END X-----"));
    }
}
