//! The migration of a log written in entry format 1, where a normal entry held exactly
//! one command, to the current format, where it holds a batch of them: done once, when the
//! store opens such a log.

use openraft::EntryPayload;
use serde::Deserialize;

use super::tables::{
    DuringOp as _, ENTRY_FORMAT, ENTRY_FORMAT_KEY, LogStoreError, encode_meta, get_meta,
};
use crate::types::{Command, LogId, Membership};

/// Brings the log in `log` to [`ENTRY_FORMAT`], recorded in `meta` under
/// [`ENTRY_FORMAT_KEY`], in the caller's transaction: a log without a recorded format is
/// format 1 (or new, and empty) and is rewritten.
///
/// # Errors
/// The log is in a format this version does not know (a newer one), or a table cannot be
/// read or written, or an entry of format 1 does not decode.
pub(super) fn to_current_format(
    log: &mut redb::Table<'_, u64, &[u8]>,
    meta: &mut redb::Table<'_, &str, &[u8]>,
) -> Result<(), LogStoreError> {
    match get_meta::<u32>(&*meta, ENTRY_FORMAT_KEY)? {
        Some(ENTRY_FORMAT) => return Ok(()),
        Some(found) => return Err(LogStoreError::UnknownFormat { found }),
        None => rewrite(log)?,
    }
    let format = encode_meta(ENTRY_FORMAT_KEY, &ENTRY_FORMAT)?;
    meta.insert(ENTRY_FORMAT_KEY, format.as_slice()).during("record the entry format")?;
    Ok(())
}

/// openraft's `Entry` with format 1's payload; postcard encodes struct fields and enum
/// variants by position, so these decode what format 1 wrote.
#[derive(Deserialize)]
struct Entry {
    log_id: LogId,
    payload: Payload,
}

#[derive(Deserialize)]
enum Payload {
    Blank,
    Normal(#[serde(with = "serde_bytes")] Vec<u8>),
    Membership(Membership),
}

/// Re-encodes every entry of `log` from format 1 to the current format (a normal
/// entry becomes a batch of its one command), in the caller's transaction.
fn rewrite(log: &mut redb::Table<'_, u64, &[u8]>) -> Result<(), LogStoreError> {
    let mut rewritten = Vec::new();
    for item in redb::ReadableTable::iter(log).during("read the format 1 log")? {
        let (key, value) = item.during("read the format 1 log")?;
        let index = key.value();
        let old: Entry = postcard::from_bytes(value.value())
            .map_err(|source| LogStoreError::DecodeEntry { index, source })?;
        let payload = match old.payload {
            Payload::Blank => EntryPayload::Blank,
            Payload::Normal(command) => EntryPayload::Normal(Command::single(command)),
            Payload::Membership(membership) => EntryPayload::Membership(membership),
        };
        let entry = crate::types::Entry { log_id: old.log_id, payload };
        let bytes = postcard::to_allocvec(&entry)
            .map_err(|source| LogStoreError::EncodeEntry { index, source })?;
        rewritten.push((index, bytes));
    }
    if !rewritten.is_empty() {
        tracing::info!(entries = rewritten.len(), "rewriting the raft log to entry format 2");
    }
    for (index, bytes) in rewritten {
        log.insert(index, bytes.as_slice()).during("rewrite the log")?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use openraft::{EntryPayload, RaftLogReader as _};
    use serde::Serialize;
    use tempfile::TempDir;

    use crate::log_store::tables::{
        DuringOp as _, ENTRY_FORMAT_KEY, LOG, LOG_META, encode_meta, write_txn,
    };
    use crate::log_store::tests::{log_id, normal, open};
    use crate::log_store::{LogStore, open_database};
    use crate::metrics::ConsensusMetrics;
    use crate::types::{Entry, LogId};

    #[tokio::test]
    async fn a_format_1_log_is_rewritten_to_command_batches_on_open() {
        // What format 1 wrote: openraft's entry with a normal payload of one byte string.
        #[derive(Serialize)]
        struct OldEntry {
            log_id: LogId,
            payload: OldPayload,
        }
        #[derive(Serialize)]
        enum OldPayload {
            Blank,
            Normal(#[serde(with = "serde_bytes")] Vec<u8>),
            Membership(crate::types::Membership),
        }
        let membership = crate::types::Membership::new(vec![[1, 2, 3].into()], None);
        let old = [
            OldEntry { log_id: log_id(1, 1), payload: OldPayload::Blank },
            OldEntry { log_id: log_id(1, 2), payload: OldPayload::Membership(membership.clone()) },
            OldEntry { log_id: log_id(1, 3), payload: OldPayload::Normal(b"a=1".to_vec()) },
            OldEntry { log_id: log_id(2, 4), payload: OldPayload::Normal(Vec::new()) },
        ];
        let dir = TempDir::new().expect("tempdir");
        {
            let db = open_database(&dir.path().join("raft.redb")).expect("open database");
            write_txn(&db, "write a format 1 log", |txn| {
                let mut log = txn.open_table(LOG).during("open")?;
                for entry in &old {
                    let bytes = postcard::to_allocvec(entry).expect("encode");
                    log.insert(entry.log_id.index, bytes.as_slice()).during("insert")?;
                }
                txn.open_table(LOG_META).during("open")?;
                Ok(())
            })
            .expect("format 1 log written");
        }
        let expected = vec![
            Entry { log_id: log_id(1, 1), payload: EntryPayload::Blank },
            Entry { log_id: log_id(1, 2), payload: EntryPayload::Membership(membership) },
            normal(1, 3, b"a=1"),
            normal(2, 4, b""),
        ];
        let mut store = open(&dir);
        assert_eq!(store.try_get_log_entries(..).await.expect("read"), expected);
        drop(store);
        // Rewritten once: opening again reads the same entries.
        let mut store = open(&dir);
        assert_eq!(store.try_get_log_entries(..).await.expect("read"), expected);
    }

    #[tokio::test]
    async fn a_log_of_an_unknown_entry_format_is_refused() {
        let dir = TempDir::new().expect("tempdir");
        drop(open(&dir));
        let db = open_database(&dir.path().join("raft.redb")).expect("open database");
        write_txn(&db, "claim format 9", |txn| {
            let mut meta = txn.open_table(LOG_META).during("open")?;
            let nine = encode_meta(ENTRY_FORMAT_KEY, &9u32)?;
            meta.insert(ENTRY_FORMAT_KEY, nine.as_slice()).during("insert")?;
            Ok(())
        })
        .expect("written");
        let Err(error) = LogStore::new(db, ConsensusMetrics::default()) else {
            panic!("a log of format 9 must not open");
        };
        assert!(
            error.to_string().contains("entry format 9, written by a newer federator"),
            "{error}"
        );
    }
}
