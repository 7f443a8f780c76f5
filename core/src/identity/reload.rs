//! Certificates that follow their files: the rustls resolvers of every server and client
//! configuration hand out the current certificate and key, and a watcher re-reads the
//! files when they change (cert-manager, SPIRE or an operator rotating them), without a
//! restart and without dropping connections.
//!
//! Or that follow the SPIFFE Workload API ([`CertifiedIdentity::from_workload_api`]): the
//! SVID is taken from its `FetchX509SVID` stream as each rotation is pushed.

use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use rustls::client::ResolvesClientCert;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::sync::{mpsc, watch};

use super::IdentityError;
use super::workload_api::{Svid, SvidUpdateError, WorkloadApiAddress, follow_svid};

/// The files an identity was loaded from, and when they last changed.
#[derive(Debug)]
struct FileSource {
    cert: PathBuf,
    key: PathBuf,
    modified: RwLock<(Option<SystemTime>, Option<SystemTime>)>,
}

/// Where a changing identity comes from.
#[derive(Debug)]
enum Source {
    /// PEM files, re-read when they change.
    Files(FileSource),
    /// The Workload API: a task keeps this channel's value the current SVID (and ends
    /// when the identity, holding the receiver, is dropped).
    WorkloadApi(watch::Receiver<Arc<CertifiedKey>>),
}

/// A certificate chain and key, swapped in place when its files change (or the Workload
/// API pushes a new one).
#[derive(Debug)]
pub struct CertifiedIdentity {
    current: RwLock<Arc<CertifiedKey>>,
    source: Option<Source>,
}

impl CertifiedIdentity {
    /// An identity that never changes.
    ///
    /// # Errors
    /// The key does not load or does not match the certificate.
    pub fn fixed(
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
    ) -> Result<Self, IdentityError> {
        Ok(Self { current: RwLock::new(Arc::new(certified(chain, key)?)), source: None })
    }

    /// An identity read from `cert` and `key` (PEM), re-read by [`Self::reload_if_changed`].
    ///
    /// # Errors
    /// The files cannot be read, or do not hold a matching certificate and key.
    pub fn from_files(cert: PathBuf, key: PathBuf) -> Result<Self, IdentityError> {
        let modified = (mtime(&cert), mtime(&key));
        let (chain, private) = read_pair(&cert, &key)?;
        Ok(Self {
            current: RwLock::new(Arc::new(certified(chain, private)?)),
            source: Some(Source::Files(FileSource { cert, key, modified: RwLock::new(modified) })),
        })
    }

    /// An identity from the SPIFFE Workload API at `address`: the X.509-SVID of
    /// `trust_domain` in its `FetchX509SVID` stream (or the first one when none is, or no
    /// trust domain is given), kept current as the API pushes rotations: an SVID with
    /// another certificate chain replaces the current one (so [`Self::current`] returns a
    /// new `Arc`); one whose key does not match keeps the current one. When the stream
    /// fails the current SVID stays in service while the client reconnects with backoff.
    ///
    /// Waits for the first SVID at most `first_within`. Needs a tokio runtime; the client
    /// stops when the identity is dropped.
    ///
    /// # Errors
    /// No usable SVID came within `first_within` (the error, for the setting
    /// `svid.workload_api`, says what went wrong last).
    pub async fn from_workload_api(
        address: WorkloadApiAddress,
        trust_domain: Option<String>,
        first_within: Duration,
    ) -> Result<Self, IdentityError> {
        let location = address.to_string();
        let mut updates = follow_svid(address, trust_domain);
        let deadline = tokio::time::Instant::now() + first_within;
        let mut last_problem = "no answer".to_string();
        let first = loop {
            let update = match tokio::time::timeout_at(deadline, updates.recv()).await {
                Ok(Some(update)) => update,
                Ok(None) | Err(_) => break None,
            };
            match update.map(certified_svid) {
                Ok(Ok(key)) => break Some(key),
                Ok(Err(problem)) => last_problem = problem.to_string(),
                Err(problem) => last_problem = problem.to_string(),
            }
        };
        let Some(first) = first else {
            return Err(IdentityError::Read {
                field: "svid.workload_api",
                path: location,
                source: std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("no usable X.509-SVID within {first_within:?}; last: {last_problem}"),
                ),
            });
        };
        let first = Arc::new(first);
        tracing::info!(
            workload_api = %location,
            spiffe_id = leaf_spiffe_id(&first).as_deref().unwrap_or("?"),
            "SVID from the Workload API"
        );
        let (tx, rx) = watch::channel(first.clone());
        tokio::spawn(keep_current(updates, tx, location));
        Ok(Self { current: RwLock::new(first), source: Some(Source::WorkloadApi(rx)) })
    }

    /// The current certificate and key.
    #[must_use]
    pub fn current(&self) -> Arc<CertifiedKey> {
        if let Some(Source::WorkloadApi(current)) = &self.source {
            return current.borrow().clone();
        }
        match self.current.read() {
            Ok(guard) => guard.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Re-reads the files if either changed since the last read. A pair that does not
    /// load (say, the certificate was replaced and the key not yet) keeps the old one in
    /// service; the next change is tried again. Returns whether the identity changed.
    pub fn reload_if_changed(&self) -> bool {
        let Some(Source::Files(source)) = &self.source else { return false };
        let now = (mtime(&source.cert), mtime(&source.key));
        let Ok(mut seen) = source.modified.write() else { return false };
        if *seen == now {
            return false;
        }
        match read_pair(&source.cert, &source.key).and_then(|(chain, key)| certified(chain, key)) {
            Ok(key) => {
                *seen = now;
                if let Ok(mut current) = self.current.write() {
                    *current = Arc::new(key);
                }
                tracing::info!(cert = %source.cert.display(), "certificate reloaded");
                true
            }
            Err(error) => {
                tracing::warn!(%error, cert = %source.cert.display(), "changed certificate files do not load; keeping the current certificate");
                false
            }
        }
    }

    /// Checks the files every `period` until the process ends (needs a tokio runtime).
    /// Nothing to do for a fixed identity or one from the Workload API (which follows
    /// it from the start).
    pub fn watch(self: &Arc<Self>, period: Duration) {
        if !matches!(self.source, Some(Source::Files(_))) {
            return;
        }
        let this = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(period).await;
                let Some(identity) = this.upgrade() else { return };
                identity.reload_if_changed();
            }
        });
    }
}

impl ResolvesServerCert for CertifiedIdentity {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }
}

impl ResolvesClientCert for CertifiedIdentity {
    fn resolve(
        &self,
        _issuers: &[&[u8]],
        _schemes: &[rustls::SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// Keeps `tx` the current SVID from `updates` until every receiver is dropped.
async fn keep_current(
    mut updates: mpsc::Receiver<Result<Svid, SvidUpdateError>>,
    tx: watch::Sender<Arc<CertifiedKey>>,
    location: String,
) {
    loop {
        let update = tokio::select! {
            () = tx.closed() => return,
            update = updates.recv() => update,
        };
        match update {
            None => return,
            Some(Ok(svid)) => {
                let spiffe_id = svid.spiffe_id.clone();
                match certified_svid(svid) {
                    Ok(key) => {
                        let changed = tx.borrow().cert != key.cert;
                        if changed {
                            tracing::info!(workload_api = %location, %spiffe_id, "SVID rotated");
                            tx.send_replace(Arc::new(key));
                        }
                    }
                    Err(error) => tracing::warn!(
                        workload_api = %location,
                        %spiffe_id,
                        %error,
                        "the Workload API's SVID does not load; keeping the current one"
                    ),
                }
            }
            // The follower logged it; the current SVID stays in service.
            Some(Err(_problem)) => {}
        }
    }
}

/// The rustls form of an SVID from the Workload API.
fn certified_svid(svid: Svid) -> Result<CertifiedKey, IdentityError> {
    certified(svid.chain, svid.key).map_err(|e| match e {
        IdentityError::Tls(problem) => {
            IdentityError::Tls(format!("X.509-SVID {}: {problem}", svid.spiffe_id))
        }
        other => other,
    })
}

/// The SPIFFE ID of `key`'s leaf, for logs.
fn leaf_spiffe_id(key: &CertifiedKey) -> Option<String> {
    key.end_entity_cert().ok().and_then(|leaf| super::peer_spiffe_id(leaf))
}

fn mtime(path: &std::path::Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

fn read_pair(
    cert: &std::path::Path,
    key: &std::path::Path,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), IdentityError> {
    let pem = |field, path: &std::path::Path| {
        std::fs::read(path).map_err(|source| IdentityError::Read {
            field,
            path: path.display().to_string(),
            source,
        })
    };
    let cert_pem = pem("cert", cert)?;
    let chain =
        CertificateDer::pem_slice_iter(&cert_pem).collect::<Result<Vec<_>, _>>().map_err(|e| {
            IdentityError::Pem {
                field: "cert",
                path: cert.display().to_string(),
                problem: format!("invalid PEM: {e}"),
            }
        })?;
    if chain.is_empty() {
        return Err(IdentityError::Pem {
            field: "cert",
            path: cert.display().to_string(),
            problem: "holds no CERTIFICATE block".into(),
        });
    }
    let key_der =
        PrivateKeyDer::from_pem_slice(&pem("key", key)?).map_err(|e| IdentityError::Pem {
            field: "key",
            path: key.display().to_string(),
            problem: format!("no private key found ({e})"),
        })?;
    Ok((chain, key_der))
}

fn certified(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<CertifiedKey, IdentityError> {
    CertifiedKey::from_der(chain, key, &rustls::crypto::ring::default_provider())
        .map_err(|e| IdentityError::Tls(format!("certificate and key: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::FederationCa;

    #[test]
    fn a_changed_pair_is_picked_up_and_a_broken_one_is_not() {
        let dir = tempfile::tempdir().expect("dir");
        let ca = FederationCa::generate("fed.test", "ca", Duration::from_secs(3600)).expect("ca");
        let write = |id: &str| {
            let leaf = ca.issue(id, &[], &[], Duration::from_secs(3600)).expect("leaf");
            std::fs::write(dir.path().join("c.pem"), leaf.cert_pem).expect("write");
            std::fs::write(dir.path().join("c.key"), leaf.key_pem).expect("write");
        };
        write("spiffe://fed.test/one");
        let identity =
            CertifiedIdentity::from_files(dir.path().join("c.pem"), dir.path().join("c.key"))
                .expect("load");
        let first = identity.current().end_entity_cert().expect("leaf").clone().into_owned();
        assert!(!identity.reload_if_changed(), "nothing changed");

        std::thread::sleep(Duration::from_millis(20));
        write("spiffe://fed.test/two");
        bump(&dir.path().join("c.pem"));
        assert!(identity.reload_if_changed());
        let second = identity.current().end_entity_cert().expect("leaf").clone().into_owned();
        assert_ne!(first, second);
        assert_eq!(
            crate::identity::peer_spiffe_id(&second).as_deref(),
            Some("spiffe://fed.test/two")
        );

        // A certificate whose key is not (yet) there keeps the old pair in service.
        let other =
            ca.issue("spiffe://fed.test/three", &[], &[], Duration::from_secs(3600)).expect("leaf");
        std::fs::write(dir.path().join("c.pem"), other.cert_pem).expect("write");
        bump(&dir.path().join("c.pem"));
        assert!(!identity.reload_if_changed());
        assert_eq!(identity.current().end_entity_cert().expect("leaf").as_ref(), second.as_ref());
    }

    /// Moves the file's modification time forward, for file systems with coarse clocks.
    fn bump(path: &std::path::Path) {
        let file = std::fs::File::options().write(true).open(path).expect("open");
        let later = SystemTime::now() + Duration::from_secs(5);
        file.set_modified(later).expect("set mtime");
    }
}
