//! The append-only event store. Appends take the caller's transaction so that events, outbox
//! rows and any other writes of the same command commit or roll back together.

use std::time::Instant;

use hcp_events::{Envelope, RawEnvelope};
use serde_json::value::RawValue;
use sqlx::{PgConnection, PgPool, Postgres, Transaction};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::error::StoreError;
use crate::metrics_names as m;

/// What the caller believes about the stream before appending.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExpectedVersion {
    /// Append whatever the stream holds (still serialised with other writers).
    Any,
    /// The stream must not exist yet.
    NoStream,
    /// The stream's last sequence must be exactly this.
    Exact(i64),
}

impl std::fmt::Display for ExpectedVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ExpectedVersion::Any => f.write_str("any"),
            ExpectedVersion::NoStream => f.write_str("no stream"),
            ExpectedVersion::Exact(v) => write!(f, "{v}"),
        }
    }
}

/// Where appended events are published, and the trace they continue.
#[derive(Debug, Clone, Default)]
pub struct Publish {
    /// Kafka topic; `None` keeps the events out of the outbox (internal streams).
    pub topic: Option<String>,
    /// W3C `traceparent` of the appending span.
    pub traceparent: Option<String>,
    /// W3C `tracestate`.
    pub tracestate: Option<String>,
}

impl Publish {
    /// Publish to `topic` with no trace context.
    pub fn to(topic: impl Into<String>) -> Self {
        Self {
            topic: Some(topic.into()),
            ..Self::default()
        }
    }

    /// Adds trace context.
    pub fn with_trace(mut self, traceparent: Option<String>, tracestate: Option<String>) -> Self {
        self.traceparent = traceparent;
        self.tracestate = tracestate;
        self
    }
}

/// One stream's share of [`EventStore::append_batch`].
#[derive(Debug, Clone, Copy)]
pub struct StreamAppend<'a> {
    /// The stream.
    pub stream_id: &'a str,
    /// What the caller believes about it.
    pub expected: ExpectedVersion,
    /// Its new events, in order.
    pub events: &'a [Envelope],
    /// Where they are published.
    pub publish: &'a Publish,
}

/// The column arrays of a multi-stream event insert.
#[derive(Default)]
struct EventColumns<'a> {
    ids: Vec<Uuid>,
    streams: Vec<&'a str>,
    seqs: Vec<i64>,
    types: Vec<String>,
    versions: Vec<i16>,
    occurred: Vec<OffsetDateTime>,
    correlations: Vec<Uuid>,
    causations: Vec<Option<Uuid>>,
    producers: Vec<&'a str>,
    payloads: Vec<sqlx::types::Json<Box<RawValue>>>,
    traceparents: Vec<Option<&'a str>>,
    tracestates: Vec<Option<&'a str>>,
}

impl<'a> EventColumns<'a> {
    fn with_capacity(n: usize) -> Self {
        Self {
            ids: Vec::with_capacity(n),
            streams: Vec::with_capacity(n),
            seqs: Vec::with_capacity(n),
            types: Vec::with_capacity(n),
            versions: Vec::with_capacity(n),
            occurred: Vec::with_capacity(n),
            correlations: Vec::with_capacity(n),
            causations: Vec::with_capacity(n),
            producers: Vec::with_capacity(n),
            payloads: Vec::with_capacity(n),
            traceparents: Vec::with_capacity(n),
            tracestates: Vec::with_capacity(n),
        }
    }

    /// Binds the twelve arrays as `$1`-`$12`, in the order of the insert statements.
    fn bind<'q, O>(
        &'q self,
        q: sqlx::query::QueryAs<'q, Postgres, O, sqlx::postgres::PgArguments>,
    ) -> sqlx::query::QueryAs<'q, Postgres, O, sqlx::postgres::PgArguments>
    where
        'a: 'q,
    {
        q.bind(&self.ids)
            .bind(&self.streams)
            .bind(&self.seqs)
            .bind(&self.types)
            .bind(&self.versions)
            .bind(&self.occurred)
            .bind(&self.correlations)
            .bind(&self.causations)
            .bind(&self.producers)
            .bind(&self.payloads)
            .bind(&self.traceparents)
            .bind(&self.tracestates)
    }

    fn push(
        &mut self,
        e: &'a Envelope,
        stream: &'a str,
        seq: i64,
        publish: &'a Publish,
    ) -> Result<(), StoreError> {
        let raw = e
            .to_raw()
            .map_err(|err| StoreError::InvalidAppend(err.to_string()))?;
        self.ids.push(e.event_id);
        self.streams.push(stream);
        self.seqs.push(seq);
        self.types.push(raw.event_type);
        self.versions
            .push(i16::try_from(e.schema_version).unwrap_or(i16::MAX));
        self.occurred.push(e.occurred_at);
        self.correlations.push(e.correlation_id);
        self.causations.push(e.causation_id);
        self.producers.push(&e.producer);
        self.payloads.push(sqlx::types::Json(raw.payload));
        self.traceparents.push(publish.traceparent.as_deref());
        self.tracestates.push(publish.tracestate.as_deref());
        Ok(())
    }
}

/// The result of an append.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppendOutcome {
    /// The stream's version after the append.
    pub new_version: i64,
    /// Global positions assigned, in order.
    pub positions: Vec<i64>,
}

/// An event as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct RecordedEvent {
    /// Position in the global log.
    pub global_position: i64,
    /// When the store recorded it.
    pub recorded_at: OffsetDateTime,
    /// The event.
    pub envelope: Envelope,
    /// Trace context captured at append.
    pub traceparent: Option<String>,
    /// Trace state captured at append.
    pub tracestate: Option<String>,
}

#[derive(sqlx::FromRow)]
pub(crate) struct EventRow {
    pub global_position: i64,
    pub event_id: Uuid,
    pub stream_id: String,
    pub stream_sequence: i64,
    pub event_type: String,
    pub schema_version: i16,
    pub occurred_at: OffsetDateTime,
    pub recorded_at: OffsetDateTime,
    pub correlation_id: Uuid,
    pub causation_id: Option<Uuid>,
    pub producer: String,
    pub payload: sqlx::types::Json<Box<RawValue>>,
    pub traceparent: Option<String>,
    pub tracestate: Option<String>,
}

pub(crate) const EVENT_COLUMNS: &str = "e.global_position, e.event_id, e.stream_id, \
    e.stream_sequence, e.event_type, e.schema_version, e.occurred_at, e.recorded_at, \
    e.correlation_id, e.causation_id, e.producer, e.payload, e.traceparent, e.tracestate";

impl EventRow {
    pub(crate) fn into_recorded(self) -> Result<RecordedEvent, StoreError> {
        let corrupt = |reason: String| StoreError::Corrupt {
            position: self.global_position,
            reason,
        };
        let version = u16::try_from(self.schema_version)
            .map_err(|_| corrupt(format!("schema version {}", self.schema_version)))?;
        let raw = RawEnvelope {
            event_id: self.event_id,
            event_type: self.event_type.clone(),
            schema_version: version,
            stream_id: self.stream_id.clone(),
            sequence: self.stream_sequence,
            occurred_at: self.occurred_at,
            correlation_id: self.correlation_id,
            causation_id: self.causation_id,
            producer: self.producer.clone(),
            payload: self.payload.0.clone(),
        };
        let envelope = Envelope::from_raw(raw).map_err(|e| corrupt(e.to_string()))?;
        Ok(RecordedEvent {
            global_position: self.global_position,
            recorded_at: self.recorded_at,
            envelope,
            traceparent: self.traceparent,
            tracestate: self.tracestate,
        })
    }
}

/// The event store over a pool.
#[derive(Debug, Clone)]
pub struct EventStore {
    pool: PgPool,
}

impl EventStore {
    /// A store over `pool`.
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
    }

    /// The pool (for callers that open their own transactions).
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Begins a transaction.
    pub async fn begin(&self) -> Result<Transaction<'static, Postgres>, StoreError> {
        Ok(self.pool.begin().await?)
    }

    /// Appends `events` to one stream inside the caller's transaction, assigning sequences
    /// after the stream's current version, and enqueues them in the outbox when
    /// `publish.topic` is set. Concurrent appends to the same stream are serialised on the
    /// stream row; the loser gets [`StoreError::ConcurrencyConflict`].
    #[tracing::instrument(skip_all, fields(stream_id = %stream_id, count = events.len()), err)]
    pub async fn append(
        tx: &mut PgConnection,
        stream_id: &str,
        expected: ExpectedVersion,
        events: &[Envelope],
        publish: &Publish,
    ) -> Result<AppendOutcome, StoreError> {
        let started = Instant::now();
        if events.is_empty() {
            return Err(StoreError::InvalidAppend("nothing to append".into()));
        }
        if let Some(e) = events.iter().find(|e| e.stream_id != stream_id) {
            return Err(StoreError::InvalidAppend(format!(
                "event {} belongs to stream `{}`, not `{stream_id}`",
                e.event_id, e.stream_id
            )));
        }
        let count = i64::try_from(events.len())
            .map_err(|_| StoreError::InvalidAppend("too many events".into()))?;
        let mut cols = EventColumns::with_capacity(events.len());
        for (i, e) in (1_i64..).zip(events) {
            // The sequences are relative here; the statement adds the stream's version.
            cols.push(e, stream_id, i, publish)?;
        }
        let conflict = |actual: i64| {
            metrics::counter!(m::APPEND_CONFLICTS).increment(1);
            StoreError::ConcurrencyConflict {
                stream_id: stream_id.to_owned(),
                expected: expected.to_string(),
                actual,
            }
        };
        // One round trip in the common case: the stream row is moved (which locks it and
        // checks the version), the events and their outbox rows written, by one statement.
        // A stream that does not exist yet is created by the second form.
        let existing = match expected {
            ExpectedVersion::NoStream => None,
            ExpectedVersion::Any => Some(None),
            ExpectedVersion::Exact(v) => Some(Some(v)),
        };
        let mut outcome = None;
        if let Some(version) = existing {
            outcome = append_statement(tx, &APPEND_EXISTING, &cols, count, version, publish)
                .await
                .map_err(|e| translate_unique(e, stream_id, expected, 0))?;
        }
        let may_create = matches!(
            expected,
            ExpectedVersion::NoStream | ExpectedVersion::Any | ExpectedVersion::Exact(0)
        );
        if outcome.is_none() && may_create {
            outcome = append_statement(tx, &APPEND_NEW, &cols, count, None, publish)
                .await
                .map_err(|e| translate_unique(e, stream_id, expected, 0))?;
        }
        let Some((base, mut positions)) = outcome else {
            // Refused: read the version only to say what it was.
            let actual: Option<i64> =
                sqlx::query_scalar("SELECT version FROM streams WHERE stream_id = $1")
                    .bind(stream_id)
                    .fetch_optional(&mut *tx)
                    .await?;
            return Err(conflict(actual.unwrap_or(0)));
        };
        positions.sort_unstable();
        metrics::counter!(m::EVENTS_APPENDED).increment(events.len() as u64);
        metrics::histogram!(m::EVENT_APPEND_DURATION).record(started.elapsed().as_secs_f64());
        Ok(AppendOutcome {
            new_version: base + count,
            positions,
        })
    }

    /// Appends in a transaction of its own and commits.
    pub async fn append_and_commit(
        &self,
        stream_id: &str,
        expected: ExpectedVersion,
        events: &[Envelope],
        publish: &Publish,
    ) -> Result<AppendOutcome, StoreError> {
        let mut tx = self.pool.begin().await?;
        let out = Self::append(&mut tx, stream_id, expected, events, publish).await?;
        tx.commit().await?;
        Ok(out)
    }

    /// Appends to many streams in one round of set-based statements inside the caller's
    /// transaction: one `SELECT … FOR UPDATE` locks every existing stream row (in stream-id
    /// order, so two batch appenders cannot deadlock), one `UPDATE` and one `INSERT` move the
    /// versions, one `INSERT … FROM UNNEST` writes every event and one the outbox rows. Each
    /// append keeps its own [`ExpectedVersion`]; an append whose check fails is left out and
    /// reported as [`StoreError::ConcurrencyConflict`] in its slot, while the others go
    /// through. Any other error fails the whole batch (roll the transaction back).
    ///
    /// A stream may appear only once per batch (merge its events into one [`StreamAppend`]).
    /// A batch of one stream is [`EventStore::append`]'s one statement.
    #[tracing::instrument(skip_all, fields(streams = appends.len()), err)]
    pub async fn append_batch(
        tx: &mut PgConnection,
        appends: &[StreamAppend<'_>],
    ) -> Result<Vec<Result<AppendOutcome, StoreError>>, StoreError> {
        let started = Instant::now();
        let mut seen = std::collections::HashSet::with_capacity(appends.len());
        for a in appends {
            if a.events.is_empty() {
                return Err(StoreError::InvalidAppend(format!(
                    "nothing to append to `{}`",
                    a.stream_id
                )));
            }
            if !seen.insert(a.stream_id) {
                return Err(StoreError::InvalidAppend(format!(
                    "stream `{}` appears twice in one batch",
                    a.stream_id
                )));
            }
            if let Some(e) = a.events.iter().find(|e| e.stream_id != a.stream_id) {
                return Err(StoreError::InvalidAppend(format!(
                    "event {} belongs to stream `{}`, not `{}`",
                    e.event_id, e.stream_id, a.stream_id
                )));
            }
        }
        match appends {
            [] => return Ok(Vec::new()),
            // One stream: the one-statement append.
            [a] => {
                return match Self::append(tx, a.stream_id, a.expected, a.events, a.publish).await {
                    Ok(out) => Ok(vec![Ok(out)]),
                    Err(e @ StoreError::ConcurrencyConflict { .. }) => Ok(vec![Err(e)]),
                    Err(e) => Err(e),
                };
            }
            _ => {}
        }
        let mut ids: Vec<&str> = appends.iter().map(|a| a.stream_id).collect();
        ids.sort_unstable();
        let current: std::collections::HashMap<String, i64> = sqlx::query_as::<_, (String, i64)>(
            "SELECT stream_id, version FROM streams WHERE stream_id = ANY($1) \
             ORDER BY stream_id FOR UPDATE",
        )
        .bind(&ids)
        .fetch_all(&mut *tx)
        .await?
        .into_iter()
        .collect();

        let mut results: Vec<Option<Result<AppendOutcome, StoreError>>> =
            (0..appends.len()).map(|_| None).collect();
        let conflict = |a: &StreamAppend<'_>, actual: i64| {
            metrics::counter!(m::APPEND_CONFLICTS).increment(1);
            StoreError::ConcurrencyConflict {
                stream_id: a.stream_id.to_owned(),
                expected: a.expected.to_string(),
                actual,
            }
        };
        // (slot, version before) of every append whose check passed.
        let mut update: (Vec<&str>, Vec<i64>, Vec<usize>, Vec<i64>) = Default::default();
        let mut create: (Vec<&str>, Vec<i64>, Vec<usize>) = Default::default();
        for (slot, a) in appends.iter().enumerate() {
            let existing = current.get(a.stream_id).copied();
            let actual = existing.unwrap_or(0);
            let ok = match a.expected {
                ExpectedVersion::Any => true,
                ExpectedVersion::NoStream => existing.is_none(),
                ExpectedVersion::Exact(v) => v == actual,
            };
            if !ok {
                results[slot] = Some(Err(conflict(a, actual)));
                continue;
            }
            let new_version = actual + a.events.len() as i64;
            if existing.is_some() {
                update.0.push(a.stream_id);
                update.1.push(new_version);
                update.2.push(slot);
                update.3.push(actual);
            } else {
                create.0.push(a.stream_id);
                create.1.push(new_version);
                create.2.push(slot);
            }
        }
        // The rows are locked: every update lands.
        if !update.0.is_empty() {
            sqlx::query(
                "UPDATE streams s SET version = u.v, updated_at = clock_timestamp() \
                 FROM UNNEST($1::text[], $2::bigint[]) AS u(id, v) WHERE s.stream_id = u.id",
            )
            .bind(&update.0)
            .bind(&update.1)
            .execute(&mut *tx)
            .await?;
        }
        // A stream created concurrently by another writer is not returned: a conflict.
        let mut base: Vec<(usize, i64)> = update.2.iter().copied().zip(update.3).collect();
        if !create.0.is_empty() {
            let created: std::collections::HashSet<String> = sqlx::query_scalar(
                "INSERT INTO streams (stream_id, version) \
                 SELECT * FROM UNNEST($1::text[], $2::bigint[]) ON CONFLICT DO NOTHING \
                 RETURNING stream_id",
            )
            .bind(&create.0)
            .bind(&create.1)
            .fetch_all(&mut *tx)
            .await?
            .into_iter()
            .collect();
            for (id, slot) in create.0.iter().zip(&create.2) {
                if created.contains(*id) {
                    base.push((*slot, 0));
                } else {
                    results[*slot] = Some(Err(conflict(&appends[*slot], 0)));
                }
            }
        }
        base.sort_unstable();

        let total: usize = base.iter().map(|(s, _)| appends[*s].events.len()).sum();
        let mut cols = EventColumns::with_capacity(total);
        let mut topics: Vec<Option<&str>> = Vec::with_capacity(total);
        for (slot, actual) in &base {
            let a = &appends[*slot];
            for (i, e) in (1_i64..).zip(a.events) {
                cols.push(e, a.stream_id, actual + i, a.publish)?;
                topics.push(a.publish.topic.as_deref());
            }
        }
        let mut positions: std::collections::HashMap<Uuid, i64> = std::collections::HashMap::new();
        if total > 0 {
            let rows: Vec<(Uuid, i64)> = cols
                .bind(sqlx::query_as(
                    "INSERT INTO events (event_id, stream_id, stream_sequence, event_type, \
                     schema_version, occurred_at, correlation_id, causation_id, producer, payload, \
                     traceparent, tracestate) \
                 SELECT u.id, u.stream, u.seq, u.ty, u.ver, u.occ, u.corr, u.caus, u.prod, \
                        u.payload, u.tp, u.ts \
                 FROM UNNEST($1::uuid[], $2::text[], $3::bigint[], $4::text[], $5::smallint[], \
                             $6::timestamptz[], $7::uuid[], $8::uuid[], $9::text[], $10::jsonb[], \
                             $11::text[], $12::text[]) \
                      WITH ORDINALITY AS u(id, stream, seq, ty, ver, occ, corr, caus, prod, \
                                           payload, tp, ts, ord) \
                 ORDER BY u.ord \
                 RETURNING event_id, global_position",
                ))
                .fetch_all(&mut *tx)
                .await
                .map_err(|e| translate_unique(e, "(batch)", ExpectedVersion::Any, 0))?;
            positions = rows.into_iter().collect();
            let mut outbox: (Vec<i64>, Vec<&str>) = Default::default();
            for (id, topic) in cols.ids.iter().zip(&topics) {
                if let (Some(topic), Some(p)) = (topic, positions.get(id)) {
                    outbox.0.push(*p);
                    outbox.1.push(topic);
                }
            }
            if !outbox.0.is_empty() {
                sqlx::query(
                    "INSERT INTO outbox (global_position, topic) \
                     SELECT * FROM UNNEST($1::bigint[], $2::text[])",
                )
                .bind(&outbox.0)
                .bind(&outbox.1)
                .execute(&mut *tx)
                .await?;
            }
        }
        for (slot, actual) in base {
            let a = &appends[slot];
            let mut ps: Vec<i64> = a
                .events
                .iter()
                .filter_map(|e| positions.get(&e.event_id).copied())
                .collect();
            ps.sort_unstable();
            results[slot] = Some(Ok(AppendOutcome {
                new_version: actual + a.events.len() as i64,
                positions: ps,
            }));
        }
        metrics::counter!(m::EVENTS_APPENDED).increment(total as u64);
        metrics::histogram!(m::EVENT_APPEND_DURATION).record(started.elapsed().as_secs_f64());
        Ok(results
            .into_iter()
            .map(|r| r.unwrap_or_else(|| Err(StoreError::InvalidAppend("unanswered".into()))))
            .collect())
    }

    /// The stream's current version (0 when it does not exist).
    pub async fn stream_version(&self, stream_id: &str) -> Result<i64, StoreError> {
        let v: Option<i64> = sqlx::query_scalar("SELECT version FROM streams WHERE stream_id = $1")
            .bind(stream_id)
            .fetch_optional(&self.pool)
            .await?;
        Ok(v.unwrap_or(0))
    }

    /// Reads a whole stream in sequence order.
    pub async fn read_stream(&self, stream_id: &str) -> Result<Vec<RecordedEvent>, StoreError> {
        self.read_stream_as_of(stream_id, None).await
    }

    /// Reads a stream as the store knew it at `as_of` (recorded time), or now when `None`:
    /// point-in-time reads for audits and "what did we know then" questions.
    pub async fn read_stream_as_of(
        &self,
        stream_id: &str,
        as_of: Option<OffsetDateTime>,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        let rows: Vec<EventRow> = sqlx::query_as(&format!(
            "SELECT {EVENT_COLUMNS} FROM events e WHERE e.stream_id = $1 \
             AND ($2::timestamptz IS NULL OR e.recorded_at <= $2) ORDER BY e.stream_sequence"
        ))
        .bind(stream_id)
        .bind(as_of)
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter().map(EventRow::into_recorded).collect()
    }

    /// Reads the global log after `after_position`, at most `limit` events, in order.
    pub async fn read_all(
        &self,
        after_position: i64,
        limit: i64,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        read_all_on(&mut *self.pool.acquire().await?, after_position, limit).await
    }

    /// The highest global position recorded (0 when empty).
    pub async fn head(&self) -> Result<i64, StoreError> {
        let v: Option<i64> = sqlx::query_scalar("SELECT max(global_position) FROM events")
            .fetch_one(&self.pool)
            .await?;
        Ok(v.unwrap_or(0))
    }
}

/// Reads a whole stream in sequence order on a given connection, so that a decision taken
/// inside a transaction (a projection that appends) sees the stream as that transaction does.
pub async fn read_stream_on(
    conn: &mut PgConnection,
    stream_id: &str,
) -> Result<Vec<RecordedEvent>, StoreError> {
    let rows: Vec<EventRow> = sqlx::query_as(&format!(
        "SELECT {EVENT_COLUMNS} FROM events e WHERE e.stream_id = $1 ORDER BY e.stream_sequence"
    ))
    .bind(stream_id)
    .fetch_all(conn)
    .await?;
    rows.into_iter().map(EventRow::into_recorded).collect()
}

/// Reads many whole streams on a given connection, each in sequence order (one statement):
/// the set-based form of [`read_stream_on`].
pub async fn read_streams_on(
    conn: &mut PgConnection,
    stream_ids: &[String],
) -> Result<std::collections::HashMap<String, Vec<RecordedEvent>>, StoreError> {
    let mut out: std::collections::HashMap<String, Vec<RecordedEvent>> =
        std::collections::HashMap::with_capacity(stream_ids.len());
    if stream_ids.is_empty() {
        return Ok(out);
    }
    let rows: Vec<EventRow> = sqlx::query_as(&format!(
        "SELECT {EVENT_COLUMNS} FROM events e WHERE e.stream_id = ANY($1) \
         ORDER BY e.stream_id, e.stream_sequence"
    ))
    .bind(stream_ids)
    .fetch_all(conn)
    .await?;
    for row in rows {
        let recorded = row.into_recorded()?;
        out.entry(recorded.envelope.stream_id.clone())
            .or_default()
            .push(recorded);
    }
    Ok(out)
}

/// Reads the global log on a given connection (used by replay inside its transaction).
pub(crate) async fn read_all_on(
    conn: &mut PgConnection,
    after_position: i64,
    limit: i64,
) -> Result<Vec<RecordedEvent>, StoreError> {
    let rows: Vec<EventRow> = sqlx::query_as(&format!(
        "SELECT {EVENT_COLUMNS} FROM events e WHERE e.global_position > $1 \
         ORDER BY e.global_position LIMIT $2"
    ))
    .bind(after_position)
    .bind(limit)
    .fetch_all(conn)
    .await?;
    rows.into_iter().map(EventRow::into_recorded).collect()
}

/// The tail shared by both append statements: the events, numbered after the stream's
/// version as the head CTE `s` returns it (`base`), and their outbox rows.
const APPEND_TAIL: &str = "\
    e AS ( \
        INSERT INTO events (event_id, stream_id, stream_sequence, event_type, schema_version, \
            occurred_at, correlation_id, causation_id, producer, payload, traceparent, \
            tracestate) \
        SELECT u.id, u.stream, s.base + u.seq, u.ty, u.ver, u.occ, u.corr, u.caus, u.prod, \
               u.payload, u.tp, u.ts \
        FROM s, UNNEST($1::uuid[], $2::text[], $3::bigint[], $4::text[], $5::smallint[], \
                       $6::timestamptz[], $7::uuid[], $8::uuid[], $9::text[], $10::jsonb[], \
                       $11::text[], $12::text[]) \
             WITH ORDINALITY AS u(id, stream, seq, ty, ver, occ, corr, caus, prod, payload, \
                                  tp, ts, ord) \
        ORDER BY u.ord \
        RETURNING global_position), \
    o AS ( \
        INSERT INTO outbox (global_position, topic) \
        SELECT global_position, $15::text FROM e WHERE $15::text IS NOT NULL) \
    SELECT s.base, ARRAY(SELECT global_position FROM e) FROM s";

/// Append to an existing stream: the row is locked by the update, which only matches at the
/// expected version (`$14`, NULL for any).
static APPEND_EXISTING: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    format!(
        "WITH s AS ( \
             UPDATE streams SET version = version + $13, updated_at = clock_timestamp() \
             WHERE stream_id = $2[1] AND ($14::bigint IS NULL OR version = $14) \
             RETURNING version - $13 AS base), {APPEND_TAIL}"
    )
});

/// Append that creates the stream; nothing when it exists (a concurrent creator included).
static APPEND_NEW: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    format!(
        "WITH s AS ( \
             INSERT INTO streams (stream_id, version) VALUES ($2[1], $13) \
             ON CONFLICT DO NOTHING RETURNING 0::bigint AS base), {APPEND_TAIL}"
    )
});

/// Runs one of the append statements: `(version before, positions)`, or `None` when the
/// stream row did not match.
async fn append_statement(
    tx: &mut PgConnection,
    sql: &'static str,
    cols: &EventColumns<'_>,
    count: i64,
    version: Option<i64>,
    publish: &Publish,
) -> Result<Option<(i64, Vec<i64>)>, sqlx::Error> {
    cols.bind(sqlx::query_as(sql))
        .bind(count)
        .bind(version)
        .bind(&publish.topic)
        .fetch_optional(tx)
        .await
}

fn translate_unique(
    e: sqlx::Error,
    stream_id: &str,
    expected: ExpectedVersion,
    actual: i64,
) -> StoreError {
    if let sqlx::Error::Database(db) = &e {
        if db.is_unique_violation() {
            if db.constraint() == Some("events_stream_sequence_key") {
                return StoreError::ConcurrencyConflict {
                    stream_id: stream_id.to_owned(),
                    expected: expected.to_string(),
                    actual,
                };
            }
            return StoreError::InvalidAppend(format!("duplicate event id: {}", db.message()));
        }
    }
    StoreError::Database(e)
}
