//! The limits of [`tls::incoming`] against connection exhaustion, with real sockets on
//! loopback: idle sockets from one source do not stall anyone else, a source over its
//! handshake cap has its next connections closed at once, at the global cap the oldest
//! handshake makes room, and the connection caps per source and in all.
//!
//! Sources are distinct 127.0.0.x addresses (client sockets bound before connecting);
//! the legitimate client is 127.0.0.1 with a certificate the server trusts. The server
//! echoes what it reads on every established connection.

mod support;

use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use federator_raft::tls::{self, IncomingMetrics, TlsIncoming};
use futures::StreamExt as _;
use rustls_pki_types::ServerName;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::task::JoinSet;

/// Longest wait for anything expected to happen "at once" (or promptly).
const PROMPTLY: Duration = Duration::from_secs(2);
/// How long a socket expected to stay open is watched.
const STAYS_OPEN: Duration = Duration::from_millis(300);
/// A handshake timeout no test waits for: what is closed was closed by a cap.
const LONG_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(60);

/// `127.0.0.n`.
fn source(n: u8) -> Ipv4Addr {
    Ipv4Addr::new(127, 0, 0, n)
}

/// A [`TlsIncoming`] served by an echo task; everything stops when dropped.
struct Server {
    addr: SocketAddr,
    metrics: IncomingMetrics,
    /// Owns the accept task (which owns the connections' tasks).
    _tasks: JoinSet<()>,
}

impl Server {
    /// Serves `configure(incoming)` with the test PKI on a free port.
    async fn start(pki: &support::Pki, configure: impl FnOnce(TlsIncoming) -> TlsIncoming) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let incoming = configure(
            tls::incoming(listener, pki.server_tls())
                .with_handshake_timeout(LONG_HANDSHAKE_TIMEOUT),
        );
        let addr = incoming.local_addr().expect("local address");
        let metrics = incoming.metrics();
        let mut tasks = JoinSet::new();
        tasks.spawn(async move {
            let mut incoming = incoming;
            let mut connections = JoinSet::new();
            while let Some(conn) = incoming.next().await {
                let Ok(mut conn) = conn else { continue };
                connections.spawn(async move {
                    let mut buf = [0u8; 256];
                    while let Ok(n @ 1..) = conn.read(&mut buf).await {
                        if conn.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                });
                // Reap finished connections so the set does not grow.
                while connections.try_join_next().is_some() {}
            }
        });
        Self { addr, metrics, _tasks: tasks }
    }
}

/// A TCP connection to `addr` from `source`, that sends nothing.
async fn raw_connect(addr: SocketAddr, source: Ipv4Addr) -> TcpStream {
    let socket = TcpSocket::new_v4().expect("socket");
    socket.bind(SocketAddr::new(source.into(), 0)).expect("bind the source address");
    socket.connect(addr).await.expect("TCP connect")
}

/// A TLS connection to `addr` from `source` with a trusted client certificate, checked
/// with one echoed message; fails if the server closes it.
async fn tls_connect(
    pki: &support::Pki,
    addr: SocketAddr,
    source: Ipv4Addr,
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let tcp = raw_connect(addr, source).await;
    let connector = tokio_rustls::TlsConnector::from(pki.client_tls());
    let name = ServerName::IpAddress(Ipv4Addr::LOCALHOST.into());
    let mut tls = connector.connect(name, tcp).await?;
    tls.write_all(b"ping").await?;
    let mut buf = [0u8; 4];
    tls.read_exact(&mut buf).await?;
    assert_eq!(&buf, b"ping");
    Ok(tls)
}

/// [`tls_connect`] that must succeed within [`PROMPTLY`].
async fn tls_connect_promptly(
    pki: &support::Pki,
    addr: SocketAddr,
    source: Ipv4Addr,
) -> tokio_rustls::client::TlsStream<TcpStream> {
    let started = Instant::now();
    let tls = tokio::time::timeout(PROMPTLY, tls_connect(pki, addr, source))
        .await
        .unwrap_or_else(|_| panic!("no TLS connection from {source} within {PROMPTLY:?}"))
        .unwrap_or_else(|e| panic!("TLS connection from {source} failed: {e}"));
    eprintln!("TLS connection from {source} in {:?}", started.elapsed());
    tls
}

/// Whether the server closes `stream` (EOF or reset) within `within`; it must not send
/// anything (it never got a ClientHello).
async fn closed_within(stream: &mut TcpStream, within: Duration) -> bool {
    let mut buf = [0u8; 64];
    match tokio::time::timeout(within, stream.read(&mut buf)).await {
        Ok(Ok(0) | Err(_)) => true,
        Ok(Ok(n)) => panic!("the server sent {n} bytes before any ClientHello"),
        Err(_) => false,
    }
}

/// Waits (bounded by [`PROMPTLY`]) until `condition` holds.
async fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + PROMPTLY;
    while !condition() {
        assert!(Instant::now() < deadline, "not within {PROMPTLY:?}: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundreds_of_idle_sockets_from_one_source_do_not_stall_another() {
    let pki = support::Pki::new();
    let server = Server::start(&pki, |incoming| incoming).await;
    let attacker = source(2);

    // Far more idle sockets than the global handshake cap (256), from one source.
    let mut idle = Vec::new();
    for _ in 0..400 {
        idle.push(raw_connect(server.addr, attacker).await);
    }
    let cap = tls::MAX_PENDING_HANDSHAKES_PER_SOURCE;
    let metrics = &server.metrics;
    wait_until("every idle socket beyond the source's cap is refused", || {
        metrics.refused_source_handshakes.get() == (400 - cap) as u64
    })
    .await;
    assert_eq!(metrics.pending_handshakes.get(), cap as i64);

    let _tls = tls_connect_promptly(&pki, server.addr, Ipv4Addr::LOCALHOST).await;
    assert_eq!(metrics.connections.get(), 1);
    assert_eq!(metrics.evicted_handshakes.get(), 0);
    assert_eq!(metrics.timed_out_handshakes.get(), 0);
    // The source's first sockets still wait in their handshakes; its last were closed.
    assert!(!closed_within(&mut idle[0], STAYS_OPEN).await, "a pending handshake was dropped");
    assert!(closed_within(&mut idle[399], PROMPTLY).await, "a refused socket stayed open");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_source_over_its_handshake_cap_is_closed_at_once() {
    let pki = support::Pki::new();
    let server =
        Server::start(&pki, |incoming| incoming.with_max_pending_handshakes_per_source(4)).await;
    let metrics = &server.metrics;

    let mut held = Vec::new();
    for k in 1..=4 {
        held.push(raw_connect(server.addr, source(3)).await);
        wait_until("the handshake is pending", || metrics.pending_handshakes.get() == k).await;
    }
    let mut extra = raw_connect(server.addr, source(3)).await;
    assert!(closed_within(&mut extra, PROMPTLY).await, "the fifth connection stayed open");
    assert_eq!(metrics.refused_source_handshakes.get(), 1);

    // Other sources are not affected.
    let mut other = raw_connect(server.addr, source(4)).await;
    wait_until("another source's handshake is pending", || metrics.pending_handshakes.get() == 5)
        .await;
    assert!(!closed_within(&mut other, STAYS_OPEN).await, "another source was refused");
    for socket in &mut held {
        assert!(!closed_within(socket, Duration::from_millis(20)).await);
    }
    let _tls = tls_connect_promptly(&pki, server.addr, Ipv4Addr::LOCALHOST).await;
    assert_eq!(metrics.refused_source_handshakes.get(), 1);

    // Once one of its handshakes ends, the source may connect again.
    drop(held.pop());
    wait_until("the closed handshake is released", || metrics.pending_handshakes.get() == 4).await;
    let mut again = raw_connect(server.addr, source(3)).await;
    assert!(!closed_within(&mut again, STAYS_OPEN).await, "a source under its cap was refused");
    assert_eq!(metrics.refused_source_handshakes.get(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_the_global_cap_the_oldest_handshake_makes_room() {
    let pki = support::Pki::new();
    let server = Server::start(&pki, |incoming| {
        incoming.with_max_pending_handshakes(8).with_max_pending_handshakes_per_source(2)
    })
    .await;
    let metrics = &server.metrics;

    // Eight stalled handshakes from four sources, in a known order.
    let mut stalled = Vec::new();
    for k in 0..8u8 {
        stalled.push(raw_connect(server.addr, source(10 + k / 2)).await);
        let expected = i64::from(k) + 1;
        wait_until("the handshake is pending", || metrics.pending_handshakes.get() == expected)
            .await;
    }

    // A legitimate client still gets through; the oldest stalled handshake is gone.
    let _tls = tls_connect_promptly(&pki, server.addr, Ipv4Addr::LOCALHOST).await;
    assert_eq!(metrics.evicted_handshakes.get(), 1);
    assert!(closed_within(&mut stalled[0], PROMPTLY).await, "the oldest handshake stayed");
    for socket in &mut stalled[1..] {
        assert!(!closed_within(socket, Duration::from_millis(20)).await, "a newer one was dropped");
    }

    // Back at the cap, a new stalled connection evicts the next oldest, never itself.
    let mut refill = raw_connect(server.addr, source(20)).await;
    wait_until("the cap is reached again", || metrics.pending_handshakes.get() == 8).await;
    assert_eq!(metrics.evicted_handshakes.get(), 1);
    let mut newest = raw_connect(server.addr, source(21)).await;
    wait_until("the next oldest is evicted", || metrics.evicted_handshakes.get() == 2).await;
    assert!(closed_within(&mut stalled[1], PROMPTLY).await, "the next oldest stayed");
    assert!(!closed_within(&mut refill, STAYS_OPEN).await, "a newer one was dropped");
    assert!(!closed_within(&mut newest, Duration::from_millis(20)).await, "the newest was dropped");
    assert_eq!(metrics.refused_source_handshakes.get(), 0);
    wait_until("eight handshakes pending", || metrics.pending_handshakes.get() == 8).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_are_capped_per_source_and_in_all() {
    let pki = support::Pki::new();
    let server = Server::start(&pki, |incoming| {
        incoming.with_max_connections_per_source(2).with_max_connections(3)
    })
    .await;
    let metrics = &server.metrics;
    let addr = server.addr;

    // Per source: two established connections, the third is closed at once, before
    // any handshake, and so is an idle socket (handshakes count too).
    let first = tls_connect_promptly(&pki, addr, source(5)).await;
    let _second = tls_connect_promptly(&pki, addr, source(5)).await;
    let refused = tokio::time::timeout(PROMPTLY, tls_connect(&pki, addr, source(5)))
        .await
        .expect("the refusal is prompt");
    assert!(refused.is_err(), "a third connection from one source was served");
    let mut idle = raw_connect(addr, source(5)).await;
    assert!(closed_within(&mut idle, PROMPTLY).await, "an idle socket over the cap stayed");
    assert_eq!(metrics.refused_source_connections.get(), 2);
    assert_eq!(metrics.connections.get(), 2);

    // Dropping a connection gives its place back.
    drop(first);
    wait_until("the dropped connection is released", || metrics.connections.get() == 1).await;
    let _third = tls_connect_promptly(&pki, addr, source(5)).await;

    // In all: three established; the next source is refused too.
    let _fourth = tls_connect_promptly(&pki, addr, source(6)).await;
    let refused = tokio::time::timeout(PROMPTLY, tls_connect(&pki, addr, source(7)))
        .await
        .expect("the refusal is prompt");
    assert!(refused.is_err(), "a connection over the listener's cap was served");
    assert_eq!(metrics.refused_connections.get(), 1);
    assert_eq!(metrics.connections.get(), 3);
    assert_eq!(metrics.pending_handshakes.get(), 0);
}

/// The metrics can be made, registered and handed in beforehand.
#[tokio::test]
async fn metrics_given_beforehand_are_counted_into() {
    let pki = support::Pki::new();
    let metrics = IncomingMetrics::default();
    let mut registry = prometheus_client::registry::Registry::default();
    metrics.register(registry.sub_registry_with_prefix("api"));
    let given = metrics.clone();
    let server = Server::start(&pki, move |incoming| {
        incoming.with_metrics(given).with_max_pending_handshakes_per_source(1)
    })
    .await;
    let _held = raw_connect(server.addr, source(8)).await;
    let mut refused = raw_connect(server.addr, source(8)).await;
    assert!(closed_within(&mut refused, PROMPTLY).await);
    assert_eq!(metrics.refused_source_handshakes.get(), 1);
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).expect("encode");
    assert!(text.contains("api_tls_refused_source_handshakes_total 1"), "{text}");
    assert!(text.contains("api_tls_pending_handshakes 1"), "{text}");
}
