//! The cluster's own trust bundle, as its CA publishes it: a file (PEM CA certificates, or
//! a SPIFFE bundle document), an etcd key, or the SPIFFE Workload API, followed as it
//! changes.
//!
//! Every new content is validated like the federation validates bundles
//! ([`parse_pem_bundle`] / [`parse_spiffe_bundle`] at the current time). An invalid or
//! unreadable content keeps the last good bundle in service and reports a problem; the
//! next change is tried again (and an invalid content is re-validated on every poll, so
//! that a certificate that was not yet valid is taken once it is).
//!
//! Sequence numbers. A SPIFFE document carries its own `spiffe_sequence`; a new document
//! whose sequence does not grow is refused here (the federation would refuse it as a
//! replay). A PEM file has none, so the agent numbers it: the first bundle read gets the
//! current unix time in seconds, and each later change of the certificates gets the
//! previous number + 1, or the current time if that is larger. The number lives in memory
//! only; starting from the clock makes a restarted agent's numbers still greater than those
//! it published before (as long as it published fewer bundles than seconds went by, and
//! the clock does not go back). Only a change of the certificates counts: rewriting the
//! file with the same certificates (other comments, whitespace) is no new bundle.
//!
//! An etcd key holds either form: a document starting with `{` is a SPIFFE bundle, anything
//! else PEM.
//!
//! The Workload API ([`crate::identity::workload_api`]) gives the X.509 authorities of the trust
//! domain, numbered exactly like a PEM file: they are read as the PEM of the same
//! certificates, in the server's order. So the first bundle gets the clock, a message
//! with other authorities (a rotation adds or removes a CA) the next number, and a message
//! with the same ones (a reconnection, a change of another trust domain's bundle) none. A
//! restarted agent numbers the same authorities anew from the clock, but their authorities
//! digest is the one it published, so it publishes nothing. When the stream fails the
//! last good bundle stays in service with a problem until the client, reconnecting with
//! backoff, reads the API again; an invalid bundle is validated again every poll, like a
//! file's.

use crate::clock::unix_now;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use tokio::sync::watch;

use super::etcd_exports::{Change, Range, RangeEvent, follow};
use crate::agent::view::SourceProblem;
use crate::bundle::{TrustBundle, ValidationPolicy, parse_pem_bundle, parse_spiffe_bundle};
use crate::identity::certificates_to_pem;
use crate::identity::workload_api::{ENDPOINT_SOCKET_ENV, WorkloadApiAddress, follow_bundle};

/// Shortest poll period (a zero period would spin).
const MIN_POLL: Duration = Duration::from_millis(10);

/// Where the cluster's own bundle comes from (`[bundle]` of `agent.toml`).
///
/// ```toml
/// [bundle]
/// kind = "file"
/// path = "/run/spire/bundle.pem"
/// format = "pem"          # or "spiffe"
/// ```
/// ```toml
/// [bundle]
/// kind = "etcd"
/// endpoints = ["127.0.0.1:2379"]
/// key = "/spire/bundle"
/// ```
/// ```toml
/// [bundle]
/// kind = "workload_api"
/// socket = "unix:///run/spire/agent.sock"   # default: $SPIFFE_ENDPOINT_SOCKET
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum BundleSourceConfig {
    /// A file, polled for changes.
    File {
        /// The file.
        path: PathBuf,
        /// What it holds.
        format: BundleFileFormat,
    },
    /// A key of the cluster's etcd, watched.
    Etcd {
        /// etcd endpoints (`127.0.0.1:2379` or `http://127.0.0.1:2379`).
        endpoints: Vec<String>,
        /// The key.
        key: String,
        /// TLS and authentication of that etcd.
        #[serde(default, skip_serializing_if = "crate::agent::etcd_auth::EtcdAuth::is_unset")]
        auth: crate::agent::etcd_auth::EtcdAuth,
    },
    /// The SPIFFE Workload API (say, SPIRE's agent socket): the bundle of the trust
    /// domain in its X.509 bundles stream, followed.
    #[serde(rename = "workload_api")]
    WorkloadApi {
        /// Its address: `unix:///path/to/socket`, a plain path, or
        /// `tcp://127.0.0.1:PORT` ([`WorkloadApiAddress::parse`]). When absent, the value
        /// of `SPIFFE_ENDPOINT_SOCKET` (the agent's configuration fills it in at load).
        socket: Option<String>,
    },
}

/// What a bundle file holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BundleFileFormat {
    /// PEM `CERTIFICATE` blocks: the X.509 authorities (no JWT authorities).
    Pem,
    /// A SPIFFE bundle (JWKS) document.
    Spiffe,
}

/// The own bundle as the source gives it now.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BundleState {
    /// The last good bundle; `None` until one was read.
    pub bundle: Option<TrustBundle>,
    /// Why the source's current content is not (or may not be) `bundle`: unreadable,
    /// invalid, not read yet. `None` when `bundle` is the source's content.
    pub problem: Option<SourceProblem>,
}

/// Follows the own bundle of `trust_domain` from `config`; a file is checked every `poll`
/// (an etcd key is watched, the Workload API's stream followed). For a file the receiver's
/// first value is the file as read now; for etcd and the Workload API it has no bundle
/// and a "not read yet" problem until they answer. The task ends when every receiver is
/// dropped. Needs a tokio runtime.
#[must_use]
pub fn watch_bundle(
    config: BundleSourceConfig,
    trust_domain: String,
    poll: Duration,
) -> watch::Receiver<BundleState> {
    spawn_watch(config, trust_domain, poll).0
}

/// [`watch_bundle`], with the task's handle (the agent owns it).
pub(crate) fn spawn_watch(
    config: BundleSourceConfig,
    trust_domain: String,
    poll: Duration,
) -> (watch::Receiver<BundleState>, tokio::task::JoinHandle<()>) {
    match config {
        BundleSourceConfig::File { path, format } => watch_file(path, format, trust_domain, poll),
        BundleSourceConfig::Etcd { endpoints, key, auth } => {
            watch_etcd(endpoints, auth, key, trust_domain)
        }
        BundleSourceConfig::WorkloadApi { socket } => {
            watch_workload_api(socket, trust_domain, poll)
        }
    }
}

fn watch_file(
    path: PathBuf,
    format: BundleFileFormat,
    trust_domain: String,
    poll: Duration,
) -> (watch::Receiver<BundleState>, tokio::task::JoinHandle<()>) {
    let mut reader = BundleReader::new(trust_domain, path.display().to_string());
    let max_bytes = ValidationPolicy::at(0).max_bytes;
    reader.update(read_file(&path, max_bytes), format, unix_now());
    let (tx, rx) = watch::channel(reader.state.clone());
    let poll = poll.max(MIN_POLL);
    let task = tokio::spawn(async move {
        loop {
            tokio::select! {
                () = tx.closed() => return,
                () = tokio::time::sleep(poll) => {}
            }
            let file = path.clone();
            let content = tokio::task::spawn_blocking(move || read_file(&file, max_bytes))
                .await
                .unwrap_or_else(|e| Err(Unreadable::Task(e)));
            reader.update(content, format, unix_now());
            publish(&tx, &reader.state);
        }
    });
    (rx, task)
}

fn watch_etcd(
    endpoints: Vec<String>,
    auth: crate::agent::etcd_auth::EtcdAuth,
    key: String,
    trust_domain: String,
) -> (watch::Receiver<BundleState>, tokio::task::JoinHandle<()>) {
    let mut reader = BundleReader::new(trust_domain, key.clone());
    reader.state.problem =
        Some(SourceProblem { location: key.clone(), message: "not read yet".into() });
    let (tx, rx) = watch::channel(reader.state.clone());
    let range = Range {
        endpoints: endpoints.clone(),
        auth,
        key: key.clone().into_bytes(),
        range_end: None,
    };
    let task = tokio::spawn(async move {
        follow(range, tx.closed(), |event| {
            let content = match event {
                RangeEvent::Listed(items) => match items.into_iter().find(|(k, _)| *k == key) {
                    Some((_, value)) => Ok(value),
                    None => Err(Unreadable::NoKey),
                },
                RangeEvent::Changed(changes) => {
                    match changes.into_iter().rev().find_map(|change| match change {
                        Change::Put(k, value) if k == key => Some(Ok(value)),
                        Change::Delete(k) if k == key => Some(Err(Unreadable::KeyDeleted)),
                        Change::Put(..) | Change::Delete(_) => None,
                    }) {
                        Some(content) => content,
                        None => return,
                    }
                }
                RangeEvent::Unreachable(why) => {
                    reader.unreachable(&format!(
                        "etcd {} cannot be read: {why}",
                        endpoints.join(",")
                    ));
                    publish(&tx, &reader.state);
                    return;
                }
            };
            let format = match &content {
                Ok(bytes) if bytes.trim_ascii_start().starts_with(b"{") => BundleFileFormat::Spiffe,
                _ => BundleFileFormat::Pem,
            };
            reader.update(content, format, unix_now());
            publish(&tx, &reader.state);
        })
        .await;
    });
    (rx, task)
}

fn watch_workload_api(
    socket: Option<String>,
    trust_domain: String,
    poll: Duration,
) -> (watch::Receiver<BundleState>, tokio::task::JoinHandle<()>) {
    let address = WorkloadApiAddress::configured_or_env(
        socket.as_deref(),
        std::env::var(ENDPOINT_SOCKET_ENV).ok().as_deref(),
    );
    let location = match (&address, &socket) {
        (Ok(address), _) => address.to_string(),
        (Err(_), Some(text)) => text.clone(),
        (Err(_), None) => ENDPOINT_SOCKET_ENV.to_string(),
    };
    let mut reader = BundleReader::new(trust_domain.clone(), location.clone());
    let message = match &address {
        Ok(_) => "not read yet".to_string(),
        Err(rule) => format!("bundle.socket: {rule}"),
    };
    reader.state.problem = Some(SourceProblem { location, message });
    let (tx, rx) = watch::channel(reader.state.clone());
    let poll = poll.max(MIN_POLL);
    let task = tokio::spawn(async move {
        let Ok(address) = address else { return tx.closed().await };
        let mut updates = follow_bundle(address, trust_domain);
        // The last content read when it did not validate, to validate again every poll
        // (a CA that is not valid yet will be).
        let mut invalid: Option<Vec<u8>> = None;
        loop {
            tokio::select! {
                () = tx.closed() => return,
                update = updates.recv() => match update {
                    None => return,
                    Some(Ok(authorities)) => {
                        let pem = certificates_to_pem(authorities.iter().map(Vec::as_slice));
                        reader.update(Ok(pem.clone().into_bytes()), BundleFileFormat::Pem, unix_now());
                        invalid = reader.state.problem.is_some().then(|| pem.into_bytes());
                    }
                    Some(Err(problem)) => {
                        invalid = None;
                        reader.unreachable(&problem.to_string());
                    }
                },
                () = tokio::time::sleep(poll), if invalid.is_some() => {
                    if let Some(content) = &invalid {
                        reader.update(Ok(content.clone()), BundleFileFormat::Pem, unix_now());
                    }
                    if reader.state.problem.is_none() {
                        invalid = None;
                    }
                }
            }
            publish(&tx, &reader.state);
        }
    });
    (rx, task)
}

fn publish(tx: &watch::Sender<BundleState>, state: &BundleState) {
    tx.send_if_modified(|current| {
        let changed = current != state;
        if changed {
            current.clone_from(state);
        }
        changed
    });
}

/// Why a source's content could not be had (the bundle in service stays).
#[derive(Debug, thiserror::Error)]
enum Unreadable {
    /// The file could not be read.
    #[error("cannot be read: {0}")]
    File(#[from] std::io::Error),
    /// The blocking task reading the file failed.
    #[error("cannot be read: {0}")]
    Task(tokio::task::JoinError),
    /// The etcd key is not there.
    #[error("the key does not exist")]
    NoKey,
    /// The etcd key was deleted.
    #[error("the key was deleted")]
    KeyDeleted,
}

/// Reads at most `max_bytes` + 1 bytes (enough for the parser to tell it is too large).
fn read_file(path: &Path, max_bytes: usize) -> Result<Vec<u8>, Unreadable> {
    use std::io::Read as _;
    let file = std::fs::File::open(path)?;
    let mut bytes = Vec::new();
    file.take(u64::try_from(max_bytes).unwrap_or(u64::MAX).saturating_add(1))
        .read_to_end(&mut bytes)?;
    Ok(bytes)
}

/// Sequence numbers of bundles read from PEM (see the module's documentation).
#[derive(Debug, Default)]
struct PemSequence {
    last: u64,
}

impl PemSequence {
    /// The number of the next bundle at `now` (unix seconds).
    fn next(&mut self, now: i64) -> u64 {
        let now = u64::try_from(now).unwrap_or(0);
        self.last = self.last.saturating_add(1).max(now);
        self.last
    }
}

/// The state of one bundle source between reads.
struct BundleReader {
    trust_domain: String,
    /// Where the content comes from (the file, the etcd key), for problems.
    location: String,
    /// SHA-256 of the content last read; `None` after a failed read.
    last_hash: Option<[u8; 32]>,
    pem_sequence: PemSequence,
    state: BundleState,
}

impl BundleReader {
    fn new(trust_domain: String, location: String) -> Self {
        Self {
            trust_domain,
            location,
            last_hash: None,
            pem_sequence: PemSequence::default(),
            state: BundleState::default(),
        }
    }

    /// Takes the source's current content (or why it cannot be read), validated at `now`.
    fn update(&mut self, content: Result<Vec<u8>, Unreadable>, format: BundleFileFormat, now: i64) {
        let bytes = match content {
            Ok(bytes) => bytes,
            Err(unreadable) => {
                self.last_hash = None;
                self.fail(unreadable.to_string());
                return;
            }
        };
        let hash: [u8; 32] = Sha256::digest(&bytes).into();
        if self.last_hash == Some(hash) && self.state.problem.is_none() {
            return;
        }
        self.last_hash = Some(hash);
        let policy = ValidationPolicy::at(now);
        let parsed = match format {
            BundleFileFormat::Spiffe => parse_spiffe_bundle(&self.trust_domain, &bytes, &policy),
            // Numbered below, once known to be a new bundle.
            BundleFileFormat::Pem => parse_pem_bundle(&self.trust_domain, &bytes, 0, None, &policy),
        };
        let mut bundle = match parsed {
            Ok(bundle) => bundle,
            Err(error) => return self.fail(format!("invalid bundle: {error}")),
        };
        match (format, &self.state.bundle) {
            (BundleFileFormat::Pem, Some(last))
                if last.x509_authorities == bundle.x509_authorities =>
            {
                // The same certificates: the bundle in service stays, with its number.
                self.state.problem = None;
                return;
            }
            (BundleFileFormat::Pem, _) => bundle.sequence = self.pem_sequence.next(now),
            (BundleFileFormat::Spiffe, Some(last)) if *last == bundle => {
                self.state.problem = None;
                return;
            }
            (BundleFileFormat::Spiffe, Some(last)) if bundle.sequence <= last.sequence => {
                return self.fail(format!(
                    "spiffe_sequence {} is not greater than that of the bundle in service ({}); \
                     the federation would refuse it as a replay",
                    bundle.sequence, last.sequence
                ));
            }
            (BundleFileFormat::Spiffe, _) => {}
        }
        tracing::info!(
            source = %self.location,
            trust_domain = %bundle.trust_domain,
            sequence = bundle.sequence,
            digest = %bundle.digest(),
            "own bundle read"
        );
        self.state = BundleState { bundle: Some(bundle), problem: None };
    }

    /// The source cannot be read for now (the content is unknown, not changed).
    fn unreachable(&mut self, message: &str) {
        self.fail(message.to_string());
    }

    /// Reports `message`, keeping the bundle in service.
    fn fail(&mut self, message: String) {
        if self.state.problem.as_ref().map(|p| p.message.as_str()) != Some(message.as_str()) {
            tracing::warn!(
                source = %self.location,
                problem = %message,
                kept = self.state.bundle.as_ref().map(|b| b.sequence),
                "own bundle not updated; keeping the last good one"
            );
        }
        self.state.problem = Some(SourceProblem { location: self.location.clone(), message });
    }
}

#[cfg(test)]
mod tests;
