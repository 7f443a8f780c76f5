//! Refusals a replica decides before the log, on their way to the audit trail.
//!
//! A refused call must leave a record, but it must not cost a log entry: an anonymous
//! client could otherwise grow every replica's log and evict the audit trail. So each
//! replica counts its refusals here, coalesced by (actor, action, target, reason) with the
//! time of the first and last occurrence, and proposes them in one
//! [`Command::RecordRefusals`] entry at most once per [`FLUSH_PERIOD`]. At most
//! [`MAX_REFUSAL_REPORTS`] distinct records are kept between two reports; refusals beyond
//! them are still counted, in one record that says so. Every field is capped before it is
//! kept ([`cap_field`]).
//!
//! The actor is always what the replica verified: a member's cluster, a verified SPIFFE
//! ID, `admin`, or [`anonymous`] with the caller's source address.

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;

use super::FederationReplica;
use crate::clock::unix_now;
use crate::state::{Command, MAX_REFUSAL_REPORTS, RefusalReport, cap_field};

/// How often counted refusals are proposed to the audit trail.
pub const FLUSH_PERIOD: Duration = Duration::from_secs(1);

/// The actor name of a caller the replica could not verify: its source address (no
/// port, so that one source's repeats coalesce).
#[must_use]
pub fn anonymous(remote: Option<SocketAddr>) -> String {
    match remote {
        Some(addr) => format!("anonymous@{}", addr.ip()),
        None => "anonymous".to_string(),
    }
}

/// What one refusal record is keyed by.
type Key = (String, String, String, String);

/// Counts of one key since the last report.
#[derive(Clone, Copy, Debug)]
struct Counts {
    count: u64,
    first_at: i64,
    last_at: i64,
}

#[derive(Debug, Default)]
struct Pending {
    records: BTreeMap<Key, Counts>,
    /// Refusals beyond [`MAX_REFUSAL_REPORTS`] distinct records.
    beyond: Option<Counts>,
}

/// Counts this replica's refusals and reports them to the audit trail (see the module).
#[derive(Debug, Default)]
pub struct RefusalRecorder {
    pending: Mutex<Pending>,
    /// Every refusal counted, reported or not.
    pub refusals: Counter,
}

impl RefusalRecorder {
    /// Counts one refusal (and logs it).
    pub fn record(&self, actor: &str, action: &str, target: &str, reason: &str) {
        self.record_at(actor, action, target, reason, unix_now());
    }

    fn record_at(&self, actor: &str, action: &str, target: &str, reason: &str, now: i64) {
        self.refusals.inc();
        let key = (
            cap_field(actor.to_string()),
            cap_field(action.to_string()),
            cap_field(target.to_string()),
            cap_field(reason.to_string()),
        );
        let Ok(mut pending) = self.pending.lock() else { return };
        // Capped fields, and one WARN line per distinct refusal per report period (its
        // repeats at debug): a flood cannot flood the log either.
        let (actor, action, target, reason) = (&key.0, &key.1, &key.2, &key.3);
        if pending.records.contains_key(&key) {
            tracing::debug!(target: "audit", %actor, %action, target_name = %target, %reason, "refused again");
        } else {
            tracing::warn!(target: "audit", %actor, %action, target_name = %target, %reason, "refused");
        }
        let full = pending.records.len() >= MAX_REFUSAL_REPORTS - 1;
        let counts = match pending.records.get_mut(&key) {
            Some(counts) => counts,
            None if full => {
                pending.beyond.get_or_insert(Counts { count: 0, first_at: now, last_at: now })
            }
            None => pending.records.entry(key).or_insert(Counts {
                count: 0,
                first_at: now,
                last_at: now,
            }),
        };
        counts.count += 1;
        counts.last_at = now;
    }

    /// Takes what was counted since the last call, as reports.
    fn take(&self) -> Vec<RefusalReport> {
        let Ok(mut pending) = self.pending.lock() else { return Vec::new() };
        let pending = std::mem::take(&mut *pending);
        let mut reports: Vec<RefusalReport> = pending
            .records
            .into_iter()
            .map(|((actor, action, target, reason), c)| RefusalReport {
                actor,
                action,
                target,
                reason,
                count: c.count,
                first_at: c.first_at,
                last_at: c.last_at,
            })
            .collect();
        if let Some(c) = pending.beyond {
            reports.push(RefusalReport {
                actor: "*".into(),
                action: "*".into(),
                target: String::new(),
                reason: format!(
                    "refusals beyond the {} distinct records one replica reports per second: \
                     counted, not itemized (see this replica's log)",
                    MAX_REFUSAL_REPORTS - 1
                ),
                count: c.count,
                first_at: c.first_at,
                last_at: c.last_at,
            });
        }
        reports
    }

    /// Puts reports that could not be proposed back, to go with the next report.
    fn put_back(&self, reports: Vec<RefusalReport>) {
        let Ok(mut pending) = self.pending.lock() else { return };
        for r in reports {
            let counts = Counts { count: r.count, first_at: r.first_at, last_at: r.last_at };
            let key = (r.actor, r.action, r.target, r.reason);
            let full = pending.records.len() >= MAX_REFUSAL_REPORTS - 1;
            let slot = match pending.records.get_mut(&key) {
                Some(slot) => slot,
                None if full || key.0 == "*" => {
                    pending.beyond.get_or_insert(Counts { count: 0, ..counts })
                }
                None => pending.records.entry(key).or_insert(Counts { count: 0, ..counts }),
            };
            slot.count += counts.count;
            slot.first_at = slot.first_at.min(counts.first_at);
            slot.last_at = slot.last_at.max(counts.last_at);
        }
    }

    /// Proposes what was counted once per [`FLUSH_PERIOD`] until `stop` resolves, then
    /// once more.
    pub async fn run(
        self: std::sync::Arc<Self>,
        replica: FederationReplica,
        stop: impl Future<Output = ()>,
    ) {
        let flush = || async {
            let reports = self.take();
            if reports.is_empty() {
                return;
            }
            let command = Command::RecordRefusals { refusals: reports.clone() };
            if let Err(error) = replica.write(command.encode()).await {
                tracing::debug!(%error, "refusals not reported yet; kept for the next report");
                self.put_back(reports);
            }
        };
        let work = async {
            let mut tick = tokio::time::interval(FLUSH_PERIOD);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                flush().await;
            }
        };
        tokio::select! {
            () = work => {}
            () = stop => {}
        }
        let _ = tokio::time::timeout(FLUSH_PERIOD, flush()).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeats_are_counted_in_one_record() {
        let recorder = RefusalRecorder::default();
        for at in 0..500 {
            recorder.record_at("anonymous@127.0.0.2", "join", "a.test", "unknown token", at);
        }
        recorder.record_at("cluster-a", "ack", "b.test", "too new", 7);
        let reports = recorder.take();
        assert_eq!(reports.len(), 2);
        let join = reports.iter().find(|r| r.action == "join").expect("join");
        assert_eq!((join.count, join.first_at, join.last_at), (500, 0, 499));
        assert!(recorder.take().is_empty(), "taken once");
        assert_eq!(recorder.refusals.get(), 501);
    }

    #[test]
    fn distinct_refusals_beyond_the_bound_are_counted_not_itemized() {
        let recorder = RefusalRecorder::default();
        for i in 0..10_000 {
            recorder.record_at(
                &format!("anonymous@127.1.{}.{}", i / 256, i % 256),
                "join",
                "x",
                "y",
                1,
            );
        }
        let reports = recorder.take();
        assert_eq!(reports.len(), MAX_REFUSAL_REPORTS);
        let beyond = reports.last().expect("the overflow record");
        assert_eq!(beyond.actor, "*");
        assert_eq!(beyond.count, 10_000 - (MAX_REFUSAL_REPORTS as u64 - 1));
        assert_eq!(reports.iter().map(|r| r.count).sum::<u64>(), 10_000);
    }

    #[test]
    fn fields_are_capped_before_they_are_kept() {
        let recorder = RefusalRecorder::default();
        let huge = "n".repeat(3 << 20);
        recorder.record_at(&huge, &huge, &huge, &huge, 1);
        let report = &recorder.take()[0];
        for field in [&report.actor, &report.action, &report.target, &report.reason] {
            assert!(field.len() <= crate::state::MAX_AUDIT_FIELD);
        }
    }

    #[test]
    fn reports_put_back_are_merged_with_new_refusals() {
        let recorder = RefusalRecorder::default();
        recorder.record_at("a", "join", "t", "r", 1);
        let reports = recorder.take();
        recorder.record_at("a", "join", "t", "r", 5);
        recorder.put_back(reports);
        let merged = recorder.take();
        assert_eq!(merged.len(), 1);
        assert_eq!((merged[0].count, merged[0].first_at, merged[0].last_at), (2, 1, 5));
    }

    #[test]
    fn the_anonymous_actor_is_the_source_address_without_port() {
        let addr: SocketAddr = "127.0.0.2:5555".parse().expect("addr");
        assert_eq!(anonymous(Some(addr)), "anonymous@127.0.0.2");
        assert_eq!(anonymous(None), "anonymous");
    }
}
