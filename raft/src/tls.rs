//! mTLS connection plumbing of the replica transport.
//!
//! The server side is [`incoming`]: a stream of handshaken connections for tonic's
//! `serve_with_incoming*`, each carrying a [`TlsConnectInfo`] (remote address, the
//! peer's end-entity certificate and its whole chain) that tonic puts into every request's
//! extensions. The client side is [`TlsConnector`], a connector for
//! [`tonic::transport::Endpoint::connect_with_connector`].
//!
//! Both sides negotiate ALPN `h2`. Which certificates are trusted is entirely the
//! business of the given rustls configurations; this module knows nothing about SPIFFE
//! or federation.
//!
//! # Connection exhaustion
//!
//! Anyone who can reach the port can open connections and stall their handshakes, so
//! [`TlsIncoming`] never stops accepting and bounds what one source can hold:
//! - each source address (an IPv4 address, or an IPv6 /64) has at most
//!   [`MAX_PENDING_HANDSHAKES_PER_SOURCE`] handshakes in progress; a connection beyond
//!   that is closed as soon as it is accepted;
//! - at [`MAX_PENDING_HANDSHAKES`] handshakes in progress from all sources, the oldest is
//!   dropped to make room for the new one: a legitimate handshake takes milliseconds, so
//!   the oldest is the likeliest to be stalled on purpose;
//! - a handshake gets [`HANDSHAKE_TIMEOUT`];
//! - optionally, the connections of one source (handshaking and established) and the
//!   established connections of all sources are capped too; beyond a cap a connection is
//!   closed as soon as it is accepted.
//!
//! What was refused, evicted and timed out is counted in [`IncomingMetrics`].

use std::collections::hash_map::Entry;
use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::io;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::FutureExt as _;
use futures::future::{AbortHandle, abortable};
use futures::stream::{FuturesUnordered, Stream, StreamExt as _};
use hyper_util::rt::TokioIo;
use parking_lot::Mutex;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tonic::transport::server::Connected;

/// Default time a peer gets to complete the TLS handshake before its connection is
/// dropped ([`TlsIncoming::with_handshake_timeout`]). A handshake takes milliseconds
/// even across a continent; five seconds leaves room for a loaded server.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// Default number of handshakes in progress (from all sources) at which a new connection
/// evicts the oldest one ([`TlsIncoming::with_max_pending_handshakes`]).
pub const MAX_PENDING_HANDSHAKES: usize = 256;

/// Default number of handshakes one source may have in progress; its connections beyond
/// are closed at once ([`TlsIncoming::with_max_pending_handshakes_per_source`]). The
/// busiest legitimate source in the tests and benchmarks (16 members joining at once
/// from 127.0.0.1, spread over three replicas) stays well under it.
pub const MAX_PENDING_HANDSHAKES_PER_SOURCE: usize = 16;

/// Connections accepted in one go before the handshakes get polled, so that a flood of
/// connections cannot starve the handshakes (nor other tasks) of this stream's task.
const ACCEPT_BATCH: usize = 64;

/// Pause after a failed `accept` (e.g. out of file descriptors) so the loop does not spin.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(50);

/// The ALPN protocol id of HTTP/2.
const ALPN_H2: &[u8] = b"h2";

/// A TLS connection could not be established by [`TlsConnector`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// The endpoint URI names no host to connect to.
    #[error("endpoint URI {uri} has no host")]
    MissingHost {
        /// The URI as given.
        uri: String,
    },
    /// The endpoint host is neither a DNS name nor an IP address.
    #[error("endpoint host {host:?} is not a valid TLS server name")]
    InvalidServerName {
        /// The host as given.
        host: String,
    },
    /// The TCP connection failed.
    #[error("TCP connect to {host}:{port} failed: {source}")]
    Connect {
        /// Host connected to.
        host: String,
        /// Port connected to.
        port: u16,
        /// Why it failed.
        source: io::Error,
    },
    /// The TLS handshake failed (e.g. the server's certificate is not trusted, or the
    /// server refused ours).
    #[error("TLS handshake with {host}:{port} failed: {source}")]
    Handshake {
        /// Host connected to.
        host: String,
        /// Port connected to.
        port: u16,
        /// Why it failed.
        source: io::Error,
    },
}

/// The end-entity certificate a peer presented in the TLS handshake. Cheap to clone.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerCertificate(pub Arc<CertificateDer<'static>>);

/// What tonic puts into the extensions of every request received over a [`TlsConn`].
#[derive(Clone, Debug)]
pub struct TlsConnectInfo {
    /// Address of the peer.
    pub remote_addr: Option<SocketAddr>,
    /// Local address the connection was accepted on.
    pub local_addr: Option<SocketAddr>,
    /// The peer's end-entity certificate; `None` if the server config did not ask for one.
    pub peer_certificate: Option<PeerCertificate>,
    /// The whole chain the peer presented, end-entity first, then intermediates as sent;
    /// empty if it presented none. Kept for verifiers that defer chain validation to the
    /// request (the trusted roots depend on who the peer claims to be).
    pub peer_chain: Arc<[CertificateDer<'static>]>,
}

/// The [`TlsConnectInfo`] of the connection `request` arrived on, if it came over a
/// [`TlsConn`].
pub fn connect_info<T>(request: &tonic::Request<T>) -> Option<&TlsConnectInfo> {
    request.extensions().get::<TlsConnectInfo>()
}

/// The certificate the peer that sent `request` presented, if any.
pub fn peer_certificate<T>(request: &tonic::Request<T>) -> Option<&PeerCertificate> {
    connect_info(request).and_then(|info| info.peer_certificate.as_ref())
}

/// The whole certificate chain the peer that sent `request` presented (end-entity first);
/// empty if none, or if the request did not come over a [`TlsConn`].
pub fn peer_chain<T>(request: &tonic::Request<T>) -> &[CertificateDer<'static>] {
    connect_info(request).map_or(&[], |info| &info.peer_chain)
}

/// An accepted, handshaken server-side TLS connection. Counts against its source's
/// connection cap until dropped.
pub struct TlsConn {
    /// The TLS stream.
    stream: tokio_rustls::server::TlsStream<TcpStream>,
    /// Computed once at the handshake, cloned into every request.
    info: TlsConnectInfo,
    /// This connection's place in the listener's counts; released on drop.
    _slot: Slot,
}

/// Stream of handshaken connections on a listener; see [`incoming`] and the
/// [module documentation](self#connection-exhaustion) for its limits.
pub struct TlsIncoming {
    /// The listening socket; closed when this stream is dropped.
    listener: TcpListener,
    /// Performs server handshakes with the (ALPN-adjusted) server config.
    acceptor: tokio_rustls::TlsAcceptor,
    /// Limit on each handshake.
    handshake_timeout: Duration,
    /// Handshakes in progress (from all sources) at which the oldest is evicted.
    max_pending: usize,
    /// Handshakes in progress one source may have.
    max_pending_per_source: usize,
    /// Connections (handshaking or established) one source may have.
    max_connections_per_source: usize,
    /// Established connections all sources may have.
    max_connections: usize,
    /// Counts per source, shared with the connections; and the metrics.
    shared: Arc<Shared>,
    /// Handshakes in progress; each resolves to its id and a connection, or `None` if it
    /// failed, timed out or was evicted.
    handshakes: FuturesUnordered<Handshake>,
    /// Abort handles of the handshakes in progress by id; the first is the oldest.
    pending: BTreeMap<u64, AbortHandle>,
    /// Id of the next handshake.
    next_id: u64,
    /// Set after an accept error: no accepts until it fires.
    accept_pause: Option<Pin<Box<tokio::time::Sleep>>>,
}

/// A handshake in progress: resolves to its id and its connection, if it succeeded.
type Handshake = Pin<Box<dyn Future<Output = (u64, Option<TlsConn>)> + Send>>;

/// Counters and gauges of one [`TlsIncoming`]. Cheap to clone: every field is shared.
/// Register them with [`IncomingMetrics::register`], or pass pre-registered ones to
/// [`TlsIncoming::with_metrics`].
#[derive(Clone, Debug, Default)]
pub struct IncomingMetrics {
    /// Connections closed at accept: their source had too many handshakes in progress.
    pub refused_source_handshakes: Counter,
    /// Connections closed at accept: their source had too many connections.
    pub refused_source_connections: Counter,
    /// Connections closed at accept or after the handshake: the listener had too many
    /// established connections.
    pub refused_connections: Counter,
    /// Handshakes dropped to make room for a new connection (the oldest in progress).
    pub evicted_handshakes: Counter,
    /// Handshakes not completed in time.
    pub timed_out_handshakes: Counter,
    /// Handshakes that failed (bad certificate, not TLS, peer gone).
    pub failed_handshakes: Counter,
    /// Handshakes in progress.
    pub pending_handshakes: Gauge,
    /// Established connections not yet dropped.
    pub connections: Gauge,
}

/// What [`TlsIncoming`] shares with its handshakes and connections.
#[derive(Default)]
struct Shared {
    /// Who holds what.
    occupancy: Mutex<Occupancy>,
    /// Counted as things happen.
    metrics: IncomingMetrics,
}

/// Connections held, per source and in all.
#[derive(Default)]
struct Occupancy {
    /// Per source ([`source_of`]); entries at zero are removed.
    sources: HashMap<IpAddr, SourceCount>,
    /// Established connections of all sources.
    connections: usize,
}

/// Connections held by one source.
#[derive(Clone, Copy, Default)]
struct SourceCount {
    /// Handshakes in progress.
    handshaking: usize,
    /// Established connections.
    connected: usize,
}

/// One connection's place in an [`Occupancy`], handshaking or connected; released on drop.
struct Slot {
    shared: Arc<Shared>,
    source: IpAddr,
    connected: bool,
}

/// Why a connection was closed as soon as it was accepted.
#[derive(Debug)]
enum Refusal {
    /// Its source had too many handshakes in progress.
    SourceHandshakes,
    /// Its source had too many connections.
    SourceConnections,
    /// The listener had too many established connections.
    Connections,
}

/// Connector for [`tonic::transport::Endpoint::connect_with_connector`] that dials TCP
/// and performs a client TLS handshake, verifying the server as the endpoint's host.
#[derive(Clone)]
pub struct TlsConnector {
    /// Client configuration with ALPN `h2`.
    config: Arc<rustls::ClientConfig>,
}

/// Accepts connections on `listener` and performs TLS handshakes with `config`,
/// concurrently: a slow or failed handshake never holds up other connections, and
/// accepting never stops (see the [module documentation](self#connection-exhaustion)).
/// Failed, timed-out, evicted and refused connections are logged at debug, counted and
/// dropped; they never end the stream. An `accept` error is yielded (tonic logs and skips
/// it) and pauses accepting briefly.
///
/// ALPN `h2` is added to `config` if missing.
pub fn incoming(listener: TcpListener, config: Arc<rustls::ServerConfig>) -> TlsIncoming {
    let config = if config.alpn_protocols.iter().any(|p| p == ALPN_H2) {
        config
    } else {
        let mut config = (*config).clone();
        config.alpn_protocols = vec![ALPN_H2.to_vec()];
        Arc::new(config)
    };
    TlsIncoming {
        listener,
        acceptor: tokio_rustls::TlsAcceptor::from(config),
        handshake_timeout: HANDSHAKE_TIMEOUT,
        max_pending: MAX_PENDING_HANDSHAKES,
        max_pending_per_source: MAX_PENDING_HANDSHAKES_PER_SOURCE,
        max_connections_per_source: usize::MAX,
        max_connections: usize::MAX,
        shared: Arc::default(),
        handshakes: FuturesUnordered::new(),
        pending: BTreeMap::new(),
        next_id: 0,
        accept_pause: None,
    }
}

/// Builds a [`TlsConnector`] from `config`, adding ALPN `h2` if missing.
pub fn connector(config: Arc<rustls::ClientConfig>) -> TlsConnector {
    TlsConnector::new(config)
}

// === impl PeerCertificate ===

impl PeerCertificate {
    /// The DER encoding of the certificate.
    pub fn der(&self) -> &CertificateDer<'static> {
        &self.0
    }
}

impl AsRef<[u8]> for PeerCertificate {
    fn as_ref(&self) -> &[u8] {
        self.0.as_ref()
    }
}

// === impl TlsConn ===

impl TlsConn {
    /// What is known about the peer of this connection.
    pub fn info(&self) -> &TlsConnectInfo {
        &self.info
    }

    /// The underlying TLS stream.
    pub fn get_ref(&self) -> &tokio_rustls::server::TlsStream<TcpStream> {
        &self.stream
    }
}

impl Connected for TlsConn {
    type ConnectInfo = TlsConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.info.clone()
    }
}

impl AsyncRead for TlsConn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsConn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}

// === impl TlsIncoming ===

impl TlsIncoming {
    /// Replaces the [`HANDSHAKE_TIMEOUT`] of every later handshake.
    #[must_use]
    pub fn with_handshake_timeout(mut self, timeout: Duration) -> Self {
        self.handshake_timeout = timeout;
        self
    }

    /// Replaces [`MAX_PENDING_HANDSHAKES`]: at `max` handshakes in progress from all
    /// sources, a new connection evicts the oldest. At least 1.
    #[must_use]
    pub fn with_max_pending_handshakes(mut self, max: usize) -> Self {
        self.max_pending = max.max(1);
        self
    }

    /// Replaces [`MAX_PENDING_HANDSHAKES_PER_SOURCE`]: a source with `max` handshakes in
    /// progress has its next connections closed at once. At least 1.
    #[must_use]
    pub fn with_max_pending_handshakes_per_source(mut self, max: usize) -> Self {
        self.max_pending_per_source = max.max(1);
        self
    }

    /// Caps the connections (handshaking or established) of one source at `max` (at
    /// least 1): its next connections are closed at once.
    ///
    /// There is no cap by default: this listener cannot tell one host from a NAT in front
    /// of many, and one address may legitimately hold many connections (in the tests and
    /// benchmarks every member, replica and agent connects from 127.0.0.1: up to 1,000
    /// members, 16 of them working at once, each with its own connection, next to the
    /// benchmark's pools and the chaos suite's proxies). The server sets a cap that fits
    /// its port.
    #[must_use]
    pub fn with_max_connections_per_source(mut self, max: usize) -> Self {
        self.max_connections_per_source = max.max(1);
        self
    }

    /// Caps the established connections of all sources at `max` (at least 1): beyond it
    /// new connections are closed at once, before their handshake, or right after it if
    /// the cap was reached meanwhile. No cap by default.
    #[must_use]
    pub fn with_max_connections(mut self, max: usize) -> Self {
        self.max_connections = max.max(1);
        self
    }

    /// Counts into `metrics` (e.g. already registered) instead of metrics of its own.
    /// Call it before the stream is first polled.
    #[must_use]
    pub fn with_metrics(mut self, metrics: IncomingMetrics) -> Self {
        self.shared = Arc::new(Shared { occupancy: Mutex::default(), metrics });
        self
    }

    /// The metrics this stream counts into (shared: they keep counting).
    pub fn metrics(&self) -> IncomingMetrics {
        self.shared.metrics.clone()
    }

    /// The address the listener is bound to.
    ///
    /// # Errors
    /// The socket's address could not be read.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Takes an accepted TCP connection: closes it if its source or the listener is over
    /// a cap, else starts its handshake, evicting the oldest one in progress if there are
    /// too many.
    fn admit(&mut self, tcp: TcpStream, remote_addr: SocketAddr) {
        let slot = match self.reserve(source_of(remote_addr)) {
            Ok(slot) => slot,
            Err(refusal) => {
                let metrics = &self.shared.metrics;
                match refusal {
                    Refusal::SourceHandshakes => metrics.refused_source_handshakes.inc(),
                    Refusal::SourceConnections => metrics.refused_source_connections.inc(),
                    Refusal::Connections => metrics.refused_connections.inc(),
                };
                tracing::debug!(%remote_addr, ?refusal, "connection refused");
                return; // Dropping `tcp` closes it.
            }
        };
        if self.pending.len() >= self.max_pending
            && let Some((_, oldest)) = self.pending.pop_first()
        {
            // Resolves at its next poll, which drops its connection and its slot.
            oldest.abort();
            self.shared.metrics.evicted_handshakes.inc();
            tracing::debug!(%remote_addr, "too many TLS handshakes: the oldest was dropped");
        }
        let id = self.next_id;
        self.next_id += 1;
        let handshake = handshake(
            self.acceptor.clone(),
            tcp,
            remote_addr,
            self.handshake_timeout,
            slot,
            self.max_connections,
        );
        let (handshake, abort) = abortable(handshake);
        self.pending.insert(id, abort);
        self.handshakes.push(Box::pin(handshake.map(move |done| (id, done.ok().flatten()))));
    }

    /// A handshaking slot for a connection from `source`, unless a cap refuses it.
    fn reserve(&self, source: IpAddr) -> Result<Slot, Refusal> {
        let mut occupancy = self.shared.occupancy.lock();
        if occupancy.connections >= self.max_connections {
            return Err(Refusal::Connections);
        }
        let count = occupancy.sources.entry(source).or_default();
        if count.handshaking >= self.max_pending_per_source {
            return Err(Refusal::SourceHandshakes);
        }
        if count.handshaking + count.connected >= self.max_connections_per_source {
            return Err(Refusal::SourceConnections);
        }
        count.handshaking += 1;
        self.shared.metrics.pending_handshakes.inc();
        Ok(Slot { shared: Arc::clone(&self.shared), source, connected: false })
    }

    /// Accepts and admits up to [`ACCEPT_BATCH`] connections; `Ok(true)` if more may be
    /// waiting (no `Pending` was seen, so no wake-up is registered).
    fn accept_batch(&mut self, cx: &mut Context<'_>) -> Result<bool, io::Error> {
        for _ in 0..ACCEPT_BATCH {
            match self.listener.poll_accept(cx) {
                Poll::Ready(Ok((tcp, remote_addr))) => self.admit(tcp, remote_addr),
                Poll::Ready(Err(error)) => return Err(error),
                Poll::Pending => return Ok(false),
            }
        }
        Ok(true)
    }
}

/// Performs the server handshake of `tcp` within `timeout`, then takes a connected slot.
async fn handshake(
    acceptor: tokio_rustls::TlsAcceptor,
    tcp: TcpStream,
    remote_addr: SocketAddr,
    timeout: Duration,
    slot: Slot,
    max_connections: usize,
) -> Option<TlsConn> {
    let metrics = &slot.shared.metrics;
    let local_addr = tcp.local_addr().ok();
    if let Err(error) = tcp.set_nodelay(true) {
        tracing::debug!(%error, %remote_addr, "failed to set TCP_NODELAY");
    }
    let stream = match tokio::time::timeout(timeout, acceptor.accept(tcp)).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(error)) => {
            metrics.failed_handshakes.inc();
            tracing::debug!(%error, %remote_addr, "TLS handshake failed");
            return None;
        }
        Err(_) => {
            metrics.timed_out_handshakes.inc();
            tracing::debug!(%remote_addr, ?timeout, "TLS handshake timed out");
            return None;
        }
    };
    let slot = match slot.connect(max_connections) {
        Ok(slot) => slot,
        Err(slot) => {
            slot.shared.metrics.refused_connections.inc();
            tracing::debug!(%remote_addr, "too many connections: refused after the handshake");
            return None;
        }
    };
    let peer_chain: Arc<[CertificateDer<'static>]> = stream
        .get_ref()
        .1
        .peer_certificates()
        .map(|chain| chain.iter().map(|cert| cert.clone().into_owned()).collect())
        .unwrap_or_default();
    let peer_certificate = peer_chain.first().map(|cert| PeerCertificate(Arc::new(cert.clone())));
    let info =
        TlsConnectInfo { remote_addr: Some(remote_addr), local_addr, peer_certificate, peer_chain };
    Some(TlsConn { stream, info, _slot: slot })
}

/// What the caps count `addr` as: its IPv4 address (also when mapped into IPv6), or its
/// IPv6 /64, the least a single host or site is given.
fn source_of(addr: SocketAddr) -> IpAddr {
    match addr.ip().to_canonical() {
        IpAddr::V6(ip) => {
            let s = ip.segments();
            IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
        }
        ip @ IpAddr::V4(_) => ip,
    }
}

impl Stream for TlsIncoming {
    type Item = Result<TlsConn, io::Error>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        loop {
            if let Some(pause) = &mut this.accept_pause
                && pause.as_mut().poll(cx).is_ready()
            {
                this.accept_pause = None;
            }
            let mut more_to_accept = false;
            if this.accept_pause.is_none() {
                match this.accept_batch(cx) {
                    Ok(more) => more_to_accept = more,
                    Err(error) => {
                        tracing::warn!(%error, "failed to accept a connection");
                        let mut pause = Box::pin(tokio::time::sleep(ACCEPT_ERROR_PAUSE));
                        // Registers the waker; a fresh sleep is pending.
                        let _ = pause.as_mut().poll(cx);
                        this.accept_pause = Some(pause);
                        return Poll::Ready(Some(Err(error)));
                    }
                }
            }
            match this.handshakes.poll_next_unpin(cx) {
                Poll::Ready(Some((id, conn))) => {
                    this.pending.remove(&id);
                    if let Some(conn) = conn {
                        return Poll::Ready(Some(Ok(conn)));
                    }
                    // Failed, timed out or evicted: go round.
                }
                Poll::Ready(None) | Poll::Pending => {
                    if more_to_accept {
                        // The listener registered no wake-up: come back after others ran.
                        cx.waker().wake_by_ref();
                    }
                    return Poll::Pending;
                }
            }
        }
    }
}

// === impl IncomingMetrics ===

impl IncomingMetrics {
    /// Registers every metric under the `tls_` prefix of `registry` (give it a
    /// sub-registry that names the port).
    pub fn register(&self, registry: &mut Registry) {
        let r = registry.sub_registry_with_prefix("tls");
        r.register(
            "refused_source_handshakes",
            "Connections closed at accept: their source had too many TLS handshakes in progress",
            self.refused_source_handshakes.clone(),
        );
        r.register(
            "refused_source_connections",
            "Connections closed at accept: their source had too many connections",
            self.refused_source_connections.clone(),
        );
        r.register(
            "refused_connections",
            "Connections closed: the listener had too many established connections",
            self.refused_connections.clone(),
        );
        r.register(
            "evicted_handshakes",
            "TLS handshakes dropped to make room for a new connection (the oldest in progress)",
            self.evicted_handshakes.clone(),
        );
        r.register(
            "timed_out_handshakes",
            "TLS handshakes not completed in time",
            self.timed_out_handshakes.clone(),
        );
        r.register(
            "failed_handshakes",
            "TLS handshakes that failed",
            self.failed_handshakes.clone(),
        );
        r.register(
            "pending_handshakes",
            "TLS handshakes in progress",
            self.pending_handshakes.clone(),
        );
        r.register("connections", "Established TLS connections", self.connections.clone());
    }
}

// === impl Slot ===

impl Slot {
    /// Turns a handshaking slot into a connected one, unless the listener already has
    /// `max_connections` (then the slot comes back, to be dropped).
    fn connect(mut self, max_connections: usize) -> Result<Self, Self> {
        let shared = Arc::clone(&self.shared);
        let mut occupancy = shared.occupancy.lock();
        if occupancy.connections >= max_connections {
            drop(occupancy);
            return Err(self);
        }
        occupancy.connections += 1;
        if let Some(count) = occupancy.sources.get_mut(&self.source) {
            count.handshaking -= 1;
            count.connected += 1;
        }
        self.connected = true;
        shared.metrics.pending_handshakes.dec();
        shared.metrics.connections.inc();
        drop(occupancy);
        Ok(self)
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let metrics = &self.shared.metrics;
        let mut occupancy = self.shared.occupancy.lock();
        if self.connected {
            occupancy.connections -= 1;
            metrics.connections.dec();
        } else {
            metrics.pending_handshakes.dec();
        }
        if let Entry::Occupied(mut entry) = occupancy.sources.entry(self.source) {
            let count = entry.get_mut();
            if self.connected {
                count.connected -= 1;
            } else {
                count.handshaking -= 1;
            }
            if count.handshaking == 0 && count.connected == 0 {
                entry.remove();
            }
        }
    }
}

// === impl TlsConnector ===

impl TlsConnector {
    /// Builds a connector from `config`, adding ALPN `h2` if missing.
    pub fn new(config: Arc<rustls::ClientConfig>) -> Self {
        let config = if config.alpn_protocols.iter().any(|p| p == ALPN_H2) {
            config
        } else {
            let mut config = (*config).clone();
            config.alpn_protocols = vec![ALPN_H2.to_vec()];
            Arc::new(config)
        };
        Self { config }
    }

    /// Dials `uri`'s host and port and performs the TLS handshake, verifying the server
    /// certificate against the host (a DNS name or an IP address).
    ///
    /// # Errors
    /// The URI has no usable host, or the TCP connection or the handshake failed.
    pub async fn connect(
        &self,
        uri: &http::Uri,
    ) -> Result<tokio_rustls::client::TlsStream<TcpStream>, TlsError> {
        let host = uri.host().ok_or_else(|| TlsError::MissingHost { uri: uri.to_string() })?;
        // IPv6 literals keep their brackets in a URI's host.
        let host = host.trim_start_matches('[').trim_end_matches(']').to_string();
        let port = uri.port_u16().unwrap_or(match uri.scheme_str() {
            Some("http") => 80,
            _ => 443,
        });
        let server_name = ServerName::try_from(host.clone())
            .map_err(|_| TlsError::InvalidServerName { host: host.clone() })?;
        let tcp = TcpStream::connect((host.as_str(), port))
            .await
            .map_err(|source| TlsError::Connect { host: host.clone(), port, source })?;
        if let Err(error) = tcp.set_nodelay(true) {
            tracing::debug!(%error, %host, port, "failed to set TCP_NODELAY");
        }
        tokio_rustls::TlsConnector::from(self.config.clone())
            .connect(server_name, tcp)
            .await
            .map_err(|source| TlsError::Handshake { host, port, source })
    }
}

impl tower::Service<http::Uri> for TlsConnector {
    type Response = TokioIo<tokio_rustls::client::TlsStream<TcpStream>>;
    type Error = TlsError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, TlsError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), TlsError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: http::Uri) -> Self::Future {
        let connector = self.clone();
        Box::pin(async move { connector.connect(&uri).await.map(TokioIo::new) })
    }
}
