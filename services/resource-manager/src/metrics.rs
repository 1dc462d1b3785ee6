//! Metric names (one place) and their descriptions.

/// Workloads placed on GPUs (counter).
pub const ALLOCATIONS: &str = "hcp_rm_allocations_total";
/// Proposals refused, by `reason` (counter).
pub const REJECTIONS: &str = "hcp_rm_rejections_total";
/// Live GPU allocations (gauge, refreshed by the health sweep).
pub const ACTIVE_ALLOCATIONS: &str = "hcp_rm_active_allocations";
/// Workers by `state` (gauge, refreshed by the health sweep).
pub const WORKERS: &str = "hcp_rm_workers";
/// Workloads sent back to the queue, by `reason` (counter).
pub const REQUEUES: &str = "hcp_rm_requeues_total";
/// From the proposal's timestamp to the scheduling decision (histogram, seconds).
pub const PROPOSE_TO_SCHEDULED: &str = "hcp_rm_propose_to_scheduled_seconds";
/// Run reports ignored (stale, duplicate, not allocated to the reporter), by `reason`.
pub const IGNORED_REPORTS: &str = "hcp_rm_ignored_reports_total";
/// Proposals that could not be answered because the workload left the queue (counter).
pub const UNANSWERABLE_PROPOSALS: &str = "hcp_rm_unanswerable_proposals_total";
/// Stop commands sent for runs a worker holds without an allocation (counter).
pub const ZOMBIE_STOPS: &str = "hcp_rm_zombie_stops_total";
/// Heartbeats that repeated the last stored one and were not written (counter).
pub const HEARTBEATS_UNCHANGED: &str = "hcp_rm_heartbeats_unchanged_total";
/// Heartbeats stored set-based with others of their consumer batch (counter).
pub const HEARTBEATS_STORED_TOGETHER: &str = "hcp_rm_heartbeats_stored_together_total";
/// Workers registered or re-registered (counter).
pub const REGISTRATIONS: &str = "hcp_rm_registrations_total";
/// Workers declared lost (counter).
pub const WORKERS_LOST: &str = "hcp_rm_workers_lost_total";
/// Duration of one health sweep (histogram, seconds).
pub const SWEEP_DURATION: &str = "hcp_rm_sweep_seconds";

/// Describes every metric (call once at startup).
pub fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_counter!(ALLOCATIONS, "Workloads placed on GPUs");
    describe_counter!(REJECTIONS, "Placement proposals refused, by reason");
    describe_gauge!(ACTIVE_ALLOCATIONS, "Live GPU allocations");
    describe_gauge!(WORKERS, "Workers by state");
    describe_counter!(REQUEUES, "Workloads sent back to the queue, by reason");
    describe_histogram!(
        PROPOSE_TO_SCHEDULED,
        Unit::Seconds,
        "From a placement proposal to its scheduling"
    );
    describe_counter!(IGNORED_REPORTS, "Run reports ignored, by reason");
    describe_counter!(
        UNANSWERABLE_PROPOSALS,
        "Proposals for workloads no longer queued"
    );
    describe_counter!(ZOMBIE_STOPS, "Stops sent for runs held without allocation");
    describe_counter!(
        HEARTBEATS_STORED_TOGETHER,
        "Heartbeats stored set-based with the others of their consumer batch"
    );
    describe_counter!(
        HEARTBEATS_UNCHANGED,
        "Heartbeats that repeated the last stored one and touched no table"
    );
    describe_counter!(REGISTRATIONS, "Worker registrations");
    describe_counter!(WORKERS_LOST, "Workers declared lost");
    describe_histogram!(
        SWEEP_DURATION,
        Unit::Seconds,
        "Duration of one health sweep"
    );
}
