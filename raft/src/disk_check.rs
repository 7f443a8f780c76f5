//! How fast a disk makes a log append durable: the append [`crate::log_store`]'s writer
//! makes (a redb commit without an fsync, and a record in the log's redo file made durable
//! by `fdatasync`), timed, from one writer alone or from several at once (replicas that
//! share a disk wait for each other's flushes).
//!
//! Raft acknowledges a write only once it is durable on a quorum, so this figure is a floor
//! under every write's latency, and heartbeats and elections wait behind slow appends too.
//! The probe writes only inside a scratch directory it creates in the probed one and
//! removes when it is done, also on failure.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant, SystemTime};

use crate::log_store::AppendPath;

/// Name prefix of the scratch directory a probe creates inside the probed directory.
const SCRATCH_PREFIX: &str = ".durable-append-probe-";

/// Latencies of durable appends, over every writer's appends together.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DiskProbe {
    /// Writers that appended at once, each to a database of its own.
    pub writers: usize,
    /// Appends timed, over all writers.
    pub appends: usize,
    /// Median latency of one durable append.
    pub p50: Duration,
    /// 99th percentile latency of one durable append.
    pub p99: Duration,
    /// The slowest append.
    pub max: Duration,
}

/// Why a durable append probe could not measure.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DiskCheckError {
    /// No writer or no append was asked for.
    #[error(
        "a durable append probe needs at least one writer and one append \
         (asked for {writers} writers × {appends} appends)"
    )]
    NothingToMeasure {
        /// Writers asked for.
        writers: usize,
        /// Appends per writer asked for.
        appends: usize,
    },
    /// A file system operation in the probed directory failed.
    #[error("cannot {op} in {dir}: {source}")]
    Io {
        /// The probed directory.
        dir: PathBuf,
        /// What the probe was doing.
        op: &'static str,
        /// Why it failed.
        source: std::io::Error,
    },
    /// A durable append failed.
    #[error("durable append probe in {dir} failed: {source}")]
    Append {
        /// The probed directory.
        dir: PathBuf,
        /// The log store's error.
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A writer thread panicked.
    #[error("a durable append probe writer in {dir} panicked")]
    WriterPanicked {
        /// The probed directory.
        dir: PathBuf,
    },
}

/// Times `appends` durable appends of one `entry_bytes`-byte entry by each of `writers`
/// writers at once, every writer on its own thread with its own redb database in a fresh
/// scratch directory inside `dir`, all starting together; the scratch directory is
/// removed before this returns. Blocks for as long as the appends take: run it on a
/// blocking thread.
///
/// # Errors
/// Nothing to measure, `dir` is missing or not writable, or redb failed; the error names
/// `dir` and the operation.
pub fn measure_durable_appends(
    dir: &Path,
    writers: usize,
    appends: usize,
    entry_bytes: usize,
) -> Result<DiskProbe, DiskCheckError> {
    if writers == 0 || appends == 0 {
        return Err(DiskCheckError::NothingToMeasure { writers, appends });
    }
    // Declared before the databases, so dropped (and removed) after them.
    let scratch = Scratch::create(dir)?;
    let mut databases =
        (0..writers).map(|i| open_writer(dir, &scratch.path, i)).collect::<Result<Vec<_>, _>>()?;
    let entry = vec![0x5a_u8; entry_bytes];
    let gate = StartGate::default();
    let results: Vec<Result<Vec<Duration>, DiskCheckError>> = std::thread::scope(|scope| {
        let mut handles = Vec::with_capacity(writers);
        for (i, db) in databases.iter_mut().enumerate() {
            let (gate, entry) = (&gate, entry.as_slice());
            let spawned = std::thread::Builder::new()
                .name(format!("durable-append-probe-{i}"))
                .spawn_scoped(scope, move || {
                    if gate.wait() {
                        timed_appends(db, dir, appends, entry)
                    } else {
                        Ok(Vec::new())
                    }
                });
            match spawned {
                Ok(handle) => handles.push(handle),
                Err(source) => {
                    // The writers already started give up instead of waiting forever.
                    gate.release(false);
                    return vec![Err(io_error(dir, "start a writer thread", source))];
                }
            }
        }
        gate.release(true);
        handles
            .into_iter()
            .map(|handle| {
                handle
                    .join()
                    .unwrap_or_else(|_| Err(DiskCheckError::WriterPanicked { dir: dir.into() }))
            })
            .collect()
    });
    let mut samples = Vec::with_capacity(writers * appends);
    for result in results {
        samples.extend(result?);
    }
    drop(databases);
    drop(scratch);
    samples.sort_unstable();
    let percentile = |q: f64| {
        let rank = (q * samples.len() as f64).ceil() as usize;
        samples[rank.clamp(1, samples.len()) - 1]
    };
    Ok(DiskProbe {
        writers,
        appends: samples.len(),
        p50: percentile(0.50),
        p99: percentile(0.99),
        max: percentile(1.0),
    })
}

/// Creates writer `i`'s database and redo file in `scratch` and makes one untimed append,
/// so the timed ones find the tables and the file's first pages in place, as a running
/// replica's log store does.
fn open_writer(dir: &Path, scratch: &Path, i: usize) -> Result<AppendPath, DiskCheckError> {
    let mut path = AppendPath::create(
        &scratch.join(format!("writer-{i}.redb")),
        &scratch.join(format!("writer-{i}.wal")),
    )
    .map_err(|source| DiskCheckError::Append {
        dir: dir.to_path_buf(),
        source: Box::new(source),
    })?;
    append(&mut path, dir, 0, &[])?;
    Ok(path)
}

/// `appends` durable appends at indexes 1, 2, ..., each timed.
fn timed_appends(
    path: &mut AppendPath,
    dir: &Path,
    appends: usize,
    entry: &[u8],
) -> Result<Vec<Duration>, DiskCheckError> {
    let mut samples = Vec::with_capacity(appends);
    for index in 1..=appends as u64 {
        let started = Instant::now();
        append(path, dir, index, entry)?;
        samples.push(started.elapsed());
    }
    Ok(samples)
}

/// One append as the log store's writer makes it ([`AppendPath`]).
fn append(
    path: &mut AppendPath,
    dir: &Path,
    index: u64,
    entry: &[u8],
) -> Result<(), DiskCheckError> {
    path.append(index, entry).map_err(|source| DiskCheckError::Append {
        dir: dir.to_path_buf(),
        source: Box::new(source),
    })
}

fn io_error(dir: &Path, op: &'static str, source: std::io::Error) -> DiskCheckError {
    DiskCheckError::Io { dir: dir.to_path_buf(), op, source }
}

// === impl Scratch ===

/// A uniquely named directory inside the probed one, removed (with everything in it) when
/// dropped.
struct Scratch {
    path: PathBuf,
}

impl Scratch {
    fn create(dir: &Path) -> Result<Self, DiskCheckError> {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let nanos = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |since| since.subsec_nanos());
        let name = format!(
            "{SCRATCH_PREFIX}{}-{}-{nanos}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let path = dir.join(name);
        // `create_dir`, not `create_dir_all`: a missing `dir` is an error, and an existing
        // directory of that name is never taken over.
        std::fs::create_dir(&path)
            .map_err(|source| io_error(dir, "create a scratch directory", source))?;
        Ok(Self { path })
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if let Err(error) = std::fs::remove_dir_all(&self.path) {
            tracing::warn!(
                %error,
                path = %self.path.display(),
                "cannot remove the durable append probe's scratch directory"
            );
        }
    }
}

// === impl StartGate ===

/// Holds writers until every one of them is running, then lets them go together (or tells
/// them to give up when one could not be started, which a `Barrier` cannot).
#[derive(Default)]
struct StartGate {
    /// `None` while closed, then whether to go.
    state: Mutex<Option<bool>>,
    opened: Condvar,
}

impl StartGate {
    /// Waits until the gate is released; true to go, false to give up.
    fn wait(&self) -> bool {
        let mut state = self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        loop {
            if let Some(go) = *state {
                return go;
            }
            state = self.opened.wait(state).unwrap_or_else(std::sync::PoisonError::into_inner);
        }
    }

    fn release(&self, go: bool) {
        *self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(go);
        self.opened.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_append_of_every_writer_is_timed_and_the_scratch_directory_removed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let probe = measure_durable_appends(dir.path(), 3, 20, 512).expect("probe");
        assert_eq!(probe.writers, 3);
        assert_eq!(probe.appends, 60);
        assert!(probe.p50 <= probe.p99 && probe.p99 <= probe.max, "{probe:?}");
        assert!(probe.p50 > Duration::ZERO, "{probe:?}");
        let left: Vec<_> = std::fs::read_dir(dir.path()).expect("read dir").collect();
        assert!(left.is_empty(), "scratch left behind: {left:?}");
    }

    #[test]
    fn a_missing_directory_is_named() {
        let dir = tempfile::tempdir().expect("tempdir");
        let missing = dir.path().join("no-such-dir");
        let error = measure_durable_appends(&missing, 1, 20, 512).expect_err("missing dir");
        let message = error.to_string();
        assert!(message.contains(&missing.display().to_string()), "{message}");
        assert!(message.contains("create a scratch directory"), "{message}");
    }

    #[test]
    fn a_file_in_place_of_the_directory_is_named() {
        // Not a permission test: root may write anywhere, but not inside a file.
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("a-file");
        std::fs::write(&file, b"not a directory").expect("write");
        let error = measure_durable_appends(&file, 1, 20, 512).expect_err("not a directory");
        assert!(error.to_string().contains(&file.display().to_string()), "{error}");
    }

    #[test]
    fn nothing_to_measure_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let error = measure_durable_appends(dir.path(), 0, 20, 512).expect_err("no writer");
        assert!(matches!(error, DiskCheckError::NothingToMeasure { writers: 0, .. }), "{error}");
        assert!(measure_durable_appends(dir.path(), 1, 0, 512).is_err());
    }
}
