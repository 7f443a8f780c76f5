//! Snapshot data as files beside the database.
//!
//! A snapshot's data is the whole encoded state (tens of MB for a large federation):
//! written into redb it cost about four times a plain file's write and `fdatasync` (redb
//! copies it through its page cache), and the write could not start before the state
//! machine had accepted the snapshot. So the data lives in `<dir>/snapshot-<hex of the
//! id>.snap`, and redb keeps only the metadata naming the current one:
//!
//! 1. the data is written to `<name>.tmp`, `fdatasync`'d, renamed to `<name>.snap`, and
//!    the directory `fsync`'d — a file with the final name is always whole;
//! 2. only then does a redb transaction make it current (it names the snapshot id);
//! 3. after that commit, the previous snapshot's file is removed.
//!
//! A crash between the steps leaves a file no metadata names; opening the store removes
//! such files and any `.tmp` left over.
//!
//! A snapshot sent by the leader is written while it streams in ([`Receiving`]: a thread
//! writes each chunk to `<name>.recv` as it arrives and flushes it every few MiB), so when
//! the state machine installs it the file is mostly on disk already: step 1 becomes the
//! last flush and a rename ([`SnapshotFiles::take_received`]). A reception that breaks off
//! removes its file; one the state machine never takes is removed after the install call
//! ([`SnapshotFiles::discard_received`]), and `.recv` leftovers of a crash at the next
//! start. File names are the hex of the snapshot id, so an
//! id chosen by a peer can name no path outside the directory and no two ids share a file.
//!
//! # Checksums
//!
//! Every snapshot made current carries a [`Checksum`] (the data's length and SHA-256).
//! It is not in the file but in the redb transaction of step 2, beside the metadata
//! that names the snapshot (`state_machine`): the file stays the state machine's plain
//! encoding, so a replica rolled back to an earlier version still reads it, and whether
//! a file has a checksum is decided by the database, never by the file's own bytes (a
//! header or trailer with a magic number would let a flip inside the magic pass a
//! damaged file off as a legacy one). The checksum is compared with the data
//!
//! - whenever the current snapshot is read ([`SnapshotFiles::read`]): when the replica
//!   opens, before the state machine restores it, and before the leader sends it to a
//!   follower. A file that does not match is never restored nor sent; the error names
//!   the file and both checksums. The replica does not start (or, if it was running,
//!   stops, as on any storage fault); it does not throw the snapshot away and go on,
//!   because the log it covers may be purged: openraft would then take the purged
//!   entries as applied, see the follower's log as matching the leader's, and never send
//!   it a snapshot — the state would stay wrong. The remedy the error names is the one
//!   for any replica that lost its data: remove it from the group, delete its data
//!   directory and add it again, and the leader sends it a whole snapshot;
//! - when a received snapshot is installed ([`SnapshotFiles::take_received`]): the
//!   `.recv` file is read back after its last flush and must hold exactly the data
//!   installed, or the install fails and the file is removed. (The data itself was
//!   checked in transit against the SHA-256 the sender streams in the last chunk, before
//!   openraft sees it: `network::server`.)
//!
//! Files written before checksums (a snapshot the database names without a checksum, or
//! with a checksum of another snapshot, as an earlier version left it) are legacy: read
//! as they are, with only the state machine's decoding to check them, and logged; the
//! next snapshot carries a checksum.

use std::collections::HashMap;
use std::fmt;
use std::fs::{self, File};
use std::io::{self, Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use sha2::Digest as _;

/// The directory of a replica's snapshot files.
#[derive(Clone, Debug)]
pub(crate) struct SnapshotFiles {
    dir: PathBuf,
    /// Snapshots received whole, by id: each one's `.recv` file and the thread writing
    /// it, which answers the bytes it wrote and made durable.
    received: Arc<Mutex<HashMap<String, Received>>>,
}

/// A `.recv` file and its writer. Each reception has a file of its own (a snapshot sent
/// again while the first copy is still being written never shares its file).
#[derive(Debug)]
struct Received {
    path: PathBuf,
    writer: JoinHandle<io::Result<u64>>,
}

/// A snapshot's data being written to its `.recv` file while it streams in. Dropped
/// without [`Receiving::finish`] (the stream broke off), the file is removed.
#[derive(Debug)]
pub(crate) struct Receiving {
    files: SnapshotFiles,
    id: String,
    /// `Some(chunk)` to write, `None` once the data is whole; dropped without `None` (the
    /// reception broke off): the writer gives up and removes the file, and ends alone.
    chunks: tokio::sync::mpsc::Sender<Option<Vec<u8>>>,
    /// Its `.recv` file and writer.
    received: Received,
}

/// Chunks queued for a [`Receiving`] writer: a reception waits for a disk slower than
/// the network instead of holding the snapshot in memory a second time.
const RECEIVE_QUEUE_CHUNKS: usize = 8;

/// Bytes a [`Receiving`] writer writes between two flushes: the disk works while the rest
/// streams in, and the last flush has little left to do.
const RECEIVE_FLUSH_BYTES: u64 = 8 << 20;

/// Extension of a whole snapshot file.
const DATA_EXTENSION: &str = "snap";
/// Extension of a file being written.
const TEMP_EXTENSION: &str = "tmp";
/// Extension of a file written while its snapshot is received.
const RECEIVED_EXTENSION: &str = "recv";
/// Start of every file name (so an empty id still names a file with an extension).
const FILE_PREFIX: &str = "snapshot-";

/// Bytes read at a time when a file is hashed without being kept in memory.
const HASH_BUFFER_BYTES: usize = 1 << 20;

/// What a snapshot's data must be: its length and SHA-256.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(crate) struct Checksum {
    /// Bytes of data.
    pub(crate) len: u64,
    /// SHA-256 of the data.
    pub(crate) sha256: [u8; 32],
}

/// A snapshot file whose content does not match its [`Checksum`].
#[derive(Debug, thiserror::Error)]
#[error("snapshot file {} is corrupt: expected {expected}, found {found}", path.display())]
pub(crate) struct CorruptFile {
    /// The file.
    pub(crate) path: PathBuf,
    /// What it should hold.
    pub(crate) expected: Checksum,
    /// What it holds.
    pub(crate) found: Checksum,
}

/// Why a snapshot file could not be read.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ReadError {
    /// The file could not be read.
    #[error("cannot read snapshot file {}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
    /// The file does not match its checksum.
    #[error(transparent)]
    Corrupt(#[from] CorruptFile),
}

impl SnapshotFiles {
    /// Opens (creating it if needed) the directory `dir`.
    pub(crate) fn open(dir: &Path) -> io::Result<Self> {
        fs::create_dir_all(dir)?;
        Ok(Self { dir: dir.to_path_buf(), received: Arc::default() })
    }

    /// The directory.
    pub(crate) fn dir(&self) -> &Path {
        &self.dir
    }

    /// The file of snapshot `id`.
    pub(crate) fn path(&self, id: &str) -> PathBuf {
        self.dir.join(file_name(id, DATA_EXTENSION))
    }

    /// Writes the data of snapshot `id` durably under its final name (replacing a file of
    /// the same id, which holds the same state).
    pub(crate) fn write(&self, id: &str, data: &[u8]) -> io::Result<()> {
        let temp = self.dir.join(file_name(id, TEMP_EXTENSION));
        let mut file = File::create(&temp)?;
        file.write_all(data)?;
        file.sync_data()?;
        drop(file);
        fs::rename(&temp, self.path(id))?;
        File::open(&self.dir)?.sync_all()
    }

    /// Reads the data of snapshot `id`, checked against `expected` (`None`: a legacy
    /// file, from before checksums, read as it is); `None` when it has no file.
    ///
    /// # Errors
    /// The file cannot be read, or does not match `expected` (the error names the file
    /// and both checksums).
    pub(crate) fn read(
        &self,
        id: &str,
        expected: Option<&Checksum>,
    ) -> Result<Option<Vec<u8>>, ReadError> {
        let path = self.path(id);
        let data = match fs::read(&path) {
            Ok(data) => data,
            Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(ReadError::Io { path, source }),
        };
        if let Some(expected) = expected {
            expected.verify(&path, &data)?;
        }
        Ok(Some(data))
    }

    /// Removes the file of snapshot `id`, if there is one.
    pub(crate) fn remove(&self, id: &str) -> io::Result<()> {
        match fs::remove_file(self.path(id)) {
            Err(error) if error.kind() != io::ErrorKind::NotFound => Err(error),
            _ => Ok(()),
        }
    }

    /// Starts writing the data of snapshot `id` as it is received: push each chunk, then
    /// [`Receiving::finish`].
    pub(crate) fn receive(&self, id: &str) -> io::Result<Receiving> {
        static RECEPTIONS: AtomicU64 = AtomicU64::new(0);
        let reception = RECEPTIONS.fetch_add(1, Ordering::Relaxed);
        let path = self.dir.join(file_name(id, &format!("{reception}.{RECEIVED_EXTENSION}")));
        let mut file = File::create_new(&path)?;
        let writer_path = path.clone();
        let (chunks, mut incoming) =
            tokio::sync::mpsc::channel::<Option<Vec<u8>>>(RECEIVE_QUEUE_CHUNKS);
        let writer =
            std::thread::Builder::new().name("raft-snapshot-recv".into()).spawn(move || {
                let (mut written, mut flushed) = (0u64, 0u64);
                let result = loop {
                    match incoming.blocking_recv() {
                        Some(Some(chunk)) => {
                            if let Err(error) = file.write_all(&chunk) {
                                break Err(error);
                            }
                            written += chunk.len() as u64;
                            if written - flushed >= RECEIVE_FLUSH_BYTES {
                                if let Err(error) = file.sync_data() {
                                    break Err(error);
                                }
                                flushed = written;
                            }
                        }
                        Some(None) => break file.sync_data().map(|()| written),
                        None => {
                            break Err(io::Error::new(
                                io::ErrorKind::Interrupted,
                                "the snapshot stream broke off",
                            ));
                        }
                    }
                };
                if result.is_err() {
                    drop(file);
                    let _ = fs::remove_file(&writer_path);
                }
                result
            });
        let writer = writer.inspect_err(|_| {
            let _ = fs::remove_file(&path);
        })?;
        Ok(Receiving {
            files: self.clone(),
            id: id.to_string(),
            chunks,
            received: Received { path, writer },
        })
    }

    /// Makes the data of snapshot `id`, received whole, its durable file once the
    /// writer's last flush is done and the file, read back, holds exactly the data
    /// `expected` describes. Returns `Ok(false)` when there is no such file (nothing was
    /// received for `id`, its writer failed, or it wrote another number of bytes): the
    /// caller writes the file itself.
    ///
    /// # Errors
    /// The file holds other bytes than `expected` (the disk changed them after they were
    /// written): it is removed, and the snapshot must not be installed.
    pub(crate) fn take_received(&self, id: &str, expected: &Checksum) -> Result<bool, CorruptFile> {
        let Some(Received { path, writer }) = self.lock_received().remove(id) else {
            return Ok(false);
        };
        let taken = match writer.join() {
            Ok(Ok(written)) if written == expected.len => match checksum_of_file(&path) {
                Ok(found) if found == *expected => fs::rename(&path, self.path(id))
                    .and_then(|()| File::open(&self.dir)?.sync_all()),
                Ok(found) => {
                    let _ = fs::remove_file(&path);
                    return Err(CorruptFile { path, expected: *expected, found });
                }
                Err(error) => Err(error),
            },
            Ok(Ok(written)) => Err(io::Error::other(format!(
                "received {written} bytes, the snapshot has {}",
                expected.len
            ))),
            Ok(Err(error)) => Err(error),
            Err(_) => Err(io::Error::other("the snapshot writer panicked")),
        };
        match taken {
            Ok(()) => Ok(true),
            Err(error) => {
                tracing::warn!(snapshot_id = id, %error, "writing the received snapshot again");
                let _ = fs::remove_file(&path);
                Ok(false)
            }
        }
    }

    /// Removes what was received for snapshot `id` and not taken (the install was refused
    /// or failed before it wrote the file).
    pub(crate) fn discard_received(&self, id: &str) {
        let Some(Received { path, writer }) = self.lock_received().remove(id) else { return };
        let _ = writer.join();
        if let Err(error) = fs::remove_file(&path)
            && error.kind() != io::ErrorKind::NotFound
        {
            tracing::warn!(snapshot_id = id, %error, "cannot remove a received snapshot file");
        }
    }

    fn lock_received(&self) -> std::sync::MutexGuard<'_, HashMap<String, Received>> {
        self.received.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Removes every snapshot file but the one of `keep`, and every file left half
    /// written; returns how many it removed. Other files are left alone.
    pub(crate) fn remove_all_but(&self, keep: Option<&str>) -> io::Result<usize> {
        let keep = keep.map(|id| file_name(id, DATA_EXTENSION));
        let mut removed = 0;
        for entry in fs::read_dir(&self.dir)? {
            let entry = entry?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            let ours = Path::new(name).extension().is_some_and(|extension| {
                extension == DATA_EXTENSION
                    || extension == TEMP_EXTENSION
                    || extension == RECEIVED_EXTENSION
            });
            if ours && keep.as_deref() != Some(name) {
                fs::remove_file(entry.path())?;
                removed += 1;
            }
        }
        Ok(removed)
    }
}

// === impl Receiving ===

impl Receiving {
    /// Hands `chunk` to the writer (a writer that failed drops it: the install then writes
    /// the file itself).
    pub(crate) async fn push(&self, chunk: Vec<u8>) {
        let _ = self.chunks.send(Some(chunk)).await;
    }

    /// The data is whole: the writer flushes it, and the state machine's install takes
    /// the file ([`SnapshotFiles::take_received`]).
    pub(crate) async fn finish(self) {
        let Self { files, id, chunks, received } = self;
        let _ = chunks.send(None).await;
        // A second reception of the same id replaces the first, whose file goes.
        let replaced = files.lock_received().insert(id, received);
        if let Some(Received { path, writer }) = replaced {
            // Not on the caller's (async) thread: the writer may still be flushing.
            std::thread::spawn(move || {
                let _ = writer.join();
                let _ = fs::remove_file(path);
            });
        }
    }
}

// === impl Checksum ===

impl Checksum {
    /// The checksum of `data`.
    pub(crate) fn of(data: &[u8]) -> Self {
        Self { len: data.len() as u64, sha256: sha2::Sha256::digest(data).into() }
    }

    /// Checks that `data`, read from `path`, is what `self` describes.
    ///
    /// # Errors
    /// It is not; the error names `path` and both checksums.
    pub(crate) fn verify(&self, path: &Path, data: &[u8]) -> Result<(), CorruptFile> {
        let found = Self::of(data);
        if found == *self {
            Ok(())
        } else {
            Err(CorruptFile { path: path.to_path_buf(), expected: *self, found })
        }
    }
}

impl fmt::Display for Checksum {
    /// `<len> bytes with SHA-256 <64 hex digits>`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} bytes with SHA-256 ", self.len)?;
        self.sha256.iter().try_for_each(|byte| write!(f, "{byte:02x}"))
    }
}

/// The checksum of the file at `path`, read a buffer at a time.
fn checksum_of_file(path: &Path) -> io::Result<Checksum> {
    let mut file = File::open(path)?;
    let mut hasher = sha2::Sha256::new();
    let mut buffer = vec![0; HASH_BUFFER_BYTES];
    let mut len = 0u64;
    loop {
        let read = match file.read(&mut buffer) {
            Ok(0) => break,
            Ok(read) => read,
            Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
            Err(error) => return Err(error),
        };
        hasher.update(&buffer[..read]);
        len += read as u64;
    }
    Ok(Checksum { len, sha256: hasher.finalize().into() })
}

/// `snapshot-<hex of id>.<extension>`.
fn file_name(id: &str, extension: &str) -> String {
    use std::fmt::Write as _;
    let mut name = String::with_capacity(FILE_PREFIX.len() + id.len() * 2 + 1 + extension.len());
    name.push_str(FILE_PREFIX);
    for byte in id.bytes() {
        let _ = write!(name, "{byte:02x}");
    }
    name.push('.');
    name.push_str(extension);
    name
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_snapshot_is_written_whole_read_back_and_replaced() {
        let dir = tempfile::TempDir::new().expect("temp dir");
        let files = SnapshotFiles::open(&dir.path().join("snapshots")).expect("open");
        let first = Checksum::of(b"first");
        assert_eq!(files.read("1-5-7", Some(&first)).expect("read"), None);
        files.write("1-5-7", b"first").expect("write");
        assert_eq!(
            files.read("1-5-7", Some(&first)).expect("read").as_deref(),
            Some(&b"first"[..])
        );
        files.write("1-5-7", b"again").expect("rewrite");
        let again = Checksum::of(b"again");
        assert_eq!(
            files.read("1-5-7", Some(&again)).expect("read").as_deref(),
            Some(&b"again"[..])
        );
        files.remove("1-5-7").expect("remove");
        files.remove("1-5-7").expect("removing what is gone is fine");
        assert_eq!(files.read("1-5-7", None).expect("read"), None);
    }

    #[test]
    fn ids_name_files_inside_the_directory_only_and_never_share_one() {
        let dir = tempfile::TempDir::new().expect("temp dir");
        let files = SnapshotFiles::open(dir.path()).expect("open");
        for id in ["../../etc/passwd", "/abs", "a/b", "", ".", "x.snap"] {
            let path = files.path(id);
            assert_eq!(path.parent(), Some(dir.path()), "{id:?} → {}", path.display());
        }
        assert_ne!(files.path("a-b"), files.path("a_b"));
        assert_eq!(file_name("1-2", "snap"), "snapshot-312d32.snap");
        assert_eq!(file_name("", "snap"), "snapshot-.snap");
    }

    proptest::proptest! {
        /// A peer names the snapshots it sends: whatever the id, its file is a plain name
        /// in the directory, and two ids never share a file.
        #[test]
        fn any_id_names_its_own_file_in_the_directory(a in ".{0,40}", b in ".{0,40}") {
            let dir = Path::new("/var/lib/federator/snapshots");
            let files = SnapshotFiles { dir: dir.to_path_buf(), received: Arc::default() };
            let path = files.path(&a);
            proptest::prop_assert_eq!(path.parent(), Some(dir));
            let name = file_name(&a, DATA_EXTENSION);
            let stem = name
                .strip_prefix(FILE_PREFIX)
                .and_then(|name| name.strip_suffix(".snap"))
                .unwrap_or("not a snapshot file");
            proptest::prop_assert!(stem.bytes().all(|c| c.is_ascii_hexdigit()), "{}", name);
            proptest::prop_assert_eq!(a == b, path == files.path(&b));
        }
    }

    #[test]
    fn leftovers_are_removed_and_the_current_file_and_strangers_stay() {
        let dir = tempfile::TempDir::new().expect("temp dir");
        let files = SnapshotFiles::open(dir.path()).expect("open");
        files.write("old", b"old").expect("write");
        files.write("current", b"current").expect("write");
        fs::write(dir.path().join(file_name("half", TEMP_EXTENSION)), b"ha").expect("temp");
        fs::write(dir.path().join("notes.txt"), b"an operator's").expect("stranger");
        assert_eq!(files.remove_all_but(Some("current")).expect("clean"), 2);
        assert_eq!(files.read("current", None).expect("read").as_deref(), Some(&b"current"[..]));
        assert_eq!(files.read("old", None).expect("read"), None);
        assert!(dir.path().join("notes.txt").exists());
        assert_eq!(files.remove_all_but(None).expect("clean"), 1);
        assert_eq!(files.read("current", None).expect("read"), None);
    }

    /// The `.recv` files in `dir`.
    fn received_files(dir: &Path) -> Vec<String> {
        fs::read_dir(dir)
            .expect("read dir")
            .filter_map(|entry| entry.ok()?.file_name().into_string().ok())
            .filter(|name| name.ends_with(".recv"))
            .collect()
    }

    #[tokio::test]
    async fn a_snapshot_received_whole_is_taken_as_its_file() {
        let dir = tempfile::TempDir::new().expect("temp dir");
        let files = SnapshotFiles::open(dir.path()).expect("open");
        let receiving = files.receive("1-9-3").expect("receive");
        let chunks: Vec<Vec<u8>> = (0..40u8).map(|i| vec![i; 300 * 1024]).collect();
        for chunk in &chunks {
            receiving.push(chunk.clone()).await;
        }
        receiving.finish().await;
        let whole = chunks.concat();
        let longer = Checksum { len: whole.len() as u64 + 1, ..Checksum::of(&whole) };
        assert!(!files.take_received("1-9-3", &longer).expect("a wrong length"));
        assert!(received_files(dir.path()).is_empty(), "the wrong one is removed");
        assert_eq!(files.read("1-9-3", None).expect("read"), None);

        let receiving = files.receive("1-9-3").expect("receive again");
        for chunk in &chunks {
            receiving.push(chunk.clone()).await;
        }
        receiving.finish().await;
        let checksum = Checksum::of(&whole);
        assert!(files.take_received("1-9-3", &checksum).expect("intact"));
        let read = files.read("1-9-3", Some(&checksum)).expect("read");
        assert_eq!(read.as_deref(), Some(whole.as_slice()));
        assert!(received_files(dir.path()).is_empty());
        assert!(!files.take_received("1-9-3", &checksum).expect("taken once"));
        assert!(!files.take_received("never-sent", &Checksum::of(b"")).expect("none"));
    }

    #[tokio::test]
    async fn a_broken_off_or_untaken_reception_leaves_no_file() {
        let dir = tempfile::TempDir::new().expect("temp dir");
        let files = SnapshotFiles::open(dir.path()).expect("open");
        let receiving = files.receive("1-2-3").expect("receive");
        receiving.push(b"half of it".to_vec()).await;
        drop(receiving);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !received_files(dir.path()).is_empty() && std::time::Instant::now() < deadline {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        assert!(received_files(dir.path()).is_empty(), "the writer removed its file");
        assert!(!files.take_received("1-2-3", &Checksum::of(b"half of it")).expect("none"));

        let receiving = files.receive("4-5-6").expect("receive");
        receiving.push(b"whole".to_vec()).await;
        receiving.finish().await;
        assert_eq!(received_files(dir.path()).len(), 1);
        files.discard_received("4-5-6");
        assert!(received_files(dir.path()).is_empty());
        files.discard_received("4-5-6");

        // The same snapshot received twice: the second replaces the first, whose file goes.
        for _ in 0..2 {
            let receiving = files.receive("7-8-9").expect("receive");
            receiving.push(b"same".to_vec()).await;
            receiving.finish().await;
        }
        assert!(files.take_received("7-8-9", &Checksum::of(b"same")).expect("intact"));
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !received_files(dir.path()).is_empty() && std::time::Instant::now() < deadline {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        assert!(received_files(dir.path()).is_empty(), "the replaced file is removed");

        // A crash's leftover goes at the next start.
        fs::write(dir.path().join(file_name("x", "0.recv")), b"left").expect("leftover");
        assert_eq!(files.remove_all_but(Some("7-8-9")).expect("clean"), 1);
        assert_eq!(files.read("7-8-9", None).expect("read").as_deref(), Some(&b"same"[..]));
    }

    /// Data that looks like a state machine's encoding: flipping one of its digits still
    /// decodes, to a wrong value.
    fn sample_data() -> Vec<u8> {
        (0..40)
            .map(|i| format!("account-{i}=balance {}\n", 1000 + i * 7))
            .collect::<String>()
            .into_bytes()
    }

    #[test]
    fn a_snapshot_file_round_trips_against_its_checksum() {
        let dir = tempfile::TempDir::new().expect("temp dir");
        let files = SnapshotFiles::open(dir.path()).expect("open");
        let data = sample_data();
        let checksum = Checksum::of(&data);
        files.write("2-40-1", &data).expect("write");
        assert_eq!(files.read("2-40-1", Some(&checksum)).expect("read"), Some(data.clone()));
        assert_eq!(checksum_of_file(&files.path("2-40-1")).expect("hash the file"), checksum);
        assert_eq!(checksum.len, data.len() as u64);
        let shown = checksum.to_string();
        let (len, sha256) = shown.split_once(" bytes with SHA-256 ").expect("the format");
        assert_eq!(len, data.len().to_string());
        assert_eq!(sha256.len(), 64);
        assert!(sha256.bytes().all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()));
        assert_eq!(
            Checksum::of(b"").to_string(),
            "0 bytes with SHA-256 e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }

    /// Reads snapshot `id` against `expected` and returns the corruption it must report.
    fn corruption(files: &SnapshotFiles, id: &str, expected: &Checksum) -> CorruptFile {
        match files.read(id, Some(expected)) {
            Err(ReadError::Corrupt(corrupt)) => corrupt,
            other => panic!("a damaged file must be refused, got {other:?}"),
        }
    }

    #[test]
    fn a_flipped_byte_anywhere_is_refused_naming_the_file_and_both_checksums() {
        let dir = tempfile::TempDir::new().expect("temp dir");
        let files = SnapshotFiles::open(dir.path()).expect("open");
        let data = sample_data();
        let expected = Checksum::of(&data);
        let path = files.path("2-40-1");
        for position in 0..data.len() {
            for mask in [0x01, 0x80, 0xff] {
                let mut damaged = data.clone();
                damaged[position] ^= mask;
                fs::write(&path, &damaged).expect("damage the file");
                let corrupt = corruption(&files, "2-40-1", &expected);
                assert_eq!(corrupt.path, path);
                assert_eq!(corrupt.expected, expected);
                assert_eq!(corrupt.found, Checksum::of(&damaged));
                assert_eq!(corrupt.found.len, expected.len, "same length, other bytes");
            }
        }
        // The case: one digit of a value flipped, which still decodes.
        let mut damaged = data.clone();
        let digit = data.windows(4).position(|w| w == b"1000").expect("a balance");
        damaged[digit + 3] = b'1';
        fs::write(&path, &damaged).expect("damage the file");
        let error = ReadError::from(corruption(&files, "2-40-1", &expected)).to_string();
        let found = Checksum::of(&damaged);
        for part in [path.display().to_string(), expected.to_string(), found.to_string()] {
            assert!(error.contains(&part), "{error:?} should name {part:?}");
        }
        assert!(error.contains("corrupt"), "{error}");
    }

    #[test]
    fn a_truncated_or_extended_file_is_refused() {
        let dir = tempfile::TempDir::new().expect("temp dir");
        let files = SnapshotFiles::open(dir.path()).expect("open");
        let data = sample_data();
        let expected = Checksum::of(&data);
        let path = files.path("2-40-1");
        for len in 0..data.len() {
            fs::write(&path, &data[..len]).expect("truncate the file");
            let corrupt = corruption(&files, "2-40-1", &expected);
            assert_eq!(corrupt.found.len, len as u64);
        }
        for extra in [&b"\0"[..], b"account-99=balance 1\n"] {
            fs::write(&path, [data.as_slice(), extra].concat()).expect("extend the file");
            let corrupt = corruption(&files, "2-40-1", &expected);
            assert_eq!(corrupt.found.len, (data.len() + extra.len()) as u64);
        }
        // Gone is not corrupt: the caller tells a missing file apart.
        fs::remove_file(&path).expect("remove");
        assert_eq!(files.read("2-40-1", Some(&expected)).expect("read"), None);
    }

    #[test]
    fn a_legacy_file_without_a_checksum_is_read_as_it_is() {
        let dir = tempfile::TempDir::new().expect("temp dir");
        let files = SnapshotFiles::open(dir.path()).expect("open");
        // An earlier version wrote the plain data, and its database names no checksum.
        let data = sample_data();
        fs::write(files.path("1-7-3"), &data).expect("a legacy file");
        assert_eq!(files.read("1-7-3", None).expect("read"), Some(data));
        assert_eq!(files.read("never-written", None).expect("read"), None);
    }

    proptest::proptest! {
        /// Whatever the data, a flip of any bits of any one byte is caught, and so is any
        /// cut.
        #[test]
        fn any_single_byte_flip_or_cut_is_detected(
            data in proptest::collection::vec(proptest::prelude::any::<u8>(), 1..4096),
            position in proptest::prelude::any::<proptest::sample::Index>(),
            mask in 1u8..=255,
        ) {
            let dir = tempfile::TempDir::new().expect("temp dir");
            let files = SnapshotFiles::open(dir.path()).expect("open");
            let expected = Checksum::of(&data);
            let i = position.index(data.len());
            let mut damaged = data.clone();
            damaged[i] ^= mask;
            fs::write(files.path("p"), &damaged).expect("damage the file");
            let caught = matches!(
                files.read("p", Some(&expected)),
                Err(ReadError::Corrupt(CorruptFile { found, .. })) if found == Checksum::of(&damaged)
            );
            proptest::prop_assert!(caught, "a flip at {} by {:#04x} passed", i, mask);
            fs::write(files.path("p"), &data[..i]).expect("cut the file");
            proptest::prop_assert!(matches!(files.read("p", Some(&expected)), Err(ReadError::Corrupt(_))));
            fs::write(files.path("p"), &data).expect("the whole file");
            proptest::prop_assert_eq!(files.read("p", Some(&expected)).expect("intact"), Some(data));
        }
    }

    #[tokio::test]
    async fn a_received_file_changed_on_disk_before_install_is_refused_and_removed() {
        let dir = tempfile::TempDir::new().expect("temp dir");
        let files = SnapshotFiles::open(dir.path()).expect("open");
        let data = sample_data();
        let receiving = files.receive("3-40-2").expect("receive");
        receiving.push(data.clone()).await;
        receiving.finish().await;
        // Once the writer wrote it all, the disk flips a digit of the `.recv` file.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let recv = loop {
            let names = received_files(dir.path());
            let whole = names
                .first()
                .map(|name| dir.path().join(name))
                .filter(|path| fs::metadata(path).is_ok_and(|m| m.len() == data.len() as u64));
            if let Some(path) = whole {
                break path;
            }
            assert!(std::time::Instant::now() < deadline, "the writer wrote the data");
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        };
        let mut damaged = fs::read(&recv).expect("read the received file");
        let digit = damaged.windows(4).position(|w| w == b"1000").expect("a balance");
        damaged[digit + 3] = b'1';
        fs::write(&recv, &damaged).expect("damage the received file");

        let expected = Checksum::of(&data);
        let corrupt = files.take_received("3-40-2", &expected).expect_err("refused");
        assert_eq!(corrupt.path, recv);
        assert_eq!((corrupt.expected, corrupt.found), (expected, Checksum::of(&damaged)));
        assert!(received_files(dir.path()).is_empty(), "the damaged file is removed");
        assert_eq!(files.read("3-40-2", None).expect("read"), None, "and never made whole");
    }
}
