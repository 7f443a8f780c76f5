//! A fault-injecting TCP proxy for one directed link.
//!
//! A [`Proxy`] listens on loopback and forwards every accepted connection to a target. It is a
//! byte pipe, so TLS passes through untouched. The current [`Faults`] apply live to new and
//! existing connections alike; [`Proxy::heal`] clears them.
//!
//! Each direction of a connection is a reader that stamps every chunk it reads with a due time
//! (read time plus the sampled latency, never earlier than the previous chunk's, so order is
//! preserved) and a writer that delivers chunks once due, paced by the bandwidth cap, and only
//! while the link is neither stalled nor blackholed.
//!
//! Blackhole model: bytes reaching the writer of a blackholed direction are discarded (the
//! sender's writes still succeed and the connection stays open; an end of stream is held back).
//! When that direction is healed, every connection that lost bytes is reset in both directions:
//! TCP cannot resume a stream with a hole in it, so a broken stream is what the peers of a real
//! partition end up seeing. Connections that lost nothing carry on. A stall, by contrast, loses
//! nothing: held bytes flow again when it is lifted.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{ReadHalf, WriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::{Instant, sleep, sleep_until, timeout};

/// Largest chunk read from one side at a time.
const CHUNK: usize = 16 * 1024;
/// Chunks in flight per direction (read but not yet delivered).
const QUEUE: usize = 64;
/// How long a new connection waits for the target to accept it.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// One direction of a proxied connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Direction {
    /// From the connecting client to the target.
    ClientToServer,
    /// From the target back to the client.
    ServerToClient,
}

/// Delay added to every chunk: `mean` ± a uniformly distributed `jitter` (floored at zero).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Latency {
    /// Average delay.
    pub mean: Duration,
    /// Maximum deviation from `mean`, either way.
    pub jitter: Duration,
}

impl Latency {
    fn sample(self, rng: &SplitMix) -> Duration {
        let span = u64::try_from(self.jitter.as_nanos()).unwrap_or(u64::MAX / 2).saturating_mul(2);
        let offset = match span {
            0 => 0,
            _ => rng.next() % span.saturating_add(1),
        };
        (self.mean + Duration::from_nanos(offset)).saturating_sub(self.jitter)
    }
}

/// Directions whose bytes are swallowed. Both set is a full partition, one an asymmetric one.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Blackhole {
    /// Swallow client-to-server bytes.
    pub c2s: bool,
    /// Swallow server-to-client bytes.
    pub s2c: bool,
}

impl Blackhole {
    /// Both directions: a full partition.
    pub const BOTH: Self = Self { c2s: true, s2c: true };

    /// Whether bytes travelling in `dir` are swallowed.
    pub fn blocks(self, dir: Direction) -> bool {
        match dir {
            Direction::ClientToServer => self.c2s,
            Direction::ServerToClient => self.s2c,
        }
    }
}

/// The faults a [`Proxy`] applies; the default is a healthy link.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Faults {
    /// Delay every chunk, in both directions.
    pub latency: Option<Latency>,
    /// Cap each direction at this many bytes per second (`0` counts as 1).
    pub bandwidth: Option<u64>,
    /// Swallow bytes; see the module docs for what happens on heal.
    pub blackhole: Blackhole,
    /// Accept new connections and reset them at once; existing ones are untouched.
    pub refuse: bool,
    /// Move no bytes in either direction but keep connections open; nothing is lost.
    pub stall: bool,
}

/// A snapshot of a proxy's counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Connections accepted from clients, refused ones included.
    pub accepted: u64,
    /// Connections currently being proxied.
    pub open: u64,
    /// Connections reset at once because [`Faults::refuse`] was set.
    pub refused: u64,
    /// Connections the proxy broke: by [`Proxy::drop_connections`] or a healed blackhole.
    pub dropped: u64,
    /// Bytes delivered to the target.
    pub bytes_c2s: u64,
    /// Bytes delivered to clients.
    pub bytes_s2c: u64,
}

impl Stats {
    /// Bytes delivered in `dir`.
    pub fn bytes(&self, dir: Direction) -> u64 {
        match dir {
            Direction::ClientToServer => self.bytes_c2s,
            Direction::ServerToClient => self.bytes_s2c,
        }
    }
}

/// A fault-injecting TCP proxy on one directed link; dropping it stops it.
pub struct Proxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    accept: JoinHandle<()>,
}

impl Proxy {
    /// Starts a proxy on an ephemeral `127.0.0.1` port forwarding to `target`; `seed` drives
    /// the jitter. Must be called within a Tokio runtime.
    pub fn start(target: SocketAddr, seed: u64) -> io::Result<Self> {
        Self::start_on(SocketAddr::from(([127, 0, 0, 1], 0)), target, seed)
    }

    /// Starts a proxy listening on `listen` forwarding to `target`; `seed` drives the jitter.
    /// Must be called within a Tokio runtime.
    pub fn start_on(listen: SocketAddr, target: SocketAddr, seed: u64) -> io::Result<Self> {
        let listener = std::net::TcpListener::bind(listen)?;
        listener.set_nonblocking(true)?;
        let listener = TcpListener::from_std(listener)?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            target: watch::Sender::new(target),
            faults: watch::Sender::new(Faults::default()),
            kill: watch::Sender::new(0),
            counters: Counters::default(),
            rng: SplitMix(AtomicU64::new(seed)),
        });
        let accept = tokio::spawn(accept_loop(listener, Arc::clone(&shared)));
        Ok(Self { addr, shared, accept })
    }

    /// The address clients connect to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Where new connections are forwarded.
    pub fn target(&self) -> SocketAddr {
        *self.shared.target.borrow()
    }

    /// Forwards new connections to `target` (existing ones keep their server).
    pub fn set_target(&self, target: SocketAddr) {
        self.shared.target.send_replace(target);
    }

    /// The faults currently applied.
    pub fn faults(&self) -> Faults {
        *self.shared.faults.borrow()
    }

    /// Applies `faults` to new and existing connections.
    pub fn set_faults(&self, faults: Faults) {
        self.shared.faults.send_replace(faults);
    }

    /// Clears every fault (`Faults::default()`).
    pub fn heal(&self) {
        self.set_faults(Faults::default());
    }

    /// Resets every current connection (RST to both peers).
    pub fn drop_connections(&self) {
        self.shared.kill.send_modify(|generation| *generation += 1);
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> Stats {
        let c = &self.shared.counters;
        Stats {
            accepted: c.accepted.load(Relaxed),
            open: c.open.load(Relaxed),
            refused: c.refused.load(Relaxed),
            dropped: c.dropped.load(Relaxed),
            bytes_c2s: c.bytes[0].load(Relaxed),
            bytes_s2c: c.bytes[1].load(Relaxed),
        }
    }

    /// Stops listening and closes every connection (shortly: the tasks are aborted).
    pub fn stop(&self) {
        self.accept.abort();
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop();
    }
}

struct Shared {
    target: watch::Sender<SocketAddr>,
    faults: watch::Sender<Faults>,
    /// Bumped by [`Proxy::drop_connections`].
    kill: watch::Sender<u64>,
    counters: Counters,
    rng: SplitMix,
}

#[derive(Default)]
struct Counters {
    accepted: AtomicU64,
    open: AtomicU64,
    refused: AtomicU64,
    dropped: AtomicU64,
    /// Indexed by `Direction as usize`.
    bytes: [AtomicU64; 2],
}

/// SplitMix64 with an atomic state: deterministic for a seed, though the order in which
/// concurrent connections draw from it depends on scheduling.
struct SplitMix(AtomicU64);

impl SplitMix {
    fn next(&self) -> u64 {
        const GAMMA: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut z = self.0.fetch_add(GAMMA, Relaxed).wrapping_add(GAMMA);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

/// Decrements the open-connection count however the connection task ends.
struct OpenGuard<'a>(&'a AtomicU64);

impl Drop for OpenGuard<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Relaxed);
    }
}

/// Closes `stream` with an RST once dropped (best effort).
fn reset(stream: &TcpStream) {
    let _ = stream.set_zero_linger();
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    // Dropping this set (when the task is aborted) aborts every connection task.
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((client, _)) = accepted else {
                    // E.g. out of file descriptors: back off instead of spinning.
                    sleep(Duration::from_millis(10)).await;
                    continue;
                };
                shared.counters.accepted.fetch_add(1, Relaxed);
                if shared.faults.borrow().refuse {
                    shared.counters.refused.fetch_add(1, Relaxed);
                    reset(&client);
                    continue;
                }
                shared.counters.open.fetch_add(1, Relaxed);
                let kill = shared.kill.subscribe();
                conns.spawn(serve(client, Arc::clone(&shared), kill));
            }
            Some(_) = conns.join_next() => {}
        }
    }
}

async fn serve(mut client: TcpStream, shared: Arc<Shared>, mut kill: watch::Receiver<u64>) {
    let counters = &shared.counters;
    let _open = OpenGuard(&counters.open);
    let target = *shared.target.borrow();
    let server = tokio::select! {
        server = timeout(CONNECT_TIMEOUT, TcpStream::connect(target)) => server.ok().and_then(Result::ok),
        _ = kill.changed() => {
            counters.dropped.fetch_add(1, Relaxed);
            None
        }
    };
    let Some(mut server) = server else {
        reset(&client);
        return;
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);

    let tainted = [AtomicBool::new(false), AtomicBool::new(false)];
    let clean = {
        let (client_rx, client_tx) = client.split();
        let (server_rx, server_tx) = server.split();
        let pipes = async {
            tokio::try_join!(
                pipe(client_rx, server_tx, Direction::ClientToServer, &shared, &tainted),
                pipe(server_rx, client_tx, Direction::ServerToClient, &shared, &tainted),
            )
        };
        let mut faults = shared.faults.subscribe();
        let healed = faults.wait_for(|f| {
            [Direction::ClientToServer, Direction::ServerToClient]
                .into_iter()
                .any(|dir| tainted[dir as usize].load(Relaxed) && !f.blackhole.blocks(dir))
        });
        tokio::select! {
            done = pipes => done.is_ok(),
            _ = kill.changed() => {
                counters.dropped.fetch_add(1, Relaxed);
                false
            }
            _ = healed => {
                counters.dropped.fetch_add(1, Relaxed);
                false
            }
        }
    };
    if !clean {
        reset(&client);
        reset(&server);
    }
}

/// One direction: a reader and a writer joined by a bounded queue. Ends at end of stream
/// (propagated as a shutdown) or on the first error.
async fn pipe(
    from: ReadHalf<'_>,
    to: WriteHalf<'_>,
    dir: Direction,
    shared: &Shared,
    tainted: &[AtomicBool; 2],
) -> io::Result<()> {
    let (tx, rx) = mpsc::channel(QUEUE);
    tokio::try_join!(
        read_side(from, tx, shared),
        write_side(to, rx, dir, shared, &tainted[dir as usize]),
    )
    .map(drop)
}

async fn read_side(
    mut from: ReadHalf<'_>,
    tx: mpsc::Sender<(Instant, Vec<u8>)>,
    shared: &Shared,
) -> io::Result<()> {
    let mut due = Instant::now();
    loop {
        let mut buf = vec![0; CHUNK];
        let n = from.read(&mut buf).await?;
        if n == 0 {
            return Ok(());
        }
        buf.truncate(n);
        let latency = shared.faults.borrow().latency;
        let delay = latency.map_or(Duration::ZERO, |l| l.sample(&shared.rng));
        due = due.max(Instant::now() + delay);
        if tx.send((due, buf)).await.is_err() {
            return Ok(());
        }
    }
}

async fn write_side(
    mut to: WriteHalf<'_>,
    mut rx: mpsc::Receiver<(Instant, Vec<u8>)>,
    dir: Direction,
    shared: &Shared,
    tainted: &AtomicBool,
) -> io::Result<()> {
    let gone = |_| io::Error::from(io::ErrorKind::BrokenPipe);
    let mut faults = shared.faults.subscribe();
    let mut free_at = Instant::now();
    while let Some((due, chunk)) = rx.recv().await {
        sleep_until(due).await;
        let mut rest = chunk.as_slice();
        while !rest.is_empty() {
            let bandwidth = faults.borrow().bandwidth;
            let n = match bandwidth {
                None => rest.len(),
                Some(rate) => {
                    // Pace in pieces of at most 50 ms worth of bytes.
                    let rate = rate.max(1);
                    let piece = usize::try_from(rate / 20).unwrap_or(usize::MAX).max(1);
                    let n = rest.len().min(piece);
                    free_at = free_at.max(Instant::now());
                    sleep_until(free_at).await;
                    free_at += Duration::from_secs_f64(n as f64 / rate as f64);
                    n
                }
            };
            let now = *faults.wait_for(|f| !f.stall).await.map_err(gone)?;
            if now.blackhole.blocks(dir) {
                tainted.store(true, Relaxed);
                break;
            }
            to.write_all(&rest[..n]).await?;
            shared.counters.bytes[dir as usize].fetch_add(n as u64, Relaxed);
            rest = &rest[n..];
        }
    }
    faults.wait_for(|f| !f.stall && !f.blackhole.blocks(dir)).await.map_err(gone)?;
    to.shutdown().await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wait::eventually_every;

    const WAIT: Duration = Duration::from_secs(10);
    /// How long "nothing arrives" is watched for.
    const QUIET: Duration = Duration::from_millis(300);

    /// A loopback echo server that also reports every chunk it receives.
    async fn echo() -> anyhow::Result<(SocketAddr, mpsc::UnboundedReceiver<Vec<u8>>)> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let tx = tx.clone();
                tokio::spawn(async move {
                    let mut buf = vec![0; 64 * 1024];
                    while let Ok(n @ 1..) = stream.read(&mut buf).await {
                        let _ = tx.send(buf[..n].to_vec());
                        if stream.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                });
            }
        });
        Ok((addr, rx))
    }

    async fn round_trip(stream: &mut TcpStream, msg: &[u8]) -> anyhow::Result<Vec<u8>> {
        stream.write_all(msg).await?;
        let mut back = vec![0; msg.len()];
        timeout(WAIT, stream.read_exact(&mut back)).await??;
        Ok(back)
    }

    /// The peer closed or reset the stream within [`WAIT`].
    async fn closed(stream: &mut TcpStream) -> bool {
        let mut buf = [0; 64];
        matches!(timeout(WAIT, stream.read(&mut buf)).await, Ok(Ok(0) | Err(_)))
    }

    /// Nothing arrives for [`QUIET`].
    async fn silent(stream: &mut TcpStream) -> bool {
        let mut buf = [0; 64];
        timeout(QUIET, stream.read(&mut buf)).await.is_err()
    }

    /// Waits at most 5 s for every connection through `proxy` to close (the caller
    /// checks that they did).
    async fn wait_closed(proxy: &Proxy) {
        let closed = || std::future::ready((proxy.stats().open == 0).then_some(()));
        let every = Duration::from_millis(10);
        let _ = eventually_every("connections closed", Duration::from_secs(5), every, closed).await;
    }

    #[tokio::test]
    async fn passes_bytes_unchanged() -> anyhow::Result<()> {
        let (server, _) = echo().await?;
        let proxy = Proxy::start(server, 1)?;
        let rng = SplitMix(AtomicU64::new(7));
        let payload: Vec<u8> = (0..1 << 20).map(|_| rng.next() as u8).collect();
        let stream = TcpStream::connect(proxy.addr()).await?;
        let (mut rx, mut tx) = stream.into_split();
        let sent = payload.clone();
        let writer = tokio::spawn(async move {
            tx.write_all(&sent).await?;
            tx.shutdown().await
        });
        let mut back = Vec::new();
        timeout(WAIT, rx.read_to_end(&mut back)).await??;
        writer.await??;
        assert!(back == payload, "payload corrupted");
        wait_closed(&proxy).await;
        let stats = proxy.stats();
        assert_eq!((stats.bytes_c2s, stats.bytes_s2c), (1 << 20, 1 << 20));
        Ok(())
    }

    #[tokio::test]
    async fn latency_delays_each_direction() -> anyhow::Result<()> {
        let (server, _) = echo().await?;
        let proxy = Proxy::start(server, 2)?;
        let latency =
            Latency { mean: Duration::from_millis(75), jitter: Duration::from_millis(50) };
        proxy.set_faults(Faults { latency: Some(latency), ..Faults::default() });
        let mut stream = TcpStream::connect(proxy.addr()).await?;
        for i in 0..3u8 {
            let start = Instant::now();
            assert_eq!(round_trip(&mut stream, &[i; 10]).await?, [i; 10]);
            assert!(start.elapsed() >= 2 * (latency.mean - latency.jitter));
        }
        Ok(())
    }

    #[tokio::test]
    async fn bandwidth_caps_throughput() -> anyhow::Result<()> {
        const SIZE: usize = 256 * 1024;
        const RATE: u64 = 512 * 1024;
        let (server, _) = echo().await?;
        let proxy = Proxy::start(server, 3)?;
        proxy.set_faults(Faults { bandwidth: Some(RATE), ..Faults::default() });
        let mut stream = TcpStream::connect(proxy.addr()).await?;
        let start = Instant::now();
        assert_eq!(round_trip(&mut stream, &[9; SIZE]).await?, [9; SIZE]);
        let floor = Duration::from_secs_f64(SIZE as f64 / RATE as f64 * 0.8);
        assert!(start.elapsed() >= floor, "{:?} < {floor:?}", start.elapsed());
        Ok(())
    }

    #[tokio::test]
    async fn blackhole_partitions_and_heal_resets() -> anyhow::Result<()> {
        let (server, _) = echo().await?;
        let proxy = Proxy::start(server, 4)?;
        let mut stream = TcpStream::connect(proxy.addr()).await?;
        assert_eq!(round_trip(&mut stream, b"before").await?, b"before");
        proxy.set_faults(Faults { blackhole: Blackhole::BOTH, ..Faults::default() });
        stream.write_all(b"lost").await?;
        assert!(silent(&mut stream).await);
        proxy.heal();
        assert!(closed(&mut stream).await, "lossy connection not reset");
        let mut fresh = TcpStream::connect(proxy.addr()).await?;
        assert_eq!(round_trip(&mut fresh, b"after").await?, b"after");
        assert_eq!(proxy.stats().dropped, 1);
        Ok(())
    }

    #[tokio::test]
    async fn asymmetric_blackhole_swallows_replies_only() -> anyhow::Result<()> {
        let (server, mut received) = echo().await?;
        let proxy = Proxy::start(server, 5)?;
        proxy.set_faults(Faults {
            blackhole: Blackhole { c2s: false, s2c: true },
            ..Faults::default()
        });
        let mut stream = TcpStream::connect(proxy.addr()).await?;
        stream.write_all(b"ping").await?;
        assert_eq!(timeout(WAIT, received.recv()).await?, Some(b"ping".to_vec()));
        assert!(silent(&mut stream).await);
        Ok(())
    }

    #[tokio::test]
    async fn refuse_resets_new_connections_only() -> anyhow::Result<()> {
        let (server, _) = echo().await?;
        let proxy = Proxy::start(server, 6)?;
        let mut existing = TcpStream::connect(proxy.addr()).await?;
        assert_eq!(round_trip(&mut existing, b"x").await?, b"x");
        proxy.set_faults(Faults { refuse: true, ..Faults::default() });
        let mut refused = TcpStream::connect(proxy.addr()).await?;
        assert!(closed(&mut refused).await);
        assert_eq!(round_trip(&mut existing, b"y").await?, b"y");
        let stats = proxy.stats();
        assert_eq!((stats.accepted, stats.refused, stats.open), (2, 1, 1));
        Ok(())
    }

    #[tokio::test]
    async fn stall_holds_bytes_until_heal() -> anyhow::Result<()> {
        let (server, mut received) = echo().await?;
        let proxy = Proxy::start(server, 7)?;
        let mut stream = TcpStream::connect(proxy.addr()).await?;
        proxy.set_faults(Faults { stall: true, ..Faults::default() });
        stream.write_all(b"held").await?;
        assert!(silent(&mut stream).await);
        assert!(received.try_recv().is_err(), "bytes moved during a stall");
        proxy.heal();
        let mut back = [0; 4];
        timeout(WAIT, stream.read_exact(&mut back)).await??;
        assert_eq!(&back, b"held");
        assert_eq!(proxy.stats().dropped, 0);
        Ok(())
    }

    #[tokio::test]
    async fn drop_connections_closes_existing() -> anyhow::Result<()> {
        let (server, _) = echo().await?;
        let proxy = Proxy::start(server, 8)?;
        let mut stream = TcpStream::connect(proxy.addr()).await?;
        assert_eq!(round_trip(&mut stream, b"x").await?, b"x");
        proxy.drop_connections();
        assert!(closed(&mut stream).await);
        let mut fresh = TcpStream::connect(proxy.addr()).await?;
        assert_eq!(round_trip(&mut fresh, b"y").await?, b"y");
        assert_eq!(proxy.stats().dropped, 1);
        Ok(())
    }

    #[tokio::test]
    async fn set_target_switches_new_connections() -> anyhow::Result<()> {
        let (first, mut first_rx) = echo().await?;
        let (second, mut second_rx) = echo().await?;
        let proxy = Proxy::start(first, 9)?;
        let mut old = TcpStream::connect(proxy.addr()).await?;
        assert_eq!(round_trip(&mut old, b"a").await?, b"a");
        assert_eq!(first_rx.recv().await, Some(b"a".to_vec()));
        proxy.set_target(second);
        assert_eq!(proxy.target(), second);
        let mut new = TcpStream::connect(proxy.addr()).await?;
        assert_eq!(round_trip(&mut new, b"b").await?, b"b");
        assert_eq!(second_rx.recv().await, Some(b"b".to_vec()));
        assert_eq!(round_trip(&mut old, b"c").await?, b"c");
        assert_eq!(first_rx.recv().await, Some(b"c".to_vec()));
        Ok(())
    }

    #[tokio::test]
    async fn stats_count_connections_and_bytes() -> anyhow::Result<()> {
        let (server, _) = echo().await?;
        let proxy = Proxy::start(server, 10)?;
        let mut a = TcpStream::connect(proxy.addr()).await?;
        let mut b = TcpStream::connect(proxy.addr()).await?;
        round_trip(&mut a, &[1; 100]).await?;
        round_trip(&mut b, &[2; 50]).await?;
        assert_eq!(proxy.stats().open, 2);
        drop((a, b));
        wait_closed(&proxy).await;
        let expected =
            Stats { accepted: 2, open: 0, refused: 0, dropped: 0, bytes_c2s: 150, bytes_s2c: 150 };
        assert_eq!(proxy.stats(), expected);
        Ok(())
    }

    #[tokio::test]
    async fn stop_closes_listener_and_connections() -> anyhow::Result<()> {
        let (server, _) = echo().await?;
        let proxy = Proxy::start(server, 11)?;
        let mut stream = TcpStream::connect(proxy.addr()).await?;
        assert_eq!(round_trip(&mut stream, b"x").await?, b"x");
        proxy.stop();
        assert!(closed(&mut stream).await);
        assert!(TcpStream::connect(proxy.addr()).await.is_err());
        Ok(())
    }

    #[test]
    fn jitter_is_seeded_and_bounded() {
        let latency =
            Latency { mean: Duration::from_millis(75), jitter: Duration::from_millis(50) };
        let draw = |seed| {
            let rng = SplitMix(AtomicU64::new(seed));
            (0..100).map(|_| latency.sample(&rng)).collect::<Vec<_>>()
        };
        let samples = draw(42);
        assert_eq!(samples, draw(42));
        assert_ne!(samples, draw(43));
        assert!(samples.iter().all(|d| (25..=125).contains(&d.as_millis())));
    }
}
