//! Crash safety against the real broker and PostgreSQL: SIGKILL the consumer mid-batch or the
//! relay mid-publish, restart, and check that nothing is lost and nothing applied twice.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use hcp_bus::transactional::KafkaOutboxSink;
use hcp_bus::Producer;
use hcp_db::sqlx;
use hcp_db::{
    EventStore, ExpectedVersion, OutboxMessage, OutboxRelay, OutboxSink, Publish, RelaySettings,
};
use hcp_events::Topic;
use hcp_readmodel::WorkloadBoard;
use hcp_tests::fixtures::{lifecycle, start_consumer, start_relay};
use hcp_tests::{count_events, count_messages, kill_hard, wait_until, TestEnv};
use uuid::Uuid;

const NODE: &str = env!("CARGO_BIN_EXE_hcp-node");
const WORKLOADS: usize = 400;
const EVENTS: i64 = WORKLOADS as i64 * 4;

async fn append_workloads(env: &TestEnv) {
    let topic = env.topic(Topic::Workloads);
    let mut tx = env.pool.begin().await.unwrap();
    for _ in 0..WORKLOADS {
        let id = Uuid::now_v7();
        EventStore::append(
            &mut tx,
            &format!("workload-{id}"),
            ExpectedVersion::NoStream,
            &lifecycle(id),
            &Publish::to(&topic),
        )
        .await
        .unwrap();
    }
    tx.commit().await.unwrap();
}

async fn events_seen(env: &TestEnv) -> i64 {
    sqlx::query_scalar::<_, Option<i64>>("SELECT sum(events_seen)::bigint FROM workload_board")
        .fetch_one(&env.pool)
        .await
        .unwrap()
        .unwrap_or(0)
}

/// Waits until the workload board's stored offsets cover every message on the `workloads`
/// topic (a relay that was killed mid-publish leaves duplicates there: they count too).
async fn consumed_everything(env: &TestEnv) -> bool {
    let on_the_wire = count_messages(&env.kafka, &env.topic(Topic::Workloads)).await;
    wait_until(
        Duration::from_secs(60),
        Duration::from_millis(50),
        || async {
            sqlx::query_scalar::<_, Option<i64>>(
                "SELECT sum(next_offset)::bigint FROM consumer_offsets \
                 WHERE consumer = 'workload-board'",
            )
            .fetch_one(&env.pool)
            .await
            .ok()
            .flatten()
            .unwrap_or(0)
                >= on_the_wire
        },
    )
    .await
}

async fn outbox_len(env: &TestEnv) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM outbox")
        .fetch_one(&env.pool)
        .await
        .unwrap()
}

/// Everything applied exactly once: every workload completed, four events each, and the
/// idempotency table agrees.
async fn assert_exactly_once(env: &TestEnv) {
    let (rows, completed, seen): (i64, i64, Option<i64>) = sqlx::query_as(
        "SELECT count(*), count(*) FILTER (WHERE state = 'completed'), sum(events_seen)::bigint \
         FROM workload_board",
    )
    .fetch_one(&env.pool)
    .await
    .unwrap();
    assert_eq!(rows, WORKLOADS as i64, "no workload lost");
    assert_eq!(
        completed, WORKLOADS as i64,
        "every workload reached its last event"
    );
    assert_eq!(seen, Some(EVENTS), "no event applied twice or skipped");
    // The board keeps each stream's mark in its own row (the claims table holds only what a
    // stream's first batch claimed, before the row existed).
    let (bad_rows, bad_claims): (i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM workload_board WHERE last_sequence <> 4), \
                (SELECT count(*) FROM consumer_stream_positions \
                 WHERE consumer = 'workload-board' AND last_sequence NOT BETWEEN 1 AND 4)",
    )
    .fetch_one(&env.pool)
    .await
    .unwrap();
    assert_eq!((bad_rows, bad_claims), (0, 0));
    let dead = count_messages(&env.kafka, &env.topic(Topic::DeadLetters)).await;
    assert_eq!(
        dead, 0,
        "a re-applied event would have been refused and dead-lettered"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_consumer_mid_batch_and_restarting_it_loses_nothing_and_applies_nothing_twice()
{
    let env = TestEnv::new().await;
    append_workloads(&env).await;
    let relay = start_relay(&env);
    assert!(
        wait_until(
            Duration::from_secs(60),
            Duration::from_millis(50),
            || async { outbox_len(&env).await == 0 }
        )
        .await
    );
    relay.stop().await;

    let mut node = env.spawn_node(NODE, "consumers");
    let started = wait_until(
        Duration::from_secs(60),
        Duration::from_millis(2),
        || async {
            let n = events_seen(&env).await;
            n > 0 && n < EVENTS
        },
    )
    .await;
    kill_hard(&mut node);
    let at_kill = events_seen(&env).await;
    assert!(
        started,
        "the consumer was killed while it still had work ({at_kill} of {EVENTS})"
    );
    assert!(at_kill < EVENTS, "killed mid-stream");

    let mut node = env.spawn_node(NODE, "consumers");
    let done = wait_until(
        Duration::from_secs(90),
        Duration::from_millis(100),
        || async { events_seen(&env).await >= EVENTS },
    )
    .await;
    // Kill it only once it has consumed every message on the topic, duplicates included, so a
    // double apply would show.
    assert!(
        consumed_everything(&env).await,
        "the consumer never drained its topic"
    );
    kill_hard(&mut node);
    assert!(
        done,
        "restarted consumer finished: {} of {EVENTS}",
        events_seen(&env).await
    );
    assert_exactly_once(&env).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_outbox_relay_mid_publish_and_restarting_it_loses_nothing() {
    let env = TestEnv::new().await;
    append_workloads(&env).await;
    let mut node = env.spawn_node(NODE, "relay");
    let mid = wait_until(
        Duration::from_secs(60),
        Duration::from_millis(1),
        || async {
            let n = outbox_len(&env).await;
            n > 0 && n < EVENTS
        },
    )
    .await;
    kill_hard(&mut node);
    let left = outbox_len(&env).await;
    assert!(
        mid && left > 0,
        "killed mid-publish ({left} of {EVENTS} still in the outbox)"
    );

    let mut node = env.spawn_node(NODE, "relay");
    let drained = wait_until(
        Duration::from_secs(60),
        Duration::from_millis(50),
        || async { outbox_len(&env).await == 0 },
    )
    .await;
    kill_hard(&mut node);
    assert!(drained);
    assert!(
        count_events(&env.kafka, &env.topic(Topic::Workloads)).await >= EVENTS,
        "nothing lost on the wire"
    );

    let board = start_consumer(&env, WorkloadBoard::new(), Topic::Workloads);
    assert!(
        wait_until(
            Duration::from_secs(60),
            Duration::from_millis(50),
            || async { events_seen(&env).await >= EVENTS }
        )
        .await
    );
    assert!(
        consumed_everything(&env).await,
        "the consumer never drained its topic"
    );
    board.stop().await;
    assert_exactly_once(&env).await;
}

/// Publishes for real, then fails the first batch as if the relay died after the broker acked
/// but before the outbox rows were deleted: the batch is published again.
struct CrashAfterPublish {
    inner: KafkaOutboxSink,
    crashed: std::sync::atomic::AtomicBool,
}

impl OutboxSink for CrashAfterPublish {
    async fn publish(&self, batch: &[OutboxMessage]) -> Result<(), String> {
        self.inner.publish(batch).await?;
        if !self.crashed.swap(true, std::sync::atomic::Ordering::SeqCst) {
            return Err("simulated crash between broker ack and outbox delete".into());
        }
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicates_on_the_wire_from_a_republished_batch_are_absorbed_by_the_consumer() {
    let env = TestEnv::new().await;
    append_workloads(&env).await;
    let sink = CrashAfterPublish {
        inner: KafkaOutboxSink(Producer::new(&env.kafka, "test-crashy").unwrap()),
        crashed: Default::default(),
    };
    let relay = OutboxRelay::new(
        env.pool.clone(),
        sink,
        RelaySettings {
            batch_size: 500,
            ..Default::default()
        },
    );
    assert!(
        relay.relay_once().await.is_err(),
        "first pass 'crashes' after publishing"
    );
    while relay.relay_once().await.unwrap() > 0 {}
    assert_eq!(outbox_len(&env).await, 0);
    let topic = env.topic(Topic::Workloads);
    assert_eq!(
        count_events(&env.kafka, &topic).await,
        EVENTS + 500,
        "the first batch went out twice"
    );
    // Offsets count messages (the events travel packed).
    let on_wire = count_messages(&env.kafka, &topic).await;

    let board = start_consumer(&env, WorkloadBoard::new(), Topic::Workloads);
    assert!(
        wait_until(
            Duration::from_secs(60),
            Duration::from_millis(50),
            || async { events_seen(&env).await >= EVENTS }
        )
        .await
    );
    // Wait until the consumer has read past every duplicate too.
    let consumed_all = wait_until(Duration::from_secs(30), Duration::from_millis(50), || async {
        let next: Option<i64> = sqlx::query_scalar(
            "SELECT sum(next_offset)::bigint FROM consumer_offsets WHERE consumer = 'workload-board'",
        )
        .fetch_one(&env.pool)
        .await
        .unwrap();
        next == Some(on_wire)
    })
    .await;
    board.stop().await;
    assert!(
        consumed_all,
        "consumer read every message, duplicates included"
    );
    assert_exactly_once(&env).await;
}
