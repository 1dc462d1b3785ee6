//! Names that appear on the wire: Kafka topics and header keys. Nothing else in HCP spells them.

/// Every topic HCP uses, by purpose. The concrete name is `<namespace>.<base>`, so that tests
/// (and several HCP installations sharing one cluster) can run side by side.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Topic {
    /// Untrusted submissions from customers (REST gateway or direct Kafka producers).
    WorkloadRequests,
    /// Workload lifecycle events.
    Workloads,
    /// Inventory, allocation and health events.
    Resources,
    /// Prices, hashprice, carbon, grid signals.
    Market,
    /// Per-device samples (ASIC and GPU).
    Telemetry,
    /// Optimizer decisions.
    Decisions,
    /// Commands to devices and workers.
    DeviceCommands,
    /// Heartbeats and run reports from workers (not stored in the event log).
    WorkerReports,
    /// Poison messages with the reason they were rejected.
    DeadLetters,
}

impl Topic {
    /// All topics, in a stable order (used for idempotent creation at startup).
    pub const ALL: [Topic; 9] = [
        Topic::WorkloadRequests,
        Topic::Workloads,
        Topic::Resources,
        Topic::Market,
        Topic::Telemetry,
        Topic::Decisions,
        Topic::DeviceCommands,
        Topic::WorkerReports,
        Topic::DeadLetters,
    ];

    /// The base name, without namespace.
    pub const fn base(self) -> &'static str {
        match self {
            Topic::WorkloadRequests => "workload-requests",
            Topic::Workloads => "workloads",
            Topic::Resources => "resources",
            Topic::Market => "market",
            Topic::Telemetry => "telemetry",
            Topic::Decisions => "decisions",
            Topic::DeviceCommands => "device-commands",
            Topic::WorkerReports => "worker-reports",
            Topic::DeadLetters => "dead-letters",
        }
    }

    /// The concrete topic name in a namespace, e.g. `hcp.workloads`.
    pub fn name_in(self, namespace: &str) -> String {
        format!("{namespace}.{}", self.base())
    }
}

/// Kafka header keys.
pub mod headers {
    /// The event type, e.g. `workload.submitted`.
    pub const EVENT_TYPE: &str = "hcp-event-type";
    /// The payload schema version.
    pub const SCHEMA_VERSION: &str = "hcp-schema-version";
    /// The event id (UUID).
    pub const EVENT_ID: &str = "hcp-event-id";
    /// W3C trace context.
    pub const TRACEPARENT: &str = "traceparent";
    /// W3C trace state.
    pub const TRACESTATE: &str = "tracestate";
    /// A packed message ([`crate::pack`]): how many events it carries. Such a message has no
    /// per-event headers; each item carries its own trace context.
    pub const PACKED: &str = "hcp-packed";
    /// Dead letters: the index of the refused event within a packed message (the dead letter
    /// holds that event alone).
    pub const DLQ_PACKED_INDEX: &str = "hcp-dlq-packed-index";
    /// Dead letters: why the message was rejected.
    pub const DLQ_REASON: &str = "hcp-dlq-reason";
    /// Dead letters: the class of rejection (`malformed`, `unsupported-version`, `poison`).
    pub const DLQ_KIND: &str = "hcp-dlq-kind";
    /// Dead letters: where the original message came from.
    pub const DLQ_SOURCE_TOPIC: &str = "hcp-dlq-source-topic";
    /// Dead letters: source partition.
    pub const DLQ_SOURCE_PARTITION: &str = "hcp-dlq-source-partition";
    /// Dead letters: source offset.
    pub const DLQ_SOURCE_OFFSET: &str = "hcp-dlq-source-offset";
    /// Dead letters: the consumer group that rejected it.
    pub const DLQ_CONSUMER: &str = "hcp-dlq-consumer";
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_names_are_namespaced_and_unique() {
        let names: std::collections::HashSet<String> =
            Topic::ALL.iter().map(|t| t.name_in("hcp")).collect();
        assert_eq!(names.len(), Topic::ALL.len());
        assert!(names.contains("hcp.workload-requests"));
        assert_eq!(Topic::DeadLetters.name_in("t-42"), "t-42.dead-letters");
    }
}
