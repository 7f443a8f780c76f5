//! The agent's state directory: its membership (from the join), the view it applied
//! (served again at start-up, before any replica answers), what it published, and its
//! status for `federator agent status`. Every file is written atomically.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::view::AgentView;

/// What the join established; kept so that later runs reconnect without a token.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Membership {
    /// The cluster's name.
    pub cluster: String,
    /// Its trust domain.
    pub trust_domain: String,
    /// The agent's SPIFFE ID the federation registered.
    pub agent_id: String,
    /// Replica API addresses.
    pub endpoints: Vec<String>,
    /// The federation CA, PEM.
    pub federation_ca_pem: String,
    /// When it joined (unix seconds).
    pub joined_at: i64,
    /// The membership's incarnation: the hash of the join token's secret (a token admits
    /// one join, so each join has its own). `None` for a membership recorded by an older
    /// agent.
    #[serde(default)]
    pub token_hash: Option<String>,
}

/// What the agent has told the federation, so that a restarted agent neither repeats it
/// nor forgets to take back what its sources no longer say.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Published {
    /// Digest of the own bundle last published.
    pub bundle_digest: Option<String>,
    /// The sequence the federation accepted for it (a bundle re-read with the same
    /// authorities gets a new local sequence but is not published again).
    #[serde(default)]
    pub bundle_sequence: Option<u64>,
    /// The revision the federation answered that publication with (`None`: unknown, as
    /// after a join or a replayed publication).
    #[serde(default)]
    pub bundle_revision: Option<u64>,
    /// Exports published: `ns/name` → digest of the export.
    pub exports: BTreeMap<String, String>,
    /// Foreign bundles acknowledged: trust domain → sequence.
    pub acked: BTreeMap<String, u64>,
    /// The membership incarnation ([`Membership::token_hash`]) this record belongs to:
    /// what was published and acknowledged under an earlier membership (before the
    /// cluster was removed and joined again) counts for nothing. `None` for a record of
    /// an older agent.
    #[serde(default)]
    pub membership: Option<String>,
}

impl Published {
    /// This record, or a fresh one when it belongs to another membership than
    /// `membership` (an agent that joined again publishes and acknowledges everything
    /// anew).
    #[must_use]
    pub fn for_membership(self, membership: Option<&Membership>) -> Self {
        let current = membership.and_then(|m| m.token_hash.as_ref());
        match (&self.membership, current) {
            (Some(recorded), Some(current)) if recorded != current => {
                Self { membership: Some(current.clone()), ..Self::default() }
            }
            _ => self,
        }
    }
}

/// The state directory.
#[derive(Clone, Debug)]
pub struct Store {
    dir: PathBuf,
}

impl Store {
    /// The store in `dir`, created if missing (owner-only).
    ///
    /// # Errors
    /// The directory cannot be created.
    pub fn open(dir: &Path) -> std::io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
        Ok(Self { dir: dir.to_path_buf() })
    }

    /// The directory.
    #[must_use]
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The membership, if this agent has joined.
    ///
    /// # Errors
    /// The file exists but cannot be read or parsed.
    pub fn membership(&self) -> std::io::Result<Option<Membership>> {
        self.read("membership.json")
    }

    /// Records the membership.
    ///
    /// # Errors
    /// The file cannot be written.
    pub fn save_membership(&self, membership: &Membership) -> std::io::Result<()> {
        self.write("membership.json", membership)
    }

    /// The view applied last, if any.
    ///
    /// # Errors
    /// The file exists but cannot be read or parsed.
    pub fn view(&self) -> std::io::Result<Option<AgentView>> {
        self.read("view.json")
    }

    /// Records the applied view.
    ///
    /// # Errors
    /// The file cannot be written.
    pub fn save_view(&self, view: &AgentView) -> std::io::Result<()> {
        self.write("view.json", view)
    }

    /// What was published.
    ///
    /// # Errors
    /// The file exists but cannot be read or parsed.
    pub fn published(&self) -> std::io::Result<Published> {
        Ok(self.read("published.json")?.unwrap_or_default())
    }

    /// Records what was published.
    ///
    /// # Errors
    /// The file cannot be written.
    pub fn save_published(&self, published: &Published) -> std::io::Result<()> {
        self.write("published.json", published)
    }

    /// Path of the status file.
    #[must_use]
    pub fn status_path(&self) -> PathBuf {
        self.dir.join("status.json")
    }

    fn read<T: DeserializeOwned>(&self, name: &str) -> std::io::Result<Option<T>> {
        let path = self.dir.join(name);
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(|e| {
                std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("{} does not parse: {e}", path.display()),
                )
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn write<T: Serialize>(&self, name: &str, value: &T) -> std::io::Result<()> {
        let bytes = serde_json::to_vec_pretty(value).map_err(std::io::Error::other)?;
        write_atomic(&self.dir.join(name), &bytes, 0o600)
    }
}

/// Prefix of the temporary files [`write_atomic`] writes.
const TEMP_PREFIX: &str = ".federator-";
/// Suffix of the temporary files [`write_atomic`] writes.
const TEMP_SUFFIX: &str = ".tmp";
/// Random ASCII letters and digits between [`TEMP_PREFIX`] and [`TEMP_SUFFIX`].
const TEMP_RANDOM_CHARS: usize = 6;

/// Writes `bytes` to `path` atomically with permissions `mode`: a temporary file in the
/// same directory (`.federator-XXXXXX.tmp`), synced, renamed over `path`, and the
/// directory synced. A process killed in between leaves the temporary file behind:
/// [`remove_leftover_temporaries`] removes it at the next start.
///
/// # Errors
/// Any I/O error.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or_else(|| Path::new("."));
    let mut tmp = temporary_file(dir, mode)?;
    tmp.write_all(bytes)?;
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    std::fs::File::open(dir)?.sync_all()
}

/// A new temporary file in `dir` for [`write_atomic`], with permissions `mode`.
fn temporary_file(dir: &Path, mode: u32) -> std::io::Result<tempfile::NamedTempFile> {
    use std::os::unix::fs::PermissionsExt as _;
    tempfile::Builder::new()
        .prefix(TEMP_PREFIX)
        .suffix(TEMP_SUFFIX)
        .rand_bytes(TEMP_RANDOM_CHARS)
        .permissions(std::fs::Permissions::from_mode(mode))
        .tempfile_in(dir)
}

/// Whether `name` is that of a temporary file [`write_atomic`] writes: exactly
/// `.federator-`, six ASCII letters or digits, `.tmp`.
fn is_atomic_temporary(name: &str) -> bool {
    name.strip_prefix(TEMP_PREFIX).and_then(|rest| rest.strip_suffix(TEMP_SUFFIX)).is_some_and(
        |random| {
            random.len() == TEMP_RANDOM_CHARS && random.bytes().all(|b| b.is_ascii_alphanumeric())
        },
    )
}

/// Removes the temporary files [`write_atomic`] left in `dir` when the process was
/// killed mid-write (regular files named exactly as it names them; nothing else, and
/// nothing in subdirectories). Returns how many it removed; a missing `dir` holds none.
///
/// Only for start-up, before anything writes into `dir`: a write in progress would lose
/// its temporary file.
///
/// # Errors
/// `dir` cannot be listed, or a leftover cannot be removed.
pub fn remove_leftover_temporaries(dir: &Path) -> std::io::Result<usize> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e),
    };
    let mut removed = 0;
    for entry in entries {
        let entry = entry?;
        // `file_type` does not follow symbolic links: a link is never removed.
        if !entry.file_name().to_str().is_some_and(is_atomic_temporary)
            || !entry.file_type()?.is_file()
        {
            continue;
        }
        match std::fs::remove_file(entry.path()) {
            Ok(()) => removed += 1,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    if removed > 0 {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leftover_temporaries_are_removed_and_nothing_else() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = |name: &str| dir.path().join(name);
        // What a write killed between creating and renaming its temporary file leaves.
        for name in [".federator-a1B2c3.tmp", ".federator-ZZZZZZ.tmp"] {
            std::fs::write(path(name), b"half").expect("leftover");
        }
        // Files that merely look alike, a directory and a symbolic link of the pattern.
        let kept = [
            "imports.json",
            "federator-a1B2c3.tmp",
            ".federator-a1B2c.tmp",
            ".federator-a1B2c3d.tmp",
            ".federator-a1-2c3.tmp",
            ".federator-a1B2c3.tmp.keep",
            ".federator-a1B2c3.json",
            ".other-a1B2c3.tmp",
        ];
        for name in kept {
            std::fs::write(path(name), b"keep").expect("kept file");
        }
        std::fs::create_dir(path(".federator-dirdir.tmp")).expect("dir");
        std::os::unix::fs::symlink(path("imports.json"), path(".federator-link00.tmp"))
            .expect("link");
        // A write killed before its rename, as `write_atomic` names its temporary file.
        let (_, killed) =
            temporary_file(dir.path(), 0o644).expect("temporary").keep().expect("keep");
        // A real write leaves nothing behind, and its file is not taken for a leftover.
        write_atomic(&path("view.json"), b"{}", 0o600).expect("write");

        assert_eq!(remove_leftover_temporaries(dir.path()).expect("remove"), 3);
        assert!(!killed.exists(), "{}", killed.display());
        let mut left: Vec<String> = std::fs::read_dir(dir.path())
            .expect("list")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        let mut expected: Vec<String> = kept.iter().map(|n| (*n).to_string()).collect();
        expected.extend(
            [".federator-dirdir.tmp", ".federator-link00.tmp", "view.json"].map(String::from),
        );
        expected.sort();
        assert_eq!(left, expected);
        assert_eq!(std::fs::read(path("imports.json")).expect("target"), b"keep");
        assert_eq!(remove_leftover_temporaries(dir.path()).expect("again"), 0);
        assert_eq!(remove_leftover_temporaries(&path("missing")).expect("missing dir"), 0);
    }

    #[test]
    fn the_temporary_name_pattern_is_exact() {
        assert!(is_atomic_temporary(".federator-Ab3xYz.tmp"));
        assert!(!is_atomic_temporary(".federator-.tmp"));
        assert!(!is_atomic_temporary(".federator-Ab3xY/.tmp"));
        assert!(!is_atomic_temporary(".federator-Ab3xé.tmp"), "six bytes, not all ASCII");
    }

    #[test]
    fn files_round_trip_and_missing_ones_are_none() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(&dir.path().join("state")).expect("open");
        assert_eq!(store.membership().expect("read"), None);
        assert_eq!(store.published().expect("read"), Published::default());
        let membership = Membership {
            cluster: "a".into(),
            trust_domain: "a.test".into(),
            agent_id: "spiffe://a.test/agent".into(),
            endpoints: vec!["127.0.0.1:1".into()],
            federation_ca_pem: "pem".into(),
            joined_at: 1,
            token_hash: Some("h1".into()),
        };
        store.save_membership(&membership).expect("save");
        assert_eq!(store.membership().expect("read"), Some(membership));
        // A view with an import: its map is keyed by a struct, which JSON cannot key by.
        let key = crate::service::ServiceKey::new("shop", "cart");
        let import = crate::service::ServiceImport {
            key: key.clone(),
            hostname: key.hostname(),
            ports: Vec::new(),
            identities: vec!["spiffe://b.test/ns/shop/sa/cart".into()],
            clusters: vec![crate::service::ImportedCluster {
                cluster: "b".into(),
                trust_domain: "b.test".into(),
                live: true,
                via_gateway: false,
                identities: Vec::new(),
                endpoints: Vec::new(),
            }],
            conditions: Vec::new(),
            revision: 6,
        };
        let view = AgentView {
            revision: 7,
            imports: [(key, import)].into_iter().collect(),
            ..AgentView::default()
        };
        store.save_view(&view).expect("save");
        assert_eq!(store.view().expect("read"), Some(view));
        std::fs::write(store.dir().join("view.json"), b"{not json").expect("corrupt");
        let err = store.view().expect_err("corrupt");
        assert!(err.to_string().contains("view.json"), "{err}");
    }

    #[test]
    fn what_was_published_under_an_earlier_membership_counts_for_nothing() {
        let membership = |hash: Option<&str>| Membership {
            cluster: "a".into(),
            trust_domain: "a.test".into(),
            agent_id: "spiffe://a.test/agent".into(),
            endpoints: Vec::new(),
            federation_ca_pem: String::new(),
            joined_at: 1,
            token_hash: hash.map(str::to_string),
        };
        let published = Published {
            bundle_digest: Some("d".into()),
            bundle_sequence: Some(3),
            bundle_revision: Some(9),
            exports: BTreeMap::from([("shop/cart".to_string(), "x".to_string())]),
            acked: BTreeMap::from([("b.test".to_string(), 4)]),
            membership: Some("h1".into()),
        };
        let same = published.clone().for_membership(Some(&membership(Some("h1"))));
        assert_eq!(same, published);
        let rejoined = published.clone().for_membership(Some(&membership(Some("h2"))));
        assert_eq!(rejoined, Published { membership: Some("h2".into()), ..Published::default() });
        // Records of older agents (no incarnation on either side) are kept as they are.
        assert_eq!(published.clone().for_membership(Some(&membership(None))), published);
        let legacy = Published { membership: None, ..published.clone() };
        assert_eq!(legacy.clone().for_membership(Some(&membership(Some("h2")))), legacy);
        assert_eq!(published.clone().for_membership(None), published);
    }
}
