//! hcp-gateway: REST API (/api/v1) and Kafka intake: tenants, API keys, rate limits, idempotent submission, workload and resource reads.
