//! A replica's background tasks: check-quorum (a leader that hears no quorum, or whose
//! disk writes nothing, steps down) and the Prometheus gauges kept in step with openraft's metrics. Both are owned
//! by the replica's task set: stopped and joined at shutdown, aborted when the last
//! clone of the replica is dropped.

use std::time::Duration;

use openraft::ServerState;

use super::Replica;
use crate::log_store::LogDurability;
use crate::state_machine::StateMachine;
use crate::types::NodeId;

/// A leader that heard from no quorum for this many upper election timeouts steps down.
pub(super) const CHECK_QUORUM_TIMEOUTS: u32 = 2;

impl<S: StateMachine> Replica<S> {
    /// Check-quorum: a leader that has not heard from a quorum for `limit` fences its
    /// term ([`Network::fence`]: it sends no AppendEntries, heartbeats included, and
    /// proposes nothing more), so a leader that reaches its followers but hears none of
    /// them — a deaf or half-partitioned leader — does not hold the group without
    /// committing anything: the followers' leases run out and they elect one of
    /// themselves. The fence lifts once this replica no longer leads that term (the new
    /// leader's messages reached it). openraft 0.9 has no check-quorum of its own and
    /// ignores an election triggered on a leader.
    ///
    /// A leader whose log writer has had appends waiting for `limit` without writing any
    /// (a hung disk) fences its term the same way: its raft core does not wait for its
    /// own appends (see [`crate::log_store::LogStore`]), so it would go on heartbeating
    /// and hold the group while nothing it commits can be applied.
    ///
    /// [`Network::fence`]: crate::network::Network::fence
    pub(super) fn spawn_check_quorum(&self, limit: Duration, log: LogDurability) {
        let raft = self.raft.clone();
        let network = self.network.clone();
        let metrics = self.metrics.clone();
        let id = self.id;
        let limit_ms = u64::try_from(limit.as_millis()).unwrap_or(u64::MAX);
        self.tasks.spawn(async move {
            let mut tick = tokio::time::interval((limit / 4).max(Duration::from_millis(10)));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let m = raft.metrics().borrow().clone();
                if m.running_state.is_err() {
                    return;
                }
                let leading = m.state == ServerState::Leader;
                if let Some(term) = network.fenced() {
                    if !leading || m.current_term != term {
                        tracing::info!(
                            replica = id,
                            term,
                            "no longer leads the fenced term; fence lifted"
                        );
                        network.unfence();
                    }
                    continue;
                }
                let voters = m.membership_config.membership().voter_ids().count();
                // A leader alone has nobody to hand over to.
                if !leading || voters < 2 {
                    continue;
                }
                if let Some(ms) = m.millis_since_quorum_ack
                    && ms > limit_ms
                {
                    tracing::warn!(
                        replica = id,
                        term = m.current_term,
                        silent_ms = ms,
                        "leading without hearing a quorum; stepping down (check-quorum)"
                    );
                    metrics.quorum_step_downs.inc();
                    network.fence(m.current_term);
                    continue;
                }
                if let Some(stalled) = log.stalled_for()
                    && stalled > limit
                {
                    tracing::warn!(
                        replica = id,
                        term = m.current_term,
                        stalled_ms = u64::try_from(stalled.as_millis()).unwrap_or(u64::MAX),
                        "leading while the raft log writer has made no append durable; \
                         stepping down (is the disk hung?)"
                    );
                    metrics.stalled_log_step_downs.inc();
                    network.fence(m.current_term);
                }
            }
        });
    }

    /// Keeps the Prometheus gauges in step with openraft's metrics: at once when the
    /// term, role or leader changes, and the log indexes at least every
    /// [`INDEX_GAUGES_EVERY`].
    ///
    /// It watches openraft's server metrics, which change with those alone, not the whole
    /// metrics, which raft core sends at every turn of its loop: a task woken that often
    /// would run between raft core and the task it had just woken (a follower's answer,
    /// the state machine), on the write path of every entry.
    pub(super) fn spawn_metrics_refresher(&self) {
        let mut server = self.raft.server_metrics();
        let data = self.raft.data_metrics();
        let metrics = self.metrics.clone();
        let id = self.id;
        self.tasks.spawn(async move {
            let mut last_leader: Option<Option<NodeId>> = None;
            loop {
                let s = server.borrow_and_update().clone();
                let d = data.borrow().clone();
                let gauge = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
                let term = s.vote.leader_id().get_term();
                metrics.term.set(gauge(term));
                metrics.is_leader.set(i64::from(s.state == ServerState::Leader));
                metrics.last_log_index.set(gauge(d.last_log.map_or(0, |l| l.index)));
                metrics.applied_index.set(gauge(d.last_applied.map_or(0, |l| l.index)));
                metrics.snapshot_index.set(gauge(d.snapshot.map_or(0, |l| l.index)));
                // A follower's commit index is not in openraft's metrics; applied trails it
                // by at most one apply batch, so it stands in for it here.
                metrics.commit_index.set(gauge(d.last_applied.map_or(0, |l| l.index)));
                if last_leader.is_some_and(|l| l != s.current_leader) {
                    metrics.leader_changes.inc();
                    tracing::info!(replica = id, leader = ?s.current_leader, term, "leader changed");
                }
                last_leader = Some(s.current_leader);
                tokio::select! {
                    changed = server.changed() => if changed.is_err() { return },
                    () = tokio::time::sleep(INDEX_GAUGES_EVERY) => {}
                }
            }
        });
    }
}

/// How often the log-index gauges are refreshed at least.
const INDEX_GAUGES_EVERY: Duration = Duration::from_millis(250);
