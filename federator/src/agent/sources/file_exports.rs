//! Exports from a static file (see [`super::export_doc`] for its format), re-read when its
//! content changes.
//!
//! The file is polled: every `poll` it is read and its SHA-256 compared with the last
//! one, so that any way of replacing it (an editor, `mv`, a ConfigMap's symlink swap) is
//! seen, and an unchanged file costs one read. Locations of problems are `<path>` for the
//! file as a whole and `<path>#exports[i]` for an entry.
//!
//! A file that cannot be read, is too large or is not an exports file at all is a problem
//! and changes nothing else: the exports last read stay (none before the first good
//! read), so that a half-written or briefly missing file never withdraws every export. To
//! withdraw them all, write `{"exports": []}`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use sha2::{Digest as _, Sha256};
use tokio::sync::watch;

use super::export_doc::{self, DocumentError, MAX_FILE_BYTES};
use crate::agent::view::{ExportSet, SourceProblem};

/// Shortest poll period (a zero period would spin).
const MIN_POLL: Duration = Duration::from_millis(10);

/// Watches the exports file at `path` for a member of `trust_domain`: reads it now (the
/// receiver's first value is that read) and again whenever its content changes, checking
/// every `poll`. The task ends when every receiver is dropped. Needs a tokio runtime.
#[must_use]
pub fn watch_export_file(
    path: PathBuf,
    trust_domain: String,
    poll: Duration,
) -> watch::Receiver<ExportSet> {
    spawn_watch(path, trust_domain, poll).0
}

/// [`watch_export_file`], with the task's handle (the agent owns it).
pub(crate) fn spawn_watch(
    path: PathBuf,
    trust_domain: String,
    poll: Duration,
) -> (watch::Receiver<ExportSet>, tokio::task::JoinHandle<()>) {
    let mut reader = FileReader::new(path, trust_domain);
    let (tx, rx) = watch::channel(reader.read(read_file(&reader.path)));
    let poll = poll.max(MIN_POLL);
    let task = tokio::spawn(async move {
        loop {
            tokio::select! {
                () = tx.closed() => return,
                () = tokio::time::sleep(poll) => {}
            }
            let path = reader.path.clone();
            let content = tokio::task::spawn_blocking(move || read_file(&path))
                .await
                .unwrap_or_else(|e| Err(std::io::Error::other(e)));
            if let Some(set) = reader.read_if_changed(content) {
                tx.send_if_modified(|current| {
                    let changed = *current != set;
                    *current = set;
                    changed
                });
            }
        }
    });
    (rx, task)
}

/// Reads at most one byte more than [`MAX_FILE_BYTES`] (enough to tell it is too large).
fn read_file(path: &Path) -> std::io::Result<Vec<u8>> {
    use std::io::Read as _;
    let file = std::fs::File::open(path)?;
    let mut bytes = Vec::new();
    file.take(u64::try_from(MAX_FILE_BYTES).unwrap_or(u64::MAX).saturating_add(1))
        .read_to_end(&mut bytes)?;
    Ok(bytes)
}

/// Why the exports file gives no exports (the ones last read are kept).
#[derive(Debug, thiserror::Error)]
enum Unusable {
    /// The file cannot be read.
    #[error("cannot be read: {0}")]
    Unreadable(std::io::Error),
    /// The file is not an exports file (too large, not JSON, not that shape).
    #[error(transparent)]
    Refused(#[from] DocumentError),
}

/// What was read last, to tell changes apart.
struct FileReader {
    path: PathBuf,
    trust_domain: String,
    /// SHA-256 of the content last read; `None` after a failed read.
    last_hash: Option<[u8; 32]>,
    /// The exports of the last good read.
    last_good: ExportSet,
    /// The message of the last failed read (logged once per change).
    last_failure: Option<String>,
}

impl FileReader {
    fn new(path: PathBuf, trust_domain: String) -> Self {
        Self {
            path,
            trust_domain,
            last_hash: None,
            last_good: ExportSet::default(),
            last_failure: None,
        }
    }

    /// The set to publish if the content changed since the last read.
    fn read_if_changed(&mut self, content: std::io::Result<Vec<u8>>) -> Option<ExportSet> {
        if let Ok(bytes) = &content
            && self.last_hash == Some(Sha256::digest(bytes).into())
        {
            return None;
        }
        Some(self.read(content))
    }

    /// The set of `content`, the file's bytes or why it could not be read.
    fn read(&mut self, content: std::io::Result<Vec<u8>>) -> ExportSet {
        let location = self.path.display().to_string();
        let parsed = match content {
            Err(error) => {
                self.last_hash = None;
                Err(Unusable::Unreadable(error))
            }
            Ok(bytes) => {
                self.last_hash = Some(Sha256::digest(&bytes).into());
                if bytes.len() > MAX_FILE_BYTES {
                    Err(DocumentError::file_too_large(bytes.len()).into())
                } else {
                    export_doc::parse_file(&bytes, &self.trust_domain).map_err(Unusable::from)
                }
            }
        };
        match parsed {
            Ok(mut set) => {
                for problem in &mut set.problems {
                    problem.location = format!("{location}#{}", problem.location);
                    tracing::warn!(
                        location = %problem.location,
                        problem = %problem.message,
                        "export skipped"
                    );
                }
                tracing::info!(
                    file = %location,
                    exports = set.exports.len(),
                    problems = set.problems.len(),
                    "exports file read"
                );
                self.last_failure = None;
                self.last_good = set.clone();
                set
            }
            Err(unusable) => {
                let message = unusable.to_string();
                if self.last_failure.as_deref() != Some(message.as_str()) {
                    tracing::warn!(
                        file = %location,
                        problem = %message,
                        kept = self.last_good.exports.len(),
                        "exports file unusable; keeping the exports last read"
                    );
                }
                self.last_failure = Some(message.clone());
                let mut set = self.last_good.clone();
                set.problems.insert(0, SourceProblem { location, message });
                set
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use serde_json::json;

    use super::*;
    use crate::service::ServiceKey;

    const TD: &str = "a.example";
    const POLL: Duration = Duration::from_millis(20);

    fn entry(name: &str) -> serde_json::Value {
        json!({
            "namespace": "shop",
            "name": name,
            "ports": [{"port": 80}],
            "endpoints": [{"address": "127.0.0.1"}],
            "identities": [format!("spiffe://a.example/ns/shop/sa/{name}")]
        })
    }

    fn write(path: &Path, entries: &[serde_json::Value]) {
        let text = serde_json::to_vec(&json!({"exports": entries})).expect("JSON");
        // Atomic replacement, as a careful writer would do.
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, text).expect("write");
        std::fs::rename(&tmp, path).expect("rename");
    }

    fn names(set: &ExportSet) -> Vec<String> {
        set.exports.keys().map(|k: &ServiceKey| k.name.clone()).collect()
    }

    /// Waits until the receiver holds a set `check` accepts.
    async fn wait_for(
        rx: &mut watch::Receiver<ExportSet>,
        what: &str,
        check: impl Fn(&ExportSet) -> bool,
    ) -> ExportSet {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            {
                let current = rx.borrow_and_update();
                if check(&current) {
                    return current.clone();
                }
            }
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(
                tokio::time::timeout(left, rx.changed()).await.is_ok(),
                "timed out waiting for {what}; last: {:?}",
                *rx.borrow()
            );
        }
    }

    #[tokio::test]
    async fn the_file_is_read_at_start_and_after_each_change() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("exports.json");
        write(&path, &[entry("cart")]);
        let mut rx = watch_export_file(path.clone(), TD.into(), POLL);
        assert_eq!(names(&rx.borrow_and_update()), ["cart"], "the first value is the file");

        write(&path, &[entry("cart"), entry("pay")]);
        wait_for(&mut rx, "cart and pay", |s| names(s) == ["cart", "pay"]).await;

        let mut bad = entry("ship");
        bad["endpoints"][0]["address"] = json!("x");
        write(&path, &[entry("pay"), bad]);
        let set = wait_for(&mut rx, "pay only", |s| names(s) == ["pay"]).await;
        assert_eq!(set.problems.len(), 1);
        assert_eq!(set.problems[0].location, format!("{}#exports[1]", path.display()));

        write(&path, &[]);
        let set = wait_for(&mut rx, "nothing", |s| s.exports.is_empty()).await;
        assert!(set.problems.is_empty());
    }

    #[tokio::test]
    async fn a_missing_or_broken_file_is_a_problem_and_keeps_the_last_exports() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("exports.json");
        let mut rx = watch_export_file(path.clone(), TD.into(), POLL);
        {
            let first = rx.borrow_and_update();
            assert!(first.exports.is_empty());
            assert_eq!(first.problems.len(), 1);
            assert_eq!(first.problems[0].location, path.display().to_string());
            assert!(first.problems[0].message.starts_with("cannot be read"), "{first:?}");
        }

        write(&path, &[entry("cart")]);
        wait_for(&mut rx, "cart", |s| names(s) == ["cart"] && s.problems.is_empty()).await;

        std::fs::write(&path, b"{\"exports\": [").expect("write");
        let set = wait_for(&mut rx, "a problem", |s| !s.problems.is_empty()).await;
        assert_eq!(names(&set), ["cart"], "the last exports stay");
        assert!(set.problems[0].message.contains("not well-formed JSON"), "{set:?}");

        std::fs::remove_file(&path).expect("remove");
        let set = wait_for(&mut rx, "unreadable", |s| {
            s.problems.iter().any(|p| p.message.starts_with("cannot be read"))
        })
        .await;
        assert_eq!(names(&set), ["cart"]);

        write(&path, &[entry("pay")]);
        wait_for(&mut rx, "pay", |s| names(s) == ["pay"] && s.problems.is_empty()).await;
    }

    // The paused clock: the polls are counted in virtual time (a file read on the blocking
    // pool holds the clock), so "no change within ten polls" does not depend on the
    // machine's speed.
    #[tokio::test(start_paused = true)]
    async fn an_unchanged_file_is_not_republished() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("exports.json");
        write(&path, &[entry("cart")]);
        let mut rx = watch_export_file(path.clone(), TD.into(), POLL);
        rx.borrow_and_update();
        // Rewriting the same content is no change.
        write(&path, &[entry("cart")]);
        assert!(tokio::time::timeout(POLL * 10, rx.changed()).await.is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn the_task_ends_when_every_receiver_is_dropped() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("exports.json");
        write(&path, &[entry("cart")]);
        let (rx, task) = spawn_watch(path, TD.into(), POLL);
        let other = rx.clone();
        drop(rx);
        // Three polls of virtual time (paused clock) with a receiver left.
        tokio::time::sleep(POLL * 3).await;
        assert!(!task.is_finished(), "a receiver is left");
        drop(other);
        tokio::time::timeout(Duration::from_secs(5), task).await.expect("ends").expect("no panic");
    }

    #[test]
    fn reading_the_same_bytes_twice_is_no_change() {
        let mut reader = FileReader::new(PathBuf::from("/nonexistent/exports.json"), TD.into());
        let bytes = serde_json::to_vec(&json!({"exports": [entry("cart")]})).expect("JSON");
        assert!(reader.read_if_changed(Ok(bytes.clone())).is_some());
        assert!(reader.read_if_changed(Ok(bytes.clone())).is_none());
        assert!(
            reader.read_if_changed(Err(std::io::ErrorKind::NotFound.into())).is_some(),
            "a failed read is reported"
        );
        assert!(reader.read_if_changed(Ok(bytes)).is_some(), "and the file coming back too");
    }
}
