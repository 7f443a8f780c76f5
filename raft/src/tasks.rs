//! The tokio tasks a replica spawns beside openraft's own: each is owned (its
//! [`JoinHandle`] kept, or in a [`tokio::task::JoinSet`]), stopped and joined when the
//! replica shuts down, and aborted when the last handle to its owner is dropped. [`Live`]
//! counts the ones still running, so a test can check that shutting down leaves none.
//!
//! Not counted: openraft's own tasks (joined by `Raft::shutdown`), and the short
//! per-request tasks awaited in place where they are spawned (`spawn_blocking` of storage
//! work, a leader call's handler).

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use parking_lot::Mutex;
use tokio::task::JoinHandle;

/// Counts the tasks of one owner that have started and not ended (ended: finished, or
/// aborted and dropped). Clones share the count.
#[derive(Clone, Debug, Default)]
pub(crate) struct Live(Arc<AtomicUsize>);

impl Live {
    /// `task`, counted as live from now until it ends or is dropped.
    pub(crate) fn track<F: Future>(&self, task: F) -> impl Future<Output = F::Output> + use<F> {
        self.0.fetch_add(1, Ordering::SeqCst);
        let guard = LiveGuard(Arc::clone(&self.0));
        async move {
            let _guard = guard;
            task.await
        }
    }

    /// Tasks live now.
    pub(crate) fn count(&self) -> usize {
        self.0.load(Ordering::SeqCst)
    }
}

/// Ends one live task when dropped.
struct LiveGuard(Arc<AtomicUsize>);

impl Drop for LiveGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Handles of long-running tasks that need no goodbye (loops with nothing to flush):
/// [`Tasks::stop`] aborts and joins them, and dropping the set aborts them.
#[derive(Debug, Default)]
pub(crate) struct Tasks {
    handles: Mutex<Vec<JoinHandle<()>>>,
    live: Live,
}

impl Tasks {
    /// A set counting its tasks in `live`.
    pub(crate) fn new(live: Live) -> Self {
        Self { handles: Mutex::new(Vec::new()), live }
    }

    /// Spawns `task` on the current runtime and keeps its handle.
    pub(crate) fn spawn(&self, task: impl Future<Output = ()> + Send + 'static) {
        let handle = tokio::spawn(self.live.track(task));
        self.handles.lock().push(handle);
    }

    /// Aborts every task and waits until each has ended.
    pub(crate) async fn stop(&self) {
        let handles = std::mem::take(&mut *self.handles.lock());
        for handle in &handles {
            handle.abort();
        }
        for handle in handles {
            // Cancelled, or finished before the abort (a panic was already reported).
            let _ = handle.await;
        }
    }
}

impl Drop for Tasks {
    fn drop(&mut self) {
        for handle in self.handles.get_mut().drain(..) {
            handle.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn stop_ends_every_task_and_dropping_aborts_them() {
        let live = Live::default();
        let tasks = Tasks::new(live.clone());
        tasks.spawn(std::future::pending());
        tasks.spawn(async { tokio::time::sleep(Duration::from_secs(3600)).await });
        assert_eq!(live.count(), 2);
        tasks.stop().await;
        assert_eq!(live.count(), 0);

        let dropped = Tasks::new(live.clone());
        dropped.spawn(std::future::pending());
        assert_eq!(live.count(), 1);
        drop(dropped);
        for _ in 0..100 {
            if live.count() == 0 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("a dropped set's task still runs");
    }
}
