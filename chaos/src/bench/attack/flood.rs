//! The two floods of `bench attack`, on a runtime of their own: the join flood (forged
//! joins from [`JOIN_FLOOD_SOURCE`], the next as soon as the previous is answered) and the
//! connection flood (idle sockets from [`SOCKET_FLOOD_SOURCE`] that never send a TLS
//! ClientHello, opened again when the server closes them), with what each counted.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use federator::identity::IssuedCertificate;
use federator_proto::federation as pb;
use federator_proto::federation::federation_client::FederationClient;
use tokio::io::AsyncReadExt as _;
use tokio::time::Instant;
use tonic::transport::Channel;

use super::{
    AttackConfig, FLOOD_THREAD, JOIN_FLOOD_SOURCE, JoinFloodFigures, SOCKET_FLOOD_SOURCE,
    SocketFloodFigures,
};
use crate::cluster::Federation;
use crate::member::{MemberCluster, join_request};

/// Deadline of one call or connection attempt of the floods.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);
/// Joins one flood task sends at most (it stops at the phase end long before).
const MAX_JOINS_PER_TASK: u64 = 10_000_000;
/// Times one socket slot is opened at most.
const MAX_OPENS_PER_SOCKET: u64 = 1_000_000;
/// Pause of a join flood task whose connection failed, before it connects again.
const RECONNECT_PAUSE: Duration = Duration::from_millis(100);
/// Time between two counts of the sockets held open.
const SAMPLE_EVERY: Duration = Duration::from_millis(100);
/// Time the flood tasks get to stop after the phase end before they are aborted.
const STOP_GRACE: Duration = Duration::from_secs(10);

/// What the floods need, made before they start.
#[derive(Clone)]
pub(super) struct FloodPlan {
    /// Every replica's API address.
    api_addrs: Vec<String>,
    /// The federation CA, which the attacker trusts for the server (as anyone may).
    ca_pem: String,
    /// The attacker's SVID, from its own CA.
    svid: IssuedCertificate,
    /// A join with a forged token and a valid bundle of the attacker's CA.
    request: pb::JoinRequest,
    join_tasks: usize,
    sockets_per_port: usize,
    reopen_pause: Duration,
}

impl FloodPlan {
    pub(super) fn new(fed: &Federation, config: &AttackConfig) -> anyhow::Result<Self> {
        let ca_pem = fed.ca_pem();
        let api_addrs: Vec<String> =
            fed.ids().into_iter().map(|id| fed.replica(id).api_addr.clone()).collect();
        // The attacker: its own CA and SVID, a bundle of that CA, a well-formed token it
        // made up naming a cluster of its choice.
        let mut attacker = MemberCluster::new("victim-name", "evil.example")?;
        let bundle = attacker.next_bundle()?;
        let forged = federator::token::JoinToken::generate(
            "victim-name",
            "evil.example",
            api_addrs.clone(),
            ca_pem.clone(),
            i64::MAX / 4,
        )
        .encode();
        Ok(Self {
            request: join_request(&forged, "evil.example", bundle),
            svid: attacker.agent_svid().clone(),
            api_addrs,
            ca_pem,
            join_tasks: config.join_tasks,
            sockets_per_port: config.sockets_per_port,
            reopen_pause: config.reopen_pause,
        })
    }
}

/// Counts the join flood keeps as it goes.
#[derive(Default)]
struct JoinTally {
    attempts: AtomicU64,
    denied: AtomicU64,
    limited: AtomicU64,
    other: AtomicU64,
    accepted: AtomicU64,
    cut: AtomicU64,
    connect_failures: AtomicU64,
    first_other: Mutex<Option<String>>,
}

impl JoinTally {
    fn note(&self, what: String) {
        if let Ok(mut first) = self.first_other.lock() {
            first.get_or_insert(what);
        }
    }
}

/// Counts the connection flood keeps as it goes.
#[derive(Default)]
struct SocketTally {
    opened: AtomicU64,
    open_now: AtomicU64,
    closed_by_server: AtomicU64,
    failed: AtomicU64,
    first_error: Mutex<Option<String>>,
}

impl SocketTally {
    fn note(&self, what: String) {
        if let Ok(mut first) = self.first_error.lock() {
            first.get_or_insert(what);
        }
    }
}

/// Both floods running on a runtime of their own.
pub(super) struct FloodRun {
    runtime: Option<tokio::runtime::Runtime>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    sampler: Option<tokio::task::JoinHandle<Vec<u64>>>,
    joins: Arc<JoinTally>,
    sockets: Arc<SocketTally>,
    asked: usize,
    started: Instant,
    until: Instant,
}

impl FloodRun {
    /// Starts both floods until `until`; the held sockets are counted from
    /// `measure_from`.
    pub(super) fn start(
        plan: &FloodPlan,
        measure_from: Instant,
        until: Instant,
    ) -> anyhow::Result<Self> {
        let started = Instant::now();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name(FLOOD_THREAD)
            .enable_all()
            .build()
            .context("starting the flood runtime")?;
        let joins = Arc::new(JoinTally::default());
        let sockets = Arc::new(SocketTally::default());
        let mut tasks = Vec::new();
        for t in 0..plan.join_tasks {
            let addr = plan.api_addrs[t % plan.api_addrs.len()].clone();
            let (ca, svid, request) =
                (plan.ca_pem.clone(), plan.svid.clone(), plan.request.clone());
            let tally = Arc::clone(&joins);
            tasks.push(runtime.spawn(join_flood(addr, ca, svid, request, until, tally)));
        }
        let mut asked = 0;
        for addr in &plan.api_addrs {
            let addr: SocketAddr = addr.parse().with_context(|| format!("API address {addr:?}"))?;
            for _ in 0..plan.sockets_per_port {
                let tally = Arc::clone(&sockets);
                tasks.push(runtime.spawn(hold_socket(addr, plan.reopen_pause, until, tally)));
                asked += 1;
            }
        }
        let sampler = runtime.spawn(count_held(Arc::clone(&sockets), measure_from, until));
        Ok(Self {
            runtime: Some(runtime),
            tasks,
            sampler: Some(sampler),
            joins,
            sockets,
            asked,
            started,
            until,
        })
    }

    /// Waits for every flood task to stop (they stop at the phase end by themselves;
    /// those that do not within [`STOP_GRACE`] are aborted) and returns the figures.
    pub(super) async fn finish(mut self) -> (JoinFloodFigures, SocketFloodFigures) {
        let grace = self.until + STOP_GRACE;
        for task in &mut self.tasks {
            if tokio::time::timeout_at(grace, &mut *task).await.is_err() {
                task.abort();
            }
        }
        let stopped = Instant::now();
        let held = match self.sampler.take() {
            Some(mut sampler) => match tokio::time::timeout_at(grace, &mut sampler).await {
                Ok(Ok(held)) => held,
                _ => {
                    sampler.abort();
                    Vec::new()
                }
            },
            None => Vec::new(),
        };
        let ran = stopped.saturating_duration_since(self.started);
        let j = &self.joins;
        let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let joins = JoinFloodFigures {
            attempts: load(&j.attempts),
            denied: load(&j.denied),
            limited: load(&j.limited),
            other: load(&j.other),
            accepted: load(&j.accepted),
            cut: load(&j.cut),
            connect_failures: load(&j.connect_failures),
            first_other: j.first_other.lock().ok().and_then(|f| f.clone()),
            ran,
        };
        let s = &self.sockets;
        let sockets = SocketFloodFigures {
            asked: self.asked,
            opened: load(&s.opened),
            closed_by_server: load(&s.closed_by_server),
            failed: load(&s.failed),
            first_error: s.first_error.lock().ok().and_then(|f| f.clone()),
            held,
            ran,
        };
        (joins, sockets)
    }
}

impl Drop for FloodRun {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
        if let Some(sampler) = &self.sampler {
            sampler.abort();
        }
        // Not waited for: dropping a runtime blocks, which an async context must not.
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// One join flood task: joins with the forged token through one connection from
/// [`JOIN_FLOOD_SOURCE`] to `addr`, the next as soon as the previous is answered, until
/// `until`.
async fn join_flood(
    addr: String,
    ca_pem: String,
    svid: IssuedCertificate,
    request: pb::JoinRequest,
    until: Instant,
    tally: Arc<JoinTally>,
) {
    let mut client: Option<FederationClient<Channel>> = None;
    for _ in 0..MAX_JOINS_PER_TASK {
        let now = Instant::now();
        if now >= until {
            return;
        }
        let deadline = until.min(now + CALL_TIMEOUT);
        let connected = match client.as_mut() {
            Some(client) => client,
            None => {
                let channel = crate::member::channel_from(
                    &addr,
                    &ca_pem,
                    Some(&svid),
                    Some(JOIN_FLOOD_SOURCE),
                );
                match tokio::time::timeout_at(deadline, channel).await {
                    Ok(Ok(channel)) => client.insert(FederationClient::new(channel)),
                    Ok(Err(error)) => {
                        tally.connect_failures.fetch_add(1, Ordering::Relaxed);
                        tally.note(format!("connect: {error:#}"));
                        tokio::time::sleep_until(until.min(Instant::now() + RECONNECT_PAUSE)).await;
                        continue;
                    }
                    Err(_) => {
                        tally.connect_failures.fetch_add(1, Ordering::Relaxed);
                        continue;
                    }
                }
            }
        };
        tally.attempts.fetch_add(1, Ordering::Relaxed);
        match tokio::time::timeout_at(deadline, connected.join(request.clone())).await {
            Err(_) => {
                tally.cut.fetch_add(1, Ordering::Relaxed);
            }
            Ok(Ok(_)) => {
                tally.accepted.fetch_add(1, Ordering::Relaxed);
            }
            Ok(Err(status)) => match status.code() {
                tonic::Code::PermissionDenied => {
                    tally.denied.fetch_add(1, Ordering::Relaxed);
                }
                tonic::Code::ResourceExhausted => {
                    tally.limited.fetch_add(1, Ordering::Relaxed);
                }
                code => {
                    tally.other.fetch_add(1, Ordering::Relaxed);
                    tally.note(format!("{code:?}: {}", status.message()));
                }
            },
        }
    }
}

/// One slot of the connection flood: a raw TCP socket from [`SOCKET_FLOOD_SOURCE`] to
/// `addr` that never sends anything, opened again `pause` after the server closes it,
/// until `until`.
async fn hold_socket(addr: SocketAddr, pause: Duration, until: Instant, tally: Arc<SocketTally>) {
    for _ in 0..MAX_OPENS_PER_SOCKET {
        let now = Instant::now();
        if now >= until {
            return;
        }
        let connect = async {
            let socket = tokio::net::TcpSocket::new_v4()?;
            socket.bind(SocketAddr::new(SOCKET_FLOOD_SOURCE, 0))?;
            socket.connect(addr).await
        };
        match tokio::time::timeout_at(until.min(now + CALL_TIMEOUT), connect).await {
            Ok(Ok(mut stream)) => {
                tally.opened.fetch_add(1, Ordering::Relaxed);
                tally.open_now.fetch_add(1, Ordering::Relaxed);
                let closed = held_until_closed(&mut stream, until).await;
                tally.open_now.fetch_sub(1, Ordering::Relaxed);
                drop(stream);
                if !closed {
                    return;
                }
                tally.closed_by_server.fetch_add(1, Ordering::Relaxed);
            }
            Ok(Err(error)) => {
                tally.failed.fetch_add(1, Ordering::Relaxed);
                tally.note(format!("connect to {addr}: {error}"));
            }
            Err(_) if Instant::now() >= until => return,
            Err(_) => {
                tally.failed.fetch_add(1, Ordering::Relaxed);
                tally.note(format!("connect to {addr}: no answer within {CALL_TIMEOUT:?}"));
            }
        }
        tokio::time::sleep_until(until.min(Instant::now() + pause)).await;
    }
}

/// Holds `stream` without writing until the server closes it (`true`) or `until`
/// (`false`).
async fn held_until_closed(stream: &mut tokio::net::TcpStream, until: Instant) -> bool {
    let mut buf = [0_u8; 256];
    // A TLS server says nothing before the ClientHello; whatever it might send is read
    // and dropped, a bounded number of times.
    for _ in 0..1024 {
        match tokio::time::timeout_at(until, stream.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0) | Err(_)) => return true,
            Ok(Ok(_)) => {}
        }
    }
    true
}

/// Counts the sockets held open every [`SAMPLE_EVERY`] from `from` to `until`.
async fn count_held(tally: Arc<SocketTally>, from: Instant, until: Instant) -> Vec<u64> {
    let mut held = Vec::new();
    let mut at = from;
    for _ in 0..1_000_000 {
        if at >= until {
            break;
        }
        tokio::time::sleep_until(at).await;
        held.push(tally.open_now.load(Ordering::Relaxed));
        at += SAMPLE_EVERY;
    }
    held
}
