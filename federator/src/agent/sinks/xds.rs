//! An Envoy SDS + EDS server fed by the agent: the `xds` sink.
//!
//! The agent runs an [`XdsServer`] on a local address and registers its [`XdsSink`]
//! with its other sinks; every view the agent applies becomes the resources the server
//! serves, and every open stream whose resources changed gets the new ones pushed.
//!
//! # What is served
//! `envoy.service.secret.v3.SecretDiscoveryService` (`StreamSecrets`, `FetchSecrets`),
//! with the names a SPIRE agent user expects:
//! - `ALL`: a validation context with Envoy's SPIFFE certificate validator
//!   (`envoy.tls.cert_validator.spiffe`) holding every trust domain the cluster trusts,
//!   its own and the federated ones, each with its own CA certificates, so that a peer
//!   certificate is checked against the bundle of the trust domain in its SPIFFE ID;
//! - `ROOTCA`: this cluster's own CA certificates as a plain `trusted_ca`;
//! - `spiffe://<trust domain>`: one trust domain's CA certificates as a `trusted_ca`.
//!
//! `envoy.service.endpoint.v3.EndpointDiscoveryService` (`StreamEndpoints`,
//! `FetchEndpoints`): one `ClusterLoadAssignment` per import, named after its hostname
//! `NAME.NS.svc.clusterset.local` (its first port), and, for an import with several
//! ports, one per named port, `NAME.NS.svc.clusterset.local:PORTNAME`. Endpoints are
//! grouped into localities by (priority, region, zone): priority 0 is the consumer's
//! zone, 1 its region, 2 anywhere else. See [`resources`] for the details.
//!
//! Both are state-of-the-world services (the `protocol` module describes the exchange); the
//! incremental (delta) variants answer `UNIMPLEMENTED`, so configure Envoy's config
//! sources with `api_type: GRPC`, not `DELTA_GRPC`.
//!
//! # Security
//! The server speaks plain-text gRPC and authenticates no client: it must listen on
//! loopback ([`XdsServer::serve`] refuses any other address) or on a unix socket
//! ([`XdsServer::serve_unix`]) in a directory only the mesh's proxies can reach. What
//! it serves is not secret (CA certificates and endpoint addresses), but whoever could
//! stand between Envoy and the server could make Envoy trust other CAs.

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use envoy_types::pb::envoy::service::endpoint::v3::endpoint_discovery_service_server::{
    EndpointDiscoveryService, EndpointDiscoveryServiceServer,
};
use envoy_types::pb::envoy::service::secret::v3::secret_discovery_service_server::{
    SecretDiscoveryService, SecretDiscoveryServiceServer,
};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{mpsc, watch};
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::server::Connected;
use tonic::{Request, Response, Status, Streaming};

use crate::agent::view::{AgentView, Sink, SinkFuture};

mod protocol;
pub mod resources;
#[cfg(test)]
mod tests;

use protocol::{Kind, Snapshot, Subscription};

/// Responses a stream may have queued before it waits for the client to read.
const STREAM_BUFFER: usize = 8;

/// Why the xDS server could not serve.
#[derive(Debug, thiserror::Error)]
pub enum XdsError {
    /// The listener is not on a loopback address (the server speaks plain text).
    #[error(
        "the xDS server speaks plain-text gRPC and must listen on loopback or a unix \
         socket, not {0}"
    )]
    NotLoopback(SocketAddr),
    /// The socket could not be prepared.
    #[error("xDS listener {what}: {source}")]
    Io {
        /// What was being done, with the address.
        what: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The gRPC server failed.
    #[error("xDS server: {0}")]
    Transport(#[from] tonic::transport::Error),
}

/// What the server and its sinks share: the resources being served.
#[derive(Debug)]
struct Shared {
    snapshot: watch::Sender<Arc<Snapshot>>,
}

impl Shared {
    fn publish(&self, view: &AgentView) {
        let next = Snapshot::from_view(view);
        self.snapshot.send_if_modified(|current| {
            let changed = !current.same_content(&next);
            if changed {
                tracing::debug!(
                    revision = next.revision,
                    secrets = next.secrets.len(),
                    clusters = next.endpoints.len(),
                    "xDS resources changed",
                );
            }
            // A new revision with the same content is kept for the versions of later
            // responses, without waking any stream.
            *current = Arc::new(next);
            changed
        });
    }
}

/// An Envoy SDS + EDS server (state of the world, plain-text gRPC) serving what its
/// [`XdsSink`] is given.
#[derive(Debug)]
pub struct XdsServer {
    shared: Arc<Shared>,
}

impl Default for XdsServer {
    fn default() -> Self {
        Self::new()
    }
}

impl XdsServer {
    /// A server with nothing to serve yet (every name is unknown until the sink is
    /// given a view).
    #[must_use]
    pub fn new() -> Self {
        let (snapshot, _) = watch::channel(Arc::new(Snapshot::default()));
        Self { shared: Arc::new(Shared { snapshot }) }
    }

    /// The sink (name `xds`) that feeds this server; any number may be taken, before or
    /// while the server runs.
    #[must_use]
    pub fn sink(&self) -> XdsSink {
        XdsSink { shared: self.shared.clone() }
    }

    /// Serves SDS and EDS on `listener` until `shutdown` completes; then ends every
    /// open stream (clients see it close with `OK` and reconnect) and returns.
    ///
    /// # Errors
    /// The listener is not on a loopback address ([`XdsError::NotLoopback`]: the server
    /// speaks plain text and authenticates no client), or the gRPC server failed.
    pub async fn serve(
        self,
        listener: tokio::net::TcpListener,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), XdsError> {
        let addr = listener
            .local_addr()
            .map_err(|source| XdsError::Io { what: "local address".into(), source })?;
        if !addr.ip().is_loopback() {
            return Err(XdsError::NotLoopback(addr));
        }
        tracing::info!(%addr, "serving Envoy SDS and EDS");
        let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
        self.serve_incoming(incoming, shutdown).await
    }

    /// Serves SDS and EDS on a unix socket at `path` until `shutdown` completes, like
    /// [`XdsServer::serve`]. A socket left at `path` by an earlier run is replaced (any
    /// other kind of file is an error) and the socket is removed on return. The socket
    /// gets the process umask's permissions: put it in a directory only the proxies
    /// may enter.
    ///
    /// # Errors
    /// `path` holds something other than a socket, binding failed, or the gRPC server
    /// failed.
    pub async fn serve_unix(
        self,
        path: impl AsRef<Path>,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), XdsError> {
        use std::os::unix::fs::FileTypeExt as _;

        let path = path.as_ref();
        let io = |what: &str| {
            let what = format!("{what} {}", path.display());
            move |source| XdsError::Io { what, source }
        };
        match std::fs::symlink_metadata(path) {
            Ok(meta) if meta.file_type().is_socket() => {
                std::fs::remove_file(path).map_err(io("removing the old socket"))?;
            }
            Ok(_) => {
                return Err(io("binding")(std::io::Error::new(
                    std::io::ErrorKind::AlreadyExists,
                    "exists and is not a socket",
                )));
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io("inspecting")(e)),
        }
        let listener = tokio::net::UnixListener::bind(path).map_err(io("binding"))?;
        let _cleanup = RemoveOnDrop(path.to_path_buf());
        tracing::info!(path = %path.display(), "serving Envoy SDS and EDS");
        let incoming = tokio_stream::wrappers::UnixListenerStream::new(listener);
        self.serve_incoming(incoming, shutdown).await
    }

    async fn serve_incoming<I, IO, IE>(
        self,
        incoming: I,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), XdsError>
    where
        I: Stream<Item = Result<IO, IE>>,
        IO: AsyncRead + AsyncWrite + Connected + Unpin + Send + 'static,
        IE: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        // Graceful shutdown waits for open RPCs, and xDS streams never end by
        // themselves: tell them to end when the shutdown comes.
        let (closing_tx, closing) = watch::channel(false);
        let service = XdsService { shared: self.shared, closing };
        let router = tonic::transport::Server::builder()
            .tcp_nodelay(true)
            .add_service(SecretDiscoveryServiceServer::new(service.clone()))
            .add_service(EndpointDiscoveryServiceServer::new(service));
        let signal = async move {
            shutdown.await;
            tracing::info!("xDS server shutting down");
            let _ = closing_tx.send(true);
        };
        router.serve_with_incoming_shutdown(incoming, signal).await?;
        Ok(())
    }
}

struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// The `xds` sink: gives each applied view to its [`XdsServer`]. Applying never fails
/// and never waits for Envoy; streams get their updates as soon as they can take them.
#[derive(Clone, Debug)]
pub struct XdsSink {
    shared: Arc<Shared>,
}

impl Sink for XdsSink {
    fn name(&self) -> &str {
        "xds"
    }

    fn apply<'a>(&'a self, view: &'a AgentView) -> SinkFuture<'a> {
        Box::pin(async move {
            self.shared.publish(view);
            Ok(())
        })
    }
}

/// The gRPC services of one running server.
#[derive(Clone)]
struct XdsService {
    shared: Arc<Shared>,
    closing: watch::Receiver<bool>,
}

type ResponseStream = ReceiverStream<Result<DiscoveryResponse, Status>>;
type DeltaStream = tokio_stream::Empty<Result<DeltaDiscoveryResponse, Status>>;

impl XdsService {
    fn open_stream(
        &self,
        kind: Kind,
        request: Request<Streaming<DiscoveryRequest>>,
    ) -> ResponseStream {
        let peer = request.remote_addr().map(|a| a.to_string()).unwrap_or_else(|| "unix".into());
        let (tx, rx) = mpsc::channel(STREAM_BUFFER);
        let task = StreamTask {
            kind,
            peer,
            requests: request.into_inner(),
            snapshots: self.shared.snapshot.subscribe(),
            closing: self.closing.clone(),
            tx,
        };
        tokio::spawn(task.run());
        ReceiverStream::new(rx)
    }

    fn fetch(
        &self,
        kind: Kind,
        request: Request<DiscoveryRequest>,
    ) -> Result<Response<DiscoveryResponse>, Status> {
        let snapshot = self.shared.snapshot.borrow().clone();
        protocol::fetch(kind, request.into_inner(), &snapshot)
            .map(Response::new)
            .map_err(|wrong| wrong_type(kind, &wrong))
    }
}

fn wrong_type(kind: Kind, wrong: &protocol::WrongType) -> Status {
    Status::invalid_argument(format!("this stream serves {}, not {:?}", kind.type_url(), wrong.0))
}

fn delta_unimplemented() -> Status {
    Status::unimplemented("incremental xDS is not served; use state of the world (api_type: GRPC)")
}

#[tonic::async_trait]
impl SecretDiscoveryService for XdsService {
    type DeltaSecretsStream = DeltaStream;

    async fn delta_secrets(
        &self,
        _request: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<Self::DeltaSecretsStream>, Status> {
        Err(delta_unimplemented())
    }

    type StreamSecretsStream = ResponseStream;

    async fn stream_secrets(
        &self,
        request: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<Response<Self::StreamSecretsStream>, Status> {
        Ok(Response::new(self.open_stream(Kind::Secrets, request)))
    }

    async fn fetch_secrets(
        &self,
        request: Request<DiscoveryRequest>,
    ) -> Result<Response<DiscoveryResponse>, Status> {
        self.fetch(Kind::Secrets, request)
    }
}

#[tonic::async_trait]
impl EndpointDiscoveryService for XdsService {
    type StreamEndpointsStream = ResponseStream;

    async fn stream_endpoints(
        &self,
        request: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<Response<Self::StreamEndpointsStream>, Status> {
        Ok(Response::new(self.open_stream(Kind::Endpoints, request)))
    }

    type DeltaEndpointsStream = DeltaStream;

    async fn delta_endpoints(
        &self,
        _request: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<Self::DeltaEndpointsStream>, Status> {
        Err(delta_unimplemented())
    }

    async fn fetch_endpoints(
        &self,
        request: Request<DiscoveryRequest>,
    ) -> Result<Response<DiscoveryResponse>, Status> {
        self.fetch(Kind::Endpoints, request)
    }
}

/// One open stream: reads requests, watches the resources, writes responses.
struct StreamTask {
    kind: Kind,
    peer: String,
    requests: Streaming<DiscoveryRequest>,
    snapshots: watch::Receiver<Arc<Snapshot>>,
    closing: watch::Receiver<bool>,
    tx: mpsc::Sender<Result<DiscoveryResponse, Status>>,
}

impl StreamTask {
    async fn run(mut self) {
        let kind = self.kind.label();
        tracing::debug!(kind, peer = %self.peer, "xDS stream opened");
        let mut subscription = Subscription::new(self.kind);
        let end = loop {
            let response = tokio::select! {
                request = self.requests.message() => match request {
                    Ok(Some(request)) => {
                        let snapshot = self.snapshots.borrow_and_update().clone();
                        match subscription.on_request(request, &snapshot) {
                            Ok(response) => response.map(Ok),
                            Err(wrong) => Some(Err(wrong_type(self.kind, &wrong))),
                        }
                    }
                    Ok(None) => break "closed by the client",
                    Err(status) => {
                        tracing::debug!(kind, peer = %self.peer, %status, "xDS stream failed");
                        break "failed";
                    }
                },
                changed = self.snapshots.changed() => {
                    if changed.is_err() {
                        break "server gone";
                    }
                    let snapshot = self.snapshots.borrow_and_update().clone();
                    subscription.on_change(&snapshot).map(Ok)
                }
                _ = self.closing.wait_for(|closing| *closing) => break "server shutting down",
                () = self.tx.closed() => break "response stream dropped",
            };
            let Some(response) = response else { continue };
            let last = response.is_err();
            if let Ok(sent) = &response {
                tracing::debug!(
                    kind,
                    peer = %self.peer,
                    node = subscription.node(),
                    version = %sent.version_info,
                    resources = sent.resources.len(),
                    "xDS response",
                );
            }
            let sent = tokio::select! {
                sent = self.tx.send(response) => sent.is_ok(),
                _ = self.closing.wait_for(|closing| *closing) => break "server shutting down",
            };
            if !sent {
                break "response stream dropped";
            }
            if last {
                break "wrong resource type";
            }
        };
        tracing::debug!(kind, peer = %self.peer, node = subscription.node(), end, "xDS stream closed");
    }
}
