//! Idempotent topic creation at startup.

use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::types::RDKafkaErrorCode;

use crate::{BusError, KafkaSettings};

/// Creates `topics` (concrete names) unless they exist. Safe to call from every instance at
/// every start.
pub async fn ensure_topics(settings: &KafkaSettings, topics: &[String]) -> Result<(), BusError> {
    let admin: AdminClient<DefaultClientContext> = settings
        .admin_config("hcp-admin")
        .create()
        .map_err(|e| BusError::Config(e.to_string()))?;
    let new: Vec<NewTopic<'_>> = topics
        .iter()
        .map(|t| {
            NewTopic::new(
                t,
                settings.partitions,
                TopicReplication::Fixed(settings.replication_factor),
            )
        })
        .collect();
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    let results = admin
        .create_topics(&new, &opts)
        .await
        .map_err(|e| BusError::Admin(e.to_string()))?;
    for r in results {
        match r {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, code)) => {
                return Err(BusError::Admin(format!("creating topic {topic}: {code}")))
            }
        }
    }
    Ok(())
}

/// Creates every HCP topic of the namespace.
pub async fn ensure_all_topics(settings: &KafkaSettings) -> Result<Vec<String>, BusError> {
    let names: Vec<String> = hcp_events::Topic::ALL
        .iter()
        .map(|t| settings.topic(*t))
        .collect();
    ensure_topics(settings, &names).await?;
    Ok(names)
}
