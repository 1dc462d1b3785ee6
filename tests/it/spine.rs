//! The spine against the real broker and the real PostgreSQL: ordering, conflicts, dead
//! letters, replay, point-in-time reads, trace propagation, time-series storage.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use hcp_bus::OutgoingMessage;
use hcp_db::sqlx::{self, PgConnection};
use hcp_db::{
    ApplyError, EventStore, ExpectedVersion, Projection, Publish, StoreError, StreamAppend,
};
use hcp_events::payload::*;
use hcp_events::{headers, Envelope, Event, Topic};
use hcp_readmodel::{MarketPrices, WorkloadBoard};
use hcp_tests::fixtures::{lifecycle, start_consumer, start_relay};
use hcp_tests::{read_events, read_topic, wait_until, TestEnv};
use rdkafka::message::{Headers, Message};
use uuid::Uuid;

/// A workload_board row, for snapshots.
type BoardRow = (Uuid, String, String, i32, i32, i64, Option<String>);

const WAIT: Duration = Duration::from_secs(30);
const POLL: Duration = Duration::from_millis(50);

async fn board_state(env: &TestEnv, id: Uuid) -> Option<(String, i32)> {
    sqlx::query_as("SELECT state, events_seen FROM workload_board WHERE workload_id = $1")
        .bind(id)
        .fetch_optional(&env.pool)
        .await
        .unwrap()
}

/// Appends one workload's four-event happy path, published to the workloads topic.
async fn append_happy_path(env: &TestEnv, id: Uuid) {
    EventStore::new(env.pool.clone())
        .append_and_commit(
            &format!("workload-{id}"),
            ExpectedVersion::NoStream,
            &lifecycle(id),
            &Publish::to(env.topic(Topic::Workloads)),
        )
        .await
        .unwrap();
}

/// Waits until the board shows the workload completed after exactly four events.
async fn completes(env: &TestEnv, id: Uuid) -> bool {
    wait_until(WAIT, POLL, || async {
        board_state(env, id).await == Some(("completed".into(), 4))
    })
    .await
}

/// Poison: a completion for a workload nobody submitted (a valid envelope, an invalid
/// transition), as its stream's first event.
fn orphan_completion() -> Envelope {
    let mut e = Envelope::new(
        format!("workload-{}", Uuid::now_v7()),
        "test",
        Event::WorkloadCompleted(WorkloadCompleted {
            workload_id: Uuid::now_v7(),
            runtime_s: 1.0,
            output: None,
        }),
    );
    e.sequence = 1;
    e
}

/// A workload's four-event happy path with its stream sequences (1-4), as it would come off
/// the wire.
fn numbered_lifecycle(id: Uuid) -> Vec<Envelope> {
    let mut events = lifecycle(id);
    for (i, e) in events.iter_mut().enumerate() {
        e.sequence = i as i64 + 1;
    }
    events
}

fn header<'a>(m: &'a rdkafka::message::OwnedMessage, key: &str) -> Option<&'a str> {
    m.headers()?
        .iter()
        .find(|h| h.key == key)
        .and_then(|h| h.value)
        .and_then(|v| std::str::from_utf8(v).ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_appended_in_one_transaction_are_published_in_order_and_projected() {
    let env = TestEnv::new().await;
    let topic = env.topic(Topic::Workloads);
    let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
    let mut tx = env.pool.begin().await.unwrap();
    let sa = format!("workload-{a}");
    let sb = format!("workload-{b}");
    let out_a = EventStore::append(
        &mut tx,
        &sa,
        ExpectedVersion::NoStream,
        &lifecycle(a),
        &Publish::to(&topic),
    )
    .await
    .unwrap();
    let out_b = EventStore::append(
        &mut tx,
        &sb,
        ExpectedVersion::NoStream,
        &lifecycle(b)[..2],
        &Publish::to(&topic),
    )
    .await
    .unwrap();
    tx.commit().await.unwrap();
    assert_eq!(out_a.new_version, 4);
    assert_eq!(out_b.new_version, 2);
    assert!(out_a.positions.windows(2).all(|w| w[0] < w[1]));
    assert!(out_a.positions.last() < out_b.positions.first());

    let relay = start_relay(&env);
    let board = start_consumer(&env, WorkloadBoard::new(), Topic::Workloads);

    let wire = read_events(&env.kafka, &topic, 6, WAIT).await;
    assert_eq!(wire.len(), 6, "every appended event is on the wire");
    let seqs_a: Vec<i64> = wire
        .iter()
        .filter(|w| w.envelope.stream_id == sa)
        .map(|w| w.envelope.sequence)
        .collect();
    assert_eq!(
        seqs_a,
        vec![1, 2, 3, 4],
        "one stream's events keep their order"
    );
    assert_eq!(
        wire.iter()
            .filter(|w| w.envelope.stream_id == sa)
            .map(|w| w.partition)
            .collect::<std::collections::HashSet<_>>()
            .len(),
        1,
        "one stream, one partition"
    );
    // One relay pass published all six: each partition's share travelled packed in one
    // message, whose header says how many it carries; an event alone keeps its own headers.
    let carrying: std::collections::HashSet<(i32, i64)> =
        wire.iter().map(|w| (w.partition, w.offset)).collect();
    let messages = read_topic(&env.kafka, &topic, carrying.len(), WAIT).await;
    assert_eq!(messages.len(), carrying.len());
    let packed = messages
        .iter()
        .find(|m| header(m, headers::PACKED).is_some())
        .expect("a packed message");
    let n: usize = header(packed, headers::PACKED).unwrap().parse().unwrap();
    assert_eq!(
        hcp_events::pack::items(packed.payload().unwrap())
            .unwrap()
            .len(),
        n
    );
    assert!(n >= 2);
    for m in messages
        .iter()
        .filter(|m| header(m, headers::PACKED).is_none())
    {
        let e = Envelope::from_json(m.payload().unwrap()).unwrap();
        assert_eq!(
            header(m, headers::EVENT_TYPE),
            Some(e.event_type().as_str())
        );
        assert_eq!(
            header(m, headers::SCHEMA_VERSION),
            Some(e.schema_version.to_string().as_str())
        );
    }

    assert!(
        wait_until(WAIT, POLL, || async {
            board_state(&env, a).await == Some(("completed".into(), 4))
                && board_state(&env, b).await == Some(("scheduled".into(), 2))
        })
        .await,
        "projection reached the final state: a={:?} b={:?}",
        board_state(&env, a).await,
        board_state(&env, b).await
    );
    board.stop().await;
    relay.stop().await;
    let outbox: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox")
        .fetch_one(&env.pool)
        .await
        .unwrap();
    assert_eq!(outbox, 0, "published events leave the outbox");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_concurrent_append_at_the_same_sequence_fails_with_a_conflict() {
    let env = TestEnv::new().await;
    let id = Uuid::now_v7();
    let stream = format!("workload-{id}");
    let store = EventStore::new(env.pool.clone());
    let events = lifecycle(id);
    store
        .append_and_commit(
            &stream,
            ExpectedVersion::NoStream,
            &events[..1],
            &Publish::default(),
        )
        .await
        .unwrap();

    // Two writers both read version 1 and race to write sequence 2.
    let mut tx1 = env.pool.begin().await.unwrap();
    EventStore::append(
        &mut tx1,
        &stream,
        ExpectedVersion::Exact(1),
        &events[1..2],
        &Publish::default(),
    )
    .await
    .unwrap();
    let pool = env.pool.clone();
    let (s2, e2) = (stream.clone(), events[1..2].to_vec());
    let second = tokio::spawn(async move {
        let mut tx2 = pool.begin().await.unwrap();
        let r = EventStore::append(
            &mut tx2,
            &s2,
            ExpectedVersion::Exact(1),
            &e2,
            &Publish::default(),
        )
        .await;
        if r.is_ok() {
            tx2.commit().await.unwrap();
        }
        r
    });
    // The second writer blocks on the stream row: PostgreSQL shows it waiting on a lock.
    let waiting = a_session_waits_on_a_lock(&env).await;
    assert!(waiting, "the second writer never waited on the stream row");
    assert!(
        !second.is_finished(),
        "the second writer must wait for the first"
    );
    tx1.commit().await.unwrap();
    let err = second.await.unwrap().unwrap_err();
    assert!(
        matches!(err, StoreError::ConcurrencyConflict { actual: 2, .. }),
        "got {err:?}"
    );
    assert_eq!(store.stream_version(&stream).await.unwrap(), 2);

    // Creating an existing stream conflicts too, and so does a stale expectation.
    let err = store
        .append_and_commit(
            &stream,
            ExpectedVersion::NoStream,
            &events[2..3],
            &Publish::default(),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(err, StoreError::ConcurrencyConflict { .. }),
        "{err:?}"
    );
    let err = store
        .append_and_commit(
            &stream,
            ExpectedVersion::Exact(7),
            &events[2..3],
            &Publish::default(),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(err, StoreError::ConcurrencyConflict { actual: 2, .. }),
        "{err:?}"
    );
    assert_eq!(store.read_stream(&stream).await.unwrap().len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_append_writes_many_streams_at_once_and_refuses_only_the_stale_ones() {
    let env = TestEnv::new().await;
    let store = EventStore::new(env.pool.clone());
    let ids: Vec<Uuid> = (0..4).map(|_| Uuid::now_v7()).collect();
    let streams: Vec<String> = ids.iter().map(|id| format!("workload-{id}")).collect();
    let lives: Vec<Vec<Envelope>> = ids.iter().map(|id| lifecycle(*id)).collect();
    // Streams 1, 2 and 3 exist at version 1; stream 0 does not.
    for i in 1..4 {
        store
            .append_and_commit(
                &streams[i],
                ExpectedVersion::NoStream,
                &lives[i][..1],
                &Publish::default(),
            )
            .await
            .unwrap();
    }
    let published = Publish::to(env.topic(Topic::Workloads));
    let internal = Publish::default();
    let appends = [
        StreamAppend {
            stream_id: &streams[0],
            expected: ExpectedVersion::NoStream,
            events: &lives[0][..2],
            publish: &published,
        },
        StreamAppend {
            stream_id: &streams[1],
            expected: ExpectedVersion::Exact(1),
            events: &lives[1][1..3],
            publish: &published,
        },
        StreamAppend {
            stream_id: &streams[2],
            expected: ExpectedVersion::Exact(5),
            events: &lives[2][1..2],
            publish: &published,
        },
        StreamAppend {
            stream_id: &streams[3],
            expected: ExpectedVersion::NoStream,
            events: &lives[3][1..2],
            publish: &internal,
        },
    ];
    let mut tx = env.pool.begin().await.unwrap();
    let out = EventStore::append_batch(&mut tx, &appends).await.unwrap();
    tx.commit().await.unwrap();

    assert_eq!(out[0].as_ref().unwrap().new_version, 2);
    assert_eq!(out[1].as_ref().unwrap().new_version, 3);
    assert!(
        matches!(
            out[2],
            Err(StoreError::ConcurrencyConflict { actual: 1, .. })
        ),
        "{:?}",
        out[2]
    );
    assert!(
        matches!(
            out[3],
            Err(StoreError::ConcurrencyConflict { actual: 1, .. })
        ),
        "{:?}",
        out[3]
    );
    let seqs = |i: usize| {
        let store = store.clone();
        let stream = streams[i].clone();
        async move {
            store
                .read_stream(&stream)
                .await
                .unwrap()
                .iter()
                .map(|r| (r.envelope.sequence, r.envelope.event_id))
                .collect::<Vec<_>>()
        }
    };
    let ids_of = |v: &[Envelope]| v.iter().map(|e| e.event_id).collect::<Vec<_>>();
    assert_eq!(
        seqs(0).await,
        vec![(1, lives[0][0].event_id), (2, lives[0][1].event_id)]
    );
    assert_eq!(
        seqs(1).await.into_iter().map(|x| x.1).collect::<Vec<_>>(),
        ids_of(&lives[1][..3])
    );
    assert_eq!(seqs(2).await.len(), 1, "a refused append writes nothing");
    assert_eq!(seqs(3).await.len(), 1);
    for (i, v) in [(0, 2), (1, 3), (2, 1), (3, 1)] {
        assert_eq!(store.stream_version(&streams[i]).await.unwrap(), v);
    }
    // Exactly the four published events wait in the outbox, in position order.
    let outboxed: Vec<(i64, String)> = sqlx::query_as(
        "SELECT o.global_position, e.stream_id FROM outbox o \
         JOIN events e USING (global_position) ORDER BY 1",
    )
    .fetch_all(&env.pool)
    .await
    .unwrap();
    let order: Vec<&str> = outboxed.iter().map(|(_, s)| s.as_str()).collect();
    assert_eq!(
        order,
        vec![&*streams[0], &*streams[0], &*streams[1], &*streams[1]]
    );
    let mut positions: Vec<i64> = out[0].as_ref().unwrap().positions.clone();
    positions.extend(&out[1].as_ref().unwrap().positions);
    assert_eq!(
        outboxed.iter().map(|(p, _)| *p).collect::<Vec<_>>(),
        positions
    );

    // A stream named twice is a caller bug, refused before anything is written.
    let twice = [appends[0], appends[0]];
    let mut tx = env.pool.begin().await.unwrap();
    let err = EventStore::append_batch(&mut tx, &twice).await.unwrap_err();
    assert!(matches!(err, StoreError::InvalidAppend(_)), "{err:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_event_log_refuses_updates_and_deletes() {
    let env = TestEnv::new().await;
    let id = Uuid::now_v7();
    EventStore::new(env.pool.clone())
        .append_and_commit(
            &format!("workload-{id}"),
            ExpectedVersion::Any,
            &lifecycle(id)[..1],
            &Publish::default(),
        )
        .await
        .unwrap();
    let upd = sqlx::query("UPDATE events SET producer = 'x'")
        .execute(&env.pool)
        .await;
    let del = sqlx::query("DELETE FROM events").execute(&env.pool).await;
    assert!(upd.unwrap_err().to_string().contains("append-only"));
    assert!(del.unwrap_err().to_string().contains("append-only"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_and_poison_messages_land_in_dead_letters_with_a_reason_and_the_consumer_goes_on()
{
    let env = TestEnv::new().await;
    let topic = env.topic(Topic::Workloads);
    let producer = hcp_bus::Producer::new(&env.kafka, "test-raw").unwrap();
    let garbage = b"{\"event_id\": \"not-a-uuid\"".to_vec();
    let id = Uuid::now_v7();
    let stream = format!("workload-{id}");
    let poison = orphan_completion();
    let good = numbered_lifecycle(id);
    let mut msgs = vec![
        OutgoingMessage {
            topic: topic.clone(),
            key: stream.clone(),
            payload: garbage.clone(),
            headers: vec![],
        },
        OutgoingMessage {
            topic: topic.clone(),
            key: poison.stream_id.clone(),
            payload: poison.to_json().unwrap(),
            headers: vec![],
        },
    ];
    for e in &good {
        msgs.push(OutgoingMessage {
            topic: topic.clone(),
            key: stream.clone(),
            payload: e.to_json().unwrap(),
            headers: vec![],
        });
    }
    producer.send_batch(&msgs).await.unwrap();

    let board = start_consumer(&env, WorkloadBoard::new(), Topic::Workloads);
    assert!(
        wait_until(WAIT, POLL, || async {
            board_state(&env, id).await == Some(("completed".into(), 4))
        })
        .await,
        "the consumer went past the bad messages"
    );
    let dead = read_topic(&env.kafka, &env.topic(Topic::DeadLetters), 2, WAIT).await;
    board.stop().await;
    assert_eq!(
        dead.len(),
        2,
        "both bad messages were dead-lettered, nothing else"
    );
    let malformed = dead
        .iter()
        .find(|m| header(m, headers::DLQ_KIND) == Some("malformed"))
        .expect("malformed");
    assert_eq!(
        malformed.payload().unwrap(),
        garbage.as_slice(),
        "original bytes kept"
    );
    assert!(header(malformed, headers::DLQ_REASON)
        .unwrap()
        .contains("malformed envelope"));
    assert_eq!(
        header(malformed, headers::DLQ_SOURCE_TOPIC),
        Some(topic.as_str())
    );
    let poisoned = dead
        .iter()
        .find(|m| header(m, headers::DLQ_KIND) == Some("poison"))
        .expect("poison");
    let reason = header(poisoned, headers::DLQ_REASON).unwrap();
    assert!(reason.contains("unknown workload"), "{reason}");
    let on_board: i64 = sqlx::query_scalar("SELECT count(*) FROM workload_board")
        .fetch_one(&env.pool)
        .await
        .unwrap();
    assert_eq!(on_board, 1, "the poison event left no partial writes");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_board_skips_redeliveries_by_its_own_row_version_and_claims_only_a_streams_first_batch()
{
    let env = TestEnv::new().await;
    let topic = env.topic(Topic::Workloads);
    let producer = hcp_bus::Producer::new(&env.kafka, "test-raw").unwrap();
    let id = Uuid::now_v7();
    let stream = format!("workload-{id}");
    let events: Vec<Vec<u8>> = numbered_lifecycle(id)
        .iter()
        .map(|e| e.to_json().unwrap())
        .collect();
    let send = |payloads: Vec<Vec<u8>>| {
        let msgs: Vec<OutgoingMessage> = payloads
            .into_iter()
            .map(|payload| OutgoingMessage {
                topic: topic.clone(),
                key: stream.clone(),
                payload,
                headers: vec![],
            })
            .collect();
        let producer = producer.clone();
        async move { producer.send_batch(&msgs).await.unwrap() }
    };
    let board = start_consumer(&env, WorkloadBoard::new(), Topic::Workloads);
    // The submission alone: the row does not exist yet, so its stream is claimed.
    send(vec![events[0].clone()]).await;
    assert!(
        wait_until(WAIT, POLL, || async {
            board_state(&env, id).await == Some(("queued".into(), 1))
        })
        .await
    );
    // The rest, then every event again (a relay that re-published): the row's version skips
    // the copies, the first one included, and no claim is written for them.
    let mut rest = events[1..].to_vec();
    rest.extend(events.iter().cloned());
    send(rest).await;
    assert!(
        completes(&env, id).await,
        "{:?}",
        board_state(&env, id).await
    );
    let offsets_done = wait_until(WAIT, POLL, || async {
        sqlx::query_scalar::<_, Option<i64>>(
            "SELECT sum(next_offset)::bigint FROM consumer_offsets WHERE consumer = 'workload-board'",
        )
        .fetch_one(&env.pool)
        .await
        .unwrap()
            == Some(8)
    })
    .await;
    board.stop().await;
    assert!(offsets_done, "the consumer read all eight messages");
    let (seen, last): (i32, i64) = sqlx::query_as(
        "SELECT events_seen, last_sequence FROM workload_board WHERE workload_id = $1",
    )
    .bind(id)
    .fetch_one(&env.pool)
    .await
    .unwrap();
    assert_eq!((seen, last), (4, 4), "each event applied once");
    let claimed: Vec<i64> = sqlx::query_scalar(
        "SELECT last_sequence FROM consumer_stream_positions \
         WHERE consumer = 'workload-board' AND stream_id = $1",
    )
    .bind(&stream)
    .fetch_all(&env.pool)
    .await
    .unwrap();
    assert_eq!(
        claimed,
        vec![1],
        "only the first batch, before the row existed, was claimed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_packing_off_every_event_travels_alone_for_readers_older_than_packing() {
    let env = TestEnv::new().await;
    let topic = env.topic(Topic::Workloads);
    let mut kafka = env.kafka.clone();
    kafka.pack = false;
    let producer = hcp_bus::Producer::new(&kafka, "test-unpacked").unwrap();
    let id = Uuid::now_v7();
    let msgs: Vec<OutgoingMessage> = numbered_lifecycle(id)
        .iter()
        .map(|e| OutgoingMessage {
            topic: topic.clone(),
            key: e.stream_id.clone(),
            payload: e.to_json().unwrap(),
            headers: vec![],
        })
        .collect();
    producer.send_packed(&msgs).await.unwrap();
    let wire = read_topic(&env.kafka, &topic, 4, WAIT).await;
    assert_eq!(wire.len(), 4, "four messages");
    for (i, m) in wire.iter().enumerate() {
        assert_eq!(header(m, headers::PACKED), None);
        let e = Envelope::from_json(m.payload().unwrap()).unwrap();
        assert_eq!(e.sequence, i as i64 + 1, "in order");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_event_in_a_packed_message_is_dead_lettered_alone_and_its_neighbours_apply() {
    let env = TestEnv::new().await;
    let topic = env.topic(Topic::Workloads);
    let producer = hcp_bus::Producer::new(&env.kafka, "test-raw").unwrap();
    // An item that is JSON but no envelope, a poison event, then a workload's whole life: all
    // keyed alike, so they travel packed in one message.
    let garbage = br#"{"event_id":"not-a-uuid"}"#.to_vec();
    let id = Uuid::now_v7();
    let stream = format!("workload-{id}");
    let poison = orphan_completion();
    let mut payloads = vec![garbage.clone(), poison.to_json().unwrap()];
    payloads.extend(numbered_lifecycle(id).iter().map(|e| e.to_json().unwrap()));
    let msgs: Vec<OutgoingMessage> = payloads
        .iter()
        .map(|p| OutgoingMessage {
            topic: topic.clone(),
            key: stream.clone(),
            payload: p.clone(),
            headers: vec![],
        })
        .collect();
    producer.send_packed(&msgs).await.unwrap();
    let wire = read_topic(&env.kafka, &topic, 1, WAIT).await;
    assert_eq!(
        header(&wire[0], headers::PACKED),
        Some("6"),
        "one message of six"
    );

    let board = start_consumer(&env, WorkloadBoard::new(), Topic::Workloads);
    assert!(
        wait_until(WAIT, POLL, || async {
            board_state(&env, id).await == Some(("completed".into(), 4))
        })
        .await,
        "the good events of the message applied"
    );
    let dead = read_topic(&env.kafka, &env.topic(Topic::DeadLetters), 2, WAIT).await;
    board.stop().await;
    assert_eq!(dead.len(), 2, "the two bad events, nothing else: {dead:?}");
    for (kind, index, bytes) in [("malformed", "0", &garbage), ("poison", "1", &payloads[1])] {
        let m = dead
            .iter()
            .find(|m| header(m, headers::DLQ_KIND) == Some(kind))
            .unwrap_or_else(|| panic!("{kind}"));
        assert_eq!(
            m.payload().unwrap(),
            bytes.as_slice(),
            "{kind}: the event alone"
        );
        assert_eq!(header(m, headers::DLQ_PACKED_INDEX), Some(index));
        assert_eq!(header(m, headers::PACKED), None);
        assert_eq!(header(m, headers::DLQ_SOURCE_TOPIC), Some(topic.as_str()));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_projection_rebuilt_by_replay_is_identical_to_the_live_one_and_streams_read_as_of_a_past_time(
) {
    let env = TestEnv::new().await;
    let topic = env.topic(Topic::Workloads);
    let store = EventStore::new(env.pool.clone());
    let ids: Vec<Uuid> = (0..40).map(|_| Uuid::now_v7()).collect();
    let mut midpoint = None;
    for (n, id) in ids.iter().enumerate() {
        let events = lifecycle(*id);
        // Leave some workloads part-way, to make the board non-trivial.
        let take = 1 + n % 4;
        let stream = format!("workload-{id}");
        store
            .append_and_commit(
                &stream,
                ExpectedVersion::NoStream,
                &events[..take.min(2)],
                &Publish::to(&topic),
            )
            .await
            .unwrap();
        if n == 3 {
            tokio::time::sleep(Duration::from_millis(20)).await;
            midpoint = Some(time::OffsetDateTime::now_utc());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if take > 2 {
            store
                .append_and_commit(
                    &stream,
                    ExpectedVersion::Exact(2),
                    &events[2..take],
                    &Publish::to(&topic),
                )
                .await
                .unwrap();
        }
    }
    let relay = start_relay(&env);
    let board = start_consumer(&env, WorkloadBoard::new(), Topic::Workloads);
    let expected_events: i64 = ids
        .iter()
        .enumerate()
        .map(|(n, _)| 1 + (n % 4) as i64)
        .sum();
    assert!(
        wait_until(WAIT, POLL, || async {
            let seen: Option<i64> =
                sqlx::query_scalar("SELECT sum(events_seen)::bigint FROM workload_board")
                    .fetch_one(&env.pool)
                    .await
                    .unwrap();
            seen == Some(expected_events)
        })
        .await
    );
    board.stop().await;
    relay.stop().await;

    let snapshot = |pool: hcp_db::sqlx::PgPool| async move {
        let rows: Vec<BoardRow> = sqlx::query_as(
            "SELECT workload_id, tenant_id, state, gpu_count, events_seen, last_sequence, detail \
             FROM workload_board ORDER BY workload_id",
        )
        .fetch_all(&pool)
        .await
        .unwrap();
        rows
    };
    let live = snapshot(env.pool.clone()).await;
    assert_eq!(live.len(), ids.len());
    let applied = hcp_db::rebuild(&env.pool, &WorkloadBoard::new())
        .await
        .unwrap();
    assert_eq!(applied as i64, expected_events);
    let rebuilt = snapshot(env.pool.clone()).await;
    assert_eq!(
        rebuilt, live,
        "replay reproduces the live projection exactly"
    );

    // Point in time: at the midpoint the fourth workload had its first two events, not four,
    // and the fifth did not exist yet.
    let fourth = format!("workload-{}", ids[3]);
    let then = store.read_stream_as_of(&fourth, midpoint).await.unwrap();
    let seqs: Vec<i64> = then.iter().map(|e| e.envelope.sequence).collect();
    assert_eq!(seqs, vec![1, 2], "as of the midpoint");
    assert_eq!(store.read_stream(&fourth).await.unwrap().len(), 4);
    let fifth = format!("workload-{}", ids[4]);
    assert!(store
        .read_stream_as_of(&fifth, midpoint)
        .await
        .unwrap()
        .is_empty());
    assert_eq!(store.read_stream(&fifth).await.unwrap().len(), 1);
}

/// Records the trace id the consumer's span carries when it applies an event.
#[derive(Debug)]
struct TraceProbe;

impl Projection for TraceProbe {
    fn name(&self) -> &str {
        "trace-probe"
    }

    async fn apply(&self, tx: &mut PgConnection, e: &Envelope) -> Result<(), ApplyError> {
        let trace = hcp_bus::trace::current_trace_id();
        sqlx::query("INSERT INTO trace_probe (event_id, trace_id) VALUES ($1, $2)")
            .bind(e.event_id)
            .bind(trace)
            .execute(tx)
            .await?;
        Ok(())
    }

    async fn reset(&self, tx: &mut PgConnection) -> Result<(), sqlx::Error> {
        sqlx::query("DELETE FROM trace_probe")
            .execute(tx)
            .await
            .map(|_| ())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trace_started_before_publishing_continues_in_the_consumer() {
    hcp_tests::init_tracing();
    let env = TestEnv::new().await;
    sqlx::query("CREATE TABLE trace_probe (event_id UUID PRIMARY KEY, trace_id TEXT)")
        .execute(&env.pool)
        .await
        .unwrap();
    let store = EventStore::new(env.pool.clone());
    let id = Uuid::now_v7();
    let span = tracing::info_span!("submit_for_test");
    let (trace_id, event_id) = {
        let _g = span.enter();
        let trace_id = hcp_bus::trace::current_trace_id().expect("the test span has a trace id");
        let (tp, ts) = hcp_bus::trace::current_trace_headers();
        assert!(tp.as_deref().is_some_and(|t| t.contains(&trace_id)));
        let events = lifecycle(id);
        let event_id = events[0].event_id;
        let publish = Publish::to(env.topic(Topic::Workloads)).with_trace(tp, ts);
        (trace_id, (events, publish, event_id))
    };
    let (events, publish, event_id) = event_id;
    store
        .append_and_commit(
            &format!("workload-{id}"),
            ExpectedVersion::NoStream,
            &events[..1],
            &publish,
        )
        .await
        .unwrap();
    drop(span);

    let relay = start_relay(&env);
    let probe = start_consumer(&env, TraceProbe, Topic::Workloads);
    let read = || async {
        sqlx::query_scalar::<_, Option<String>>(
            "SELECT trace_id FROM trace_probe WHERE event_id = $1",
        )
        .bind(event_id)
        .fetch_optional(&env.pool)
        .await
        .unwrap()
    };
    let ok = wait_until(WAIT, POLL, || async { read().await.is_some() }).await;
    let seen = read().await;
    probe.stop().await;
    relay.stop().await;
    assert!(ok, "the event was consumed");
    assert_eq!(
        seen.flatten(),
        Some(trace_id),
        "same trace id on both sides of Kafka"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn market_prices_are_stored_in_a_time_partitioned_table_on_plain_postgres() {
    let env = TestEnv::new().await;
    let (storage,): (String,) =
        sqlx::query_as("SELECT storage FROM timeseries_tables WHERE table_name = 'market_prices'")
            .fetch_one(&env.pool)
            .await
            .unwrap();
    let timescale: bool = sqlx::query_scalar("SELECT hcp_timescale_enabled()")
        .fetch_one(&env.pool)
        .await
        .unwrap();
    assert_eq!(
        storage,
        if timescale {
            "hypertable"
        } else {
            "partitioned"
        }
    );
    if timescale {
        return;
    }
    let partitioned: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM pg_partitioned_table WHERE partrelid = 'market_prices'::regclass)",
    )
    .fetch_one(&env.pool)
    .await
    .unwrap();
    assert!(partitioned);

    // A live price goes through the spine into today's partition; a 2023 price into default.
    let store = EventStore::new(env.pool.clone());
    let topic = env.topic(Topic::Market);
    let now = time::OffsetDateTime::now_utc()
        .replace_nanosecond(0)
        .unwrap();
    for (at, value) in [
        (now, 42.5),
        (time::macros::datetime!(2023-08-10 20:00 UTC), 4987.25),
    ] {
        let e = Envelope::new(
            "market-ercot.rt.LZ_WEST",
            "test",
            Event::MarketPriceObserved(MarketPriceObserved {
                series: "ercot.rt.LZ_WEST".into(),
                interval_start: at,
                value,
                unit: "usd_per_mwh".into(),
            }),
        );
        store
            .append_and_commit(
                "market-ercot.rt.LZ_WEST",
                ExpectedVersion::Any,
                &[e],
                &Publish::to(&topic),
            )
            .await
            .unwrap();
    }
    let relay = start_relay(&env);
    let prices = start_consumer(&env, MarketPrices::new(), Topic::Market);
    assert!(
        wait_until(WAIT, POLL, || async {
            let n: i64 = sqlx::query_scalar("SELECT count(*) FROM market_prices")
                .fetch_one(&env.pool)
                .await
                .unwrap();
            n == 2
        })
        .await
    );
    prices.stop().await;
    relay.stop().await;
    let placed: Vec<(String, f64)> = sqlx::query_as(
        "SELECT tableoid::regclass::text, value FROM market_prices ORDER BY interval_start",
    )
    .fetch_all(&env.pool)
    .await
    .unwrap();
    assert_eq!(placed[0].0, "market_prices_default");
    assert!(placed[1].0.starts_with("market_prices_p"), "{placed:?}");

    // The spine's maintenance keeps a week ahead; it is idempotent.
    hcp_cli::app::ensure_partitions(&env.pool).await.unwrap();
    assert_eq!(hcp_cli::app::ensure_partitions(&env.pool).await.unwrap(), 0);

    // Partitions further ahead are created idempotently and old ones dropped by retention.
    let created: i32 = sqlx::query_scalar(
        "SELECT hcp_ensure_partitions('market_prices', now(), now() + interval '10 days')",
    )
    .fetch_one(&env.pool)
    .await
    .unwrap();
    assert!(created >= 1, "days 8-10 were not there yet");
    let again: i32 = sqlx::query_scalar(
        "SELECT hcp_ensure_partitions('market_prices', now(), now() + interval '10 days')",
    )
    .fetch_one(&env.pool)
    .await
    .unwrap();
    assert_eq!(again, 0);
    let dropped: i32 = sqlx::query_scalar(
        "SELECT hcp_drop_partitions_before('market_prices', date_trunc('day', now()))",
    )
    .fetch_one(&env.pool)
    .await
    .unwrap();
    assert!(
        dropped >= 1,
        "yesterday's partition is older than the cut-off"
    );
    let left: i64 = sqlx::query_scalar("SELECT count(*) FROM market_prices")
        .fetch_one(&env.pool)
        .await
        .unwrap();
    assert_eq!(
        left, 2,
        "retention dropped no partition holding current rows"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrations_are_idempotent() {
    let env = TestEnv::new().await;
    hcp_db::migrate(&env.pool).await.unwrap();
    let applied: i64 = sqlx::query_scalar("SELECT count(*) FROM _sqlx_migrations WHERE success")
        .fetch_one(&env.pool)
        .await
        .unwrap();
    assert_eq!(applied as usize, hcp_db::MIGRATOR.iter().count());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_that_lost_its_log_cannot_make_new_events_look_like_redeliveries() {
    let env = TestEnv::new().await;
    // The database remembers offsets far beyond what this (fresh) broker holds, as after a
    // broker wipe or a switch to another cluster.
    for partition in 0..env.kafka.partitions {
        hcp_db::positions::store_next_offset(
            &mut env.pool.acquire().await.unwrap(),
            "workload-board",
            &env.topic(Topic::Workloads),
            partition,
            10_000,
        )
        .await
        .unwrap();
    }
    let id = Uuid::now_v7();
    append_happy_path(&env, id).await;
    let relay = start_relay(&env);
    let board = start_consumer(&env, WorkloadBoard::new(), Topic::Workloads);
    let done = completes(&env, id).await;
    board.stop().await;
    relay.stop().await;
    assert!(
        done,
        "new events were applied, not skipped as redeliveries: {:?}",
        board_state(&env, id).await
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_offset_ahead_of_the_database_is_ignored_and_nothing_is_skipped() {
    use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
    let env = TestEnv::new().await;
    let topic = env.topic(Topic::Workloads);
    let id = Uuid::now_v7();
    // The four events one transaction each, each published before the next is appended, so
    // that they travel as four messages (one pass would pack them into one).
    let relay = start_relay(&env);
    let store = EventStore::new(env.pool.clone());
    for (i, e) in lifecycle(id).into_iter().enumerate() {
        store
            .append_and_commit(
                &format!("workload-{id}"),
                if i == 0 {
                    ExpectedVersion::NoStream
                } else {
                    ExpectedVersion::Exact(i as i64)
                },
                std::slice::from_ref(&e),
                &Publish::to(&topic),
            )
            .await
            .unwrap();
        assert_eq!(
            read_events(&env.kafka, &topic, i + 1, WAIT).await.len(),
            i + 1
        );
    }
    let wire = read_events(&env.kafka, &topic, 4, WAIT).await;
    assert_eq!(wire.len(), 4);
    assert!(wire.iter().all(|w| w.in_message == 1));
    let partition = wire[0].partition;

    // The broker's committed offset for the group says every event was handled (the four
    // may travel in one packed message); PostgreSQL, the truth, says nothing was.
    let group = format!("{}.workload-board", env.kafka.namespace);
    let committer: BaseConsumer = env.kafka.consumer_config(&group, &group).create().unwrap();
    let mut tpl = rdkafka::TopicPartitionList::new();
    tpl.add_partition_offset(&topic, partition, rdkafka::Offset::Offset(wire[2].offset))
        .unwrap();
    committer.commit(&tpl, CommitMode::Sync).unwrap();
    drop(committer);

    let board = start_consumer(&env, WorkloadBoard::new(), Topic::Workloads);
    let done = completes(&env, id).await;
    board.stop().await;
    relay.stop().await;
    assert!(
        done,
        "all four events applied: {:?}",
        board_state(&env, id).await
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_market_line_shows_the_latest_value_of_each_deciding_series() {
    let env = TestEnv::new().await;
    assert_eq!(hcp_cli::app::market_status(&env.pool).await.unwrap(), None);
    for (series, at, value, unit) in [
        (
            "ercot.dam.LZ_WEST",
            "2023-08-24T00:00:00Z",
            1189.85,
            "usd_per_mwh",
        ),
        (
            "ercot.dam.LZ_WEST",
            "2023-08-24T17:00:00Z",
            80.48,
            "usd_per_mwh",
        ),
        (
            "btc.hashprice",
            "2023-08-24T00:00:00Z",
            62.06,
            "usd_per_ph_day",
        ),
        ("grid.load", "2023-08-24T18:00:00Z", 80000.0, "mw"),
    ] {
        sqlx::query(
            "INSERT INTO market_prices (series, interval_start, value, unit) \
             VALUES ($1, $2::timestamptz, $3, $4)",
        )
        .bind(series)
        .bind(at)
        .bind(value)
        .bind(unit)
        .execute(&env.pool)
        .await
        .unwrap();
    }
    assert_eq!(
        hcp_cli::app::market_status(&env.pool)
            .await
            .unwrap()
            .as_deref(),
        Some(
            "market: btc.hashprice 62.06 @ 2023-08-24T00:00:00Z, \
             ercot.dam.LZ_WEST 80.48 @ 2023-08-24T17:00:00Z"
        )
    );
}

/// Whether another session of the test's database is (or, within 10 s, starts) waiting on a
/// lock: how a test sees that a second writer blocked, without sleeping.
async fn a_session_waits_on_a_lock(env: &TestEnv) -> bool {
    wait_until(
        Duration::from_secs(10),
        Duration::from_millis(5),
        || async {
            sqlx::query_scalar::<_, i64>(
                "SELECT count(*) FROM pg_stat_activity \
             WHERE datname = current_database() AND wait_event_type = 'Lock'",
            )
            .fetch_one(&env.pool)
            .await
            .unwrap_or(0)
                > 0
        },
    )
    .await
}

#[tokio::test]
async fn a_batch_locks_the_offsets_of_all_its_partitions_at_once_and_stores_them_together() {
    use hcp_db::positions::{lock_next_offsets, next_offset, store_next_offsets};
    let env = TestEnv::new().await;
    let parts =
        |ps: &[i32]| -> Vec<(String, i32)> { ps.iter().map(|p| ("t".to_owned(), *p)).collect() };
    // Nothing stored yet: the rows are created, and read as "nothing stored".
    let mut tx = env.pool.begin().await.unwrap();
    let stored = lock_next_offsets(&mut tx, "c", &parts(&[2, 0, 1]))
        .await
        .unwrap();
    assert_eq!(stored.len(), 3);
    assert!(stored.values().all(Option::is_none), "{stored:?}");
    store_next_offsets(
        &mut tx,
        "c",
        &[
            (("t".into(), 0), 10),
            (("t".into(), 1), 20),
            (("t".into(), 2), 5),
        ],
    )
    .await
    .unwrap();
    tx.commit().await.unwrap();
    // Never backwards: a lower offset stored later keeps the higher one.
    let mut tx = env.pool.begin().await.unwrap();
    store_next_offsets(&mut tx, "c", &[(("t".into(), 1), 3)])
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let mut conn = env.pool.acquire().await.unwrap();
    assert_eq!(next_offset(&mut conn, "c", "t", 1).await.unwrap(), Some(20));
    drop(conn);

    // A second batch sharing a partition waits for the first's commit, then sees its offsets.
    let mut tx1 = env.pool.begin().await.unwrap();
    let first = lock_next_offsets(&mut tx1, "c", &parts(&[0, 1]))
        .await
        .unwrap();
    assert_eq!(first[&("t".to_owned(), 0)], Some(10));
    let pool = env.pool.clone();
    let second = tokio::spawn(async move {
        let mut tx2 = pool.begin().await.unwrap();
        let seen = lock_next_offsets(&mut tx2, "c", &[("t".to_owned(), 1), ("t".to_owned(), 2)])
            .await
            .unwrap();
        tx2.commit().await.unwrap();
        seen
    });
    let waiting = a_session_waits_on_a_lock(&env).await;
    assert!(
        waiting,
        "the second batch never waited on the shared partition"
    );
    assert!(
        !second.is_finished(),
        "the second batch must wait for the first"
    );
    store_next_offsets(&mut tx1, "c", &[(("t".into(), 1), 25)])
        .await
        .unwrap();
    tx1.commit().await.unwrap();
    let seen = second.await.unwrap();
    assert_eq!(seen[&("t".to_owned(), 1)], Some(25));
    assert_eq!(seen[&("t".to_owned(), 2)], Some(5));
}

/// Appends a workload's submission alone (the stream's first and last event).
async fn append_submission(env: &TestEnv, id: Uuid) {
    let submitted = lifecycle(id).remove(0);
    assert_eq!(
        submitted.event_type(),
        hcp_events::EventType::WorkloadSubmitted
    );
    EventStore::new(env.pool.clone())
        .append_and_commit(
            &format!("workload-{id}"),
            ExpectedVersion::NoStream,
            &[submitted],
            &Publish::to(env.topic(Topic::Workloads)),
        )
        .await
        .unwrap();
}

fn workload_ids(events: &[hcp_db::RecordedEvent]) -> Vec<Uuid> {
    events
        .iter()
        .map(|r| r.envelope.payload.workload_id().expect("a workload event"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_log_tail_is_woken_at_commit_and_returns_only_new_events_still_last_of_their_stream() {
    let env = TestEnv::new().await;
    let token = tokio_util::sync::CancellationToken::new();
    // Recorded before the tail started: the consumer's to apply, never the tail's.
    let earlier = Uuid::now_v7();
    append_submission(&env, earlier).await;
    let mut tail = hcp_db::LogTail::start(env.pool.clone(), &["workload.submitted"], 2)
        .await
        .unwrap();

    // A new submission wakes the tail at its commit (the idle look is an hour away).
    let fresh = Uuid::now_v7();
    let waiting = tail.next(Duration::from_secs(3600), &token);
    let (got, ()) = tokio::join!(
        tokio::time::timeout(WAIT, waiting),
        append_submission(&env, fresh)
    );
    let got = got
        .expect("the commit's NOTIFY woke the tail")
        .unwrap()
        .unwrap();
    assert_eq!(workload_ids(&got), vec![fresh]);
    assert!(tail.read().await.unwrap().is_empty(), "read twice");

    // A submission that its stream moved past before the tail read it is left to the consumer;
    // events of other types are not returned.
    let moved = Uuid::now_v7();
    append_happy_path(&env, moved).await;
    let (a, b, c) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
    for id in [a, b, c] {
        append_submission(&env, id).await;
    }
    // Two at a time (the tail's page), in log order, then the rest.
    assert_eq!(workload_ids(&tail.read().await.unwrap()), vec![a, b]);
    assert_eq!(workload_ids(&tail.read().await.unwrap()), vec![c]);
    assert!(tail.read().await.unwrap().is_empty());

    token.cancel();
    assert!(
        tail.next(Duration::from_secs(3600), &token)
            .await
            .unwrap()
            .is_none(),
        "a cancelled tail returns nothing"
    );
}
