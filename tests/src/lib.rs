//! Test harness: every test gets its own database (random name, migrated) on the real
//! PostgreSQL and its own topic namespace (hence its own topics and consumer groups) on the
//! real broker. Nothing here fakes either.
//!
//! The stack comes from `make test` (`scripts/stack.sh up --profile test`); the addresses are
//! read from `HCP_TEST_DATABASE_URL` (an admin URL) and `HCP_TEST_KAFKA_BROKERS`.

// A test harness: failing loudly with a message is the point.
#![allow(clippy::expect_used, clippy::unwrap_used)]

pub mod cluster;
pub mod fixtures;

use std::future::Future;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use hcp_bus::KafkaSettings;
use hcp_db::sqlx::{self, Connection, PgConnection, PgPool};
use hcp_db::DatabaseSettings;
use hcp_events::Topic;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::OwnedMessage;
use rdkafka::{Message, Offset, TopicPartitionList};

/// Admin URL of the test PostgreSQL.
pub fn admin_database_url() -> String {
    std::env::var("HCP_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://hcp:hcp@127.0.0.1:55432/postgres".into())
}

/// Bootstrap servers of the test broker.
pub fn test_brokers() -> String {
    std::env::var("HCP_TEST_KAFKA_BROKERS").unwrap_or_else(|_| "127.0.0.1:59192".into())
}

/// One test's isolated world.
#[derive(Debug)]
pub struct TestEnv {
    /// URL of the test's own database.
    pub database_url: String,
    /// Pool on it (migrated).
    pub pool: PgPool,
    /// Kafka settings with the test's own namespace.
    pub kafka: KafkaSettings,
}

impl TestEnv {
    /// Creates a fresh database and namespace, migrates, and creates the topics.
    pub async fn new() -> Self {
        let suffix = uuid::Uuid::new_v4().simple().to_string()[..12].to_owned();
        let db = format!("hcp_test_{suffix}");
        let admin = admin_database_url();
        let mut conn = PgConnection::connect(&admin).await.unwrap_or_else(|e| {
            panic!("cannot reach the test PostgreSQL at {admin} ({e}); run `make stack-up-test`")
        });
        sqlx::query(&format!("CREATE DATABASE {db}"))
            .execute(&mut conn)
            .await
            .expect("create test database");
        let database_url = match admin.rsplit_once('/') {
            Some((base, _)) => format!("{base}/{db}"),
            None => panic!("bad admin URL {admin}"),
        };
        let pool = hcp_db::connect(&DatabaseSettings::from_url(&database_url))
            .await
            .expect("connect to test database");
        hcp_db::migrate(&pool).await.expect("migrate");
        let mut kafka = KafkaSettings::new(test_brokers());
        kafka.namespace = format!("t{suffix}");
        hcp_bus::admin::ensure_all_topics(&kafka)
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "cannot create topics on {} ({e}); run `make stack-up-test`",
                    kafka.brokers
                )
            });
        Self {
            database_url,
            pool,
            kafka,
        }
    }

    /// Concrete topic name.
    pub fn topic(&self, t: Topic) -> String {
        self.kafka.topic(t)
    }

    /// Starts `<binary> spine --roles <roles>` (the `hcp-node` binary, whose path only
    /// integration tests know: `env!("CARGO_BIN_EXE_hcp-node")`) against this world.
    pub fn spawn_node(&self, binary: &str, roles: &str) -> Child {
        let log = std::env::temp_dir().join(format!("{}-{roles}.log", self.kafka.namespace));
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .expect("node log");
        Command::new(binary)
            .args(["spine", "--roles", roles])
            .env("HCP_DATABASE__URL", &self.database_url)
            .env("HCP_KAFKA__BROKERS", &self.kafka.brokers)
            .env("HCP_KAFKA__NAMESPACE", &self.kafka.namespace)
            .env("HCP_ADMIN__PORT", "0")
            .env("HCP_TELEMETRY__LOG_FILTER", "info")
            .stdout(Stdio::null())
            .stderr(
                file.try_clone()
                    .map(Stdio::from)
                    .unwrap_or_else(|_| Stdio::null()),
            )
            .spawn()
            .expect("spawn hcp-node")
    }
}

/// SIGKILLs a child and reaps it.
pub fn kill_hard(child: &mut Child) {
    let _ = child.kill(); // SIGKILL on Unix
    let _ = child.wait();
}

/// Polls `check` every `interval` until it returns true or `timeout` passes. Returns whether it
/// became true. Never use a bare sleep to wait for eventual consistency.
pub async fn wait_until<F, Fut>(timeout: Duration, interval: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if check().await {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(interval).await;
    }
}

/// A group-less reader assigned to every partition of `topic` from the beginning.
fn reader_from_beginning(kafka: &KafkaSettings, topic: &str) -> StreamConsumer {
    let group = format!("reader-{}", uuid::Uuid::new_v4().simple());
    let consumer: StreamConsumer = kafka
        .consumer_config(&group, &group)
        .create()
        .expect("reader");
    let meta = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .expect("metadata");
    let mut tpl = TopicPartitionList::new();
    for p in meta.topics().iter().flat_map(|t| t.partitions()) {
        tpl.add_partition_offset(topic, p.id(), Offset::Beginning)
            .expect("tpl");
    }
    consumer.assign(&tpl).expect("assign");
    consumer
}

/// Reads every message of `topic` from the beginning until `at_least` arrived or `timeout`.
pub async fn read_topic(
    kafka: &KafkaSettings,
    topic: &str,
    at_least: usize,
    timeout: Duration,
) -> Vec<OwnedMessage> {
    read_until(kafka, topic, timeout, |read| read.len() >= at_least).await
}

/// Reads `topic` from the beginning until `enough` says so (asked before each message, with
/// what was read) or `timeout` passes.
async fn read_until(
    kafka: &KafkaSettings,
    topic: &str,
    timeout: Duration,
    mut enough: impl FnMut(&[OwnedMessage]) -> bool,
) -> Vec<OwnedMessage> {
    let consumer = reader_from_beginning(kafka, topic);
    let mut out = Vec::new();
    let deadline = tokio::time::Instant::now() + timeout;
    while !enough(&out) {
        match tokio::time::timeout_at(deadline, consumer.recv()).await {
            Ok(Ok(m)) => out.push(m.detach()),
            Ok(Err(e)) => panic!("reading {topic}: {e}"),
            Err(_) => break,
        }
    }
    out
}

/// The events a message carries: one, or each of a packed message's.
fn events_of<'m>(m: &'m OwnedMessage, topic: &str) -> Vec<hcp_events::pack::Item<'m>> {
    hcp_events::pack::items(m.payload().unwrap_or_default())
        .unwrap_or_else(|e| panic!("reading {topic}: {e}"))
}

/// One event read off a topic, packed or not.
#[derive(Debug, Clone)]
pub struct WireEvent {
    /// The partition of its message.
    pub partition: i32,
    /// The offset of its message.
    pub offset: i64,
    /// How many events its message carried.
    pub in_message: usize,
    /// The event.
    pub envelope: hcp_events::Envelope,
}

/// Reads `topic` from the beginning until at least `at_least` events (not messages: a packed
/// message carries several) arrived or `timeout` passed. Panics on an undecodable event.
pub async fn read_events(
    kafka: &KafkaSettings,
    topic: &str,
    at_least: usize,
    timeout: Duration,
) -> Vec<WireEvent> {
    let mut counted = (0, 0); // (messages, events)
    let messages = read_until(kafka, topic, timeout, |read| {
        for m in &read[counted.0..] {
            counted.1 += events_of(m, topic).len();
        }
        counted.0 = read.len();
        counted.1 >= at_least
    })
    .await;
    let mut out = Vec::new();
    for m in &messages {
        let items = events_of(m, topic);
        let n = items.len();
        for item in items {
            out.push(WireEvent {
                partition: m.partition(),
                offset: m.offset(),
                in_message: n,
                envelope: item
                    .decode()
                    .unwrap_or_else(|e| panic!("reading {topic}: {e}")),
            });
        }
    }
    out
}

/// Total messages in a topic, counted by reading it from the beginning until it has been idle
/// for two seconds. (Counting by watermarks is not possible on nisshi: its high watermark
/// trails the log; see docs/adr/0001-kafka-broker.md.)
pub async fn count_messages(kafka: &KafkaSettings, topic: &str) -> i64 {
    count_read(kafka, topic, |_| 1).await
}

/// Total events in a topic (a packed message counts the events it carries), read as
/// [`count_messages`] reads.
pub async fn count_events(kafka: &KafkaSettings, topic: &str) -> i64 {
    count_read(kafka, topic, |m| {
        hcp_events::pack::items(m.payload().unwrap_or_default())
            .map_or(1, |items| items.len() as i64)
    })
    .await
}

/// Sums `weight` over every message of `topic`, read until it has been idle for two seconds.
async fn count_read(
    kafka: &KafkaSettings,
    topic: &str,
    weight: impl Fn(&rdkafka::message::BorrowedMessage<'_>) -> i64,
) -> i64 {
    let consumer = reader_from_beginning(kafka, topic);
    let mut n = 0;
    while let Ok(Ok(m)) = tokio::time::timeout(Duration::from_secs(2), consumer.recv()).await {
        n += weight(&m);
    }
    n
}

/// The key of a message as text.
pub fn key_of(m: &OwnedMessage) -> String {
    String::from_utf8_lossy(m.key().unwrap_or_default()).into_owned()
}

/// Installs logs + tracing (with OpenTelemetry ids) once per test process.
pub fn init_tracing() {
    static ONCE: std::sync::OnceLock<()> = std::sync::OnceLock::new();
    ONCE.get_or_init(|| {
        let settings = hcp_telemetry::TelemetrySettings {
            log_filter: "warn".into(),
            ..Default::default()
        };
        if let Ok(guard) = hcp_telemetry::init_tracing("hcp-tests", &settings) {
            // Keep the provider alive for the whole process.
            std::mem::forget(guard);
        }
    });
}
