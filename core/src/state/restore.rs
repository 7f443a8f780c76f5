//! Restoring a saved snapshot of the federation into a running group.
//!
//! A snapshot file may be far larger than one log entry should be, so its bytes go
//! through the log in chunks: [`Command::RestoreBegin`] announces the size and SHA-256,
//! [`Command::RestoreChunk`]s stage the bytes in order, and [`Command::RestoreCommit`]
//! checks them and swaps the state ([`Command::RestoreAbort`] drops them when the upload
//! fails). The staged bytes are part of the replicated state (and of its snapshots), so
//! a follower installing a snapshot half way through loses nothing and every replica
//! swaps at the same index; a leader change half way fails the restore, and running it
//! again stages from the start.
//!
//! What the swap keeps of the running group: its replica registry (the restored group
//! has its own replicas and addresses) and revisions that never go back: the restored
//! state continues at a revision above both the running and the saved one, with an empty
//! change window, so every watcher resynchronises from a full snapshot.
//!
//! [`Command::RestoreBegin`]: super::Command::RestoreBegin
//! [`Command::RestoreChunk`]: super::Command::RestoreChunk
//! [`Command::RestoreCommit`]: super::Command::RestoreCommit
//! [`Command::RestoreAbort`]: super::Command::RestoreAbort

use serde::{Deserialize, Serialize};
use sha2::Digest as _;

use super::{
    Applied, AuditEvent, ChangeLog, CommandError, CommandResult, FederationState, ReplicaRecord,
};

/// Largest snapshot a restore accepts (the staged bytes live in every replica's memory).
pub const MAX_RESTORE_BYTES: u64 = 1 << 30;

/// Largest chunk of one [`super::Command::RestoreChunk`] (well inside one log entry).
pub const MAX_RESTORE_CHUNK: usize = 4 << 20;

/// A restore whose bytes are being staged through the log.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StagedRestore {
    /// Chosen by the proposer; chunks and the commit must name it.
    pub id: u64,
    /// Size of the whole snapshot.
    pub size: u64,
    /// Hex SHA-256 of the whole snapshot.
    pub sha256: String,
    /// The bytes staged so far.
    #[serde(with = "serde_bytes")]
    pub data: Vec<u8>,
    /// Log index of the [`super::Command::RestoreBegin`].
    pub begun_at_index: u64,
    /// SHA-256 of `data` so far, kept as the chunks arrive so the commit need not hash the
    /// whole snapshot at once. Not part of the encoding: a restore loaded from a snapshot
    /// half way has none, and its commit hashes the bytes.
    #[serde(skip)]
    pub hash: RunningHash,
}

/// A SHA-256 being computed over a staged restore's bytes since its first chunk.
///
/// It is derived from the staged bytes, never compared: two stages with the same bytes are
/// equal whether or not one of them carries its running hash.
#[derive(Clone, Default)]
pub struct RunningHash(Option<sha2::Sha256>);

impl RunningHash {
    fn started() -> Self {
        Self(Some(sha2::Sha256::new()))
    }

    fn update(&mut self, data: &[u8]) {
        if let Some(hash) = &mut self.0 {
            hash.update(data);
        }
    }

    /// The hex SHA-256 of `data`: the running hash when it covers all of it (it started
    /// with the stage), else `data` hashed now.
    fn finish(&mut self, data: &[u8]) -> String {
        hex::encode(match self.0.take() {
            Some(hash) => hash.finalize(),
            None => sha2::Sha256::digest(data),
        })
    }
}

impl PartialEq for RunningHash {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl Eq for RunningHash {}

impl std::fmt::Debug for RunningHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() { "RunningHash(running)" } else { "RunningHash(none)" })
    }
}

/// What a committed restore brought back.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestoreSummary {
    /// Member clusters restored.
    pub members: u64,
    /// Trust bundles restored.
    pub bundles: u64,
    /// Services restored.
    pub services: u64,
    /// The revision watchers continue from.
    pub revision: u64,
    /// Members and services the running state held before (dropped by a forced
    /// restore).
    pub replaced_members: u64,
}

impl FederationState {
    /// Whether the state holds anything a restore would overwrite: members, bundles,
    /// services or join tokens.
    #[must_use]
    pub fn holds_federation_data(&self) -> bool {
        !(self.members.is_empty()
            && self.bundles.is_empty()
            && self.services.is_empty()
            && self.tokens.is_empty())
    }

    /// The state's snapshot encoding without a staged restore: what a backup holds.
    #[must_use]
    pub fn backup_bytes(&self) -> Vec<u8> {
        self.encode(None)
    }

    pub(super) fn apply_restore_begin(
        &mut self,
        index: u64,
        id: u64,
        size: u64,
        sha256: String,
    ) -> CommandResult {
        if size == 0 || size > MAX_RESTORE_BYTES {
            return Err(CommandError::invalid(
                "size",
                &format!("must be 1 to {MAX_RESTORE_BYTES} bytes, is {size}"),
            ));
        }
        if sha256.len() != 64 || !sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(CommandError::invalid("sha256", "must be 64 hex digits"));
        }
        // A newer restore replaces an abandoned one.
        self.restore = Some(StagedRestore {
            id,
            size,
            sha256: sha256.to_ascii_lowercase(),
            data: Vec::new(),
            begun_at_index: index,
            hash: RunningHash::started(),
        });
        Ok(Applied::Done)
    }

    pub(super) fn apply_restore_chunk(
        &mut self,
        id: u64,
        offset: u64,
        data: &[u8],
    ) -> CommandResult {
        let staged = self.staged_restore(id)?;
        if offset != staged.data.len() as u64 {
            return Err(CommandError::invalid(
                "offset",
                &format!("is {offset}, the restore has {} bytes staged", staged.data.len()),
            ));
        }
        if data.is_empty() || data.len() > MAX_RESTORE_CHUNK {
            return Err(CommandError::invalid(
                "data",
                &format!("a chunk holds 1 to {MAX_RESTORE_CHUNK} bytes, not {}", data.len()),
            ));
        }
        if offset + data.len() as u64 > staged.size {
            return Err(CommandError::invalid(
                "data",
                &format!("runs past the announced size of {} bytes", staged.size),
            ));
        }
        staged.data.extend_from_slice(data);
        staged.hash.update(data);
        Ok(Applied::Done)
    }

    pub(super) fn apply_restore_commit(
        &mut self,
        index: u64,
        id: u64,
        force: bool,
        now: i64,
    ) -> CommandResult {
        let result = self.commit_restore(id, force);
        if let Err(error) = &result {
            self.audit_restore(now, index, "federation".into(), Some(error.to_string()));
        }
        let summary = result?;
        let target = format!(
            "{} members, {} services, revision {}",
            summary.members, summary.services, summary.revision
        );
        self.audit_restore(now, index, target, None);
        Ok(Applied::Restored(summary))
    }

    /// Records a restore's outcome in the audit trail (`error`: why it did not commit).
    fn audit_restore(&mut self, now: i64, index: u64, target: String, error: Option<String>) {
        self.audit.record(AuditEvent::new(now, index, "admin", "restore", target, error));
    }

    pub(super) fn apply_restore_abort(
        &mut self,
        index: u64,
        id: u64,
        reason: &str,
        now: i64,
    ) -> CommandResult {
        // Another restore may have replaced this one: then there is nothing to drop.
        if self.restore.as_ref().is_some_and(|staged| staged.id == id) {
            self.restore = None;
            let error = format!("cancelled before its commit: {reason}");
            self.audit_restore(now, index, "federation".into(), Some(error));
        }
        Ok(Applied::Done)
    }

    fn commit_restore(&mut self, id: u64, force: bool) -> Result<RestoreSummary, CommandError> {
        let staged = self.staged_restore(id)?;
        if staged.data.len() as u64 != staged.size {
            return Err(CommandError::invalid(
                "size",
                &format!("{} of {} bytes staged", staged.data.len(), staged.size),
            ));
        }
        let actual = staged.hash.finish(&staged.data);
        if actual != staged.sha256 {
            // The staged bytes are useless: drop them.
            self.restore = None;
            return Err(CommandError::invalid(
                "sha256",
                &format!("the staged bytes hash to {actual}, the restore announced another"),
            ));
        }
        let mut restored = Self::default();
        if let Err(reason) = federator_raft::StateMachine::restore(&mut restored, &staged.data) {
            self.restore = None;
            return Err(CommandError::invalid("snapshot", &reason.to_string()));
        }
        if self.holds_federation_data() && !force {
            // The bytes are not kept: a forced retry streams them again.
            self.restore = None;
            return Err(CommandError::AlreadyExists(format!(
                "the federation already holds {} members, {} services and {} join tokens; \
                 restore into a new group, or force it to replace them",
                self.members.len(),
                self.services.len(),
                self.tokens.len()
            )));
        }
        let replicas: std::collections::BTreeMap<u64, ReplicaRecord> =
            std::mem::take(&mut self.replicas);
        let revision = self.changes.revision().max(restored.changes.revision()) + 1;
        let summary = RestoreSummary {
            members: restored.members.len() as u64,
            bundles: restored.bundles.len() as u64,
            services: restored.services.len() as u64,
            revision,
            replaced_members: self.members.len() as u64,
        };
        let mut audit = std::mem::take(&mut restored.audit);
        // The running group's own trail (its replica registrations, refusals) goes on
        // after the restored one.
        audit.append(&self.audit);
        *self = Self {
            replicas,
            audit,
            changes: ChangeLog::starting_at(revision),
            restore: None,
            ..restored
        };
        Ok(summary)
    }

    fn staged_restore(&mut self, id: u64) -> Result<&mut StagedRestore, CommandError> {
        match &mut self.restore {
            Some(staged) if staged.id == id => Ok(staged),
            Some(_) => Err(CommandError::invalid("id", "another restore replaced this one")),
            None => Err(CommandError::invalid("id", "no restore has begun (or it was dropped)")),
        }
    }
}

#[cfg(test)]
mod tests {
    use federator_raft::StateMachine as _;

    use super::*;
    use crate::state::Command;
    use crate::state::test_support::{Cluster, apply, joined};

    fn restore_all(state: &mut FederationState, bytes: &[u8], force: bool) -> CommandResult {
        let sha256 = hex::encode(sha2::Sha256::digest(bytes));
        apply(state, 100, Command::RestoreBegin { id: 7, size: bytes.len() as u64, sha256 })?;
        for (i, chunk) in bytes.chunks(1000).enumerate() {
            apply(
                state,
                101 + i as u64,
                Command::RestoreChunk { id: 7, offset: (i * 1000) as u64, data: chunk.to_vec() },
            )?;
        }
        apply(state, 10_000, Command::RestoreCommit { id: 7, force, now: 1 })
    }

    fn federation_with(td: &str, cluster: &str) -> FederationState {
        joined(&[(cluster, &Cluster::new(td))])
    }

    #[test]
    fn a_restore_brings_back_the_federation_and_keeps_the_group_and_revisions() {
        let saved = federation_with("a.example", "a");
        let bytes = saved.snapshot();

        let mut running = FederationState::default();
        apply(
            &mut running,
            1,
            Command::RegisterReplica { id: 9, raft_addr: "r".into(), api_addr: "api".into() },
        )
        .expect("register");
        let result = restore_all(&mut running, &bytes, false).expect("restored");
        let Applied::Restored(summary) = result else { panic!("{result:?}") };
        assert_eq!((summary.members, summary.bundles), (1, 1));
        assert_eq!(running.members, saved.members);
        assert_eq!(running.bundles, saved.bundles);
        assert_eq!(running.replicas.keys().copied().collect::<Vec<_>>(), vec![9]);
        assert!(running.restore.is_none(), "staged bytes are dropped");
        assert!(running.changes.revision() > saved.changes.revision());
        assert!(running.changes.since(saved.changes.revision()).is_none(), "watchers resync");
        let newest = running.audit.newest(1);
        assert_eq!(newest[0].action, "restore");
    }

    #[test]
    fn an_aborted_restore_drops_its_bytes_and_only_its_own() {
        let mut state = FederationState::default();
        let sha256 = "0".repeat(64);
        apply(&mut state, 1, Command::RestoreBegin { id: 5, size: 10, sha256 }).expect("begin");
        apply(&mut state, 2, Command::RestoreChunk { id: 5, offset: 0, data: vec![1; 4] })
            .expect("chunk");
        // Another restore's abort leaves this one staged.
        let other = Command::RestoreAbort { id: 6, reason: "other".into(), now: 1 };
        apply(&mut state, 3, other).expect("abort of another restore");
        assert_eq!(state.restore.as_ref().map(|s| s.data.len()), Some(4));
        let abort = Command::RestoreAbort { id: 5, reason: "the upload stopped".into(), now: 1 };
        apply(&mut state, 4, abort).expect("abort");
        assert!(state.restore.is_none(), "the staged bytes are dropped");
        let newest = &state.audit.newest_refusals(1)[0];
        assert_eq!(newest.action, "restore");
        assert!(format!("{newest:?}").contains("cancelled before its commit: the upload stopped"));
        // Its late chunks and commit find nothing staged.
        let late = Command::RestoreChunk { id: 5, offset: 4, data: vec![1; 6] };
        assert!(apply(&mut state, 5, late).is_err());
        assert!(
            apply(&mut state, 6, Command::RestoreCommit { id: 5, force: false, now: 1 }).is_err()
        );
    }

    #[test]
    fn a_federation_with_members_is_not_overwritten_unless_forced() {
        let bytes = federation_with("a.example", "a").snapshot();
        let mut running = federation_with("b.example", "b");
        let refused = restore_all(&mut running, &bytes, false);
        assert!(matches!(refused, Err(CommandError::AlreadyExists(_))), "{refused:?}");
        assert!(running.members.contains_key("b"));
        assert!(running.restore.is_none(), "refused bytes are not kept");
        restore_all(&mut running, &bytes, true).expect("forced");
        assert!(running.members.contains_key("a") && !running.members.contains_key("b"));
    }

    #[test]
    fn corrupt_or_incomplete_restores_are_refused() {
        let bytes = federation_with("a.example", "a").snapshot();
        let mut state = FederationState::default();
        let mut corrupt = bytes.clone();
        let last = corrupt.len() - 1;
        corrupt[last] ^= 1;
        let sha256 = hex::encode(sha2::Sha256::digest(&bytes));
        let size = bytes.len() as u64;
        apply(&mut state, 1, Command::RestoreBegin { id: 1, size, sha256 }).expect("begin");
        let err =
            apply(&mut state, 2, Command::RestoreChunk { id: 1, offset: 5, data: corrupt.clone() })
                .expect_err("offset");
        assert!(err.to_string().starts_with("offset:"), "{err}");
        let err = apply(&mut state, 3, Command::RestoreCommit { id: 1, force: false, now: 1 })
            .expect_err("incomplete");
        assert!(err.to_string().starts_with("size:"), "{err}");
        let err = apply(&mut state, 4, Command::RestoreChunk { id: 2, offset: 0, data: vec![1] })
            .expect_err("wrong id");
        assert!(err.to_string().starts_with("id:"), "{err}");
        apply(&mut state, 5, Command::RestoreChunk { id: 1, offset: 0, data: corrupt })
            .expect("staged");
        let err = apply(&mut state, 6, Command::RestoreCommit { id: 1, force: false, now: 1 })
            .expect_err("checksum");
        assert!(err.to_string().starts_with("sha256:"), "{err}");
        assert!(state.restore.is_none() && state.members.is_empty());

        let garbage = b"\x03not a snapshot".to_vec();
        let err = restore_all(&mut state, &garbage, false).expect_err("undecodable");
        assert!(err.to_string().starts_with("snapshot:"), "{err}");
        for (size, sha256) in [(0, "00".repeat(32)), (8, "zz".repeat(32)), (8, "ab".into())] {
            assert!(apply(&mut state, 9, Command::RestoreBegin { id: 3, size, sha256 }).is_err());
        }
    }

    #[test]
    fn a_half_staged_restore_survives_a_snapshot_install() {
        let bytes = federation_with("a.example", "a").snapshot();
        let mut leader = FederationState::default();
        let sha256 = hex::encode(sha2::Sha256::digest(&bytes));
        let size = bytes.len() as u64;
        apply(&mut leader, 1, Command::RestoreBegin { id: 4, size, sha256 }).expect("begin");
        let half = bytes.len() / 2;
        apply(
            &mut leader,
            2,
            Command::RestoreChunk { id: 4, offset: 0, data: bytes[..half].into() },
        )
        .expect("chunk");

        let mut follower = FederationState::default();
        follower.restore(&leader.snapshot()).expect("install");
        assert_eq!(follower, leader);
        assert_eq!(follower.digest(), leader.digest());
        for state in [&mut leader, &mut follower] {
            apply(
                state,
                3,
                Command::RestoreChunk { id: 4, offset: half as u64, data: bytes[half..].into() },
            )
            .expect("chunk");
            apply(state, 4, Command::RestoreCommit { id: 4, force: false, now: 1 })
                .expect("commit");
        }
        assert_eq!(follower.digest(), leader.digest());
    }
}
