//! Sending a snapshot to a peer: one client stream of chunks, the first with the header,
//! the last with the SHA-256 of the data, and a stall timeout on every chunk.

use std::pin::pin;
use std::time::Duration;

use federator_proto::raft as pb;
use openraft::network::RPCTypes;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Request;

use super::{Failure, PeerClient};
use crate::convert::{FromProto, IntoProto};
use crate::network::MAX_MESSAGE_BYTES;
use crate::types::typ::SnapshotResponse;
use crate::types::{Snapshot, Vote};

impl PeerClient {
    /// Sends the snapshot as one client stream and waits for the peer's answer.
    pub(super) async fn stream_snapshot(
        &self,
        vote: Vote,
        snapshot: Snapshot,
        stall_timeout: Duration,
    ) -> Result<SnapshotResponse, Failure> {
        let mut client = self.grpc()?;
        let Snapshot { meta, snapshot: data } = snapshot;
        let data = data.into_inner();
        // A chunk must fit in one gRPC message, with room for the header.
        let chunk_bytes = self.options.snapshot_chunk_bytes.clamp(1, MAX_MESSAGE_BYTES / 2);
        tracing::debug!(
            peer = self.target,
            bytes = data.len(),
            snapshot_id = %meta.snapshot_id,
            "streaming snapshot"
        );

        // One chunk in the queue: memory stays at the snapshot plus a couple of chunks.
        let (tx, rx) = tokio::sync::mpsc::channel::<pb::SnapshotChunk>(1);
        let producer = async move {
            for chunk in snapshot_chunks(vote.into_proto(), meta.into_proto(), &data, chunk_bytes) {
                send_chunk(&tx, chunk, stall_timeout).await?;
            }
            Ok(())
        };

        let mut call = pin!(client.install_snapshot(Request::new(ReceiverStream::new(rx))));
        let mut producer = pin!(producer);
        let answered = tokio::select! {
            // The peer may answer before the end, e.g. to refuse a stale vote at once.
            answered = &mut call => Some(answered),
            sent = &mut producer => {
                match sent {
                    Ok(()) => None,
                    // The stream ended early or stalled: the call tells why, if it can.
                    Err(ChunkStop::ReceiverGone) => None,
                    Err(ChunkStop::Stalled) => return Err(Failure::Timeout(stall_timeout)),
                }
            }
        };
        let answered = match answered {
            Some(answered) => answered,
            None => match tokio::time::timeout(stall_timeout, &mut call).await {
                Ok(answered) => answered,
                Err(_) => return Err(Failure::Timeout(stall_timeout)),
            },
        };
        let response =
            answered.map_err(|status| self.failure(RPCTypes::InstallSnapshot, &status))?;
        SnapshotResponse::from_proto(response.into_inner())
            .map_err(|e| self.malformed(RPCTypes::InstallSnapshot, &e))
    }
}

/// The chunks of a snapshot stream of `data`, `chunk_bytes` of data each: the first
/// carries `vote` and `meta`, the last the SHA-256 of all the data, which the receiver
/// checks before it installs anything. The data is hashed a chunk at a time as the chunks
/// are made (about a millisecond per MiB), so the stream starts without a pass over the
/// whole snapshot first. An empty snapshot is still one chunk: the header.
pub(crate) fn snapshot_chunks(
    vote: pb::Vote,
    meta: pb::SnapshotMeta,
    data: &[u8],
    chunk_bytes: usize,
) -> impl Iterator<Item = pb::SnapshotChunk> + Send + '_ {
    use sha2::Digest as _;
    let chunk_bytes = chunk_bytes.max(1);
    let count = data.len().div_ceil(chunk_bytes).max(1);
    let mut header = Some((vote, meta));
    let mut hasher = sha2::Sha256::new();
    (0..count).map(move |i| {
        let piece = data.get(i * chunk_bytes..((i + 1) * chunk_bytes).min(data.len()));
        let piece = piece.unwrap_or_default();
        hasher.update(piece);
        let (vote, meta) = header.take().unzip();
        let data_sha256 = if i + 1 == count {
            std::mem::take(&mut hasher).finalize().to_vec()
        } else {
            Vec::new()
        };
        pb::SnapshotChunk { vote, meta, data: piece.to_vec(), data_sha256 }
    })
}

/// Why the snapshot producer stopped early.
enum ChunkStop {
    /// The call ended (answered or failed) and dropped the stream.
    ReceiverGone,
    /// The peer took no chunk within the stall timeout.
    Stalled,
}

/// Queues one snapshot chunk, giving up if the stream does not move for `stall_timeout`.
async fn send_chunk(
    tx: &tokio::sync::mpsc::Sender<pb::SnapshotChunk>,
    chunk: pb::SnapshotChunk,
    stall_timeout: Duration,
) -> Result<(), ChunkStop> {
    match tokio::time::timeout(stall_timeout, tx.send(chunk)).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(_)) => Err(ChunkStop::ReceiverGone),
        Err(_) => Err(ChunkStop::Stalled),
    }
}
