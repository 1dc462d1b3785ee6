//! The gateway's metric names, in one place, with their descriptions.

/// Counter: HTTP requests by route template and status code.
pub const REQUESTS: &str = "hcp_gateway_requests_total";
/// Histogram: HTTP request duration by route template (seconds).
pub const REQUEST_DURATION: &str = "hcp_gateway_request_seconds";
/// Counter: workloads accepted (new `workload.submitted` events) by source (`rest`, `kafka`).
pub const SUBMISSIONS: &str = "hcp_gateway_submissions_total";
/// Counter: requests refused, by reason (the error code: `validation`, `rate_limited`, ...).
pub const REJECTIONS: &str = "hcp_gateway_rejections_total";
/// Counter: Kafka requests replayed (same tenant and request id, no new event).
pub const INTAKE_DUPLICATES: &str = "hcp_gateway_intake_duplicates_total";
/// Histogram: time to handle one intake batch in its transaction (seconds).
pub const INTAKE_BATCH_DURATION: &str = "hcp_gateway_intake_batch_seconds";

/// Histogram: REST submissions recorded together in one group-commit transaction.
pub const GROUP_COMMIT_SIZE: &str = "hcp_gateway_group_commit_size";

/// Registers descriptions (help text and units) with the global recorder.
pub fn describe() {
    use metrics::{describe_counter, describe_histogram, Unit};
    describe_counter!(
        REQUESTS,
        Unit::Count,
        "HTTP requests handled, by route template and status code."
    );
    describe_histogram!(
        REQUEST_DURATION,
        Unit::Seconds,
        "Time to handle an HTTP request, by route template."
    );
    describe_histogram!(
        GROUP_COMMIT_SIZE,
        Unit::Count,
        "REST submissions recorded together in one group-commit transaction."
    );
    describe_counter!(
        SUBMISSIONS,
        Unit::Count,
        "Workloads accepted (new workload.submitted events), by source."
    );
    describe_counter!(
        REJECTIONS,
        Unit::Count,
        "Requests refused (HTTP 4xx or dead-lettered Kafka requests), by reason."
    );
    describe_counter!(
        INTAKE_DUPLICATES,
        Unit::Count,
        "Kafka requests whose tenant and request id were already accepted (no new event)."
    );
    describe_histogram!(
        INTAKE_BATCH_DURATION,
        Unit::Seconds,
        "Time to handle one batch of Kafka requests in its transaction."
    );
}
