//! Leader calls: opaque requests the application wants served by the current leader's
//! in-memory logic, without going through the log (lease keep-alives, for instance).
//!
//! The application installs a [`LeaderHandler`] with
//! [`Replica::set_leader_handler`](crate::Replica::set_leader_handler) and makes calls
//! with [`Replica::call_leader`](crate::Replica::call_leader): on the leader the handler
//! runs locally, on any other replica the call is forwarded over the transport (the
//! `LeaderCall` RPC) to the leader it knows. Requests and responses are opaque bytes;
//! nothing here knows what they mean.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};

/// The application's logic for leader calls. Runs on the replica that believes itself
/// the leader, in a task of its own: a panic fails the one call (it does not take down
/// the transport connection or the caller's task), and a caller that gives up does not
/// cancel it.
///
/// A call may be handled more than once (a forwarded call is retried after a failure or
/// a timeout whose outcome is unknown), and by a deposed leader that has not noticed yet,
/// so handlers should be idempotent and must not assume exclusive leadership.
pub trait LeaderHandler: Send + Sync + 'static {
    /// Handles `request` on the leader; the response is opaque to the raft crate.
    fn handle(&self, request: Vec<u8>) -> Pin<Box<dyn Future<Output = Vec<u8>> + Send + 'static>>;
}

/// Where a replica's [`LeaderHandler`] is installed, once. Cheap to clone: clones share the
/// slot, so the [`Replica`](crate::Replica) and the
/// [`RaftTransportService`](crate::network::RaftTransportService) it serves see the same
/// handler, whichever is made first.
#[derive(Clone, Default)]
pub struct LeaderHandlerSlot {
    /// The handler, once installed.
    handler: Arc<OnceLock<Arc<dyn LeaderHandler>>>,
}

/// A [`LeaderHandler`] was already installed in the slot; the new one was dropped.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("a leader handler is already installed")]
pub struct AlreadyInstalled;

// === impl LeaderHandlerSlot ===

impl LeaderHandlerSlot {
    /// An empty slot.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Installs `handler`, unless one is installed already.
    ///
    /// # Errors
    /// A handler was installed before; it stays, and `handler` is dropped.
    pub fn install(&self, handler: Arc<dyn LeaderHandler>) -> Result<(), AlreadyInstalled> {
        self.handler.set(handler).map_err(|_| AlreadyInstalled)
    }

    /// The installed handler, if any.
    #[must_use]
    pub fn get(&self) -> Option<Arc<dyn LeaderHandler>> {
        self.handler.get().cloned()
    }

    /// Whether a handler is installed.
    #[must_use]
    pub fn is_installed(&self) -> bool {
        self.handler.get().is_some()
    }
}

impl fmt::Debug for LeaderHandlerSlot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LeaderHandlerSlot").field("installed", &self.is_installed()).finish()
    }
}

/// Why a leader handler gave no response to a call.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HandlerError {
    /// The handler panicked.
    #[error("the leader handler panicked")]
    Panicked,
    /// Its task was cancelled before it finished (the runtime is shutting down).
    #[error("the leader handler did not finish: {source}")]
    Unfinished {
        /// tokio's error.
        source: tokio::task::JoinError,
    },
}

/// Runs `handler` on `request` in a task of its own.
///
/// # Errors
/// The handler panicked, or the runtime shut down under it.
pub(crate) async fn run(
    handler: &Arc<dyn LeaderHandler>,
    request: Vec<u8>,
) -> Result<Vec<u8>, HandlerError> {
    // A per-call task awaited right here, not owned by the replica: it only isolates a
    // panicking handler. Deliberately not aborted when the caller gives up (a dropped
    // RPC): the application's handler then still runs to its end.
    tokio::spawn(handler.handle(request)).await.map_err(|source| {
        if source.is_panic() { HandlerError::Panicked } else { HandlerError::Unfinished { source } }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Answers the request reversed.
    struct Reverse;

    impl LeaderHandler for Reverse {
        fn handle(
            &self,
            mut request: Vec<u8>,
        ) -> Pin<Box<dyn Future<Output = Vec<u8>> + Send + 'static>> {
            Box::pin(async move {
                request.reverse();
                request
            })
        }
    }

    /// Panics.
    struct Panics;

    impl LeaderHandler for Panics {
        fn handle(&self, _: Vec<u8>) -> Pin<Box<dyn Future<Output = Vec<u8>> + Send + 'static>> {
            Box::pin(async { panic!("handler bug") })
        }
    }

    #[tokio::test]
    async fn slot_is_shared_by_clones_and_installed_once() {
        let slot = LeaderHandlerSlot::new();
        let clone = slot.clone();
        assert!(!clone.is_installed());
        slot.install(Arc::new(Reverse)).expect("first install");
        assert!(clone.is_installed());
        assert_eq!(clone.install(Arc::new(Panics)), Err(AlreadyInstalled));
        let handler = clone.get().expect("installed");
        assert_eq!(run(&handler, b"abc".to_vec()).await.expect("answered"), b"cba".to_vec());
        assert_eq!(format!("{slot:?}"), "LeaderHandlerSlot { installed: true }");
    }

    #[tokio::test]
    async fn a_panicking_handler_fails_the_call_only() {
        let handler: Arc<dyn LeaderHandler> = Arc::new(Panics);
        let error = run(&handler, vec![]).await.expect_err("a panic is an error");
        assert!(matches!(error, HandlerError::Panicked), "{error:?}");
        assert_eq!(error.to_string(), "the leader handler panicked");
    }
}
