//! The snapshot file `federator snapshot save` writes and `restore` reads.
//!
//! ```text
//! federator-snapshot 1\n          magic and file format version
//! {"applied_index":…,…}\n         header: one line of JSON (SnapshotHeader)
//! <size bytes of state data>      the state machine's canonical encoding
//! ```
//!
//! The header says how many bytes follow and their SHA-256; a reader checks both, and
//! that the data decodes as a federation state, before anything is restored. The first
//! two lines are text, so `head -2 FILE` shows what a file holds.

use std::io::{BufRead, Read, Write};
use std::path::Path;

use serde::{Deserialize, Serialize};
use sha2::Digest as _;

use crate::state::{FederationState, MAX_RESTORE_BYTES};

/// First line of every snapshot file.
pub const MAGIC: &str = "federator-snapshot 1";

/// Longest header line read.
const MAX_HEADER_BYTES: usize = 64 * 1024;

/// What a snapshot file holds, from its header.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotHeader {
    /// Log index the state was read at, in the group it was saved from.
    pub applied_index: u64,
    /// Watch revision of the state.
    pub revision: u64,
    /// Bytes of state data after the header.
    pub size: u64,
    /// Hex SHA-256 of the state data.
    pub sha256: String,
    /// Member clusters.
    pub members: u64,
    /// Trust bundles.
    pub bundles: u64,
    /// Services.
    pub services: u64,
    /// Endpoints over all exports.
    pub endpoints: u64,
    /// The replica that answered the save.
    pub replica_id: u64,
    /// When it was saved, unix seconds.
    pub created_at: i64,
    /// Federator version that saved it.
    pub version: String,
}

/// Why a file is not a usable snapshot.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotFileError {
    /// Reading or writing failed.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// The first line is not [`MAGIC`].
    #[error("not a Federator snapshot file (it does not start with {MAGIC:?})")]
    NotASnapshot,
    /// A newer or unknown file format.
    #[error("snapshot file format {0:?} is not readable by this build (it reads 1)")]
    UnsupportedFormat(String),
    /// The header line is missing, too long or not the expected JSON.
    #[error("header: {0}")]
    Header(String),
    /// A header field is out of range.
    #[error("header field {field}: {rule}")]
    HeaderField {
        /// The field.
        field: &'static str,
        /// What is wrong with it.
        rule: String,
    },
    /// Fewer or more bytes follow the header than it says.
    #[error(
        "the header announces {expected} bytes of state, the file has {actual}: it is truncated or has trailing data"
    )]
    Size {
        /// From the header.
        expected: u64,
        /// In the file.
        actual: u64,
    },
    /// The data does not hash to the header's SHA-256.
    #[error(
        "checksum mismatch: the state hashes to {actual}, the header says {expected}; the file is corrupt"
    )]
    Checksum {
        /// From the header.
        expected: String,
        /// Of the data.
        actual: String,
    },
    /// The data is intact but does not decode as a federation state of this build.
    #[error("the state does not decode: {0}")]
    State(String),
}

/// A snapshot read and checked: its header, its data and the decoded state.
#[derive(Debug)]
pub struct SnapshotFile {
    /// The header.
    pub header: SnapshotHeader,
    /// The state data, as the header describes it.
    pub data: Vec<u8>,
    /// The decoded state.
    pub state: FederationState,
}

impl SnapshotHeader {
    /// Checks the fields a reader relies on.
    ///
    /// # Errors
    /// The size is zero or too large, or the SHA-256 is not 64 hex digits.
    pub fn validate(&self) -> Result<(), SnapshotFileError> {
        if self.size == 0 || self.size > MAX_RESTORE_BYTES {
            return Err(SnapshotFileError::HeaderField {
                field: "size",
                rule: format!("must be 1 to {MAX_RESTORE_BYTES}, is {}", self.size),
            });
        }
        if self.sha256.len() != 64 || !self.sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(SnapshotFileError::HeaderField {
                field: "sha256",
                rule: "must be 64 hex digits".into(),
            });
        }
        Ok(())
    }
}

/// Writes the magic line and the header line.
///
/// # Errors
/// Writing fails.
pub fn write_header(out: &mut impl Write, header: &SnapshotHeader) -> std::io::Result<()> {
    let json = serde_json::to_string(header).map_err(std::io::Error::other)?;
    writeln!(out, "{MAGIC}")?;
    writeln!(out, "{json}")
}

/// Reads the magic line and the header line; `input` is left at the first data byte.
///
/// # Errors
/// The file is not a snapshot of a format this build reads, or its header is invalid.
pub fn read_header(input: &mut impl BufRead) -> Result<SnapshotHeader, SnapshotFileError> {
    let magic = read_line(input, MAGIC.len() + 16).map_err(|_| SnapshotFileError::NotASnapshot)?;
    match magic.strip_prefix("federator-snapshot ") {
        Some("1") => {}
        Some(other) => return Err(SnapshotFileError::UnsupportedFormat(other.to_string())),
        None => return Err(SnapshotFileError::NotASnapshot),
    }
    let line = read_line(input, MAX_HEADER_BYTES)?;
    let header: SnapshotHeader =
        serde_json::from_str(&line).map_err(|e| SnapshotFileError::Header(e.to_string()))?;
    header.validate()?;
    Ok(header)
}

/// Reads one `\n`-terminated UTF-8 line of at most `limit` bytes, without the newline.
fn read_line(input: &mut impl BufRead, limit: usize) -> Result<String, SnapshotFileError> {
    let mut line = Vec::new();
    input.take(limit as u64 + 1).read_until(b'\n', &mut line)?;
    if line.pop() != Some(b'\n') {
        return Err(SnapshotFileError::Header(if line.len() >= limit {
            format!("longer than {limit} bytes")
        } else {
            "the file ends inside the header".into()
        }));
    }
    String::from_utf8(line).map_err(|_| SnapshotFileError::Header("not UTF-8".into()))
}

/// Reads and checks a whole snapshot: header, size, checksum and that the state decodes.
///
/// # Errors
/// Any check fails; the error names which.
pub fn read(input: &mut impl BufRead) -> Result<SnapshotFile, SnapshotFileError> {
    let (header, data) = read_data(input)?;
    let state = decode_state(&data)?;
    Ok(SnapshotFile { header, data, state })
}

/// Reads a snapshot's header and data, checking the size and checksum but not yet that
/// the state decodes ([`decode_state`]; the restore does that while it streams).
///
/// # Errors
/// The header is invalid, or the data's size or checksum differs from it.
pub fn read_data(input: &mut impl BufRead) -> Result<(SnapshotHeader, Vec<u8>), SnapshotFileError> {
    let header = read_header(input)?;
    let mut data = Vec::new();
    // One byte more than announced tells trailing data from an exact fit.
    input.take(header.size + 1).read_to_end(&mut data)?;
    let actual = if data.len() as u64 > header.size {
        header.size + 1 + std::io::copy(input, &mut std::io::sink())?
    } else {
        data.len() as u64
    };
    if actual != header.size {
        return Err(SnapshotFileError::Size { expected: header.size, actual });
    }
    let sha256 = hex::encode(sha2::Sha256::digest(&data));
    if !sha256.eq_ignore_ascii_case(&header.sha256) {
        return Err(SnapshotFileError::Checksum { expected: header.sha256, actual: sha256 });
    }
    Ok((header, data))
}

/// Decodes a snapshot's data as a federation state of this build.
///
/// # Errors
/// The data does not decode.
pub fn decode_state(data: &[u8]) -> Result<FederationState, SnapshotFileError> {
    let mut state = FederationState::default();
    federator_raft::StateMachine::restore(&mut state, data)
        .map_err(|error| SnapshotFileError::State(error.to_string()))?;
    Ok(state)
}

/// Reads and checks the snapshot file at `path`.
///
/// # Errors
/// The file cannot be opened, or a check fails.
pub fn read_path(path: &Path) -> Result<SnapshotFile, SnapshotFileError> {
    let file = std::fs::File::open(path)?;
    read(&mut std::io::BufReader::new(file))
}

/// Reads the snapshot file at `path` with [`read_data`].
///
/// # Errors
/// The file cannot be opened, or a check fails.
pub fn read_data_path(path: &Path) -> Result<(SnapshotHeader, Vec<u8>), SnapshotFileError> {
    let file = std::fs::File::open(path)?;
    read_data(&mut std::io::BufReader::new(file))
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn sample() -> (SnapshotHeader, Vec<u8>) {
        let mut state = FederationState::default();
        state.probes.insert(
            "k".into(),
            crate::state::ProbeValue { value: b"v".to_vec(), version: 1, modified_index: 3 },
        );
        let data = state.backup_bytes();
        let header = SnapshotHeader {
            applied_index: 3,
            revision: 0,
            size: data.len() as u64,
            sha256: hex::encode(sha2::Sha256::digest(&data)),
            members: 0,
            bundles: 0,
            services: 0,
            endpoints: 0,
            replica_id: 1,
            created_at: 1_700_000_000,
            version: "test".into(),
        };
        (header, data)
    }

    fn file(header: &SnapshotHeader, data: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        write_header(&mut out, header).expect("header");
        out.extend_from_slice(data);
        out
    }

    fn read_bytes(bytes: &[u8]) -> Result<SnapshotFile, SnapshotFileError> {
        read(&mut &bytes[..])
    }

    #[test]
    fn a_written_file_reads_back() {
        let (header, data) = sample();
        let read = read_bytes(&file(&header, &data)).expect("reads");
        assert_eq!(read.header, header);
        assert_eq!(read.data, data);
        assert_eq!(read.state.probes["k"].value, b"v");
    }

    #[test]
    fn damaged_files_are_refused_naming_the_problem() {
        let (header, data) = sample();
        let good = file(&header, &data);
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (Vec::new(), "not a Federator snapshot"),
            (b"PK\x03\x04 a zip file".to_vec(), "not a Federator snapshot"),
            (b"federator-snapshot 2\n{}\n".to_vec(), "format \"2\""),
            (format!("{MAGIC}\n").into_bytes(), "ends inside the header"),
            (format!("{MAGIC}\n{{\"size\": 3}}\n").into_bytes(), "header: missing field"),
            (
                format!("{MAGIC}\n{}\n", "x".repeat(MAX_HEADER_BYTES + 5)).into_bytes(),
                "longer than",
            ),
            (good[..good.len() - 1].to_vec(), "truncated"),
            ([good.as_slice(), b"extra"].concat(), "trailing data"),
            (
                file(&SnapshotHeader { sha256: "ab".into(), ..header.clone() }, &data),
                "header field sha256",
            ),
            (file(&SnapshotHeader { size: 0, ..header.clone() }, &[]), "header field size"),
        ];
        for (bytes, expected) in cases {
            let error = read_bytes(&bytes).expect_err(expected).to_string();
            assert!(error.contains(expected), "{error:?} should mention {expected:?}");
        }

        let mut flipped = data.clone();
        flipped[data.len() / 2] ^= 0x40;
        let error = read_bytes(&file(&header, &flipped)).expect_err("corrupt").to_string();
        assert!(error.starts_with("checksum mismatch"), "{error}");

        let garbage = b"\x09garbage".to_vec();
        let header = SnapshotHeader {
            size: garbage.len() as u64,
            sha256: hex::encode(sha2::Sha256::digest(&garbage)),
            ..header
        };
        let error = read_bytes(&file(&header, &garbage)).expect_err("undecodable").to_string();
        assert!(error.starts_with("the state does not decode"), "{error}");
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = read_bytes(&bytes);
            let with_magic = [format!("{MAGIC}\n").as_bytes(), &bytes].concat();
            let _ = read_bytes(&with_magic);
        }

        #[test]
        fn any_damage_to_the_data_is_caught(position in any::<prop::sample::Index>(), bit in 0u8..8) {
            let (header, data) = sample();
            let mut damaged = data.clone();
            let i = position.index(damaged.len());
            damaged[i] ^= 1 << bit;
            prop_assert!(read_bytes(&file(&header, &damaged)).is_err());
        }

        #[test]
        fn any_truncation_is_caught(cut in any::<prop::sample::Index>()) {
            let (header, data) = sample();
            let whole = file(&header, &data);
            let end = cut.index(whole.len());
            prop_assert!(read_bytes(&whole[..end]).is_err());
        }
    }
}
