//! Metric names (one place) and their descriptions.

/// Site power by `site` and `state`, MW (gauge): the per-site summary.
pub const SITE_POWER_MW: &str = "hcp_asicsim_site_power_mw";
/// Site devices by `site` and `state` (gauge).
pub const SITE_DEVICES: &str = "hcp_asicsim_site_devices";
/// Site hashrate by `site`, PH/s (gauge).
pub const SITE_HASHRATE_PHS: &str = "hcp_asicsim_site_hashrate_phs";
/// Simulation ticks (counter).
pub const TICKS: &str = "hcp_asicsim_ticks_total";
/// Time to simulate one tick and encode its telemetry, seconds (histogram).
pub const TICK_DURATION: &str = "hcp_asicsim_tick_duration_seconds";
/// How far the simulation is behind its schedule, simulated seconds (gauge).
pub const LAG: &str = "hcp_asicsim_lag_seconds";
/// Telemetry messages (one per rack and tick) acknowledged (counter).
pub const MESSAGES: &str = "hcp_asicsim_telemetry_messages_total";
/// Device samples in acknowledged telemetry (counter).
pub const SAMPLES: &str = "hcp_asicsim_telemetry_samples_total";
/// Telemetry batches dropped because the broker did not acknowledge them (counter).
pub const SEND_FAILURES: &str = "hcp_asicsim_send_failures_total";
/// Commands by `action` and `outcome` (counter).
pub const COMMANDS: &str = "hcp_asicsim_commands_total";
/// Faults struck, by `kind` (counter).
pub const FAULTS: &str = "hcp_asicsim_faults_total";

/// Describes every metric (call once at startup).
pub fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_gauge!(SITE_POWER_MW, "Site power by state, MW");
    describe_gauge!(SITE_DEVICES, Unit::Count, "Site devices by state");
    describe_gauge!(SITE_HASHRATE_PHS, "Site hashrate, PH/s");
    describe_counter!(TICKS, Unit::Count, "Simulation ticks");
    describe_histogram!(
        TICK_DURATION,
        Unit::Seconds,
        "Time to simulate and encode one tick"
    );
    describe_gauge!(LAG, Unit::Seconds, "Simulated seconds behind schedule");
    describe_counter!(MESSAGES, Unit::Count, "Telemetry messages acknowledged");
    describe_counter!(
        SAMPLES,
        Unit::Count,
        "Device samples in acknowledged telemetry"
    );
    describe_counter!(
        SEND_FAILURES,
        Unit::Count,
        "Telemetry batches not acknowledged (dropped)"
    );
    describe_counter!(COMMANDS, Unit::Count, "ASIC commands by action and outcome");
    describe_counter!(FAULTS, Unit::Count, "Faults struck, by kind");
}
