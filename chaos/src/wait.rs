//! Waiting for a condition: the one poll-until helper of the harness, the benchmarks and
//! the end-to-end tests. A check is polled at a fixed interval until it yields a value or
//! the time is up; the error then names what was waited for.

use std::future::Future;
use std::time::{Duration, Instant};

use anyhow::bail;

/// Polls `check` every 100 ms until it returns `Some`, for at most `timeout`.
///
/// # Errors
/// The condition did not hold in time; the message names `what`.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, check: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    eventually_every(what, timeout, Duration::from_millis(100), check).await
}

/// Polls `check` every `interval` until it returns `Some`, for at most `timeout`.
///
/// # Errors
/// The condition did not hold in time; the message names `what`.
pub async fn eventually_every<T, F, Fut>(
    what: &str,
    timeout: Duration,
    interval: Duration,
    mut check: F,
) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return Ok(value);
        }
        if Instant::now() > deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(interval).await;
    }
}
