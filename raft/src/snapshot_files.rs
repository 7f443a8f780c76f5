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
//! such files and any `.tmp` left over. File names are the hex of the snapshot id, so an
//! id chosen by a peer can name no path outside the directory and no two ids share a file.

use std::fs::{self, File};
use std::io::{self, Write as _};
use std::path::{Path, PathBuf};

/// The directory of a replica's snapshot files.
#[derive(Clone, Debug)]
pub(crate) struct SnapshotFiles {
    dir: PathBuf,
}

/// Extension of a whole snapshot file.
const DATA_EXTENSION: &str = "snap";
/// Extension of a file being written.
const TEMP_EXTENSION: &str = "tmp";
/// Start of every file name (so an empty id still names a file with an extension).
const FILE_PREFIX: &str = "snapshot-";

impl SnapshotFiles {
    /// Opens (creating it if needed) the directory `dir`.
    pub(crate) fn open(dir: &Path) -> io::Result<Self> {
        fs::create_dir_all(dir)?;
        Ok(Self { dir: dir.to_path_buf() })
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
                extension == DATA_EXTENSION || extension == TEMP_EXTENSION
            });
            if ours && keep.as_deref() != Some(name) {
                fs::remove_file(entry.path())?;
                removed += 1;
            }
        }
        Ok(removed)
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
            let files = SnapshotFiles { dir: dir.to_path_buf() };
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
}
