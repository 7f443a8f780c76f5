//! The SPIFFE Workload API (X.509 profile) as a source of identity: the own SVID of an
//! agent or a replica, and the cluster's own bundle (the agent's bundle source); a client
//! of SPIRE's agent (or any implementation) on a Unix socket, through the `spiffe` crate.
//!
//! Both follow a stream — `FetchX509Bundles` for the bundle (`FetchX509SVID`'s bundles
//! where the implementation has no `FetchX509Bundles`), `FetchX509SVID` for the SVID — so
//! a rotation reaches the agent as soon as the implementation pushes it. When the stream
//! fails (the SPIRE agent restarts, the socket is gone) the failure is reported, what was
//! read last stays in service, and the client reconnects with jittered exponential backoff
//! (100 ms doubling to 5 s); the backoff starts over once a message arrives.
//!
//! Addresses ([`WorkloadApiAddress::parse`]): `unix:///path/to/socket`, `unix:/path`, a
//! plain path, or `tcp://127.0.0.1:PORT` (loopback only: the Workload API hands out
//! private keys unencrypted).

use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use futures::{Stream, StreamExt as _};
use hyper_util::rt::TokioIo;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use spiffe::transport::{Endpoint as SpiffeEndpoint, GrpcStatusCode, TransportError};
use spiffe::{TrustDomain, WorkloadApiClient, WorkloadApiError, X509BundleSet};
use tokio::sync::mpsc;

/// The environment variable that names the Workload API's address (SPIFFE's standard).
pub const ENDPOINT_SOCKET_ENV: &str = "SPIFFE_ENDPOINT_SOCKET";

/// How long the agent waits at start-up for its first SVID from the Workload API.
pub const FIRST_SVID_TIMEOUT: Duration = Duration::from_secs(30);

/// How long connecting may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long opening a stream (until the server's response headers) may take.
const OPEN_TIMEOUT: Duration = Duration::from_secs(10);
/// HTTP/2 keep-alive: a server that stopped answering is noticed within twice this.
const KEEPALIVE: Duration = Duration::from_secs(10);
/// First wait before a reconnection.
const MIN_BACKOFF: Duration = Duration::from_millis(100);
/// Longest wait before a reconnection.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Where the Workload API listens.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WorkloadApiAddress {
    /// A Unix socket (the usual case).
    Unix(PathBuf),
    /// A TCP address on loopback.
    Tcp(SocketAddr),
}

/// The forms a Workload API address may take, for refusals.
const FORMS: &str = "give unix:///path/to/socket, a path, or tcp://127.0.0.1:PORT";

/// Which rule a Workload API address breaks (the text names the rule and the fix).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AddressError {
    /// Nothing given.
    #[error("is empty: {forms}", forms = FORMS)]
    Empty,
    /// `unix://host/...`.
    #[error("unix:// takes no host: write unix:///path/to/socket (three slashes)")]
    UnixHost,
    /// `unix:` with a relative path.
    #[error("unix: needs an absolute path (unix:///path/to/socket)")]
    UnixRelative,
    /// `unix:` with `?`, `#` or `%`.
    #[error("unix: takes no query, fragment or percent-encoding")]
    UnixQuery,
    /// `unix:///`.
    #[error("unix: names no socket")]
    UnixNoSocket,
    /// `tcp:` without an IP address and a port.
    #[error("tcp: must be tcp://IP:PORT with an IP address and a port (no host name)")]
    TcpNotIpAndPort,
    /// `tcp:` with an address other than loopback.
    #[error(
        "tcp: only a loopback address (127.0.0.1, [::1]): the Workload API hands out private \
         keys unencrypted; use a Unix socket"
    )]
    TcpNotLoopback,
    /// `tcp:` with port 0.
    #[error("tcp: needs a port other than 0")]
    TcpPortZero,
    /// Another scheme.
    #[error("unsupported scheme {0:?}: {forms}", forms = FORMS)]
    Scheme(String),
    /// The environment's address breaks a rule.
    #[error("{}={value:?}: {rule}", ENDPOINT_SOCKET_ENV)]
    InEnv {
        /// The variable's value.
        value: String,
        /// The rule it breaks.
        rule: Box<AddressError>,
    },
    /// Neither configured nor in the environment.
    #[error(
        "not set, and {} is not set either: name the Workload API's socket \
         (unix:///run/spire/agent.sock)",
        ENDPOINT_SOCKET_ENV
    )]
    NotSet,
}

/// Why a message of the bundle stream gives no authorities of the trust domain followed.
#[derive(Debug, thiserror::Error)]
pub enum BundleUpdateError {
    /// The trust domain followed is not a valid one.
    #[error("trust domain {trust_domain:?}: {reason}")]
    TrustDomain {
        /// The trust domain.
        trust_domain: String,
        /// Why the SPIFFE library refuses it.
        reason: String,
    },
    /// The message holds bundles of other trust domains only.
    #[error(
        "the Workload API gives no bundle of trust domain {trust_domain} (it gives those of: \
         {})",
        listed(.others)
    )]
    Missing {
        /// The trust domain followed.
        trust_domain: String,
        /// The trust domains it gives, sorted.
        others: Vec<String>,
    },
    /// The stream failed (the client reconnects).
    #[error(transparent)]
    Stream(#[from] FollowFailure),
}

/// `items` joined with commas, or "none".
fn listed(items: &[String]) -> String {
    if items.is_empty() { "none".to_string() } else { items.join(", ") }
}

impl WorkloadApiAddress {
    /// Parses an address:
    /// - `unix:///path/to/socket` or `unix:/path/to/socket` (an absolute path, no host,
    ///   query, fragment or percent-encoding);
    /// - a plain path, absolute or relative (`/run/spire/agent.sock`, `agent.sock`; a
    ///   relative path with a colon before its first slash reads as a URI scheme: write
    ///   `./a:b`);
    /// - `tcp://IP:PORT` or `tcp:IP:PORT` with a loopback IP address and a port.
    ///
    /// Any other scheme is refused.
    ///
    /// # Errors
    /// The text breaks a rule; the message says which.
    pub fn parse(text: &str) -> Result<Self, AddressError> {
        if text.is_empty() {
            return Err(AddressError::Empty);
        }
        if let Some(rest) = text.strip_prefix("unix:") {
            let path = match rest.strip_prefix("//") {
                Some(after) if after.starts_with('/') => after,
                Some(_) => return Err(AddressError::UnixHost),
                None => rest,
            };
            if !path.starts_with('/') {
                return Err(AddressError::UnixRelative);
            }
            if path.contains(['?', '#', '%']) {
                return Err(AddressError::UnixQuery);
            }
            if path.trim_end_matches('/').is_empty() {
                return Err(AddressError::UnixNoSocket);
            }
            return Ok(Self::Unix(PathBuf::from(path)));
        }
        if let Some(rest) = text.strip_prefix("tcp:") {
            let host_port = rest.strip_prefix("//").unwrap_or(rest);
            let host_port = host_port.strip_suffix('/').unwrap_or(host_port);
            let address: SocketAddr =
                host_port.parse().map_err(|_| AddressError::TcpNotIpAndPort)?;
            if !address.ip().is_loopback() {
                return Err(AddressError::TcpNotLoopback);
            }
            if address.port() == 0 {
                return Err(AddressError::TcpPortZero);
            }
            return Ok(Self::Tcp(address));
        }
        if let Some(scheme) = scheme_of(text) {
            return Err(AddressError::Scheme(scheme.to_string()));
        }
        Ok(Self::Unix(PathBuf::from(text)))
    }

    /// The address configured (`configured`), or else the one in `SPIFFE_ENDPOINT_SOCKET`
    /// (`env`, its value).
    ///
    /// # Errors
    /// The one used does not parse, or neither is set.
    pub fn configured_or_env(
        configured: Option<&str>,
        env: Option<&str>,
    ) -> Result<Self, AddressError> {
        match (configured, env) {
            (Some(text), _) => Self::parse(text),
            (None, Some(text)) => Self::parse(text).map_err(|rule| AddressError::InEnv {
                value: text.to_string(),
                rule: Box::new(rule),
            }),
            (None, None) => Err(AddressError::NotSet),
        }
    }

    /// The address with a relative socket path taken relative to `base`.
    #[must_use]
    pub fn relative_to(self, base: &Path) -> Self {
        match self {
            Self::Unix(path) if path.is_relative() => Self::Unix(base.join(path)),
            other => other,
        }
    }

    /// The `spiffe` crate's form.
    fn endpoint(&self) -> SpiffeEndpoint {
        match self {
            Self::Unix(path) => SpiffeEndpoint::Unix(path.clone()),
            Self::Tcp(address) => SpiffeEndpoint::Tcp { host: address.ip(), port: address.port() },
        }
    }
}

impl fmt::Display for WorkloadApiAddress {
    /// `unix:///absolute/path`, `tcp://IP:PORT`, or the path as is (a relative one, or
    /// one that a `unix:` URI cannot hold); parses back.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Unix(path) => {
                let text = path.display().to_string();
                if text.starts_with('/')
                    && !text.contains(['?', '#', '%'])
                    && !text.trim_end_matches('/').is_empty()
                {
                    write!(f, "unix://{text}")
                } else {
                    f.write_str(&text)
                }
            }
            Self::Tcp(address) => write!(f, "tcp://{address}"),
        }
    }
}

impl FromStr for WorkloadApiAddress {
    type Err = AddressError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Self::parse(text)
    }
}

/// The URI scheme `text` starts with (`http` of `http://…`), if it looks like one.
fn scheme_of(text: &str) -> Option<&str> {
    let (scheme, _) = text.split_once(':')?;
    let mut chars = scheme.chars();
    let first = chars.next()?;
    (first.is_ascii_alphabetic() && chars.all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c)))
        .then_some(scheme)
}

/// Why a stream of the Workload API failed; the client reconnects after it.
#[derive(Debug, thiserror::Error)]
#[error("Workload API {address}: {failure}")]
pub struct FollowFailure {
    /// The address followed, as it displays.
    address: String,
    /// What went wrong.
    failure: StreamFailure,
}

/// What went wrong on one connection of a stream.
#[derive(Debug, thiserror::Error)]
enum StreamFailure {
    /// No connection.
    #[error(transparent)]
    Connect(#[from] ConnectError),
    /// The stream (`what`) did not open in time.
    #[error("{what}: no answer within {OPEN_TIMEOUT:?}")]
    OpenTimeout { what: &'static str },
    /// The stream (`what`) failed to open or broke; `detail` is the error and its sources.
    #[error("{what}: {detail}")]
    Failed { what: &'static str, detail: String },
    /// The server ended the stream (`what`).
    #[error("{what}: the server ended the stream")]
    Ended { what: &'static str },
}

/// Why no connection to the Workload API was made.
#[derive(Debug, thiserror::Error)]
enum ConnectError {
    /// Connecting took longer than [`CONNECT_TIMEOUT`].
    #[error("cannot connect within {CONNECT_TIMEOUT:?}")]
    Timeout,
    /// Connecting failed; the error and its sources.
    #[error("cannot connect: {0}")]
    Failed(String),
}

/// Why an update of the own SVID is missing.
#[derive(Debug, thiserror::Error)]
pub enum SvidUpdateError {
    /// A message of the stream had no X.509-SVID.
    #[error("the Workload API gives no X.509-SVID")]
    NoSvid,
    /// The stream failed (the client reconnects).
    #[error(transparent)]
    Stream(#[from] FollowFailure),
}

/// An X.509-SVID as the Workload API gave it.
#[derive(Debug)]
pub struct Svid {
    /// Its SPIFFE ID.
    pub spiffe_id: String,
    /// Its certificate chain, leaf first.
    pub chain: Vec<CertificateDer<'static>>,
    /// Its private key.
    pub key: PrivateKeyDer<'static>,
}

/// Follows the X.509 authorities (DER, in the server's order) of `trust_domain`'s
/// bundle at `address`: every message of the stream gives `Ok` (or `Err` when it has no
/// bundle of `trust_domain`), every failure of the stream `Err` (then the client
/// reconnects). The client stops when the receiver is dropped. Needs a tokio runtime.
#[must_use]
pub fn follow_bundle(
    address: WorkloadApiAddress,
    trust_domain: String,
) -> mpsc::Receiver<Result<Vec<Vec<u8>>, BundleUpdateError>> {
    spawn_follow(address, "FetchX509Bundles", open_bundles, move |set: Arc<X509BundleSet>| {
        let td = TrustDomain::new(&trust_domain).map_err(|e| BundleUpdateError::TrustDomain {
            trust_domain: trust_domain.clone(),
            reason: e.to_string(),
        })?;
        match set.get(&td) {
            Some(bundle) => {
                Ok(bundle.authorities().iter().map(|a| a.as_bytes().to_vec()).collect())
            }
            None => {
                let mut others: Vec<String> = set.iter().map(|(td, _)| td.to_string()).collect();
                others.sort();
                Err(BundleUpdateError::Missing { trust_domain: trust_domain.clone(), others })
            }
        }
    })
}

/// Follows the agent's X.509-SVID at `address`: the first SVID of `trust_domain` in each
/// message, or the first SVID when none is (or no trust domain is given), as `Ok`; every
/// failure of the stream as `Err` (then the client reconnects). The client stops when the
/// receiver is dropped. Needs a tokio runtime.
#[must_use]
pub fn follow_svid(
    address: WorkloadApiAddress,
    trust_domain: Option<String>,
) -> mpsc::Receiver<Result<Svid, SvidUpdateError>> {
    let open = |client: WorkloadApiClient| async move {
        let stream = client.stream_x509_contexts().await?;
        Ok(Box::pin(stream) as BoxStream<_>)
    };
    spawn_follow(address, "FetchX509SVID", open, move |context: spiffe::X509Context| {
        let svids = context.svids();
        let chosen = trust_domain
            .as_deref()
            .and_then(|td| svids.iter().find(|s| s.spiffe_id().trust_domain_name() == td))
            .or_else(|| svids.first())
            .ok_or(SvidUpdateError::NoSvid)?;
        Ok(Svid {
            spiffe_id: chosen.spiffe_id().to_string(),
            chain: chosen
                .cert_chain()
                .iter()
                .map(|c| CertificateDer::from(c.as_bytes().to_vec()))
                .collect(),
            key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(
                chosen.private_key().as_bytes().to_vec(),
            )),
        })
    })
}

/// A stream of the `spiffe` client.
type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, WorkloadApiError>> + Send>>;

/// Opens `FetchX509Bundles`, or `FetchX509SVID` (whose messages carry the bundles too)
/// where the implementation does not have it.
async fn open_bundles(
    client: WorkloadApiClient,
) -> Result<BoxStream<Arc<X509BundleSet>>, WorkloadApiError> {
    match client.stream_x509_bundles().await {
        Ok(stream) => Ok(Box::pin(stream.map(|set| set.map(Arc::new)))),
        Err(WorkloadApiError::Transport(TransportError::Status(status)))
            if status.code() == GrpcStatusCode::Unimplemented =>
        {
            tracing::debug!("FetchX509Bundles is not implemented; following FetchX509SVID");
            let stream = client.stream_x509_contexts().await?;
            Ok(Box::pin(stream.map(|context| context.map(|c| c.bundle_set().clone()))))
        }
        Err(error) => Err(error),
    }
}

/// Spawns the client of one stream (`what`): connects, opens it with `open`, sends `map`
/// of every message, and on failure sends the problem and reconnects after a backoff;
/// until the receiver is dropped.
fn spawn_follow<T, U, E, O, Fut, M>(
    address: WorkloadApiAddress,
    what: &'static str,
    open: O,
    mut map: M,
) -> mpsc::Receiver<Result<U, E>>
where
    T: Send + 'static,
    U: Send + 'static,
    E: From<FollowFailure> + Send + 'static,
    O: Fn(WorkloadApiClient) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<BoxStream<T>, WorkloadApiError>> + Send,
    M: FnMut(T) -> Result<U, E> + Send + 'static,
{
    let (tx, rx) = mpsc::channel(8);
    tokio::spawn(async move {
        let mut failures: u32 = 0;
        loop {
            let session = async {
                let client = connect(&address).await?;
                let mut stream = tokio::time::timeout(OPEN_TIMEOUT, open(client))
                    .await
                    .map_err(|_| StreamFailure::OpenTimeout { what })?
                    .map_err(|e| StreamFailure::Failed { what, detail: describe(&e) })?;
                tracing::debug!(address = %address, what, "Workload API stream open");
                loop {
                    match stream.next().await {
                        Some(Ok(message)) => {
                            failures = 0;
                            if tx.send(map(message)).await.is_err() {
                                return Ok(());
                            }
                        }
                        Some(Err(error)) => {
                            return Err(StreamFailure::Failed { what, detail: describe(&error) });
                        }
                        None => return Err(StreamFailure::Ended { what }),
                    }
                }
            };
            let ended = tokio::select! {
                () = tx.closed() => return,
                ended = session => ended,
            };
            let Err(failure) = ended else { return };
            let problem = FollowFailure { address: address.to_string(), failure };
            if failures == 0 {
                tracing::warn!(%problem, "Workload API stream failed; reconnecting");
            } else {
                tracing::debug!(%problem, failures, "Workload API still unreachable");
            }
            if tx.send(Err(E::from(problem))).await.is_err() {
                return;
            }
            let wait = backoff(failures);
            failures = failures.saturating_add(1);
            tokio::select! {
                () = tx.closed() => return,
                () = tokio::time::sleep(wait) => {}
            }
        }
    });
    rx
}

/// A client on a new connection to `address`, with HTTP/2 keep-alives.
async fn connect(address: &WorkloadApiAddress) -> Result<WorkloadApiClient, ConnectError> {
    let configure = |endpoint: tonic::transport::Endpoint| {
        endpoint
            .connect_timeout(CONNECT_TIMEOUT)
            .http2_keep_alive_interval(KEEPALIVE)
            .keep_alive_timeout(KEEPALIVE)
            .keep_alive_while_idle(true)
    };
    let connecting = async {
        match address {
            WorkloadApiAddress::Unix(path) => {
                let path = path.clone();
                configure(tonic::transport::Endpoint::from_static("http://workload-api.socket"))
                    .connect_with_connector(tower::service_fn(move |_: http::Uri| {
                        let path = path.clone();
                        async move {
                            let stream = tokio::net::UnixStream::connect(path).await?;
                            Ok::<_, std::io::Error>(TokioIo::new(stream))
                        }
                    }))
                    .await
                    .map_err(|e| describe(&e))
            }
            WorkloadApiAddress::Tcp(socket) => {
                let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{socket}"))
                    .map_err(|e| describe(&e))?;
                configure(endpoint).connect().await.map_err(|e| describe(&e))
            }
        }
    };
    let channel = tokio::time::timeout(CONNECT_TIMEOUT, connecting)
        .await
        .map_err(|_| ConnectError::Timeout)?
        .map_err(ConnectError::Failed)?;
    Ok(WorkloadApiClient::new_with_channel(address.endpoint(), channel))
}

/// `error` and its sources, each once.
fn describe(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

/// Wait before reconnection attempt `failures` + 1: [`MIN_BACKOFF`] doubling to
/// [`MAX_BACKOFF`], ± 25 %.
fn backoff(failures: u32) -> Duration {
    let base = MIN_BACKOFF.saturating_mul(1 << failures.min(16)).min(MAX_BACKOFF);
    let millis = u64::try_from(base.as_millis()).unwrap_or(u64::MAX);
    let jitter = rand::random_range(0..=millis / 2);
    Duration::from_millis(millis - millis / 4 + jitter)
}

#[cfg(test)]
mod tests;
