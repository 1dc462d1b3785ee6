//! Builders for test events and in-process spine parts.
#![allow(clippy::expect_used)]

use hcp_bus::transactional::{ConsumerSettings, KafkaOutboxSink, TransactionalConsumer};
use hcp_bus::Producer;
use hcp_db::{OutboxRelay, Projection, RelaySettings};
use hcp_events::{Envelope, Topic};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::TestEnv;

/// The four-event happy path of one workload, sequences unassigned.
pub fn lifecycle(id: Uuid) -> Vec<Envelope> {
    hcp_cli::generator::happy_path(id, "acme", "test")
}

/// A running in-process component.
#[derive(Debug)]
pub struct Running {
    token: CancellationToken,
    handle: JoinHandle<()>,
}

impl Running {
    /// Cancels and waits for a clean stop.
    pub async fn stop(self) {
        self.token.cancel();
        let _ = self.handle.await;
    }
}

/// Starts the outbox relay in-process.
pub fn start_relay(env: &TestEnv) -> Running {
    let producer = Producer::new(&env.kafka, "test-relay").expect("producer");
    let relay = OutboxRelay::new(
        env.pool.clone(),
        KafkaOutboxSink(producer),
        RelaySettings::default(),
    );
    let token = CancellationToken::new();
    let t = token.clone();
    let handle = tokio::spawn(async move {
        relay.run(t).await.expect("relay");
    });
    Running { token, handle }
}

/// Starts a transactional consumer of `topic` for `projection` in-process.
pub fn start_consumer<P: Projection + 'static>(
    env: &TestEnv,
    projection: P,
    topic: Topic,
) -> Running {
    let producer = Producer::new(&env.kafka, "test-dlq").expect("producer");
    let settings = ConsumerSettings::new(
        format!("{}.{}", env.kafka.namespace, projection.name()),
        vec![env.topic(topic)],
        env.topic(Topic::DeadLetters),
    );
    let consumer = TransactionalConsumer::for_projection(
        &env.kafka,
        settings,
        env.pool.clone(),
        projection,
        producer,
    )
    .expect("consumer");
    let token = CancellationToken::new();
    let t = token.clone();
    let handle = tokio::spawn(async move {
        consumer.run(t).await.expect("consumer");
    });
    Running { token, handle }
}
