//! `bench scale`: how Federator's write throughput and propagation latency change as the
//! federation grows, in one group grown level by level (by default 10 → 100 → 1,000
//! member clusters holding 10,000 → 100,000 → 1,000,000 endpoints).
//!
//! One 3-replica group with the propagation benchmark's publisher and watcher members
//! ([`FederatorWatch`]) and a load member. At each level:
//! 1. new member clusters join (tokens through the admin API, joins and exports spread
//!    over the replicas, [`JOIN_CONCURRENCY`] at a time) until the level's member count,
//!    the new members exporting the level's new endpoints in exports of at most
//!    [`ENDPOINTS_PER_EXPORT`], each member's exports named `scale/svc-0`, `scale/svc-1`,
//!    … so that every import gathers the endpoints of many clusters;
//! 2. write throughput: `clients` closed-loop clients of the load member re-export their
//!    own service (`load/cN`) with a new weight each time, over connections to every
//!    replica ([`closed_loop`]);
//! 3. propagation: `watchers` fresh watch streams receive their snapshot (the whole
//!    federation's imports), then the publisher makes `changes` changes and every
//!    watcher records when it holds each ([`latency_phase`]);
//! 4. the leader's resident memory.
//!
//! Figures are printed, never asserted; the report compares each level with the first.

pub mod report;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use federator_proto::admin as admin_pb;
use federator_proto::federation as pb;
use federator_proto::federation::federation_client::FederationClient;
use tokio::task::JoinSet;
use tonic::transport::Channel;

use super::System;
use super::load::{LoadRun, LoadSpec, Operation, closed_loop, progress_ticker};
use super::progress::Progress;
use super::propagation::federator::{FederatorWatch, grant_lease};
use super::propagation::memory::{CpuMeter, Rss, endpoint_address};
use super::propagation::watch::{LatencyPhase, WatchTarget as _};
use super::propagation::{CONNECTIONS_PER_MEMBER, PropagationConfig, latency_phase};
use super::target::{KvConn, PutError};
use crate::member::{MemberCluster, join_request};

/// Member clusters joining at once while a level grows.
pub const JOIN_CONCURRENCY: usize = 16;
/// Most endpoints in one export of a loading member.
pub const ENDPOINTS_PER_EXPORT: usize = 100;
/// Members of the group besides the loaded ones: the publisher, the watchers, the load
/// member.
pub const BENCH_MEMBERS: usize = 1 + CONNECTIONS_PER_MEMBER + 1;
/// Lease and token lifetime of the loaded members: longer than any run.
const TTL_SECONDS: u32 = 3_600;
/// Port of every loaded export.
const SERVICE_PORT: u32 = 8080;

/// One size of the federation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Level {
    /// Loaded member clusters.
    pub members: usize,
    /// Endpoints they export in all.
    pub endpoints: usize,
}

impl std::str::FromStr for Level {
    type Err = String;

    /// `MEMBERS:ENDPOINTS`, e.g. `100:100000`.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let (members, endpoints) = text
            .split_once(':')
            .ok_or_else(|| format!("level {text:?}: expected MEMBERS:ENDPOINTS"))?;
        let number = |what: &str, v: &str| {
            v.trim()
                .replace('_', "")
                .parse::<usize>()
                .map_err(|e| format!("level {text:?}: {what} {v:?}: {e}"))
        };
        Ok(Self {
            members: number("members", members)?,
            endpoints: number("endpoints", endpoints)?,
        })
    }
}

/// What `bench scale` measures.
#[derive(Clone, Debug)]
pub struct ScaleConfig {
    /// The federation's sizes, growing.
    pub levels: Vec<Level>,
    /// Closed-loop writers of the throughput phase.
    pub clients: usize,
    /// Unmeasured start of the throughput phase.
    pub warmup: Duration,
    /// Measured window of the throughput phase.
    pub duration: Duration,
    /// Watch streams of the propagation phase.
    pub watchers: usize,
    /// Changes of the propagation phase.
    pub changes: u64,
    /// Time between two changes.
    pub interval: Duration,
}

impl ScaleConfig {
    /// Checks that the levels grow and that every count is usable.
    ///
    /// # Errors
    /// Names the bad setting.
    pub fn validate(&self) -> anyhow::Result<()> {
        if self.levels.is_empty() {
            bail!("--levels needs at least one MEMBERS:ENDPOINTS");
        }
        let mut previous = Level { members: 0, endpoints: 0 };
        for level in &self.levels {
            if level.members <= previous.members || level.endpoints < previous.endpoints {
                bail!(
                    "--levels must grow: {}:{} after {}:{} (more members, at least as many \
                     endpoints)",
                    level.members,
                    level.endpoints,
                    previous.members,
                    previous.endpoints
                );
            }
            previous = *level;
        }
        if self.clients == 0 {
            bail!("--clients must be positive");
        }
        if self.watchers == 0 {
            bail!("--watchers must be positive");
        }
        if self.changes == 0 || self.changes > 1_000_000 {
            bail!("--changes must be 1 to 1,000,000 (it is an endpoint weight)");
        }
        Ok(())
    }
}

/// Everything measured at one level.
#[derive(Clone, Debug)]
pub struct LevelFigures {
    /// The level.
    pub level: Level,
    /// Time the joins and exports of this level took.
    pub load_time: Duration,
    /// The throughput phase.
    pub writes: LoadRun,
    /// The propagation phase.
    pub propagation: LatencyPhase,
    /// The leader's resident memory after the phases (bytes).
    pub leader_rss: Option<u64>,
    /// CPU time of the three replicas together per write acknowledged in the throughput
    /// phase (warm-up included in both), in microseconds: a figure the machine's noise moves
    /// less than throughput, showing whether each write costs more in a larger federation.
    pub cpu_per_write_us: Option<f64>,
}

/// The figures of one run of `bench scale`.
#[derive(Clone, Debug)]
pub struct ScaleReport {
    /// What was asked for.
    pub config: ScaleConfig,
    /// One entry per level, in order.
    pub levels: Vec<LevelFigures>,
}

/// A client of the load member that "puts" by re-exporting its own service
/// `load/<client>` with the next weight: one `ExportService` write per put.
#[derive(Clone)]
struct ExportConn {
    client: FederationClient<Channel>,
    template: pb::ServiceExport,
}

impl KvConn for ExportConn {
    fn put(
        &mut self,
        key: String,
        _value: Vec<u8>,
    ) -> impl Future<Output = Result<(), PutError>> + Send {
        // Keys are `PREFIX/cC/I`: the service is the client's, the weight follows I.
        let mut parts = key.rsplit('/');
        let sequence: u64 = parts.next().and_then(|i| i.parse().ok()).unwrap_or(0);
        let name = parts.next().unwrap_or("c0").to_string();
        let mut export = self.template.clone();
        export.name = name;
        let weight = u32::try_from(sequence % 1_000_000 + 1).unwrap_or(1);
        for endpoint in &mut export.endpoints {
            endpoint.weight = weight;
        }
        let mut client = self.client.clone();
        async move {
            client
                .export_service(pb::ExportServiceRequest { export: Some(export) })
                .await
                .map(|_| ())
                .map_err(|s| PutError::Failed {
                    system: "Federator",
                    message: format!("ExportService: {:?}: {}", s.code(), s.message()),
                })
        }
    }
}

/// Runs every level in one group.
///
/// # Errors
/// The group did not start, a member could not join or export, or a phase failed; the
/// error names the level and step.
pub async fn run_scale(config: &ScaleConfig, progress: &Progress) -> anyhow::Result<ScaleReport> {
    config.validate()?;
    let step = progress.step(format!(
        "starting 3 Federator replicas with a publisher and {CONNECTIONS_PER_MEMBER} watcher \
         members"
    ));
    let mut target = FederatorWatch::start(CONNECTIONS_PER_MEMBER).await?;
    step.finish_and_clear();
    let conns = load_connections(&target).await.context("joining the load member")?;
    let propagation = PropagationConfig {
        watchers: vec![config.watchers],
        changes: config.changes,
        interval: config.interval,
        endpoints: Vec::new(),
        streams: 0,
        settle: Duration::ZERO,
        cpu_window: Duration::ZERO,
        systems: vec![System::Federator],
    };
    let mut levels = Vec::new();
    let mut loaded = Level { members: 0, endpoints: 0 };
    for level in &config.levels {
        let started = Instant::now();
        grow(&target, loaded, *level, progress)
            .await
            .with_context(|| format!("growing to {} members", level.members))?;
        let load_time = started.elapsed();
        loaded = *level;
        let spec = LoadSpec {
            clients: config.clients,
            warmup: config.warmup,
            duration: config.duration,
            value_size: 0,
            prefix: "load".into(),
            keys_per_client: None,
            operation: Operation::Put,
        };
        let bar = progress.load_bar(&format!("Federator at {} members", level.members), &spec);
        let acked = Arc::new(AtomicU64::new(0));
        let ticker = progress_ticker(&bar, &acked, spec.warmup + spec.duration);
        let cpu = CpuMeter::start(&target.processes()).context("reading the replicas' CPU")?;
        let writes = closed_loop(&conns, &spec, &acked).await;
        let cpu_per_write_us = cpu_per_write(&cpu, acked.load(Ordering::Relaxed));
        ticker.abort();
        bar.finish_and_clear();
        let propagation = latency_phase(&mut target, config.watchers, &propagation, progress)
            .await
            .with_context(|| format!("propagation at {} members", level.members))?;
        let leader_rss = target
            .processes()
            .iter()
            .find(|p| p.leader)
            .and_then(|p| Rss::of(p.pid).ok())
            .map(|r| r.total);
        let figures = LevelFigures {
            level: *level,
            load_time,
            writes,
            propagation,
            leader_rss,
            cpu_per_write_us,
        };
        progress.println(report::level_summary(&figures));
        levels.push(figures);
    }
    Ok(ScaleReport { config: config.clone(), levels })
}

/// The replicas' CPU since `meter` started, in microseconds per acknowledged write; `None`
/// when nothing was acknowledged or a replica is gone.
fn cpu_per_write(meter: &CpuMeter, acked: u64) -> Option<f64> {
    let seconds = meter.cpu_seconds().ok()?;
    (acked > 0).then(|| seconds * 1e6 / acked as f64)
}

/// Joins the load member through the leader, grants it a lease and connects it to every
/// replica ([`CONNECTIONS_PER_MEMBER`] connections each).
async fn load_connections(target: &FederatorWatch) -> anyhow::Result<Vec<ExportConn>> {
    let fed = target.federation();
    let leader = target.leader();
    let mut member = MemberCluster::new("load", "load.bench.test")?;
    member.join(fed, leader).await?;
    let ca = fed.ca_pem();
    let mut lease_client = member.client(&fed.replica(leader).api_addr, &ca).await?;
    grant_lease(&mut lease_client).await?;
    let template = member.export("load", "c0", SERVICE_PORT, &[&endpoint_address(1)]);
    let mut conns = Vec::new();
    for _ in 0..CONNECTIONS_PER_MEMBER {
        for id in fed.ids() {
            let client = member.client(&fed.replica(id).api_addr, &ca).await?;
            conns.push(ExportConn { client, template: template.clone() });
        }
    }
    Ok(conns)
}

/// Joins members `from.members..to.members`, which export the endpoints from
/// `from.endpoints` up to `to.endpoints` between them.
async fn grow(
    target: &FederatorWatch,
    from: Level,
    to: Level,
    progress: &Progress,
) -> anyhow::Result<()> {
    let fed = target.federation();
    let ids = fed.ids();
    let new_members = to.members - from.members;
    let new_endpoints = to.endpoints - from.endpoints;
    let bar = progress
        .count_bar(format!("joining members {}..{}", from.members, to.members), new_members as u64);
    // Tokens first, through the admin API of any replica.
    let mut admin = fed.admin(ids[0]).await?;
    let mut work = JoinSet::new();
    let ca = Arc::new(fed.ca_pem());
    let mut next_endpoint = from.endpoints;
    for k in 0..new_members {
        let m = from.members + k;
        // Spread the level's new endpoints evenly over its new members.
        let share = new_endpoints / new_members + usize::from(k < new_endpoints % new_members);
        let first = next_endpoint;
        next_endpoint += share;
        let name = format!("m{m}");
        let trust_domain = format!("m{m}.scale.bench.test");
        let token = admin
            .create_token(admin_pb::CreateTokenRequest {
                cluster: name.clone(),
                trust_domain: trust_domain.clone(),
                ttl_seconds: TTL_SECONDS.into(),
                // The region its exports' endpoints claim (`MemberCluster::export`).
                region: "region-1".into(),
                ..Default::default()
            })
            .await
            .with_context(|| format!("a token for {name}"))?
            .into_inner()
            .token;
        while work.len() >= JOIN_CONCURRENCY {
            work.join_next().await.context("a member task")???;
            bar.inc(1);
        }
        let api = fed.replica(ids[m % ids.len()]).api_addr.clone();
        let ca = Arc::clone(&ca);
        work.spawn(async move {
            join_and_export(&api, &ca, &name, &trust_domain, &token, first..first + share)
                .await
                .with_context(|| format!("member {name}"))
        });
    }
    while let Some(done) = work.join_next().await {
        done.context("a member task")??;
        bar.inc(1);
    }
    bar.finish_and_clear();
    Ok(())
}

/// One loaded member: joins, takes a lease (so its endpoints are ready) and exports
/// `endpoints` (global endpoint numbers) as `scale/svc-0`, `scale/svc-1`, …
async fn join_and_export(
    api: &str,
    ca_pem: &str,
    name: &str,
    trust_domain: &str,
    token: &str,
    endpoints: std::ops::Range<usize>,
) -> anyhow::Result<()> {
    let mut member = MemberCluster::new(name, trust_domain)?;
    let bundle = member.next_bundle()?;
    let mut client = member.client(api, ca_pem).await?;
    client.join(join_request(token, trust_domain, bundle)).await.context("join")?;
    grant_lease(&mut client).await?;
    let numbers: Vec<usize> = endpoints.collect();
    for (s, chunk) in numbers.chunks(ENDPOINTS_PER_EXPORT).enumerate() {
        let addresses: Vec<String> = chunk.iter().map(|n| endpoint_address(*n)).collect();
        let refs: Vec<&str> = addresses.iter().map(String::as_str).collect();
        let export = member.export("scale", &format!("svc-{s}"), SERVICE_PORT, &refs);
        client
            .export_service(pb::ExportServiceRequest { export: Some(export) })
            .await
            .with_context(|| format!("exporting scale/svc-{s}"))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(levels: &[(usize, usize)]) -> ScaleConfig {
        ScaleConfig {
            levels: levels.iter().map(|(m, e)| Level { members: *m, endpoints: *e }).collect(),
            clients: 8,
            warmup: Duration::ZERO,
            duration: Duration::from_secs(1),
            watchers: 2,
            changes: 3,
            interval: Duration::from_millis(10),
        }
    }

    #[test]
    fn levels_parse_and_name_the_bad_part() {
        assert_eq!("100:100_000".parse::<Level>(), Ok(Level { members: 100, endpoints: 100_000 }));
        let error = "100".parse::<Level>().expect_err("refused");
        assert!(error.contains("MEMBERS:ENDPOINTS"), "{error}");
        let error = "ten:100".parse::<Level>().expect_err("refused");
        assert!(error.contains("members \"ten\""), "{error}");
        let error = "10:many".parse::<Level>().expect_err("refused");
        assert!(error.contains("endpoints \"many\""), "{error}");
    }

    #[test]
    fn levels_must_grow() {
        assert!(config(&[(10, 10_000), (100, 100_000)]).validate().is_ok());
        assert!(config(&[(10, 10_000), (100, 10_000)]).validate().is_ok());
        let error =
            config(&[(100, 10_000), (10, 100_000)]).validate().expect_err("refused").to_string();
        assert!(error.contains("10:100000 after 100:10000"), "{error}");
        let error =
            config(&[(10, 10_000), (20, 5_000)]).validate().expect_err("refused").to_string();
        assert!(error.contains("--levels must grow"), "{error}");
        assert!(config(&[]).validate().is_err());
        assert!(config(&[(0, 10)]).validate().is_err());
    }
}
