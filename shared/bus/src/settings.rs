//! Client settings. Defaults favour milliseconds of latency on a single-node broker; see
//! docs/adr/0001-kafka-broker.md for the measurements behind them.

use rdkafka::ClientConfig;
use serde::Deserialize;

/// The `[kafka]` configuration section.
#[derive(Debug, Clone, Deserialize)]
pub struct KafkaSettings {
    /// `host:port[,host:port]`.
    pub brokers: String,
    /// Topic namespace: topics are `<namespace>.<base>`.
    #[serde(default = "default_namespace")]
    pub namespace: String,
    /// Partitions for topics HCP creates.
    #[serde(default = "default_partitions")]
    pub partitions: i32,
    /// Replication factor for topics HCP creates.
    #[serde(default = "default_replication")]
    pub replication_factor: i32,
    /// Producer batching delay. None: the producers hand over whole batches.
    #[serde(default = "default_linger_ms")]
    pub linger_ms: u32,
    /// Whether the outbox relay and the GPU workers pack the events bound for one partition
    /// into one message ([`hcp_events::pack`]). Readers of this version read both forms; turn
    /// it off while readers older than packing still run (a rolling upgrade).
    #[serde(default = "default_pack")]
    pub pack: bool,
    /// How long the broker may hold a fetch waiting for data. The default 500 ms puts every
    /// message ~250 ms late on brokers that do not answer a waiting fetch early.
    #[serde(default = "default_fetch_wait_max_ms")]
    pub fetch_wait_max_ms: u32,
    /// Group session timeout. Some brokers hold JoinGroup for half of it, so keep it short.
    #[serde(default = "default_session_timeout_ms")]
    pub session_timeout_ms: u32,
    /// Extra librdkafka properties (`[kafka.extra]`), applied last.
    #[serde(default)]
    pub extra: std::collections::BTreeMap<String, String>,
}

fn default_pack() -> bool {
    true
}
fn default_namespace() -> String {
    "hcp".into()
}
fn default_partitions() -> i32 {
    3
}
fn default_replication() -> i32 {
    1
}
fn default_linger_ms() -> u32 {
    0
}
fn default_fetch_wait_max_ms() -> u32 {
    10
}
fn default_session_timeout_ms() -> u32 {
    6000
}

impl KafkaSettings {
    /// Settings for `brokers` with defaults.
    pub fn new(brokers: impl Into<String>) -> Self {
        Self {
            brokers: brokers.into(),
            namespace: default_namespace(),
            partitions: default_partitions(),
            replication_factor: default_replication(),
            linger_ms: default_linger_ms(),
            pack: default_pack(),
            fetch_wait_max_ms: default_fetch_wait_max_ms(),
            session_timeout_ms: default_session_timeout_ms(),
            extra: Default::default(),
        }
    }

    /// The concrete name of a topic in this namespace.
    pub fn topic(&self, topic: hcp_events::Topic) -> String {
        topic.name_in(&self.namespace)
    }

    fn base(&self, client_id: &str) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.brokers)
            .set("client.id", client_id)
            .set("socket.nagle.disable", "true");
        c
    }

    fn finish(&self, mut c: ClientConfig) -> ClientConfig {
        for (k, v) in &self.extra {
            c.set(k, v);
        }
        c
    }

    /// Producer configuration: idempotent, `acks=all`, ordered retries.
    pub fn producer_config(&self, client_id: &str) -> ClientConfig {
        let mut c = self.base(client_id);
        c.set("enable.idempotence", "true")
            .set("acks", "all")
            .set("max.in.flight.requests.per.connection", "5")
            .set("linger.ms", self.linger_ms.to_string())
            .set("message.timeout.ms", "30000")
            .set("compression.type", "none");
        let mut c = self.finish(c);
        // Packed and single messages must agree on a key's partition
        // (`crate::pack::partition_of` computes this partitioner's choice).
        c.set("partitioner", "consistent_random");
        c
    }

    /// Consumer configuration: manual commits (the database is the truth), earliest reset.
    pub fn consumer_config(&self, client_id: &str, group_id: &str) -> ClientConfig {
        let mut c = self.base(client_id);
        c.set("group.id", group_id)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            .set("fetch.wait.max.ms", self.fetch_wait_max_ms.to_string())
            .set("session.timeout.ms", self.session_timeout_ms.to_string())
            .set(
                "heartbeat.interval.ms",
                (self.session_timeout_ms / 3).max(100).to_string(),
            )
            .set("enable.partition.eof", "false");
        self.finish(c)
    }

    /// Admin client configuration.
    pub fn admin_config(&self, client_id: &str) -> ClientConfig {
        self.finish(self.base(client_id))
    }
}
