//! Member clusters serving an echo behind a real mTLS Envoy, and a request loop through
//! a client Envoy: what the data-plane tests share (`tests/tests/data_plane*.rs`).
//!
//! A [`ServerCluster`] is a member with its own CA and agent that exports `shop/echo`
//! (one endpoint: its server Envoy, which requires mTLS and validates clients with the
//! agent's SDS `ALL`). [`Traffic`] calls a client Envoy one request after the other and
//! keeps every outcome, so a test can count the failed requests of any interval.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use federator::identity::IssuedCertificate;
use serde_json::json;

use crate::agent::{AgentOptions, AgentProcess};
use crate::cluster::{Federation, free_port, tail};
use crate::envoy::{EchoReply, EchoServer, EnvoyProcess, ServerSidecar, Sidecar, mtls_get};
use crate::http;
use crate::member::MemberCluster;
use crate::wait::eventually;

/// Bound of every wait on propagation (typically about a second).
pub const WAIT: Duration = Duration::from_secs(30);
/// One call's bound.
pub const CALL: Duration = Duration::from_secs(3);
/// The exported service's namespace.
pub const NS: &str = "shop";
/// The exported service's name.
pub const SERVICE: &str = "echo";
/// Its hostname in every importing cluster.
pub const HOSTNAME: &str = "echo.shop.svc.clusterset.local";
/// The service port every exporter declares (each endpoint overrides it with its Envoy's).
pub const SERVICE_PORT: u16 = 8443;
/// Pause between two calls of the request loop.
const LOOP_PAUSE: Duration = Duration::from_millis(5);

/// A cluster that serves the echo: agent, echo service, server Envoy.
pub struct ServerCluster {
    /// Its agent.
    pub agent: AgentProcess,
    /// The echo service.
    pub echo: EchoServer,
    /// The server Envoy in front of it.
    pub envoy: EnvoyProcess,
    region: String,
    zone: String,
}

impl ServerCluster {
    /// Joins with agents of lease TTL `lease_ttl` seconds, exports `shop/echo` and
    /// serves it behind an mTLS Envoy.
    ///
    /// # Errors
    /// A process did not start or the agent did not join and export within [`WAIT`].
    pub async fn start(
        fed: &Federation,
        name: &str,
        td: &str,
        (region, zone): (&str, &str),
        lease_ttl: u32,
    ) -> anyhow::Result<Self> {
        let member = MemberCluster::new(name, td)?;
        let options = AgentOptions {
            xds: true,
            lease_ttl_seconds: Some(lease_ttl),
            locality: Some((region.into(), zone.into())),
            ..AgentOptions::default()
        };
        let mut agent = AgentProcess::new(fed, member, &options)?;
        let listen_port = free_port();
        agent.use_exports_file(&exports(td, listen_port, region, zone, true))?;
        agent.start()?;
        agent
            .wait_status(&format!("{name} joined and exports"), WAIT, |s| {
                s.lease.is_some() && s.exports.published == 1
            })
            .await?;
        let echo = EchoServer::start(name, 0).await?;
        let svid = agent.member.issue(&agent.member.workload_id(NS, SERVICE))?;
        let sidecar = Sidecar::Server(ServerSidecar {
            listen_port,
            upstream: echo.addr(),
            xds_addr: agent.xds_addr.clone().unwrap_or_default(),
            validation_secret: "ALL".into(),
        });
        let mut envoy =
            EnvoyProcess::new(&fed.dir().join(format!("envoy-{name}")), name, &sidecar, &svid)?;
        envoy.start()?;
        envoy.wait_ready(WAIT).await?;
        Ok(Self { agent, echo, envoy, region: region.into(), zone: zone.into() })
    }

    /// Its trust domain.
    #[must_use]
    pub fn trust_domain(&self) -> &str {
        &self.agent.member.trust_domain
    }

    /// Its exports file, the endpoint `ready` or not.
    #[must_use]
    pub fn exports(&self, ready: bool) -> serde_json::Value {
        let port = self.envoy.listen_addr.rsplit(':').next().and_then(|p| p.parse().ok());
        exports(self.trust_domain(), port.unwrap_or(0), &self.region, &self.zone, ready)
    }

    /// A direct mTLS call to its Envoy as `client` (see [`mtls_get`]).
    ///
    /// # Errors
    /// The call failed (refused, or no answer within [`CALL`]).
    pub async fn probe(&self, client: &IssuedCertificate) -> anyhow::Result<EchoReply> {
        let ca = self.agent.member.ca_pem();
        let response =
            mtls_get(&self.envoy.listen_addr, client, self.trust_domain(), &ca, CALL).await?;
        EchoReply::parse(&response.body)
    }

    /// Kills the agent, the Envoy and the echo service.
    pub fn kill(&mut self) {
        self.envoy.kill();
        self.echo.stop();
        self.agent.kill();
    }

    /// Starts them again: echo, agent, Envoy, with its endpoint exported `ready: false`
    /// until its Envoy serves.
    ///
    /// # Errors
    /// A process did not start or come back within [`WAIT`].
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        self.agent.write_exports(&self.exports(false))?;
        self.echo.restart().await?;
        self.agent.start()?;
        self.envoy.start()?;
        self.envoy.wait_ready(WAIT).await?;
        self.agent
            .wait_status("reconnected", WAIT, |s| {
                s.connected_replica.is_some() && s.lease.is_some()
            })
            .await?;
        self.agent.write_exports(&self.exports(true))
    }

    /// How many client certificates its Envoy refused so far.
    ///
    /// # Errors
    /// Envoy's admin API did not answer.
    pub async fn refused(&self) -> anyhow::Result<u64> {
        let stats = self.envoy.stats().await?;
        let prefix = self.envoy.listener_stats_prefix();
        Ok(["ssl.fail_verify_error", "ssl.fail_verify_san", "ssl.fail_verify_no_cert"]
            .iter()
            .map(|s| stats.get(&format!("{prefix}{s}")).copied().unwrap_or(0))
            .sum())
    }

    /// The tails of its agent's and Envoy's logs.
    #[must_use]
    pub fn logs(&self) -> String {
        format!(
            "--- agent {} ---\n{}\n--- {} ---\n{}",
            self.agent.member.name,
            tail(&self.agent.log(), 30),
            self.envoy.name,
            self.envoy.log_tail(30)
        )
    }
}

/// The exports file of a cluster: `shop/echo` on port [`SERVICE_PORT`], one endpoint,
/// its Envoy at 127.0.0.1:`port`.
#[must_use]
pub fn exports(td: &str, port: u16, region: &str, zone: &str, ready: bool) -> serde_json::Value {
    json!({ "exports": [{
        "namespace": NS,
        "name": SERVICE,
        "ports": [{ "name": "https", "port": SERVICE_PORT, "protocol": "TCP", "appProtocol": "https" }],
        "endpoints": [{
            "address": "127.0.0.1",
            "region": region,
            "zone": zone,
            "ready": ready,
            "ports": [{ "name": "https", "port": port }],
        }],
        "identities": [format!("spiffe://{td}/ns/{NS}/sa/{SERVICE}")],
    }]})
}

/// Adds a cluster's agent and Envoy logs to an error.
pub trait WithLogs<T> {
    /// This result, its error with `cluster`'s logs.
    ///
    /// # Errors
    /// The error it holds.
    fn with_logs(self, cluster: &ServerCluster) -> anyhow::Result<T>;
}

impl<T> WithLogs<T> for anyhow::Result<T> {
    fn with_logs(self, cluster: &ServerCluster) -> anyhow::Result<T> {
        self.map_err(|e| e.context(cluster.logs()))
    }
}

/// One call of the loop.
#[derive(Clone, Debug)]
pub struct Sample {
    /// When the call ended.
    pub at: Instant,
    /// The echo's reply, or why the call failed.
    pub outcome: Result<EchoReply, CallError>,
}

/// Why a call through a client Envoy got no echo reply.
#[derive(Clone, Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CallError {
    /// The request failed (connect, TLS, timeout).
    #[error("{0:#}")]
    Request(Arc<anyhow::Error>),
    /// Envoy answered, not with 200.
    #[error("{status}: {body}")]
    Status {
        /// The HTTP status.
        status: u16,
        /// The response body, trimmed.
        body: String,
    },
    /// The 200 answer is not an echo reply.
    #[error("{0:#}")]
    Reply(Arc<anyhow::Error>),
}

impl Sample {
    /// Whether `cluster`'s echo answered it.
    #[must_use]
    pub fn served_by(&self, cluster: &str) -> bool {
        self.outcome.as_ref().is_ok_and(|reply| reply.cluster == cluster)
    }
}

/// One `GET /` through a client Envoy at `addr`, with `Host: host`.
///
/// # Errors
/// Why the call failed (kept in a [`Sample`]).
pub async fn call_host(addr: &str, host: &str) -> Result<EchoReply, CallError> {
    let response = http::get_with(addr, "/", &[("host", host)], CALL)
        .await
        .map_err(|e| CallError::Request(Arc::new(e)))?;
    if response.status != 200 {
        let body = response.body.trim().to_string();
        return Err(CallError::Status { status: response.status, body });
    }
    EchoReply::parse(&response.body).map_err(|e| CallError::Reply(Arc::new(e)))
}

/// One `GET /` through a client Envoy at `addr`.
///
/// # Errors
/// Why the call failed (kept in a [`Sample`]).
pub async fn call(addr: &str) -> Result<EchoReply, CallError> {
    call_host(addr, addr).await
}

/// The request loop: calls one after the other through A's Envoy, every outcome kept.
pub struct Traffic {
    samples: Arc<Mutex<Vec<Sample>>>,
    stop: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Traffic {
    /// Starts calling the client Envoy at `addr`.
    #[must_use]
    pub fn start(addr: String) -> Self {
        Self::start_with_host(addr.clone(), addr)
    }

    /// Starts calling the client Envoy at `addr` with `Host: host`.
    #[must_use]
    pub fn start_with_host(addr: String, host: String) -> Self {
        let samples = Arc::new(Mutex::new(Vec::new()));
        let (stop, mut stopped) = tokio::sync::watch::channel(false);
        let sink = samples.clone();
        let task = tokio::spawn(async move {
            while !*stopped.borrow() {
                let outcome = call_host(&addr, &host).await;
                sink.lock().expect("samples").push(Sample { at: Instant::now(), outcome });
                tokio::select! {
                    () = tokio::time::sleep(LOOP_PAUSE) => {}
                    _ = stopped.changed() => {}
                }
            }
        });
        Self { samples, stop, task }
    }

    /// Every sample so far.
    ///
    /// # Panics
    /// The loop panicked while holding the samples.
    #[must_use]
    pub fn samples(&self) -> Vec<Sample> {
        self.samples.lock().expect("samples").clone()
    }

    /// The samples in `[from, to)`.
    #[must_use]
    pub fn between(&self, from: Instant, to: Instant) -> Vec<Sample> {
        self.samples().into_iter().filter(|s| s.at >= from && s.at < to).collect()
    }

    /// The first sample after `since` that satisfies `check`.
    #[must_use]
    pub fn first_after(&self, since: Instant, check: impl Fn(&Sample) -> bool) -> Option<Sample> {
        self.samples().into_iter().find(|s| s.at > since && check(s))
    }

    /// Stops the loop: every sample.
    ///
    /// # Errors
    /// The loop did not end within [`WAIT`].
    ///
    /// # Panics
    /// The loop panicked while holding the samples.
    pub async fn stop(self) -> anyhow::Result<Vec<Sample>> {
        let _ = self.stop.send(true);
        tokio::time::timeout(WAIT, self.task).await??;
        let samples = self.samples.lock().expect("samples").clone();
        Ok(samples)
    }
}

/// How many samples failed, and why (each reason once).
#[must_use]
pub fn failures(samples: &[Sample]) -> (usize, Vec<String>) {
    let mut reasons: Vec<String> = Vec::new();
    let mut count = 0;
    for reason in samples.iter().filter_map(|s| s.outcome.as_ref().err()) {
        count += 1;
        let reason = reason.to_string();
        if !reasons.contains(&reason) {
            reasons.push(reason);
        }
    }
    (count, reasons)
}

/// Waits until the Envoy of every one of `servers` accepts `svid` (a handshake as it).
///
/// # Errors
/// One still refused it after [`WAIT`] (the error carries that cluster's logs).
pub async fn wait_accepted(
    servers: &[&ServerCluster],
    svid: &IssuedCertificate,
) -> anyhow::Result<()> {
    for server in servers {
        eventually("the server Envoy accepts the SVID", WAIT, || async {
            server.probe(svid).await.ok()
        })
        .await
        .with_logs(server)?;
    }
    Ok(())
}

/// Ends `agent`'s CA rotation: only the new CA. The agent's own SVID goes first (it must
/// stay certified by the bundle it publishes) and the agent reconnects with it; then the
/// bundle. Waits until the Envoy of every one of `servers` refuses `old`.
///
/// # Errors
/// The files could not be written, the agent did not reconnect, or a server still
/// accepted `old` after [`WAIT`].
pub async fn retire_old_cas(
    agent: &mut AgentProcess,
    servers: &[&ServerCluster],
    old: &IssuedCertificate,
) -> anyhow::Result<()> {
    let connections = agent.status().map_or(0, |s| s.connections);
    agent.member.retire_old_cas()?;
    agent.write_identity()?;
    agent
        .wait_status("the agent reconnected with its new SVID", WAIT, |s| {
            s.connections > connections && s.connected_replica.is_some()
        })
        .await?;
    agent.write_bundle()?;
    for server in servers {
        eventually("the server Envoy refuses an SVID of the retired CA", WAIT, || async {
            server.probe(old).await.err()
        })
        .await
        .with_logs(server)?;
    }
    Ok(())
}
