//! The sink tasks: each sink applies the views the agent hands out in a task of its own
//! (a hung one holds up nothing else), retried while it fails or holds something back,
//! and reports back; the agent keeps each sink's progress, its status and metrics, and
//! works out when every sink holds the current view (then the changes have propagated
//! and are acknowledged).

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, watch};

use super::Agent;
use crate::agent::status::SinkStatus;
use crate::agent::view::{AgentView, Sink, SinkError, SourceProblem};

/// How often a failed sink is retried (by its own task).
const SINK_RETRY: Duration = Duration::from_secs(2);
/// How often a sink that holds back part of a view (a namespace missing in the cluster)
/// applies it again, so that what the operator fixed is written without a new view.
const SKIPPED_RETRY: Duration = Duration::from_secs(10);
/// A sink whose apply has gone on this long is reported unhealthy while it goes on (a
/// hung etcd answers nothing until its client's own timeout, 10 s): an apply normally
/// takes milliseconds.
const SINK_STALLED: Duration = Duration::from_secs(2);

/// A view handed to the sink tasks: the latest one wins.
#[derive(Clone, Debug)]
pub(super) struct HandedView {
    /// Counts the views handed out.
    pub(super) generation: u64,
    /// The view.
    pub(super) view: Arc<AgentView>,
}

/// What a sink task reports.
#[derive(Debug)]
pub(super) struct SinkReport {
    /// The sink's index in [`Agent::sinks`].
    pub(super) index: usize,
    /// The view's generation.
    pub(super) generation: u64,
    /// The view's revision.
    pub(super) revision: u64,
    /// Started, or done.
    pub(super) outcome: SinkOutcome,
}

/// A sink task's progress on a view.
#[derive(Debug)]
pub(super) enum SinkOutcome {
    /// The apply began.
    Started,
    /// The apply ended; what the sink held back of the view.
    Done(Result<(), SinkError>, Vec<SourceProblem>),
}

/// One sink's progress, as the agent knows it.
#[derive(Debug)]
pub(super) struct SinkProgress {
    /// Its name.
    pub(super) name: String,
    /// The generation it last finished applying, and then the trust domains it could
    /// not write (`Some(empty)`: all written; `None`: it failed as a whole).
    pub(super) done: Option<(u64, Option<Vec<String>>)>,
    /// Since when the apply under way has run.
    pub(super) applying_since: Option<Instant>,
}

/// Applies each view `views` hands out to `sink`, retrying a failed one every
/// [`SINK_RETRY`] until it succeeds or a newer view comes; reports to `reports`. Runs
/// until either channel closes. Each sink has its own task: a hung one holds up nothing
/// else.
pub(super) async fn run_sink(
    index: usize,
    sink: Arc<dyn Sink>,
    mut views: watch::Receiver<HandedView>,
    reports: mpsc::UnboundedSender<SinkReport>,
) {
    loop {
        let handed = views.borrow_and_update().clone();
        let report = |outcome| SinkReport {
            index,
            generation: handed.generation,
            revision: handed.view.revision,
            outcome,
        };
        if reports.send(report(SinkOutcome::Started)).is_err() {
            return;
        }
        let result = sink.apply(&handed.view).await;
        let skipped = sink.skipped();
        // A failed apply is tried again soon; one that held something back now and then
        // (what the operator fixed is written without waiting for a new view); a whole
        // one waits for the next view.
        let retry = match &result {
            Err(_) => Some(SINK_RETRY),
            Ok(()) if !skipped.is_empty() => Some(SKIPPED_RETRY),
            Ok(()) => None,
        };
        if reports.send(report(SinkOutcome::Done(result, skipped))).is_err() {
            return;
        }
        match retry {
            Some(after) => tokio::select! {
                changed = views.changed() => if changed.is_err() { return },
                () = tokio::time::sleep(after) => {}
            },
            None => {
                if views.changed().await.is_err() {
                    return;
                }
            }
        }
    }
}

impl Agent {
    /// Hands the view to every sink task (a new generation): nothing of it is known to be
    /// written until each reports it applied.
    pub(super) fn hand_view_to_sinks(&mut self) {
        self.generation += 1;
        self.views.send_replace(HandedView {
            generation: self.generation,
            view: Arc::new(self.view.clone()),
        });
        self.sinks_dirty = true;
        self.unwritten_trust_domains = None;
        self.settle_sinks();
    }

    /// Records a sink task's report: its status, its metrics, and whether every sink now
    /// holds the current view.
    pub(super) fn on_sink_report(&mut self, report: SinkReport) {
        let Some(progress) = self.sinks.get_mut(report.index) else { return };
        let entry = self.status.sinks.entry(progress.name.clone()).or_default();
        match report.outcome {
            SinkOutcome::Started => {
                progress.applying_since = Some(Instant::now());
                return;
            }
            SinkOutcome::Done(Ok(()), skipped) => {
                progress.applying_since = None;
                progress.done = Some((report.generation, Some(Vec::new())));
                self.metrics.sink_applied(&progress.name, true);
                *entry = SinkStatus {
                    healthy: true,
                    applied_revision: report.revision,
                    error: None,
                    skipped,
                };
            }
            SinkOutcome::Done(Err(error), skipped) => {
                progress.applying_since = None;
                let unwritten =
                    (!error.trust_domains.is_empty()).then(|| error.trust_domains.clone());
                progress.done = Some((report.generation, unwritten));
                self.metrics.sink_applied(&progress.name, false);
                tracing::warn!(sink = %progress.name, %error, "sink failed; will retry");
                entry.healthy = false;
                entry.error = Some(error.to_string());
                entry.skipped = skipped;
            }
        }
        self.settle_sinks();
        self.metrics.mirror(&self.status);
    }

    /// Works out, from the sinks' reports, whether every sink holds the current view
    /// (then the changes it brought have propagated), or which trust domains some could
    /// not write.
    pub(super) fn settle_sinks(&mut self) {
        let generation = self.generation;
        let mut all_ok = true;
        let mut unwritten = Some(std::collections::BTreeSet::new());
        for progress in &self.sinks {
            match &progress.done {
                Some((g, Some(tds))) if *g == generation => {
                    if !tds.is_empty() {
                        all_ok = false;
                        if let Some(unwritten) = &mut unwritten {
                            unwritten.extend(tds.iter().cloned());
                        }
                    }
                }
                Some((g, None)) if *g == generation => {
                    all_ok = false;
                    unwritten = None;
                }
                // Not reported on the current view yet.
                _ => {
                    all_ok = false;
                    unwritten = None;
                }
            }
        }
        self.sinks_dirty = !all_ok;
        self.unwritten_trust_domains = if all_ok { None } else { unwritten };
        if all_ok {
            self.observe_propagation();
        }
    }

    /// Marks unhealthy every sink whose apply has run for [`SINK_STALLED`] or more.
    pub(super) fn mark_stalled_sinks(&mut self) {
        for progress in &self.sinks {
            let Some(since) = progress.applying_since else { continue };
            let running = since.elapsed();
            if running < SINK_STALLED {
                continue;
            }
            let entry = self.status.sinks.entry(progress.name.clone()).or_default();
            if entry.healthy {
                tracing::warn!(
                    sink = %progress.name,
                    running_ms = running.as_millis(),
                    "a sink apply has not finished; its target does not answer"
                );
            }
            entry.healthy = false;
            entry.error = Some(format!(
                "an apply has run for {} s without finishing: the sink's target does not answer",
                running.as_secs()
            ));
        }
    }
}
