//! The SPIFFE bundle endpoint (SPIFFE Federation specification) on every replica: each
//! member's bundle as a SPIFFE bundle document at `GET /bundles/<trust-domain>`, and
//! the list of trust domains at `GET /bundles`. Served under the `https_spiffe` profile
//! (the federation's own SVID) and/or the `https_web` profile (a web PKI certificate
//! from files), so that SPIRE or Istio can consume federated bundles with no agent.
//!
//! The endpoint is public, so what an anonymous client can hold is bounded ([`Limits`]):
//! connections per source address and in all (beyond, a connection is closed at once),
//! the time to complete the TLS handshake, to send a request's headers, and to stay
//! idle. Handshakes in progress are bounded per source and in all by
//! [`federator_raft::tls::incoming`], which also never stops accepting.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use federator_raft::tls::TlsConn;
use futures::StreamExt as _;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::watch;
use tokio::time::Instant;

use super::config::ServerConfig;
use super::{FederationReplica, ServerError, bind};
use crate::bundle::{TrustBundle, ValidationPolicy, parse_pem_bundle};
use crate::identity::{TlsFiles, TlsMaterial};

#[cfg(test)]
mod tests;

/// Time a client gets to complete the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// Time a client gets to send a request's headers over HTTP/1.1. hyper runs this timer
/// whenever it waits for a request, so it also closes an HTTP/1.1 connection left idle
/// between requests for this long.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// A connection on which nothing is read or written for this long is closed: an HTTP/2
/// connection without requests, or a client silent after its handshake.
const IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// Connections (handshaking or established) one source address may hold. A source is a
/// consumer (a SPIRE server, a mesh's control plane) or a NAT in front of a few; each
/// needs a connection or two while it fetches.
const MAX_CONNECTIONS_PER_SOURCE: usize = 32;
/// Established connections of all sources. Fetches are small and rare (at most every few
/// minutes per consumer), so this is far above legitimate use while it bounds the open
/// files a crowd of clients can take.
const MAX_CONNECTIONS: usize = 512;

/// What a client may hold of one endpoint; connections beyond a cap are closed at once.
#[derive(Clone, Copy, Debug)]
struct Limits {
    /// See [`HANDSHAKE_TIMEOUT`].
    handshake_timeout: Duration,
    /// See [`HEADER_READ_TIMEOUT`].
    header_read_timeout: Duration,
    /// See [`IDLE_TIMEOUT`].
    idle_timeout: Duration,
    /// See [`MAX_CONNECTIONS_PER_SOURCE`].
    max_connections_per_source: usize,
    /// See [`MAX_CONNECTIONS`].
    max_connections: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            handshake_timeout: HANDSHAKE_TIMEOUT,
            header_read_timeout: HEADER_READ_TIMEOUT,
            idle_timeout: IDLE_TIMEOUT,
            max_connections_per_source: MAX_CONNECTIONS_PER_SOURCE,
            max_connections: MAX_CONNECTIONS,
        }
    }
}

/// What the endpoint serves from.
#[derive(Clone)]
struct Shared {
    replica: FederationReplica,
    /// The federation's own bundle (its CA), served like a member's.
    own: Option<Arc<TrustBundle>>,
    /// `spiffe_refresh_hint` of a bundle that carries none.
    refresh_hint_secs: u64,
}

/// Starts the configured bundle endpoints; each stops when `stop` turns true.
pub async fn spawn_all(
    config: &ServerConfig,
    material: &TlsMaterial,
    replica: FederationReplica,
    stop: &watch::Receiver<bool>,
) -> Result<Vec<tokio::task::JoinHandle<()>>, ServerError> {
    let own = own_bundle(config, material);
    let shared = Shared {
        replica,
        own: own.map(Arc::new),
        refresh_hint_secs: config.bundle_endpoint.refresh_hint_secs,
    };
    let mut tasks = Vec::new();
    let endpoints = [
        ("bundle_endpoint.listen_spiffe", &config.bundle_endpoint.spiffe, "https_spiffe"),
        ("bundle_endpoint.listen_web", &config.bundle_endpoint.web, "https_web"),
    ];
    for (what, endpoint, profile) in endpoints {
        let Some((addr, files)) = endpoint else { continue };
        let tls = serving_material(files, material)?.public_server_config()?;
        let listener = bind(what, *addr).await?;
        tracing::info!(%addr, profile, "serving the SPIFFE bundle endpoint");
        let mut stop = stop.clone();
        let stopped = async move {
            let _ = stop.wait_for(|s| *s).await;
        };
        let app = router(shared.clone());
        tasks.push(tokio::spawn(serve(listener, tls, app, Limits::default(), stopped)));
    }
    Ok(tasks)
}

/// The certificate to serve: the configured files, or this replica's own.
fn serving_material(
    files: &Option<TlsFiles>,
    own: &TlsMaterial,
) -> Result<TlsMaterial, ServerError> {
    match files {
        Some(files) => {
            let material = files.load()?;
            material.identity.watch(super::CERTIFICATE_CHECK_PERIOD);
            Ok(material)
        }
        None => Ok(TlsMaterial { ca: own.ca.clone(), identity: own.identity.clone() }),
    }
}

fn own_bundle(config: &ServerConfig, material: &TlsMaterial) -> Option<TrustBundle> {
    let pem = crate::identity::certificates_to_pem(material.ca.iter().map(AsRef::as_ref));
    let policy = ValidationPolicy::at(crate::clock::unix_now());
    match parse_pem_bundle(&config.trust_domain, pem.as_bytes(), 1, None, &policy) {
        Ok(bundle) => Some(bundle),
        Err(error) => {
            tracing::warn!(%error, "the federation CA is not served as a bundle");
            None
        }
    }
}

fn router(shared: Shared) -> Router {
    Router::new()
        .route("/bundles", get(list))
        .route("/bundles/{trust_domain}", get(bundle))
        .with_state(shared)
}

async fn list(State(shared): State<Shared>) -> Response {
    let mut domains: Vec<String> =
        shared.replica.state().read(|s| s.bundles.keys().cloned().collect());
    if let Some(own) = &shared.own {
        domains.push(own.trust_domain.clone());
    }
    domains.sort();
    json(serde_json::json!({ "trust_domains": domains }).to_string())
}

async fn bundle(State(shared): State<Shared>, Path(trust_domain): Path<String>) -> Response {
    if let Some(own) = shared.own.as_ref().filter(|o| o.trust_domain == trust_domain) {
        return json(own.to_served_json(shared.refresh_hint_secs));
    }
    let hint = shared.refresh_hint_secs;
    let now = crate::clock::unix_now();
    // A removed member's trust domain is served with no keys for a while, so that
    // consumers drop its CA (a 404 would leave them holding it).
    let document = shared.replica.state().read(|s| {
        s.bundles
            .get(&trust_domain)
            .map(|b| b.bundle.to_served_json(hint))
            .or_else(|| s.removed_domain(&trust_domain, now).map(|r| r.to_served_json(hint)))
    });
    match document {
        Some(document) => json(document),
        None => (StatusCode::NOT_FOUND, format!("no bundle for trust domain {trust_domain:?}\n"))
            .into_response(),
    }
}

fn json(body: String) -> Response {
    ([(header::CONTENT_TYPE, "application/json"), (header::CACHE_CONTROL, "no-cache")], body)
        .into_response()
}

/// Accepts TLS connections and serves `app` over HTTP/1.1 or HTTP/2 until `stop`, within
/// `limits`.
async fn serve(
    listener: tokio::net::TcpListener,
    tls: Arc<rustls::ServerConfig>,
    app: Router,
    limits: Limits,
    stop: impl Future<Output = ()>,
) {
    let mut incoming = federator_raft::tls::incoming(listener, tls)
        .with_handshake_timeout(limits.handshake_timeout)
        .with_max_connections_per_source(limits.max_connections_per_source)
        .with_max_connections(limits.max_connections);
    tokio::pin!(stop);
    // Each connection on a task of its own, owned here: reaped as it ends (it is bounded by
    // the idle and header-read timeouts), and aborted and joined when the endpoint stops
    // (what it serves is a GET the client retries).
    let mut connections = tokio::task::JoinSet::new();
    loop {
        let conn = tokio::select! {
            () = &mut stop => break,
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
            next = incoming.next() => match next {
                Some(Ok(conn)) => conn,
                // The stream pauses itself after an accept error.
                Some(Err(error)) => {
                    tracing::debug!(%error, "bundle endpoint accept failed");
                    continue;
                }
                None => break,
            },
        };
        connections.spawn(serve_connection(conn, app.clone(), limits));
    }
    connections.shutdown().await;
}

/// Serves one connection until the client closes it, it fails, a header-read timeout, or
/// it is idle for `limits.idle_timeout`.
async fn serve_connection(conn: TlsConn, app: Router, limits: Limits) {
    let peer = conn.info().remote_addr;
    let activity = Arc::new(Activity::new());
    let io = TokioIo::new(Watched { inner: conn, activity: Arc::clone(&activity) });
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    builder.http1().timer(TokioTimer::new()).header_read_timeout(limits.header_read_timeout);
    let connection = builder.serve_connection(io, TowerToHyperService::new(app));
    tokio::select! {
        result = connection => {
            if let Err(error) = result {
                tracing::debug!(%error, ?peer, "bundle endpoint connection ended");
            }
        }
        () = activity.idle_for(limits.idle_timeout) => {
            tracing::debug!(?peer, "bundle endpoint connection idle: closed");
        }
    }
}

/// When a connection last moved bytes.
struct Activity {
    /// Origin of `last`.
    start: Instant,
    /// Milliseconds from `start` to the last read or write that moved bytes.
    last: AtomicU64,
}

impl Activity {
    fn new() -> Self {
        Self { start: Instant::now(), last: AtomicU64::new(0) }
    }

    fn touch(&self) {
        let now = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last.store(now, Ordering::Relaxed);
    }

    /// Resolves once no bytes moved for `timeout`.
    async fn idle_for(&self, timeout: Duration) {
        loop {
            let last = self.start + Duration::from_millis(self.last.load(Ordering::Relaxed));
            let deadline = last + timeout;
            if Instant::now() >= deadline {
                return;
            }
            tokio::time::sleep_until(deadline).await;
        }
    }
}

/// A connection that records its reads and writes in an [`Activity`].
struct Watched {
    inner: TlsConn,
    activity: Arc<Activity>,
}

impl AsyncRead for Watched {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let result = Pin::new(&mut this.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            this.activity.touch();
        }
        result
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let result = Pin::new(&mut this.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(1..)) = result {
            this.activity.touch();
        }
        result
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let result = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(1..)) = result {
            this.activity.touch();
        }
        result
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}
