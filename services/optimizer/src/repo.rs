//! SQL of the optimizer's tables (migration 0008). Every function takes the caller's
//! connection or transaction.

use sqlx::types::Json;
use sqlx::PgConnection;
use time::OffsetDateTime;
use uuid::Uuid;

use hcp_economics::trace::Observation;

use crate::domain::StoredState;

/// Class of the optimizer's advisory lock ("OP"): every decision runs under it, so the
/// consumer and the deadline sweep (and several instances) never decide concurrently.
const DECIDE_LOCK_CLASS: i32 = 0x4f50;

/// Takes the decision lock for the transaction.
#[tracing::instrument(skip_all, err)]
pub async fn lock_decisions(conn: &mut PgConnection) -> Result<(), sqlx::Error> {
    sqlx::query("SELECT pg_advisory_xact_lock($1, 0)")
        .bind(DECIDE_LOCK_CLASS)
        .execute(conn)
        .await
        .map(|_| ())
}

/// Records the latest value of a market series; returns whether it is newer than (or as new
/// as) the stored one.
#[tracing::instrument(skip(conn), err)]
pub async fn upsert_market(
    conn: &mut PgConnection,
    series: &str,
    interval_start: OffsetDateTime,
    value: f64,
    unit: &str,
) -> Result<bool, sqlx::Error> {
    let n = sqlx::query(
        "INSERT INTO opt_market_latest AS m (series, interval_start, value, unit) \
         VALUES ($1, $2, $3, $4) \
         ON CONFLICT (series) DO UPDATE SET interval_start = EXCLUDED.interval_start, \
             value = EXCLUDED.value, unit = EXCLUDED.unit, updated_at = clock_timestamp() \
         WHERE m.interval_start <= EXCLUDED.interval_start",
    )
    .bind(series)
    .bind(interval_start)
    .bind(value)
    .bind(unit)
    .execute(conn)
    .await?
    .rows_affected();
    Ok(n == 1)
}

/// The latest value and unit of a series.
#[tracing::instrument(skip(conn), err)]
pub async fn market_latest(
    conn: &mut PgConnection,
    series: &str,
) -> Result<Option<(OffsetDateTime, f64, String)>, sqlx::Error> {
    sqlx::query_as("SELECT interval_start, value, unit FROM opt_market_latest WHERE series = $1")
        .bind(series)
        .fetch_optional(conn)
        .await
}

/// The start of the last interval decided on (the newest observation).
#[tracing::instrument(skip_all, err)]
pub async fn last_observation_start(
    conn: &mut PgConnection,
) -> Result<Option<OffsetDateTime>, sqlx::Error> {
    sqlx::query_scalar("SELECT max(interval_start) FROM opt_observations")
        .fetch_one(conn)
        .await
}

/// Stores the observation of a new interval.
#[tracing::instrument(skip_all, fields(ts = o.ts), err)]
pub async fn insert_observation(
    conn: &mut PgConnection,
    interval_start: OffsetDateTime,
    o: &Observation,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO opt_observations (interval_start, dt_h, price_usd_per_mwh, \
             hashprice_usd_per_ph_day, carbon_g_per_kwh, system_load_mw) \
         VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (interval_start) DO NOTHING",
    )
    .bind(interval_start)
    .bind(o.dt_h)
    .bind(o.price)
    .bind(o.hashprice)
    .bind(o.carbon_g_per_kwh)
    .bind(o.system_load_mw)
    .execute(conn)
    .await
    .map(|_| ())
}

/// The last `limit` observations, oldest first: the policy's past.
#[tracing::instrument(skip(conn), err)]
pub async fn past(conn: &mut PgConnection, limit: i64) -> Result<Vec<Observation>, sqlx::Error> {
    type Row = (OffsetDateTime, f64, f64, f64, Option<f64>, Option<f64>);
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT interval_start, dt_h, price_usd_per_mwh, hashprice_usd_per_ph_day, \
             carbon_g_per_kwh, system_load_mw \
         FROM (SELECT * FROM opt_observations ORDER BY interval_start DESC LIMIT $1) r \
         ORDER BY interval_start",
    )
    .bind(limit)
    .fetch_all(conn)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(t, dt_h, price, hashprice, carbon, load)| Observation {
            ts: t.unix_timestamp(),
            dt_h,
            price,
            hashprice,
            btc_usd: 0.0,
            difficulty: 0.0,
            carbon_g_per_kwh: carbon,
            system_load_mw: load,
            filled: false,
        })
        .collect())
}

/// A site's decision state.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct SiteRow {
    /// Site.
    pub site: String,
    /// The interval the states refer to.
    pub interval_start: OffsetDateTime,
    /// Unit states before that interval.
    pub states_before: Json<Vec<StoredState>>,
    /// Unit states after it (as decided so far).
    pub states_after: Json<Vec<StoredState>>,
    /// Levels last emitted.
    pub emitted_levels: Option<Json<Vec<f64>>>,
    /// Demand-response event of the last emitted decision.
    pub emitted_dr_id: Option<Uuid>,
    /// Intervals since the last emitted decision.
    pub intervals_since_emit: i32,
    /// Current target, MW.
    pub target_mw: f64,
    /// Current ASIC target, MW.
    pub asic_target_mw: f64,
}

/// Reads a site's state.
#[tracing::instrument(skip(conn), err)]
pub async fn site(conn: &mut PgConnection, site: &str) -> Result<Option<SiteRow>, sqlx::Error> {
    sqlx::query_as(
        "SELECT site, interval_start, states_before, states_after, emitted_levels, \
             emitted_dr_id, intervals_since_emit, target_mw, asic_target_mw \
         FROM opt_sites WHERE site = $1",
    )
    .bind(site)
    .fetch_optional(conn)
    .await
}

/// Writes a site's state.
#[tracing::instrument(skip_all, fields(site = %r.site), err)]
pub async fn save_site(
    conn: &mut PgConnection,
    r: &SiteRow,
    last_decision_id: Option<Uuid>,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO opt_sites (site, interval_start, states_before, states_after, \
             emitted_levels, emitted_dr_id, intervals_since_emit, target_mw, asic_target_mw, \
             last_decision_id) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) \
         ON CONFLICT (site) DO UPDATE SET interval_start = EXCLUDED.interval_start, \
             states_before = EXCLUDED.states_before, states_after = EXCLUDED.states_after, \
             emitted_levels = EXCLUDED.emitted_levels, emitted_dr_id = EXCLUDED.emitted_dr_id, \
             intervals_since_emit = EXCLUDED.intervals_since_emit, \
             target_mw = EXCLUDED.target_mw, asic_target_mw = EXCLUDED.asic_target_mw, \
             last_decision_id = COALESCE(EXCLUDED.last_decision_id, opt_sites.last_decision_id), \
             updated_at = clock_timestamp()",
    )
    .bind(&r.site)
    .bind(r.interval_start)
    .bind(&r.states_before)
    .bind(&r.states_after)
    .bind(&r.emitted_levels)
    .bind(r.emitted_dr_id)
    .bind(r.intervals_since_emit)
    .bind(r.target_mw)
    .bind(r.asic_target_mw)
    .bind(last_decision_id)
    .execute(conn)
    .await
    .map(|_| ())
}

/// Records a 4CP warning.
#[tracing::instrument(skip(conn), err)]
pub async fn insert_peak_warning(
    conn: &mut PgConnection,
    zone: &str,
    interval_start: OffsetDateTime,
    probability: f64,
    load_mw: f64,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO opt_peak_warnings (zone, interval_start, probability, load_mw) \
         VALUES ($1, $2, $3, $4) ON CONFLICT (zone, interval_start) DO UPDATE \
         SET probability = EXCLUDED.probability, load_mw = EXCLUDED.load_mw",
    )
    .bind(zone)
    .bind(interval_start)
    .bind(probability)
    .bind(load_mw)
    .execute(conn)
    .await
    .map(|_| ())
}

/// The highest warned probability for the interval `[start, end)` in any of `zones`.
#[tracing::instrument(skip(conn), err)]
pub async fn peak_probability(
    conn: &mut PgConnection,
    zones: &[String],
    start: OffsetDateTime,
    end: OffsetDateTime,
) -> Result<Option<f64>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT max(probability) FROM opt_peak_warnings \
         WHERE zone = ANY($1) AND interval_start >= $2 AND interval_start < $3",
    )
    .bind(zones)
    .bind(start)
    .bind(end)
    .fetch_one(conn)
    .await
}

/// A demand-response event for one site.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct DrRow {
    /// Event.
    pub dr_id: Uuid,
    /// Site.
    pub site: String,
    /// MW to shed.
    pub curtail_mw: f64,
    /// Site power allowed, MW.
    pub cap_mw: f64,
    /// Issued.
    pub issued_at: OffsetDateTime,
    /// Deadline for the reduction.
    pub respond_by: OffsetDateTime,
    /// When the cap lifts.
    pub release_at: OffsetDateTime,
}

/// Records a DR event; false if it was already recorded.
#[tracing::instrument(skip_all, fields(dr_id = %d.dr_id, site = %d.site), err)]
pub async fn insert_dr(conn: &mut PgConnection, d: &DrRow) -> Result<bool, sqlx::Error> {
    let n = sqlx::query(
        "INSERT INTO opt_dr_events (dr_id, site, curtail_mw, cap_mw, issued_at, respond_by, \
             release_at) VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT DO NOTHING",
    )
    .bind(d.dr_id)
    .bind(&d.site)
    .bind(d.curtail_mw)
    .bind(d.cap_mw)
    .bind(d.issued_at)
    .bind(d.respond_by)
    .bind(d.release_at)
    .execute(conn)
    .await?
    .rows_affected();
    Ok(n == 1)
}

/// The active DR event of a site with the lowest cap (the binding one).
#[tracing::instrument(skip(conn), err)]
pub async fn active_dr(conn: &mut PgConnection, site: &str) -> Result<Option<DrRow>, sqlx::Error> {
    sqlx::query_as(
        "SELECT dr_id, site, curtail_mw, cap_mw, issued_at, respond_by, release_at \
         FROM opt_dr_events WHERE site = $1 AND released_at IS NULL \
         ORDER BY cap_mw, issued_at LIMIT 1",
    )
    .bind(site)
    .fetch_optional(conn)
    .await
}

/// Marks the DR events due at `now` released; returns their sites.
#[tracing::instrument(skip(conn), err)]
pub async fn release_due_dr(
    conn: &mut PgConnection,
    now: OffsetDateTime,
) -> Result<Vec<String>, sqlx::Error> {
    sqlx::query_scalar(
        "UPDATE opt_dr_events SET released_at = $1 \
         WHERE released_at IS NULL AND release_at <= $1 RETURNING site",
    )
    .bind(now)
    .fetch_all(conn)
    .await
}

/// Stores a rack's latest ASIC power (older samples are ignored).
#[tracing::instrument(skip(conn), err)]
pub async fn upsert_rack(
    conn: &mut PgConnection,
    site: &str,
    rack: &str,
    sampled_at: OffsetDateTime,
    power_w: f64,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO opt_rack_power AS r (site, rack, sampled_at, power_w) \
         VALUES ($1, $2, $3, $4) ON CONFLICT (site, rack) DO UPDATE \
         SET sampled_at = EXCLUDED.sampled_at, power_w = EXCLUDED.power_w \
         WHERE r.sampled_at <= EXCLUDED.sampled_at",
    )
    .bind(site)
    .bind(rack)
    .bind(sampled_at)
    .bind(power_w)
    .execute(conn)
    .await
    .map(|_| ())
}

/// Latest power of every rack of a site, W (empty when the site never reported).
#[tracing::instrument(skip(conn), err)]
pub async fn rack_power(conn: &mut PgConnection, site: &str) -> Result<Vec<f64>, sqlx::Error> {
    sqlx::query_scalar("SELECT power_w FROM opt_rack_power WHERE site = $1")
        .bind(site)
        .fetch_all(conn)
        .await
}

/// A decision waiting for confirmation.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct PendingRow {
    /// Decision.
    pub decision_id: Uuid,
    /// Site.
    pub site: String,
    /// When it was made.
    pub made_at: OffsetDateTime,
    /// Target, MW.
    pub target_mw: f64,
    /// ASIC target, MW.
    pub asic_target_mw: f64,
    /// DR event.
    pub dr_id: Option<Uuid>,
    /// Measured site power before the DR event, MW.
    pub baseline_mw: Option<f64>,
    /// MW to shed.
    pub curtail_mw: Option<f64>,
    /// Confirm by.
    pub deadline: OffsetDateTime,
    /// Correlation id of the decision.
    pub correlation_id: Uuid,
}

/// Records a decision to confirm, superseding the site's pending normal decisions (a DR
/// decision stays pending until its own deadline: it is an obligation).
#[tracing::instrument(skip_all, fields(decision_id = %p.decision_id), err)]
pub async fn insert_pending(conn: &mut PgConnection, p: &PendingRow) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE opt_decisions SET outcome = 'superseded', closed_at = $2 \
         WHERE site = $1 AND closed_at IS NULL AND dr_id IS NULL",
    )
    .bind(&p.site)
    .bind(p.made_at)
    .execute(&mut *conn)
    .await?;
    sqlx::query(
        "INSERT INTO opt_decisions (decision_id, site, made_at, target_mw, asic_target_mw, \
             dr_id, baseline_mw, curtail_mw, deadline, correlation_id) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
    )
    .bind(p.decision_id)
    .bind(&p.site)
    .bind(p.made_at)
    .bind(p.target_mw)
    .bind(p.asic_target_mw)
    .bind(p.dr_id)
    .bind(p.baseline_mw)
    .bind(p.curtail_mw)
    .bind(p.deadline)
    .bind(p.correlation_id)
    .execute(conn)
    .await
    .map(|_| ())
}

const PENDING_COLS: &str = "decision_id, site, made_at, target_mw, asic_target_mw, dr_id, \
     baseline_mw, curtail_mw, deadline, correlation_id";

/// The site's pending decisions made before `at`.
#[tracing::instrument(skip(conn), err)]
pub async fn pending_for_site(
    conn: &mut PgConnection,
    site: &str,
    at: OffsetDateTime,
) -> Result<Vec<PendingRow>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT {PENDING_COLS} FROM opt_decisions \
         WHERE site = $1 AND closed_at IS NULL AND made_at <= $2 ORDER BY made_at"
    ))
    .bind(site)
    .bind(at)
    .fetch_all(conn)
    .await
}

/// Pending decisions whose deadline passed.
#[tracing::instrument(skip(conn), err)]
pub async fn overdue(
    conn: &mut PgConnection,
    now: OffsetDateTime,
) -> Result<Vec<PendingRow>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT {PENDING_COLS} FROM opt_decisions \
         WHERE closed_at IS NULL AND deadline < $1 ORDER BY deadline LIMIT 100"
    ))
    .bind(now)
    .fetch_all(conn)
    .await
}

/// Closes a pending decision with `outcome`; false if someone closed it first.
#[tracing::instrument(skip(conn), err)]
pub async fn close(
    conn: &mut PgConnection,
    decision_id: Uuid,
    outcome: &str,
    at: OffsetDateTime,
) -> Result<bool, sqlx::Error> {
    let n = sqlx::query(
        "UPDATE opt_decisions SET outcome = $2, closed_at = $3 \
         WHERE decision_id = $1 AND closed_at IS NULL",
    )
    .bind(decision_id)
    .bind(outcome)
    .bind(at)
    .execute(conn)
    .await?
    .rows_affected();
    Ok(n == 1)
}

/// Deletes everything the optimizer projection wrote.
pub async fn reset(conn: &mut PgConnection) -> Result<(), sqlx::Error> {
    sqlx::query(
        "TRUNCATE opt_market_latest, opt_observations, opt_sites, opt_peak_warnings, \
         opt_dr_events, opt_rack_power, opt_decisions",
    )
    .execute(conn)
    .await
    .map(|_| ())
}
