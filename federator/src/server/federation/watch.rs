//! Watch streams of the federation API: what each member is sent and when.
//!
//! A watch starts with a snapshot (read and sent in pieces), then sends every change as it
//! is applied, each batch closed by a checkpoint to resume after; a revision older than
//! the replica's change window gets an explicit resync. Every stream of a replica waits on
//! one shared revision watch and computes its next batch when tonic polls it: an idle
//! watch is a little state and a registration, with no task or channel of its own.

use crate::clock::unix_now_ms;
use std::collections::VecDeque;
use std::ops::Bound;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use federator_proto::federation as pb;
use tokio_stream::Stream;
use tonic::Status;

use crate::server::{FederationMetrics, FederationReplica};
use crate::service::{ServiceKey, import_to_proto};
use crate::state::{Change, ChangeKind, FederationState, Member};

/// The stream a `Watch` call answers with.
pub(super) type WatchStream = Pin<Box<dyn Stream<Item = Result<pb::WatchEvent, Status>> + Send>>;

/// How often a watch re-checks the caller's membership when nothing changes.
const WATCH_RECHECK: Duration = Duration::from_secs(1);

/// How many revisions the record of apply times remembers (16 bytes each).
const REVISION_TIMES: usize = 65_536;

/// What one wake-up of a watch has to send.
enum WatchBatch {
    /// The member was removed: close the stream.
    Removed,
    /// Events to send; `snapshot` when they are (a piece of) a snapshot, whose events
    /// carry no apply time.
    Events { events: Vec<pb::WatchEvent>, snapshot: bool },
}

/// Encoded bytes of imports that one piece of a watch snapshot reads under one hold of
/// the state's read lock: a snapshot of a large federation is read a piece at a time, as
/// the watcher takes it, so applying entries never waits behind a whole snapshot and a
/// replica never holds one in memory per new watcher.
const SNAPSHOT_PIECE_BYTES: usize = 64 * 1024;

/// Where a watch is: what the watcher has been sent and what it gets next.
#[derive(Debug)]
struct WatchPosition {
    /// The revision the watcher has been brought to (a snapshot in progress has not
    /// brought it anywhere yet).
    sent: u64,
    /// Nothing computed yet (the first batch is the snapshot, or the resume from `sent`).
    first: bool,
    /// A snapshot being sent piece by piece.
    snapshot: Option<SnapshotProgress>,
    /// [`SNAPSHOT_PIECE_BYTES`], smaller in tests.
    piece_bytes: usize,
}

/// A snapshot sent in pieces. Each piece holds the imports of the services after the
/// previous piece's last key, read at the state's revision then; bundles come with the
/// first piece. The last piece also sends what changed, since it was read, in a piece
/// already sent — which the change log says — and then `SnapshotEnd` at the revision of
/// that last read, so the watcher ends with the state at that revision: each version of
/// an import sent once, as in a snapshot read all at once.
#[derive(Debug)]
struct SnapshotProgress {
    /// The snapshot replaces what the watcher holds: it starts with `Resync`.
    resync: bool,
    /// The revision the first piece (and the bundles) was read at.
    began: Option<u64>,
    /// The pieces sent: each one's last service key and the revision it was read at.
    pieces: Vec<(ServiceKey, u64)>,
}

impl SnapshotProgress {
    fn new(resync: bool) -> Self {
        Self { resync, began: None, pieces: Vec::new() }
    }
}

impl WatchPosition {
    fn new(after: u64) -> Self {
        Self { sent: after, first: true, snapshot: None, piece_bytes: SNAPSHOT_PIECE_BYTES }
    }

    /// Whether the watch has nothing to send until the revision moves.
    fn waits(&self) -> bool {
        !self.first && self.snapshot.is_none()
    }

    /// Computes the next batch from one consistent view of the state. Each bundle or
    /// import version is sent once, at the revision that made it; every batch that ends a
    /// step ends with a `Checkpoint` (or `SnapshotEnd`) at the state's revision, the
    /// revision to resume after.
    fn next(&mut self, s: &FederationState, member: &Member) -> WatchBatch {
        if s.members.get(&member.cluster).is_none_or(|m| m.agent_id != member.agent_id) {
            return WatchBatch::Removed;
        }
        let first = std::mem::replace(&mut self.first, false);
        if self.snapshot.is_none() {
            let revision = s.changes.revision();
            if first && self.sent == 0 {
                self.snapshot = Some(SnapshotProgress::new(false));
            } else if self.sent >= revision {
                // Nothing new — or the watcher saw a newer revision on another replica,
                // and this one must catch up first: never send it anything older.
                return WatchBatch::Events { events: Vec::new(), snapshot: false };
            } else if let Some(changes) = s.changes.since(self.sent) {
                let mut events = change_events(s, member, &changes, |_| true);
                events.push(watch_event(
                    revision,
                    pb::watch_event::Event::Checkpoint(pb::Checkpoint {}),
                ));
                self.sent = revision;
                return WatchBatch::Events { events, snapshot: false };
            } else {
                self.snapshot = Some(SnapshotProgress::new(true));
            }
        }
        self.snapshot_piece(s, member)
    }

    /// The next piece of the snapshot in progress.
    fn snapshot_piece(&mut self, s: &FederationState, member: &Member) -> WatchBatch {
        let Some(progress) = self.snapshot.as_mut() else {
            return WatchBatch::Events { events: Vec::new(), snapshot: false };
        };
        let revision = s.changes.revision();
        let mut events = Vec::new();
        let began = *progress.began.get_or_insert_with(|| {
            if progress.resync {
                events.push(watch_event(revision, pb::watch_event::Event::Resync(true)));
            }
            events.extend(s.bundles.keys().filter_map(|td| bundle_put(s, td, None)));
            revision
        });
        let after = progress.pieces.last().map(|(key, _)| key.clone());
        let services = match &after {
            Some(key) => s.services.range((Bound::Excluded(key), Bound::Unbounded)),
            None => s.services.range::<ServiceKey, _>(..),
        };
        let mut bytes = 0;
        let mut last = None;
        for (key, _) in services {
            if bytes >= self.piece_bytes {
                // More services follow: they go in the next piece.
                if let Some(last) = last {
                    progress.pieces.push((last, revision));
                }
                return WatchBatch::Events { events, snapshot: true };
            }
            if let Some(import) = s.import_for(&member.cluster, key) {
                let (revision, import) = (import.revision, import_to_proto(&import));
                bytes += prost::Message::encoded_len(&import);
                events.push(watch_event(revision, pb::watch_event::Event::ImportPut(import)));
            }
            last = Some(key.clone());
        }
        // The last piece: what changed since in the pieces already sent, then the end.
        if began < revision {
            let Some(changes) = s.changes.since(began) else {
                // The change log no longer reaches back to the first piece: start over,
                // telling the watcher to drop what it got.
                self.snapshot = Some(SnapshotProgress::new(true));
                return WatchBatch::Events { events: Vec::new(), snapshot: true };
            };
            let pieces = &progress.pieces;
            let read_at = |change: &Change| match &change.kind {
                ChangeKind::BundlePut { .. } | ChangeKind::BundleRemoved { .. } => Some(began),
                ChangeKind::ServiceChanged { key } => {
                    // Services after the last piece were read just now.
                    pieces.get(pieces.partition_point(|(last, _)| last < key)).map(|p| p.1)
                }
            };
            events.extend(change_events(s, member, &changes, |change| {
                read_at(change).is_some_and(|read| change.revision > read)
            }));
        }
        events.push(watch_event(revision, pb::watch_event::Event::SnapshotEnd(pb::SnapshotEnd {})));
        self.sent = revision;
        self.snapshot = None;
        WatchBatch::Events { events, snapshot: true }
    }
}

/// What every watch stream of a replica shares (one allocation, not one per stream).
pub(super) struct WatchShared {
    replica: FederationReplica,
    times: RevisionTimes,
    metrics: FederationMetrics,
    /// Why this replica stopped serving, once it did: every stream then ends.
    leaving: Leaving,
    /// The task that follows the revision: owned here, it is aborted once the service
    /// and every stream are gone (the replica's API server ended).
    _revision_task: AbortOnDrop,
}

/// Aborts its task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl WatchShared {
    /// What the watches of `replica` share, and the revision they wait on.
    pub(super) fn start(
        replica: &FederationReplica,
        metrics: FederationMetrics,
        leaving: Leaving,
    ) -> (Arc<Self>, tokio::sync::watch::Receiver<u64>) {
        let times = RevisionTimes::default();
        let (revisions, task) = revision_watch(replica, times.clone());
        let shared = Self {
            replica: replica.clone(),
            times,
            metrics,
            leaving,
            _revision_task: AbortOnDrop(task),
        };
        (Arc::new(shared), revisions)
    }
}

/// Whether a replica stopped serving, and why (`None` while it serves): set when it is
/// stopping (SIGTERM) or failed (its storage), so that watch streams end at once with
/// UNAVAILABLE and agents move to another replica instead of holding the process open.
pub type Leaving = tokio::sync::watch::Receiver<Option<String>>;

/// The status a stream or call gets from a replica that stopped serving for `reason`.
pub(crate) fn leaving_status(reason: &str) -> Status {
    Status::unavailable(format!("{reason}; reconnect to another replica"))
}

/// One member's watch: what it has been sent and what is left to send. Counted in
/// `federator_watch_streams` for as long as it lives.
struct WatchCursor {
    shared: Arc<WatchShared>,
    revisions: tokio::sync::watch::Receiver<u64>,
    /// This stream's view of [`WatchShared::leaving`].
    leaving: Leaving,
    member: Member,
    /// What the watcher has been sent.
    position: WatchPosition,
    /// The member was removed; the stream ends once its error is sent.
    ended: bool,
    /// Encoded bytes handed to tonic since the stream last returned `Pending`.
    unflushed: usize,
    /// Events of the current batch not yet handed to the stream.
    pending: std::vec::IntoIter<pb::WatchEvent>,
}

impl Drop for WatchCursor {
    fn drop(&mut self) {
        self.shared.metrics.watch_streams.dec();
    }
}

/// Encoded bytes a watch hands to tonic before it lets tonic send them (by returning
/// `Pending` once). tonic encodes everything a stream has ready into one buffer that it
/// keeps for the life of the stream: without this pause a snapshot of many events would
/// leave every idle watch holding a buffer the size of its snapshot.
const WATCH_FLUSH_BYTES: usize = federator_proto::codec::ENCODE_BUFFER;

/// The gRPC message prefix: compression flag and length.
const GRPC_PREFIX: usize = 5;

impl WatchCursor {
    /// The status ending the stream, once the replica stopped serving (the stream is then
    /// marked ended).
    fn left(&mut self) -> Option<Status> {
        let reason = self.leaving.borrow_and_update().clone()?;
        self.ended = true;
        Some(leaving_status(&reason))
    }

    /// Computes the next batch from one consistent view of the state.
    fn refill(&mut self) -> Option<Status> {
        let shared = &*self.shared;
        let (position, member) = (&mut self.position, &self.member);
        let (batch, applied) =
            shared.replica.state().read(|s| (position.next(s, member), s.changes.revision()));
        // Reading the state is an observation of its revision too (the recorder task may
        // not have woken yet): the earliest observation wins.
        shared.times.observe(applied, unix_now_ms());
        match batch {
            WatchBatch::Removed => {
                self.ended = true;
                Some(Status::permission_denied(format!(
                    "cluster {} was removed from the federation",
                    self.member.cluster
                )))
            }
            WatchBatch::Events { mut events, snapshot } => {
                shared.times.stamp(&mut events, snapshot);
                if matches!(
                    events.first().and_then(|e| e.event.as_ref()),
                    Some(pb::watch_event::Event::Resync(_))
                ) {
                    shared.metrics.watch_resyncs.inc();
                }
                shared.metrics.watch_events.inc_by(u64::try_from(events.len()).unwrap_or(0));
                self.pending = events.into_iter();
                None
            }
        }
    }
}

/// Streams bundle changes to one member from revision `after`, until the member is
/// removed or the watcher goes away.
///
/// The stream computes its next batch when tonic polls it, after the federation's
/// revision moved (or on the membership recheck timer): an idle watch is this state and
/// a registration in the shared revision watch, with no task or channel of its own.
pub(super) fn watch_stream(
    shared: Arc<WatchShared>,
    revisions: tokio::sync::watch::Receiver<u64>,
    member: Member,
    after: u64,
) -> WatchStream {
    shared.metrics.watch_streams.inc();
    let leaving = shared.leaving.clone();
    let cursor = WatchCursor {
        shared,
        revisions,
        leaving,
        member,
        position: WatchPosition::new(after),
        ended: false,
        unflushed: 0,
        pending: Vec::new().into_iter(),
    };
    Box::pin(futures::stream::unfold(cursor, |mut cursor| async move {
        loop {
            if let Some(event) = cursor.pending.next() {
                let size = prost::Message::encoded_len(&event) + GRPC_PREFIX;
                if cursor.unflushed > 0 && cursor.unflushed + size > WATCH_FLUSH_BYTES {
                    tokio::task::yield_now().await;
                    cursor.unflushed = 0;
                }
                cursor.unflushed += size;
                return Some((Ok(event), cursor));
            }
            // The batch is sent: free its vector rather than keep it for the idle time.
            cursor.pending = Vec::new().into_iter();
            cursor.unflushed = 0;
            if cursor.ended {
                return None;
            }
            if let Some(status) = cursor.left() {
                return Some((Err(status), cursor));
            }
            if cursor.position.waits() {
                // Wake only when the federation's revision moves (or on the recheck
                // timer), or the replica stops serving; not on every turn of the raft core.
                tokio::select! {
                    changed = cursor.revisions.changed() => if changed.is_err() { return None },
                    changed = cursor.leaving.changed() => if changed.is_err() { return None },
                    () = tokio::time::sleep(WATCH_RECHECK) => {}
                }
            }
            if let Some(status) = cursor.refill() {
                return Some((Err(status), cursor));
            }
        }
    }))
}

/// A receiver of the federation state's revision, shared by every watch of a replica:
/// one task follows applied entries and publishes the revision only when it moves. It
/// also records in `times` when it first saw each revision (before waking the watches,
/// so that they find it); revisions at or below the one applied at start are unknown.
/// The task ends once every receiver is gone (or the replica's state is).
fn revision_watch(
    replica: &FederationReplica,
    times: RevisionTimes,
) -> (tokio::sync::watch::Receiver<u64>, tokio::task::JoinHandle<()>) {
    let state = replica.state().clone();
    let mut applied = state.subscribe_applied();
    let initial = state.read(|s| s.changes.revision());
    times.start_after(initial);
    let (tx, rx) = tokio::sync::watch::channel(initial);
    let task = tokio::spawn(async move {
        loop {
            tokio::select! {
                changed = applied.changed() => if changed.is_err() { return },
                () = tx.closed() => return,
            }
            let revision = state.read(|s| s.changes.revision());
            times.observe(revision, unix_now_ms());
            tx.send_if_modified(|current| {
                let moved = *current != revision;
                *current = revision;
                moved
            });
        }
    });
    (rx, task)
}

/// When this replica first saw each recent revision applied, in unix milliseconds: an
/// in-memory record kept beside the replicated state (never in it — it differs between
/// replicas), bounded to [`REVISION_TIMES`] revisions. Cheap to clone (shared).
///
/// Several revisions applied between two observations share the time of the observation
/// that found them: a revision's time is that of the first entry at or above it. The
/// record knows nothing of revisions applied before it started (the state the replica
/// opened with) or forgotten since; a snapshot installed from the leader counts as
/// applied when it was installed.
#[derive(Clone, Debug, Default)]
struct RevisionTimes(Arc<Mutex<RevisionRecord>>);

impl RevisionTimes {
    fn with<R>(&self, f: impl FnOnce(&mut RevisionRecord) -> R) -> R {
        let mut record = self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        f(&mut record)
    }

    /// Revisions up to `revision` were applied before recording began: unknown.
    fn start_after(&self, revision: u64) {
        self.with(|r| r.floor = r.floor.max(revision));
    }

    /// The state was seen at `revision` at `at_ms`.
    fn observe(&self, revision: u64, at_ms: i64) {
        self.with(|r| r.observe(revision, at_ms));
    }

    /// Fills `applied_at_ms` of a watch batch; the events of a snapshot (or a piece of one)
    /// keep 0.
    fn stamp(&self, events: &mut [pb::WatchEvent], snapshot: bool) {
        if snapshot || events.is_empty() {
            return;
        }
        self.with(|r| {
            for event in events {
                event.applied_at_ms = r.applied_at(event.revision);
            }
        });
    }
}

/// The data of [`RevisionTimes`].
#[derive(Debug)]
struct RevisionRecord {
    /// Revisions at or below this one are unknown.
    floor: u64,
    /// `(revision, unix ms)`, both increasing.
    entries: VecDeque<(u64, i64)>,
    /// Most entries kept.
    capacity: usize,
}

impl Default for RevisionRecord {
    fn default() -> Self {
        Self::with_capacity(REVISION_TIMES)
    }
}

impl RevisionRecord {
    fn with_capacity(capacity: usize) -> Self {
        Self { floor: 0, entries: VecDeque::new(), capacity: capacity.max(1) }
    }

    /// Records that the state was at `revision` at `at_ms`, unless that is already known;
    /// forgets the oldest entry when full.
    fn observe(&mut self, revision: u64, at_ms: i64) {
        let last = self.entries.back().map_or(self.floor, |e| e.0);
        if revision <= last {
            return;
        }
        // The wall clock may step back: times never decrease along revisions.
        let at_ms = self.entries.back().map_or(at_ms, |e| e.1.max(at_ms));
        if self.entries.len() >= self.capacity
            && let Some((forgotten, _)) = self.entries.pop_front()
        {
            self.floor = forgotten;
        }
        self.entries.push_back((revision, at_ms));
    }

    /// When `revision` was first seen applied, 0 if unknown.
    fn applied_at(&self, revision: u64) -> i64 {
        if revision <= self.floor {
            return 0;
        }
        let i = self.entries.partition_point(|e| e.0 < revision);
        self.entries.get(i).map_or(0, |e| e.1)
    }
}

fn watch_event(revision: u64, event: pb::watch_event::Event) -> pb::WatchEvent {
    pb::WatchEvent { revision, event: Some(event), applied_at_ms: 0 }
}

/// The bundle of `td` as an event, at `revision` or else at the bundle's own revision.
fn bundle_put(s: &FederationState, td: &str, revision: Option<u64>) -> Option<pb::WatchEvent> {
    s.bundles.get(td).map(|b| {
        watch_event(
            revision.unwrap_or(b.revision),
            pb::watch_event::Event::BundlePut(pb::TrustBundle {
                trust_domain: td.to_string(),
                spiffe_bundle_json: b.bundle.to_spiffe_json(),
                sequence: b.bundle.sequence,
            }),
        )
    })
}

/// The events that bring a watcher from before `changes` to the state's revision, for
/// the changes `keep` accepts: each bundle or import version once, at the revision that
/// made it (a version replaced later in `changes` is skipped: the later change sends
/// what is current).
fn change_events(
    s: &FederationState,
    member: &Member,
    changes: &[Change],
    keep: impl Fn(&Change) -> bool,
) -> Vec<pb::WatchEvent> {
    let import_removed = |key: &ServiceKey, revision: u64| {
        watch_event(
            revision,
            pb::watch_event::Event::ImportRemoved(pb::ImportRemoved {
                namespace: key.namespace.clone(),
                name: key.name.clone(),
            }),
        )
    };
    let mut events = Vec::new();
    for (i, change) in changes.iter().enumerate() {
        if !keep(change) {
            continue;
        }
        match &change.kind {
            ChangeKind::BundlePut { trust_domain } => {
                if s.bundles.get(trust_domain).is_some_and(|b| b.revision == change.revision) {
                    events.extend(bundle_put(s, trust_domain, Some(change.revision)));
                }
            }
            ChangeKind::BundleRemoved { trust_domain } => events.push(watch_event(
                change.revision,
                pb::watch_event::Event::BundleRemoved(pb::BundleRemoved {
                    trust_domain: trust_domain.clone(),
                }),
            )),
            ChangeKind::ServiceChanged { key } => match s.services.get(key) {
                Some(record) if record.revision == change.revision => {
                    events.push(match s.import_for(&member.cluster, key) {
                        Some(import) => watch_event(
                            change.revision,
                            pb::watch_event::Event::ImportPut(import_to_proto(&import)),
                        ),
                        None => import_removed(key, change.revision),
                    });
                }
                Some(_) => {}
                None => {
                    // Gone now: say so once, at the last change of it.
                    let later = changes[i + 1..].iter().any(
                        |c| matches!(&c.kind, ChangeKind::ServiceChanged { key: k } if k == key),
                    );
                    if !later {
                        events.push(import_removed(key, change.revision));
                    }
                }
            },
        }
    }
    events
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::Command;

    use crate::service::{Endpoint, ExportMode, ExportScope, ServiceExport, ServicePort};
    use crate::state::test_support::{Cluster, apply, joined, now};
    use proptest::prelude::*;

    fn export(td: &str, name: &str) -> Command {
        Command::ExportService {
            cluster: td.trim_end_matches(".test").into(),
            export: ServiceExport {
                key: ServiceKey::new("ns", name),
                ports: vec![ServicePort {
                    name: "http".into(),
                    port: 80,
                    protocol: crate::service::Protocol::Tcp,
                    app_protocol: String::new(),
                }],
                endpoints: vec![Endpoint {
                    address: std::net::Ipv4Addr::LOCALHOST.into(),
                    ports: Vec::new(),
                    zone: String::new(),
                    region: String::new(),
                    weight: 1,
                    ready: true,
                }],
                identities: vec![format!("spiffe://{td}/w")],
                scope: ExportScope::AllMembers,
                mode: ExportMode::Direct,
            },
            now: now(),
        }
    }

    type Described = (u64, &'static str, String);

    fn describe(e: pb::WatchEvent) -> Described {
        let (kind, name) = match e.event.expect("event") {
            pb::watch_event::Event::BundlePut(b) => ("bundle", b.trust_domain),
            pb::watch_event::Event::BundleRemoved(b) => ("bundle-", b.trust_domain),
            pb::watch_event::Event::ImportPut(i) => ("import", i.name),
            pb::watch_event::Event::ImportRemoved(i) => ("import-", i.name),
            pb::watch_event::Event::Resync(_) => ("resync", String::new()),
            pb::watch_event::Event::SnapshotEnd(_) => ("end", String::new()),
            pb::watch_event::Event::Checkpoint(_) => ("checkpoint", String::new()),
        };
        (e.revision, kind, name)
    }

    /// One wake-up's batch.
    fn piece(s: &FederationState, member: &Member, position: &mut WatchPosition) -> Vec<Described> {
        let WatchBatch::Events { events, .. } = position.next(s, member) else { panic!("removed") };
        events.into_iter().map(describe).collect()
    }

    /// Every batch until the watch waits again (all of a snapshot's pieces), and the
    /// revision it reached.
    fn step(
        s: &FederationState,
        member: &Member,
        position: &mut WatchPosition,
    ) -> (Vec<Described>, u64) {
        let mut out = piece(s, member, position);
        for _ in 0..100_000 {
            if position.waits() {
                return (out, position.sent);
            }
            out.extend(piece(s, member, position));
        }
        panic!("a snapshot never ended")
    }

    /// A watch that has been sent everything up to `sent`.
    fn resumed(sent: u64) -> WatchPosition {
        WatchPosition { first: false, ..WatchPosition::new(sent) }
    }

    fn step_from(
        s: &FederationState,
        member: &Member,
        sent: u64,
        first: bool,
    ) -> (Vec<Described>, u64) {
        let mut position = if first { WatchPosition::new(sent) } else { resumed(sent) };
        step(s, member, &mut position)
    }

    #[test]
    fn a_watch_snapshots_then_resumes_without_gap_or_duplicate() {
        let (a, b) = (Cluster::new("a.test"), Cluster::new("b.test"));
        let mut s = joined(&[("a", &a), ("b", &b)]);
        apply(&mut s, 10, export("a.test", "one")).expect("export");
        let member = s.members["b"].clone();
        let (snapshot, at) = step_from(&s, &member, 0, true);
        let kinds: Vec<&str> = snapshot.iter().map(|e| e.1).collect();
        assert_eq!(kinds, vec!["bundle", "bundle", "import", "end"]);
        assert_eq!(at, s.changes.revision());
        // Two changes to "two" and one to "one" after the snapshot; "two" is then removed.
        apply(&mut s, 11, export("a.test", "two")).expect("export");
        apply(&mut s, 12, export("a.test", "one")).expect("update");
        let (batch, at2) = step_from(&s, &member, at, false);
        assert_eq!(
            batch.iter().map(|e| (e.1, e.2.as_str())).collect::<Vec<_>>(),
            vec![("import", "two"), ("import", "one"), ("checkpoint", "")]
        );
        assert!(batch.windows(2).all(|w| w[0].0 <= w[1].0), "revisions never go back: {batch:?}");
        apply(&mut s, 13, export("a.test", "two")).expect("update");
        apply(
            &mut s,
            14,
            Command::UnexportService {
                cluster: "a".into(),
                key: ServiceKey::new("ns", "two"),
                now: now(),
            },
        )
        .expect("unexport");
        // Resuming from the middle: the update of "two" is superseded by its removal,
        // which is said once.
        let (batch, _) = step_from(&s, &member, at2, false);
        assert_eq!(
            batch.iter().map(|e| (e.1, e.2.as_str())).collect::<Vec<_>>(),
            vec![("import-", "two"), ("checkpoint", "")]
        );
        // A watcher ahead of this replica gets nothing older.
        let (ahead, at3) = step_from(&s, &member, s.changes.revision() + 5, false);
        assert!(ahead.is_empty());
        assert_eq!(at3, s.changes.revision() + 5);
    }

    /// What a watcher holds after `events`: imports by name, at their revision.
    fn replay(view: &mut std::collections::BTreeMap<String, u64>, events: &[Described]) {
        for (revision, kind, name) in events {
            match *kind {
                "import" => {
                    view.insert(name.clone(), *revision);
                }
                "import-" => {
                    view.remove(name);
                }
                "resync" => view.clear(),
                _ => {}
            }
        }
    }

    fn imports_of(s: &FederationState, member: &Member) -> std::collections::BTreeMap<String, u64> {
        s.imports_for(&member.cluster).into_iter().map(|i| (i.key.name, i.revision)).collect()
    }

    /// No import version sent twice since the last resync.
    fn assert_each_version_once(events: &[Described]) {
        let since_resync = events.iter().rposition(|e| e.1 == "resync").map_or(0, |i| i + 1);
        let mut seen = std::collections::HashSet::new();
        for e in &events[since_resync..] {
            if e.1.starts_with("import") {
                assert!(seen.insert(e.clone()), "sent twice: {e:?} in {events:?}");
            }
        }
    }

    fn unexport(name: &str) -> Command {
        Command::UnexportService {
            cluster: "a".into(),
            key: ServiceKey::new("ns", name),
            now: now(),
        }
    }

    /// A federation where cluster a exports `services` services `s00`, `s01`, … and b
    /// watches.
    fn exporting(services: usize) -> (FederationState, Member, u64) {
        let (a, b) = (Cluster::new("a.test"), Cluster::new("b.test"));
        let mut s = joined(&[("a", &a), ("b", &b)]);
        let mut index = 10;
        for i in 0..services {
            apply(&mut s, index, export("a.test", &format!("s{i:02}"))).expect("export");
            index += 1;
        }
        let member = s.members["b"].clone();
        (s, member, index)
    }

    #[test]
    fn a_snapshot_in_pieces_ends_at_the_state_it_reached_with_each_version_once() {
        let (mut s, member, mut index) = exporting(40);
        let mut next = |s: &mut FederationState, command: Command| {
            index += 1;
            let _ = apply(s, index, command);
        };
        // One import per piece.
        let mut position = WatchPosition { piece_bytes: 1, ..WatchPosition::new(0) };
        let mut events = Vec::new();
        for _ in 0..5 {
            events.extend(piece(&s, &member, &mut position));
        }
        assert!(!position.waits(), "still in the snapshot");
        assert_eq!(
            events.iter().filter(|e| e.1 == "import").map(|e| e.2.as_str()).collect::<Vec<_>>(),
            ["s00", "s01", "s02", "s03", "s04"]
        );
        next(&mut s, export("a.test", "s02")); // sent: sent again, changed
        next(&mut s, unexport("s03")); // sent: removed
        next(&mut s, unexport("s20")); // not sent yet: never mentioned
        next(&mut s, export("a.test", "s25")); // not sent yet: sent once, changed
        next(&mut s, export("a.test", "s02a")); // new, among the sent ones
        next(&mut s, export("a.test", "s99")); // new, after them
        let (rest, at) = step(&s, &member, &mut position);
        events.extend(rest);
        assert_eq!(at, s.changes.revision());
        assert_eq!(events.last().map(|e| (e.0, e.1)), Some((at, "end")));
        assert!(!events.iter().any(|e| e.2 == "s20"), "{events:?}");
        assert_each_version_once(&events);
        let mut view = std::collections::BTreeMap::new();
        replay(&mut view, &events);
        assert_eq!(view, imports_of(&s, &member));
        // And the watch goes on from there like any other.
        next(&mut s, export("a.test", "s00"));
        let (batch, _) = step(&s, &member, &mut position);
        assert_eq!(batch.iter().map(|e| e.1).collect::<Vec<_>>(), ["import", "checkpoint"]);
    }

    #[test]
    fn a_snapshot_the_change_log_outran_starts_over_with_a_resync() {
        let (mut s, member, mut index) = exporting(10);
        let mut position = WatchPosition { piece_bytes: 1, ..WatchPosition::new(0) };
        let mut events = piece(&s, &member, &mut position);
        for _ in 0..crate::state::EVENT_WINDOW + 5 {
            index += 1;
            apply(&mut s, index, export("a.test", "s01")).expect("export");
        }
        let (rest, _) = step(&s, &member, &mut position);
        events.extend(rest);
        assert_eq!(events.iter().filter(|e| e.1 == "resync").count(), 1, "{events:?}");
        assert_each_version_once(&events);
        let mut view = std::collections::BTreeMap::new();
        replay(&mut view, &events);
        assert_eq!(view, imports_of(&s, &member));
    }

    #[derive(Clone, Debug)]
    enum Op {
        Piece,
        Export(u8),
        Unexport(u8),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![3 => Just(Op::Piece), 2 => (0u8..30).prop_map(Op::Export), 1 => (0u8..30).prop_map(Op::Unexport)]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// Whatever changes land between a snapshot's pieces, the watcher ends with the
        /// state at the snapshot's end, each import version sent once, and resumes from
        /// there without a gap.
        #[test]
        fn snapshot_pieces_and_changes_in_any_order_end_at_the_state(
            ops in proptest::collection::vec(op(), 0..60),
            piece_bytes in 1usize..2_000,
            resume_after_first in any::<bool>(),
        ) {
            let (mut s, member, mut index) = exporting(20);
            let mut position = WatchPosition { piece_bytes, ..WatchPosition::new(0) };
            let mut events = Vec::new();
            let mut view = std::collections::BTreeMap::new();
            for op in ops {
                index += 1;
                match op {
                    Op::Piece => {
                        let batch = piece(&s, &member, &mut position);
                        if position.waits() {
                            // A step ended: the watcher holds the state it reached.
                            events.extend(batch);
                            assert_each_version_once(&events);
                            replay(&mut view, &events);
                            events.clear();
                            prop_assert_eq!(&view, &imports_of(&s, &member));
                        } else {
                            events.extend(batch);
                        }
                    }
                    Op::Export(i) => {
                        let _ = apply(&mut s, index, export("a.test", &format!("s{i:02}")));
                    }
                    Op::Unexport(i) => {
                        let _ = apply(&mut s, index, unexport(&format!("s{i:02}")));
                    }
                }
                if resume_after_first && position.waits() && position.sent > 0 {
                    // Resuming on another replica from where it got to changes nothing.
                    position = resumed(position.sent);
                }
            }
            let (rest, _) = step(&s, &member, &mut position);
            events.extend(rest);
            assert_each_version_once(&events);
            replay(&mut view, &events);
            prop_assert_eq!(&view, &imports_of(&s, &member));
        }
    }

    #[test]
    fn a_compacted_revision_gets_an_explicit_resync() {
        let (a, b) = (Cluster::new("a.test"), Cluster::new("b.test"));
        let mut s = joined(&[("a", &a), ("b", &b)]);
        for i in 0..crate::state::EVENT_WINDOW as u64 + 5 {
            apply(&mut s, 10 + i, export("a.test", "one")).expect("export");
        }
        let member = s.members["b"].clone();
        let (batch, _) = step_from(&s, &member, 1, false);
        assert_eq!(batch.first().map(|e| e.1), Some("resync"));
        assert_eq!(batch.last().map(|e| e.1), Some("end"));
    }

    #[test]
    fn the_revision_record_is_bounded_and_answers_the_first_entry_at_or_above() {
        let mut record = RevisionRecord::with_capacity(4);
        record.floor = 10;
        // Known before recording began, or not seen yet: unknown.
        assert_eq!(record.applied_at(10), 0);
        assert_eq!(record.applied_at(11), 0);
        record.observe(13, 1_000); // 11, 12 and 13 were applied between two looks
        record.observe(13, 5_000); // seen again: the first look wins
        record.observe(12, 6_000); // older: ignored
        record.observe(14, 900); // the clock stepped back: never earlier than 13
        assert_eq!(record.applied_at(10), 0);
        assert_eq!((record.applied_at(11), record.applied_at(12)), (1_000, 1_000));
        assert_eq!((record.applied_at(13), record.applied_at(14)), (1_000, 1_000));
        assert_eq!(record.applied_at(15), 0);
        for (i, revision) in (20..30).enumerate() {
            record.observe(revision, 2_000 + i64::try_from(i).expect("small"));
        }
        assert_eq!(record.entries.len(), 4, "bounded");
        assert_eq!(record.floor, 25, "the forgotten revisions are unknown");
        assert_eq!(record.applied_at(25), 0);
        assert_eq!(record.applied_at(26), 2_006);
        assert_eq!(record.applied_at(29), 2_009);
        assert_eq!(record.applied_at(30), 0);
    }

    #[test]
    fn watch_events_carry_when_the_replica_applied_them_but_a_snapshot_does_not() {
        let (a, b) = (Cluster::new("a.test"), Cluster::new("b.test"));
        let mut s = joined(&[("a", &a), ("b", &b)]);
        let times = RevisionTimes::default();
        times.start_after(s.changes.revision());
        let member = s.members["b"].clone();
        let mut position = WatchPosition::new(0);
        let WatchBatch::Events { events: mut snapshot, snapshot: true } =
            position.next(&s, &member)
        else {
            panic!("a snapshot")
        };
        assert!(position.waits(), "one piece holds this small snapshot");
        let at = position.sent;
        apply(&mut s, 10, export("a.test", "one")).expect("export");
        times.observe(s.changes.revision(), 1_234);
        times.stamp(&mut snapshot, true);
        assert!(snapshot.iter().all(|e| e.applied_at_ms == 0), "{snapshot:?}");
        let WatchBatch::Events { events: mut batch, snapshot: false } =
            resumed(at).next(&s, &member)
        else {
            panic!("a change batch")
        };
        times.stamp(&mut batch, false);
        assert_eq!(batch.len(), 2, "{batch:?}");
        assert!(batch.iter().all(|e| e.applied_at_ms == 1_234), "{batch:?}");
    }
}
