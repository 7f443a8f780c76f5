//! The state-of-the-world xDS protocol of one stream, apart from gRPC: what to answer to
//! a request and to a change of the served resources.
//!
//! - A request with no `response_nonce` (the first on a stream) or with a changed set
//!   of `resource_names` is answered with the named resources at the current version.
//! - A request whose nonce is not the last one sent is stale and ignored (xDS spec).
//! - An ACK (the last nonce, no `error_detail`) and a NACK (`error_detail` set, logged)
//!   are answered by nothing: the next response goes out when the resources change.
//! - A change is pushed only when the content of the subscribed resources changed.
//! - Names the server does not know get no resource (Envoy waits for them). On EDS, a
//!   cluster that was served on the stream and is gone (its import was removed) is sent
//!   as an assignment without endpoints, so that Envoy drops the stale endpoints rather
//!   than keep using them; a secret that is gone is simply no longer sent (`ALL` drops
//!   the trust domain).
//!
//! The version of a response is `<view revision>-<hash>`, the hash being over the names
//! and contents of the resources it carries, so equal contents give equal versions.

use std::collections::{BTreeMap, BTreeSet};

use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::envoy::service::discovery::v3::{DiscoveryRequest, DiscoveryResponse};
use envoy_types::pb::google::protobuf::Any;
use envoy_types::util::pack_any;
use sha2::{Digest, Sha256};

use super::mesh::{self, CLUSTER_TYPE_URL, LISTENER_TYPE_URL, MeshSettings, ROUTE_TYPE_URL};
use super::resources::{self, LOAD_ASSIGNMENT_TYPE_URL, SECRET_TYPE_URL};
use crate::agent::view::AgentView;

/// One encoded resource and the digest of its encoding.
#[derive(Clone, Debug)]
pub(super) struct Resource {
    pub(super) any: Any,
    digest: [u8; 32],
}

impl Resource {
    fn new(any: Any) -> Self {
        let digest = Sha256::digest(&any.value).into();
        Self { any, digest }
    }

    /// Its version in incremental xDS: a digest of its encoding.
    pub(super) fn version(&self) -> String {
        hex::encode(&self.digest[..8])
    }
}

/// Everything the server serves, as of one view.
#[derive(Clone, Debug, Default)]
pub(super) struct Snapshot {
    /// The view's revision.
    pub(super) revision: u64,
    /// The resources of each kind by name, indexed by [`Kind::index`].
    resources: [BTreeMap<String, Resource>; Kind::ALL.len()],
}

fn encode<T: prost::Name>(map: BTreeMap<String, T>) -> BTreeMap<String, Resource> {
    map.into_iter().map(|(name, value)| (name, Resource::new(pack_any(value)))).collect()
}

impl Snapshot {
    /// Builds and encodes every resource of `view`: SDS and EDS always, CDS, LDS and
    /// RDS with `mesh` settings.
    pub(super) fn build(view: &AgentView, mesh: Option<&MeshSettings>) -> Self {
        let mut snapshot = Self { revision: view.revision, ..Self::default() };
        snapshot.resources[Kind::Secrets.index()] = encode(resources::secrets(view));
        snapshot.resources[Kind::Endpoints.index()] = encode(resources::load_assignments(view));
        if let Some(mesh) = mesh {
            snapshot.resources[Kind::Clusters.index()] = encode(mesh::clusters(view, mesh));
            snapshot.resources[Kind::Listeners.index()] = encode(mesh::listeners(mesh));
            snapshot.resources[Kind::Routes.index()] = encode(mesh::routes(view, mesh));
        }
        snapshot
    }

    /// [`Snapshot::build`] without CDS, LDS and RDS.
    #[cfg(test)]
    pub(super) fn from_view(view: &AgentView) -> Self {
        Self::build(view, None)
    }

    /// The resources of `kind`, by name.
    pub(super) fn of(&self, kind: Kind) -> &BTreeMap<String, Resource> {
        &self.resources[kind.index()]
    }

    /// How many resources of `kind` it holds.
    pub(super) fn count(&self, kind: Kind) -> usize {
        self.of(kind).len()
    }

    /// Whether both serve the same resources (revisions aside).
    pub(super) fn same_content(&self, other: &Self) -> bool {
        fn digests(map: &BTreeMap<String, Resource>) -> impl Iterator<Item = (&str, &[u8; 32])> {
            map.iter().map(|(name, r)| (name.as_str(), &r.digest))
        }
        Kind::ALL.iter().all(|kind| digests(self.of(*kind)).eq(digests(other.of(*kind))))
    }
}

/// The resource types served: the discovery service of a single-type stream, or one of
/// the types multiplexed on an ADS stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum Kind {
    /// SDS.
    Secrets,
    /// CDS.
    Clusters,
    /// EDS.
    Endpoints,
    /// LDS.
    Listeners,
    /// RDS.
    Routes,
}

impl Kind {
    /// Every kind, in the order changes are pushed on an ADS stream: secrets and
    /// clusters before the endpoints of the clusters, listeners before their routes
    /// (xDS's make-before-break order).
    pub(super) const ALL: [Self; 5] =
        [Self::Secrets, Self::Clusters, Self::Endpoints, Self::Listeners, Self::Routes];

    fn index(self) -> usize {
        self as usize
    }

    /// The type URL of its resources.
    pub(super) fn type_url(self) -> &'static str {
        match self {
            Self::Secrets => SECRET_TYPE_URL,
            Self::Clusters => CLUSTER_TYPE_URL,
            Self::Endpoints => LOAD_ASSIGNMENT_TYPE_URL,
            Self::Listeners => LISTENER_TYPE_URL,
            Self::Routes => ROUTE_TYPE_URL,
        }
    }

    /// The kind of a type URL.
    pub(super) fn of_type_url(url: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|kind| kind.type_url() == url)
    }

    /// A short name for logs.
    pub(super) fn label(self) -> &'static str {
        match self {
            Self::Secrets => "sds",
            Self::Clusters => "cds",
            Self::Endpoints => "eds",
            Self::Listeners => "lds",
            Self::Routes => "rds",
        }
    }

    /// Whether a request naming no resource asks for all of them (xDS wildcard: CDS and
    /// LDS).
    pub(super) fn wildcard_by_default(self) -> bool {
        matches!(self, Self::Clusters | Self::Listeners)
    }

    /// What to send for a resource that was served on the stream and is gone, when its
    /// absence alone would not remove it.
    pub(super) fn tombstone(self, name: &str) -> Option<Any> {
        match self {
            Self::Endpoints => Some(pack_any(ClusterLoadAssignment {
                cluster_name: name.to_string(),
                ..Default::default()
            })),
            Self::Secrets | Self::Clusters | Self::Listeners | Self::Routes => None,
        }
    }
}

/// A request the stream cannot serve.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct WrongType(pub(super) String);

/// The last response sent on a stream.
#[derive(Debug)]
struct Sent {
    version: String,
    nonce: String,
}

/// The protocol state of one stream.
#[derive(Debug)]
pub(super) struct Subscription {
    kind: Kind,
    /// Who is on the other end (the node id of the first request that had one).
    node: String,
    /// The subscribed resource names (`*` among them: every resource too).
    names: BTreeSet<String>,
    /// Whether every resource is subscribed (wildcard).
    wildcard: bool,
    /// Names sent with a resource on this stream (for EDS tombstones).
    served: BTreeSet<String>,
    /// Digest of the content last sent; `None` before the first response.
    digest: Option<[u8; 32]>,
    sent: Option<Sent>,
    nonces: u64,
}

/// What a response would carry.
struct Content {
    resources: Vec<Any>,
    found: Vec<String>,
    digest: [u8; 32],
}

impl Subscription {
    /// A stream of `kind` that has received nothing yet.
    pub(super) fn new(kind: Kind) -> Self {
        Self {
            kind,
            node: String::new(),
            names: BTreeSet::new(),
            wildcard: false,
            served: BTreeSet::new(),
            digest: None,
            sent: None,
            nonces: 0,
        }
    }

    /// Handles a request: the response to send, if any.
    ///
    /// # Errors
    /// The request names another resource type.
    pub(super) fn on_request(
        &mut self,
        request: DiscoveryRequest,
        snapshot: &Snapshot,
    ) -> Result<Option<DiscoveryResponse>, WrongType> {
        if !request.type_url.is_empty() && request.type_url != self.kind.type_url() {
            return Err(WrongType(request.type_url));
        }
        if self.node.is_empty()
            && let Some(node) = &request.node
        {
            self.node.clone_from(&node.id);
        }
        let kind = self.kind.label();
        if let Some(sent) = &self.sent
            && !request.response_nonce.is_empty()
            && request.response_nonce != sent.nonce
        {
            tracing::debug!(kind, node = %self.node, nonce = %request.response_nonce, "stale xDS request ignored");
            return Ok(None);
        }
        let names: BTreeSet<String> = request.resource_names.into_iter().collect();
        let names_changed = names != self.names;
        if names_changed || request.response_nonce.is_empty() {
            self.wildcard =
                names.contains(WILDCARD) || (names.is_empty() && self.kind.wildcard_by_default());
            if !self.wildcard {
                self.served.retain(|name| names.contains(name));
            }
            self.names = names;
        }
        let initial = request.response_nonce.is_empty();
        if let Some(error) = &request.error_detail {
            tracing::warn!(
                kind,
                node = %self.node,
                rejected = self.sent.as_ref().map_or("", |s| s.version.as_str()),
                kept = %request.version_info,
                code = error.code,
                message = %error.message,
                "the xDS client rejected a response (NACK); waiting for the next change",
            );
        } else if !initial {
            tracing::debug!(kind, node = %self.node, version = %request.version_info, "xDS ACK");
        }
        if !initial && !names_changed {
            return Ok(None);
        }
        Ok(self.respond_if_changed(snapshot))
    }

    /// Handles a change of the served resources: the response to push, if the
    /// subscribed ones changed.
    pub(super) fn on_change(&mut self, snapshot: &Snapshot) -> Option<DiscoveryResponse> {
        self.respond_if_changed(snapshot)
    }

    fn respond_if_changed(&mut self, snapshot: &Snapshot) -> Option<DiscoveryResponse> {
        let content = self.content(snapshot);
        // A wildcard subscription is answered even with nothing (that is its state of
        // the world); named resources that do not exist are waited for.
        let unchanged = match self.digest {
            Some(sent) => sent == content.digest,
            None => !self.wildcard && content.resources.is_empty(),
        };
        if unchanged {
            return None;
        }
        self.nonces += 1;
        let version = version(snapshot.revision, &content.digest);
        let nonce = self.nonces.to_string();
        self.digest = Some(content.digest);
        self.served.extend(content.found);
        self.sent = Some(Sent { version: version.clone(), nonce: nonce.clone() });
        Some(DiscoveryResponse {
            version_info: version,
            resources: content.resources,
            type_url: self.kind.type_url().to_string(),
            nonce,
            ..Default::default()
        })
    }

    fn content(&self, snapshot: &Snapshot) -> Content {
        let available = snapshot.of(self.kind);
        let mut hasher = Sha256::new();
        let mut resources = Vec::new();
        let mut found = Vec::new();
        let every: BTreeSet<&String> = if self.wildcard {
            available.keys().chain(self.names.iter().filter(|n| *n != WILDCARD)).collect()
        } else {
            self.names.iter().collect()
        };
        for name in every {
            let tagged = |hasher: &mut Sha256, tag: u8| {
                hasher.update((name.len() as u64).to_be_bytes());
                hasher.update(name.as_bytes());
                hasher.update([tag]);
            };
            if let Some(resource) = available.get(name) {
                tagged(&mut hasher, 1);
                hasher.update(resource.digest);
                resources.push(resource.any.clone());
                found.push(name.clone());
            } else if self.served.contains(name)
                && let Some(tombstone) = self.kind.tombstone(name)
            {
                tagged(&mut hasher, 0);
                resources.push(tombstone);
            } else {
                tracing::debug!(kind = self.kind.label(), node = %self.node, name, "unknown xDS resource; not sent");
            }
        }
        let digest =
            if resources.is_empty() { Sha256::digest([]).into() } else { hasher.finalize().into() };
        Content { resources, found, digest }
    }
}

/// The answer to a one-off fetch: the named resources at the current version, even
/// when there are none.
pub(super) fn fetch(
    kind: Kind,
    request: DiscoveryRequest,
    snapshot: &Snapshot,
) -> Result<DiscoveryResponse, WrongType> {
    if !request.type_url.is_empty() && request.type_url != kind.type_url() {
        return Err(WrongType(request.type_url));
    }
    let mut subscription = Subscription::new(kind);
    subscription.names = request.resource_names.into_iter().collect();
    subscription.wildcard = subscription.names.contains(WILDCARD)
        || (subscription.names.is_empty() && kind.wildcard_by_default());
    let content = subscription.content(snapshot);
    Ok(DiscoveryResponse {
        version_info: version(snapshot.revision, &content.digest),
        resources: content.resources,
        type_url: kind.type_url().to_string(),
        ..Default::default()
    })
}

/// The resource name that subscribes to every resource of a type.
pub(super) const WILDCARD: &str = "*";

fn version(revision: u64, digest: &[u8; 32]) -> String {
    format!("{revision}-{}", hex::encode(&digest[..8]))
}
