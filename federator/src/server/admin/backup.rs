//! Backup and restore of the whole federation state (`federator snapshot save|restore`).
//!
//! A save reads the state at a linearizable point (by default) and streams its canonical
//! encoding with its size and SHA-256 in front. A restore stages the bytes through the
//! log in chunks and commits them in one command (see [`crate::state`]'s restore), so
//! every replica swaps at the same index and a leader change half way loses nothing.

use std::pin::Pin;

use bytes::Bytes;
use federator_proto::admin as pb;
use federator_raft::Consistency;
use futures::Stream;
use sha2::Digest as _;
use tonic::{Status, Streaming};

use super::{command_status, replica_status};
use crate::server::FederationReplica;
use crate::state::{Applied, Command, MAX_RESTORE_BYTES, command_result};

/// A snapshot streamed to the operator.
pub type SnapshotStream = Pin<Box<dyn Stream<Item = Result<pb::SnapshotChunk, Status>> + Send>>;

/// Bytes per message of a snapshot stream, and per staged log entry of a restore.
pub const CHUNK_BYTES: usize = 1 << 20;

/// Reads the whole state and streams it: the first message carries its description.
pub async fn save(
    replica: &FederationReplica,
    consistency: Consistency,
) -> Result<SnapshotStream, Status> {
    let ((data, mut info), applied_index) = replica
        .read(consistency, |s| {
            let info = pb::SnapshotInfo {
                revision: s.changes.revision(),
                members: s.members.len() as u64,
                bundles: s.bundles.len() as u64,
                services: s.services.len() as u64,
                endpoints: s.endpoint_count() as u64,
                ..Default::default()
            };
            (s.backup_bytes(), info)
        })
        .await
        .map_err(replica_status)?;
    info.applied_index = applied_index;
    info.size = data.len() as u64;
    info.sha256 = hex::encode(sha2::Sha256::digest(&data));
    info.replica_id = replica.id();
    info.created_at = crate::server::unix_now();
    info.version = env!("CARGO_PKG_VERSION").to_string();
    tracing::info!(
        applied_index,
        bytes = info.size,
        members = info.members,
        services = info.services,
        "streaming a snapshot of the federation"
    );
    let data = Bytes::from(data);
    let chunks = data.len().div_ceil(CHUNK_BYTES).max(1);
    let mut info = Some(info);
    let stream = futures::stream::iter((0..chunks).map(move |i| {
        let end = ((i + 1) * CHUNK_BYTES).min(data.len());
        Ok(pb::SnapshotChunk { info: info.take(), data: data.slice(i * CHUNK_BYTES..end).to_vec() })
    }));
    Ok(Box::pin(stream))
}

/// Stages a snapshot from the operator's stream through the log and commits it.
pub async fn restore(
    replica: &FederationReplica,
    mut stream: Streaming<pb::RestoreSnapshotRequest>,
) -> Result<pb::RestoreSnapshotResponse, Status> {
    let first = stream
        .message()
        .await?
        .ok_or_else(|| Status::invalid_argument("the restore stream is empty"))?;
    let (size, sha256, force) = (first.size, first.sha256.to_ascii_lowercase(), first.force);
    if size == 0 || size > MAX_RESTORE_BYTES {
        return Err(Status::invalid_argument(format!(
            "size: must be 1 to {MAX_RESTORE_BYTES} bytes, is {size}"
        )));
    }
    if sha256.len() != 64 || !sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(Status::invalid_argument("sha256: must be 64 hex digits"));
    }
    let id: u64 = rand::random();
    tracing::info!(
        restore_id = id,
        bytes = size,
        force,
        "restoring a snapshot: staging its bytes through the log"
    );
    // The commit checks the staged bytes against `sha256`.
    propose(replica, Command::RestoreBegin { id, size, sha256 }).await?;

    let mut offset = 0u64;
    let mut pending = first.data;
    loop {
        let last = match stream.message().await? {
            Some(message) => {
                pending.extend_from_slice(&message.data);
                false
            }
            None => true,
        };
        while pending.len() >= CHUNK_BYTES || (last && !pending.is_empty()) {
            let rest = pending.split_off(pending.len().min(CHUNK_BYTES));
            let data = std::mem::replace(&mut pending, rest);
            if offset + data.len() as u64 > size {
                return Err(Status::invalid_argument(format!(
                    "data: more than the announced size of {size} bytes"
                )));
            }
            let len = data.len() as u64;
            propose(replica, Command::RestoreChunk { id, offset, data }).await?;
            offset += len;
        }
        if last {
            break;
        }
    }
    if offset != size {
        return Err(Status::invalid_argument(format!(
            "data: the stream ended after {offset} of {size} bytes"
        )));
    }
    let now = crate::server::unix_now();
    let (index, applied) = propose(replica, Command::RestoreCommit { id, force, now }).await?;
    let Applied::Restored(summary) = applied else {
        return Err(Status::internal(format!("restore answered {applied:?}")));
    };
    tracing::info!(
        restore_id = id,
        index,
        members = summary.members,
        services = summary.services,
        revision = summary.revision,
        "snapshot restored"
    );
    Ok(pb::RestoreSnapshotResponse {
        applied_index: index,
        revision: summary.revision,
        members: summary.members,
        bundles: summary.bundles,
        services: summary.services,
        replaced_members: summary.replaced_members,
    })
}

/// Proposes `command` and returns its log index and result.
async fn propose(replica: &FederationReplica, command: Command) -> Result<(u64, Applied), Status> {
    let outcome = replica.write(command.encode()).await.map_err(replica_status)?;
    let applied =
        command_result(&outcome.response).map_err(command_status)?.map_err(command_status)?;
    Ok((outcome.index, applied))
}
