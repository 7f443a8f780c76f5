//! Small filesystems of their own for replicas' data directories, so that a test or a
//! chaos scenario can fill one up: a tmpfs of a few MiB mounted at the directory (mounting
//! needs root, which CI has), filled by a filler file until the next write fails with
//! ENOSPC, and freed by removing it.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context as _, ensure};

/// A tmpfs mounted at a directory, lazily unmounted when dropped.
#[derive(Debug)]
pub struct SmallDisk {
    path: PathBuf,
}

impl SmallDisk {
    /// Mounts a `megabytes` MiB tmpfs (mode 0700) at `path`, creating the directory.
    ///
    /// # Errors
    /// The directory could not be made, or `mount` failed (not root, no tmpfs).
    pub fn mount(path: &Path, megabytes: u32) -> anyhow::Result<Self> {
        std::fs::create_dir_all(path).with_context(|| format!("create {}", path.display()))?;
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={megabytes}m,mode=0700"), "tmpfs"])
            .arg(path)
            .output()
            .context("run mount")?;
        ensure!(
            out.status.success(),
            "cannot mount a {megabytes} MiB tmpfs at {} (filling a disk needs root): {}",
            path.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
        Ok(Self { path: path.to_path_buf() })
    }

    /// Where it is mounted.
    #[must_use]
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Fills the filesystem with a filler file until not one more byte fits.
    ///
    /// # Errors
    /// The filler file could not be created.
    pub fn fill(&self) -> anyhow::Result<()> {
        let mut file = std::fs::File::create(self.filler()).context("create the filler")?;
        let chunk = vec![0u8; 64 * 1024];
        // Bounded: a 64 KiB chunk at a time up to 64 GiB, then what partial block fits.
        for _ in 0..1_048_576 {
            if file.write_all(&chunk).is_err() {
                break;
            }
        }
        for _ in 0..1_048_576 {
            if file.write_all(&[0u8; 512]).is_err() {
                break;
            }
        }
        let _ = file.sync_all();
        Ok(())
    }

    /// Fills the filesystem, then gives `megabytes` MiB back: what a disk that is nearly
    /// full leaves a process that starts on it.
    ///
    /// # Errors
    /// The filler file could not be created or shortened.
    pub fn fill_leaving(&self, megabytes: u64) -> anyhow::Result<()> {
        self.fill()?;
        let file = std::fs::OpenOptions::new()
            .write(true)
            .open(self.filler())
            .context("open the filler")?;
        let len = file.metadata().context("read the filler's size")?.len();
        file.set_len(len.saturating_sub(megabytes << 20)).context("shorten the filler")?;
        file.sync_all().context("sync the filler")
    }

    /// Removes the filler and waits until the space is back: tmpfs frees a removed
    /// file's pages when the last reference to them goes, which something else (a page
    /// scanner, a write still in flight) may hold for a moment; a write right after the
    /// removal then still fails with ENOSPC.
    ///
    /// # Errors
    /// The filler could not be removed (other than not existing), or no 64 KiB fit
    /// within 5 s of its removal.
    pub fn free(&self) -> anyhow::Result<()> {
        match std::fs::remove_file(self.filler()) {
            Err(error) if error.kind() != std::io::ErrorKind::NotFound => {
                return Err(error).context("remove the filler");
            }
            _ => {}
        }
        let probe = self.path.join("free-probe");
        let mut last = None;
        for _ in 0..500 {
            match std::fs::write(&probe, vec![0u8; 64 * 1024]) {
                Ok(()) => {
                    std::fs::remove_file(&probe).context("remove the free-space probe")?;
                    return Ok(());
                }
                Err(error) => last = Some(error),
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        let _ = std::fs::remove_file(&probe);
        Err(last.map_or_else(|| anyhow::anyhow!("no attempt made"), anyhow::Error::from))
            .with_context(|| {
                format!("no space came back on {} after removing the filler", self.path.display())
            })
    }

    fn filler(&self) -> PathBuf {
        self.path.join("filler")
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.path).status();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_filled_disk_refuses_writes_until_freed() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let disk = SmallDisk::mount(&dir.path().join("small"), 1)?;
        disk.fill()?;
        let err = std::fs::write(disk.path().join("more"), vec![0u8; 8192]).expect_err("full");
        assert_eq!(err.raw_os_error(), Some(28), "ENOSPC: {err}");
        disk.free()?;
        std::fs::write(disk.path().join("more"), vec![0u8; 8192])?;
        drop(disk);
        Ok(())
    }

    #[test]
    fn a_nearly_full_disk_takes_what_was_left_and_no_more() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let disk = SmallDisk::mount(&dir.path().join("small"), 4)?;
        disk.fill_leaving(1)?;
        std::fs::write(disk.path().join("fits"), vec![0u8; 512 * 1024])?;
        let err = std::fs::write(disk.path().join("too-big"), vec![0u8; 1024 * 1024])
            .expect_err("only half a MiB is left");
        assert_eq!(err.raw_os_error(), Some(28), "ENOSPC: {err}");
        drop(disk);
        Ok(())
    }
}
