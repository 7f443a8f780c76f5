//! The incremental (delta) xDS protocol of one resource type on one stream, apart from
//! gRPC: what to answer to a request and to a change of the served resources.
//!
//! - The client's first request may list what it already holds
//!   (`initial_resource_versions`, after a reconnect): those are not sent again unless
//!   they changed.
//! - `resource_names_subscribe` / `_unsubscribe` change the subscribed names; `*`
//!   subscribes to every resource, and a first request naming nothing on CDS or LDS is
//!   a wildcard subscription (xDS's legacy wildcard).
//! - A response carries only the resources whose version differs from what the client
//!   holds, and `removed_resources` for those it holds that are gone. An EDS assignment
//!   that is gone is sent empty instead (Envoy keeps endpoints of a removed one).
//! - ACKs and NACKs are answered by nothing (a NACK is logged); the next response goes
//!   out when the resources change.
//!
//! A resource's version is a digest of its encoding, so equal contents give equal
//! versions across reconnects and agent restarts.

use std::collections::{BTreeMap, BTreeSet};

use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, Resource as Wrapped,
};

use super::protocol::{Kind, Snapshot, WILDCARD, WrongType};

/// The version of an EDS tombstone (an assignment without endpoints).
const TOMBSTONE_VERSION: &str = "removed";

/// The protocol state of one resource type on one delta stream.
#[derive(Debug)]
pub(super) struct DeltaSubscription {
    kind: Kind,
    /// Who is on the other end (the node id of the first request that had one).
    node: String,
    /// Whether every resource is subscribed.
    wildcard: bool,
    /// Names subscribed explicitly.
    names: BTreeSet<String>,
    /// What the client holds, name → version.
    held: BTreeMap<String, String>,
    /// Whether a first request was received.
    started: bool,
    /// Whether anything was sent (a wildcard subscription is answered even when empty).
    answered: bool,
    nonces: u64,
}

impl DeltaSubscription {
    /// A stream of `kind` that has received nothing yet.
    pub(super) fn new(kind: Kind) -> Self {
        Self {
            kind,
            node: String::new(),
            wildcard: false,
            names: BTreeSet::new(),
            held: BTreeMap::new(),
            started: false,
            answered: false,
            nonces: 0,
        }
    }

    /// Handles a request: the response to send, if any.
    ///
    /// # Errors
    /// The request names another resource type.
    pub(super) fn on_request(
        &mut self,
        request: DeltaDiscoveryRequest,
        snapshot: &Snapshot,
    ) -> Result<Option<DeltaDiscoveryResponse>, WrongType> {
        if !request.type_url.is_empty() && request.type_url != self.kind.type_url() {
            return Err(WrongType(request.type_url));
        }
        if self.node.is_empty()
            && let Some(node) = &request.node
        {
            self.node.clone_from(&node.id);
        }
        if !self.started {
            self.started = true;
            self.held = request.initial_resource_versions.into_iter().collect();
            self.wildcard =
                request.resource_names_subscribe.is_empty() && self.kind.wildcard_by_default();
        }
        for name in request.resource_names_subscribe {
            if name == WILDCARD {
                self.wildcard = true;
            } else {
                self.names.insert(name);
            }
        }
        for name in request.resource_names_unsubscribe {
            if name == WILDCARD {
                self.wildcard = false;
            } else {
                self.names.remove(&name);
                self.held.remove(&name);
            }
        }
        if let Some(error) = &request.error_detail {
            tracing::warn!(
                kind = self.kind.label(),
                node = %self.node,
                nonce = %request.response_nonce,
                code = error.code,
                message = %error.message,
                "the xDS client rejected a response (NACK); waiting for the next change",
            );
        }
        Ok(self.respond(snapshot))
    }

    /// Handles a change of the served resources: the response to push, if any
    /// subscribed resource changed.
    pub(super) fn on_change(&mut self, snapshot: &Snapshot) -> Option<DeltaDiscoveryResponse> {
        if !self.started {
            return None;
        }
        self.respond(snapshot)
    }

    fn respond(&mut self, snapshot: &Snapshot) -> Option<DeltaDiscoveryResponse> {
        let available = snapshot.of(self.kind);
        let mut interesting: BTreeSet<String> = self.names.clone();
        if self.wildcard {
            interesting.extend(available.keys().cloned());
            interesting.extend(self.held.keys().cloned());
        }
        let mut resources = Vec::new();
        let mut removed = Vec::new();
        for name in interesting {
            match available.get(&name) {
                Some(resource) => {
                    let version = resource.version();
                    if self.held.get(&name) != Some(&version) {
                        resources.push(Wrapped {
                            name: name.clone(),
                            version: version.clone(),
                            resource: Some(resource.any.clone()),
                            ..Default::default()
                        });
                        self.held.insert(name, version);
                    }
                }
                None => {
                    let Some(held) = self.held.get(&name) else { continue };
                    match self.kind.tombstone(&name) {
                        Some(_) if held == TOMBSTONE_VERSION => {}
                        Some(tombstone) => {
                            resources.push(Wrapped {
                                name: name.clone(),
                                version: TOMBSTONE_VERSION.into(),
                                resource: Some(tombstone),
                                ..Default::default()
                            });
                            self.held.insert(name, TOMBSTONE_VERSION.into());
                        }
                        None => {
                            self.held.remove(&name);
                            removed.push(name);
                        }
                    }
                }
            }
        }
        let first_wildcard_answer = self.wildcard && !self.answered;
        if resources.is_empty() && removed.is_empty() && !first_wildcard_answer {
            return None;
        }
        self.answered = true;
        self.nonces += 1;
        Some(DeltaDiscoveryResponse {
            system_version_info: snapshot.revision.to_string(),
            resources,
            type_url: self.kind.type_url().to_string(),
            removed_resources: removed,
            nonce: self.nonces.to_string(),
            ..Default::default()
        })
    }
}

#[cfg(test)]
mod tests;
