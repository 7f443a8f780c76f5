//! `bench snapshot`: saving a snapshot, restoring it, and installing one on a new
//! follower — Federator against etcd on the same data, one system after the other.
//!
//! Per system, one 3-member group is loaded with `keys` keys of `value_size` bytes
//! (`in_flight` writes at a time, spread over connections to every member), then:
//! 1. **save**, `trials` times: `federator snapshot save FILE` against the leader, and
//!    `etcdctl snapshot save FILE` against the leader, each a CLI process timed from
//!    spawn to exit; the file's size is reported too.
//! 2. **follower install**, `trials` times: the log is compacted behind a snapshot,
//!    a new member is started and added, and the time is until it has applied what the
//!    leader has ([`federator::install_trial`], [`etcd::install_trial`]). The new member
//!    is removed and killed again before the next trial.
//! 3. The loaded group is killed, then **restore**, `trials` times, from the saved file:
//!    into a new, formed 3-replica Federator group through the log until every replica
//!    converged; into a new etcd data directory with `etcdctl snapshot restore`, plus
//!    starting that one member until it answers a linearizable `Get` of the last key.
//!    These are different operations (see [`report`]) and the report says so.
//!
//! The figures are printed, never asserted; [`report`] lays them side by side with the
//! issue's target (Federator ≤ 0.5× etcd's time).

pub mod etcd;
pub mod federator;
pub mod report;

use std::ffi::OsStr;
use std::future::Future;
use std::process::Output;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use futures::StreamExt as _;

use self::report::SnapshotReport;
use super::System;
use super::progress::Progress;

/// Connections the loader opens to each member.
pub const CONNECTIONS_PER_MEMBER: usize = 4;
/// Time one write may take, including its retries.
const PUT_TIMEOUT: Duration = Duration::from_secs(10);
/// Attempts per write before the load fails.
const PUT_ATTEMPTS: usize = 5;
/// Time one CLI process (`federator snapshot …`, `etcdctl …`) may run.
pub const CLI_TIMEOUT: Duration = Duration::from_secs(600);
/// Time a restore or a follower install may take until it is complete.
pub const CATCH_UP_TIMEOUT: Duration = Duration::from_secs(600);
/// Pause between two polls of a timed wait (both systems; a poll is one status call on
/// a connection made before, or one metrics read).
const POLL: Duration = Duration::from_millis(5);

/// What `bench snapshot` measures.
#[derive(Clone, Debug)]
pub struct SnapshotConfig {
    /// Keys loaded into each system.
    pub keys: usize,
    /// Bytes per value.
    pub value_size: usize,
    /// Trials per figure (the median is reported).
    pub trials: usize,
    /// Writes in flight while loading.
    pub in_flight: usize,
    /// Systems to run, one after the other.
    pub systems: Vec<System>,
}

/// One follower-install trial.
#[derive(Clone, Copy, Debug)]
pub struct InstallTrial {
    /// From the first step (process start or membership change) to caught up.
    pub time: Duration,
    /// Whether the new member received a snapshot (rather than only log entries), when
    /// that can be told.
    pub via_snapshot: Option<bool>,
    /// From the same start until the new member also answered client requests, when
    /// that comes later than caught up (etcd serves clients only once it has published
    /// itself through raft).
    pub serving: Option<Duration>,
}

/// Follower-install figures, or why there are none.
#[derive(Clone, Debug)]
pub enum Install {
    /// One entry per trial, in order.
    Measured(Vec<InstallTrial>),
    /// The measurement failed; the reason.
    NotMeasured(String),
}

impl Install {
    /// Median time of the trials.
    #[must_use]
    pub fn median(&self) -> Option<Duration> {
        match self {
            Self::Measured(trials) => median(&trials.iter().map(|t| t.time).collect::<Vec<_>>()),
            Self::NotMeasured(_) => None,
        }
    }
}

/// Everything measured against one system.
#[derive(Clone, Debug)]
pub struct SystemSnapshot {
    /// Display name.
    pub system: &'static str,
    /// Time to load the keys (not a target figure).
    pub load: Duration,
    /// Save trials, in order.
    pub save: Vec<Duration>,
    /// Size of the saved file, bytes.
    pub file_size: u64,
    /// Restore trials, in order.
    pub restore: Vec<Duration>,
    /// Follower-install trials.
    pub install: Install,
}

/// Runs every configured system, each in groups torn down before the next one starts.
///
/// # Errors
/// A group did not start, the load failed, or a save or restore failed; the error names
/// the system and step. A failed follower install is reported as not measured instead.
pub async fn run_snapshot(
    config: &SnapshotConfig,
    progress: &Progress,
) -> anyhow::Result<SnapshotReport> {
    let mut systems = Vec::new();
    for system in &config.systems {
        let figures = match system {
            System::Federator => federator::measure(config, progress).await,
            System::Etcd => etcd::measure(config, progress).await,
        };
        let figures = figures.with_context(|| format!("benchmarking {}", system.name()))?;
        progress.println(format!(
            "{:>9} save median {}, restore median {}, follower install median {}",
            figures.system,
            show(median(&figures.save)),
            show(median(&figures.restore)),
            show(figures.install.median())
        ));
        systems.push(figures);
    }
    Ok(SnapshotReport { config: config.clone(), systems })
}

fn show(d: Option<Duration>) -> String {
    d.map_or_else(|| "-".into(), |d| format!("{:.0} ms", d.as_secs_f64() * 1e3))
}

/// The median of `values` (the mean of the two middle ones for an even count).
#[must_use]
pub fn median(values: &[Duration]) -> Option<Duration> {
    let mut sorted = values.to_vec();
    sorted.sort();
    let n = sorted.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(sorted[n / 2]),
        _ => Some((sorted[n / 2 - 1] + sorted[n / 2]) / 2),
    }
}

/// Key `i` of the loaded data.
#[must_use]
pub fn key(i: usize) -> String {
    format!("bench/snap/{i:08}")
}

/// Value of key `i`: `size` pseudo-random (incompressible) bytes, the same in every run.
#[must_use]
pub fn value(i: usize, size: usize) -> Vec<u8> {
    let mut state = (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..size)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state.to_le_bytes()[0]
        })
        .collect()
}

/// Writes every key through `put` over `conns`, `in_flight` writes at a time, each
/// retried a few times; returns the time it took.
///
/// # Errors
/// A write failed every attempt.
pub(crate) async fn load<C, F, Fut>(
    system: &str,
    conns: Vec<C>,
    config: &SnapshotConfig,
    progress: &Progress,
    put: F,
) -> anyhow::Result<Duration>
where
    C: Clone,
    F: Fn(C, String, Vec<u8>) -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    if conns.is_empty() {
        bail!("no connection to load through");
    }
    let bar = progress.count_bar(format!("{system} loading keys"), config.keys as u64);
    let started = Instant::now();
    let put = &put;
    let conns = &conns;
    let mut writes = futures::stream::iter(0..config.keys)
        .map(|i| async move {
            let mut last = String::new();
            for attempt in 0..PUT_ATTEMPTS {
                let conn = conns[(i + attempt) % conns.len()].clone();
                match tokio::time::timeout(
                    PUT_TIMEOUT,
                    put(conn, key(i), value(i, config.value_size)),
                )
                .await
                {
                    Ok(Ok(())) => return Ok(()),
                    Ok(Err(error)) => last = format!("{error:#}"),
                    Err(_) => last = format!("no answer within {PUT_TIMEOUT:?}"),
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(anyhow::anyhow!("writing {} failed {PUT_ATTEMPTS} times: {last}", key(i)))
        })
        .buffer_unordered(config.in_flight.max(1));
    while let Some(result) = writes.next().await {
        result?;
        bar.inc(1);
    }
    let took = started.elapsed();
    bar.finish_and_clear();
    progress.println(format!(
        "{system:>9} loaded {} keys of {} B in {:.1} s ({:.0} writes/s)",
        config.keys,
        config.value_size,
        took.as_secs_f64(),
        config.keys as f64 / took.as_secs_f64().max(1e-9)
    ));
    Ok(took)
}

/// Polls `check` every [`POLL`] until it returns `Some`, for at most `timeout`.
///
/// # Errors
/// It did not within `timeout`; the message names `what`.
pub(crate) async fn poll<T, F, Fut>(what: &str, timeout: Duration, check: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    crate::wait::eventually_every(what, timeout, POLL, check).await
}

/// Runs `command` to completion (killed after `timeout`); fails unless it exits 0.
///
/// # Errors
/// It could not be spawned, ran too long, or exited non-zero; the error holds its output.
pub(crate) async fn run_command(
    mut command: tokio::process::Command,
    timeout: Duration,
) -> anyhow::Result<Output> {
    let shown = format!(
        "{} {}",
        command.as_std().get_program().to_string_lossy(),
        command.as_std().get_args().map(OsStr::to_string_lossy).collect::<Vec<_>>().join(" ")
    );
    command.stdin(std::process::Stdio::null()).kill_on_drop(true);
    let output = tokio::time::timeout(timeout, command.output())
        .await
        .with_context(|| format!("`{shown}` still ran after {timeout:?}"))?
        .with_context(|| format!("running `{shown}`"))?;
    if !output.status.success() {
        bail!(
            "`{shown}` failed ({}):\n{}{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(output)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_and_even_counts() {
        let ms = Duration::from_millis;
        assert_eq!(median(&[]), None);
        assert_eq!(median(&[ms(30), ms(10), ms(20)]), Some(ms(20)));
        assert_eq!(median(&[ms(40), ms(10), ms(20), ms(30)]), Some(ms(25)));
    }

    #[test]
    fn values_are_deterministic_and_sized() {
        assert_eq!(value(7, 256), value(7, 256));
        assert_ne!(value(7, 256), value(8, 256));
        assert_eq!(value(1, 33).len(), 33);
        assert_eq!(key(42), "bench/snap/00000042");
    }
}
