//! Bounded waits: every wait in the harness ends, and a failed one says what it waited for.

use std::future::Future;
use std::time::Duration;

use tokio::time::{Instant, sleep};

/// Polls `check` every `interval` until it returns `Ok(Some(value))` or `timeout` passes.
///
/// On time-out the error names `what` and carries the last error `check` returned, so a
/// failing test says why without a rerun.
pub async fn until<T, F, Fut>(
    what: &str,
    timeout: Duration,
    interval: Duration,
    mut check: F,
) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<Option<T>>>,
{
    let deadline = Instant::now() + timeout;
    let mut last_error = None;
    loop {
        match check().await {
            Ok(Some(value)) => return Ok(value),
            Ok(None) => {}
            Err(error) => last_error = Some(error),
        }
        if Instant::now() >= deadline {
            let detail = last_error
                .map(|e| format!(": last error: {e:#}"))
                .unwrap_or_default();
            anyhow::bail!("timed out after {timeout:?} waiting for {what}{detail}");
        }
        sleep(interval).await;
    }
}
