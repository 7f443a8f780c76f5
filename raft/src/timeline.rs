//! Where a write's time goes on this replica: the moments each log entry passes a step of
//! the write path, turned into Prometheus histograms once the entry is answered.
//!
//! A write on the leader passes these steps (each the first time it happens to the
//! entry): the proposer hands its batch to raft core (`dispatched`), raft core gives the
//! entry to the log store (`appending`), the log writer takes it off its queue
//! (`writing`), the first AppendEntries that carries it leaves
//! for a follower (`sent`), the first follower answers it as appended (`acked`), the
//! state machine starts and ends applying it (`applying`, `applied`), and the proposer
//! gets raft core's answer (`answered`). The leader's log writer makes the entry durable
//! (`durable`) while it is replicated, somewhere after `appending` and before
//! `applying` (see [`crate::log_store::LogStore`]). Each is observed in `raft_write_step_seconds{step}` as the time since the
//! first write of the entry reached the proposer, so the means add up along the path and
//! the difference between two steps is the time spent between them.
//!
//! A follower times the AppendEntries it serves from the request's arrival: to the log
//! store (`appending`), taken up by the log writer (`writing`), durable (`durable`) and the answer leaving (`answered`), in
//! `raft_follower_append_step_seconds{step}`. The leader's `sent` → `acked` less the
//! follower's `answered` is the transport's share: encoding, TLS, the network.
//!
//! Marks are kept for a few hundred entries in a ring indexed by log index; an entry
//! appended again (a new leader's entry at the same index) starts afresh, and entries of
//! large batches (a follower catching up) are not marked. The cost is a short lock per
//! step per entry.

use std::ops::RangeInclusive;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Instant;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Entries whose marks are kept; in flight at once are far fewer (the proposer keeps two
/// proposals in flight).
const SLOTS: usize = 512;
/// An append, RPC or apply of more entries than this is not marked: it is a catch-up or a
/// restart, not writes waiting on clients.
pub(crate) const MAX_MARKED: usize = 64;

/// A step of an entry through the write path, in the order it is passed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Step {
    /// The log store got the entry from raft core.
    Appending = 0,
    /// The log writer took the batch holding the entry off its queue and began writing.
    Writing = 1,
    /// The log writer made the entry durable.
    Durable = 2,
    /// The first AppendEntries carrying the entry left for a follower.
    Sent = 3,
    /// A follower first answered an AppendEntries carrying the entry as appended.
    Acked = 4,
    /// The state machine started applying the entry.
    Applying = 5,
    /// The state machine applied the entry.
    Applied = 6,
}

const STEPS: usize = 7;

/// The leader's steps as observed, with the proposer's own two around them.
const LEADER_STEPS: [&str; STEPS + 2] = [
    "dispatched",
    "appending",
    "writing",
    "durable",
    "sent",
    "acked",
    "applying",
    "applied",
    "answered",
];
/// A follower's steps of an AppendEntries it serves.
const FOLLOWER_STEPS: [&str; 4] = ["appending", "writing", "durable", "answered"];

#[derive(Clone, Copy, Default)]
struct Slot {
    /// The log index the marks are of (0: none).
    index: u64,
    at: [Option<Instant>; STEPS],
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StepLabel {
    step: String,
}

/// The marks of recent entries and the histograms they end in. Cheap to clone: clones
/// share both.
#[derive(Clone)]
pub struct Timeline {
    slots: Arc<Mutex<Vec<Slot>>>,
    leader: Family<StepLabel, Histogram>,
    follower: Family<StepLabel, Histogram>,
    /// `leader`'s histograms in [`LEADER_STEPS`] order (clones share the family's).
    leader_steps: Arc<[Histogram]>,
    /// `follower`'s histograms in [`FOLLOWER_STEPS`] order.
    follower_steps: Arc<[Histogram]>,
}

impl std::fmt::Debug for Timeline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Timeline").finish_non_exhaustive()
    }
}

impl Default for Timeline {
    fn default() -> Self {
        // 10 µs to ~5 s.
        let buckets = || Histogram::new(exponential_buckets(0.000_01, 2.0, 20));
        let leader = Family::<StepLabel, Histogram>::new_with_constructor(buckets as fn() -> _);
        let follower = Family::<StepLabel, Histogram>::new_with_constructor(buckets as fn() -> _);
        let of = |family: &Family<StepLabel, Histogram>, steps: &[&str]| -> Arc<[Histogram]> {
            steps
                .iter()
                .map(|step| family.get_or_create(&StepLabel { step: (*step).into() }).clone())
                .collect()
        };
        let leader_steps = of(&leader, &LEADER_STEPS);
        let follower_steps = of(&follower, &FOLLOWER_STEPS);
        Self {
            slots: Arc::new(Mutex::new(vec![Slot::default(); SLOTS])),
            leader,
            follower,
            leader_steps,
            follower_steps,
        }
    }
}

impl Timeline {
    /// Registers both histograms in `registry` (the consensus metrics' sub-registry).
    pub(crate) fn register(&self, registry: &mut Registry) {
        registry.register(
            "write_step_seconds",
            "On the leader: seconds from a write reaching the proposer to each step of its \
             log entry (dispatched, appending, writing, durable, sent, acked, applying, \
             applied, answered)",
            self.leader.clone(),
        );
        registry.register(
            "follower_append_step_seconds",
            "On a follower: seconds from an AppendEntries arriving to each step of serving it \
             (appending, writing, durable, answered)",
            self.follower.clone(),
        );
    }

    fn lock(&self) -> MutexGuard<'_, Vec<Slot>> {
        // The marks are plain values: a panic elsewhere leaves none half-written.
        self.slots.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Marks `step` now for the entries at `indexes` (at most [`MAX_MARKED`] of them; more
    /// are not marked; `None`: no entry). [`Step::Appending`] starts an entry's marks
    /// afresh; the other steps are marked only the first time and only for an entry marked
    /// appending.
    pub(crate) fn mark(&self, step: Step, indexes: Option<RangeInclusive<u64>>) {
        self.mark_at(step, indexes, Instant::now());
    }

    /// [`Timeline::mark`] at `at`.
    pub(crate) fn mark_at(&self, step: Step, indexes: Option<RangeInclusive<u64>>, at: Instant) {
        let Some(indexes) = indexes.filter(few) else { return };
        let mut slots = self.lock();
        for index in indexes {
            let slot = &mut slots[slot_of(index)];
            if step == Step::Appending {
                *slot = Slot { index, ..Slot::default() };
            } else if slot.index != index || slot.at[step as usize].is_some() {
                continue;
            }
            slot.at[step as usize] = Some(at);
        }
    }

    /// The leader's proposer got raft core's answer for the entry at `index`, whose first
    /// write reached it at `queued` and which it handed to raft core at `dispatched`:
    /// observes every step marked and forgets the entry.
    pub(crate) fn answered(&self, index: u64, queued: Instant, dispatched: Instant) {
        let now = Instant::now();
        let Some(slot) = self.take(index) else { return };
        let since = |at: Instant| at.saturating_duration_since(queued).as_secs_f64();
        self.leader_steps[0].observe(since(dispatched));
        for (step, at) in slot.at.iter().enumerate() {
            if let Some(at) = at {
                self.leader_steps[step + 1].observe(since(*at));
            }
        }
        self.leader_steps[STEPS + 1].observe(since(now));
    }

    /// A follower answered an AppendEntries that arrived at `arrived` carrying `indexes`,
    /// as appended: observes the steps of its last entry and forgets them all.
    pub(crate) fn follower_answered(&self, indexes: Option<RangeInclusive<u64>>, arrived: Instant) {
        let Some(indexes) = indexes.filter(few) else { return };
        let now = Instant::now();
        let mut last = None;
        for index in indexes {
            last = self.take(index).or(last);
        }
        let Some(slot) = last else { return };
        let since = |at: Instant| at.saturating_duration_since(arrived).as_secs_f64();
        let steps = [Step::Appending, Step::Writing, Step::Durable].map(|s| slot.at[s as usize]);
        for (histogram, at) in self.follower_steps.iter().zip(steps) {
            if let Some(at) = at {
                histogram.observe(since(at));
            }
        }
        self.follower_steps[steps.len()].observe(since(now));
    }

    /// The marks of the entry at `index`, removed; `None` when it was not marked.
    fn take(&self, index: u64) -> Option<Slot> {
        let mut slots = self.lock();
        let slot = &mut slots[slot_of(index)];
        if slot.index != index || index == 0 {
            return None;
        }
        Some(std::mem::take(slot))
    }
}

/// The log indexes of `entries` (contiguous, as raft sends and stores them), `None` when
/// there are none.
pub(crate) fn span<T>(entries: &[T], index: impl Fn(&T) -> u64) -> Option<RangeInclusive<u64>> {
    Some(index(entries.first()?)..=index(entries.last()?))
}

/// Whether `indexes` are few enough to mark: [`MAX_MARKED`] at most.
fn few(indexes: &RangeInclusive<u64>) -> bool {
    indexes.end().saturating_sub(*indexes.start()) < MAX_MARKED as u64
}

fn slot_of(index: u64) -> usize {
    // SLOTS is far below u64::MAX: the remainder fits.
    (index % SLOTS as u64) as usize
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use prometheus_client::encoding::text::encode;

    use super::*;

    fn exposition(timeline: &Timeline) -> String {
        let mut registry = Registry::default();
        timeline.register(&mut registry);
        let mut text = String::new();
        encode(&mut text, &registry).expect("encodes");
        text
    }

    fn count(text: &str, metric: &str, step: &str) -> u64 {
        let prefix = format!("{metric}_count{{step=\"{step}\"}} ");
        text.lines()
            .find_map(|line| line.strip_prefix(&prefix)?.parse().ok())
            .unwrap_or_else(|| panic!("no {prefix} in\n{text}"))
    }

    #[test]
    fn a_leader_entry_is_observed_at_every_step_it_passed_once() {
        let timeline = Timeline::default();
        let queued = Instant::now();
        let dispatched = queued + Duration::from_micros(5);
        timeline.mark(Step::Appending, Some(7..=7));
        timeline.mark(Step::Writing, Some(7..=7));
        timeline.mark(Step::Durable, Some(7..=7));
        timeline.mark(Step::Sent, Some(7..=7));
        timeline.mark(Step::Sent, Some(7..=7)); // a retry: the first counts
        timeline.mark(Step::Acked, Some(7..=7));
        timeline.mark(Step::Applying, Some(7..=7));
        timeline.mark(Step::Applied, Some(7..=7));
        timeline.answered(7, queued, dispatched);
        timeline.answered(7, queued, dispatched); // forgotten once answered
        let text = exposition(&timeline);
        for step in LEADER_STEPS {
            assert_eq!(count(&text, "write_step_seconds", step), 1, "{step}");
        }
    }

    #[test]
    fn steps_of_an_entry_never_appended_here_or_replaced_are_not_observed() {
        let timeline = Timeline::default();
        let now = Instant::now();
        // Durable without appending: not marked.
        timeline.mark(Step::Durable, Some(3..=3));
        timeline.answered(3, now, now);
        // Index 3 + SLOTS takes the slot of 3: the answer for 3 finds another entry.
        timeline.mark(Step::Appending, Some(3..=3));
        timeline.mark(Step::Appending, Some(3 + SLOTS as u64..=3 + SLOTS as u64));
        timeline.answered(3, now, now);
        let text = exposition(&timeline);
        assert_eq!(count(&text, "write_step_seconds", "answered"), 0);
        assert_eq!(count(&text, "write_step_seconds", "durable"), 0);
    }

    #[test]
    fn large_batches_are_not_marked() {
        let timeline = Timeline::default();
        let many = 1..=(MAX_MARKED as u64 + 1);
        timeline.mark(Step::Appending, Some(many.clone()));
        timeline.follower_answered(Some(many), Instant::now());
        let text = exposition(&timeline);
        assert_eq!(count(&text, "follower_append_step_seconds", "answered"), 0);
    }

    #[test]
    fn a_follower_observes_its_last_entry_of_an_append() {
        let timeline = Timeline::default();
        let arrived = Instant::now();
        timeline.mark(Step::Appending, Some(10..=11));
        timeline.mark(Step::Writing, Some(10..=11));
        timeline.mark(Step::Durable, Some(10..=11));
        timeline.follower_answered(Some(10..=11), arrived);
        let text = exposition(&timeline);
        for step in FOLLOWER_STEPS {
            assert_eq!(count(&text, "follower_append_step_seconds", step), 1, "{step}");
        }
    }
}
