//! Fleet economics: market prices, grid signals, ASIC telemetry and commands, and the
//! optimizer's decisions.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use uuid::Uuid;

/// A market price was observed (electricity, hashprice, GPU rate, carbon).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MarketPriceObserved {
    /// Series name, e.g. `ercot.rt.LZ_WEST` or `btc.hashprice`.
    pub series: String,
    /// Start of the interval the value applies to.
    #[serde(with = "time::serde::rfc3339")]
    #[schemars(with = "String")]
    pub interval_start: OffsetDateTime,
    /// The value in `unit`.
    pub value: f64,
    /// Unit, e.g. `usd_per_mwh`.
    pub unit: String,
}

/// A grid operator asks a site (or a zone) to shed load (demand response).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DemandResponseRequested {
    /// The grid event's id.
    pub dr_id: Uuid,
    /// Load zone, e.g. `LZ_WEST`.
    pub zone: String,
    /// One site, or every site in the zone when absent.
    pub site: Option<String>,
    /// Megawatts to shed.
    pub curtail_mw: f64,
    /// Seconds allowed to reach the reduced load.
    pub respond_within_s: u32,
    /// How long the reduction must hold, seconds.
    pub duration_s: u32,
    /// When it was issued.
    #[serde(with = "time::serde::rfc3339")]
    #[schemars(with = "String")]
    pub issued_at: OffsetDateTime,
}

/// A coincident-peak (4CP) warning: system load may set this month's peak in the interval.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PeakWarningIssued {
    /// Zone or system, e.g. `ERCOT`.
    pub zone: String,
    /// The interval at risk.
    #[serde(with = "time::serde::rfc3339")]
    #[schemars(with = "String")]
    pub interval_start: OffsetDateTime,
    /// Estimated probability that it is a 4CP interval, 0-1.
    pub probability: f64,
    /// System load seen or forecast, MW.
    pub load_mw: f64,
}

/// What an ASIC is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum AsicState {
    /// Hashing at its power target.
    Hashing,
    /// Ramping up or down.
    Ramping,
    /// Curtailed (idle at ~25 W).
    Curtailed,
    /// Faulted (overheat, hash board failure).
    Fault,
    /// Not reporting.
    Offline,
}

impl AsicState {
    /// Every state, in the order of [`AsicState::index`].
    pub const ALL: [AsicState; 5] = [
        AsicState::Hashing,
        AsicState::Ramping,
        AsicState::Curtailed,
        AsicState::Fault,
        AsicState::Offline,
    ];

    /// Its position in [`AsicState::ALL`] (also its code in the compact telemetry encoding).
    pub const fn index(self) -> usize {
        match self {
            AsicState::Hashing => 0,
            AsicState::Ramping => 1,
            AsicState::Curtailed => 2,
            AsicState::Fault => 3,
            AsicState::Offline => 4,
        }
    }
}

/// One ASIC's sample.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AsicSample {
    /// Device id.
    pub asic_id: String,
    /// Model, e.g. `S21 XP`.
    pub model: String,
    /// State.
    pub state: AsicState,
    /// Hashrate, TH/s.
    pub hashrate_ths: f64,
    /// Wall power, W.
    pub power_w: f64,
    /// Power target, W.
    pub power_target_w: f64,
    /// Hottest board, Celsius.
    pub temperature_c: f64,
    /// Hardware errors since the last sample.
    pub hw_errors: u32,
    /// Shares accepted since the last sample.
    pub accepted_shares: u32,
}

/// One rack's ASIC samples at one instant (topic `telemetry`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AsicTelemetryBatch {
    /// Site.
    pub site: String,
    /// Rack.
    pub rack: String,
    /// Sample time.
    #[serde(with = "time::serde::rfc3339")]
    #[schemars(with = "String")]
    pub sampled_at: OffsetDateTime,
    /// One sample per device.
    pub samples: Vec<AsicSample>,
}

/// Which ASICs a command addresses.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "scope", rename_all = "snake_case", deny_unknown_fields)]
pub enum AsicScope {
    /// Every ASIC of the site.
    Site,
    /// Every ASIC of one model at the site.
    Model {
        /// The model.
        model: String,
    },
    /// These racks.
    Racks {
        /// Rack ids.
        racks: Vec<String>,
    },
    /// These devices.
    Devices {
        /// Device ids.
        asic_ids: Vec<String>,
    },
}

/// What an ASIC command asks for.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "action", rename_all = "snake_case", deny_unknown_fields)]
pub enum AsicAction {
    /// Run at this fraction of nameplate power (0-1], ramping.
    PowerTarget {
        /// Fraction of nameplate.
        fraction: f64,
    },
    /// Curtail to idle (~25 W) within 5 s.
    Curtail,
    /// Back to the last power target, full within 10 s.
    Resume,
}

/// A command to a site's ASICs (topic `device-commands`, keyed by site).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AsicCommandIssued {
    /// Unique; controllers ignore ids they have obeyed.
    pub command_id: Uuid,
    /// Site.
    pub site: String,
    /// Which devices.
    pub target: AsicScope,
    /// What to do.
    pub action: AsicAction,
    /// The optimizer decision it carries out, if any.
    pub decision_id: Option<Uuid>,
}

/// The optimizer's decision for one site and interval (topic `decisions`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DecisionMade {
    /// Decision id.
    pub decision_id: Uuid,
    /// Site.
    pub site: String,
    /// Policy name, e.g. `rule`.
    pub policy: String,
    /// Why, in words (prices, margins, grid events).
    pub reason: String,
    /// Target ASIC power per model (fraction of nameplate, 0 = curtailed).
    pub asic_targets: Vec<AsicTarget>,
    /// Whether batch inference and training may run on the GPUs.
    pub gpu_batch_allowed: bool,
    /// Site power the decision aims at, MW at the meter.
    pub target_mw: f64,
    /// Energy price used, $/MWh.
    pub energy_usd_per_mwh: f64,
    /// Hashprice used, $/TH/day.
    pub hashprice_usd_per_th_day: f64,
    /// Expected profit at these prices, $/h.
    pub expected_profit_usd_per_h: f64,
    /// The demand-response event it answers, if any.
    pub dr_id: Option<Uuid>,
}

/// One ASIC model's target inside a decision.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AsicTarget {
    /// Model.
    pub model: String,
    /// Fraction of nameplate power, 0 (curtailed) to 1.
    pub fraction: f64,
}

/// Telemetry confirmed (or failed to confirm) a decision's power level.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DecisionConfirmed {
    /// The decision.
    pub decision_id: Uuid,
    /// Site.
    pub site: String,
    /// What it aimed at, MW.
    pub target_mw: f64,
    /// What telemetry measured, MW.
    pub measured_mw: f64,
    /// Seconds from the decision to the measurement.
    pub after_s: f64,
    /// Whether the target was met in time (for DR: within `respond_within_s`).
    pub met: bool,
}
