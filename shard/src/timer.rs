//! The drivers' clock: how a driver waits for a core's `poll_timeout()` and stamps wall time. The
//! cores never read a clock; these are the only two ways shard code does.

use std::time::Instant;

/// Sleeps until a core's next deadline (`None`: no timer, forever). Uses tokio's clock, so a paused
/// test runtime reaches the core too.
pub(crate) async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(tokio::time::Instant::from_std(d)).await,
        None => std::future::pending().await,
    }
}

/// Wall-clock milliseconds since the Unix epoch (event timestamps, member start times).
pub(crate) fn wall_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
