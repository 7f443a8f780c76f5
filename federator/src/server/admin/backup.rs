//! Backup and restore of the whole federation state (`federator snapshot save|restore`).
//!
//! A save reads the state at a linearizable point (by default) and streams its canonical
//! encoding with its size in front and its SHA-256, computed while it streams, at the
//! end. A restore stages the bytes through the log in chunks and commits them in one
//! command (see [`crate::state`]'s restore), so every replica swaps at the same index; a
//! restore that fails half way (a leader change, a cancelled upload) commits nothing and
//! drops what it staged.

use std::pin::Pin;

use bytes::Bytes;
use federator_proto::admin as pb;
use federator_raft::Consistency;
use futures::Stream;
use sha2::Digest as _;
use tonic::{Status, Streaming};

use crate::server::FederationReplica;
use crate::server::grpc_status::{command_status, replica_status};
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
    info.replica_id = replica.id();
    info.created_at = crate::clock::unix_now();
    info.version = env!("CARGO_PKG_VERSION").to_string();
    tracing::info!(
        applied_index,
        bytes = info.size,
        members = info.members,
        services = info.services,
        "streaming a snapshot of the federation"
    );
    let data = Bytes::from(data);
    // The first chunk leaves at once: the SHA-256 is computed on the blocking pool while
    // the data streams, and the last chunk carries it.
    let hash = tokio::task::spawn_blocking({
        let data = data.clone();
        move || hex::encode(sha2::Sha256::digest(&data))
    });
    let chunks = data.len().div_ceil(CHUNK_BYTES).max(1);
    let stream =
        futures::stream::unfold((0, Some(info), Some(hash)), move |(i, mut info, mut hash)| {
            let data = data.clone();
            async move {
                if i >= chunks {
                    return None;
                }
                let end = ((i + 1) * CHUNK_BYTES).min(data.len());
                let mut chunk = pb::SnapshotChunk {
                    info: info.take(),
                    data: data.slice(i * CHUNK_BYTES..end),
                    sha256: String::new(),
                };
                if i + 1 == chunks
                    && let Some(hash) = hash.take()
                {
                    match hash.await {
                        Ok(sha256) => chunk.sha256 = sha256,
                        Err(e) => {
                            let status = Status::internal(format!("hashing the snapshot: {e}"));
                            return Some((Err(status), (chunks, None, None)));
                        }
                    }
                }
                Some((Ok(chunk), (i + 1, info, hash)))
            }
        });
    Ok(Box::pin(stream))
}

/// Stages a snapshot from the operator's stream through the log and commits it.
///
/// It runs as a task of its own: when the operator's call goes away (the CLI cancels a
/// file that does not decode, or is interrupted), the request is dropped but the task
/// sees the stream fail and drops what it staged.
pub async fn restore(
    replica: &FederationReplica,
    stream: Streaming<pb::RestoreSnapshotRequest>,
) -> Result<pb::RestoreSnapshotResponse, Status> {
    let replica = replica.clone();
    // Per call, and bounded by its stream: it ends when the operator's stream ends or
    // fails (the connection closed), so it needs no owner beyond this call.
    tokio::spawn(async move { restore_task(&replica, stream).await })
        .await
        .map_err(|e| Status::internal(format!("the restore task failed: {e}")))?
}

async fn restore_task(
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
    let began = std::time::Instant::now();
    propose(replica, Command::RestoreBegin { id, size, sha256 }).await?;

    if let Err(status) = stage(replica, id, size, first.data, &mut stream).await {
        // Whatever was staged would sit in every replica's memory until the next restore.
        let reason = status.message().to_string();
        let now = crate::clock::unix_now();
        if let Err(error) = propose(replica, Command::RestoreAbort { id, reason, now }).await {
            tracing::warn!(restore_id = id, %error, "could not drop a failed restore's staged bytes");
        }
        tracing::info!(restore_id = id, error = %status.message(), "restore failed before its commit");
        return Err(status);
    }
    let staged = began.elapsed();
    let now = crate::clock::unix_now();
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
        staging_ms = staged.as_millis(),
        commit_ms = (began.elapsed() - staged).as_millis(),
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

/// Stages the bytes of restore `id` from `first` and the rest of `stream`, in chunks of
/// [`CHUNK_BYTES`], until the stream ends with exactly `size` bytes staged.
async fn stage(
    replica: &FederationReplica,
    id: u64,
    size: u64,
    first: Vec<u8>,
    stream: &mut Streaming<pb::RestoreSnapshotRequest>,
) -> Result<(), Status> {
    let mut chunks = ChunkPipeline::new(replica);
    let mut offset = 0u64;
    let mut pending = first;
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
            chunks.propose(Command::RestoreChunk { id, offset, data }).await?;
            offset += len;
        }
        if last {
            break;
        }
    }
    chunks.finish().await?;
    if offset != size {
        return Err(Status::invalid_argument(format!(
            "data: the stream ended after {offset} of {size} bytes"
        )));
    }
    Ok(())
}

/// Staged chunks in the log at once while the leader stages them: one is made durable
/// and replicated while the next is appended behind it.
const CHUNKS_IN_FLIGHT: usize = 4;

/// Proposes a restore's chunks in order. On the leader several are in flight at once
/// ([`CHUNKS_IN_FLIGHT`], queued on this replica only, so the log holds them in the order
/// proposed); on a follower each is forwarded and awaited in turn. If leadership moves
/// while chunks are in flight, they fail and so does the restore (the operator runs it
/// again): a chunk that did commit out of order is refused by its offset, and the commit
/// checks the size and SHA-256 of what was staged, so a partial restore never commits.
struct ChunkPipeline<'a> {
    replica: &'a FederationReplica,
    leads: bool,
    in_flight: std::collections::VecDeque<federator_raft::QueuedWrite>,
}

impl<'a> ChunkPipeline<'a> {
    fn new(replica: &'a FederationReplica) -> Self {
        let leads = replica.metrics().borrow().current_leader == Some(replica.id());
        Self { replica, leads, in_flight: std::collections::VecDeque::new() }
    }

    async fn propose(&mut self, command: Command) -> Result<(), Status> {
        if !self.leads {
            return propose(self.replica, command).await.map(drop);
        }
        if self.in_flight.len() >= CHUNKS_IN_FLIGHT {
            self.settle_oldest().await?;
        }
        let queued = self.replica.queue_here(command.encode()).await.map_err(replica_status)?;
        self.in_flight.push_back(queued);
        Ok(())
    }

    async fn settle_oldest(&mut self) -> Result<(), Status> {
        let Some(queued) = self.in_flight.pop_front() else { return Ok(()) };
        applied(queued.outcome().await).map(drop)
    }

    /// Waits for every chunk still in flight.
    async fn finish(&mut self) -> Result<(), Status> {
        while !self.in_flight.is_empty() {
            self.settle_oldest().await?;
        }
        Ok(())
    }
}

/// Proposes `command` and returns its log index and result.
async fn propose(replica: &FederationReplica, command: Command) -> Result<(u64, Applied), Status> {
    applied(replica.write(command.encode()).await)
}

/// A committed write's log index and what the state machine did, or why it failed.
fn applied(
    outcome: Result<federator_raft::WriteOutcome, federator_raft::ReplicaError>,
) -> Result<(u64, Applied), Status> {
    let outcome = outcome.map_err(replica_status)?;
    let applied =
        command_result(&outcome.response).map_err(command_status)?.map_err(command_status)?;
    Ok((outcome.index, applied))
}
