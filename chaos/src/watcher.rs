//! A watcher's view of the federation, built from `Watch` events exactly as an agent
//! builds it, and the checks the federation promises every watcher: revisions never go
//! back, no event is repeated, and a resume continues after the last checkpoint.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use anyhow::bail;
use federator_proto::federation as pb;
use federator_proto::federation::watch_event::Event;

/// What a watcher holds: bundles and imports, the revision to resume after, and every
/// event it received.
#[derive(Debug, Default)]
pub struct WatchView {
    /// Bundle sequence per trust domain.
    pub bundles: BTreeMap<String, u64>,
    /// Imports by `ns/name`, with the revision of their last change.
    pub imports: BTreeMap<String, (u64, pb::ServiceImport)>,
    /// The last checkpoint (or snapshot end): where a resume starts.
    pub checkpoint: u64,
    /// Highest revision seen on any event.
    pub highest: u64,
    /// Every event received, in order.
    pub events: Vec<pb::WatchEvent>,
    /// How many explicit resyncs the replicas asked for.
    pub resyncs: usize,
    /// Violations of the watch promises, as found while applying events.
    pub violations: Vec<String>,
    /// `(revision, kind, key)` of every change event, to find repeats.
    seen: BTreeSet<(u64, &'static str, String)>,
    /// Set between a resync and its snapshot end.
    in_resync: bool,
}

impl WatchView {
    /// A view resuming after `checkpoint` (its state is whatever the caller kept).
    #[must_use]
    pub fn resuming_at(checkpoint: u64) -> Self {
        Self { checkpoint, ..Self::default() }
    }

    /// Applies one event, recording any broken promise.
    pub fn apply(&mut self, event: pb::WatchEvent) {
        let revision = event.revision;
        let note = |view: &mut Self, kind: &'static str, key: String| {
            if revision < view.checkpoint && !view.in_resync {
                view.violations.push(format!(
                    "{kind} {key} at revision {revision} is older than checkpoint {}",
                    view.checkpoint
                ));
            }
            if !view.seen.insert((revision, kind, key.clone())) && !view.in_resync {
                view.violations.push(format!("{kind} {key} at revision {revision} repeated"));
            }
        };
        match &event.event {
            Some(Event::BundlePut(b)) => {
                note(self, "bundle", b.trust_domain.clone());
                self.bundles.insert(b.trust_domain.clone(), b.sequence);
            }
            Some(Event::BundleRemoved(b)) => {
                note(self, "bundle-removed", b.trust_domain.clone());
                self.bundles.remove(&b.trust_domain);
            }
            Some(Event::ImportPut(i)) => {
                let key = format!("{}/{}", i.namespace, i.name);
                note(self, "import", key.clone());
                self.imports.insert(key, (revision, i.clone()));
            }
            Some(Event::ImportRemoved(i)) => {
                let key = format!("{}/{}", i.namespace, i.name);
                note(self, "import-removed", key.clone());
                self.imports.remove(&key);
            }
            Some(Event::Resync(_)) => {
                self.resyncs += 1;
                self.in_resync = true;
                self.bundles.clear();
                self.imports.clear();
            }
            Some(Event::SnapshotEnd(_) | Event::Checkpoint(_)) => {
                if revision < self.checkpoint {
                    self.violations.push(format!(
                        "checkpoint went back from {} to {revision}",
                        self.checkpoint
                    ));
                }
                self.in_resync = false;
                self.checkpoint = self.checkpoint.max(revision);
            }
            None => self.violations.push(format!("empty event at revision {revision}")),
        }
        self.highest = self.highest.max(revision);
        self.events.push(event);
    }

    /// The import of `ns/name`, if held.
    #[must_use]
    pub fn import(&self, key: &str) -> Option<&pb::ServiceImport> {
        self.imports.get(key).map(|(_, i)| i)
    }

    /// Ready and total endpoints of an import.
    #[must_use]
    pub fn endpoints(&self, key: &str) -> (usize, usize) {
        self.import(key).map_or((0, 0), |i| {
            let all = i.clusters.iter().flat_map(|c| &c.endpoints);
            (all.clone().filter(|e| e.ready).count(), all.count())
        })
    }

    /// Reads events from `stream` until `until` holds for the view (at most `timeout`).
    ///
    /// # Errors
    /// The stream ended or failed, or the condition did not hold in time.
    pub async fn read_until(
        &mut self,
        stream: &mut tonic::Streaming<pb::WatchEvent>,
        timeout: Duration,
        until: impl Fn(&Self) -> bool,
    ) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + timeout;
        while !until(self) {
            let Ok(next) = tokio::time::timeout_at(deadline, stream.message()).await else {
                bail!(
                    "watch condition not met within {timeout:?}; checkpoint {}, imports {:?}",
                    self.checkpoint,
                    self.imports.keys().collect::<Vec<_>>()
                );
            };
            match next? {
                Some(event) => self.apply(event),
                None => bail!("the watch ended at checkpoint {}", self.checkpoint),
            }
        }
        Ok(())
    }
}
