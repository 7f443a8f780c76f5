//! The status file: the agent's working state, handed (encoded) to a task of its own
//! that writes it atomically, fsync'd, on a blocking thread — so a slow disk never holds
//! up the session.

use std::time::Duration;

use tokio::sync::watch;

use super::Agent;
use crate::clock::unix_now_ms;

/// How often the status file is written.
pub(super) const STATUS_PERIOD: Duration = Duration::from_secs(1);

/// The status file's writer: a task writing the latest status handed to it (atomically,
/// fsync'd) on a blocking thread.
pub(super) struct StatusWriter {
    /// The latest status, encoded.
    sender: watch::Sender<Vec<u8>>,
    /// The task; it ends once `sender` is dropped and the last status written.
    task: tokio::task::JoinHandle<()>,
}

impl StatusWriter {
    /// Stops the writer once the last status handed to it is written (waiting at most two
    /// status periods): the last status reaches the disk before the process exits.
    pub(super) async fn finish(self) {
        let Self { sender, task } = self;
        drop(sender);
        if tokio::time::timeout(STATUS_PERIOD * 2, task).await.is_err() {
            tracing::debug!("the last status was not written in time");
        }
    }
}

/// Starts the writer of the status file at `path`.
pub(super) fn spawn_status_writer(path: std::path::PathBuf) -> StatusWriter {
    let (sender, mut latest) = watch::channel(Vec::new());
    let task = tokio::spawn(async move {
        while latest.changed().await.is_ok() {
            let bytes = latest.borrow_and_update().clone();
            let path = path.clone();
            let written = tokio::task::spawn_blocking(move || {
                crate::agent::store::write_atomic(&path, &bytes, 0o644)
            })
            .await;
            match written {
                Ok(Ok(())) => {}
                Ok(Err(error)) => tracing::debug!(%error, "cannot write the status file"),
                Err(error) => tracing::debug!(%error, "the status writer stopped"),
            }
        }
    });
    StatusWriter { sender, task }
}

impl Agent {
    /// Hands the status to its writer (which writes it on a blocking thread).
    pub(super) fn write_status(&mut self) {
        self.mark_stalled_sinks();
        self.metrics.mirror(&self.status);
        self.status.written_at_ms = unix_now_ms();
        match serde_json::to_vec_pretty(&self.status) {
            Ok(bytes) => {
                self.status_writer.sender.send_replace(bytes);
            }
            Err(error) => tracing::debug!(%error, "cannot encode the status"),
        }
    }
}
