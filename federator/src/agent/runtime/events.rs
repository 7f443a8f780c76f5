//! The federation's changes, as the watch stream gives them: each event applied to a
//! working view, which a checkpoint makes the applied view (saved, handed to the sinks);
//! once every sink holds it, the changes have propagated (measured) and the federated
//! bundle sequences are acknowledged.

use federator_proto::federation as pb;
use federator_proto::federation::federation_client::FederationClient;
use federator_proto::federation::watch_event::Event;
use tonic::transport::Channel;

use super::own_bundle::authorities_digest;
use super::session_error::SessionError;
use super::{Agent, blocking};
use crate::agent::deadlines::{ReplicaFault, bounded};
use crate::agent::held::HeldBundle;
use crate::agent::metrics::{ChangeKind, Propagation, import_sources};
use crate::agent::status::PropagationStatus;
use crate::agent::view::AgentView;
use crate::bundle::{ValidationPolicy, parse_spiffe_bundle};
use crate::clock::unix_now_ms;
use crate::service::{ServiceKey, import_from_proto};

/// Most changes kept waiting for every sink to hold them (for the propagation metric);
/// beyond, while a sink keeps failing, further changes are not measured.
const MAX_PENDING_PROPAGATION: usize = 4096;

impl Agent {
    /// Applies one watch event to the working view; a checkpoint makes it the view.
    pub(super) async fn on_event(
        &mut self,
        client: &mut FederationClient<Channel>,
        working: &mut AgentView,
        event: pb::WatchEvent,
    ) -> Result<(), SessionError> {
        let revision = event.revision;
        let applied_at_ms = event.applied_at_ms;
        self.status.received_revision = self.status.received_revision.max(revision);
        let own_td = self.membership.as_ref().map(|m| m.trust_domain.clone()).unwrap_or_default();
        match event.event {
            Some(Event::BundlePut(b)) if b.trust_domain != own_td => {
                match parse_spiffe_bundle(
                    &b.trust_domain,
                    b.spiffe_bundle_json.as_bytes(),
                    &ValidationPolicy::at(unix_now_ms() / 1000),
                ) {
                    Ok(bundle) => {
                        // An unchanged re-put (same sequence and content) propagates nothing.
                        if working.bundles.get(&b.trust_domain) != Some(&bundle) {
                            self.note_change(ChangeKind::Bundle, &b.trust_domain, applied_at_ms);
                        }
                        working.bundles.insert(b.trust_domain, bundle);
                    }
                    Err(error) => tracing::warn!(
                        trust_domain = %b.trust_domain,
                        %error,
                        "a federated bundle does not validate here; keeping the last good one"
                    ),
                }
            }
            // The own bundle comes from the cluster's own source, not from the federation;
            // what the federation holds of it is kept to compare.
            Some(Event::BundlePut(b)) => {
                working.held_own_bundle = parse_spiffe_bundle(
                    &b.trust_domain,
                    b.spiffe_bundle_json.as_bytes(),
                    &ValidationPolicy::at(unix_now_ms() / 1000),
                )
                .ok()
                .map(|bundle| HeldBundle {
                    sequence: b.sequence,
                    authorities_digest: authorities_digest(&bundle),
                });
            }
            Some(Event::BundleRemoved(b)) if b.trust_domain == own_td => {
                working.held_own_bundle = None;
            }
            Some(Event::BundleRemoved(b)) => {
                let removed = working.bundles.remove(&b.trust_domain);
                if removed.is_some() {
                    self.note_change(ChangeKind::Bundle, &b.trust_domain, applied_at_ms);
                }
            }
            Some(Event::ImportPut(i)) => match import_from_proto(i, revision) {
                Ok(import) => {
                    for td in import_sources(working.imports.get(&import.key), Some(&import)) {
                        self.note_change(ChangeKind::Import, &td, applied_at_ms);
                    }
                    working.imports.insert(import.key.clone(), import);
                }
                Err(error) => tracing::warn!(%error, "an import does not parse; skipped"),
            },
            Some(Event::ImportRemoved(i)) => {
                let old = working.imports.remove(&ServiceKey::new(i.namespace, i.name));
                for td in import_sources(old.as_ref(), None) {
                    self.note_change(ChangeKind::Import, &td, applied_at_ms);
                }
            }
            Some(Event::Resync(_)) => {
                tracing::warn!(revision, "the federation asked for a full resync");
                self.status.resyncs += 1;
                self.metrics.resyncs.inc();
                working.bundles.clear();
                working.imports.clear();
                working.held_own_bundle = None;
            }
            Some(Event::SnapshotEnd(_) | Event::Checkpoint(_)) => {
                working.revision = revision;
                self.commit(client, working).await?;
            }
            None => {}
        }
        Ok(())
    }

    /// Remembers a change of the working batch, to measure its propagation once every
    /// sink holds it; changes the replica cannot date (`applied_at_ms` 0) are skipped.
    fn note_change(&mut self, kind: ChangeKind, source_trust_domain: &str, applied_at_ms: i64) {
        if applied_at_ms <= 0 {
            return;
        }
        self.batch_changes.push(Propagation {
            kind,
            source_trust_domain: source_trust_domain.to_string(),
            applied_at_ms,
        });
    }

    /// Makes `working` the applied view: saved (on a blocking thread), handed to the
    /// sinks; acknowledged once they report holding it.
    async fn commit(
        &mut self,
        client: &mut FederationClient<Channel>,
        working: &AgentView,
    ) -> Result<(), SessionError> {
        let own_bundle = self.view.own_bundle.clone();
        let membership = self.membership.clone();
        self.view = working.clone();
        self.view.own_bundle = own_bundle;
        if let Some(m) = &membership {
            self.view.cluster.clone_from(&m.cluster);
            self.view.trust_domain.clone_from(&m.trust_domain);
        }
        let (store, view) = (self.store.clone(), self.view.clone());
        blocking(move || store.save_view(&view)).await?;
        self.status.applied_revision = self.view.revision;
        self.status.bundles =
            self.view.bundles.iter().map(|(td, b)| (td.clone(), b.sequence)).collect();
        self.status.imports = self.view.imports.len();
        self.compare_held_bundle();
        let room = MAX_PENDING_PROPAGATION.saturating_sub(self.pending_changes.len());
        let batch = std::mem::take(&mut self.batch_changes);
        self.pending_changes.extend(batch.into_iter().take(room));
        self.hand_view_to_sinks();
        // Without sinks, nothing waits: acknowledge at once.
        self.acknowledge(client).await?;
        Ok(())
    }

    /// Every sink holds the view: the committed changes have propagated.
    pub(super) fn observe_propagation(&mut self) {
        let now = unix_now_ms();
        for change in std::mem::take(&mut self.pending_changes) {
            let seconds = self.metrics.observe_propagation(&change, now);
            tracing::debug!(
                kind = change.kind.as_str(),
                source_trust_domain = %change.source_trust_domain,
                seconds,
                "propagated"
            );
            self.status.last_propagation = Some(PropagationStatus {
                kind: change.kind.as_str().to_string(),
                source_trust_domain: change.source_trust_domain,
                millis: now.saturating_sub(change.applied_at_ms).max(0),
                at_ms: now,
            });
        }
    }

    /// Acknowledges every federated bundle sequence that every sink holds; one the
    /// replica does not accept yet is tried again with the next view.
    ///
    /// # Errors
    /// An acknowledgement got no answer within [`Deadlines::call`] (those accepted before
    /// are recorded).
    pub(super) async fn acknowledge(
        &mut self,
        client: &mut FederationClient<Channel>,
    ) -> Result<(), ReplicaFault> {
        let unwritten = match (&self.unwritten_trust_domains, self.sinks_dirty) {
            (_, false) => std::collections::BTreeSet::new(),
            (Some(unwritten), true) => unwritten.clone(),
            (None, true) => return Ok(()),
        };
        let pending: Vec<(String, u64)> = self
            .view
            .bundles
            .iter()
            .filter(|(td, _)| !unwritten.contains(*td))
            .filter(|(td, b)| self.published.acked.get(*td).is_none_or(|s| *s < b.sequence))
            .map(|(td, b)| (td.clone(), b.sequence))
            .collect();
        let mut changed = false;
        let mut missed = None;
        let deadline = self.deadlines().call;
        for (td, sequence) in pending {
            let request = pb::AckRequest { trust_domain: td.clone(), sequence };
            match bounded("ack", deadline, client.ack(request)).await {
                Ok(Ok(_)) => {
                    tracing::info!(trust_domain = %td, sequence, "acknowledged");
                    self.published.acked.insert(td, sequence);
                    self.metrics.acks.inc();
                    changed = true;
                }
                Ok(Err(error)) => {
                    tracing::debug!(trust_domain = %td, %error, "ack not accepted yet");
                }
                Err(fault) => {
                    missed = Some(fault);
                    break;
                }
            }
        }
        self.published.acked.retain(|td, _| self.view.bundles.contains_key(td));
        if changed && let Err(error) = self.save_published().await {
            tracing::warn!(%error, "cannot save what was acknowledged");
        }
        missed.map_or(Ok(()), Err)
    }
}
