//! The member lease, kept alive on a task of its own.
//!
//! Nothing else the agent does runs on that task: sinks apply on their own tasks, state
//! files are written on blocking threads, sources are read by their own tasks. So a hung
//! local etcd, a slow disk or a stuck source cannot hold up a keep-alive: the lease's
//! timing ([`Deadlines`]: a keep-alive every `T/5`, each given `T/4`) holds whatever they
//! do. The task ends only when the replica it talks to must be left (a missed deadline,
//! keep-alives failing for [`Deadlines::unrenewed`], a refusal); the session then moves to
//! the next replica, where the lease is renewed first.

use std::future::Future;

use federator_proto::federation as pb;
use federator_proto::federation::federation_client::FederationClient;
use tokio::sync::watch;
use tokio::time::{Instant, MissedTickBehavior};
use tonic::Code;
use tonic::transport::Channel;

use super::deadlines::{Deadlines, ReplicaFault};
use super::metrics::AgentMetrics;
use super::status::LeaseStatus;
use crate::clock::unix_now_ms;

/// The two lease calls of the federation API, so that the keeper can be tested against
/// a fake replica on tokio's paused clock.
pub(super) trait LeaseApi: Send + 'static {
    /// Renews lease `lease_id` (`KeepAlive`).
    fn renew(&mut self, lease_id: u64) -> impl Future<Output = Result<(), tonic::Status>> + Send;
    /// Grants a new lease (`GrantLease`).
    fn grant(
        &mut self,
        request: pb::GrantLeaseRequest,
    ) -> impl Future<Output = Result<pb::GrantLeaseResponse, tonic::Status>> + Send;
}

impl LeaseApi for FederationClient<Channel> {
    fn renew(&mut self, lease_id: u64) -> impl Future<Output = Result<(), tonic::Status>> + Send {
        let mut client = self.clone();
        async move { client.keep_alive(pb::KeepAliveRequest { lease_id }).await.map(|_| ()) }
    }

    fn grant(
        &mut self,
        request: pb::GrantLeaseRequest,
    ) -> impl Future<Output = Result<pb::GrantLeaseResponse, tonic::Status>> + Send {
        let mut client = self.clone();
        async move { client.grant_lease(request).await.map(tonic::Response::into_inner) }
    }
}

/// A held member lease.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct HeldLease {
    /// Its id.
    pub id: u64,
    /// Its TTL, as granted.
    pub ttl_secs: u32,
    /// When it was last granted or renewed.
    pub renewed: Instant,
}

/// What a keep-alive came to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Renewal {
    /// The lease lives a TTL more.
    Renewed,
    /// The lessor says the lease is not live (expired, revoked, replaced): none is held
    /// any more, a new one must be granted.
    Lost,
    /// The replica answered with an error: the lease is still held, and may well be
    /// live; retried at the next tick.
    Failed,
}

/// Why the keeper stopped: the session must end.
#[derive(Debug, thiserror::Error)]
pub(super) enum LeaseError {
    /// The replica missed a deadline, or cannot renew the lease.
    #[error(transparent)]
    Fault(#[from] ReplicaFault),
    /// The replica answered a call with an error that ends the session (a refusal: this
    /// cluster is no member any more, its SVID does not verify; or a failed grant).
    #[error("{call}: {:?}: {}", status.code(), status.message())]
    Answered {
        /// The call.
        call: &'static str,
        /// The answer.
        #[source]
        status: tonic::Status,
    },
}

impl LeaseError {
    /// The replica's answer, when it answered with an error.
    pub(super) fn status(&self) -> Option<&tonic::Status> {
        match self {
            Self::Answered { status, .. } => Some(status),
            Self::Fault(_) => None,
        }
    }
}

/// The lease as the keeper last knew it: mirrored into the agent's status.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(super) struct LeaseSnapshot {
    /// The lease held, if any.
    pub lease: Option<HeldLease>,
    /// Its status.
    pub status: Option<LeaseStatus>,
}

/// Keeps the member lease alive through one replica.
pub(super) struct LeaseKeeper<A> {
    /// The replica.
    pub api: A,
    /// The lease held, if any.
    pub lease: Option<HeldLease>,
    /// Its status.
    pub status: Option<LeaseStatus>,
    /// The session's deadlines.
    pub deadlines: Deadlines,
    /// What to ask for when a lease must be granted.
    pub grant: pb::GrantLeaseRequest,
    /// The agent's metrics (keep-alive failures).
    pub metrics: AgentMetrics,
}

impl<A: LeaseApi> LeaseKeeper<A> {
    /// The lease as held now.
    pub fn snapshot(&self) -> LeaseSnapshot {
        LeaseSnapshot { lease: self.lease, status: self.status.clone() }
    }

    /// Grants a new lease, within [`Deadlines::call`].
    ///
    /// # Errors
    /// No answer in time, or an error.
    pub async fn grant(&mut self) -> Result<(), LeaseError> {
        let deadline = self.deadlines.call;
        let granted = tokio::time::timeout(deadline, self.api.grant(self.grant.clone()))
            .await
            .map_err(|_| ReplicaFault::MissedDeadline { call: "grant lease", deadline })?
            .map_err(|status| LeaseError::Answered { call: "grant lease", status })?;
        tracing::info!(lease_id = granted.lease_id, ttl = granted.ttl_seconds, "lease granted");
        self.lease = Some(HeldLease {
            id: granted.lease_id,
            ttl_secs: granted.ttl_seconds,
            renewed: Instant::now(),
        });
        self.status = Some(LeaseStatus {
            id: granted.lease_id,
            ttl_seconds: granted.ttl_seconds,
            last_keepalive_ms: Some(unix_now_ms()),
            failed_keepalives: 0,
        });
        Ok(())
    }

    /// One keep-alive of the held lease, within [`Deadlines::call`].
    ///
    /// Only the lessor's answer that the lease is not live loses it. A keep-alive that
    /// got no answer in time (a slow or stopped replica), or an error (the replica cannot
    /// reach the leader: an election, a partition), says nothing about the lease: it is
    /// kept, to be renewed at the next tick or through the next replica.
    ///
    /// # Errors
    /// The replica missed the deadline, keep-alives through it have been failing for
    /// [`Deadlines::unrenewed`], or it refused the caller (permission denied,
    /// unauthenticated: this cluster is no member any more).
    pub async fn keep_alive(&mut self) -> Result<Renewal, LeaseError> {
        let Some(lease) = self.lease else { return Ok(Renewal::Lost) };
        let deadline = self.deadlines.call;
        let answer = tokio::time::timeout(deadline, self.api.renew(lease.id)).await;
        let error = match answer {
            Ok(Ok(())) => {
                self.lease = Some(HeldLease { renewed: Instant::now(), ..lease });
                if let Some(status) = &mut self.status {
                    status.last_keepalive_ms = Some(unix_now_ms());
                    status.failed_keepalives = 0;
                }
                return Ok(Renewal::Renewed);
            }
            Ok(Err(status)) if status.code() == Code::NotFound => {
                tracing::warn!(
                    lease_id = lease.id,
                    reason = status.message(),
                    "lease lost; granting a new one"
                );
                self.lease = None;
                return Ok(Renewal::Lost);
            }
            Ok(Err(status))
                if matches!(status.code(), Code::PermissionDenied | Code::Unauthenticated) =>
            {
                self.failed();
                return Err(LeaseError::Answered { call: "keep-alive", status });
            }
            Ok(Err(status)) => format!("{:?}: {}", status.code(), status.message()),
            Err(_) => {
                self.failed();
                let fault = ReplicaFault::MissedDeadline { call: "keep-alive", deadline };
                tracing::warn!(lease_id = lease.id, %fault, "keep-alive missed its deadline");
                return Err(fault.into());
            }
        };
        self.failed();
        let unrenewed = lease.renewed.elapsed();
        if unrenewed >= self.deadlines.unrenewed {
            return Err(ReplicaFault::NotRenewing { unrenewed, last_error: error }.into());
        }
        tracing::debug!(%error, "keep-alive failed; retried at the next tick");
        Ok(Renewal::Failed)
    }

    /// Counts a keep-alive that renewed nothing.
    fn failed(&mut self) {
        if let Some(status) = &mut self.status {
            status.failed_keepalives += 1;
        }
        self.metrics.keepalive_failures.inc();
    }

    /// Keeps the lease alive, a keep-alive every [`Deadlines::keepalive_every`] (the
    /// first one that long from now), granting a new one when the lessor says it is lost;
    /// every change goes to `updates`. Returns only when the session must end.
    pub async fn run(mut self, updates: watch::Sender<LeaseSnapshot>) -> LeaseError {
        let every = self.deadlines.keepalive_every;
        let mut tick = tokio::time::interval_at(Instant::now() + every, every);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let outcome = match self.keep_alive().await {
                Ok(Renewal::Lost) => self.grant().await,
                Ok(Renewal::Renewed | Renewal::Failed) => Ok(()),
                Err(error) => Err(error),
            };
            updates.send_replace(self.snapshot());
            if let Err(error) = outcome {
                return error;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use super::*;

    /// How the fake replica answers keep-alives.
    #[derive(Clone, Copy, Debug)]
    enum Answer {
        Ok,
        Unavailable,
        Hang,
        NotFound,
        Denied,
    }

    /// A fake replica: records when each keep-alive came (on the paused clock).
    #[derive(Clone)]
    struct Fake {
        answer: Arc<Mutex<Answer>>,
        renewals: Arc<Mutex<Vec<Instant>>>,
        grants: Arc<Mutex<u64>>,
    }

    impl Fake {
        fn new(answer: Answer) -> Self {
            Self {
                answer: Arc::new(Mutex::new(answer)),
                renewals: Arc::default(),
                grants: Arc::default(),
            }
        }

        fn set(&self, answer: Answer) {
            *self.answer.lock().expect("lock") = answer;
        }

        fn renewals(&self) -> Vec<Instant> {
            self.renewals.lock().expect("lock").clone()
        }
    }

    impl LeaseApi for Fake {
        fn renew(
            &mut self,
            _lease_id: u64,
        ) -> impl Future<Output = Result<(), tonic::Status>> + Send {
            self.renewals.lock().expect("lock").push(Instant::now());
            let answer = *self.answer.lock().expect("lock");
            async move {
                match answer {
                    Answer::Ok => Ok(()),
                    Answer::Unavailable => Err(tonic::Status::unavailable("no leader")),
                    Answer::NotFound => Err(tonic::Status::not_found("expired")),
                    Answer::Denied => Err(tonic::Status::permission_denied("not a member")),
                    Answer::Hang => std::future::pending().await,
                }
            }
        }

        fn grant(
            &mut self,
            request: pb::GrantLeaseRequest,
        ) -> impl Future<Output = Result<pb::GrantLeaseResponse, tonic::Status>> + Send {
            let mut grants = self.grants.lock().expect("lock");
            *grants += 1;
            let lease_id = 100 + *grants;
            async move { Ok(pb::GrantLeaseResponse { lease_id, ttl_seconds: request.ttl_seconds }) }
        }
    }

    const TTL: Duration = Duration::from_secs(4);

    fn keeper(fake: &Fake) -> LeaseKeeper<Fake> {
        LeaseKeeper {
            api: fake.clone(),
            lease: Some(HeldLease { id: 7, ttl_secs: 4, renewed: Instant::now() }),
            status: Some(LeaseStatus { id: 7, ttl_seconds: 4, ..LeaseStatus::default() }),
            deadlines: Deadlines::for_ttl(TTL),
            grant: pb::GrantLeaseRequest { ttl_seconds: 4, ..Default::default() },
            metrics: AgentMetrics::default(),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn keep_alives_go_out_every_fifth_of_the_ttl_whatever_else_blocks() {
        let fake = Fake::new(Answer::Ok);
        let (tx, rx) = watch::channel(LeaseSnapshot::default());
        let started = Instant::now();
        let task = tokio::spawn(keeper(&fake).run(tx));
        // Something else on the runtime: a sink awaiting a hung etcd for far longer than
        // the TTL (the keeper shares nothing with it).
        let hung_sink = tokio::spawn(async {
            tokio::time::sleep(TTL * 10).await;
        });
        tokio::time::sleep(TTL * 3 + Duration::from_millis(1)).await;
        let renewals = fake.renewals();
        assert_eq!(renewals.len(), 15, "{renewals:?}");
        for (i, at) in renewals.iter().enumerate() {
            let expected = TTL / 5 * u32::try_from(i + 1).expect("small");
            assert_eq!(at.duration_since(started), expected, "keep-alive {i}");
        }
        let snapshot = rx.borrow().clone();
        assert_eq!(snapshot.lease.map(|l| l.id), Some(7), "the same lease throughout");
        assert_eq!(snapshot.status.map(|s| s.failed_keepalives), Some(0));
        assert!(!task.is_finished());
        task.abort();
        hung_sink.abort();
    }

    #[tokio::test(start_paused = true)]
    async fn a_hung_replica_is_left_within_a_keep_alive_and_a_call() {
        let fake = Fake::new(Answer::Hang);
        let (tx, _rx) = watch::channel(LeaseSnapshot::default());
        let started = Instant::now();
        let error = keeper(&fake).run(tx).await;
        let d = Deadlines::for_ttl(TTL);
        assert_eq!(started.elapsed(), d.keepalive_every + d.call, "{error}");
        assert!(matches!(error, LeaseError::Fault(ReplicaFault::MissedDeadline { .. })), "{error}");
        assert!(started.elapsed() < TTL);
    }

    #[tokio::test(start_paused = true)]
    async fn keep_alives_answered_with_errors_leave_the_replica_at_the_second() {
        let fake = Fake::new(Answer::Unavailable);
        let (tx, rx) = watch::channel(LeaseSnapshot::default());
        let started = Instant::now();
        let error = keeper(&fake).run(tx).await;
        let d = Deadlines::for_ttl(TTL);
        assert_eq!(started.elapsed(), d.keepalive_every * 2, "{error}");
        assert!(matches!(error, LeaseError::Fault(ReplicaFault::NotRenewing { .. })), "{error}");
        assert_eq!(rx.borrow().status.as_ref().map(|s| s.failed_keepalives), Some(2));
        assert_eq!(rx.borrow().lease.map(|l| l.id), Some(7), "the lease is still held");
    }

    #[tokio::test(start_paused = true)]
    async fn a_lost_lease_is_granted_anew_and_a_refusal_ends_the_session() {
        let fake = Fake::new(Answer::NotFound);
        let (tx, mut rx) = watch::channel(LeaseSnapshot::default());
        let task = tokio::spawn(keeper(&fake).run(tx));
        rx.changed().await.expect("an update");
        assert_eq!(rx.borrow_and_update().lease.map(|l| l.id), Some(101));
        fake.set(Answer::Denied);
        let error = tokio::time::timeout(TTL, task).await.expect("ends").expect("joins");
        assert!(
            matches!(&error, LeaseError::Answered { status, .. } if status.code() == Code::PermissionDenied),
            "{error}"
        );
    }
}
