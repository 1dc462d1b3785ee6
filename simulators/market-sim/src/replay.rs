//! Replay of real traces through `hcp_economics::trace` (the same loader and alignment rules
//! as the backtest): prices on their own grid, daily BTC price and difficulty forward-filled,
//! hashprice derived, carbon and load where files are given, GPU spot rates synthesised.

use std::path::PathBuf;

use hcp_economics::trace::{self, TraceOptions};
use hcp_economics::EconError;
use time::Date;

use crate::series::{self, Row};
use crate::synthetic::{gpu_rates, SyntheticParams};

/// Which ERCOT price file the electricity series comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PriceKind {
    /// Day-ahead settlement point prices.
    Dam,
    /// Real-time settlement point prices.
    Rt,
}

/// The files and window of a replay.
#[derive(Debug, Clone)]
pub struct ReplayInputs {
    /// Day-ahead or real-time.
    pub kind: PriceKind,
    /// The price file (wide, one column per zone).
    pub prices: PathBuf,
    /// Zone column, e.g. `LZ_WEST`.
    pub zone: String,
    /// Daily BTC price.
    pub btc: PathBuf,
    /// Daily difficulty.
    pub difficulty: PathBuf,
    /// Hourly carbon intensity.
    pub carbon: Option<PathBuf>,
    /// Hourly system load.
    pub load: Option<PathBuf>,
    /// First day (UTC, inclusive).
    pub from: Option<Date>,
    /// Last day (UTC, inclusive).
    pub to: Option<Date>,
}

impl ReplayInputs {
    /// The electricity series name.
    pub fn price_series(&self) -> String {
        match self.kind {
            PriceKind::Dam => series::ercot_dam(&self.zone),
            PriceKind::Rt => series::ercot_rt(&self.zone),
        }
    }
}

/// Loads the rows of a replay; GPU spot rates come from `gpu` (seeded).
pub fn load(inputs: &ReplayInputs, gpu: &SyntheticParams) -> Result<Vec<Row>, EconError> {
    let mut opts = TraceOptions::new(&inputs.zone);
    opts.from = inputs.from;
    opts.to = inputs.to;
    opts.warmup_days = 0;
    let t = trace::load(
        &inputs.prices,
        None,
        &inputs.btc,
        &inputs.difficulty,
        inputs.carbon.as_deref(),
        inputs.load.as_deref(),
        &opts,
    )?;
    let obs = t.scored();
    let times: Vec<i64> = obs.iter().map(|o| o.ts).collect();
    let rates = gpu_rates(gpu, &times);
    Ok(obs
        .iter()
        .zip(rates)
        .map(|(o, gpu_usd_h)| Row {
            ts: o.ts,
            price: o.price,
            btc_usd: o.btc_usd,
            difficulty: o.difficulty,
            hashprice_th: o.hashprice / 1000.0,
            carbon: o.carbon_g_per_kwh,
            load_mw: o.system_load_mw,
            gpu_usd_h,
        })
        .collect())
}
