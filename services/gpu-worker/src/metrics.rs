//! Metric names (one place) and their descriptions.

/// Model switch phase durations, simulated seconds, by `phase` (histogram).
pub const MODEL_SWITCH: &str = "hcp_worker_model_switch_seconds";
/// Device commands received, by `action` and `outcome` (counter).
pub const COMMANDS: &str = "hcp_worker_commands_total";
/// Run reports produced, by `status` (counter).
pub const REPORTS: &str = "hcp_worker_reports_total";
/// Heartbeats produced (counter).
pub const HEARTBEATS: &str = "hcp_worker_heartbeats_total";
/// Batches of reports the broker did not acknowledge (counter; reports are retried).
pub const SEND_FAILURES: &str = "hcp_worker_send_failures_total";
/// Runs held (running, switching or paused) across this process's workers (gauge).
pub const RUNS: &str = "hcp_worker_runs";
/// Inference on a request's inputs, wall seconds, by `outcome` (histogram).
pub const INFERENCE: &str = "hcp_worker_inference_seconds";

/// Describes every metric (call once at startup).
pub fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_histogram!(
        MODEL_SWITCH,
        Unit::Seconds,
        "Model switch phases (load, bind, first_batch, total)"
    );
    describe_counter!(COMMANDS, "Device commands received, by action and outcome");
    describe_counter!(REPORTS, "Run reports produced, by status");
    describe_counter!(HEARTBEATS, "Heartbeats produced");
    describe_counter!(SEND_FAILURES, "Report batches not acknowledged");
    describe_gauge!(RUNS, "Runs held by this process's workers");
    describe_histogram!(
        INFERENCE,
        Unit::Seconds,
        "Inference on requests' own inputs (embeddings), by outcome"
    );
}
