//! Fleet economics handlers: market prices (table `market_prices`, projected in the gateway by
//! [`hcp_readmodel::MarketPrices`]), profitability per site and resource computed with
//! hcp-economics from the latest prices and the fleet file, and the optimizer's decisions
//! ([`hcp_readmodel::decisions`]). Any tenant may read them.

use std::path::{Path as FsPath, PathBuf};
use std::sync::Arc;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::{Extension, Json};
use hcp_economics::econ::unit_margin_usd;
use hcp_economics::fleet::{FleetConfig, FleetModel, UnitKind};
use hcp_economics::hashprice::break_even_usd_per_mwh;
use hcp_economics::trace::Observation;
use hcp_readmodel::decisions::{self, DecisionRecord};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use sqlx::PgExecutor;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;
use uuid::Uuid;

use super::extract::Caller;
use super::AppState;
use crate::error::ApiError;

/// The hashprice series (`usd_per_th_day` or `usd_per_ph_day`), as the market simulator and
/// the optimizer name it.
pub const HASHPRICE_SERIES: &str = "btc.hashprice";

/// Margins within this share of the best unit's $/MWh count as equally good.
const BEST_BAND: f64 = 0.05;

/// The fleet and the energy series profitability is computed for (loaded once at start).
#[derive(Debug)]
pub struct Economics {
    fleet_file: PathBuf,
    energy_series: String,
    fleet: Result<(FleetConfig, FleetModel), String>,
}

impl Economics {
    /// Loads and compiles `fleet_file`; a failure is kept and reported by the endpoint rather
    /// than stopping the gateway.
    pub fn load(fleet_file: &FsPath, energy_series: &str) -> Self {
        let fleet = FleetConfig::load(fleet_file)
            .and_then(|c| {
                c.model(&fleet_file.display().to_string(), 1.0)
                    .map(|m| (c, m))
            })
            .map_err(|e| e.to_string());
        if let Err(e) = &fleet {
            tracing::warn!(fleet_file = %fleet_file.display(), error = %e,
                "fleet file not loaded; /api/v1/profitability will say so");
        }
        Self {
            fleet_file: fleet_file.to_owned(),
            energy_series: energy_series.to_owned(),
            fleet,
        }
    }
}

/// One observed market value.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema, sqlx::FromRow)]
pub struct MarketPriceView {
    /// Series, e.g. `ercot.dam.LZ_WEST`, `btc.hashprice`.
    pub series: String,
    /// Start of the interval the value applies to.
    #[serde(with = "time::serde::rfc3339")]
    #[schemars(with = "String")]
    pub interval_start: OffsetDateTime,
    /// Value in `unit`.
    pub value: f64,
    /// Unit, e.g. `usd_per_mwh`.
    pub unit: String,
    /// When the gateway stored it.
    #[serde(with = "time::serde::rfc3339")]
    #[schemars(with = "String")]
    pub recorded_at: OffsetDateTime,
}

/// `GET /api/v1/market/prices`: the latest value of every series.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
pub struct MarketPriceList {
    /// One entry per series, by name.
    pub prices: Vec<MarketPriceView>,
}

/// `GET /api/v1/market/prices/{series}`: a series' values, oldest first.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
pub struct MarketHistory {
    /// The series.
    pub series: String,
    /// Values in the window, oldest first.
    pub points: Vec<MarketPriceView>,
}

/// Query of the history.
#[derive(Debug, Default, Deserialize)]
pub struct HistoryParams {
    from: Option<String>,
    to: Option<String>,
    limit: Option<i64>,
}

/// One resource of a site, valued at the latest prices for one hour at full power.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
pub struct UnitProfitability {
    /// `asic` or `gpu`.
    pub resource: String,
    /// ASIC model, `batch` (curtailable GPUs) or `realtime` (GPUs never curtailed for price).
    pub name: String,
    /// Facility power at full power target, MW (PUE included).
    pub mw: f64,
    /// Hashrate, TH/s (ASICs).
    pub hashrate_ths: Option<f64>,
    /// Revenue, $/h (hashprice x TH/s for ASICs; sold GPU-hours x rate for GPUs); absent when
    /// the hashprice is missing.
    pub revenue_usd_per_h: Option<f64>,
    /// Energy cost, $/h; absent when the energy price is missing.
    pub energy_cost_usd_per_h: Option<f64>,
    /// Revenue minus energy cost, $/h.
    pub margin_usd_per_h: Option<f64>,
    /// Margin per MWh drawn: what this resource earns for each MWh the site gives it.
    pub margin_usd_per_mwh: Option<f64>,
    /// Energy price at which the margin is zero, $/MWh at the meter.
    pub break_even_usd_per_mwh: Option<f64>,
    /// `allocate` (profitable and among the best per MWh: give it power), `hold` (profitable
    /// but another resource earns more per MWh: keep it as it is, it yields power first) or
    /// `switch` (loses money: move its power to another resource or curtail). Absent when a
    /// price is missing.
    pub recommendation: Option<String>,
}

/// One site.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
pub struct SiteProfitability {
    /// Site name (fleet file).
    pub site: String,
    /// Power cap at the meter, MW.
    pub power_cap_mw: f64,
    /// PUE.
    pub pue: f64,
    /// Its resources.
    pub resources: Vec<UnitProfitability>,
}

/// `GET /api/v1/profitability`.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
pub struct Profitability {
    /// The energy price series used.
    pub energy_series: String,
    /// Its latest value, $/MWh.
    pub energy_usd_per_mwh: Option<f64>,
    /// Start of that value's interval.
    #[serde(with = "time::serde::rfc3339::option")]
    #[schemars(with = "Option<String>")]
    pub energy_interval_start: Option<OffsetDateTime>,
    /// Latest hashprice, $/PH/day.
    pub hashprice_usd_per_ph_day: Option<f64>,
    /// Start of that value's interval.
    #[serde(with = "time::serde::rfc3339::option")]
    #[schemars(with = "Option<String>")]
    pub hashprice_interval_start: Option<OffsetDateTime>,
    /// What is missing for a full answer (prices not yet observed, the fleet file), in words.
    pub missing: Vec<String>,
    /// Per site.
    pub sites: Vec<SiteProfitability>,
}

/// `GET /api/v1/decisions`: newest first.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
pub struct DecisionList {
    /// Decisions.
    pub decisions: Vec<DecisionView>,
}

/// One ASIC model's target.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct AsicTargetView {
    /// Model.
    pub model: String,
    /// Fraction of nameplate power, 0 (curtailed) to 1.
    pub fraction: f64,
}

/// One optimizer decision and its confirmation.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
pub struct DecisionView {
    /// Decision id.
    pub decision_id: Uuid,
    /// Site.
    pub site: String,
    /// Policy that made it.
    pub policy: String,
    /// Why, in words.
    pub reason: String,
    /// ASIC power targets per model.
    pub asic_targets: Vec<AsicTargetView>,
    /// Whether batch GPU work may run.
    pub gpu_batch_allowed: bool,
    /// Site power aimed at, MW.
    pub target_mw: f64,
    /// Energy price used, $/MWh.
    pub energy_usd_per_mwh: f64,
    /// Hashprice used, $/TH/day.
    pub hashprice_usd_per_th_day: f64,
    /// Expected profit, $/h.
    pub expected_profit_usd_per_h: f64,
    /// Demand-response event answered.
    pub dr_id: Option<Uuid>,
    /// When it was made.
    #[serde(with = "time::serde::rfc3339")]
    #[schemars(with = "String")]
    pub decided_at: OffsetDateTime,
    /// When telemetry confirmed (or failed to confirm) it.
    #[serde(with = "time::serde::rfc3339::option")]
    #[schemars(with = "Option<String>")]
    pub confirmed_at: Option<OffsetDateTime>,
    /// Measured site power, MW.
    pub measured_mw: Option<f64>,
    /// Whether the target was met in time.
    pub met: Option<bool>,
}

impl From<DecisionRecord> for DecisionView {
    fn from(d: DecisionRecord) -> Self {
        Self {
            decision_id: d.decision_id,
            site: d.site,
            policy: d.policy,
            reason: d.reason,
            asic_targets: serde_json::from_value(d.asic_targets).unwrap_or_default(),
            gpu_batch_allowed: d.gpu_batch_allowed,
            target_mw: d.target_mw,
            energy_usd_per_mwh: d.energy_usd_per_mwh,
            hashprice_usd_per_th_day: d.hashprice_usd_per_th_day,
            expected_profit_usd_per_h: d.expected_profit_usd_per_h,
            dr_id: d.dr_id,
            decided_at: d.decided_at,
            confirmed_at: d.confirmed_at,
            measured_mw: d.measured_mw,
            met: d.met,
        }
    }
}

/// Query of the decisions.
#[derive(Debug, Default, Deserialize)]
pub struct DecisionParams {
    site: Option<String>,
    limit: Option<i64>,
}

fn query_error(e: QueryRejection) -> ApiError {
    ApiError::BadRequest {
        code: "validation",
        message: e.body_text(),
        fields: vec![],
    }
}

fn limit(v: Option<i64>, default: i64, max: i64) -> Result<i64, ApiError> {
    match v {
        None => Ok(default),
        Some(n) if (1..=max).contains(&n) => Ok(n),
        Some(_) => Err(ApiError::field(
            "validation",
            "limit",
            format!("must be between 1 and {max}"),
        )),
    }
}

fn time_param(name: &str, v: Option<&str>) -> Result<Option<OffsetDateTime>, ApiError> {
    v.map(|s| {
        OffsetDateTime::parse(s, &Rfc3339)
            .map_err(|_| ApiError::field("validation", name, "must be an RFC 3339 time"))
    })
    .transpose()
}

/// The latest value of every series (or of one).
async fn latest<'e>(
    db: impl PgExecutor<'e>,
    series: Option<&str>,
) -> Result<Vec<MarketPriceView>, sqlx::Error> {
    sqlx::query_as(
        "SELECT DISTINCT ON (series) series, interval_start, value, unit, recorded_at \
         FROM market_prices WHERE ($1::text IS NULL OR series = $1) \
         ORDER BY series, interval_start DESC",
    )
    .bind(series)
    .fetch_all(db)
    .await
}

/// `GET /api/v1/market/prices`.
#[tracing::instrument(skip_all)]
pub async fn prices(
    State(app): State<AppState>,
    _caller: Caller,
) -> Result<Json<MarketPriceList>, ApiError> {
    Ok(Json(MarketPriceList {
        prices: latest(app.pool(), None).await?,
    }))
}

/// `GET /api/v1/market/prices/{series}`.
#[tracing::instrument(skip_all, fields(series = %series))]
pub async fn history(
    State(app): State<AppState>,
    _caller: Caller,
    Path(series): Path<String>,
    params: Result<Query<HistoryParams>, QueryRejection>,
) -> Result<Json<MarketHistory>, ApiError> {
    let Query(p) = params.map_err(query_error)?;
    let from = time_param("from", p.from.as_deref())?;
    let to = time_param("to", p.to.as_deref())?;
    let limit = limit(p.limit, 500, 10_000)?;
    // Without `from`: the newest `limit` values; with it: the first `limit` from there.
    let points: Vec<MarketPriceView> = sqlx::query_as(
        "SELECT * FROM ( \
             SELECT series, interval_start, value, unit, recorded_at FROM market_prices \
             WHERE series = $1 \
               AND ($2::timestamptz IS NULL OR interval_start >= $2) \
               AND ($3::timestamptz IS NULL OR interval_start < $3) \
             ORDER BY CASE WHEN $2::timestamptz IS NULL THEN interval_start END DESC, \
                      interval_start ASC \
             LIMIT $4) w \
         ORDER BY interval_start",
    )
    .bind(&series)
    .bind(from)
    .bind(to)
    .bind(limit)
    .fetch_all(app.pool())
    .await?;
    if points.is_empty() && latest(app.pool(), Some(&series)).await?.is_empty() {
        return Err(ApiError::NotFound(format!("market series {series}")));
    }
    Ok(Json(MarketHistory { series, points }))
}

/// Hashprice in $/PH/day from a stored value and its unit.
fn hashprice_per_ph_day(p: &MarketPriceView) -> Option<f64> {
    match p.unit.as_str() {
        "usd_per_th_day" => Some(p.value * 1000.0),
        "usd_per_ph_day" => Some(p.value),
        _ => None,
    }
}

/// `GET /api/v1/profitability`.
#[tracing::instrument(skip_all)]
pub async fn profitability(
    State(app): State<AppState>,
    _caller: Caller,
    economics: Option<Extension<Arc<Economics>>>,
) -> Result<Json<Profitability>, ApiError> {
    let Some(Extension(econ)) = economics else {
        return Err(ApiError::Internal(anyhow::anyhow!(
            "economics not configured on this router"
        )));
    };
    let energy = latest(app.pool(), Some(&econ.energy_series))
        .await?
        .into_iter()
        .next();
    let hashprice = latest(app.pool(), Some(HASHPRICE_SERIES))
        .await?
        .into_iter()
        .next();
    Ok(Json(value(&econ, energy.as_ref(), hashprice.as_ref())))
}

/// The pure part of [`profitability`].
fn value(
    econ: &Economics,
    energy: Option<&MarketPriceView>,
    hashprice: Option<&MarketPriceView>,
) -> Profitability {
    let mut missing = Vec::new();
    let price = energy.map(|e| e.value);
    if price.is_none() {
        missing.push(format!(
            "no energy price observed yet for series `{}`",
            econ.energy_series
        ));
    }
    let hp = hashprice.and_then(hashprice_per_ph_day);
    if hp.is_none() {
        missing.push(match hashprice {
            None => format!("no hashprice observed yet (series `{HASHPRICE_SERIES}`)"),
            Some(h) => format!("hashprice unit `{}` is not understood", h.unit),
        });
    }
    let mut sites = Vec::new();
    match &econ.fleet {
        Err(e) => missing.push(format!(
            "fleet file {} not loaded: {e}",
            econ.fleet_file.display()
        )),
        Ok((config, model)) => {
            for (cfg, site) in config.site.iter().zip(&model.sites) {
                let mut resources = Vec::new();
                for unit in &site.units {
                    let (resource, name, ths, jth) = match unit.kind {
                        UnitKind::Asic { ths, j_per_th } => (
                            "asic",
                            unit.name
                                .rsplit_once('/')
                                .map_or(unit.name.as_str(), |(_, m)| m)
                                .to_owned(),
                            Some(ths),
                            Some(j_per_th),
                        ),
                        UnitKind::GpuBatch { .. } => ("gpu", "batch".to_owned(), None, None),
                    };
                    let needs_hashprice = unit.is_asic();
                    let revenue = match (needs_hashprice, hp) {
                        (true, None) => None,
                        (_, h) => Some(unit.revenue_usd_per_h(h.unwrap_or(0.0))),
                    };
                    let margin = match (price, revenue) {
                        (Some(p), Some(_)) => Some(unit_margin_usd(
                            unit,
                            &observation(p, hp.unwrap_or(0.0)),
                            0.0,
                            0.0,
                        )),
                        _ => None,
                    };
                    let break_even = match (jth, hp) {
                        (Some(j), Some(h)) => Some(break_even_usd_per_mwh(h, j) / site.pue),
                        (None, _) => revenue.map(|r| r / unit.mw),
                        _ => None,
                    };
                    resources.push(UnitProfitability {
                        resource: resource.to_owned(),
                        name,
                        mw: unit.mw,
                        hashrate_ths: ths,
                        revenue_usd_per_h: revenue,
                        energy_cost_usd_per_h: price.map(|p| p * unit.mw),
                        margin_usd_per_h: margin,
                        margin_usd_per_mwh: margin.map(|m| m / unit.mw),
                        break_even_usd_per_mwh: break_even,
                        recommendation: None,
                    });
                }
                if site.fixed_mw > 0.0 {
                    resources.push(UnitProfitability {
                        resource: "gpu".into(),
                        name: "realtime".into(),
                        mw: site.fixed_mw,
                        hashrate_ths: None,
                        revenue_usd_per_h: Some(site.fixed_usd_per_h),
                        energy_cost_usd_per_h: price.map(|p| p * site.fixed_mw),
                        margin_usd_per_h: price.map(|p| site.fixed_usd_per_h - p * site.fixed_mw),
                        margin_usd_per_mwh: price.map(|p| site.fixed_usd_per_h / site.fixed_mw - p),
                        break_even_usd_per_mwh: Some(site.fixed_usd_per_h / site.fixed_mw),
                        recommendation: None,
                    });
                }
                recommend(&mut resources);
                sites.push(SiteProfitability {
                    site: cfg.name.clone(),
                    power_cap_mw: cfg.power_cap_mw,
                    pue: cfg.pue,
                    resources,
                });
            }
        }
    }
    Profitability {
        energy_series: econ.energy_series.clone(),
        energy_usd_per_mwh: price,
        energy_interval_start: energy.map(|e| e.interval_start),
        hashprice_usd_per_ph_day: hp,
        hashprice_interval_start: hashprice.map(|h| h.interval_start),
        missing,
        sites,
    }
}

/// One hour at `price` and `hashprice` (no carbon price, no 4CP: those are the optimizer's).
fn observation(price: f64, hashprice: f64) -> Observation {
    Observation {
        ts: OffsetDateTime::now_utc().unix_timestamp(),
        dt_h: 1.0,
        price,
        hashprice,
        btc_usd: 0.0,
        difficulty: 0.0,
        carbon_g_per_kwh: None,
        system_load_mw: None,
        filled: false,
    }
}

/// `allocate` / `hold` / `switch` from each resource's margin per MWh against the site's best.
fn recommend(resources: &mut [UnitProfitability]) {
    let best = resources
        .iter()
        .filter_map(|r| r.margin_usd_per_mwh)
        .fold(f64::NEG_INFINITY, f64::max);
    for r in resources.iter_mut() {
        r.recommendation = r.margin_usd_per_mwh.map(|m| {
            if m <= 0.0 {
                "switch"
            } else if m >= best - BEST_BAND * best.abs() {
                "allocate"
            } else {
                "hold"
            }
            .to_owned()
        });
    }
}

/// `GET /api/v1/decisions`.
#[tracing::instrument(skip_all)]
pub async fn decisions(
    State(app): State<AppState>,
    _caller: Caller,
    params: Result<Query<DecisionParams>, QueryRejection>,
) -> Result<Json<DecisionList>, ApiError> {
    let Query(p) = params.map_err(query_error)?;
    let limit = limit(p.limit, 50, 500)?;
    let rows = decisions::recent(app.pool(), p.site.as_deref(), limit).await?;
    Ok(Json(DecisionList {
        decisions: rows.into_iter().map(DecisionView::from).collect(),
    }))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn econ() -> Economics {
        let path = FsPath::new(env!("CARGO_MANIFEST_DIR")).join("../../config/fleet.example.toml");
        let e = Economics::load(&path, "ercot.dam.LZ_WEST");
        assert!(e.fleet.is_ok(), "{:?}", e.fleet.as_ref().err());
        e
    }

    fn price(series: &str, value: f64, unit: &str) -> MarketPriceView {
        MarketPriceView {
            series: series.into(),
            interval_start: OffsetDateTime::UNIX_EPOCH,
            value,
            unit: unit.into(),
            recorded_at: OffsetDateTime::UNIX_EPOCH,
        }
    }

    #[test]
    fn cheap_power_and_a_good_hashprice_allocate_the_efficient_asics() {
        let e = econ();
        let energy = price("ercot.dam.LZ_WEST", 20.0, "usd_per_mwh");
        let hp = price("btc.hashprice", 0.055, "usd_per_th_day");
        let p = value(&e, Some(&energy), Some(&hp));
        assert!(p.missing.is_empty(), "{:?}", p.missing);
        let west = &p.sites[0];
        let xp = west.resources.iter().find(|r| r.name == "S21 XP").unwrap();
        // 2000 x 270 TH/s x $55/PH/day / 24 = $1237.5/h.
        assert!((xp.revenue_usd_per_h.unwrap() - 1237.5).abs() < 1e-6);
        assert!(xp.margin_usd_per_h.unwrap() > 0.0);
        assert!(matches!(
            xp.recommendation.as_deref(),
            Some("allocate" | "hold")
        ));
        assert!(west.resources.iter().any(|r| r.resource == "gpu"));
    }

    #[test]
    fn expensive_power_switches_the_asics() {
        let e = econ();
        let energy = price("ercot.dam.LZ_WEST", 900.0, "usd_per_mwh");
        let hp = price("btc.hashprice", 0.055, "usd_per_th_day");
        let p = value(&e, Some(&energy), Some(&hp));
        for r in p.sites.iter().flat_map(|s| &s.resources) {
            if r.resource == "asic" {
                assert_eq!(r.recommendation.as_deref(), Some("switch"), "{r:?}");
            }
        }
    }

    #[test]
    fn missing_prices_are_named_and_leave_margins_empty() {
        let e = econ();
        let p = value(&e, None, None);
        assert_eq!(p.missing.len(), 2, "{:?}", p.missing);
        assert!(p.missing[0].contains("ercot.dam.LZ_WEST"));
        let any = p.sites.iter().flat_map(|s| &s.resources).next().unwrap();
        assert_eq!(any.margin_usd_per_h, None);
        assert_eq!(any.recommendation, None);
    }
}
