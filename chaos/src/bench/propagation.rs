//! `bench propagation`: how fast a change reaches many watchers, and what stored
//! endpoints and idle watch streams cost in memory — Federator against etcd, both driven
//! by the same harness in the same run, one system after the other.
//!
//! Per system:
//! 1. A group with a publisher and watcher connections ([`federator::FederatorWatch`],
//!    [`etcd::EtcdWatch`]). First the memory of idle watch streams: one warm-up stream
//!    per connection, the members' RSS and idle CPU, then `streams` more streams, and
//!    the same figures again ([`memory::StreamMemory`]). Then one propagation phase per
//!    watcher count: W streams opened, then the publisher makes `changes` changes at a
//!    fixed pace and every watcher records when it holds each ([`watch`]).
//! 2. A fresh group, loaded with endpoints in exports of at most 10,000 up to each
//!    endpoint count, with the leader's and a follower's RSS read from the same
//!    baseline at each count ([`memory::endpoint_memory`]).
//!
//! The figures are printed, never asserted; [`report`] lays them side by side.

pub mod etcd;
pub mod federator;
pub mod memory;
pub mod report;
pub mod watch;

use std::ops::Range;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use indicatif::ProgressBar;
use tokio::sync::{mpsc, watch as signal};
use tokio::task::JoinSet;

use self::memory::{
    CpuMeter, EndpointFigures, EndpointStore, Rss, RssChange, StreamMemory, cpu_use,
};
use self::report::PropagationReport;
use self::watch::{LatencyPhase, Receipts, WatchTarget, WatcherSpec, publish, tally};
use super::System;
use super::progress::Progress;

/// Namespace of the watched service and of the loaded exports.
pub const SERVICE_NAMESPACE: &str = "bench";
/// Name of the watched service.
pub const SERVICE_NAME: &str = "svc";
/// Time one watcher may take to open its stream and receive its initial state.
pub const OPEN_TIMEOUT: Duration = Duration::from_secs(60);
/// Federator: watcher members, each with a connection to every replica. etcd: watch
/// connections to every member. Either way 12 connections on 3 members.
pub const CONNECTIONS_PER_MEMBER: usize = 4;
/// After the last change, time the watchers still have to receive it.
const GRACE: Duration = Duration::from_secs(5);

/// What `bench propagation` measures.
#[derive(Clone, Debug)]
pub struct PropagationConfig {
    /// Concurrent watcher counts, one propagation phase each.
    pub watchers: Vec<usize>,
    /// Changes per phase.
    pub changes: u64,
    /// Time between two changes.
    pub interval: Duration,
    /// Endpoint counts at which memory is read (cumulative, one loading run).
    pub endpoints: Vec<usize>,
    /// Idle watch streams opened for the memory per stream.
    pub streams: usize,
    /// Pause before each memory reading (and between phases).
    pub settle: Duration,
    /// Window over which idle CPU is measured.
    pub cpu_window: Duration,
    /// Systems to run, one after the other.
    pub systems: Vec<System>,
}

/// Everything measured against one system.
#[derive(Clone, Debug)]
pub struct SystemPropagation {
    /// Display name.
    pub system: &'static str,
    /// One propagation phase per watcher count, in the configured order.
    pub phases: Vec<LatencyPhase>,
    /// Idle watch streams.
    pub streams: StreamMemory,
    /// Stored endpoints.
    pub endpoints: EndpointFigures,
}

/// Runs every configured system, each in groups torn down before the next one starts.
///
/// # Errors
/// A group did not start, a stream did not open, or a load failed; the error names the
/// system and step.
pub async fn run_propagation(
    config: &PropagationConfig,
    progress: &Progress,
) -> anyhow::Result<PropagationReport> {
    let mut systems = Vec::new();
    for system in &config.systems {
        let figures = run_system(*system, config, progress)
            .await
            .with_context(|| format!("benchmarking {}", system.name()))?;
        systems.push(figures);
    }
    Ok(PropagationReport { config: config.clone(), systems })
}

async fn run_system(
    system: System,
    config: &PropagationConfig,
    progress: &Progress,
) -> anyhow::Result<SystemPropagation> {
    let name = system.name();
    let step = progress.step(format!(
        "starting 3 {name} members with {} watch connections",
        3 * CONNECTIONS_PER_MEMBER
    ));
    let (streams, phases) = match system {
        System::Federator => {
            let mut target = federator::FederatorWatch::start(CONNECTIONS_PER_MEMBER).await?;
            step.finish_and_clear();
            watch_figures(&mut target, config, progress).await?
        }
        System::Etcd => {
            let mut target = etcd::EtcdWatch::start(CONNECTIONS_PER_MEMBER).await?;
            step.finish_and_clear();
            watch_figures(&mut target, config, progress).await?
        }
    };
    let step = progress.step(format!("starting 3 fresh {name} members for the endpoint load"));
    let endpoints = match system {
        System::Federator => {
            let mut store = federator::FederatorEndpoints::start().await?;
            step.finish_and_clear();
            endpoint_figures(&mut store, config, progress).await?
        }
        System::Etcd => {
            let mut store = etcd::EtcdEndpoints::start().await?;
            step.finish_and_clear();
            endpoint_figures(&mut store, config, progress).await?
        }
    };
    Ok(SystemPropagation { system: name, phases, streams, endpoints })
}

async fn endpoint_figures<S: EndpointStore>(
    store: &mut S,
    config: &PropagationConfig,
    progress: &Progress,
) -> anyhow::Result<EndpointFigures> {
    let figures =
        memory::endpoint_memory(store, &config.endpoints, config.settle, progress).await?;
    if let (Some((leader, follower)), Some(last)) = (&figures.compacted, figures.steps.last()) {
        progress.println(format!(
            "{:>9} after a snapshot with the log purged: leader {:.0} B/endpoint, follower \
             {:.0} B/endpoint",
            store.name(),
            leader.per_item(last.endpoints).unwrap_or(f64::NAN),
            follower.per_item(last.endpoints).unwrap_or(f64::NAN),
        ));
    }
    Ok(figures)
}

/// Idle stream memory, then one propagation phase per watcher count.
async fn watch_figures<T: WatchTarget>(
    target: &mut T,
    config: &PropagationConfig,
    progress: &Progress,
) -> anyhow::Result<(StreamMemory, Vec<LatencyPhase>)> {
    let name = target.name();
    let streams = stream_memory(target, config, progress).await?;
    progress.println(format!("{name:>9} {}", streams.summary()));
    let mut phases = Vec::new();
    for watchers in &config.watchers {
        tokio::time::sleep(config.settle).await;
        let phase = latency_phase(target, *watchers, config, progress).await?;
        progress.println(format!("{name:>9} {}", phase.summary()));
        phases.push(phase);
    }
    Ok((streams, phases))
}

/// Spawns watchers `indexes` into `set` and waits until each has opened its stream and
/// received its initial state; returns how long that took.
async fn open_watchers<T: WatchTarget>(
    target: &T,
    indexes: Range<usize>,
    changes: u64,
    stop: &signal::Receiver<bool>,
    set: &mut JoinSet<Receipts>,
    bar: &ProgressBar,
) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let count = indexes.len();
    let (ready, mut opened_rx) = mpsc::channel(count.max(1));
    for index in indexes {
        let spec = WatcherSpec { changes, ready: ready.clone(), stop: stop.clone() };
        set.spawn(target.watcher(index, spec));
    }
    drop(ready);
    let deadline = tokio::time::Instant::now() + OPEN_TIMEOUT + Duration::from_secs(30);
    let mut opened = 0;
    while opened < count {
        match tokio::time::timeout_at(deadline, opened_rx.recv()).await {
            Ok(Some(Ok(()))) => {
                opened += 1;
                bar.inc(1);
            }
            Ok(Some(Err(error))) => {
                bail!("{} watch stream failed to open ({opened} open): {error:#}", target.name())
            }
            Ok(None) => bail!("{} watchers ended with {opened} of {count} open", target.name()),
            Err(_) => bail!(
                "{}: only {opened} of {count} watch streams open after {:?}",
                target.name(),
                started.elapsed()
            ),
        }
    }
    Ok(started.elapsed())
}

/// Resident memory of every process of `target`.
fn rss_of<T: WatchTarget>(target: &T) -> anyhow::Result<Vec<Rss>> {
    target.processes().iter().map(|p| Rss::of(p.pid)).collect()
}

/// Memory and idle CPU before and after opening `config.streams` idle watch streams
/// (after one warm-up stream per connection, so connection set-up is not counted).
async fn stream_memory<T: WatchTarget>(
    target: &mut T,
    config: &PropagationConfig,
    progress: &Progress,
) -> anyhow::Result<StreamMemory> {
    let name = target.name();
    let (stop, stop_rx) = signal::channel(false);
    let mut set = JoinSet::new();
    let warm = target.connections();
    let bar = progress.count_bar(format!("{name} idle streams"), (warm + config.streams) as u64);
    open_watchers(target, 0..warm, 0, &stop_rx, &mut set, &bar).await?;
    tokio::time::sleep(config.settle).await;
    let processes = target.processes();
    let before = rss_of(target)?;
    bar.set_message("idle CPU");
    let idle_cpu_before = cpu_use(&processes, config.cpu_window).await?;
    bar.set_message("");
    let range = warm..warm + config.streams;
    let open_time = open_watchers(target, range, 0, &stop_rx, &mut set, &bar).await?;
    tokio::time::sleep(config.settle).await;
    let after = rss_of(target)?;
    bar.set_message("idle CPU");
    let idle_cpu_after = cpu_use(&processes, config.cpu_window).await?;
    bar.finish_and_clear();
    let _ = stop.send(true);
    let mut broken = Vec::new();
    while let Some(done) = set.join_next().await {
        match done {
            Ok(receipts) => broken.extend(receipts.error),
            Err(error) => broken.push(format!("watcher task failed: {error}")),
        }
    }
    if let Some(first) = broken.first() {
        bail!("{} of the idle {name} watch streams broke; the first: {first}", broken.len());
    }
    Ok(StreamMemory {
        streams: config.streams,
        members: before
            .into_iter()
            .zip(after)
            .map(|(before, after)| RssChange { before, after })
            .collect(),
        idle_cpu_before,
        idle_cpu_after,
        open_time,
    })
}

/// One propagation phase: `watchers` streams opened, then the changes published, then
/// every watcher's receipts collected (stragglers stopped [`GRACE`] after the last
/// change).
pub async fn latency_phase<T: WatchTarget>(
    target: &mut T,
    watchers: usize,
    config: &PropagationConfig,
    progress: &Progress,
) -> anyhow::Result<LatencyPhase> {
    let name = target.name();
    let (stop, stop_rx) = signal::channel(false);
    let mut set = JoinSet::new();
    let bar = progress.count_bar(format!("{name} {watchers} watchers: open"), watchers as u64);
    let open_time =
        open_watchers(target, 0..watchers, config.changes, &stop_rx, &mut set, &bar).await?;
    bar.finish_and_clear();
    let mut phase = LatencyPhase { watchers, changes: config.changes, ..LatencyPhase::default() };
    let bar = progress.count_bar(format!("{name} {watchers} watchers: changes"), config.changes);
    let meter = CpuMeter::start(&target.processes())?;
    let publication = publish(target, config.changes, config.interval, &bar).await;
    phase.cpu = meter.cores().ok();
    bar.finish_and_clear();
    let deadline = tokio::time::Instant::now() + GRACE;
    let mut receipts = Vec::with_capacity(watchers);
    let mut stopped = false;
    loop {
        tokio::select! {
            next = set.join_next() => match next {
                Some(Ok(r)) => receipts.push(r),
                Some(Err(error)) => {
                    phase.broken_streams += 1;
                    phase.first_stream_error.get_or_insert_with(|| error.to_string());
                }
                None => break,
            },
            () = tokio::time::sleep_until(deadline), if !stopped => {
                stopped = true;
                let _ = stop.send(true);
            }
        }
    }
    for r in &receipts {
        if let Some(error) = &r.error {
            phase.broken_streams += 1;
            phase.first_stream_error.get_or_insert_with(|| error.clone());
        }
    }
    phase.tally = tally(&publication.issued, &receipts);
    phase.publication = publication;
    phase.open_time = open_time;
    Ok(phase)
}
