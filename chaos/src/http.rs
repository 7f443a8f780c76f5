//! The one HTTP client of the harness and the tests: a `GET` to a loopback endpoint (a
//! metrics or health endpoint, Envoy's admin API, an echo service through Envoy, the
//! SPIFFE bundle endpoint), over plain TCP or TLS, read whole into a [`Response`].
//!
//! Each call opens its own connection, sends one HTTP/1.1 request with
//! `Connection: close` through hyper's client connection, and reads the answer to its end
//! (content length or chunks); the whole call, connecting included, is bounded by the
//! caller's timeout. Any status is an answer: [`Response::ok`] turns one other than
//! `200 OK` into an error where only that counts.

use std::net::SocketAddr;
use std::pin::pin;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, anyhow};
use bytes::Bytes;
use http_body_util::{BodyExt as _, Empty, Limited};
use hyper_util::rt::TokioIo;
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

/// Largest body read.
const MAX_BODY: usize = 16 << 20;

/// An HTTP answer, read whole.
#[derive(Clone, Debug)]
pub struct Response {
    /// Status code.
    pub status: u16,
    /// Headers (names are lower case).
    pub headers: ::http::HeaderMap,
    /// Body, decoded from chunks when it came in chunks (invalid UTF-8 replaced).
    pub body: String,
}

impl Response {
    /// The first value of header `name`, when it is text.
    #[must_use]
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|value| value.to_str().ok())
    }

    /// The `content-type` header, empty without one.
    #[must_use]
    pub fn content_type(&self) -> &str {
        self.header("content-type").unwrap_or_default()
    }

    /// Itself when the status is `200 OK`.
    ///
    /// # Errors
    /// Any other status; the message holds it and the start of the body.
    pub fn ok(self) -> anyhow::Result<Self> {
        if self.status == 200 {
            return Ok(self);
        }
        let body: String = self.body.trim().chars().take(200).collect();
        Err(anyhow!("answered {}: {body}", self.status))
    }
}

/// `GET path` from the plain-HTTP server at `addr` (`127.0.0.1:port`, or a URL
/// `http://127.0.0.1:port`), with `Host: addr`.
///
/// # Errors
/// The connection failed, the answer is not HTTP, or it took longer than `timeout`.
pub async fn get(addr: &str, path: &str, timeout: Duration) -> anyhow::Result<Response> {
    get_with(addr, path, &[], timeout).await
}

/// Like [`get`], with more request headers: `("host", …)` replaces `Host: addr` (a call
/// through a listener that routes by hostname), `("accept", …)` asks for a format.
///
/// # Errors
/// As [`get`]; or a header is not valid.
pub async fn get_with(
    addr: &str,
    path: &str,
    headers: &[(&str, &str)],
    timeout: Duration,
) -> anyhow::Result<Response> {
    let addr = addr.strip_prefix("http://").unwrap_or(addr);
    bounded(&format!("GET http://{addr}{path}"), timeout, async {
        let tcp = connect(addr).await?;
        exchange(tcp, addr, path, headers).await
    })
    .await
}

/// `GET path` over TLS from `addr` (`127.0.0.1:port`), with the client configuration
/// `tls` (its roots, its verifier, its client certificate); the server name is the
/// address's IP. A server that refuses the client certificate after the handshake (TLS
/// 1.3) shows as its alert when the answer is read: the error carries it.
///
/// # Errors
/// The connection, the handshake or the exchange failed, or took longer than `timeout`.
pub async fn get_tls(
    addr: &str,
    tls: Arc<rustls::ClientConfig>,
    path: &str,
    timeout: Duration,
) -> anyhow::Result<Response> {
    bounded(&format!("GET https://{addr}{path}"), timeout, async {
        let ip = addr.parse::<SocketAddr>().with_context(|| format!("not an address: {addr}"))?;
        let tcp = connect(addr).await?;
        let tls = tokio_rustls::TlsConnector::from(tls)
            .connect(ServerName::IpAddress(ip.ip().into()), tcp)
            .await
            .context("TLS handshake")?;
        exchange(tls, addr, path, &[]).await
    })
    .await
}

/// `GET path` over HTTPS from `addr` (`127.0.0.1:port`), trusting only the CA
/// certificates in `ca_pem`, with no client certificate.
///
/// # Errors
/// `ca_pem` holds no usable certificate, or as [`get_tls`].
pub async fn get_https(
    addr: &str,
    ca_pem: &str,
    path: &str,
    timeout: Duration,
) -> anyhow::Result<Response> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(cert.context("CA certificate PEM")?)?;
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots)
    .with_no_client_auth();
    get_tls(addr, Arc::new(config), path, timeout).await
}

/// Runs `call` for at most `timeout`; errors name the request (`what`).
async fn bounded(
    what: &str,
    timeout: Duration,
    call: impl Future<Output = anyhow::Result<Response>>,
) -> anyhow::Result<Response> {
    tokio::time::timeout(timeout, call)
        .await
        .map_err(|_| anyhow!("{what}: no answer within {timeout:?}"))?
        .with_context(|| what.to_string())
}

async fn connect(addr: &str) -> anyhow::Result<TcpStream> {
    let tcp = TcpStream::connect(addr).await?;
    tcp.set_nodelay(true)?;
    Ok(tcp)
}

/// Sends one `GET path` on `io` and reads the whole answer.
async fn exchange<S>(
    io: S,
    host: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> anyhow::Result<Response>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let mut request = ::http::Request::get(path)
        .header(::http::header::HOST, host)
        .header(::http::header::CONNECTION, "close")
        .body(Empty::<Bytes>::new())?;
    for (name, value) in headers {
        request
            .headers_mut()
            .insert(::http::HeaderName::try_from(*name)?, ::http::HeaderValue::try_from(*value)?);
    }
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(io)).await?;
    let mut answer = pin!(async move {
        let (parts, body) = sender.send_request(request).await?.into_parts();
        let body = Limited::new(body, MAX_BODY).collect().await.map_err(|e| anyhow!(e))?;
        Ok::<_, anyhow::Error>(Response {
            status: parts.status.as_u16(),
            headers: parts.headers,
            body: String::from_utf8_lossy(&body.to_bytes()).into_owned(),
        })
    });
    // The connection is driven beside the answer; once it has ended without an error,
    // the whole answer has been handed over and only needs collecting.
    tokio::select! {
        answer = &mut answer => answer,
        ended = connection => {
            ended?;
            answer.await
        }
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    use tokio::net::TcpListener;

    use super::*;

    /// A server that answers one connection with `raw` and returns the request it read.
    async fn answer_once(raw: &'static [u8]) -> (String, tokio::task::JoinHandle<String>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr").to_string();
        let server = tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.expect("accept");
            let mut request = Vec::new();
            let mut buf = [0; 1024];
            while !request.ends_with(b"\r\n\r\n") {
                let n = stream.read(&mut buf).await.expect("read");
                if n == 0 {
                    break;
                }
                request.extend_from_slice(&buf[..n]);
            }
            stream.write_all(raw).await.expect("write");
            String::from_utf8_lossy(&request).into_owned()
        });
        (addr, server)
    }

    #[tokio::test]
    async fn answers_with_a_length_are_read_with_their_headers() {
        let (addr, server) =
            answer_once(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-A: b\r\n\r\nhello").await;
        let r = get(&addr, "/x", Duration::from_secs(5)).await.expect("get");
        assert_eq!((r.status, r.body.as_str(), r.header("x-a")), (200, "hello", Some("b")));
        let request = server.await.expect("server").to_ascii_lowercase();
        assert!(request.starts_with("get /x http/1.1\r\n"), "{request}");
        assert!(request.contains(&format!("host: {addr}\r\n")), "{request}");
        assert!(request.contains("connection: close\r\n"), "{request}");
    }

    #[tokio::test]
    async fn chunked_answers_are_decoded_and_headers_can_be_replaced() {
        let (addr, server) = answer_once(
            b"HTTP/1.1 503 Service Unavailable\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n2;x=y\r\nde\r\n0\r\n\r\n",
        )
        .await;
        let url = format!("http://{addr}");
        let r = get_with(
            &url,
            "/",
            &[("host", "echo"), ("accept", "text/plain")],
            Duration::from_secs(5),
        )
        .await
        .expect("get");
        assert_eq!((r.status, r.body.as_str()), (503, "abcde"));
        assert!(r.ok().is_err_and(|e| e.to_string() == "answered 503: abcde"));
        let request = server.await.expect("server").to_ascii_lowercase();
        assert!(request.contains("host: echo\r\n") && !request.contains("host: 127."), "{request}");
        assert!(request.contains("accept: text/plain\r\n"), "{request}");
    }

    #[tokio::test]
    async fn what_is_not_http_or_never_answers_is_an_error() {
        let (addr, _server) = answer_once(b"SSH-2.0\r\n\r\n").await;
        assert!(get(&addr, "/", Duration::from_secs(5)).await.is_err());
        let (addr, _server) =
            answer_once(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nshort").await;
        assert!(get(&addr, "/", Duration::from_secs(5)).await.is_err(), "body cut short");

        let silent = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = silent.local_addr().expect("addr").to_string();
        let error = get(&addr, "/", Duration::from_millis(200)).await.expect_err("no answer");
        assert!(format!("{error:#}").contains("no answer within"), "{error:#}");
    }
}
