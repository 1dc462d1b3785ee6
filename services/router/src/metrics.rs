//! Metric names of the router, in one place, with their descriptions.

/// Gauge: queued workloads per priority (label `priority`, 1-10).
pub const QUEUE_DEPTH: &str = "hcp_router_queue_depth";
/// Counter: placements proposed to the resource-manager.
pub const PLACEMENTS: &str = "hcp_router_placements_total";
/// Counter: workloads preempted for real-time work.
pub const PREEMPTIONS: &str = "hcp_router_preemptions_total";
/// Counter: refusals (label `reason`: see [`Rejection`]).
pub const REJECTIONS: &str = "hcp_router_rejections_total";
/// Histogram: one placement pass, from loading state to appending proposals (seconds).
pub const PLACEMENT_PASS: &str = "hcp_router_placement_pass_seconds";
/// Histogram: submission (envelope time) to classification (seconds).
pub const SUBMIT_TO_QUEUED: &str = "hcp_router_submit_to_queued_seconds";
/// Counter: submissions folded from the event store ahead of the consumer.
pub const TAKEN_AHEAD: &str = "hcp_router_submissions_taken_ahead_total";
/// Gauge: workers per breaker state (label `state`).
pub const BREAKERS: &str = "hcp_router_breakers";

/// The `reason` label of [`REJECTIONS`]: low-cardinality, one per cause.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejection {
    /// No worker of the fleet could ever hold the request.
    Infeasible,
    /// The resource-manager refused a placement; it will be retried.
    PlacementRetryable,
    /// The resource-manager refused a placement for good.
    PlacementFinal,
    /// Too many refused placements.
    MaxAttempts,
    /// The deadline passed while queued.
    Deadline,
}

impl Rejection {
    /// The label value.
    pub const fn as_str(self) -> &'static str {
        match self {
            Rejection::Infeasible => "infeasible",
            Rejection::PlacementRetryable => "placement_retryable",
            Rejection::PlacementFinal => "placement_final",
            Rejection::MaxAttempts => "max_attempts",
            Rejection::Deadline => "deadline",
        }
    }
}

/// Counts one refusal.
pub fn rejected(reason: Rejection) {
    metrics::counter!(REJECTIONS, "reason" => reason.as_str()).increment(1);
}

/// The `priority` label values, so that no label string is built per update.
pub const PRIORITY_LABELS: [&str; 10] = ["1", "2", "3", "4", "5", "6", "7", "8", "9", "10"];

/// Registers descriptions (help text and units) with the global recorder.
pub fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_gauge!(
        QUEUE_DEPTH,
        Unit::Count,
        "Queued workloads per priority level."
    );
    describe_counter!(
        PLACEMENTS,
        Unit::Count,
        "Placements proposed to the resource-manager."
    );
    describe_counter!(
        TAKEN_AHEAD,
        Unit::Count,
        "Submissions folded from the event store as they committed, ahead of the consumer."
    );
    describe_counter!(
        PREEMPTIONS,
        Unit::Count,
        "Running workloads preempted to make room for real-time work."
    );
    describe_counter!(
        REJECTIONS,
        Unit::Count,
        "Workloads refused or placements refused, by reason."
    );
    describe_histogram!(
        PLACEMENT_PASS,
        Unit::Seconds,
        "One placement pass: load changes, place, preempt, append proposals."
    );
    describe_histogram!(
        SUBMIT_TO_QUEUED,
        Unit::Seconds,
        "From workload.submitted (envelope time) to its classification."
    );
    describe_gauge!(BREAKERS, Unit::Count, "Workers per circuit-breaker state.");
}
