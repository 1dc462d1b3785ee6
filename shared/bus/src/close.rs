//! Closing a Kafka consumer without letting librdkafka hang the caller.
//!
//! Dropping an rdkafka consumer closes it: a final rebalance revokes its partitions, and the
//! `rd_kafka_assign` in that callback waits for the consumer-group thread with no timeout. Now
//! and then that answer never comes (confluentinc/librdkafka#4884, fede1024/rust-rdkafka#509;
//! seen here once in a test's drained shutdown). [`close_consumer`] drops the consumer on its own
//! thread and waits a bounded time, so a stuck close costs one parked thread (ended by the
//! process exit) instead of a shutdown that never finishes.

use std::time::Duration;

/// How long a consumer's close may take before it is left behind.
pub const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// Drops `consumer` (anything owning an rdkafka consumer) on a thread of its own and waits up
/// to `timeout` for the close to finish. `true` when it finished.
pub async fn close_consumer<T: Send + 'static>(consumer: T, name: &str, timeout: Duration) -> bool {
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let spawned = std::thread::Builder::new()
        .name("kafka-close".into())
        .spawn(move || {
            drop(consumer);
            let _ = tx.send(());
        });
    if let Err(e) = spawned {
        // The closure, and the consumer with it, was dropped by the failed spawn.
        tracing::warn!(consumer = name, error = %e, "no thread to close the consumer on");
        return true;
    }
    match tokio::time::timeout(timeout, rx).await {
        Ok(_) => true,
        Err(_) => {
            tracing::warn!(
                consumer = name,
                timeout_s = timeout.as_secs_f64(),
                "closing the Kafka consumer hung in librdkafka; leaving it behind"
            );
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Blocks its dropping thread until the test lets it go.
    struct StuckOnDrop(std::sync::mpsc::Receiver<()>);

    impl Drop for StuckOnDrop {
        fn drop(&mut self) {
            let _ = self.0.recv();
        }
    }

    #[tokio::test]
    async fn a_close_that_hangs_is_left_behind_after_the_timeout_and_a_quick_one_is_waited_for() {
        let (release, rx) = std::sync::mpsc::channel();
        let started = std::time::Instant::now();
        assert!(!close_consumer(StuckOnDrop(rx), "stuck", Duration::from_millis(100)).await);
        assert!(started.elapsed() < Duration::from_secs(5));
        let _ = release.send(());

        let (release, rx) = std::sync::mpsc::channel();
        release.send(()).unwrap_or_default();
        assert!(close_consumer(StuckOnDrop(rx), "quick", Duration::from_secs(5)).await);
    }
}
