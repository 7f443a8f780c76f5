//! The bundle endpoint's connection limits, with real sockets on loopback (sources are
//! distinct 127.0.0.x addresses) and a stub router in place of the replica's.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::oneshot;

use super::*;
use crate::identity::{CertifiedIdentity, FederationCa};

/// Longest wait for anything expected promptly (a refusal, a response).
const PROMPTLY: Duration = Duration::from_secs(2);
/// Generous bound on a close expected after a short timeout.
const EVENTUALLY: Duration = Duration::from_secs(10);
/// A timeout no test waits for.
const LONG: Duration = Duration::from_secs(120);

type Tls = tokio_rustls::client::TlsStream<TcpStream>;

/// An endpoint serving a stub `GET /bundles`; stops when dropped.
struct Endpoint {
    addr: SocketAddr,
    client: Arc<rustls::ClientConfig>,
    stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

impl Endpoint {
    async fn start(limits: Limits) -> Self {
        let ca = FederationCa::generate("bundle.test", "test CA", Duration::from_secs(3600))
            .expect("CA");
        let leaf = ca
            .issue(
                "spiffe://bundle.test/endpoint",
                &[Ipv4Addr::LOCALHOST.into()],
                &[],
                Duration::from_secs(3600),
            )
            .expect("leaf");
        let ca_cert = CertificateDer::from_pem_slice(ca.cert_pem().as_bytes()).expect("CA PEM");
        let chain = vec![CertificateDer::from_pem_slice(leaf.cert_pem.as_bytes()).expect("PEM")];
        let key = PrivateKeyDer::from_pem_slice(leaf.key_pem.as_bytes()).expect("key PEM");
        let identity = CertifiedIdentity::fixed(chain, key).expect("identity");
        let material = TlsMaterial { ca: vec![ca_cert.clone()], identity: Arc::new(identity) };
        let tls = material.public_server_config().expect("server config");

        let mut roots = rustls::RootCertStore::empty();
        roots.add(ca_cert).expect("root");
        let mut client = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
        client.alpn_protocols = vec![b"http/1.1".to_vec()];

        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("address");
        let app = Router::new().route("/bundles", get(|| async { "{\"trust_domains\":[]}" }));
        let (stop, stopped) = oneshot::channel();
        let task = tokio::spawn(serve(listener, tls, app, limits, async {
            let _ = stopped.await;
        }));
        Self { addr, client: Arc::new(client), stop, task }
    }

    /// Stops the endpoint and waits (bounded) for its task to end: whether it did.
    async fn stop(self) -> bool {
        let Self { stop, task, .. } = self;
        let _ = stop.send(());
        tokio::time::timeout(EVENTUALLY, task).await.is_ok_and(|ended| ended.is_ok())
    }

    /// A TCP connection from `source`.
    async fn tcp(&self, source: Ipv4Addr) -> TcpStream {
        let socket = TcpSocket::new_v4().expect("socket");
        socket.bind(SocketAddr::new(source.into(), 0)).expect("bind the source address");
        socket.connect(self.addr).await.expect("TCP connect")
    }

    /// A TLS connection from `source`, within [`PROMPTLY`].
    async fn tls(&self, source: Ipv4Addr) -> io::Result<Tls> {
        let connect = async {
            let tcp = self.tcp(source).await;
            let name = ServerName::IpAddress(Ipv4Addr::LOCALHOST.into());
            tokio_rustls::TlsConnector::from(Arc::clone(&self.client)).connect(name, tcp).await
        };
        tokio::time::timeout(PROMPTLY, connect).await.expect("the handshake ends promptly")
    }

    /// A TLS connection from `source` on which one `GET /bundles` was served (so the
    /// server holds it as established), kept open.
    async fn held(&self, source: Ipv4Addr) -> Tls {
        let mut tls = self.tls(source).await.expect("TLS");
        tls.write_all(b"GET /bundles HTTP/1.1\r\nHost: localhost\r\n\r\n").await.expect("write");
        let mut response = Vec::new();
        let read = async {
            let mut buf = [0u8; 1024];
            while !response.ends_with(b"]}") {
                let n = tls.read(&mut buf).await.expect("read the response");
                assert!(n > 0, "closed: {}", String::from_utf8_lossy(&response));
                response.extend_from_slice(&buf[..n]);
            }
        };
        tokio::time::timeout(PROMPTLY, read).await.expect("a prompt response");
        tls
    }

    /// `GET /bundles` from `source` on a new connection: the status line.
    async fn get(&self, source: Ipv4Addr) -> String {
        let mut tls = self.tls(source).await.expect("TLS");
        tls.write_all(b"GET /bundles HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            .await
            .expect("write the request");
        let mut response = Vec::new();
        tokio::time::timeout(PROMPTLY, tls.read_to_end(&mut response))
            .await
            .expect("a prompt response")
            .expect("read the response");
        let response = String::from_utf8_lossy(&response).into_owned();
        assert!(response.contains("trust_domains"), "{response}");
        response.lines().next().unwrap_or_default().to_string()
    }
}

/// `127.0.0.n`.
fn source(n: u8) -> Ipv4Addr {
    Ipv4Addr::new(127, 0, 0, n)
}

/// Limits with no timeout that a test waits for and no cap it reaches.
fn relaxed() -> Limits {
    Limits {
        handshake_timeout: LONG,
        header_read_timeout: LONG,
        idle_timeout: LONG,
        max_connections_per_source: 1_000,
        max_connections: 1_000,
    }
}

/// Whether the server closes `tls` (EOF or an error; whatever it sends first, such as a
/// 408, is read and ignored) within `within`.
async fn closed_within(tls: &mut Tls, within: Duration) -> bool {
    let drain = async {
        let mut buf = [0u8; 1024];
        while let Ok(1..) = tls.read(&mut buf).await {}
    };
    tokio::time::timeout(within, drain).await.is_ok()
}

#[tokio::test]
async fn a_partial_request_header_is_closed_after_the_header_read_timeout() {
    let endpoint =
        Endpoint::start(Limits { header_read_timeout: Duration::from_millis(300), ..relaxed() })
            .await;
    let mut slow = endpoint.tls(source(1)).await.expect("TLS");
    slow.write_all(b"GET /bundles HTTP/1.1\r\nHost: loc").await.expect("write");
    assert!(closed_within(&mut slow, EVENTUALLY).await, "a partial header was waited for");
}

#[tokio::test]
async fn a_silent_connection_is_closed_after_the_idle_timeout() {
    let endpoint =
        Endpoint::start(Limits { idle_timeout: Duration::from_millis(300), ..relaxed() }).await;
    let mut silent = endpoint.tls(source(1)).await.expect("TLS");
    assert!(closed_within(&mut silent, EVENTUALLY).await, "a silent connection stayed");
    // The endpoint still serves.
    assert!(endpoint.get(source(1)).await.starts_with("HTTP/1.1 200"));
}

#[tokio::test]
async fn connections_beyond_the_caps_are_closed_at_once() {
    let endpoint =
        Endpoint::start(Limits { max_connections_per_source: 2, max_connections: 3, ..relaxed() })
            .await;
    let _a = endpoint.held(source(2)).await;
    let mut b = endpoint.held(source(2)).await;
    // The source's third: closed before its handshake completes.
    assert!(endpoint.tls(source(2)).await.is_err(), "a third connection from one source");
    // Another source still gets in, up to the endpoint's cap.
    let _c = endpoint.held(source(3)).await;
    assert!(endpoint.tls(source(4)).await.is_err(), "a connection beyond the endpoint's cap");
    // Held connections are untouched by the refusals, and serve.
    b.write_all(b"GET /bundles HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .expect("write");
    let mut response = Vec::new();
    tokio::time::timeout(PROMPTLY, b.read_to_end(&mut response))
        .await
        .expect("a prompt response")
        .expect("read");
    assert!(response.starts_with(b"HTTP/1.1 200"), "{}", String::from_utf8_lossy(&response));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_get_is_served_while_slow_connections_are_held() {
    // Default limits: the slow connections are not timed out during the test.
    let endpoint = Endpoint::start(Limits::default()).await;
    let mut slow = Vec::new();
    let mut refused = 0;
    for _ in 0..MAX_CONNECTIONS_PER_SOURCE + 8 {
        match endpoint.tls(source(5)).await {
            Ok(mut tls) => {
                tls.write_all(b"GET /bundles HTTP/1.1\r\n").await.expect("write");
                slow.push(tls);
            }
            Err(_) => refused += 1,
        }
    }
    assert_eq!(slow.len(), MAX_CONNECTIONS_PER_SOURCE);
    assert_eq!(refused, 8);
    // Raw sockets that never start a handshake are closed at once too.
    let mut raw = endpoint.tcp(source(5)).await;
    let mut buf = [0u8; 16];
    let read = tokio::time::timeout(PROMPTLY, raw.read(&mut buf)).await.expect("closed promptly");
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");

    assert!(endpoint.get(source(1)).await.starts_with("HTTP/1.1 200"));
    assert!(!closed_within(&mut slow[0], Duration::from_millis(100)).await);
}

#[tokio::test]
async fn stopping_ends_the_task_and_closes_the_connections_it_owns() {
    let endpoint = Endpoint::start(relaxed()).await;
    let mut held = endpoint.held(source(1)).await;
    let mut idle = endpoint.tls(source(2)).await.expect("TLS");
    assert!(endpoint.stop().await, "the endpoint's task did not end");
    // Its connection tasks were aborted and joined with it: nothing serves them any more.
    assert!(closed_within(&mut held, PROMPTLY).await, "a served connection outlived the endpoint");
    assert!(closed_within(&mut idle, PROMPTLY).await, "an idle connection outlived the endpoint");
}
