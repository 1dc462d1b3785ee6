//! Series names and units: the only place they are spelled. A series is published on stream
//! `market-<series>` with sequence = interval start in Unix seconds.

/// Day-ahead ERCOT price series of a zone, e.g. `ercot.dam.LZ_WEST`.
pub fn ercot_dam(zone: &str) -> String {
    format!("ercot.dam.{zone}")
}

/// Real-time ERCOT price series of a zone, e.g. `ercot.rt.LZ_WEST`.
pub fn ercot_rt(zone: &str) -> String {
    format!("ercot.rt.{zone}")
}

/// BTC price.
pub const BTC_PRICE: &str = "btc.price";
/// Network difficulty.
pub const BTC_DIFFICULTY: &str = "btc.difficulty";
/// Hashprice (subsidy only, no fees).
pub const BTC_HASHPRICE: &str = "btc.hashprice";
/// Grid carbon intensity.
pub const GRID_CARBON: &str = "grid.carbon";
/// System load.
pub const GRID_LOAD: &str = "grid.load";

/// GPU spot rental series of a model, e.g. `gpu.spot.H100`.
pub fn gpu_spot(model: &str) -> String {
    format!("gpu.spot.{model}")
}

/// Units.
pub mod unit {
    /// Electricity price.
    pub const USD_PER_MWH: &str = "usd_per_mwh";
    /// BTC price.
    pub const USD: &str = "usd";
    /// Difficulty is dimensionless.
    pub const DIFFICULTY: &str = "difficulty";
    /// Hashprice.
    pub const USD_PER_TH_DAY: &str = "usd_per_th_day";
    /// Carbon intensity.
    pub const GCO2_PER_KWH: &str = "gco2_per_kwh";
    /// Load.
    pub const MW: &str = "mw";
    /// GPU rental.
    pub const USD_PER_GPU_HOUR: &str = "usd_per_gpu_hour";
}

/// The stream id of a market series.
pub fn market_stream(series: &str) -> String {
    format!("market-{series}")
}

/// One interval of market data, from a replayed trace or the synthesiser.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    /// Interval start, Unix seconds (UTC).
    pub ts: i64,
    /// Electricity price, $/MWh.
    pub price: f64,
    /// BTC price, USD (the latest daily value).
    pub btc_usd: f64,
    /// Difficulty (the latest daily value).
    pub difficulty: f64,
    /// Hashprice, $/TH/day.
    pub hashprice_th: f64,
    /// Carbon intensity, gCO2/kWh, when known.
    pub carbon: Option<f64>,
    /// System load, MW, when known.
    pub load_mw: Option<f64>,
    /// GPU spot rate, $/GPU-hour.
    pub gpu_usd_h: f64,
}
