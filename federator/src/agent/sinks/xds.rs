//! An Envoy xDS server fed by the agent: the `xds` sink.
//!
//! The agent runs an [`XdsServer`] on a local address and registers its [`XdsSink`]
//! with its other sinks; every view the agent applies becomes the resources the server
//! serves, and every open stream whose resources changed gets the new ones pushed.
//!
//! # What is served
//! `envoy.service.secret.v3.SecretDiscoveryService` (SDS), with the names a SPIRE agent
//! user expects:
//! - `ALL`: a validation context with Envoy's SPIFFE certificate validator
//!   (`envoy.tls.cert_validator.spiffe`) holding every trust domain the cluster trusts,
//!   its own and the federated ones, each with its own CA certificates, so that a peer
//!   certificate is checked against the bundle of the trust domain in its SPIFFE ID;
//! - `ROOTCA`: this cluster's own CA certificates as a plain `trusted_ca`;
//! - `spiffe://<trust domain>`: one trust domain's CA certificates as a `trusted_ca`.
//!
//! `envoy.service.endpoint.v3.EndpointDiscoveryService` (EDS): one
//! `ClusterLoadAssignment` per import, named after its hostname
//! `NAME.NS.svc.clusterset.local` (its first port), and, for an import with several
//! ports, one per named port, `NAME.NS.svc.clusterset.local:PORTNAME`. Endpoints are
//! grouped into localities by (priority, region, zone): priority 0 is the consumer's
//! zone, 1 its region, 2 anywhere else. See [`resources`] for the details.
//!
//! With [`MeshSettings`], CDS (a cluster per assignment, each exporter verified as
//! itself), and with an egress address LDS and RDS: see [`mesh`].
//!
//! Every type is served by the aggregated service (ADS) and by its own service, each in
//! both protocols: state of the world (the `protocol` module) and incremental (the
//! `delta` module). [`bootstrap`] writes the Envoy bootstrap that takes everything by
//! ADS.
//!
//! # Security
//! The server speaks plain-text gRPC and authenticates no client: it must listen on
//! loopback ([`XdsServer::serve`] refuses any other address unless
//! [`XdsServer::allowing_remote`]: a pod's proxies in Kubernetes) or on a unix socket
//! ([`XdsServer::serve_unix`]) in a directory only the mesh's proxies can reach. What
//! it serves is not secret (CA certificates and endpoint addresses), but whoever could
//! stand between Envoy and the server could make Envoy trust other CAs.

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use envoy_types::pb::envoy::service::cluster::v3::cluster_discovery_service_server::{
    ClusterDiscoveryService, ClusterDiscoveryServiceServer,
};
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_server::{
    AggregatedDiscoveryService, AggregatedDiscoveryServiceServer,
};
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use envoy_types::pb::envoy::service::endpoint::v3::endpoint_discovery_service_server::{
    EndpointDiscoveryService, EndpointDiscoveryServiceServer,
};
use envoy_types::pb::envoy::service::listener::v3::listener_discovery_service_server::{
    ListenerDiscoveryService, ListenerDiscoveryServiceServer,
};
use envoy_types::pb::envoy::service::route::v3::route_discovery_service_server::{
    RouteDiscoveryService, RouteDiscoveryServiceServer,
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

pub mod bootstrap;
mod delta;
pub mod mesh;
mod protocol;
pub mod resources;
#[cfg(test)]
mod tests;

use delta::DeltaSubscription;
pub use mesh::MeshSettings;
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
    /// What CDS, LDS and RDS serve; none of it without.
    mesh: Option<MeshSettings>,
}

impl Shared {
    fn publish(&self, view: &AgentView) {
        let next = Snapshot::build(view, self.mesh.as_ref());
        self.snapshot.send_if_modified(|current| {
            let changed = !current.same_content(&next);
            if changed {
                tracing::debug!(
                    revision = next.revision,
                    secrets = next.count(Kind::Secrets),
                    assignments = next.count(Kind::Endpoints),
                    clusters = next.count(Kind::Clusters),
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

/// An Envoy xDS server (ADS and every single-type service, state of the world and delta;
/// plain-text gRPC) serving what its [`XdsSink`] is given.
#[derive(Debug)]
pub struct XdsServer {
    shared: Arc<Shared>,
    /// Serve on a non-loopback TCP address too.
    allow_remote: bool,
}

impl Default for XdsServer {
    fn default() -> Self {
        Self::new()
    }
}

impl XdsServer {
    /// A server of SDS and EDS with nothing to serve yet (every name is unknown until
    /// the sink is given a view).
    #[must_use]
    pub fn new() -> Self {
        Self::with_mesh(None)
    }

    /// A server that also serves clusters, and with an egress address a listener and
    /// routes, for every import (see [`mesh`]), described by `mesh`.
    #[must_use]
    pub fn with_mesh(mesh: Option<MeshSettings>) -> Self {
        let initial = Snapshot::build(&AgentView::default(), mesh.as_ref());
        let (snapshot, _) = watch::channel(Arc::new(initial));
        Self { shared: Arc::new(Shared { snapshot, mesh }), allow_remote: false }
    }

    /// Lets [`XdsServer::serve`] listen on a non-loopback address: plain-text gRPC that
    /// anyone who can reach it may read (CA certificates and endpoint addresses) — admit
    /// only the proxies to it.
    #[must_use]
    pub fn allowing_remote(mut self, allow: bool) -> Self {
        self.allow_remote = allow;
        self
    }

    /// The sink (name `xds`) that feeds this server; any number may be taken, before or
    /// while the server runs.
    #[must_use]
    pub fn sink(&self) -> XdsSink {
        XdsSink { shared: self.shared.clone() }
    }

    /// Serves xDS on `listener` until `shutdown` completes; then ends every
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
        if !addr.ip().is_loopback() && !self.allow_remote {
            return Err(XdsError::NotLoopback(addr));
        }
        tracing::info!(%addr, "serving Envoy xDS (ADS, SDS, EDS, CDS, LDS, RDS)");
        let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
        self.serve_incoming(incoming, shutdown).await
    }

    /// Serves xDS on a unix socket at `path` until `shutdown` completes, like
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
        tracing::info!(path = %path.display(), "serving Envoy xDS (ADS, SDS, EDS, CDS, LDS, RDS)");
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
        let streams = Arc::new(std::sync::Mutex::new(tokio::task::JoinSet::new()));
        let service = XdsService { shared: self.shared, closing, streams: Arc::clone(&streams) };
        let router = tonic::transport::Server::builder()
            .tcp_nodelay(true)
            .add_service(AggregatedDiscoveryServiceServer::new(service.clone()))
            .add_service(SecretDiscoveryServiceServer::new(service.clone()))
            .add_service(EndpointDiscoveryServiceServer::new(service.clone()))
            .add_service(ClusterDiscoveryServiceServer::new(service.clone()))
            .add_service(ListenerDiscoveryServiceServer::new(service.clone()))
            .add_service(RouteDiscoveryServiceServer::new(service));
        let signal = async move {
            shutdown.await;
            tracing::info!("xDS server shutting down");
            let _ = closing_tx.send(true);
        };
        let served = router.serve_with_incoming_shutdown(incoming, signal).await;
        // Every stream's task ends on `closing` (or with its RPC), and the graceful shutdown
        // waited for the RPCs: what is left (the server failed) is aborted. None outlives
        // the server.
        let mut open = std::mem::take(&mut *lock(&streams));
        open.shutdown().await;
        served?;
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
    /// The tasks of the open streams, owned by the server: reaped as streams open, and
    /// joined when it stops.
    streams: Arc<std::sync::Mutex<tokio::task::JoinSet<()>>>,
}

fn lock<T>(mutex: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

type ResponseStream = ReceiverStream<Result<DiscoveryResponse, Status>>;
type DeltaResponseStream = ReceiverStream<Result<DeltaDiscoveryResponse, Status>>;

impl XdsService {
    fn open<E: Exchange>(
        &self,
        exchange: E,
        request: Request<Streaming<E::Request>>,
    ) -> ReceiverStream<Result<E::Response, Status>> {
        let peer = request.remote_addr().map(|a| a.to_string()).unwrap_or_else(|| "unix".into());
        let (tx, rx) = mpsc::channel(STREAM_BUFFER);
        let task = StreamTask {
            exchange,
            peer,
            requests: request.into_inner(),
            snapshots: self.shared.snapshot.subscribe(),
            closing: self.closing.clone(),
            tx,
        };
        let mut streams = lock(&self.streams);
        while streams.try_join_next().is_some() {}
        streams.spawn(task.run());
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

/// Implements one single-type discovery service (state of the world, delta, fetch).
macro_rules! single_type_service {
    ($service:path, $kind:expr,
     $stream_type:ident, $stream:ident, $delta_type:ident, $delta:ident, $fetch:ident) => {
        #[tonic::async_trait]
        impl $service for XdsService {
            type $stream_type = ResponseStream;

            async fn $stream(
                &self,
                request: Request<Streaming<DiscoveryRequest>>,
            ) -> Result<Response<Self::$stream_type>, Status> {
                Ok(Response::new(self.open(Sotw::single($kind), request)))
            }

            type $delta_type = DeltaResponseStream;

            async fn $delta(
                &self,
                request: Request<Streaming<DeltaDiscoveryRequest>>,
            ) -> Result<Response<Self::$delta_type>, Status> {
                Ok(Response::new(self.open(Delta::single($kind), request)))
            }

            async fn $fetch(
                &self,
                request: Request<DiscoveryRequest>,
            ) -> Result<Response<DiscoveryResponse>, Status> {
                self.fetch($kind, request)
            }
        }
    };
}

single_type_service!(
    SecretDiscoveryService,
    Kind::Secrets,
    StreamSecretsStream,
    stream_secrets,
    DeltaSecretsStream,
    delta_secrets,
    fetch_secrets
);
single_type_service!(
    EndpointDiscoveryService,
    Kind::Endpoints,
    StreamEndpointsStream,
    stream_endpoints,
    DeltaEndpointsStream,
    delta_endpoints,
    fetch_endpoints
);
single_type_service!(
    ClusterDiscoveryService,
    Kind::Clusters,
    StreamClustersStream,
    stream_clusters,
    DeltaClustersStream,
    delta_clusters,
    fetch_clusters
);
single_type_service!(
    ListenerDiscoveryService,
    Kind::Listeners,
    StreamListenersStream,
    stream_listeners,
    DeltaListenersStream,
    delta_listeners,
    fetch_listeners
);
single_type_service!(
    RouteDiscoveryService,
    Kind::Routes,
    StreamRoutesStream,
    stream_routes,
    DeltaRoutesStream,
    delta_routes,
    fetch_routes
);

#[tonic::async_trait]
impl AggregatedDiscoveryService for XdsService {
    type StreamAggregatedResourcesStream = ResponseStream;

    async fn stream_aggregated_resources(
        &self,
        request: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<Response<Self::StreamAggregatedResourcesStream>, Status> {
        Ok(Response::new(self.open(Sotw::aggregated(), request)))
    }

    type DeltaAggregatedResourcesStream = DeltaResponseStream;

    async fn delta_aggregated_resources(
        &self,
        request: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<Self::DeltaAggregatedResourcesStream>, Status> {
        Ok(Response::new(self.open(Delta::aggregated(), request)))
    }
}

/// The resource type a request is for: a single-type stream's own (a request may leave
/// its type URL empty), or the one an ADS request names. `Ok(None)`: an ADS request for
/// a type this server does not serve (ignored; Envoy waits for it).
fn requested_kind(only: Option<Kind>, type_url: &str) -> Result<Option<Kind>, Status> {
    match only {
        Some(kind) if type_url.is_empty() || type_url == kind.type_url() => Ok(Some(kind)),
        Some(kind) => Err(wrong_type(kind, &protocol::WrongType(type_url.to_string()))),
        None if type_url.is_empty() => {
            Err(Status::invalid_argument("an ADS request must name its type_url"))
        }
        None => Ok(Kind::of_type_url(type_url)),
    }
}

/// One stream's protocol, state of the world or delta, one type or aggregated: turns
/// requests and changes into responses.
trait Exchange: Send + 'static {
    type Request: prost::Message + Default + Send + 'static;
    type Response: Send + 'static;
    /// `sds`, `eds`… or `ads`, for logs.
    fn label(&self) -> &'static str;
    /// The node id the client gave, empty when none.
    fn node(&self) -> &str;
    /// The responses to a request.
    fn on_request(
        &mut self,
        request: Self::Request,
        snapshot: &Snapshot,
    ) -> Result<Vec<Self::Response>, Status>;
    /// The responses to a change of the served resources.
    fn on_change(&mut self, snapshot: &Snapshot) -> Vec<Self::Response>;
    /// Type label, version and resource count of a response, for logs.
    fn describe(response: &Self::Response) -> (&str, &str, usize);
}

/// State-of-the-world streams.
struct Sotw {
    only: Option<Kind>,
    node: String,
    subscriptions: BTreeMap<Kind, Subscription>,
}

impl Sotw {
    fn single(kind: Kind) -> Self {
        Self { only: Some(kind), node: String::new(), subscriptions: BTreeMap::new() }
    }

    fn aggregated() -> Self {
        Self { only: None, node: String::new(), subscriptions: BTreeMap::new() }
    }
}

impl Exchange for Sotw {
    type Request = DiscoveryRequest;
    type Response = DiscoveryResponse;

    fn label(&self) -> &'static str {
        self.only.map_or("ads", Kind::label)
    }

    fn node(&self) -> &str {
        &self.node
    }

    fn on_request(
        &mut self,
        request: DiscoveryRequest,
        snapshot: &Snapshot,
    ) -> Result<Vec<DiscoveryResponse>, Status> {
        if self.node.is_empty()
            && let Some(node) = &request.node
        {
            self.node.clone_from(&node.id);
        }
        let Some(kind) = requested_kind(self.only, &request.type_url)? else {
            tracing::debug!(node = %self.node, type_url = %request.type_url, "ADS request for a type not served; ignored");
            return Ok(Vec::new());
        };
        let subscription =
            self.subscriptions.entry(kind).or_insert_with(|| Subscription::new(kind));
        let response =
            subscription.on_request(request, snapshot).map_err(|wrong| wrong_type(kind, &wrong))?;
        Ok(response.into_iter().collect())
    }

    fn on_change(&mut self, snapshot: &Snapshot) -> Vec<DiscoveryResponse> {
        // `Kind`'s order is the push order.
        self.subscriptions.values_mut().filter_map(|s| s.on_change(snapshot)).collect()
    }

    fn describe(response: &DiscoveryResponse) -> (&str, &str, usize) {
        let kind = Kind::of_type_url(&response.type_url).map_or("?", Kind::label);
        (kind, &response.version_info, response.resources.len())
    }
}

/// Incremental (delta) streams.
struct Delta {
    only: Option<Kind>,
    node: String,
    subscriptions: BTreeMap<Kind, DeltaSubscription>,
}

impl Delta {
    fn single(kind: Kind) -> Self {
        Self { only: Some(kind), node: String::new(), subscriptions: BTreeMap::new() }
    }

    fn aggregated() -> Self {
        Self { only: None, node: String::new(), subscriptions: BTreeMap::new() }
    }
}

impl Exchange for Delta {
    type Request = DeltaDiscoveryRequest;
    type Response = DeltaDiscoveryResponse;

    fn label(&self) -> &'static str {
        match self.only {
            Some(kind) => kind.label(),
            None => "delta-ads",
        }
    }

    fn node(&self) -> &str {
        &self.node
    }

    fn on_request(
        &mut self,
        request: DeltaDiscoveryRequest,
        snapshot: &Snapshot,
    ) -> Result<Vec<DeltaDiscoveryResponse>, Status> {
        if self.node.is_empty()
            && let Some(node) = &request.node
        {
            self.node.clone_from(&node.id);
        }
        let Some(kind) = requested_kind(self.only, &request.type_url)? else {
            tracing::debug!(node = %self.node, type_url = %request.type_url, "delta ADS request for a type not served; ignored");
            return Ok(Vec::new());
        };
        let subscription =
            self.subscriptions.entry(kind).or_insert_with(|| DeltaSubscription::new(kind));
        let response =
            subscription.on_request(request, snapshot).map_err(|wrong| wrong_type(kind, &wrong))?;
        Ok(response.into_iter().collect())
    }

    fn on_change(&mut self, snapshot: &Snapshot) -> Vec<DeltaDiscoveryResponse> {
        self.subscriptions.values_mut().filter_map(|s| s.on_change(snapshot)).collect()
    }

    fn describe(response: &DeltaDiscoveryResponse) -> (&str, &str, usize) {
        let kind = Kind::of_type_url(&response.type_url).map_or("?", Kind::label);
        (kind, &response.system_version_info, response.resources.len())
    }
}

/// One open stream: reads requests, watches the resources, writes responses.
struct StreamTask<E: Exchange> {
    exchange: E,
    peer: String,
    requests: Streaming<E::Request>,
    snapshots: watch::Receiver<Arc<Snapshot>>,
    closing: watch::Receiver<bool>,
    tx: mpsc::Sender<Result<E::Response, Status>>,
}

impl<E: Exchange> StreamTask<E> {
    async fn run(mut self) {
        let label = self.exchange.label();
        tracing::debug!(stream = label, peer = %self.peer, "xDS stream opened");
        let end = loop {
            let responses: Vec<Result<E::Response, Status>> = tokio::select! {
                request = self.requests.message() => match request {
                    Ok(Some(request)) => {
                        let snapshot = self.snapshots.borrow_and_update().clone();
                        match self.exchange.on_request(request, &snapshot) {
                            Ok(responses) => responses.into_iter().map(Ok).collect(),
                            Err(status) => vec![Err(status)],
                        }
                    }
                    Ok(None) => break "closed by the client",
                    Err(status) => {
                        tracing::debug!(stream = label, peer = %self.peer, %status, "xDS stream failed");
                        break "failed";
                    }
                },
                changed = self.snapshots.changed() => {
                    if changed.is_err() {
                        break "server gone";
                    }
                    let snapshot = self.snapshots.borrow_and_update().clone();
                    self.exchange.on_change(&snapshot).into_iter().map(Ok).collect()
                }
                _ = self.closing.wait_for(|closing| *closing) => break "server shutting down",
                () = self.tx.closed() => break "response stream dropped",
            };
            let mut refused = false;
            for response in responses {
                refused |= response.is_err();
                if let Ok(sent) = &response {
                    let (kind, version, resources) = E::describe(sent);
                    tracing::debug!(
                        stream = label,
                        peer = %self.peer,
                        node = self.exchange.node(),
                        kind,
                        version,
                        resources,
                        "xDS response",
                    );
                }
                let sent = tokio::select! {
                    sent = self.tx.send(response) => sent.is_ok(),
                    _ = self.closing.wait_for(|closing| *closing) => false,
                };
                if !sent {
                    break;
                }
            }
            if *self.closing.borrow() {
                break "server shutting down";
            }
            if self.tx.is_closed() {
                break "response stream dropped";
            }
            if refused {
                break "wrong resource type";
            }
        };
        tracing::debug!(stream = label, peer = %self.peer, node = self.exchange.node(), end, "xDS stream closed");
    }
}
