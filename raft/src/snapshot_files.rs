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

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::{self, Write as _};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

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

    /// Reads the data of snapshot `id`; `None` when it has no file.
    pub(crate) fn read(&self, id: &str) -> io::Result<Option<Vec<u8>>> {
        match fs::read(self.path(id)) {
            Ok(data) => Ok(Some(data)),
            Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(error) => Err(error),
        }
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

    /// Makes the data of snapshot `id`, received whole and `len` bytes long, its durable
    /// file, waiting for the writer's last flush. Returns `false` when there is no such
    /// file (nothing was received for `id`, its writer failed, or it is not `len` bytes
    /// long): the caller writes the file itself.
    pub(crate) fn take_received(&self, id: &str, len: u64) -> bool {
        let Some(Received { path, writer }) = self.lock_received().remove(id) else {
            return false;
        };
        let taken = match writer.join() {
            Ok(Ok(written)) if written == len => {
                fs::rename(&path, self.path(id)).and_then(|()| File::open(&self.dir)?.sync_all())
            }
            Ok(Ok(written)) => {
                Err(io::Error::other(format!("received {written} bytes, the snapshot has {len}")))
            }
            Ok(Err(error)) => Err(error),
            Err(_) => Err(io::Error::other("the snapshot writer panicked")),
        };
        match taken {
            Ok(()) => true,
            Err(error) => {
                tracing::warn!(snapshot_id = id, %error, "writing the received snapshot again");
                let _ = fs::remove_file(&path);
                false
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
        assert_eq!(files.read("1-5-7").expect("read"), None);
        files.write("1-5-7", b"first").expect("write");
        assert_eq!(files.read("1-5-7").expect("read").as_deref(), Some(&b"first"[..]));
        files.write("1-5-7", b"again").expect("rewrite");
        assert_eq!(files.read("1-5-7").expect("read").as_deref(), Some(&b"again"[..]));
        files.remove("1-5-7").expect("remove");
        files.remove("1-5-7").expect("removing what is gone is fine");
        assert_eq!(files.read("1-5-7").expect("read"), None);
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
        assert_eq!(files.read("current").expect("read").as_deref(), Some(&b"current"[..]));
        assert_eq!(files.read("old").expect("read"), None);
        assert!(dir.path().join("notes.txt").exists());
        assert_eq!(files.remove_all_but(None).expect("clean"), 1);
        assert_eq!(files.read("current").expect("read"), None);
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
        assert!(!files.take_received("1-9-3", whole.len() as u64 + 1), "a wrong length");
        assert!(received_files(dir.path()).is_empty(), "the wrong one is removed");
        assert_eq!(files.read("1-9-3").expect("read"), None);

        let receiving = files.receive("1-9-3").expect("receive again");
        for chunk in &chunks {
            receiving.push(chunk.clone()).await;
        }
        receiving.finish().await;
        assert!(files.take_received("1-9-3", whole.len() as u64));
        assert_eq!(files.read("1-9-3").expect("read").as_deref(), Some(whole.as_slice()));
        assert!(received_files(dir.path()).is_empty());
        assert!(!files.take_received("1-9-3", whole.len() as u64), "taken once");
        assert!(!files.take_received("never-sent", 0));
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
        assert!(!files.take_received("1-2-3", 10));

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
        assert!(files.take_received("7-8-9", 4));
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !received_files(dir.path()).is_empty() && std::time::Instant::now() < deadline {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        assert!(received_files(dir.path()).is_empty(), "the replaced file is removed");

        // A crash's leftover goes at the next start.
        fs::write(dir.path().join(file_name("x", "0.recv")), b"left").expect("leftover");
        assert_eq!(files.remove_all_but(Some("7-8-9")).expect("clean"), 1);
        assert_eq!(files.read("7-8-9").expect("read").as_deref(), Some(&b"same"[..]));
    }
}
