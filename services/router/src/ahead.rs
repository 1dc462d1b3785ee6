//! Submissions taken from the log ahead of the consumer (`router.follow_log`).
//!
//! The router's projection learns of a submission from Kafka, one broker hop after the
//! gateway committed it (on the development broker most of a lone submission's latency). This
//! task follows the event store instead ([`hcp_db::LogTail`], woken by the outbox's NOTIFY at
//! the gateway's commit) and folds each new submission into the router's tables through the
//! projection's own fold, then wakes the placement loop.
//!
//! It adds no second source of truth. The fold inserts a submission's row only if none exists
//! (`ON CONFLICT DO NOTHING`, so the projection and this task cannot both classify it) and
//! records the stream's version in it, which is the projection's idempotency mark: when the
//! same event arrives from Kafka it is skipped. The tail is best effort (a submission it passes
//! over reaches the router through Kafka as before) and only returns submissions that are still
//! their stream's last event, so it can never apply a stream out of order or bring back a
//! workload that has moved on.

use std::time::Duration;

use hcp_db::sqlx::PgPool;
use hcp_db::{ApplyError, LogTail, Projection, StoreError};
use hcp_events::{Envelope, EventType};
use tokio_util::sync::CancellationToken;

use crate::metrics as m;
use crate::projection::RouterProjection;

/// Submissions read at a time.
const PAGE: i64 = 1_000;
/// With no notification, look anyway this often (a notification lost while reconnecting).
const IDLE: Duration = Duration::from_secs(1);
/// Reads are at least this far apart: under load the outbox notifies at nearly every commit
/// of every service, and a read (and a fold transaction) per commit cost more than they
/// saved; notifications that arrive meanwhile are taken together. An idle system's next
/// submission comes long after, so it is read at once.
const GAP: Duration = Duration::from_millis(5);
/// After a failure (the database away), wait this long before starting again.
const BACKOFF: Duration = Duration::from_secs(1);

/// The task (see the module docs): the router's projection, applied from the log.
#[derive(Debug, Clone)]
pub struct Ahead {
    pool: PgPool,
    projection: RouterProjection,
}

impl Ahead {
    /// Folds with `projection` (its tables, its appends, its wake-up of the placement loop)
    /// in transactions on `pool`.
    pub fn new(pool: PgPool, projection: RouterProjection) -> Self {
        Self { pool, projection }
    }

    /// Follows the log until `token` is cancelled, starting again after a failure.
    pub async fn run(self, token: CancellationToken) -> anyhow::Result<()> {
        while !token.is_cancelled() {
            let outcome = match self.start().await {
                Ok(tail) => self.follow(tail, &token).await,
                Err(e) => Err(e),
            };
            if let Err(e) = outcome {
                tracing::warn!(error = %e, "lost the log's tail; the consumer carries on alone meanwhile");
                tokio::select! {
                    _ = token.cancelled() => {}
                    _ = tokio::time::sleep(BACKOFF) => {}
                }
            }
        }
        Ok(())
    }

    /// A tail listening from the log's current head: every submission committed after this
    /// returns is followed.
    pub async fn start(&self) -> Result<LogTail, StoreError> {
        let tail = LogTail::start(
            self.pool.clone(),
            &[EventType::WorkloadSubmitted.as_str()],
            PAGE,
        )
        .await?;
        tracing::info!(from = tail.position(), "following the log for submissions");
        Ok(tail)
    }

    /// Folds what `tail` returns until `token` is cancelled (`Ok`) or the tail fails.
    pub async fn follow(
        &self,
        mut tail: LogTail,
        token: &CancellationToken,
    ) -> Result<(), StoreError> {
        let mut last_read: Option<tokio::time::Instant> = None;
        loop {
            if let Some(at) = last_read {
                tokio::select! {
                    _ = token.cancelled() => break,
                    _ = tokio::time::sleep_until(at + GAP) => {}
                }
            }
            let Some(events) = tail.next(IDLE, token).await? else {
                break;
            };
            last_read = Some(tokio::time::Instant::now());
            if events.is_empty() {
                continue;
            }
            let envelopes: Vec<&Envelope> = events.iter().map(|r| &r.envelope).collect();
            match self.fold(&envelopes).await {
                Ok(()) => {
                    metrics::counter!(m::TAKEN_AHEAD).increment(envelopes.len() as u64);
                    self.projection.committed();
                }
                // Left to the consumer, which applies (or dead-letters) them in order.
                Err(e) => tracing::debug!(error = %e, "submissions left to the consumer"),
            }
        }
        Ok(())
    }

    async fn fold(&self, events: &[&Envelope]) -> Result<(), ApplyError> {
        let mut tx = self.pool.begin().await?;
        self.projection.fold(&mut tx, events).await?;
        tx.commit().await?;
        Ok(())
    }
}
