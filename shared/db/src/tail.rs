//! Following the log as it commits: the low-latency companion of a Kafka consumer.
//!
//! A [`LogTail`] is woken by the outbox's `NOTIFY hcp_outbox` (sent at the commit of every
//! transaction that enqueued events) and reads the events of chosen types recorded since its
//! last read. It is **best effort** by design: global positions are assigned at insert, not at
//! commit, so a transaction that commits after a later-numbered one may be passed over, and
//! notifications are lost while the listener reconnects. A tail therefore never replaces the
//! consumer of the same events; it only lets a service act on an event a broker hop earlier,
//! and the consumer, idempotent by stream sequence, absorbs what the tail already applied and
//! applies what it missed.
//!
//! Only events that are still the last of their stream are returned: an event that others
//! followed before the tail read it is left to the consumer, which applies the stream in order.

use std::time::Duration;

use sqlx::postgres::PgListener;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::store::{EventRow, RecordedEvent, EVENT_COLUMNS};
use crate::{EventStore, StoreError};

/// The channel the outbox trigger notifies at commit.
pub const OUTBOX_CHANNEL: &str = "hcp_outbox";

/// Follows the log for events of some types (see the module docs).
#[derive(Debug)]
pub struct LogTail {
    store: EventStore,
    types: Vec<String>,
    after: i64,
    limit: i64,
    listener: PgListener,
}

impl LogTail {
    /// Starts listening, then takes the log's current head as its start: what committed before
    /// is the consumer's to apply. `types` are event types (`workload.submitted`); at most
    /// `limit` events are read at a time.
    pub async fn start(pool: PgPool, types: &[&str], limit: i64) -> Result<Self, StoreError> {
        let mut listener = PgListener::connect_with(&pool).await?;
        listener.listen(OUTBOX_CHANNEL).await?;
        let store = EventStore::new(pool);
        let after = store.head().await?;
        Ok(Self {
            store,
            types: types.iter().map(|t| (*t).to_owned()).collect(),
            after,
            limit: limit.max(1),
            listener,
        })
    }

    /// The position read up to.
    pub fn position(&self) -> i64 {
        self.after
    }

    /// Waits for a commit (or `idle`, or cancellation: then `None`), then returns the events of
    /// the tail's types recorded since the last read that are still their stream's last, in
    /// log order (possibly none). Notifications that piled up meanwhile are taken together.
    pub async fn next(
        &mut self,
        idle: Duration,
        token: &CancellationToken,
    ) -> Result<Option<Vec<RecordedEvent>>, StoreError> {
        tokio::select! {
            // Cancellation first: a notification already buffered must not win the race.
            biased;
            _ = token.cancelled() => return Ok(None),
            n = self.listener.recv() => { n?; }
            _ = tokio::time::sleep(idle) => {}
        }
        while self.listener.next_buffered().is_some() {}
        self.read().await.map(Some)
    }

    /// Reads what was recorded since the last read (see [`LogTail::next`]) without waiting:
    /// one statement when it finds something (this is on the path of every event the tail
    /// serves), and a look at the log's head when it finds nothing, so that events of other
    /// types are not scanned again.
    pub async fn read(&mut self) -> Result<Vec<RecordedEvent>, StoreError> {
        let rows: Vec<EventRow> = sqlx::query_as(&format!(
            "SELECT {EVENT_COLUMNS} FROM events e \
             JOIN streams s ON s.stream_id = e.stream_id AND s.version = e.stream_sequence \
             WHERE e.global_position > $1 AND e.event_type = ANY($2) \
             ORDER BY e.global_position LIMIT $3"
        ))
        .bind(self.after)
        .bind(&self.types)
        .bind(self.limit)
        .fetch_all(self.store.pool())
        .await?;
        match rows.last() {
            Some(last) => self.after = last.global_position,
            None => self.after = self.after.max(self.store.head().await?),
        }
        rows.into_iter().map(EventRow::into_recorded).collect()
    }
}
