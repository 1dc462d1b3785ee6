//! Market traces: one interval grid (from the price file) with every series aligned onto it.
//!
//! Formats are those of `../shared/data/market`: a wide price file (one column per zone or
//! settlement point, timestamps in `interval_start_utc` or `timestamp_utc`, interval START in UTC),
//! daily BTC price and difficulty files, and optional hourly carbon-intensity and system-load
//! files. Alignment rules:
//!
//! - the grid step is the most common spacing of the price file; a row off that grid is an error;
//! - a grid interval with no price (missing row, empty cell, `NaN`) is handled by
//!   [`MissingPolicy`]: forward-filled from the last price (default; counted and flagged on the
//!   observation) or skipped (the interval is not simulated at all);
//! - every other series is forward-filled: an interval takes the latest value stamped at or
//!   before its start (so a daily 00:00 UTC BTC snapshot is known for the whole day and nothing
//!   from later in the day leaks in). A value older than the staleness limit, or no value at all,
//!   is an error naming the file;
//! - with `--rt-prices`, real-time prices replace day-ahead prices for the intervals they cover.

use std::collections::HashMap;
use std::path::Path;

use time::format_description::well_known::Rfc3339;
use time::macros::format_description;
use time::{Date, OffsetDateTime, PrimitiveDateTime};

use crate::hashprice::{block_subsidy_btc, hashprice_usd_per_ph_day};
use crate::table::Table;
use crate::EconError;

/// Timestamp column names accepted, in order of preference.
pub const TIMESTAMP_COLUMNS: [&str; 3] = ["interval_start_utc", "timestamp_utc", "date_utc"];

/// What the market looked like during one interval; everything a policy may know at its start.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Observation {
    /// Interval start, Unix seconds (UTC).
    pub ts: i64,
    /// Interval length in hours.
    pub dt_h: f64,
    /// Electricity price for the interval, $/MWh (real-time where given, else day-ahead).
    pub price: f64,
    /// Hashprice, $/PH/day (subsidy plus the configured fee share).
    pub hashprice: f64,
    /// BTC price, USD (latest daily snapshot).
    pub btc_usd: f64,
    /// Network difficulty (latest daily value).
    pub difficulty: f64,
    /// Grid carbon intensity, gCO2eq/kWh (= kg/MWh), when a carbon file was given.
    pub carbon_g_per_kwh: Option<f64>,
    /// System load, MW, when a load file was given (drives 4CP).
    pub system_load_mw: Option<f64>,
    /// The price was forward-filled because the price file had no value here.
    pub filled: bool,
}

impl Observation {
    /// The interval start as a UTC date-time.
    pub fn time(&self) -> OffsetDateTime {
        OffsetDateTime::from_unix_timestamp(self.ts).unwrap_or(OffsetDateTime::UNIX_EPOCH)
    }
}

/// How to treat grid intervals for which the price file has no value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum MissingPolicy {
    /// Repeat the last known price (the interval is simulated; `filled` is set).
    #[default]
    ForwardFill,
    /// Leave the interval out of the simulation.
    Skip,
}

/// The text of one CSV input and the name used in error messages.
#[derive(Debug, Clone)]
pub struct CsvText {
    /// File name for messages.
    pub name: String,
    /// The contents.
    pub text: String,
}

impl CsvText {
    /// Reads a file.
    pub fn read(path: &Path) -> Result<Self, EconError> {
        let text = std::fs::read_to_string(path).map_err(|source| EconError::Io {
            path: path.display().to_string(),
            source,
        })?;
        Ok(Self {
            name: path.display().to_string(),
            text,
        })
    }
}

/// The inputs of a trace.
#[derive(Debug, Clone)]
pub struct TraceInputs {
    /// Wide price file (required).
    pub prices: CsvText,
    /// Real-time prices overriding `prices` where present.
    pub rt_prices: Option<CsvText>,
    /// Daily BTC price (required).
    pub btc: CsvText,
    /// Daily difficulty (required).
    pub difficulty: CsvText,
    /// Hourly carbon intensity.
    pub carbon: Option<CsvText>,
    /// Hourly system load.
    pub load: Option<CsvText>,
}

/// Column names, window and alignment options.
#[derive(Debug, Clone)]
pub struct TraceOptions {
    /// Price column (zone or settlement point), e.g. `LZ_WEST`.
    pub zone: String,
    /// BTC price column.
    pub btc_column: String,
    /// Difficulty column.
    pub difficulty_column: String,
    /// Carbon-intensity column.
    pub carbon_column: String,
    /// System-load column.
    pub load_column: String,
    /// First scored day (UTC, inclusive); default: the first price.
    pub from: Option<Date>,
    /// Last scored day (UTC, inclusive); default: the last price.
    pub to: Option<Date>,
    /// Days before `from` fed to policies as history (not scored), where the price file has them.
    pub warmup_days: u32,
    /// Gaps in the price file.
    pub missing: MissingPolicy,
    /// Fees' share of the block reward, in [0, 1).
    pub fee_share: f64,
    /// Largest age of a forward-filled daily value (BTC, difficulty), in days.
    pub daily_staleness_days: f64,
    /// Largest age of a forward-filled hourly value (carbon, load), in hours.
    pub hourly_staleness_hours: f64,
}

impl TraceOptions {
    /// Defaults for the files in `../shared/data/market`, for price column `zone`.
    pub fn new(zone: &str) -> Self {
        Self {
            zone: zone.to_owned(),
            btc_column: "price_usd".to_owned(),
            difficulty_column: "difficulty".to_owned(),
            carbon_column: "ci_direct_gco2eq_per_kwh".to_owned(),
            load_column: "ERCOT_MW".to_owned(),
            from: None,
            to: None,
            warmup_days: 30,
            missing: MissingPolicy::ForwardFill,
            fee_share: 0.0,
            daily_staleness_days: 10.0,
            hourly_staleness_hours: 24.0,
        }
    }
}

/// A loaded trace.
#[derive(Debug, Clone)]
pub struct Trace {
    /// Price column used.
    pub zone: String,
    /// Observations in time order: warm-up first, then the scored window.
    pub obs: Vec<Observation>,
    /// Index of the first scored observation (earlier ones are warm-up history).
    pub scored_from: usize,
    /// Interval length, hours.
    pub dt_h: f64,
    /// Scored intervals whose price was forward-filled.
    pub filled: usize,
    /// Grid intervals left out under [`MissingPolicy::Skip`].
    pub skipped: usize,
    /// Intervals priced from the real-time file.
    pub rt_intervals: usize,
}

impl Trace {
    /// The scored observations.
    pub fn scored(&self) -> &[Observation] {
        self.obs.get(self.scored_from..).unwrap_or(&[])
    }
}

/// Reads the files and builds the trace.
pub fn load(
    prices: &Path,
    rt_prices: Option<&Path>,
    btc: &Path,
    difficulty: &Path,
    carbon: Option<&Path>,
    load: Option<&Path>,
    opts: &TraceOptions,
) -> Result<Trace, EconError> {
    let inputs = TraceInputs {
        prices: CsvText::read(prices)?,
        rt_prices: rt_prices.map(CsvText::read).transpose()?,
        btc: CsvText::read(btc)?,
        difficulty: CsvText::read(difficulty)?,
        carbon: carbon.map(CsvText::read).transpose()?,
        load: load.map(CsvText::read).transpose()?,
    };
    build(&inputs, opts)
}

/// Parses a timestamp: RFC 3339 (`2023-01-01T06:00:00Z`, any offset), `YYYY-MM-DD HH:MM:SS`
/// (taken as UTC) or a bare date `YYYY-MM-DD` (midnight UTC). Returns Unix seconds.
pub fn parse_timestamp(s: &str) -> Option<i64> {
    if let Ok(t) = OffsetDateTime::parse(s, &Rfc3339) {
        return Some(t.unix_timestamp());
    }
    let fmt = format_description!("[year]-[month]-[day] [hour]:[minute]:[second]");
    if let Ok(t) = PrimitiveDateTime::parse(s, fmt) {
        return Some(t.assume_utc().unix_timestamp());
    }
    let fmt = format_description!("[year]-[month]-[day]T[hour]:[minute]:[second]");
    if let Ok(t) = PrimitiveDateTime::parse(s, fmt) {
        return Some(t.assume_utc().unix_timestamp());
    }
    parse_date(s).map(|d| d.midnight().assume_utc().unix_timestamp())
}

/// Parses `YYYY-MM-DD`.
pub fn parse_date(s: &str) -> Option<Date> {
    Date::parse(s, format_description!("[year]-[month]-[day]")).ok()
}

/// A time series read from one column: (timestamp, value or None if blank/NaN, line).
struct Series {
    name: String,
    column: String,
    points: Vec<(i64, Option<f64>)>,
}

fn read_series(src: &CsvText, column: &str) -> Result<Series, EconError> {
    let table = Table::parse(&src.name, &src.text)?;
    let ts_col = table.first_column(&TIMESTAMP_COLUMNS)?;
    let v_col = table.column(column)?;
    let mut points: Vec<(i64, Option<f64>)> = Vec::with_capacity(table.rows.len());
    for row in &table.rows {
        let ts_s = table.cell(row, ts_col)?;
        let ts = parse_timestamp(ts_s).ok_or_else(|| {
            table.error(
                row,
                ts_col,
                format!("`{ts_s}` is not a timestamp (expected e.g. 2023-01-01T06:00:00Z)"),
            )
        })?;
        let v_s = table.cell(row, v_col)?;
        let v = if v_s.is_empty()
            || v_s.eq_ignore_ascii_case("nan")
            || v_s.eq_ignore_ascii_case("na")
        {
            None
        } else {
            let v: f64 = v_s
                .parse()
                .map_err(|_| table.error(row, v_col, format!("`{v_s}` is not a number")))?;
            if !v.is_finite() {
                return Err(table.error(row, v_col, format!("`{v_s}` is not a finite number")));
            }
            Some(v)
        };
        if let Some(&(prev, _)) = points.last() {
            if ts <= prev {
                return Err(table.error(
                    row,
                    ts_col,
                    format!("timestamp `{ts_s}` is not after the previous row's (rows must be in time order, without duplicates)"),
                ));
            }
        }
        points.push((ts, v));
    }
    if points.is_empty() {
        return Err(EconError::File {
            path: src.name.clone(),
            message: "no data rows".to_owned(),
        });
    }
    Ok(Series {
        name: src.name.clone(),
        column: table.header.get(v_col).cloned().unwrap_or_default(),
        points,
    })
}

impl Series {
    /// The latest value stamped at or before `ts`, no older than `max_age_s`.
    fn at_or_before(&self, ts: i64, max_age_s: f64) -> Result<f64, EconError> {
        let idx = self.points.partition_point(|&(t, _)| t <= ts);
        for &(t, v) in self.points[..idx].iter().rev() {
            if let Some(v) = v {
                #[allow(clippy::cast_precision_loss)]
                let age = (ts - t) as f64;
                if age > max_age_s {
                    break;
                }
                return Ok(v);
            }
        }
        Err(EconError::File {
            path: self.name.clone(),
            message: format!(
                "column `{}` has no value at or shortly before {} (the file must cover the whole window, gaps at most {} h)",
                self.column,
                fmt_ts(ts),
                max_age_s / 3600.0
            ),
        })
    }
}

/// Formats Unix seconds as RFC 3339.
pub fn fmt_ts(ts: i64) -> String {
    OffsetDateTime::from_unix_timestamp(ts)
        .ok()
        .and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_else(|| ts.to_string())
}

/// Builds a trace from in-memory inputs (see the module docs for the alignment rules).
pub fn build(inputs: &TraceInputs, opts: &TraceOptions) -> Result<Trace, EconError> {
    if !(0.0..1.0).contains(&opts.fee_share) {
        return Err(EconError::Model(format!(
            "fee share {} must be in [0, 1)",
            opts.fee_share
        )));
    }
    let prices = read_series(&inputs.prices, &opts.zone)?;
    let step = grid_step(&prices)?;
    let first = prices.points.first().map_or(0, |p| p.0);
    let last = prices.points.last().map_or(0, |p| p.0);
    for (i, &(t, _)) in prices.points.iter().enumerate() {
        if (t - first) % step != 0 {
            return Err(EconError::File {
                path: prices.name.clone(),
                message: format!(
                    "row {} at {} is off the {}-second grid set by the other rows",
                    i + 2,
                    fmt_ts(t),
                    step
                ),
            });
        }
    }
    let day = 86_400_i64;
    let scored_start = match opts.from {
        Some(d) => d.midnight().assume_utc().unix_timestamp().max(first),
        None => first,
    };
    let end = match opts.to {
        Some(d) => (d.midnight().assume_utc().unix_timestamp() + day).min(last + step),
        None => last + step,
    };
    if scored_start >= end {
        return Err(EconError::File {
            path: prices.name.clone(),
            message: format!(
                "no prices in the window {} .. {} (the file covers {} .. {})",
                fmt_ts(scored_start),
                fmt_ts(end),
                fmt_ts(first),
                fmt_ts(last)
            ),
        });
    }
    let warm_start = (scored_start - i64::from(opts.warmup_days) * day).max(first);
    // Align starts to the grid.
    let align = |t: i64| first + (t - first + step - 1).div_euclid(step) * step;
    let warm_start = align(warm_start);
    let scored_start = align(scored_start);

    let by_ts: HashMap<i64, Option<f64>> = prices.points.iter().copied().collect();
    let rt: Option<HashMap<i64, f64>> = match &inputs.rt_prices {
        Some(src) => {
            let s = read_series(src, &opts.zone)?;
            Some(
                s.points
                    .iter()
                    .filter_map(|&(t, v)| v.map(|v| (t, v)))
                    .collect(),
            )
        }
        None => None,
    };
    let btc = read_series(&inputs.btc, &opts.btc_column)?;
    let diff = read_series(&inputs.difficulty, &opts.difficulty_column)?;
    let carbon = inputs
        .carbon
        .as_ref()
        .map(|c| read_series(c, &opts.carbon_column))
        .transpose()?;
    let load = inputs
        .load
        .as_ref()
        .map(|c| read_series(c, &opts.load_column))
        .transpose()?;
    let daily_age = opts.daily_staleness_days * 86_400.0 + 1.0;
    let hourly_age = opts.hourly_staleness_hours * 3_600.0 + 1.0;
    #[allow(clippy::cast_precision_loss)]
    let dt_h = step as f64 / 3600.0;

    let mut obs = Vec::new();
    let mut scored_from = None;
    let (mut filled, mut skipped, mut rt_intervals) = (0, 0, 0);
    // The last price before the window, for forward-filling a gap at its very start.
    let mut last_price: Option<f64> = prices
        .points
        .iter()
        .rev()
        .find(|&&(t, v)| t < warm_start && v.is_some())
        .and_then(|p| p.1);
    let mut t = warm_start;
    while t < end {
        let scored = t >= scored_start;
        let mut price = by_ts.get(&t).copied().flatten();
        let mut is_rt = false;
        if let Some(v) = rt.as_ref().and_then(|m| m.get(&t)) {
            price = Some(*v);
            is_rt = true;
        }
        let (price, was_filled) = match (price, opts.missing) {
            (Some(p), _) => (p, false),
            (None, MissingPolicy::ForwardFill) => match last_price {
                Some(p) => (p, true),
                None => {
                    return Err(EconError::File {
                        path: prices.name.clone(),
                        message: format!(
                            "column `{}` has no price at {} and none before it to forward-fill",
                            prices.column,
                            fmt_ts(t)
                        ),
                    })
                }
            },
            (None, MissingPolicy::Skip) => {
                if scored {
                    skipped += 1;
                }
                t += step;
                continue;
            }
        };
        last_price = Some(price);
        let btc_usd = btc.at_or_before(t, daily_age)?;
        let difficulty = diff.at_or_before(t, daily_age)?;
        let date = OffsetDateTime::from_unix_timestamp(t)
            .map_err(|e| EconError::Model(format!("timestamp {t} out of range: {e}")))?
            .date();
        let hashprice =
            hashprice_usd_per_ph_day(btc_usd, difficulty, block_subsidy_btc(date), opts.fee_share);
        let carbon_g_per_kwh = carbon
            .as_ref()
            .map(|s| s.at_or_before(t, hourly_age))
            .transpose()?;
        let system_load_mw = load
            .as_ref()
            .map(|s| s.at_or_before(t, hourly_age))
            .transpose()?;
        if scored {
            if scored_from.is_none() {
                scored_from = Some(obs.len());
            }
            filled += usize::from(was_filled);
            rt_intervals += usize::from(is_rt);
        }
        obs.push(Observation {
            ts: t,
            dt_h,
            price,
            hashprice,
            btc_usd,
            difficulty,
            carbon_g_per_kwh,
            system_load_mw,
            filled: was_filled,
        });
        t += step;
    }
    let scored_from = scored_from.ok_or_else(|| EconError::File {
        path: prices.name.clone(),
        message: "every interval of the window was skipped for missing prices".to_owned(),
    })?;
    Ok(Trace {
        zone: prices.column,
        obs,
        scored_from,
        dt_h,
        filled,
        skipped,
        rt_intervals,
    })
}

/// The most common positive spacing of the series, in seconds.
fn grid_step(s: &Series) -> Result<i64, EconError> {
    let mut counts: HashMap<i64, usize> = HashMap::new();
    for w in s.points.windows(2) {
        if let [a, b] = w {
            *counts.entry(b.0 - a.0).or_default() += 1;
        }
    }
    counts
        .into_iter()
        .max_by_key(|&(d, n)| (n, -d))
        .map(|(d, _)| d)
        .ok_or_else(|| EconError::File {
            path: s.name.clone(),
            message: "need at least two rows to know the interval length".to_owned(),
        })
}
