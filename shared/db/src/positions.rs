//! Consumer positions and idempotency, always written in the consumer's own transaction
//! together with its effects. Kafka offsets stored here are the truth for resuming; the
//! per-stream sequence makes applying an event a second time impossible.

use std::collections::HashMap;

use sqlx::PgConnection;

/// The outcome of claiming an event's stream sequence for a consumer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    /// First time this consumer sees this sequence: apply it.
    Apply {
        /// The previously applied sequence (0 when the stream is new to this consumer).
        previous: i64,
    },
    /// Already applied (a duplicate on the wire or a redelivery): skip it.
    Duplicate {
        /// The last applied sequence.
        last: i64,
    },
}

/// Claims `(stream_id, sequence)` for `consumer`, locking the stream position row until the
/// transaction ends. Concurrent consumers of the same stream serialise here.
pub async fn claim_stream_sequence(
    conn: &mut PgConnection,
    consumer: &str,
    stream_id: &str,
    sequence: i64,
) -> Result<Claim, sqlx::Error> {
    let (previous, applied): (Option<i64>, bool) = sqlx::query_as(
        "WITH prev AS ( \
             SELECT last_sequence FROM consumer_stream_positions \
             WHERE consumer = $1 AND stream_id = $2 FOR UPDATE), \
         up AS ( \
             INSERT INTO consumer_stream_positions AS p (consumer, stream_id, last_sequence) \
             VALUES ($1, $2, $3) \
             ON CONFLICT (consumer, stream_id) DO UPDATE SET last_sequence = EXCLUDED.last_sequence \
             WHERE p.last_sequence < EXCLUDED.last_sequence \
             RETURNING 1) \
         SELECT (SELECT last_sequence FROM prev), EXISTS (SELECT 1 FROM up)",
    )
    .bind(consumer)
    .bind(stream_id)
    .bind(sequence)
    .fetch_one(&mut *conn)
    .await?;
    Ok(if applied {
        Claim::Apply {
            previous: previous.unwrap_or(0),
        }
    } else {
        Claim::Duplicate {
            last: previous.unwrap_or(sequence),
        }
    })
}

/// The next offsets to read for `consumer` in every partition of a batch (`None`: nothing
/// stored yet), each row locked for the transaction so that two instances briefly owning the
/// same partition during a rebalance cannot both apply; taken in `(topic, partition)` order,
/// so two such locks do not deadlock (three instances racing to create rows could, rarely:
/// PostgreSQL then aborts one, and its batch is retried). One statement when every row exists (the common case);
/// the missing ones are created and locked by two more.
pub async fn lock_next_offsets(
    conn: &mut PgConnection,
    consumer: &str,
    partitions: &[(String, i32)],
) -> Result<HashMap<(String, i32), Option<i64>>, sqlx::Error> {
    let mut sorted: Vec<&(String, i32)> = partitions.iter().collect();
    sorted.sort();
    sorted.dedup();
    let mut out: HashMap<(String, i32), Option<i64>> = HashMap::with_capacity(sorted.len());
    for (topic, partition, next) in lock_rows(conn, consumer, &sorted).await? {
        out.insert((topic, partition), (next >= 0).then_some(next));
    }
    let missing: Vec<&(String, i32)> = sorted
        .into_iter()
        .filter(|k| !out.contains_key(*k))
        .collect();
    if missing.is_empty() {
        return Ok(out);
    }
    let topics: Vec<&str> = missing.iter().map(|(t, _)| t.as_str()).collect();
    let parts: Vec<i32> = missing.iter().map(|(_, p)| *p).collect();
    sqlx::query(
        "INSERT INTO consumer_offsets (consumer, topic, partition, next_offset) \
         SELECT $1, u.topic, u.partition, -1 FROM UNNEST($2::text[], $3::int[]) \
             AS u(topic, partition) \
         ON CONFLICT DO NOTHING",
    )
    .bind(consumer)
    .bind(&topics)
    .bind(&parts)
    .execute(&mut *conn)
    .await?;
    // A separate statement, so that rows another instance created meanwhile are seen (and
    // waited for) as well as our own.
    for (topic, partition, next) in lock_rows(conn, consumer, &missing).await? {
        out.insert((topic, partition), (next >= 0).then_some(next));
    }
    Ok(out)
}

/// Locks the existing offset rows of `keys` (sorted), returning what they hold.
async fn lock_rows(
    conn: &mut PgConnection,
    consumer: &str,
    keys: &[&(String, i32)],
) -> Result<Vec<(String, i32, i64)>, sqlx::Error> {
    let topics: Vec<&str> = keys.iter().map(|(t, _)| t.as_str()).collect();
    let parts: Vec<i32> = keys.iter().map(|(_, p)| *p).collect();
    sqlx::query_as(
        "SELECT o.topic, o.partition, o.next_offset FROM consumer_offsets o \
         JOIN UNNEST($2::text[], $3::int[]) AS u(topic, partition) \
           ON o.topic = u.topic AND o.partition = u.partition \
         WHERE o.consumer = $1 ORDER BY o.topic, o.partition FOR UPDATE OF o",
    )
    .bind(consumer)
    .bind(&topics)
    .bind(&parts)
    .fetch_all(conn)
    .await
}

/// [`store_next_offset`] for every partition of a batch, in one statement.
pub async fn store_next_offsets(
    conn: &mut PgConnection,
    consumer: &str,
    offsets: &[((String, i32), i64)],
) -> Result<(), sqlx::Error> {
    if offsets.is_empty() {
        return Ok(());
    }
    let mut sorted: Vec<&((String, i32), i64)> = offsets.iter().collect();
    sorted.sort();
    let topics: Vec<&str> = sorted.iter().map(|((t, _), _)| t.as_str()).collect();
    let parts: Vec<i32> = sorted.iter().map(|((_, p), _)| *p).collect();
    let next: Vec<i64> = sorted.iter().map(|(_, n)| *n).collect();
    sqlx::query(
        "INSERT INTO consumer_offsets AS o (consumer, topic, partition, next_offset) \
         SELECT $1, u.topic, u.partition, u.next \
         FROM UNNEST($2::text[], $3::int[], $4::bigint[]) AS u(topic, partition, next) \
         ON CONFLICT (consumer, topic, partition) DO UPDATE \
         SET next_offset = GREATEST(o.next_offset, EXCLUDED.next_offset), \
             updated_at = clock_timestamp()",
    )
    .bind(consumer)
    .bind(&topics)
    .bind(&parts)
    .bind(&next)
    .execute(conn)
    .await?;
    Ok(())
}

/// Reads the stored next offset without locking (used to seek on partition assignment).
pub async fn next_offset(
    conn: &mut PgConnection,
    consumer: &str,
    topic: &str,
    partition: i32,
) -> Result<Option<i64>, sqlx::Error> {
    let next: Option<i64> = sqlx::query_scalar(
        "SELECT next_offset FROM consumer_offsets \
         WHERE consumer = $1 AND topic = $2 AND partition = $3",
    )
    .bind(consumer)
    .bind(topic)
    .bind(partition)
    .fetch_optional(conn)
    .await?;
    Ok(next.filter(|n| *n >= 0))
}

/// Records that everything before `next` in the partition has been handled.
pub async fn store_next_offset(
    conn: &mut PgConnection,
    consumer: &str,
    topic: &str,
    partition: i32,
    next: i64,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO consumer_offsets AS o (consumer, topic, partition, next_offset) \
         VALUES ($1, $2, $3, $4) \
         ON CONFLICT (consumer, topic, partition) DO UPDATE \
         SET next_offset = GREATEST(o.next_offset, EXCLUDED.next_offset), \
             updated_at = clock_timestamp()",
    )
    .bind(consumer)
    .bind(topic)
    .bind(partition)
    .bind(next)
    .execute(conn)
    .await?;
    Ok(())
}

/// Claims a whole batch of `(stream_id, sequence)` pairs for `consumer` in one statement:
/// locks each stream's position row, advances it to the batch's highest sequence for that
/// stream, and returns the sequence each stream was at BEFORE the batch (0 for new streams).
/// The caller applies, in order, only events above that mark. Used by the consumer's fast path;
/// [`claim_stream_sequence`] is the one-event form.
///
/// The position rows are read without `FOR UPDATE`: the caller holds the lock of every
/// partition the batch came from ([`lock_next_offsets`]), and a stream lives on one partition
/// (the key is the stream id), so no other transaction of this consumer can claim the same
/// streams meanwhile; the upsert then locks what it writes. Locking them first as well cost a
/// second tuple write per event (the statement averaged 32 ms for full 500-event batches).
pub async fn claim_batch(
    conn: &mut PgConnection,
    consumer: &str,
    claims: &[(&str, i64)],
) -> Result<std::collections::HashMap<String, i64>, sqlx::Error> {
    let streams: Vec<&str> = claims.iter().map(|c| c.0).collect();
    let seqs: Vec<i64> = claims.iter().map(|c| c.1).collect();
    let rows: Vec<(String, i64)> = sqlx::query_as(
        "WITH input AS ( \
             SELECT stream_id, max(seq) AS max_seq \
             FROM UNNEST($2::text[], $3::bigint[]) AS t(stream_id, seq) \
             GROUP BY stream_id ORDER BY stream_id), \
         prev AS ( \
             SELECT p.stream_id, p.last_sequence FROM consumer_stream_positions p \
             WHERE p.consumer = $1 AND p.stream_id = ANY($2::text[])), \
         up AS ( \
             INSERT INTO consumer_stream_positions AS p (consumer, stream_id, last_sequence) \
             SELECT $1, stream_id, max_seq FROM input \
             ON CONFLICT (consumer, stream_id) DO UPDATE \
             SET last_sequence = GREATEST(p.last_sequence, EXCLUDED.last_sequence)) \
         SELECT i.stream_id, coalesce(prev.last_sequence, 0) \
         FROM input i LEFT JOIN prev ON prev.stream_id = i.stream_id",
    )
    .bind(consumer)
    .bind(&streams)
    .bind(&seqs)
    .fetch_all(conn)
    .await?;
    Ok(rows.into_iter().collect())
}
