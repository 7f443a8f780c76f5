//! The agent's own tasks (servers, sinks, sources and what merges them): every one is
//! kept here, and stopped and joined when the agent stops — none is left detached.

use std::future::Future;
use std::time::Duration;

use tokio::task::JoinHandle;

/// Tasks the agent owns. Dropped (an agent that failed to start), it aborts them.
#[derive(Default)]
pub(crate) struct Tasks(Vec<(&'static str, JoinHandle<()>)>);

impl Tasks {
    /// Runs `task` as one of the agent's tasks, named `what` in logs.
    pub(crate) fn spawn(
        &mut self,
        what: &'static str,
        task: impl Future<Output = ()> + Send + 'static,
    ) {
        self.own(what, tokio::spawn(task));
    }

    /// Takes a task started elsewhere.
    pub(crate) fn own(&mut self, what: &'static str, task: JoinHandle<()>) {
        self.0.retain(|(_, task)| !task.is_finished());
        self.0.push((what, task));
    }

    /// How many tasks still run.
    #[cfg(test)]
    pub(crate) fn running(&self) -> usize {
        self.0.iter().filter(|(_, task)| !task.is_finished()).count()
    }

    /// Waits for every task to end — each was told to stop, or its channel closed — at
    /// most `timeout`; then aborts those still running and waits for them. Returns the
    /// names of the tasks it had to abort.
    pub(crate) async fn join(mut self, timeout: Duration) -> Vec<&'static str> {
        let tasks = std::mem::take(&mut self.0);
        let deadline = tokio::time::Instant::now() + timeout;
        let mut aborted = Vec::new();
        for (what, mut task) in tasks {
            if tokio::time::timeout_at(deadline, &mut task).await.is_err() {
                task.abort();
                let _ = task.await;
                aborted.push(what);
            }
        }
        aborted
    }
}

impl Drop for Tasks {
    fn drop(&mut self) {
        for (_, task) in &self.0 {
            task.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn join_waits_for_tasks_that_end_and_aborts_the_rest() {
        let (stop_tx, mut stop_rx) = tokio::sync::watch::channel(false);
        let mut tasks = Tasks::default();
        tasks.spawn("stops", async move {
            let _ = stop_rx.wait_for(|s| *s).await;
        });
        let (hung_tx, hung_rx) = tokio::sync::oneshot::channel::<()>();
        let hung = std::sync::Arc::new(());
        let held = std::sync::Arc::clone(&hung);
        tasks.spawn("hangs", async move {
            let _held = held;
            let _ = hung_rx.await;
        });
        assert_eq!(tasks.running(), 2);
        let _ = stop_tx.send(true);
        let aborted = tasks.join(Duration::from_secs(5)).await;
        assert_eq!(aborted, vec!["hangs"]);
        // The aborted task is gone (what it held was dropped), not detached.
        assert_eq!(std::sync::Arc::strong_count(&hung), 1);
        drop(hung_tx);
    }

    #[tokio::test]
    async fn dropped_tasks_are_aborted() {
        let (_never, pending) = tokio::sync::oneshot::channel::<()>();
        let held = std::sync::Arc::new(());
        let in_task = std::sync::Arc::clone(&held);
        let mut tasks = Tasks::default();
        let (started_tx, started) = tokio::sync::oneshot::channel();
        tasks.spawn("pending", async move {
            let _held = in_task;
            let _ = started_tx.send(());
            let _ = pending.await;
        });
        started.await.expect("the task started");
        drop(tasks);
        // Wait (bounded) for the aborted task to be dropped.
        for _ in 0..100 {
            if std::sync::Arc::strong_count(&held) == 1 {
                return;
            }
            tokio::task::yield_now().await;
        }
        panic!("a dropped Tasks left its task running");
    }
}
