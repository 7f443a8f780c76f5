//! A SPIFFE Workload API server standing in for SPIRE's agent: the X.509 profile
//! (`FetchX509SVID`, `FetchX509Bundles`) over a Unix socket in a temporary directory.
//!
//! Like SPIRE it refuses a request without the metadata `workload.spiffe.io: true`, and it
//! streams: every open stream gets the current response at once and each response pushed
//! later (a rotation). [`WorkloadApiServer::stop`] makes the server go away (open streams
//! end with `UNAVAILABLE`, the socket is removed) and [`WorkloadApiServer::restart`] brings
//! it back on the same socket with the last response.
//!
//! ```text
//! let mut server = WorkloadApiServer::start().await?;
//! server.push(x509_svid_response(vec![x509_svid(id, &leaf.cert_pem, &leaf.key_pem, &[ca])?]));
//! // agent.toml: [svid] workload_api = server.address(); [bundle] socket = server.address()
//! server.stop().await;
//! server.restart()?;
//! ```
//!
//! Besides the harness, `tests/tests/workload_api.rs` tests the Workload API client and the
//! agent's bundle source against it.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use federator_proto::spiffe_workload::spiffe_workload_api_server::{
    SpiffeWorkloadApi, SpiffeWorkloadApiServer,
};
use federator_proto::spiffe_workload::{
    JwtBundlesRequest, JwtBundlesResponse, JwtsvidRequest, JwtsvidResponse, ValidateJwtsvidRequest,
    ValidateJwtsvidResponse, X509BundlesRequest, X509BundlesResponse, X509svid, X509svidRequest,
    X509svidResponse,
};
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::{ReceiverStream, UnixListenerStream};
use tonic::{Request, Response, Status};

/// The metadata key every Workload API request must carry, with the value `true`.
pub const SECURITY_HEADER: &str = "workload.spiffe.io";

/// How long [`WorkloadApiServer::stop`] waits for connections to close before it drops
/// them.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// A stream of the server's responses.
type ResponseStream<T> = Pin<Box<dyn tokio_stream::Stream<Item = Result<T, Status>> + Send>>;

/// What every open stream and every new one sees.
#[derive(Debug)]
struct Shared {
    /// The response served now; `None` until the first push (streams wait for it).
    current: watch::Sender<Option<X509svidResponse>>,
    /// Whether `FetchX509Bundles` answers `UNIMPLEMENTED` (an older implementation).
    bundles_unimplemented: AtomicBool,
    /// Streams opened (both RPCs), requests without the security header not counted.
    streams_opened: AtomicUsize,
    /// Requests refused for a missing security header.
    refused: AtomicUsize,
}

/// One serving period, between a start (or restart) and a stop.
#[derive(Debug)]
struct Running {
    /// Set to `true` to stop: streams end, then the server shuts down.
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<Result<(), tonic::transport::Error>>,
}

/// The Workload API server; see the module's documentation. Dropping it stops serving
/// and removes its directory.
#[derive(Debug)]
pub struct WorkloadApiServer {
    dir: tempfile::TempDir,
    socket: PathBuf,
    shared: Arc<Shared>,
    running: Option<Running>,
}

impl WorkloadApiServer {
    /// Serves on `agent.sock` in a new temporary directory, with no response yet: streams
    /// opened before the first [`push`](Self::push) wait for it. Needs a tokio runtime.
    ///
    /// # Errors
    /// The directory or the socket cannot be created.
    pub async fn start() -> std::io::Result<Self> {
        let dir = tempfile::Builder::new().prefix("workload-api-").tempdir()?;
        let socket = dir.path().join("agent.sock");
        let mut server = Self {
            dir,
            socket,
            shared: Arc::new(Shared {
                current: watch::channel(None).0,
                bundles_unimplemented: AtomicBool::new(false),
                streams_opened: AtomicUsize::new(0),
                refused: AtomicUsize::new(0),
            }),
            running: None,
        };
        server.serve()?;
        Ok(server)
    }

    /// [`start`](Self::start), then [`push`](Self::push) `response`.
    ///
    /// # Errors
    /// As [`start`](Self::start).
    pub async fn start_with(response: X509svidResponse) -> std::io::Result<Self> {
        let server = Self::start().await?;
        server.push(response);
        Ok(server)
    }

    /// The socket's address as a client configures it: `unix:///…/agent.sock`.
    #[must_use]
    pub fn address(&self) -> String {
        format!("unix://{}", self.socket.display())
    }

    /// The socket's path.
    #[must_use]
    pub fn socket_path(&self) -> &Path {
        &self.socket
    }

    /// The temporary directory holding the socket (removed on drop).
    #[must_use]
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Serves `response` from now on: every open `FetchX509SVID` stream gets it, every
    /// open `FetchX509Bundles` stream gets its bundles ([`bundles_of`]), and so does every
    /// stream opened later (also after a restart).
    pub fn push(&self, response: X509svidResponse) {
        self.shared.current.send_replace(Some(response));
    }

    /// The response served now.
    #[must_use]
    pub fn current(&self) -> Option<X509svidResponse> {
        self.shared.current.borrow().clone()
    }

    /// Makes `FetchX509Bundles` answer `UNIMPLEMENTED`, like an implementation that has
    /// only `FetchX509SVID` (new streams only).
    pub fn set_bundles_unimplemented(&self, unimplemented: bool) {
        self.shared.bundles_unimplemented.store(unimplemented, Ordering::SeqCst);
    }

    /// How many streams clients opened so far (reconnections count).
    #[must_use]
    pub fn streams_opened(&self) -> usize {
        self.shared.streams_opened.load(Ordering::SeqCst)
    }

    /// How many requests were refused for a missing security header.
    #[must_use]
    pub fn refused(&self) -> usize {
        self.shared.refused.load(Ordering::SeqCst)
    }

    /// Whether the server is serving (started or restarted, not stopped).
    #[must_use]
    pub fn is_running(&self) -> bool {
        self.running.is_some()
    }

    /// Goes away: every open stream ends with `UNAVAILABLE`, the server stops accepting,
    /// connections close (dropped after 5 s at most) and the socket is removed, so a
    /// client's reconnection fails until [`restart`](Self::restart). Does nothing when
    /// stopped already.
    pub async fn stop(&mut self) {
        let Some(running) = self.running.take() else { return };
        running.stop.send_replace(true);
        let mut task = running.task;
        if tokio::time::timeout(STOP_GRACE, &mut task).await.is_err() {
            task.abort();
            let _ = task.await;
        }
        let _ = std::fs::remove_file(&self.socket);
    }

    /// Serves again on the same socket, with the last pushed response. Does nothing when
    /// running.
    ///
    /// # Errors
    /// The socket cannot be bound.
    pub fn restart(&mut self) -> std::io::Result<()> {
        if self.running.is_some() {
            return Ok(());
        }
        self.serve()
    }

    fn serve(&mut self) -> std::io::Result<()> {
        // A socket file left by an earlier serving period would make the bind fail.
        match std::fs::remove_file(&self.socket) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        let listener = tokio::net::UnixListener::bind(&self.socket)?;
        let (stop, stopped) = watch::channel(false);
        let service = Service { shared: self.shared.clone(), stopped: stopped.clone() };
        let mut shutdown = stopped;
        let task = tokio::spawn(async move {
            tonic::transport::Server::builder()
                .add_service(SpiffeWorkloadApiServer::new(service))
                .serve_with_incoming_shutdown(UnixListenerStream::new(listener), async move {
                    let _ = shutdown.wait_for(|s| *s).await;
                })
                .await
        });
        self.running = Some(Running { stop, task });
        Ok(())
    }
}

impl Drop for WorkloadApiServer {
    fn drop(&mut self) {
        if let Some(running) = self.running.take() {
            running.stop.send_replace(true);
            running.task.abort();
        }
    }
}

/// The gRPC service.
#[derive(Debug)]
struct Service {
    shared: Arc<Shared>,
    /// Becomes `true` when the server stops.
    stopped: watch::Receiver<bool>,
}

impl Service {
    /// Refuses a request without `workload.spiffe.io: true`, as SPIRE does.
    fn check_header<T>(&self, request: &Request<T>) -> Result<(), Status> {
        if request.metadata().get(SECURITY_HEADER).and_then(|v| v.to_str().ok()) == Some("true") {
            return Ok(());
        }
        self.shared.refused.fetch_add(1, Ordering::SeqCst);
        Err(Status::invalid_argument("security header missing from request"))
    }

    /// A stream of `map` of the current response and of every later one, until the
    /// client goes or the server stops (then it ends with `UNAVAILABLE`).
    fn stream<T: Send + 'static>(&self, map: fn(&X509svidResponse) -> T) -> ResponseStream<T> {
        self.shared.streams_opened.fetch_add(1, Ordering::SeqCst);
        let (tx, rx) = mpsc::channel(4);
        let mut current = self.shared.current.subscribe();
        current.mark_changed();
        let mut stopped = self.stopped.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    () = async { let _ = stopped.wait_for(|s| *s).await; } => {
                        let status = Status::unavailable("the Workload API server is stopping");
                        let _ = tx.send(Err(status)).await;
                        return;
                    }
                    () = tx.closed() => return,
                    changed = current.changed() => {
                        if changed.is_err() {
                            return;
                        }
                        let message = current.borrow_and_update().as_ref().map(map);
                        if let Some(message) = message
                            && tx.send(Ok(message)).await.is_err()
                        {
                            return;
                        }
                    }
                }
            }
        });
        Box::pin(ReceiverStream::new(rx))
    }
}

#[tonic::async_trait]
impl SpiffeWorkloadApi for Service {
    type FetchJWTBundlesStream = ResponseStream<JwtBundlesResponse>;
    type FetchX509SVIDStream = ResponseStream<X509svidResponse>;
    type FetchX509BundlesStream = ResponseStream<X509BundlesResponse>;

    async fn fetch_jwtsvid(
        &self,
        request: Request<JwtsvidRequest>,
    ) -> Result<Response<JwtsvidResponse>, Status> {
        self.check_header(&request)?;
        Err(Status::unimplemented("the test Workload API serves X.509 only"))
    }

    async fn fetch_jwt_bundles(
        &self,
        request: Request<JwtBundlesRequest>,
    ) -> Result<Response<Self::FetchJWTBundlesStream>, Status> {
        self.check_header(&request)?;
        Err(Status::unimplemented("the test Workload API serves X.509 only"))
    }

    async fn validate_jwtsvid(
        &self,
        request: Request<ValidateJwtsvidRequest>,
    ) -> Result<Response<ValidateJwtsvidResponse>, Status> {
        self.check_header(&request)?;
        Err(Status::unimplemented("the test Workload API serves X.509 only"))
    }

    async fn fetch_x509svid(
        &self,
        request: Request<X509svidRequest>,
    ) -> Result<Response<Self::FetchX509SVIDStream>, Status> {
        self.check_header(&request)?;
        Ok(Response::new(self.stream(Clone::clone)))
    }

    async fn fetch_x509_bundles(
        &self,
        request: Request<X509BundlesRequest>,
    ) -> Result<Response<Self::FetchX509BundlesStream>, Status> {
        self.check_header(&request)?;
        if self.shared.bundles_unimplemented.load(Ordering::SeqCst) {
            return Err(Status::unimplemented("FetchX509Bundles is not implemented here"));
        }
        Ok(Response::new(self.stream(bundles_of)))
    }
}

/// The `FetchX509Bundles` message matching an `FetchX509SVID` one, as SPIRE sends it: the
/// bundle of each SVID's trust domain and the federated bundles, keyed by the trust
/// domain's SPIFFE ID (`spiffe://example.org`), and the CRLs.
#[must_use]
pub fn bundles_of(response: &X509svidResponse) -> X509BundlesResponse {
    let mut bundles: HashMap<String, Vec<u8>> = HashMap::new();
    for svid in &response.svids {
        if let Some(td) = trust_domain_of(&svid.spiffe_id) {
            bundles.entry(format!("spiffe://{td}")).or_insert_with(|| svid.bundle.clone());
        }
    }
    for (td, bundle) in &response.federated_bundles {
        bundles.entry(td.clone()).or_insert_with(|| bundle.clone());
    }
    X509BundlesResponse { crl: response.crl.clone(), bundles }
}

/// The trust domain of a SPIFFE ID (`spiffe://td/path` → `td`).
fn trust_domain_of(spiffe_id: &str) -> Option<&str> {
    let rest = spiffe_id.strip_prefix("spiffe://")?;
    Some(rest.split_once('/').map_or(rest, |(td, _)| td))
}

/// Why an SVID entry or a federated bundle could not be made of its PEMs.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SvidError {
    /// The key PEM holds no private key.
    #[error("{spiffe_id}: key: {source}")]
    Key {
        /// The SVID's id.
        spiffe_id: String,
        /// What the PEM parser said.
        source: rustls_pki_types::pem::Error,
    },
    /// The key is not PKCS#8.
    #[error("{spiffe_id}: key: the Workload API sends PKCS#8 keys only")]
    NotPkcs8 {
        /// The SVID's id.
        spiffe_id: String,
    },
    /// The certificate chain's PEM.
    #[error("{spiffe_id}: {source}")]
    Chain {
        /// The SVID's id.
        spiffe_id: String,
        /// What is wrong with it.
        source: PemError,
    },
    /// The SVID's trust-domain bundle PEMs.
    #[error("{spiffe_id}: bundle: {source}")]
    Bundle {
        /// The SVID's id.
        spiffe_id: String,
        /// What is wrong with them.
        source: PemError,
    },
    /// A federated trust domain's bundle PEMs.
    #[error("{trust_domain}: {source}")]
    FederatedBundle {
        /// The trust domain.
        trust_domain: String,
        /// What is wrong with them.
        source: PemError,
    },
}

/// Why PEM text gave no certificates.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PemError {
    /// It does not parse.
    #[error("invalid PEM: {0}")]
    Invalid(#[source] rustls_pki_types::pem::Error),
    /// It parses, and holds no certificate.
    #[error("holds no CERTIFICATE block")]
    NoCertificate,
}

/// One SVID entry: `spiffe_id`, its certificate chain (`chain_pem`, leaf first), its
/// PKCS#8 key (`key_pem`) and its trust domain's CA certificates (`bundle_pems`, each
/// one or more PEM certificates), all converted to DER as the Workload API sends them.
///
/// # Errors
/// A PEM holds no certificate, or the key is not a PKCS#8 private key.
pub fn x509_svid(
    spiffe_id: &str,
    chain_pem: &str,
    key_pem: &str,
    bundle_pems: &[&str],
) -> Result<X509svid, SvidError> {
    let id = || spiffe_id.to_string();
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
        .map_err(|source| SvidError::Key { spiffe_id: id(), source })?;
    let PrivateKeyDer::Pkcs8(key) = key else {
        return Err(SvidError::NotPkcs8 { spiffe_id: id() });
    };
    Ok(X509svid {
        spiffe_id: id(),
        x509_svid: concatenated_der(&[chain_pem])
            .map_err(|source| SvidError::Chain { spiffe_id: id(), source })?,
        x509_svid_key: key.secret_pkcs8_der().to_vec(),
        bundle: concatenated_der(bundle_pems)
            .map_err(|source| SvidError::Bundle { spiffe_id: id(), source })?,
        hint: String::new(),
    })
}

/// A `FetchX509SVID` message of `svids` (the first is the default one), with no
/// federated bundle and no CRL.
#[must_use]
pub fn x509_svid_response(svids: Vec<X509svid>) -> X509svidResponse {
    X509svidResponse { svids, crl: Vec::new(), federated_bundles: HashMap::new() }
}

/// Adds the bundle of the foreign trust domain `td` (its CA certificates, PEM) to
/// `response`.
///
/// # Errors
/// A PEM holds no certificate.
pub fn with_federated_bundle(
    mut response: X509svidResponse,
    td: &str,
    bundle_pems: &[&str],
) -> Result<X509svidResponse, SvidError> {
    let der = concatenated_der(bundle_pems)
        .map_err(|source| SvidError::FederatedBundle { trust_domain: td.to_string(), source })?;
    response.federated_bundles.insert(format!("spiffe://{td}"), der);
    Ok(response)
}

/// The DER of every certificate in `pems`, concatenated.
fn concatenated_der(pems: &[&str]) -> Result<Vec<u8>, PemError> {
    let mut der = Vec::new();
    for pem in pems {
        let certificates = CertificateDer::pem_slice_iter(pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .map_err(PemError::Invalid)?;
        if certificates.is_empty() {
            return Err(PemError::NoCertificate);
        }
        for certificate in certificates {
            der.extend_from_slice(&certificate);
        }
    }
    Ok(der)
}
