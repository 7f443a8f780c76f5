//! The leader's lessor: member leases kept alive without writing to the log.
//!
//! As in etcd, granting, revoking and expiring a lease are log commands, and keep-alives
//! are not: any replica forwards an agent's keep-alive to the leader (a raft "leader
//! call"), which moves the lease's deadline in memory. When a deadline passes, the leader
//! proposes [`Command::ExpireLease`]. A newly elected leader knows no deadlines, so it
//! gives every live lease a full TTL from its election: a leader change never expires a
//! member that keeps its lease alive. Likewise a leader whose lessor did not run for a
//! while (its process stopped or starved) heard no keep-alive meanwhile, though members
//! kept sending them through other replicas: it gives every live lease a full TTL from
//! the end of the stall rather than expire them all at once.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use openraft::ServerState;
use serde::{Deserialize, Serialize};

use super::FederationReplica;
use crate::state::Command;

/// How often the leader looks for expired leases: an expired member is marked not ready
/// within its TTL plus this.
pub const EXPIRY_CHECK: Duration = Duration::from_millis(200);

/// A gap this long between two passes of the lessor is a stall (its process was stopped
/// or starved), not a late timer: see [`Lessor::check`].
const STALL: Duration = Duration::from_secs(1);

/// A request for the leader's lessor.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum LeaderRequest {
    /// Keep `cluster`'s lease `lease_id` alive.
    KeepAlive {
        /// The member.
        cluster: String,
        /// Its lease.
        lease_id: u64,
    },
    /// How long ago each lease was last kept alive.
    LeaseAges,
}

/// The lessor's answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum LeaderResponse {
    /// The lease lives for `ttl_secs` more seconds.
    KeptAlive {
        /// Its TTL.
        ttl_secs: u32,
    },
    /// The lease is not live (expired, revoked, replaced or unknown): grant a new one.
    NotLive(String),
    /// Per cluster: lease id and milliseconds since its last keep-alive (`None`: none
    /// since this leader was elected).
    Ages(BTreeMap<String, (u64, Option<u64>)>),
    /// The request did not decode.
    Invalid(String),
}

impl LeaderRequest {
    /// Encodes the request.
    #[must_use]
    pub fn encode(&self) -> Vec<u8> {
        postcard::to_stdvec(self).unwrap_or_default()
    }
}

impl LeaderResponse {
    /// Decodes a response.
    ///
    /// # Errors
    /// The bytes are not a response of this build.
    pub fn decode(bytes: &[u8]) -> Result<Self, ResponseDecodeError> {
        postcard::from_bytes(bytes).map_err(ResponseDecodeError)
    }
}

/// A leader's answer that is not a [`LeaderResponse`] of this build.
#[derive(Debug, thiserror::Error)]
#[error("leader response does not decode: {0}")]
pub struct ResponseDecodeError(postcard::Error);

/// Why [`call_leader`] has no answer.
#[derive(Debug, thiserror::Error)]
pub enum LeaderCallError {
    /// No leader could be reached.
    #[error(transparent)]
    Unreachable(#[from] federator_raft::ReplicaError),
    /// The leader's answer does not decode.
    #[error(transparent)]
    Decode(#[from] ResponseDecodeError),
}

/// One live lease's deadline on the leader.
#[derive(Clone, Copy, Debug)]
struct Deadline {
    lease_id: u64,
    expires: Instant,
    last_keepalive: Option<Instant>,
    expiring: bool,
}

/// The lessor of one replica; active only while it leads.
pub struct Lessor {
    replica: FederationReplica,
    metrics: super::FederationMetrics,
    deadlines: Mutex<HashMap<String, Deadline>>,
    led_term: Mutex<Option<u64>>,
    /// When the last pass ran.
    last_pass: Mutex<Option<Instant>>,
    /// The expiries being proposed (each bounded by its proposal timeout): reaped as
    /// they end, and aborted and joined when [`Lessor::run`] stops.
    expiring: Mutex<tokio::task::JoinSet<()>>,
}

impl Lessor {
    /// A lessor for `replica`.
    #[must_use]
    pub fn new(replica: FederationReplica, metrics: super::FederationMetrics) -> Arc<Self> {
        Arc::new(Self {
            replica,
            metrics,
            deadlines: Mutex::default(),
            led_term: Mutex::default(),
            last_pass: Mutex::default(),
            expiring: Mutex::default(),
        })
    }

    fn deadlines(&self) -> std::sync::MutexGuard<'_, HashMap<String, Deadline>> {
        self.deadlines.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The term this replica leads in, if it leads.
    fn leading_term(&self) -> Option<u64> {
        let metrics = self.replica.metrics();
        let m = metrics.borrow();
        (m.state == ServerState::Leader && m.current_leader == Some(self.replica.id()))
            .then_some(m.current_term)
    }

    /// Answers a request on the leader.
    fn handle_request(&self, request: &[u8]) -> LeaderResponse {
        let request: LeaderRequest = match postcard::from_bytes(request) {
            Ok(request) => request,
            Err(error) => return LeaderResponse::Invalid(error.to_string()),
        };
        match request {
            LeaderRequest::KeepAlive { cluster, lease_id } => self.keep_alive(&cluster, lease_id),
            LeaderRequest::LeaseAges => {
                let now = Instant::now();
                LeaderResponse::Ages(
                    self.deadlines()
                        .iter()
                        .map(|(cluster, d)| {
                            let age = d.last_keepalive.map(|t| {
                                u64::try_from(now.duration_since(t).as_millis()).unwrap_or(u64::MAX)
                            });
                            (cluster.clone(), (d.lease_id, age))
                        })
                        .collect(),
                )
            }
        }
    }

    fn keep_alive(&self, cluster: &str, lease_id: u64) -> LeaderResponse {
        let lease = self.replica.state().read(|s| s.leases.get(cluster).cloned());
        let Some(lease) = lease.filter(|l| l.id == lease_id) else {
            return LeaderResponse::NotLive(format!(
                "lease {lease_id} of cluster {cluster} is not the member's lease; grant a new one"
            ));
        };
        if !lease.is_live() {
            return LeaderResponse::NotLive(format!(
                "lease {lease_id} of cluster {cluster} has expired; grant a new one"
            ));
        }
        let now = Instant::now();
        let mut deadlines = self.deadlines();
        let deadline = deadlines.entry(cluster.to_string()).or_insert(Deadline {
            lease_id,
            expires: now,
            last_keepalive: None,
            expiring: false,
        });
        if deadline.expiring {
            return LeaderResponse::NotLive(format!(
                "lease {lease_id} of cluster {cluster} is expiring; grant a new one"
            ));
        }
        *deadline = Deadline {
            lease_id,
            expires: now + Duration::from_secs(u64::from(lease.ttl_secs)),
            last_keepalive: Some(now),
            expiring: false,
        };
        self.metrics.keepalives.inc();
        LeaderResponse::KeptAlive { ttl_secs: lease.ttl_secs }
    }

    /// Checks deadlines every [`EXPIRY_CHECK`] until `shutdown` resolves.
    pub async fn run(self: Arc<Self>, shutdown: impl Future<Output = ()> + Send) {
        tokio::pin!(shutdown);
        let mut tick = tokio::time::interval(EXPIRY_CHECK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = &mut shutdown => break,
                _ = tick.tick() => self.check(),
            }
        }
        // No expiry outlives the lessor: a new leader gives every live lease a full TTL.
        let mut expiring = std::mem::take(&mut *self.expiring());
        expiring.shutdown().await;
    }

    fn expiring(&self) -> std::sync::MutexGuard<'_, tokio::task::JoinSet<()>> {
        self.expiring.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// One pass: follow leadership, learn new leases, expire the overdue ones. After a
    /// stall of the lessor (no pass for [`STALL`]) every live lease gets a full TTL:
    /// the keep-alives sent meanwhile could not be heard, and those waiting in the
    /// replica's sockets are answered only after this pass.
    fn check(self: &Arc<Self>) {
        let now = Instant::now();
        let stalled = {
            let mut last = self.last_pass.lock().unwrap_or_else(PoisonError::into_inner);
            last.replace(now).map(|t| now.duration_since(t)).filter(|gap| *gap >= STALL)
        };
        let term = self.leading_term();
        {
            let mut led = self.led_term.lock().unwrap_or_else(PoisonError::into_inner);
            if term != *led {
                // Lost or (re)gained leadership: forget every deadline; a new leader
                // extends every live lease by a full TTL from now.
                self.deadlines().clear();
                if let Some(term) = term {
                    tracing::info!(term, "leading: every live lease gets a full TTL");
                }
                *led = term;
            }
        }
        if term.is_none() {
            return;
        }
        let live: Vec<(String, u64, u32)> = self.replica.state().read(|s| {
            s.leases
                .iter()
                .filter(|(_, l)| l.is_live())
                .map(|(c, l)| (c.clone(), l.id, l.ttl_secs))
                .collect()
        });
        if let Some(gap) = stalled {
            tracing::warn!(
                stalled_ms = u64::try_from(gap.as_millis()).unwrap_or(u64::MAX),
                "the lessor did not run for a while: every live lease gets a full TTL"
            );
        }
        let overdue = overdue(&mut self.deadlines(), live, now, stalled.is_some());
        let mut expiring = self.expiring();
        while expiring.try_join_next().is_some() {}
        for (cluster, lease_id) in overdue {
            let lessor = Arc::clone(self);
            expiring.spawn(async move { lessor.expire(cluster, lease_id).await });
        }
    }

    async fn expire(&self, cluster: String, lease_id: u64) {
        if self.leading_term().is_none() {
            return;
        }
        tracing::warn!(cluster = %cluster, lease_id, "lease expired: marking the member's endpoints not ready");
        let command = Command::ExpireLease {
            cluster: cluster.clone(),
            lease_id,
            now: crate::clock::unix_now(),
        };
        // Proposed on this replica only, never forwarded: a deposed leader's expiry must
        // not reach the new leader, which has just given every lease a full TTL.
        let proposed = self.replica.propose_here(command.encode(), Duration::from_secs(10)).await;
        if proposed.is_ok() {
            self.metrics.lease_expirations.inc();
        } else {
            tracing::warn!(cluster = %cluster, "lease expiry not committed; will retry while leading");
            if let Some(d) = self.deadlines().get_mut(&cluster) {
                d.expiring = false;
            }
        }
    }
}

/// One pass over the leader's `deadlines` at `now`, given the `live` leases (cluster,
/// lease id, TTL in seconds): forgets the leases no longer live, gives the new ones a full
/// TTL (and, after a stall, every one at least a full TTL from `now`), and returns the
/// overdue ones, marked expiring so that each is proposed once.
fn overdue(
    deadlines: &mut HashMap<String, Deadline>,
    live: Vec<(String, u64, u32)>,
    now: Instant,
    stalled: bool,
) -> Vec<(String, u64)> {
    deadlines.retain(|cluster, d| live.iter().any(|(c, id, _)| c == cluster && *id == d.lease_id));
    let mut overdue = Vec::new();
    for (cluster, lease_id, ttl_secs) in live {
        let full_ttl = now + Duration::from_secs(u64::from(ttl_secs));
        let deadline = deadlines.entry(cluster.clone()).or_insert(Deadline {
            lease_id,
            expires: full_ttl,
            last_keepalive: None,
            expiring: false,
        });
        if stalled {
            deadline.expires = deadline.expires.max(full_ttl);
        }
        if deadline.expires <= now && !deadline.expiring {
            deadline.expiring = true;
            overdue.push((cluster, lease_id));
        }
    }
    overdue
}

/// The lessor as the raft crate's leader-call handler.
pub struct LessorHandler(pub Arc<Lessor>);

impl federator_raft::LeaderHandler for LessorHandler {
    fn handle(&self, request: Vec<u8>) -> Pin<Box<dyn Future<Output = Vec<u8>> + Send + 'static>> {
        let response = self.0.handle_request(&request);
        Box::pin(async move { postcard::to_stdvec(&response).unwrap_or_default() })
    }
}

/// Sends `request` to the leader's lessor, from any replica.
///
/// # Errors
/// No leader could be reached, or its answer does not decode.
pub async fn call_leader(
    replica: &FederationReplica,
    request: &LeaderRequest,
) -> Result<LeaderResponse, LeaderCallError> {
    let bytes = replica.call_leader(request.encode()).await?;
    Ok(LeaderResponse::decode(&bytes)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn live(leases: &[(&str, u64)]) -> Vec<(String, u64, u32)> {
        leases.iter().map(|(c, id)| ((*c).to_string(), *id, 4)).collect()
    }

    #[test]
    fn an_overdue_lease_expires_once_and_a_replaced_one_starts_afresh() {
        let start = Instant::now();
        let mut deadlines = HashMap::new();
        let leases = live(&[("a", 1), ("b", 2)]);
        assert!(overdue(&mut deadlines, leases.clone(), start, false).is_empty());
        // `b` keeps its lease alive, `a` does not.
        let later = start + Duration::from_secs(3);
        if let Some(b) = deadlines.get_mut("b") {
            b.expires = later + Duration::from_secs(4);
        }
        let after_ttl = start + Duration::from_secs(4);
        assert_eq!(overdue(&mut deadlines, leases.clone(), after_ttl, false), [("a".into(), 1)]);
        assert!(overdue(&mut deadlines, leases, after_ttl, false).is_empty(), "proposed once");
        // `a` took a new lease: a full TTL from now; its old deadline is forgotten.
        let renewed = live(&[("a", 3), ("b", 2)]);
        assert!(overdue(&mut deadlines, renewed, after_ttl, false).is_empty());
        assert_eq!(deadlines["a"].lease_id, 3);
        assert_eq!(deadlines["a"].expires, after_ttl + Duration::from_secs(4));
    }

    #[test]
    fn after_a_stall_of_the_lessor_every_live_lease_gets_a_full_ttl() {
        let start = Instant::now();
        let mut deadlines = HashMap::new();
        let leases = live(&[("a", 1), ("b", 2)]);
        assert!(overdue(&mut deadlines, leases.clone(), start, false).is_empty());
        // The leader was SIGSTOPped for 1.5 TTL: no keep-alive could reach its lessor.
        let resumed = start + Duration::from_secs(6);
        assert!(overdue(&mut deadlines, leases.clone(), resumed, true).is_empty());
        assert!(deadlines.values().all(|d| d.expires == resumed + Duration::from_secs(4)));
        // A member that keeps its lease alive is never overdue; one that does not still
        // expires, a TTL after the stall.
        if let Some(b) = deadlines.get_mut("b") {
            b.expires = resumed + Duration::from_secs(7);
        }
        let expired = overdue(&mut deadlines, leases, resumed + Duration::from_secs(5), false);
        assert_eq!(expired, [("a".into(), 1)]);
    }
}
