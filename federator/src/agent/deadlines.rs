//! How long the agent waits on a replica, and between sessions: the deadlines of a
//! session, all derived from the lease TTL ([`Deadlines`]), the fault of a replica that
//! misses one ([`ReplicaFault`]), and the backoff between sessions (jittered exponential
//! after failures, slower once the federation refused the agent).

use std::future::Future;
use std::time::Duration;

/// Longest wait between connection attempts (less with a short lease TTL: see
/// [`Deadlines::max_backoff`]).
const MAX_BACKOFF: Duration = Duration::from_secs(10);
/// How long a connection attempt may take (less with a short lease TTL: see
/// [`Deadlines::connect`]).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// Longest wait between sessions once the federation refused this agent (removed,
/// token used, SVID not verifying): nothing changes until an operator acts.
const REFUSED_BACKOFF: Duration = Duration::from_secs(30);

/// The deadlines of a session, all derived from the lease TTL `T`, so that the agent
/// notices an unresponsive replica and renews its lease through another one well within
/// the TTL (the shipped 10 s: pings after 1.25 s of silence, answered within 1.25 s;
/// keep-alives every 2 s; 2.5 s per call).
///
/// A replica that stops answering right after a renewal (stopped, hung, cut off) is
/// noticed within `T/4` by an unanswered HTTP/2 ping (sent `T/8` after its last frame,
/// given `T/8`). The agent then connects to the next replica at once (`T/4` at most) and
/// renews the lease there first (`T/4` at most): with a responsive next replica, renewed
/// about `T/4` after the last renewal, and by `3T/4` when each step takes its whole
/// deadline. A replica that still answers pings but not keep-alives is noticed by the
/// next keep-alive (sent `T/5` after the last one, given `T/4`), one that answers them
/// with errors at the second (`2T/5`). The lessor expires a lease only a full TTL after
/// the last keep-alive that reached the leader.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(in crate::agent) struct Deadlines {
    /// The lease TTL they derive from.
    pub(in crate::agent) ttl: Duration,
    /// Between keep-alives: `T/5`.
    pub(in crate::agent) keepalive_every: Duration,
    /// Of each call to the replica (keep-alive, acknowledgement, publication, export,
    /// grant, the watch's opening) and of each wait for the next message of a watch
    /// batch (events received, their checkpoint not yet): `T/4`. An idle watch stream
    /// carries nothing: the HTTP/2 pings and the keep-alives on the same connection
    /// vouch for it.
    pub(in crate::agent) call: Duration,
    /// An HTTP/2 ping goes out after this long without a frame from the replica: `T/8`.
    pub(super) ping_interval: Duration,
    /// An unanswered ping closes the connection, and ends the session, after this long:
    /// `T/8`.
    pub(super) ping_timeout: Duration,
    /// Of a connection attempt (TCP and TLS): `T/4`, at most [`CONNECT_TIMEOUT`].
    pub(super) connect: Duration,
    /// Keep-alives answered with errors (the replica cannot reach the leader: an
    /// election, a partition) are retried on the same replica until the lease has gone
    /// this long unrenewed, then the agent moves on: `T/3`.
    pub(in crate::agent) unrenewed: Duration,
    /// Longest wait between connection attempts: `T/4`, at most [`MAX_BACKOFF`].
    pub(super) max_backoff: Duration,
}

impl Deadlines {
    /// The deadlines for a lease of `ttl`.
    pub(in crate::agent) fn for_ttl(ttl: Duration) -> Self {
        Self {
            ttl,
            keepalive_every: ttl / 5,
            call: ttl / 4,
            ping_interval: ttl / 8,
            ping_timeout: ttl / 8,
            connect: (ttl / 4).min(CONNECT_TIMEOUT),
            unrenewed: ttl / 3,
            max_backoff: (ttl / 4).min(MAX_BACKOFF),
        }
    }
}

/// Why the agent leaves a replica that may still be running: the replica missed a
/// deadline, or cannot renew the lease. Either way the agent moves to the next replica
/// and renews the lease there first.
#[derive(Debug, thiserror::Error)]
pub(in crate::agent) enum ReplicaFault {
    /// A call, or the next message of a watch batch, got no answer in time.
    #[error("{call}: no answer within {} ms", deadline.as_millis())]
    MissedDeadline {
        /// What was waited for.
        call: &'static str,
        /// For how long.
        deadline: Duration,
    },
    /// Keep-alives through the replica have been answered with errors for too long.
    #[error(
        "keep-alives through this replica have not renewed the lease for {} ms: {last_error}",
        unrenewed.as_millis()
    )]
    NotRenewing {
        /// Since the last renewal.
        unrenewed: Duration,
        /// The last keep-alive's error.
        last_error: String,
    },
}

/// One call to the replica, bounded by `deadline`: the replica's answer, or
/// [`ReplicaFault::MissedDeadline`] when none came in time.
pub(super) async fn bounded<T>(
    call: &'static str,
    deadline: Duration,
    request: impl Future<Output = Result<tonic::Response<T>, tonic::Status>>,
) -> Result<Result<T, tonic::Status>, ReplicaFault> {
    tokio::time::timeout(deadline, request)
        .await
        .map(|answer| answer.map(tonic::Response::into_inner))
        .map_err(|_| ReplicaFault::MissedDeadline { call, deadline })
}

/// The wait before asking again a federation that refused this agent: `max` (the
/// session's longest backoff) doubling with each refusal in a row, up to
/// [`REFUSED_BACKOFF`] (never below `max`).
pub(super) fn refused_backoff(refusals: u32, max: Duration) -> Duration {
    max.saturating_mul(1u32 << refusals.saturating_sub(1).min(8)).min(REFUSED_BACKOFF.max(max))
}

/// Jittered exponential backoff: 100 ms doubling to `max`, ± 50 %.
pub(super) fn backoff(failures: u32, max: Duration) -> Duration {
    if failures == 0 {
        return Duration::from_millis(100);
    }
    let base = Duration::from_millis(100).saturating_mul(1u32 << failures.min(8)).min(max);
    let jitter = rand::random_range(0.5..1.5);
    base.mul_f64(jitter)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_is_jittered_and_bounded() {
        assert_eq!(backoff(0, MAX_BACKOFF), Duration::from_millis(100));
        for failures in 1..20 {
            let b = backoff(failures, MAX_BACKOFF);
            assert!(b >= Duration::from_millis(100), "{b:?}");
            assert!(b <= MAX_BACKOFF.mul_f64(1.5), "{b:?}");
        }
        let short = Deadlines::for_ttl(Duration::from_secs(4)).max_backoff;
        assert_eq!(short, Duration::from_secs(1));
        assert!((1..20).all(|failures| backoff(failures, short) <= short.mul_f64(1.5)));
    }

    #[test]
    fn deadlines_leave_the_lease_time_to_be_renewed_through_another_replica() {
        let shipped = Deadlines::for_ttl(Duration::from_secs(10));
        assert_eq!(shipped.keepalive_every, Duration::from_secs(2));
        assert_eq!(shipped.call, Duration::from_millis(2500));
        assert_eq!(shipped.ping_interval + shipped.ping_timeout, Duration::from_millis(2500));
        assert_eq!(shipped.connect, Duration::from_millis(2500));
        assert_eq!(Deadlines::for_ttl(Duration::from_secs(600)).connect, CONNECT_TIMEOUT);
        assert_eq!(Deadlines::for_ttl(Duration::from_secs(600)).max_backoff, MAX_BACKOFF);
        let ttls = crate::state::MIN_LEASE_TTL_SECS..=crate::state::MAX_LEASE_TTL_SECS;
        for secs in ttls.clone().take(60).chain([ttls.end() / 2, *ttls.end()]) {
            let ttl = Duration::from_secs(u64::from(secs));
            let d = Deadlines::for_ttl(ttl);
            assert!(d.call < ttl / 3, "a keep-alive's deadline is under a third of {ttl:?}");
            assert!(d.ping_interval + d.ping_timeout <= ttl / 4, "{d:?}");
            assert!(d.keepalive_every * 4 < ttl, "several keep-alives per TTL: {d:?}");
            // A replica that goes silent right after a renewal: noticed by the pings (or,
            // should it still answer them, by the next keep-alive), left for the next
            // replica at once, where the lease is renewed first — within the TTL even
            // when every step takes its whole deadline.
            let noticed = (d.ping_interval + d.ping_timeout).min(d.keepalive_every + d.call);
            let renewed = noticed + backoff(0, d.max_backoff) + d.connect + d.call;
            assert!(renewed < ttl, "renewed after {renewed:?} of {ttl:?}");
            // A replica that answers keep-alives with errors at once (it cannot reach the
            // leader) is left at the second one, and the lease renewed through the next.
            assert!(d.keepalive_every < d.unrenewed && d.unrenewed < d.keepalive_every * 2);
            let renewed = d.keepalive_every * 2 + backoff(0, d.max_backoff) + d.connect + d.call;
            assert!(renewed < ttl, "renewed after {renewed:?} of {ttl:?}");
        }
    }

    #[test]
    fn a_refused_agent_asks_again_slowly() {
        let max = Deadlines::for_ttl(Duration::from_secs(10)).max_backoff;
        assert_eq!(refused_backoff(1, max), max, "the first refusal waits the longest backoff");
        assert_eq!(refused_backoff(2, max), max * 2);
        assert!((1..100).all(|n| refused_backoff(n, max) <= REFUSED_BACKOFF));
        assert_eq!(refused_backoff(50, max), REFUSED_BACKOFF);
        // Never below the session's own backoff, however long the TTL.
        let long = Deadlines::for_ttl(Duration::from_secs(3600)).max_backoff;
        assert!(refused_backoff(1, long) >= long);
    }
}
