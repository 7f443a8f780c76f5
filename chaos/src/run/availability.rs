//! What the recorded history says about availability: whether a write was acknowledged
//! within each fault's bound ([`unavailable`]), and per fault the time until the first
//! write invoked after it was acknowledged ([`failover_gaps`]).

use std::time::Duration;

use super::report::TimelineEvent;
use super::scenario::Availability;
use crate::check;

/// One fault's availability promise, checked against the history after the run.
pub(super) struct FaultWindow {
    pub(super) what: String,
    /// When it was injected and healed (clock nanoseconds).
    pub(super) at: u64,
    pub(super) healed: u64,
    pub(super) promise: Availability,
    pub(super) bound: Duration,
}

/// The acknowledged writes of `history`: (invoked, acknowledged) in nanoseconds.
fn acknowledged_writes(history: &check::history::History) -> Vec<(u64, u64)> {
    history
        .ops
        .iter()
        .filter(|op| matches!(op.kind, check::history::OpKind::Write { .. }))
        .filter_map(|op| Some((op.invoke, op.acked_at()?)))
        .collect()
}

/// A violation for every fault after which no write was acknowledged within its bound.
pub(super) fn unavailable(
    history: &check::history::History,
    windows: &[FaultWindow],
) -> Vec<check::Violation> {
    let writes = acknowledged_writes(history);
    let ms = |ns: u64| ns / 1_000_000;
    windows
        .iter()
        .filter_map(|w| {
            let (from, since) = match w.promise {
                Availability::DuringFault(_) => (w.at, "the fault"),
                Availability::AfterHeal(_) => (w.healed, "its heal"),
                Availability::Unasserted => return None,
            };
            let first =
                writes.iter().filter(|(invoke, _)| *invoke >= from).map(|(_, ack)| *ack).min();
            let bound_ns = u64::try_from(w.bound.as_nanos()).unwrap_or(u64::MAX);
            match first {
                Some(ack) if ack - from <= bound_ns => None,
                Some(ack) => Some(format!(
                    "'{}': the first write invoked after {since} was acknowledged {} ms after it; \
                     the promise is {} ms",
                    w.what,
                    ms(ack - from),
                    w.bound.as_millis()
                )),
                None => Some(format!(
                    "'{}': no write invoked after {since} was acknowledged at all (promise: {} ms)",
                    w.what,
                    w.bound.as_millis()
                )),
            }
        })
        .map(|message| check::Violation::new(check::ViolationKind::Unavailable, message))
        .collect()
}

/// Per fault: milliseconds from its injection until a write invoked after it is
/// acknowledged (writes in flight at the fault do not count). Timeline lines starting
/// with `healed` or `observed` are not faults.
pub(super) fn failover_gaps(
    history: &check::history::History,
    timeline: &[TimelineEvent],
) -> Vec<u64> {
    let writes = acknowledged_writes(history);
    timeline
        .iter()
        .filter(|e| !e.what.starts_with("healed") && !e.what.starts_with("observed"))
        .filter_map(|e| {
            let at = e.at_ms * 1_000_000;
            let first =
                writes.iter().filter(|(invoke, _)| *invoke >= at).map(|(_, ack)| *ack).min()?;
            Some((first - at) / 1_000_000)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fault_without_an_acknowledged_write_in_its_bound_is_a_violation() {
        let mut history = check::history::History::default();
        let write = |history: &mut check::history::History, invoke_ms: u64, ack_ms: u64| {
            let id = history.invoke(
                check::history::Process(0),
                "k".to_string(),
                check::history::OpKind::Write { value: 1 },
                invoke_ms * 1_000_000,
            );
            history.complete(
                id,
                ack_ms * 1_000_000,
                check::history::Outcome::Ok { read_value: None },
            );
        };
        write(&mut history, 1_000, 1_010);
        write(&mut history, 2_100, 2_600);
        write(&mut history, 9_000, 9_100);
        let window = |at_ms: u64, healed_ms: u64, promise| FaultWindow {
            what: format!("fault at {at_ms}"),
            at: at_ms * 1_000_000,
            healed: healed_ms * 1_000_000,
            promise,
            bound: Duration::from_millis(1_000),
        };
        let windows = [
            // Acknowledged 600 ms after the fault: kept.
            window(2_000, 4_500, Availability::DuringFault(16)),
            // The next acknowledged write comes 4 s after the fault: broken.
            window(5_000, 7_500, Availability::DuringFault(16)),
            // 100 ms after the heal: kept.
            window(6_000, 8_950, Availability::AfterHeal(40)),
            // Nothing after it at all: broken.
            window(10_000, 12_500, Availability::DuringFault(16)),
            window(10_000, 12_500, Availability::Unasserted),
        ];
        let found = unavailable(&history, &windows);
        assert_eq!(found.len(), 2, "{found:?}");
        assert!(
            found[0].message.contains("'fault at 5000'") && found[0].message.contains("4100 ms")
        );
        assert!(
            found[1].message.contains("'fault at 10000'") && found[1].message.contains("at all")
        );
        assert!(found.iter().all(|v| v.kind == check::ViolationKind::Unavailable));
    }

    #[test]
    fn observations_in_the_timeline_are_not_faults() {
        let mut history = check::history::History::default();
        let id = history.invoke(
            check::history::Process(0),
            "k".to_string(),
            check::history::OpKind::Write { value: 1 },
            3_000_000_000,
        );
        history.complete(id, 3_100_000_000, check::history::Outcome::Ok { read_value: None });
        let event = |at_ms: u64, what: &str| TimelineEvent { at_ms, what: what.into() };
        let timeline = [
            event(2_000, "SIGKILL member c: its agent and its etcd"),
            event(2_500, "observed: member c not ready (500 ms after the kill)"),
            event(2_900, "healed: restarted member c's etcd and agent"),
        ];
        assert_eq!(failover_gaps(&history, &timeline), vec![1_100]);
    }
}
