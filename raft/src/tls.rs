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

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::stream::{FuturesUnordered, Stream, StreamExt as _};
use hyper_util::rt::TokioIo;
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tonic::transport::server::Connected;

/// Time a peer gets to complete the TLS handshake before its connection is dropped.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Handshakes in progress beyond which [`TlsIncoming`] stops accepting for a while.
const MAX_PENDING_HANDSHAKES: usize = 256;

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

/// An accepted, handshaken server-side TLS connection.
pub struct TlsConn {
    /// The TLS stream.
    stream: tokio_rustls::server::TlsStream<TcpStream>,
    /// Computed once at the handshake, cloned into every request.
    info: TlsConnectInfo,
}

/// Stream of handshaken connections on a listener; see [`incoming`].
pub struct TlsIncoming {
    /// The listening socket; closed when this stream is dropped.
    listener: TcpListener,
    /// Performs server handshakes with the (ALPN-adjusted) server config.
    acceptor: tokio_rustls::TlsAcceptor,
    /// Limit on each handshake.
    handshake_timeout: Duration,
    /// Handshakes in progress; each resolves to a connection or `None` if it failed.
    handshakes: FuturesUnordered<Pin<Box<dyn Future<Output = Option<TlsConn>> + Send>>>,
    /// Set after an accept error: no accepts until it fires.
    accept_pause: Option<Pin<Box<tokio::time::Sleep>>>,
}

/// Connector for [`tonic::transport::Endpoint::connect_with_connector`] that dials TCP
/// and performs a client TLS handshake, verifying the server as the endpoint's host.
#[derive(Clone)]
pub struct TlsConnector {
    /// Client configuration with ALPN `h2`.
    config: Arc<rustls::ClientConfig>,
}

/// Accepts connections on `listener` and performs TLS handshakes with `config`,
/// concurrently: a slow or failed handshake never holds up other connections. Failed and
/// timed-out handshakes are logged at debug and dropped; they never end the stream.
/// An `accept` error is yielded (tonic logs and skips it) and pauses accepting briefly.
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
        handshakes: FuturesUnordered::new(),
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

    /// The address the listener is bound to.
    ///
    /// # Errors
    /// The socket's address could not be read.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Starts the handshake of an accepted TCP connection.
    fn start_handshake(&mut self, tcp: TcpStream, remote_addr: SocketAddr) {
        let acceptor = self.acceptor.clone();
        let timeout = self.handshake_timeout;
        self.handshakes.push(Box::pin(async move {
            let local_addr = tcp.local_addr().ok();
            if let Err(error) = tcp.set_nodelay(true) {
                tracing::debug!(%error, %remote_addr, "failed to set TCP_NODELAY");
            }
            let stream = match tokio::time::timeout(timeout, acceptor.accept(tcp)).await {
                Ok(Ok(stream)) => stream,
                Ok(Err(error)) => {
                    tracing::debug!(%error, %remote_addr, "TLS handshake failed");
                    return None;
                }
                Err(_) => {
                    tracing::debug!(%remote_addr, ?timeout, "TLS handshake timed out");
                    return None;
                }
            };
            let peer_chain: Arc<[CertificateDer<'static>]> = stream
                .get_ref()
                .1
                .peer_certificates()
                .map(|chain| chain.iter().map(|cert| cert.clone().into_owned()).collect())
                .unwrap_or_default();
            let peer_certificate =
                peer_chain.first().map(|cert| PeerCertificate(Arc::new(cert.clone())));
            let info = TlsConnectInfo {
                remote_addr: Some(remote_addr),
                local_addr,
                peer_certificate,
                peer_chain,
            };
            Some(TlsConn { stream, info })
        }));
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
            // Accept everything ready; each polled `Pending` registers our waker.
            while this.accept_pause.is_none() && this.handshakes.len() < MAX_PENDING_HANDSHAKES {
                match this.listener.poll_accept(cx) {
                    Poll::Ready(Ok((tcp, remote_addr))) => this.start_handshake(tcp, remote_addr),
                    Poll::Ready(Err(error)) => {
                        tracing::warn!(%error, "failed to accept a transport connection");
                        let mut pause = Box::pin(tokio::time::sleep(ACCEPT_ERROR_PAUSE));
                        // Registers the waker; a fresh sleep is pending.
                        let _ = pause.as_mut().poll(cx);
                        this.accept_pause = Some(pause);
                        return Poll::Ready(Some(Err(error)));
                    }
                    Poll::Pending => break,
                }
            }
            match this.handshakes.poll_next_unpin(cx) {
                Poll::Ready(Some(Some(conn))) => return Poll::Ready(Some(Ok(conn))),
                // A failed handshake freed a slot: go round to accept again.
                Poll::Ready(Some(None)) => {}
                Poll::Ready(None) | Poll::Pending => return Poll::Pending,
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
