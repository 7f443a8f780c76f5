//! The echo service behind a server sidecar: a tiny HTTP/1.1 server on 127.0.0.1 that
//! answers every request with its cluster's name and the `x-forwarded-client-cert` header
//! Envoy gave it ([`EchoReply`]), so that a test sees which cluster served a call and
//! whom Envoy verified as the client.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context as _;
use serde::Deserialize;
use serde_json::json;
use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{JoinHandle, JoinSet};

/// What the echo service answers: who it is and what Envoy told it of the client.
#[derive(Clone, Debug, Deserialize)]
pub struct EchoReply {
    /// The echo's cluster name.
    pub cluster: String,
    /// The `x-forwarded-client-cert` header it received (empty when none).
    pub xfcc: String,
}

impl EchoReply {
    /// Reads a reply body.
    ///
    /// # Errors
    /// Not an echo reply.
    pub fn parse(body: &str) -> anyhow::Result<Self> {
        serde_json::from_str(body).with_context(|| format!("not an echo reply: {body:?}"))
    }

    /// The client's SPIFFE ID as Envoy verified it (`URI=` of the XFCC element).
    #[must_use]
    pub fn peer_id(&self) -> Option<&str> {
        self.xfcc_field("URI")
    }

    /// The SHA-256 of the client's certificate (`Hash=`, see [`certificate_hash`](super::certificate_hash)).
    #[must_use]
    pub fn peer_hash(&self) -> Option<&str> {
        self.xfcc_field("Hash")
    }

    /// One field of the last XFCC element (the proxy next to the echo adds the last).
    fn xfcc_field(&self, key: &str) -> Option<&str> {
        let element = self.xfcc.rsplit(',').next()?;
        element.split(';').find_map(|pair| {
            let (k, v) = pair.split_once('=')?;
            k.trim().eq_ignore_ascii_case(key).then(|| v.trim().trim_matches('"'))
        })
    }
}

/// A tiny HTTP/1.1 service on 127.0.0.1 that answers every request with an
/// [`EchoReply`]: its cluster's name and the `x-forwarded-client-cert` header it got.
/// Stopped (listener and every connection) by [`EchoServer::stop`] or when dropped.
pub struct EchoServer {
    name: String,
    addr: SocketAddr,
    task: Option<JoinHandle<()>>,
}

impl EchoServer {
    /// Starts the echo of cluster `name` on 127.0.0.1:`port` (0: any free port).
    ///
    /// # Errors
    /// The port could not be bound.
    pub async fn start(name: &str, port: u16) -> anyhow::Result<Self> {
        let mut echo = Self {
            name: name.to_string(),
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            task: None,
        };
        echo.bind().await?;
        Ok(echo)
    }

    async fn bind(&mut self) -> anyhow::Result<()> {
        let listener = TcpListener::bind(self.addr)
            .await
            .with_context(|| format!("echo {}: bind {}", self.name, self.addr))?;
        self.addr = listener.local_addr()?;
        self.task = Some(tokio::spawn(serve_echo(listener, self.name.clone())));
        Ok(())
    }

    /// Its address.
    #[must_use]
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Closes the listener and every open connection.
    pub fn stop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }

    /// Starts again on the same address after [`EchoServer::stop`].
    ///
    /// # Errors
    /// It is running, or the address could not be bound again.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        anyhow::ensure!(self.task.is_none(), "echo {} is running", self.name);
        self.bind().await
    }
}

impl Drop for EchoServer {
    fn drop(&mut self) {
        self.stop();
    }
}

async fn serve_echo(listener: TcpListener, name: String) {
    // Dropped with the task when the server stops: that aborts every connection.
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    connections.spawn(echo_connection(stream, name.clone()));
                }
                Err(error) => {
                    tracing::warn!(%error, "echo accept failed");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            },
            Some(_) = connections.join_next() => {}
        }
    }
}

/// Serves requests on one connection (keep-alive) until the peer closes it.
async fn echo_connection(stream: TcpStream, name: String) -> std::io::Result<()> {
    const MAX_LINE: u64 = 64 * 1024;
    let _ = stream.set_nodelay(true);
    let mut stream = tokio::io::BufReader::new(stream);
    loop {
        let mut request_line = String::new();
        if (&mut stream).take(MAX_LINE).read_line(&mut request_line).await? == 0 {
            return Ok(());
        }
        let (mut xfcc, mut length, mut close) = (String::new(), 0u64, false);
        loop {
            let mut line = String::new();
            if (&mut stream).take(MAX_LINE).read_line(&mut line).await? == 0 {
                return Ok(());
            }
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            let Some((header, value)) = line.split_once(':') else { continue };
            let value = value.trim();
            match header.trim().to_ascii_lowercase().as_str() {
                "x-forwarded-client-cert" => xfcc = value.to_string(),
                "content-length" => length = value.parse().unwrap_or(0),
                "connection" => close = value.eq_ignore_ascii_case("close"),
                _ => {}
            }
        }
        tokio::io::copy(&mut (&mut stream).take(length), &mut tokio::io::sink()).await?;
        let body = json!({ "cluster": name, "xfcc": xfcc }).to_string();
        let response = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n{}\r\n{body}",
            body.len(),
            if close { "connection: close\r\n" } else { "" },
        );
        stream.get_mut().write_all(response.as_bytes()).await?;
        if close {
            return Ok(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http;

    #[test]
    fn xfcc_fields_come_from_the_last_element() {
        let reply = EchoReply {
            cluster: "b".into(),
            xfcc: "By=spiffe://x/y;Hash=00;URI=spiffe://x/old,By=spiffe://b.example/ns/shop/sa/echo;Hash=abcd;URI=\"spiffe://a.example/ns/shop/sa/client\"".into(),
        };
        assert_eq!(reply.peer_id(), Some("spiffe://a.example/ns/shop/sa/client"));
        assert_eq!(reply.peer_hash(), Some("abcd"));
        let none = EchoReply { cluster: "b".into(), xfcc: String::new() };
        assert_eq!(none.peer_id(), None);
    }

    #[tokio::test]
    async fn the_echo_answers_with_its_name_and_the_xfcc_header() {
        let mut echo = EchoServer::start("cluster-x", 0).await.expect("echo");
        let addr = echo.addr().to_string();
        let reply = http::get(&addr, "/", Duration::from_secs(5)).await.expect("get");
        assert_eq!(reply.status, 200);
        let reply = EchoReply::parse(&reply.body).expect("reply");
        assert_eq!((reply.cluster.as_str(), reply.xfcc.as_str()), ("cluster-x", ""));
        echo.stop();
        assert!(http::get(&addr, "/", Duration::from_secs(5)).await.is_err(), "stopped");
        echo.restart().await.expect("restart");
        assert_eq!(echo.addr().to_string(), addr, "same address");
        assert!(http::get(&addr, "/", Duration::from_secs(5)).await.is_ok(), "restarted");
    }
}
