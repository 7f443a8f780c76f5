//! Exports from the cluster's etcd: one export document (see [`super::export_doc`]) per
//! service at `<prefix><namespace>/<name>`, as an operator or a controller writes them.
//!
//! The watcher lists the prefix (in pages, at one revision), then watches it from that
//! revision + 1, keeping a map key → document, and republishes the [`ExportSet`] after
//! each watch response. A bad document is a [`SourceProblem`] at its key (and a warning in
//! the log); it never stops the others. When etcd cannot be reached or the watch breaks,
//! it reconnects with jittered exponential backoff and lists again; a watch whose start
//! revision was compacted away is listed again too. Meanwhile the exports last listed stay
//! (static stability), with a problem at the prefix saying why they may be stale.
//!
//! The same machinery ([`follow`]) follows the single key of an etcd bundle source.

use std::collections::BTreeMap;
use std::future::Future;
use std::time::Duration;

use etcd_client::{Client, ConnectOptions, EventType, GetOptions, WatchOptions};
use rand::Rng as _;
use sha2::{Digest as _, Sha256};
use tokio::sync::watch;

use super::export_doc::{
    DocumentError, KeyError, key_from_etcd_key, normalize_prefix, parse_export_document,
};
use crate::agent::etcd_auth::{EtcdAuth, EtcdAuthError, EtcdConnect, EtcdTlsError, connect_tls};
use crate::agent::view::{ExportSet, SourceProblem};
use crate::service::ServiceExport;

#[cfg(test)]
pub(crate) mod test_etcd;

/// Time allowed for connecting to etcd.
pub(crate) const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Time allowed for one etcd call (a page of the listing, creating the watch).
pub(crate) const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// HTTP/2 keep-alive: a watch on a dead connection fails within interval + timeout.
const KEEP_ALIVE: (Duration, Duration) = (Duration::from_secs(10), Duration::from_secs(5));
/// First reconnection delay (before jitter); doubles on each failure.
const BACKOFF_BASE: Duration = Duration::from_millis(200);
/// Longest reconnection delay.
const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// Keys per page of a listing.
const PAGE_SIZE: i64 = 64;
/// Most pages of one listing (so most keys: `PAGE_SIZE * MAX_PAGES`).
const MAX_PAGES: usize = 1_000;
/// Largest gRPC message accepted from etcd (a page of large documents, a watch response
/// of a large transaction).
const MAX_MESSAGE_BYTES: usize = 128 * 1024 * 1024;
/// How long [`watch_etcd_exports`] waits for the first listing before returning.
const FIRST_LISTING_WAIT: Duration = Duration::from_secs(20);

/// Watches the export documents under `prefix` (taken as ending with `/`) in the etcd at
/// `endpoints` (`http://127.0.0.1:2379` or `127.0.0.1:2379`), for a member of
/// `trust_domain`.
///
/// Returns once the first listing is done or has failed (at most about 20 s), so that the
/// receiver's first value is etcd's content, not an empty set. Until etcd has been listed
/// once, and whenever it cannot be reached, the set carries a problem whose location is
/// the prefix itself (documents' problems are at their keys): its exports are then the
/// last ones listed (none before the first listing), not necessarily etcd's. The task ends
/// when every receiver is dropped. Needs a tokio runtime.
pub async fn watch_etcd_exports(
    endpoints: Vec<String>,
    auth: EtcdAuth,
    prefix: String,
    trust_domain: String,
) -> watch::Receiver<ExportSet> {
    watch_etcd_exports_owned(endpoints, auth, prefix, trust_domain).await.0
}

/// [`watch_etcd_exports`], with the task's handle (the agent owns it).
pub(crate) async fn watch_etcd_exports_owned(
    endpoints: Vec<String>,
    auth: EtcdAuth,
    prefix: String,
    trust_domain: String,
) -> (watch::Receiver<ExportSet>, tokio::task::JoinHandle<()>) {
    let (mut rx, task) = spawn_watch(endpoints, auth, prefix, trust_domain);
    let _ = tokio::time::timeout(FIRST_LISTING_WAIT, rx.changed()).await;
    (rx, task)
}

/// Starts the watcher task; the receiver's first value says nothing was listed yet.
fn spawn_watch(
    endpoints: Vec<String>,
    auth: EtcdAuth,
    prefix: String,
    trust_domain: String,
) -> (watch::Receiver<ExportSet>, tokio::task::JoinHandle<()>) {
    let prefix = normalize_prefix(&prefix);
    let range = Range {
        endpoints: endpoints.clone(),
        auth,
        key: prefix.clone().into_bytes(),
        range_end: Some(prefix_end(prefix.as_bytes())),
    };
    let mut state = ExportsState::new(endpoints, prefix, trust_domain);
    let (tx, rx) = watch::channel(state.set());
    let task = tokio::spawn(async move {
        follow(range, tx.closed(), |event| {
            state.apply(event);
            let set = state.set();
            tx.send_if_modified(|current| {
                let changed = *current != set;
                *current = set;
                changed
            });
        })
        .await;
    });
    (rx, task)
}

/// The documents under the prefix, as last listed and watched.
struct ExportsState {
    endpoints: Vec<String>,
    prefix: String,
    trust_domain: String,
    /// etcd key → its document.
    documents: BTreeMap<String, Document>,
    /// Whether a listing succeeded once.
    listed: bool,
    /// Why etcd cannot be followed right now.
    unreachable: Option<String>,
}

/// One document, parsed.
struct Document {
    /// SHA-256 of its bytes, to skip parsing an unchanged document again.
    hash: [u8; 32],
    /// The export, or what is wrong with the document.
    parsed: Result<ServiceExport, EntryError>,
}

/// What is wrong with an export document in etcd: its key names no service, or the
/// document is refused.
#[derive(Debug, thiserror::Error)]
enum EntryError {
    /// The key is not `<prefix><namespace>/<name>`.
    #[error(transparent)]
    Key(#[from] KeyError),
    /// The document is refused.
    #[error(transparent)]
    Document(#[from] DocumentError),
}

impl ExportsState {
    fn new(endpoints: Vec<String>, prefix: String, trust_domain: String) -> Self {
        Self {
            endpoints,
            prefix,
            trust_domain,
            documents: BTreeMap::new(),
            listed: false,
            unreachable: None,
        }
    }

    fn apply(&mut self, event: RangeEvent) {
        match event {
            RangeEvent::Listed(items) => {
                let mut old = std::mem::take(&mut self.documents);
                for (key, value) in items {
                    let document = self.document(&key, &value, old.remove(&key));
                    self.documents.insert(key, document);
                }
                self.listed = true;
                self.unreachable = None;
                tracing::info!(
                    prefix = %self.prefix,
                    documents = self.documents.len(),
                    "export documents listed"
                );
            }
            RangeEvent::Changed(changes) => {
                for change in changes {
                    match change {
                        Change::Put(key, value) => {
                            let old = self.documents.remove(&key);
                            let document = self.document(&key, &value, old);
                            self.documents.insert(key, document);
                        }
                        Change::Delete(key) => {
                            self.documents.remove(&key);
                        }
                    }
                }
                self.unreachable = None;
            }
            RangeEvent::Unreachable(message) => {
                tracing::warn!(
                    prefix = %self.prefix,
                    endpoints = ?self.endpoints,
                    problem = %message,
                    kept = self.documents.len(),
                    "cannot follow export documents in etcd; keeping the last listed"
                );
                self.unreachable = Some(message);
            }
        }
    }

    /// The document of `value` at `key`, reusing `old` when the bytes are the same.
    fn document(&self, key: &str, value: &[u8], old: Option<Document>) -> Document {
        let hash: [u8; 32] = Sha256::digest(value).into();
        if let Some(old) = old
            && old.hash == hash
        {
            return old;
        }
        let parsed = key_from_etcd_key(&self.prefix, key)
            .map_err(EntryError::from)
            .and_then(|service| Ok(parse_export_document(&service, value, &self.trust_domain)?));
        if let Err(problem) = &parsed {
            tracing::warn!(key, %problem, "export document skipped");
        }
        Document { hash, parsed }
    }

    fn set(&self) -> ExportSet {
        let mut set = ExportSet::default();
        match (&self.unreachable, self.listed) {
            (None, true) => {}
            (None, false) => set.problems.push(SourceProblem {
                location: self.prefix.clone(),
                message: "not listed yet".into(),
            }),
            (Some(why), listed) => set.problems.push(SourceProblem {
                location: self.prefix.clone(),
                message: format!(
                    "etcd {} cannot be followed ({why}); {}",
                    self.endpoints.join(","),
                    if listed { "keeping the exports last listed" } else { "not listed yet" }
                ),
            }),
        }
        for (key, document) in &self.documents {
            match &document.parsed {
                Ok(export) => {
                    set.exports.insert(export.key.clone(), export.clone());
                }
                Err(error) => set
                    .problems
                    .push(SourceProblem { location: key.clone(), message: error.to_string() }),
            }
        }
        set
    }
}

// === following a key range of etcd ===

/// A key range of an etcd to follow.
#[derive(Clone, Debug)]
pub(crate) struct Range {
    /// etcd endpoints.
    pub endpoints: Vec<String>,
    /// TLS and authentication.
    pub auth: EtcdAuth,
    /// The key (or first key of the range).
    pub key: Vec<u8>,
    /// End of the range (exclusive); `None` for the single key.
    pub range_end: Option<Vec<u8>>,
}

/// What [`follow`] reports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum RangeEvent {
    /// Everything the range holds (after each connection, and after a compaction).
    Listed(Vec<(String, Vec<u8>)>),
    /// The changes of one watch response, in order.
    Changed(Vec<Change>),
    /// The range cannot be listed or watched now; it is retried after a backoff.
    Unreachable(String),
}

/// One change of a key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Change {
    /// The key was written.
    Put(String, Vec<u8>),
    /// The key was deleted.
    Delete(String),
}

/// Why one connection's following ended.
#[derive(Debug)]
enum Ended {
    /// etcd could not be reached, or the watch broke.
    Failed(FollowError),
    /// The watch's start revision was compacted away: list again.
    Compacted(i64),
}

/// Why following a range through one connection failed (reported as
/// [`RangeEvent::Unreachable`]).
#[derive(Debug, thiserror::Error)]
enum FollowError {
    /// etcd could not be connected to.
    #[error("connect: {0}")]
    Connect(EtcdError),
    /// The range could not be listed.
    #[error("list: {0}")]
    List(EtcdError),
    /// The watch could not be created.
    #[error("watch: {0}")]
    Watch(EtcdError),
    /// The watch stream broke.
    #[error("watch: {0}")]
    Stream(etcd_client::Error),
    /// etcd ended the watch stream.
    #[error("watch: the stream ended")]
    StreamEnded,
    /// etcd canceled the watch, for this reason.
    #[error("watch canceled: {0}")]
    Canceled(String),
}

/// Follows `range`, reporting to `on_event`, until `closed` resolves: connects, lists,
/// watches from the listing's revision + 1; on any failure reports it, waits a jittered
/// exponential backoff and starts over.
pub(crate) async fn follow(
    range: Range,
    closed: impl Future<Output = ()>,
    mut on_event: impl FnMut(RangeEvent),
) {
    tokio::pin!(closed);
    let mut failures: u32 = 0;
    loop {
        let ended = tokio::select! {
            () = &mut closed => return,
            ended = follow_once(&range, &mut failures, &mut on_event) => ended,
        };
        failures = failures.saturating_add(1);
        match ended {
            Ended::Failed(error) => on_event(RangeEvent::Unreachable(error.to_string())),
            Ended::Compacted(revision) => tracing::info!(
                compacted = revision,
                "etcd compacted the watch's start revision; listing again"
            ),
        }
        tokio::select! {
            () = &mut closed => return,
            () = tokio::time::sleep(backoff(failures)) => {}
        }
    }
}

/// The delay before reconnection attempt `failures` (from 1): exponential from
/// [`BACKOFF_BASE`] up to [`BACKOFF_MAX`], times a random 0.5 to 1.
fn backoff(failures: u32) -> Duration {
    let doublings = failures.saturating_sub(1).min(16);
    let ceiling = BACKOFF_BASE.saturating_mul(1 << doublings).min(BACKOFF_MAX);
    ceiling.mul_f64(rand::rng().random_range(0.5..=1.0))
}

/// The end of the range of keys starting with `prefix` (etcd's convention).
pub(crate) fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

/// Why etcd could not be connected to, or did not answer a call.
#[derive(Debug, thiserror::Error)]
pub(crate) enum EtcdError {
    /// The TLS or authentication settings could not be used (a file unreadable).
    #[error(transparent)]
    Auth(#[from] EtcdAuthError),
    /// No endpoint could be reached over TLS, or the user was refused.
    #[error(transparent)]
    Tls(#[from] EtcdTlsError),
    /// etcd answered with an error, or could not be reached.
    #[error(transparent)]
    Call(#[from] etcd_client::Error),
    /// No answer within [`CALL_TIMEOUT`].
    #[error("no answer within {:?}", CALL_TIMEOUT)]
    Timeout,
    /// The range holds more keys than a listing reads.
    #[error("more than {} keys in the range", PAGE_SIZE.saturating_mul(MAX_PAGES as i64))]
    TooManyKeys,
}

/// An etcd client of `endpoints` with `auth` (its files read now).
pub(crate) async fn connect(endpoints: &[String], auth: &EtcdAuth) -> Result<Client, EtcdError> {
    let options = ConnectOptions::new()
        .with_connect_timeout(CONNECT_TIMEOUT)
        .with_keep_alive(KEEP_ALIVE.0, KEEP_ALIVE.1)
        .with_keep_alive_while_idle(true)
        .with_require_leader(true)
        // etcd's simple tokens expire (5 minutes idle, or an etcd restart): fetch a new
        // one instead of failing every later call.
        .with_auto_token_refresh(true);
    match auth.connect(options)? {
        EtcdConnect::Plain(options) => call(Client::connect(endpoints, Some(options))).await,
        EtcdConnect::Tls { config, options } => {
            Ok(connect_tls(endpoints, config, options, CONNECT_TIMEOUT, KEEP_ALIVE).await?)
        }
    }
}

/// Runs one etcd call with [`CALL_TIMEOUT`].
pub(crate) async fn call<T>(
    future: impl Future<Output = Result<T, etcd_client::Error>>,
) -> Result<T, EtcdError> {
    match tokio::time::timeout(CALL_TIMEOUT, future).await {
        Ok(result) => Ok(result?),
        Err(_) => Err(EtcdError::Timeout),
    }
}

/// Everything in `range`, at one revision, read in pages; and that revision.
pub(crate) async fn list(
    client: &Client,
    range: &Range,
) -> Result<(Vec<(String, Vec<u8>)>, i64), EtcdError> {
    let mut kv = client.kv_client().max_decoding_message_size(MAX_MESSAGE_BYTES);
    let mut items = Vec::new();
    let mut start = range.key.clone();
    let mut revision = 0;
    for _ in 0..MAX_PAGES {
        let mut options = GetOptions::new().with_limit(PAGE_SIZE);
        if let Some(end) = &range.range_end {
            options = options.with_range(end.clone());
        }
        if revision > 0 {
            options = options.with_revision(revision);
        }
        let response = call(kv.get(start.clone(), Some(options))).await?;
        if revision == 0 {
            revision = response.header().map_or(0, |h| h.revision());
        }
        for item in response.kvs() {
            items.push((String::from_utf8_lossy(item.key()).into_owned(), item.value().to_vec()));
        }
        match (response.more(), response.kvs().last(), &range.range_end) {
            (true, Some(last), Some(_)) => {
                start = last.key().to_vec();
                start.push(0);
            }
            _ => return Ok((items, revision)),
        }
    }
    Err(EtcdError::TooManyKeys)
}

/// One connection: list, then watch until something breaks.
async fn follow_once(
    range: &Range,
    failures: &mut u32,
    on_event: &mut impl FnMut(RangeEvent),
) -> Ended {
    let client = match connect(&range.endpoints, &range.auth).await {
        Ok(client) => client,
        Err(error) => return Ended::Failed(FollowError::Connect(error)),
    };
    let (items, revision) = match list(&client, range).await {
        Ok(listing) => listing,
        Err(error) => return Ended::Failed(FollowError::List(error)),
    };
    on_event(RangeEvent::Listed(items));
    watch_from(&client, range, revision.saturating_add(1), failures, on_event).await
}

/// Watches `range` from `start_revision` until the watch breaks. Once etcd has answered
/// the watch, `failures` starts again from 0 (a watch that breaks before is one more
/// failure in a row: an etcd that lists but cannot watch is not listed in a tight loop).
async fn watch_from(
    client: &Client,
    range: &Range,
    start_revision: i64,
    failures: &mut u32,
    on_event: &mut impl FnMut(RangeEvent),
) -> Ended {
    let mut watch_client = client.watch_client().max_decoding_message_size(MAX_MESSAGE_BYTES);
    let mut options = WatchOptions::new().with_start_revision(start_revision);
    if let Some(end) = &range.range_end {
        options = options.with_range(end.clone());
    }
    let mut stream = match call(watch_client.watch(range.key.clone(), Some(options))).await {
        Ok(stream) => stream,
        Err(error) => return Ended::Failed(FollowError::Watch(error)),
    };
    loop {
        let response = match stream.message().await {
            Ok(Some(response)) => response,
            Ok(None) => return Ended::Failed(FollowError::StreamEnded),
            Err(e) => return Ended::Failed(FollowError::Stream(e)),
        };
        if response.canceled() {
            if response.compact_revision() > 0 {
                return Ended::Compacted(response.compact_revision());
            }
            return Ended::Failed(FollowError::Canceled(response.cancel_reason().to_string()));
        }
        *failures = 0;
        let changes: Vec<Change> = response
            .events()
            .iter()
            .filter_map(|event| {
                let kv = event.kv()?;
                let key = String::from_utf8_lossy(kv.key()).into_owned();
                Some(match event.event_type() {
                    EventType::Put => Change::Put(key, kv.value().to_vec()),
                    EventType::Delete => Change::Delete(key),
                })
            })
            .collect();
        if !changes.is_empty() {
            on_event(RangeEvent::Changed(changes));
        }
    }
}

#[cfg(test)]
mod tests;
