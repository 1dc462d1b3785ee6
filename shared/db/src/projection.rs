//! Projections: read models built by applying events in order. The same [`Projection`] is
//! driven live by the Kafka consumer and offline by [`rebuild`], which replays the log.

use std::collections::HashMap;
use std::future::Future;

use hcp_events::Envelope;
use sqlx::{PgConnection, PgPool};

use crate::error::StoreError;
use crate::positions::{claim_stream_sequence, Claim};
use crate::store::read_all_on;

/// Why an event could not be applied.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// The event can never be applied (violates the projection's rules): dead-letter it and
    /// move on.
    #[error("poison event: {0}")]
    Poison(String),
    /// Try again later (the whole batch is rolled back and retried).
    #[error("transient failure: {0}")]
    Transient(String),
    /// The database failed (treated as transient).
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
}

/// A read model maintained from events.
pub trait Projection: Send + Sync {
    /// Stable name; the consumer identity in the positions tables.
    fn name(&self) -> &str;

    /// Applies one event inside the caller's transaction. Events this projection does not care
    /// about must be accepted and ignored.
    fn apply<'a>(
        &'a self,
        tx: &'a mut PgConnection,
        event: &'a Envelope,
    ) -> impl Future<Output = Result<(), ApplyError>> + Send + 'a;

    /// Applies a whole batch of fresh events (each already claimed, in log order per stream)
    /// inside the caller's transaction. The consumer calls it on its fast path, so that a
    /// projection can write set-based (one statement per batch, not one per event). The
    /// default applies them one by one.
    ///
    /// A [`ApplyError::Poison`] makes the consumer redo the batch event by event through
    /// [`Projection::apply`], with a savepoint each, so only the poison event is
    /// dead-lettered: the two must agree on what each event does.
    fn apply_batch<'a>(
        &'a self,
        tx: &'a mut PgConnection,
        events: &'a [&'a Envelope],
    ) -> impl Future<Output = Result<(), ApplyError>> + Send + 'a {
        async move {
            for e in events {
                self.apply(tx, e).await?;
            }
            Ok(())
        }
    }

    /// The last applied sequence of those `streams` whose rows this projection keeps it in
    /// (its own mark: a row version). The consumer then skips events at or below it without
    /// writing a claim to `consumer_stream_positions`, which it still does for every stream
    /// left out (one absent from the map, e.g. a stream's first event, which creates the
    /// row). Runs inside the batch's transaction, after the partition locks, so no other
    /// instance of the projection applies the same streams meanwhile.
    ///
    /// A projection that returns a mark promises: every event of the stream it applies moves
    /// the mark to that event's sequence in the same transaction, or changes nothing (so
    /// applying it again is harmless); and a row it deletes may see its stream's later events
    /// again (the claims hold at least the stream's first event, so a deleted row is never
    /// recreated by a redelivered first event). The default keeps no marks.
    fn marks<'a>(
        &'a self,
        _tx: &'a mut PgConnection,
        _streams: &'a [&'a str],
    ) -> impl Future<Output = Result<HashMap<String, i64>, sqlx::Error>> + Send + 'a {
        async { Ok(HashMap::new()) }
    }

    /// Whether [`Projection::apply_batch`] is overridden: the consumer then hands it the whole
    /// batch under one span instead of one span per event.
    fn batches(&self) -> bool {
        false
    }

    /// Called by the consumer after the transaction that applied a batch committed: the place
    /// to wake whoever reads what the projection wrote (a notification sent from `apply` may
    /// arrive before the commit and find nothing new).
    fn committed(&self) {}

    /// Deletes everything this projection wrote (before a rebuild).
    fn reset<'a>(
        &'a self,
        tx: &'a mut PgConnection,
    ) -> impl Future<Output = Result<(), sqlx::Error>> + Send + 'a;
}

/// [`Projection::marks`] for a projection that keeps one row per workload with the version of
/// its stream: `query` selects `(workload id, version)` for the workload ids in `$1`
/// (`uuid[]`). Streams that are not workload streams, and workloads without a row, are left
/// out (the consumer claims them).
pub async fn workload_row_marks(
    tx: &mut PgConnection,
    query: &'static str,
    streams: &[&str],
) -> Result<HashMap<String, i64>, sqlx::Error> {
    let ids: Vec<uuid::Uuid> = streams
        .iter()
        .filter_map(|s| hcp_events::payload::workload_of_stream(s))
        .collect();
    if ids.is_empty() {
        return Ok(HashMap::new());
    }
    let rows: Vec<(uuid::Uuid, i64)> = sqlx::query_as(query).bind(&ids).fetch_all(tx).await?;
    Ok(rows
        .into_iter()
        .map(|(id, version)| (hcp_events::workload_stream(id), version))
        .collect())
}

/// What happened to one event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// Applied now.
    Applied,
    /// Already applied earlier; skipped.
    Duplicate,
}

/// Applies `event` unless this projection already applied its stream sequence. Runs inside the
/// caller's transaction, so the claim and the effects commit together.
pub async fn apply_once<P: Projection>(
    tx: &mut PgConnection,
    projection: &P,
    event: &Envelope,
) -> Result<Applied, ApplyError> {
    match claim_stream_sequence(tx, projection.name(), &event.stream_id, event.sequence).await? {
        Claim::Duplicate { .. } => Ok(Applied::Duplicate),
        Claim::Apply { previous } => {
            // A consumer sees only the events of a stream that are on its topics, and streams
            // outside the log (worker reports, market feeds) number by time, so a gap is normal
            // there; it is logged for debugging, not warned about.
            if event.sequence != previous + 1 {
                tracing::debug!(
                    projection = projection.name(),
                    stream_id = %event.stream_id,
                    sequence = event.sequence,
                    previous,
                    "gap in stream sequence"
                );
            }
            projection.apply(tx, event).await?;
            Ok(Applied::Applied)
        }
    }
}

/// Errors of a rebuild.
#[derive(Debug, thiserror::Error)]
pub enum RebuildError {
    /// Reading the log failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Applying failed.
    #[error("applying position {position} failed: {source}")]
    Apply {
        /// Global position of the event.
        position: i64,
        /// Why.
        source: ApplyError,
    },
}

impl From<sqlx::Error> for RebuildError {
    fn from(e: sqlx::Error) -> Self {
        RebuildError::Store(StoreError::Database(e))
    }
}

/// Rebuilds `projection` from the event log in one transaction: resets it, forgets its stream
/// positions and replays every event in global order. Readers see the old state until commit.
/// Returns the number of events applied.
#[tracing::instrument(skip_all, fields(projection = projection.name()), err)]
pub async fn rebuild<P: Projection>(pool: &PgPool, projection: &P) -> Result<u64, RebuildError> {
    let mut tx = pool.begin().await?;
    projection.reset(&mut tx).await?;
    sqlx::query("DELETE FROM consumer_stream_positions WHERE consumer = $1")
        .bind(projection.name())
        .execute(&mut *tx)
        .await?;
    let mut after = 0;
    let mut applied = 0;
    loop {
        let page = read_all_on(&mut tx, after, 1000).await?;
        let Some(last) = page.last() else { break };
        after = last.global_position;
        for e in page {
            // A savepoint per event, so a poison event leaves no partial writes behind.
            let mut sp = sqlx::Acquire::begin(&mut *tx).await?;
            let outcome = apply_once(&mut sp, projection, &e.envelope).await;
            if outcome.is_ok() {
                sp.commit().await?;
            } else {
                sp.rollback().await?;
            }
            match outcome {
                Ok(Applied::Applied) => applied += 1,
                Ok(Applied::Duplicate) => {}
                // A poison event was dead-lettered live; replay skips it the same way.
                Err(ApplyError::Poison(reason)) => {
                    tracing::warn!(position = e.global_position, %reason, "skipping poison event");
                }
                Err(source) => {
                    return Err(RebuildError::Apply {
                        position: e.global_position,
                        source,
                    })
                }
            }
        }
    }
    tx.commit().await?;
    Ok(applied)
}
