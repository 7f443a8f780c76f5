//! `bench attack`: legitimate write latency under a join flood and a connection flood,
//! beside the quiet figure, on one 3-replica Federator group.
//!
//! A single closed-loop writer on 127.0.0.1 writes probe keys through the admin `Put` to
//! the leader, first with nothing else going on (quiet), then while two floods run at
//! once (under attack):
//! - a join flood from 127.0.0.2: tasks spread over the replicas, each sending joins with
//!   a CA and SVID of the attacker's own, a valid bundle of that CA and a well-formed token
//!   nobody created, the next one as soon as the previous is answered; the answers are
//!   counted by gRPC code (`PERMISSION_DENIED`: checked and refused; `RESOURCE_EXHAUSTED`:
//!   refused at once by the failed-attempt limiter);
//! - a connection flood from 127.0.0.3: raw TCP sockets held open to every replica's API
//!   port that never send a TLS ClientHello, each opened again (after a short pause)
//!   when the server closes it.
//!
//! The floods run on a runtime of their own (one thread, so at most one core), so the
//! writer's task is never queued behind them. In the middle of each measured window a
//! legitimate member cluster joins from 127.0.0.1 with a token the operator made; its
//! connect-and-join time is reported. The group's applied index is read before and after
//! each phase: the floods must propose nothing, so its growth is the legitimate writes and
//! join plus at most one refusal report per replica per second.
//!
//! Every flood task stops at the end of the measured window (loops are bounded in count
//! too); their sockets close with them; the replicas are killed when the
//! [`Federation`] is dropped.
//!
//! Here: the settings, the phases and their figures. The floods are in `flood`, the text
//! table and the markdown section in `report`.

mod flood;
mod report;

use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use federator_proto::admin as admin_pb;
use federator_proto::admin::admin_client::AdminClient;
use tokio::time::Instant;
use tonic::transport::Channel;

use self::flood::{FloodPlan, FloodRun};
use super::load::{LoadRun, LoadSpec, Operation, closed_loop, progress_ticker};
use super::progress::Progress;
use super::propagation::memory::{parse_cpu_ticks, ticks_per_second};
use super::target::{KvConn, PutError};
use super::{GROUP_SIZE, HEALTHY_TIMEOUT};
use crate::cluster::Federation;
use crate::member::{MemberCluster, join_request};

/// Marks the start of the section this benchmark owns in a markdown file.
pub const SECTION_BEGIN: &str =
    "<!-- bench attack: begin (written by `federator-chaos bench attack --markdown`) -->";
/// Marks its end.
pub const SECTION_END: &str = "<!-- bench attack: end -->";

/// Where the join flood comes from.
pub const JOIN_FLOOD_SOURCE: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));
/// Where the connection flood comes from.
pub const SOCKET_FLOOD_SOURCE: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 3));
/// Most idle sockets per replica API port a run may ask for.
pub const MAX_SOCKETS_PER_PORT: usize = 5_000;
/// Most join flood tasks a run may ask for.
pub const MAX_JOIN_TASKS: usize = 256;

/// Deadline of the legitimate member's connect and join.
const JOIN_TIMEOUT: Duration = Duration::from_secs(30);
/// The replica the legitimate members join through.
const JOIN_VIA: u64 = 1;

/// What `bench attack` runs.
#[derive(Clone, Debug)]
pub struct AttackConfig {
    /// Measured window of each phase.
    pub duration: Duration,
    /// Unmeasured time at the start of each phase: the writer warms up and, under
    /// attack, the floods are already running.
    pub ramp: Duration,
    /// Time after each phase before the applied index is read again, so that the last
    /// refusal reports (one a second per replica) are in.
    pub settle: Duration,
    /// Join flood tasks (spread over the replicas, one connection each).
    pub join_tasks: usize,
    /// Idle sockets held to each replica's API port.
    pub sockets_per_port: usize,
    /// Pause before a socket the server closed is opened again.
    pub reopen_pause: Duration,
    /// Bytes per written value.
    pub value_size: usize,
}

impl AttackConfig {
    /// Checks the settings, naming the bad one.
    ///
    /// # Errors
    /// A duration or count is zero or beyond its bound.
    pub fn validate(&self) -> anyhow::Result<()> {
        if self.duration.is_zero() {
            anyhow::bail!("--duration must be positive");
        }
        if self.join_tasks == 0 || self.join_tasks > MAX_JOIN_TASKS {
            anyhow::bail!("--join-tasks must be 1 to {MAX_JOIN_TASKS}");
        }
        if self.sockets_per_port == 0 || self.sockets_per_port > MAX_SOCKETS_PER_PORT {
            anyhow::bail!("--sockets must be 1 to {MAX_SOCKETS_PER_PORT}");
        }
        if self.reopen_pause.is_zero() {
            anyhow::bail!(
                "--reopen-pause must be positive (a socket is never re-opened in a spin)"
            );
        }
        Ok(())
    }

    /// Sockets asked for in all: per port times the replicas.
    #[must_use]
    pub fn sockets(&self) -> usize {
        self.sockets_per_port * GROUP_SIZE as usize
    }
}

/// What the join flood saw.
#[derive(Clone, Debug, Default)]
pub struct JoinFloodFigures {
    /// Joins sent.
    pub attempts: u64,
    /// Answered `PERMISSION_DENIED`.
    pub denied: u64,
    /// Answered `RESOURCE_EXHAUSTED`.
    pub limited: u64,
    /// Answered with another error (or the connection failed mid-call).
    pub other: u64,
    /// Answered OK: a forged token was accepted (must stay 0).
    pub accepted: u64,
    /// Calls still unanswered when the phase ended.
    pub cut: u64,
    /// Connections that could not be made.
    pub connect_failures: u64,
    /// The first other answer or failure, for the report.
    pub first_other: Option<String>,
    /// How long the flood ran.
    pub ran: Duration,
}

impl JoinFloodFigures {
    /// `count` per second of the flood's run.
    #[must_use]
    pub fn per_second(&self, count: u64) -> f64 {
        if self.ran.is_zero() { 0.0 } else { count as f64 / self.ran.as_secs_f64() }
    }
}

/// What the connection flood saw.
#[derive(Clone, Debug, Default)]
pub struct SocketFloodFigures {
    /// Sockets asked for (per port times the ports).
    pub asked: usize,
    /// Connections established (first opens and re-opens).
    pub opened: u64,
    /// Sockets the server closed (read end-of-file or a reset).
    pub closed_by_server: u64,
    /// Connection attempts that failed.
    pub failed: u64,
    /// The first failure, for the report.
    pub first_error: Option<String>,
    /// Sockets open at each sample of the measured window.
    pub held: Vec<u64>,
    /// How long the flood ran.
    pub ran: Duration,
}

impl SocketFloodFigures {
    /// Mean of the sockets held open over the measured window.
    #[must_use]
    pub fn held_mean(&self) -> Option<f64> {
        (!self.held.is_empty())
            .then(|| self.held.iter().sum::<u64>() as f64 / self.held.len() as f64)
    }

    /// `count` per second of the flood's run.
    #[must_use]
    pub fn per_second(&self, count: u64) -> f64 {
        if self.ran.is_zero() { 0.0 } else { count as f64 / self.ran.as_secs_f64() }
    }
}

/// Counters of the replicas' own metrics, summed over the replicas.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ServerCounters {
    /// Calls refused before the log (`federator_refusals_total`).
    pub refusals: u64,
    /// API connections closed at accept: their source had too many handshakes in
    /// progress or too many connections, or the listener too many connections.
    pub refused_at_accept: u64,
    /// API handshakes dropped to make room for a new connection.
    pub evicted: u64,
    /// API handshakes not completed in time.
    pub timed_out: u64,
}

impl ServerCounters {
    fn since(self, before: Self) -> Self {
        Self {
            refusals: self.refusals.saturating_sub(before.refusals),
            refused_at_accept: self.refused_at_accept.saturating_sub(before.refused_at_accept),
            evicted: self.evicted.saturating_sub(before.evicted),
            timed_out: self.timed_out.saturating_sub(before.timed_out),
        }
    }
}

/// Why the legitimate member's join failed during a phase.
#[derive(Clone, Debug, thiserror::Error)]
pub enum JoinFailed {
    /// The federation answered with an error (or the connection failed).
    #[error("{0}")]
    Refused(String),
    /// No answer in time.
    #[error("no answer within {0:?}")]
    TimedOut(Duration),
}

/// Everything one phase showed.
#[derive(Clone, Debug)]
pub struct PhaseFigures {
    /// `quiet` or `under attack`.
    pub label: &'static str,
    /// What the writer saw in the measured window.
    pub writes: LoadRun,
    /// Writes acknowledged over the whole phase (ramp included).
    pub acked_all: u64,
    /// The legitimate member's connect and join, or why it failed.
    pub join: Result<Duration, JoinFailed>,
    /// The highest applied index of any replica before the phase.
    pub applied_before: u64,
    /// The same after the phase and the settle time.
    pub applied_after: u64,
    /// Time between the two readings.
    pub span: Duration,
    /// CPU of the replicas together over the phase, in cores.
    pub replica_cpu: Option<f64>,
    /// CPU of the flood threads over the phase, in cores.
    pub flood_cpu: Option<f64>,
    /// The replicas' counters' increase over the phase.
    pub server: Option<ServerCounters>,
    /// The join flood (under attack only).
    pub join_flood: Option<JoinFloodFigures>,
    /// The connection flood (under attack only).
    pub socket_flood: Option<SocketFloodFigures>,
}

impl PhaseFigures {
    /// Entries the group applied over the phase.
    #[must_use]
    pub fn growth(&self) -> u64 {
        self.applied_after.saturating_sub(self.applied_before)
    }

    /// Entries the legitimate clients may have proposed: every acknowledged write, every
    /// failed one (it may have committed), the member's join.
    #[must_use]
    pub fn legitimate_entries(&self) -> u64 {
        self.acked_all + self.writes.errors + u64::from(self.join.is_ok())
    }

    /// Entries nobody legitimate proposed.
    #[must_use]
    pub fn other_entries(&self) -> u64 {
        self.growth().saturating_sub(self.legitimate_entries())
    }

    /// Refusal reports the replicas may propose over the phase: one a second each.
    #[must_use]
    pub fn report_allowance(&self) -> u64 {
        GROUP_SIZE * self.span.as_secs_f64().ceil() as u64
    }

    /// One line for the progress log.
    #[must_use]
    pub fn summary(&self) -> String {
        let ms = |d: Option<Duration>| {
            d.map_or_else(|| "-".into(), |d| format!("{:.2} ms", d.as_secs_f64() * 1e3))
        };
        let join = match &self.join {
            Ok(d) => format!("{:.0} ms", d.as_secs_f64() * 1e3),
            Err(e) => format!("FAILED ({e})"),
        };
        let mut line = format!(
            "{}: {:.0} writes/s, p50 {}, p99 {}, max {}, {} errors; member join {join}; \
             applied +{} ({} legitimate)",
            self.label,
            self.writes.throughput(),
            ms(self.writes.percentile(0.5)),
            ms(self.writes.percentile(0.99)),
            ms(self.writes.percentile(1.0)),
            self.writes.errors,
            self.growth(),
            self.legitimate_entries(),
        );
        if let Some(j) = &self.join_flood {
            let _ = write!(
                line,
                "; joins {:.0}/s ({} denied, {} rate-limited, {} other, {} accepted)",
                j.per_second(j.attempts),
                j.denied,
                j.limited,
                j.other,
                j.accepted
            );
        }
        if let Some(s) = &self.socket_flood {
            let _ = write!(
                line,
                "; idle sockets held {:.0} of {} on average, {} closed by the server",
                s.held_mean().unwrap_or(0.0),
                s.asked,
                s.closed_by_server
            );
        }
        line
    }
}

/// The figures of one `bench attack` run.
#[derive(Clone, Debug)]
pub struct AttackReport {
    /// What was asked for.
    pub config: AttackConfig,
    /// The replica the writer wrote to.
    pub leader: u64,
    /// Nothing but the writer and the member's join.
    pub quiet: PhaseFigures,
    /// The same under both floods.
    pub attack: PhaseFigures,
}

/// Runs the benchmark: a fresh group, the quiet phase, then the phase under attack; the
/// group is torn down (every replica killed) when it returns.
///
/// # Errors
/// The group did not start or lost its leader, or the writer could not connect.
pub async fn run_attack(
    config: &AttackConfig,
    progress: &Progress,
) -> anyhow::Result<AttackReport> {
    config.validate()?;
    let step = progress.step(format!("starting {GROUP_SIZE} Federator replicas"));
    let mut fed = Federation::formed(GROUP_SIZE, "").await?;
    fed.show_logs_on_drop = false;
    step.finish_and_clear();
    let leader = fed.wait_for_leader(&fed.ids(), HEALTHY_TIMEOUT).await?;
    let writer = AdminConn(fed.admin(leader).await.context("connecting the writer")?);
    let plan = FloodPlan::new(&fed, config)?;

    let quiet = phase(&fed, &writer, config, None, "quiet", progress).await?;
    progress.println(format!("{:>9} {}", "Federator", quiet.summary()));
    let attack = phase(&fed, &writer, config, Some(&plan), "under attack", progress).await?;
    progress.println(format!("{:>9} {}", "Federator", attack.summary()));
    Ok(AttackReport { config: config.clone(), leader, quiet, attack })
}

/// A connection to the leader's admin API (the writer's).
#[derive(Clone, Debug)]
struct AdminConn(AdminClient<Channel>);

impl KvConn for AdminConn {
    async fn put(&mut self, key: String, value: Vec<u8>) -> Result<(), PutError> {
        self.0.put(admin_pb::PutRequest { key, value }).await.map(|_| ()).map_err(|status| {
            PutError::Failed {
                system: "Federator",
                message: format!("{:?}: {}", status.code(), status.message()),
            }
        })
    }
}

/// One phase: the writer, the member's join in the middle of the window and, under
/// attack, both floods from the start of the ramp to the end of the window.
async fn phase(
    fed: &Federation,
    writer: &AdminConn,
    config: &AttackConfig,
    flood: Option<&FloodPlan>,
    label: &'static str,
    progress: &Progress,
) -> anyhow::Result<PhaseFigures> {
    // The member's token is made (and committed) before the phase starts.
    let name = if flood.is_some() { "attack" } else { "quiet" };
    let mut member = MemberCluster::new(&format!("cluster-{name}"), &format!("{name}.example"))?;
    let token = fed.token(&member.name, &member.trust_domain, "1h")?;
    let bundle = member.next_bundle()?;
    let request = join_request(&token, &member.trust_domain, bundle);
    let ca = fed.ca_pem();
    let via = fed.replica(JOIN_VIA).api_addr.clone();

    let read_at = Instant::now();
    let applied_before = applied_index(fed).await?;
    let server_before = server_counters(fed).await;

    let replica_ticks = replica_cpu_ticks(fed);
    let flood_ticks = flood_cpu_ticks();
    let started = Instant::now();
    let window_end = started + config.ramp + config.duration;
    let floods =
        flood.map(|plan| FloodRun::start(plan, started + config.ramp, window_end)).transpose()?;
    let spec = LoadSpec {
        clients: 1,
        warmup: config.ramp,
        duration: config.duration,
        value_size: config.value_size,
        prefix: format!("bench/attack/{name}"),
        keys_per_client: None,
        operation: Operation::Put,
    };
    let acked = Arc::new(AtomicU64::new(0));
    let bar = progress.load_bar(&format!("Federator {label},"), &spec);
    let ticker = progress_ticker(&bar, &acked, config.ramp + config.duration);
    let join = async {
        tokio::time::sleep_until(started + config.ramp + config.duration / 2).await;
        let began = Instant::now();
        let joined = tokio::time::timeout(JOIN_TIMEOUT, async {
            let mut client = member.client(&via, &ca).await?;
            client
                .join(request)
                .await
                .map_err(|s| anyhow::anyhow!("{:?}: {}", s.code(), s.message()))
        })
        .await;
        match joined {
            Ok(Ok(_)) => Ok(began.elapsed()),
            Ok(Err(error)) => Err(JoinFailed::Refused(format!("{error:#}"))),
            Err(_) => Err(JoinFailed::TimedOut(JOIN_TIMEOUT)),
        }
    };
    let (writes, join) =
        tokio::join!(closed_loop(std::slice::from_ref(writer), &spec, &acked), join);
    ticker.abort();
    bar.finish_and_clear();
    let elapsed = started.elapsed().as_secs_f64();
    let replica_cpu = replica_ticks.and_then(|b| cores(replica_cpu_ticks(fed)?, b, elapsed));
    let flood_cpu = flood_ticks.and_then(|b| cores(flood_cpu_ticks()?, b, elapsed));
    let (join_flood, socket_flood) = match floods {
        Some(run) => {
            let (j, s) = run.finish().await;
            (Some(j), Some(s))
        }
        None => (None, None),
    };

    tokio::time::sleep(config.settle).await;
    let applied_after = applied_index(fed).await?;
    let span = read_at.elapsed();
    let server = server_counters(fed).await.zip(server_before).map(|(a, b)| a.since(b));
    Ok(PhaseFigures {
        label,
        writes,
        acked_all: acked.load(Ordering::Relaxed),
        join,
        applied_before,
        applied_after,
        span,
        replica_cpu,
        flood_cpu,
        server,
        join_flood,
        socket_flood,
    })
}

/// The highest applied index any replica reports.
async fn applied_index(fed: &Federation) -> anyhow::Result<u64> {
    let mut highest = None;
    for id in fed.ids() {
        if let Some(status) = fed.status(id).await {
            highest = highest.max(Some(status.applied_index));
        }
    }
    highest.context("no replica answered its status")
}

/// The replicas' counters, summed; `None` when one did not answer.
async fn server_counters(fed: &Federation) -> Option<ServerCounters> {
    let mut total = ServerCounters::default();
    for id in fed.ids() {
        let text = fed.metrics(id).await.ok()?;
        let read = |name: &str| counter(&text, name).unwrap_or(0);
        total.refusals += counter(&text, "federator_refusals_total")?;
        total.refused_at_accept += read("federator_api_tls_refused_source_handshakes_total")
            + read("federator_api_tls_refused_source_connections_total")
            + read("federator_api_tls_refused_connections_total");
        total.evicted += read("federator_api_tls_evicted_handshakes_total");
        total.timed_out += read("federator_api_tls_timed_out_handshakes_total");
    }
    Some(total)
}

/// The value of an unlabelled counter in a Prometheus text exposition.
fn counter(exposition: &str, name: &str) -> Option<u64> {
    exposition.lines().find_map(|line| {
        let value = line.strip_prefix(name)?.strip_prefix(' ')?;
        value.split_whitespace().next()?.parse::<f64>().ok().map(|v| v as u64)
    })
}

/// CPU ticks of the replicas together.
fn replica_cpu_ticks(fed: &Federation) -> Option<u64> {
    fed.ids()
        .into_iter()
        .map(|id| ticks_of(&format!("/proc/{}/stat", fed.replica(id).pid()?)))
        .sum()
}

/// The name of the flood runtime's threads.
const FLOOD_THREAD: &str = "attack-flood";

/// CPU ticks of this process's flood threads (finished threads are not counted: the
/// flood runtime lives until the phase is read).
fn flood_cpu_ticks() -> Option<u64> {
    let mut total = 0;
    for entry in std::fs::read_dir("/proc/self/task").ok()?.flatten() {
        let stat = std::fs::read_to_string(entry.path().join("stat")).unwrap_or_default();
        if stat.contains(&format!("({FLOOD_THREAD})")) {
            total += parse_cpu_ticks(&stat).unwrap_or(0);
        }
    }
    Some(total)
}

fn ticks_of(path: &str) -> Option<u64> {
    parse_cpu_ticks(&std::fs::read_to_string(path).ok()?)
}

/// Cores used between two readings of ticks `seconds` apart.
fn cores(after: u64, before: u64, seconds: f64) -> Option<f64> {
    (seconds > 0.0).then(|| after.saturating_sub(before) as f64 / ticks_per_second() / seconds)
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(super) fn config() -> AttackConfig {
        AttackConfig {
            duration: Duration::from_secs(10),
            ramp: Duration::from_secs(1),
            settle: Duration::from_millis(1500),
            join_tasks: 8,
            sockets_per_port: 300,
            reopen_pause: Duration::from_millis(100),
            value_size: 256,
        }
    }

    pub(super) fn phase(
        label: &'static str,
        millis: u64,
        growth: u64,
        attacked: bool,
    ) -> PhaseFigures {
        PhaseFigures {
            label,
            writes: LoadRun {
                ops: 100,
                window: Duration::from_secs(10),
                latencies: vec![Duration::from_millis(millis); 100],
                ..LoadRun::default()
            },
            acked_all: 110,
            join: Ok(Duration::from_millis(40)),
            applied_before: 50,
            applied_after: 50 + growth,
            span: Duration::from_millis(12_600),
            replica_cpu: Some(0.5),
            flood_cpu: Some(0.9),
            server: Some(ServerCounters::default()),
            join_flood: attacked.then(|| JoinFloodFigures {
                attempts: 1000,
                denied: 20,
                limited: 980,
                ran: Duration::from_secs(10),
                ..JoinFloodFigures::default()
            }),
            socket_flood: attacked.then(|| SocketFloodFigures {
                asked: 900,
                opened: 5000,
                closed_by_server: 4100,
                held: vec![48, 50, 52],
                ran: Duration::from_secs(10),
                ..SocketFloodFigures::default()
            }),
        }
    }

    pub(super) fn report(attack_growth: u64) -> AttackReport {
        AttackReport {
            config: config(),
            leader: 1,
            quiet: phase("quiet", 2, 111, false),
            attack: phase("under attack", 4, attack_growth, true),
        }
    }

    #[test]
    fn validation_names_the_bad_setting() {
        assert!(config().validate().is_ok());
        let mut c = config();
        c.sockets_per_port = MAX_SOCKETS_PER_PORT + 1;
        assert!(c.validate().expect_err("too many").to_string().contains("--sockets"));
        let mut c = config();
        c.join_tasks = 0;
        assert!(c.validate().expect_err("none").to_string().contains("--join-tasks"));
        let mut c = config();
        c.reopen_pause = Duration::ZERO;
        assert!(c.validate().expect_err("spin").to_string().contains("--reopen-pause"));
        assert_eq!(config().sockets(), 900);
    }

    #[test]
    fn entries_beyond_the_legitimate_ones_are_judged_against_one_report_per_replica_a_second() {
        let r = report(111 + 39);
        assert_eq!(r.attack.legitimate_entries(), 111);
        assert_eq!(r.attack.other_entries(), 39);
        // 12.6 s → 13 s × 3 replicas.
        assert_eq!(r.attack.report_allowance(), 39);
        let text = r.text();
        let line = text.lines().find(|l| l.starts_with("… other entries")).expect("row");
        assert!(line.ends_with("(one refusal report per replica per second): met"), "{line}");
        let text = report(111 + 40).text();
        let line = text.lines().find(|l| l.starts_with("… other entries")).expect("row");
        assert!(line.ends_with("MISSED"), "{line}");
    }

    #[test]
    fn counters_are_read_from_an_exposition() {
        let text = "# TYPE federator_refusals counter\nfederator_refusals_total 12\n\
                    federator_api_tls_timed_out_handshakes_total 3.0\n";
        assert_eq!(counter(text, "federator_refusals_total"), Some(12));
        assert_eq!(counter(text, "federator_api_tls_timed_out_handshakes_total"), Some(3));
        assert_eq!(counter(text, "federator_refusals"), None);
    }
}
