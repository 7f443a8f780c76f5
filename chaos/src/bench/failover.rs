//! Leader failover: a continuous writer runs while the leader is SIGKILLed, and the
//! failover time is from the moment the killed process has been reaped to the first
//! acknowledgement of a put issued after that moment. The killed member is then
//! restarted and the group waited healthy before the next trial.
//!
//! The writer is open-loop: it issues one put every [`PROBE_PERIOD`], round-robin over
//! one connection per member, each put on its own task with its own deadline. A put
//! stuck on a dead or leaderless member therefore never delays the next one, and the
//! figure has a resolution of one period whatever each store does with a write it
//! cannot place (Federator's followers retry it; etcd's hold it until it times out).

use std::time::{Duration, Instant};

use anyhow::Context as _;
use tokio::sync::mpsc;
use tokio::task::{JoinHandle, JoinSet};

use super::load::leader_first;
use super::progress::Progress;
use super::target::{KvConn, KvTarget};

/// Time between two puts of the writer.
pub const PROBE_PERIOD: Duration = Duration::from_millis(10);
/// Deadline of one put of the writer.
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);
/// Acknowledgements the writer must see before the leader is killed.
const STEADY_ACKS: usize = 20;
/// A trial with no acknowledgement this long after the kill is recorded as failed.
const RECOVERY_LIMIT: Duration = Duration::from_secs(30);
/// Pause after the group is healthy again, before the next trial's writer starts.
const SETTLE: Duration = Duration::from_secs(1);

/// One failover trial.
#[derive(Clone, Debug)]
pub struct FailoverTrial {
    /// The member that led and was killed.
    pub killed: u64,
    /// Kill (process reaped) → first acknowledged put issued after it; `None` when no
    /// put was acknowledged within 30 s.
    pub outage: Option<Duration>,
}

/// Every failover trial against one system.
#[derive(Clone, Debug, Default)]
pub struct FailoverFigures {
    /// In the order they ran.
    pub trials: Vec<FailoverTrial>,
}

impl FailoverFigures {
    /// Median failover time over every trial, a failed trial counting as longer than any
    /// other; `None` when there was no trial or failed trials reach the middle.
    #[must_use]
    pub fn median(&self) -> Option<Duration> {
        let n = self.trials.len();
        let mut ok: Vec<Duration> = self.trials.iter().filter_map(|t| t.outage).collect();
        ok.sort_unstable();
        if n == 0 {
            return None;
        }
        if n % 2 == 1 {
            ok.get(n / 2).copied()
        } else {
            Some((*ok.get(n / 2 - 1)? + *ok.get(n / 2)?) / 2)
        }
    }

    /// Shortest and longest successful failover.
    #[must_use]
    pub fn range(&self) -> Option<(Duration, Duration)> {
        let ok = self.trials.iter().filter_map(|t| t.outage);
        Some((ok.clone().min()?, ok.max()?))
    }

    /// Trials with no acknowledged write within the limit.
    #[must_use]
    pub fn failed(&self) -> usize {
        self.trials.iter().filter(|t| t.outage.is_none()).count()
    }

    /// One line for the progress log.
    #[must_use]
    pub fn summary(&self) -> String {
        let ms = |d: Duration| format!("{:.0} ms", d.as_secs_f64() * 1e3);
        format!(
            "failover: median {} over {} trials (min {}, max {}, {} failed)",
            self.median().map_or_else(|| "-".into(), ms),
            self.trials.len(),
            self.range().map_or_else(|| "-".into(), |(lo, _)| ms(lo)),
            self.range().map_or_else(|| "-".into(), |(_, hi)| ms(hi)),
            self.failed(),
        )
    }
}

/// Runs `trials` failover trials against `target`, leaving it healthy with every
/// member running.
///
/// # Errors
/// The group did not recover after a restart, or the writer saw no acknowledgement
/// before a kill.
pub async fn trials<T: KvTarget>(
    target: &mut T,
    trials: usize,
    value_size: usize,
    progress: &Progress,
) -> anyhow::Result<FailoverFigures> {
    let mut figures = FailoverFigures::default();
    let bar = progress.trial_bar(target.name(), trials);
    for trial in 0..trials {
        let outcome = one_trial(target, trial, value_size).await?;
        bar.inc(1);
        bar.set_message(outcome.outage.map_or_else(
            || "last: no acknowledgement".into(),
            |d| format!("last: {:.0} ms", d.as_secs_f64() * 1e3),
        ));
        figures.trials.push(outcome);
    }
    bar.finish_and_clear();
    Ok(figures)
}

async fn one_trial<T: KvTarget>(
    target: &mut T,
    trial: usize,
    value_size: usize,
) -> anyhow::Result<FailoverTrial> {
    let leader = super::healthy_leader(target).await?;
    tokio::time::sleep(SETTLE).await;
    let mut conns = Vec::new();
    for id in leader_first(target.ids(), leader) {
        conns.push(target.connect(id).await.with_context(|| format!("connecting to member {id}"))?);
    }
    let mut writer = Writer::start(conns, format!("bench/failover-{trial}"), value_size);
    for _ in 0..STEADY_ACKS {
        tokio::time::timeout(RECOVERY_LIMIT, writer.acks.recv())
            .await
            .ok()
            .flatten()
            .context("the writer saw no acknowledgement before the kill")?;
    }

    target.kill(leader);
    let killed_at = Instant::now();
    let deadline = tokio::time::Instant::from_std(killed_at + RECOVERY_LIMIT);
    let mut outage = None;
    while let Ok(Some(ack)) = tokio::time::timeout_at(deadline, writer.acks.recv()).await {
        if ack.issued >= killed_at {
            outage = Some(ack.acked - killed_at);
            break;
        }
    }
    drop(writer);

    target.restart(leader)?;
    super::healthy_leader(target).await?;
    Ok(FailoverTrial { killed: leader, outage })
}

/// An acknowledged put of the [`Writer`].
#[derive(Clone, Copy, Debug)]
struct Ack {
    issued: Instant,
    acked: Instant,
}

/// The continuous open-loop writer; stops (with every put in flight) when dropped.
struct Writer {
    task: JoinHandle<()>,
    acks: mpsc::UnboundedReceiver<Ack>,
}

impl Writer {
    fn start<C: KvConn>(conns: Vec<C>, prefix: String, value_size: usize) -> Self {
        let (tx, acks) = mpsc::unbounded_channel();
        let task = tokio::spawn(async move {
            let value = vec![b'v'; value_size];
            let mut puts = JoinSet::new();
            let mut ticks = tokio::time::interval(PROBE_PERIOD);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            for i in 0usize.. {
                ticks.tick().await;
                let mut conn = conns[i % conns.len()].clone();
                let (key, value, tx) = (format!("{prefix}/{i}"), value.clone(), tx.clone());
                puts.spawn(async move {
                    let issued = Instant::now();
                    if let Ok(Ok(())) =
                        tokio::time::timeout(PROBE_TIMEOUT, conn.put(key, value)).await
                    {
                        let _ = tx.send(Ack { issued, acked: Instant::now() });
                    }
                });
                while puts.try_join_next().is_some() {}
            }
        });
        Self { task, acks }
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        // Dropping the task's JoinSet aborts every put still in flight.
        self.task.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn figures(outages: &[Option<u64>]) -> FailoverFigures {
        FailoverFigures {
            trials: outages
                .iter()
                .map(|o| FailoverTrial { killed: 1, outage: o.map(Duration::from_millis) })
                .collect(),
        }
    }

    #[test]
    fn median_of_an_even_number_of_trials_is_the_mean_of_the_middle_two() {
        assert_eq!(
            figures(&[Some(400), Some(100), Some(300), Some(200)]).median(),
            Some(Duration::from_millis(250))
        );
        assert_eq!(
            figures(&[Some(300), Some(100), Some(200)]).median(),
            Some(Duration::from_millis(200))
        );
        assert_eq!(figures(&[]).median(), None);
    }

    #[test]
    fn failed_trials_count_as_the_longest() {
        let f = figures(&[Some(100), None, Some(300)]);
        assert_eq!(f.median(), Some(Duration::from_millis(300)));
        assert_eq!(f.failed(), 1);
        assert_eq!(figures(&[Some(100), None, None]).median(), None);
        assert_eq!(f.range(), Some((Duration::from_millis(100), Duration::from_millis(300))));
    }
}
