//! `federator snapshot`: back up the federation's state, check a backup, restore it.

use std::io::{Seek as _, Write as _};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context as _, bail};
use federator_proto::admin as pb;
use futures::StreamExt as _;
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;
use sha2::Digest as _;

use super::client::{Connection, ConnectionArgs, status_error};
use super::output::{self, OutputFormat, print};
use crate::snapshot_file::{self, SnapshotHeader};

/// Bytes per message of a restore stream.
const CHUNK_BYTES: usize = 1 << 20;

/// Back up the whole federation state to a file, check a file, or restore one.
#[derive(Debug, clap::Subcommand)]
pub enum SnapshotCommand {
    /// Save the federation's state to FILE, read at a linearizable point.
    ///
    /// The file holds members, trust bundles, join tokens (hashed), exported services,
    /// leases and the audit trail — everything but the replica group itself. It is
    /// written to a temporary file beside FILE, checked against the size and SHA-256 the
    /// replica sent, synced, and only then renamed to FILE.
    ///
    ///   federator snapshot save /backup/federation-$(date +%F).snap
    Save {
        /// Where to write the snapshot.
        file: PathBuf,
        /// Read whatever the replica has applied, without confirming with the leader
        /// (works without a quorum; may miss the newest writes).
        #[arg(long)]
        stale: bool,
    },
    /// Check a snapshot file (header, size, checksum, that the state decodes) and show
    /// what it holds. Needs no replica.
    Status {
        /// The snapshot file.
        file: PathBuf,
    },
    /// Restore FILE into the federation: members, bundles, tokens, services, leases and
    /// the audit trail are replaced by the file's.
    ///
    /// Disaster recovery: start new replicas, form a group (`federator raft init`), then
    /// restore into it. The new group keeps its own replicas; watch revisions continue
    /// above the saved ones, so agents that reconnect resynchronise from a full snapshot
    /// and never see a revision go back. Members' leases get a full TTL from the new
    /// leader: agents that keep them alive stay ready, the others expire.
    ///
    /// The file is checked before anything is sent. Its bytes go through the log in 1 MiB
    /// entries and replace the state in one command, on every replica at the same index.
    /// A federation that already has members, services or join tokens is not overwritten
    /// unless --force is given.
    ///
    ///   federator raft init --member 1=192.0.2.1:7001 --member 2=... --member 3=...
    ///   federator snapshot restore /backup/federation-2026-12-01.snap
    Restore {
        /// The snapshot file.
        file: PathBuf,
        /// Replace the members, services and tokens the federation already holds.
        #[arg(long)]
        force: bool,
    },
}

/// What `save` and `status` print for a file.
#[derive(Debug, Serialize)]
struct FileReport<'a> {
    file: String,
    #[serde(flatten)]
    header: &'a SnapshotHeader,
}

/// What `restore` prints.
#[derive(Debug, Serialize)]
struct RestoreReport {
    file: String,
    applied_index: u64,
    revision: u64,
    members: u64,
    bundles: u64,
    services: u64,
    replaced_members: u64,
}

/// Runs a `snapshot` subcommand.
pub async fn run(
    command: SnapshotCommand,
    args: &ConnectionArgs,
    out: OutputFormat,
) -> anyhow::Result<ExitCode> {
    match command {
        SnapshotCommand::Save { file, stale } => {
            let connection = Connection::new(args)?;
            let header = save(&connection, &file, stale).await?;
            print_file(out, &file, &header, "saved")?;
        }
        SnapshotCommand::Status { file } => {
            let snapshot = snapshot_file::read_path(&file)
                .with_context(|| format!("snapshot file {}", file.display()))?;
            print_file(out, &file, &snapshot.header, "checked")?;
        }
        SnapshotCommand::Restore { file, force } => {
            let connection = Connection::new(args)?;
            let response = restore(&connection, &file, force).await?;
            let report = RestoreReport {
                file: file.display().to_string(),
                applied_index: response.applied_index,
                revision: response.revision,
                members: response.members,
                bundles: response.bundles,
                services: response.services,
                replaced_members: response.replaced_members,
            };
            print(out, &report, |r| {
                output::print_line(format_args!(
                    "restored {}: {} members, {} bundles, {} services at log index {}; \
                     watchers continue from revision {} (they resynchronise)",
                    r.file, r.members, r.bundles, r.services, r.applied_index, r.revision
                ));
                if r.replaced_members > 0 {
                    println!("replaced {} members the federation held before", r.replaced_members);
                }
            })?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn print_file(
    out: OutputFormat,
    file: &Path,
    header: &SnapshotHeader,
    verb: &str,
) -> anyhow::Result<()> {
    let report = FileReport { file: file.display().to_string(), header };
    print(out, &report, |r| {
        let h = r.header;
        output::print_line(format_args!(
            "{verb} {}: {} members, {} bundles, {} services, {} endpoints",
            r.file, h.members, h.bundles, h.services, h.endpoints
        ));
        output::print_line(format_args!(
            "  state of log index {} (revision {}) from replica {}, federator {}, saved at {}",
            h.applied_index,
            h.revision,
            h.replica_id,
            h.version,
            crate::clock::rfc3339(h.created_at)
        ));
        output::print_line(format_args!("  {} bytes, sha256 {}", h.size, h.sha256));
    })
}

/// A byte progress bar on stderr (hidden when stderr is not a terminal).
fn progress(total: u64, what: &str) -> ProgressBar {
    let bar = ProgressBar::new(total);
    bar.set_style(
        ProgressStyle::with_template("{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    bar.set_message(what.to_string());
    bar
}

/// Streams the state from a replica into `file`, checked and synced before the rename.
async fn save(connection: &Connection, file: &Path, stale: bool) -> anyhow::Result<SnapshotHeader> {
    let consistency =
        if stale { pb::Consistency::Stale } else { pb::Consistency::Linearizable } as i32;
    let mut client = connection.any_admin().await?;
    let mut stream = client
        .save_snapshot(pb::SaveSnapshotRequest { consistency })
        .await
        .map_err(status_error)?
        .into_inner();
    let first = stream
        .message()
        .await
        .map_err(status_error)?
        .context("the replica sent an empty snapshot stream")?;
    let info =
        first.info.context("the replica's snapshot stream does not start with its header")?;
    // The replica sends the SHA-256 in the stream's last message (it hashes while it
    // streams); the file's header gets a placeholder of the same length until then.
    let announced = (!info.sha256.is_empty()).then_some(info.sha256);
    let mut header = SnapshotHeader {
        applied_index: info.applied_index,
        revision: info.revision,
        size: info.size,
        sha256: announced.clone().unwrap_or_else(|| "0".repeat(64)),
        members: info.members,
        bundles: info.bundles,
        services: info.services,
        endpoints: info.endpoints,
        replica_id: info.replica_id,
        created_at: info.created_at,
        version: info.version,
    };
    header.validate().context("the replica's snapshot header")?;

    let dir = match file.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    let mut temp = tempfile::Builder::new()
        .prefix(".federator-snapshot")
        .tempfile_in(dir)
        .with_context(|| format!("creating a temporary file in {}", dir.display()))?;
    let mut out = std::io::BufWriter::new(temp.as_file_mut());
    snapshot_file::write_header(&mut out, &header)?;
    let bar = progress(header.size, "saving");
    let sha256 = receive_data(
        first.data,
        first.sha256,
        announced,
        header.size,
        &mut stream,
        &mut out,
        |n| {
            bar.set_position(n);
        },
    )
    .await
    .with_context(|| format!("saving {}", file.display()))?;
    bar.finish_and_clear();
    out.flush()?;
    drop(out);
    if header.sha256 != sha256 {
        // 64 hex digits (it equals the hash computed here), as long as the placeholder:
        // the data stays where it is.
        header.sha256 = sha256;
        let file = temp.as_file_mut();
        file.seek(std::io::SeekFrom::Start(0))?;
        snapshot_file::write_header(file, &header)?;
    }
    temp.as_file().sync_all()?;
    temp.persist(file).with_context(|| format!("renaming the snapshot to {}", file.display()))?;
    if let Ok(dir) = std::fs::File::open(dir) {
        // The rename itself is durable once the directory is synced.
        let _ = dir.sync_all();
    }
    Ok(header)
}

/// Copies a snapshot stream's data (`first`, then the rest of `stream`) into `out` and
/// checks it against its size and SHA-256: the one the first message `announced`, or the
/// one a message carries (the replica's last, which hashes while it streams). Returns
/// that SHA-256, lowercase.
async fn receive_data<S>(
    first: bytes::Bytes,
    first_sha256: String,
    announced: Option<String>,
    size: u64,
    stream: &mut S,
    out: &mut impl std::io::Write,
    progress: impl Fn(u64),
) -> anyhow::Result<String>
where
    S: futures::Stream<Item = Result<pb::SnapshotChunk, tonic::Status>> + Unpin,
{
    let mut hasher = sha2::Sha256::new();
    let mut written = 0u64;
    let mut chunk = first;
    let mut trailer = first_sha256;
    loop {
        written += chunk.len() as u64;
        if written > size {
            bail!("the replica sent more than the {size} bytes it announced");
        }
        hasher.update(&chunk);
        out.write_all(&chunk).context("writing the state data")?;
        progress(written);
        match stream.next().await.transpose().map_err(status_error)? {
            Some(next) => {
                chunk = next.data;
                if !next.sha256.is_empty() {
                    trailer = next.sha256;
                }
            }
            None => break,
        }
    }
    if written != size {
        bail!("the snapshot stream ended after {written} of {size} bytes");
    }
    let Some(sha256) = announced.or((!trailer.is_empty()).then_some(trailer)) else {
        bail!("the replica's snapshot stream ended without the SHA-256 of its data");
    };
    let sha256 = sha256.to_ascii_lowercase();
    if hex::encode(hasher.finalize()) != sha256 {
        bail!("the received state does not match the SHA-256 the replica announced");
    }
    Ok(sha256)
}

/// Checks `file` and streams it to the leader, which stages and commits it. Whether
/// the state decodes is checked while the bytes stream: the stream ends (and the leader
/// commits) only once it did; if it does not, the stream is cancelled and nothing
/// commits.
async fn restore(
    connection: &Connection,
    file: &Path,
    force: bool,
) -> anyhow::Result<pb::RestoreSnapshotResponse> {
    let (header, data) = snapshot_file::read_data_path(file)
        .with_context(|| format!("snapshot file {}", file.display()))?;
    output::eprint_line(format_args!(
        "restoring {}: {} members, {} bundles, {} services, {} bytes (log index {} of the saved group)",
        file.display(),
        header.members,
        header.bundles,
        header.services,
        header.size,
        header.applied_index
    ));
    let data = bytes::Bytes::from(data);
    let decoded = {
        let data = data.clone();
        tokio::task::spawn_blocking(move || snapshot_file::decode_state(&data).map(drop))
    };
    let (decoded_tx, decoded_rx) = tokio::sync::oneshot::channel::<()>();
    let bar = progress(header.size, "restoring");
    let chunks = data.len().div_ceil(CHUNK_BYTES);
    let messages = {
        let bar = bar.clone();
        let sha256 = header.sha256.clone();
        let size = header.size;
        let message = move |i: usize| {
            let end = ((i + 1) * CHUNK_BYTES).min(data.len());
            bar.set_position(end as u64);
            let first = i == 0;
            pb::RestoreSnapshotRequest {
                size: if first { size } else { 0 },
                sha256: if first { sha256.clone() } else { String::new() },
                force: first && force,
                data: data.slice(i * CHUNK_BYTES..end).to_vec(),
            }
        };
        // The last message waits for the state to have decoded; the stream is cancelled
        // before it otherwise.
        futures::stream::iter(0..chunks - 1).map(message.clone()).chain(
            futures::stream::once(async move { (decoded_rx.await.is_ok(), message(chunks - 1)) })
                .filter_map(|(decoded, last)| async move { decoded.then_some(last) }),
        )
    };
    let mut client = connection.leader().await?;
    let call = client.restore_snapshot(messages);
    tokio::pin!(call);
    let response = tokio::select! {
        response = &mut call => response,
        decoded = decoded => {
            match decoded {
                Ok(Ok(())) => {
                    let _ = decoded_tx.send(());
                    call.await
                }
                // Dropping the call cancels the stream: the leader stages no commit.
                Ok(Err(error)) => {
                    bar.finish_and_clear();
                    return Err(error).with_context(|| format!("snapshot file {}", file.display()));
                }
                Err(panicked) => bail!("checking the snapshot's state failed: {panicked}"),
            }
        }
    };
    bar.finish_and_clear();
    match response {
        Ok(response) => Ok(response.into_inner()),
        Err(status) if status.code() == tonic::Code::AlreadyExists => {
            bail!(
                "{}\nhint: pass --force to replace it with the file's state",
                output::escape_control(status.message())
            )
        }
        Err(status) => Err(status_error(status)),
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use federator_proto::admin as pb;
    use sha2::Digest as _;

    use super::receive_data;

    fn chunk(data: &[u8], sha256: &str) -> Result<pb::SnapshotChunk, tonic::Status> {
        Ok(pb::SnapshotChunk {
            info: None,
            data: Bytes::copy_from_slice(data),
            sha256: sha256.to_string(),
        })
    }

    /// Runs `receive_data` on `first` then `rest`, announcing `announced` up front.
    async fn receive(
        first: &[u8],
        rest: Vec<Result<pb::SnapshotChunk, tonic::Status>>,
        announced: Option<String>,
        size: u64,
    ) -> (anyhow::Result<String>, Vec<u8>) {
        let mut out = Vec::new();
        let mut stream = futures::stream::iter(rest);
        let result = receive_data(
            Bytes::copy_from_slice(first),
            String::new(),
            announced,
            size,
            &mut stream,
            &mut out,
            |_| {},
        )
        .await;
        (result, out)
    }

    fn hex_sha(data: &[u8]) -> String {
        hex::encode(sha2::Sha256::digest(data))
    }

    #[tokio::test]
    async fn the_hash_may_come_last_or_first() {
        let sha = hex_sha(b"abcdef");
        let (got, out) =
            receive(b"ab", vec![chunk(b"cd", ""), chunk(b"ef", &sha.to_uppercase())], None, 6)
                .await;
        assert_eq!(got.expect("a trailing SHA-256 is taken"), sha);
        assert_eq!(out, b"abcdef");
        let (got, _) = receive(b"abc", vec![chunk(b"def", "")], Some(sha.clone()), 6).await;
        assert_eq!(got.expect("an announced SHA-256 is taken"), sha);
    }

    #[tokio::test]
    async fn a_wrong_missing_or_short_stream_is_refused() {
        let sha = hex_sha(b"abcdef");
        let wrong = hex_sha(b"abcdeF");
        let cases = [
            (vec![chunk(b"def", &wrong)], None, 6, "does not match the SHA-256"),
            (vec![chunk(b"def", "")], None, 6, "ended without the SHA-256"),
            (vec![chunk(b"de", &sha)], None, 6, "ended after 5 of 6 bytes"),
            (vec![chunk(b"defg", &sha)], None, 6, "more than the 6 bytes"),
            (vec![Err(tonic::Status::unavailable("gone"))], Some(sha.clone()), 6, "gone"),
        ];
        for (rest, announced, size, expected) in cases {
            let (got, _) = receive(b"abc", rest, announced, size).await;
            let error = format!("{:#}", got.expect_err(expected));
            assert!(error.contains(expected), "{error:?} should say {expected:?}");
        }
    }
}
