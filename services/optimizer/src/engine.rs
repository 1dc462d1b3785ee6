//! The optimizer's projection over `market` and `telemetry`, and its deadline sweep.
//!
//! Everything runs inside the consumer's transaction (or the sweep's), under one advisory lock:
//! the latest market values, the policy's past and every site's unit states are read from the
//! tables, the decision is taken by [`crate::domain`], and `optimizer.decision_made` /
//! `optimizer.decision_confirmed` are appended to `site-<site>` (topic `decisions`) in the same
//! transaction as the consumer's offsets. A restarted optimizer therefore continues exactly
//! where it stopped: the past and the minimum on/off clocks live in the database.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use hcp_bus::KafkaSettings;
use hcp_db::sqlx::{self, types::Json, PgConnection, PgPool};
use hcp_db::{ApplyError, EventStore, ExpectedVersion, Projection, Publish, StoreError};
use hcp_economics::fleet::{FleetModel, SiteModel};
use hcp_economics::policy::UnitState;
use hcp_economics::trace::Observation;
use hcp_events::payload::{
    AsicTelemetryBatch, DecisionConfirmed, DecisionMade, DemandResponseRequested,
    MarketPriceObserved, PeakWarningIssued,
};
use hcp_events::{site_stream, Envelope, Event, Topic};
use time::{Duration, OffsetDateTime};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::config::OptimizerSettings;
use crate::domain::{
    asic_targets, build_observation, confirms, finish_site, hashprice_per_ph_day, measured_mw,
    policy_levels, series, should_emit, site_mw, start_states, LatestMarket, Overrides, Pending,
    StoredState,
};
use crate::metrics as m;
use crate::repo::{self, DrRow, PendingRow, SiteRow};

/// The `producer` of every event the optimizer appends.
pub const PRODUCER: &str = "optimizer";
/// The `policy` field of its decisions.
pub const POLICY: &str = "rule";

/// The concrete topics the optimizer publishes to.
#[derive(Debug, Clone)]
pub struct Topics {
    /// Decisions and confirmations.
    pub decisions: String,
}

impl Topics {
    /// The topics of a namespace.
    pub fn new(kafka: &KafkaSettings) -> Self {
        Self {
            decisions: kafka.topic(Topic::Decisions),
        }
    }
}

/// The optimizer: the projection (consumer name `optimizer`) and the logic the sweep shares.
#[derive(Debug, Clone)]
pub struct Optimizer {
    name: String,
    fleet: Arc<FleetModel>,
    settings: OptimizerSettings,
    topics: Topics,
}

/// Why a decision is taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Trigger {
    /// A new price interval opened: the unit states advance by one interval.
    NewInterval,
    /// A grid event (or its release) in the current interval: decide the interval again.
    Redecide,
}

/// The event that caused an append.
#[derive(Debug, Clone, Copy)]
struct Cause {
    event_id: Option<Uuid>,
    correlation_id: Uuid,
    occurred_at: OffsetDateTime,
}

impl Cause {
    fn of(e: &Envelope) -> Self {
        Self {
            event_id: Some(e.event_id),
            correlation_id: e.correlation_id,
            occurred_at: e.occurred_at,
        }
    }

    fn internal() -> Self {
        Self {
            event_id: None,
            correlation_id: Uuid::now_v7(),
            occurred_at: OffsetDateTime::now_utc(),
        }
    }
}

fn store_error(e: StoreError) -> ApplyError {
    match e {
        StoreError::Database(e) => ApplyError::Database(e),
        other => ApplyError::Transient(other.to_string()),
    }
}

fn finite(x: f64, what: &str) -> Result<f64, ApplyError> {
    if x.is_finite() {
        Ok(x)
    } else {
        Err(ApplyError::Poison(format!("{what} is not a finite number")))
    }
}

fn seconds(d: Duration) -> f64 {
    d.as_seconds_f64()
}

impl Optimizer {
    /// The optimizer for `fleet` (compiled for `settings.dt_h()`).
    pub fn new(fleet: FleetModel, settings: OptimizerSettings, topics: Topics) -> Self {
        Self {
            name: "optimizer".into(),
            fleet: Arc::new(fleet),
            settings,
            topics,
        }
    }

    /// The fleet it decides for.
    pub fn fleet(&self) -> &FleetModel {
        &self.fleet
    }

    fn site_model(&self, name: &str) -> Option<&SiteModel> {
        self.fleet.sites.iter().find(|s| s.name == name)
    }

    async fn append(
        &self,
        tx: &mut PgConnection,
        site: &str,
        event: Event,
        cause: Cause,
    ) -> Result<Uuid, ApplyError> {
        let stream = site_stream(site);
        let mut e = Envelope::new(&stream, PRODUCER, event);
        e.causation_id = cause.event_id;
        e.correlation_id = cause.correlation_id;
        let (traceparent, tracestate) = hcp_bus::trace::current_trace_headers();
        let publish = Publish::to(&self.topics.decisions).with_trace(traceparent, tracestate);
        EventStore::append(tx, &stream, ExpectedVersion::Any, &[e.clone()], &publish)
            .await
            .map_err(store_error)?;
        Ok(e.event_id)
    }

    async fn latest_market(&self, tx: &mut PgConnection) -> Result<LatestMarket, ApplyError> {
        let hashprice = repo::market_latest(tx, series::HASHPRICE)
            .await?
            .and_then(|(_, v, unit)| hashprice_per_ph_day(v, &unit));
        let carbon = repo::market_latest(tx, series::CARBON)
            .await?
            .map(|(_, v, _)| v);
        let load = repo::market_latest(tx, series::LOAD)
            .await?
            .map(|(_, v, _)| v);
        Ok(LatestMarket {
            hashprice_usd_per_ph_day: hashprice,
            carbon_g_per_kwh: carbon,
            system_load_mw: load,
        })
    }

    fn history_limit(&self) -> i64 {
        i64::from(self.settings.history_intervals.max(1))
    }

    /// The policy's past; before any interval was decided, a stand-in present built from the
    /// latest values (so a grid event is answered even then).
    async fn current_past(&self, tx: &mut PgConnection) -> Result<Vec<Observation>, ApplyError> {
        let past = repo::past(tx, self.history_limit()).await?;
        if !past.is_empty() {
            return Ok(past);
        }
        let latest = self.latest_market(tx).await?;
        let price = repo::market_latest(tx, &self.settings.price_series)
            .await?
            .map_or(0.0, |(_, v, _)| v);
        let stand_in = LatestMarket {
            hashprice_usd_per_ph_day: latest.hashprice_usd_per_ph_day.or(Some(0.0)),
            ..latest
        };
        Ok(build_observation(
            OffsetDateTime::now_utc().unix_timestamp(),
            self.settings.dt_h(),
            price,
            &stand_in,
        )
        .into_iter()
        .collect())
    }

    /// Opens a new interval if the price series moved past the last decided one and a
    /// hashprice is known.
    async fn maybe_new_interval(
        &self,
        tx: &mut PgConnection,
        cause: Cause,
    ) -> Result<(), ApplyError> {
        let Some((start, price, _)) = repo::market_latest(tx, &self.settings.price_series).await?
        else {
            return Ok(());
        };
        if repo::last_observation_start(tx)
            .await?
            .is_some_and(|last| last >= start)
        {
            return Ok(());
        }
        let latest = self.latest_market(tx).await?;
        let Some(obs) =
            build_observation(start.unix_timestamp(), self.settings.dt_h(), price, &latest)
        else {
            tracing::info!(interval_start = %start, "price seen but no hashprice yet: not deciding");
            return Ok(());
        };
        repo::insert_observation(tx, start, &obs).await?;
        let past = repo::past(tx, self.history_limit()).await?;
        self.decide(tx, &past, Trigger::NewInterval, &HashMap::new(), cause)
            .await
    }

    /// Decides every site for the present of `past`. `dr_baselines` holds, for sites answering
    /// a new demand-response event, the measured site power before it.
    async fn decide(
        &self,
        tx: &mut PgConnection,
        past: &[Observation],
        trigger: Trigger,
        dr_baselines: &HashMap<String, f64>,
        cause: Cause,
    ) -> Result<(), ApplyError> {
        let Some(now_obs) = past.last().copied() else {
            return Ok(());
        };
        let interval_start = OffsetDateTime::from_unix_timestamp(now_obs.ts)
            .map_err(|e| ApplyError::Poison(format!("interval start out of range: {e}")))?;
        let mut rows = Vec::with_capacity(self.fleet.sites.len());
        let mut states = Vec::with_capacity(self.fleet.sites.len());
        for site in &self.fleet.sites {
            let row = repo::site(tx, &site.name).await?;
            let st: Vec<UnitState> = match (&row, trigger) {
                (Some(r), Trigger::NewInterval) => {
                    r.states_after.0.iter().map(|&s| s.into()).collect()
                }
                (Some(r), Trigger::Redecide) => {
                    r.states_before.0.iter().map(|&s| s.into()).collect()
                }
                (None, _) => start_states(site),
            };
            let st = if st.len() == site.units.len() {
                st
            } else {
                start_states(site)
            };
            states.push(st);
            rows.push(row);
        }
        let carbon = self.settings.carbon_price();
        let fleet = Arc::clone(&self.fleet);
        let owned_past = past.to_vec();
        let owned_states = states.clone();
        // The policy scans the past (persistence, 4CP watch): off the async runtime.
        let levels = tokio::task::spawn_blocking(move || {
            policy_levels(&fleet, &owned_past, &owned_states, carbon)
        })
        .await
        .map_err(|e| ApplyError::Transient(format!("policy task failed: {e}")))?
        .unwrap_or_default();
        let zones = vec![self.settings.zone().to_owned(), "ERCOT".to_owned()];
        let end = interval_start + Duration::seconds_f64(now_obs.dt_h * 3600.0);
        let peak = repo::peak_probability(tx, &zones, interval_start, end).await?;
        for (((site, row), st), lv) in self.fleet.sites.iter().zip(rows).zip(&states).zip(levels) {
            let dr = repo::active_dr(tx, &site.name).await?;
            let ov = Overrides {
                peak_probability: peak,
                dr_cap_mw: dr.as_ref().map(|d| d.cap_mw),
                carbon_price: carbon,
            };
            let d = finish_site(site, &now_obs, st, lv, &ov);
            let after: Vec<StoredState> = st
                .iter()
                .zip(&d.levels)
                .map(|(s, &x)| s.after(x).into())
                .collect();
            let before: Vec<StoredState> = st.iter().map(|&s| s.into()).collect();
            let dr_id = dr.as_ref().map(|d| d.dr_id);
            let since = row.as_ref().map_or(0, |r| {
                r.intervals_since_emit
                    .saturating_add(i32::from(trigger == Trigger::NewInterval))
            });
            let emitted = row.as_ref().and_then(|r| r.emitted_levels.as_ref());
            let dr_changed = row
                .as_ref()
                .map_or(dr_id.is_some(), |r| r.emitted_dr_id != dr_id);
            let emit = should_emit(
                emitted.map(|l| l.0.as_slice()),
                &d.levels,
                dr_changed,
                u32::try_from(since).unwrap_or(0),
                self.settings.heartbeat_intervals,
            );
            metrics::gauge!(m::TARGET_MW, "site" => site.name.clone()).set(d.target_mw);
            let mut new_row = SiteRow {
                site: site.name.clone(),
                interval_start,
                states_before: Json(before),
                states_after: Json(after),
                emitted_levels: emitted.cloned(),
                emitted_dr_id: row.as_ref().and_then(|r| r.emitted_dr_id),
                intervals_since_emit: since,
                target_mw: d.target_mw,
                asic_target_mw: d.asic_target_mw,
            };
            let mut decision_id = None;
            if emit {
                let id = Uuid::now_v7();
                let made = DecisionMade {
                    decision_id: id,
                    site: site.name.clone(),
                    policy: POLICY.into(),
                    reason: d.reason.clone(),
                    asic_targets: asic_targets(site, &d.levels),
                    gpu_batch_allowed: d.gpu_batch_allowed,
                    target_mw: d.target_mw,
                    energy_usd_per_mwh: now_obs.price,
                    hashprice_usd_per_th_day: now_obs.hashprice / 1000.0,
                    expected_profit_usd_per_h: d.expected_profit_usd_per_h,
                    dr_id,
                };
                self.append(tx, &site.name, Event::DecisionMade(made), cause)
                    .await?;
                let made_at = OffsetDateTime::now_utc();
                let new_dr = dr
                    .as_ref()
                    .filter(|_| dr_changed)
                    .zip(dr_baselines.get(&site.name));
                let pending = PendingRow {
                    decision_id: id,
                    site: site.name.clone(),
                    made_at,
                    target_mw: d.target_mw,
                    asic_target_mw: d.asic_target_mw,
                    dr_id: new_dr.map(|(r, _)| r.dr_id),
                    baseline_mw: new_dr.map(|(_, &b)| b),
                    curtail_mw: new_dr.map(|(r, _)| r.curtail_mw),
                    deadline: new_dr.map_or_else(
                        || made_at + Duration::seconds(i64::from(self.settings.confirm_within_s)),
                        |(r, _)| r.respond_by,
                    ),
                    correlation_id: cause.correlation_id,
                };
                repo::insert_pending(tx, &pending).await?;
                new_row.emitted_levels = Some(Json(d.levels.clone()));
                new_row.emitted_dr_id = dr_id;
                new_row.intervals_since_emit = 0;
                decision_id = Some(id);
                metrics::counter!(m::DECISIONS, "site" => site.name.clone()).increment(1);
                metrics::histogram!(m::DECISION_LATENCY)
                    .record(seconds(made_at - cause.occurred_at).max(0.0));
                tracing::info!(
                    site = %site.name,
                    decision_id = %id,
                    target_mw = d.target_mw,
                    dr_id = ?dr_id,
                    reason = %d.reason,
                    "decision made"
                );
            }
            repo::save_site(tx, &new_row, decision_id).await?;
        }
        Ok(())
    }

    #[tracing::instrument(skip_all, fields(series = %p.series))]
    async fn on_market(
        &self,
        tx: &mut PgConnection,
        e: &Envelope,
        p: &MarketPriceObserved,
    ) -> Result<(), ApplyError> {
        finite(p.value, &p.series)?;
        if p.series == series::HASHPRICE && hashprice_per_ph_day(p.value, &p.unit).is_none() {
            return Err(ApplyError::Poison(format!(
                "hashprice in unknown unit `{}`",
                p.unit
            )));
        }
        repo::lock_decisions(tx).await?;
        repo::upsert_market(tx, &p.series, p.interval_start, p.value, &p.unit).await?;
        self.maybe_new_interval(tx, Cause::of(e)).await
    }

    #[tracing::instrument(skip_all, fields(dr_id = %d.dr_id))]
    async fn on_demand_response(
        &self,
        tx: &mut PgConnection,
        e: &Envelope,
        d: &DemandResponseRequested,
    ) -> Result<(), ApplyError> {
        if finite(d.curtail_mw, "curtail_mw")? <= 0.0 {
            return Err(ApplyError::Poison("curtail_mw must be > 0".into()));
        }
        let sites: Vec<&SiteModel> = self
            .fleet
            .sites
            .iter()
            .filter(|s| match &d.site {
                Some(name) => *name == s.name,
                None => d.zone == self.settings.zone(),
            })
            .collect();
        if sites.is_empty() {
            tracing::info!(zone = %d.zone, site = ?d.site, "demand response for no site of this fleet");
            return Ok(());
        }
        repo::lock_decisions(tx).await?;
        let anchor = deadline_anchor(d.issued_at, OffsetDateTime::now_utc());
        let mut baselines = HashMap::new();
        for site in sites {
            let row = repo::site(tx, &site.name).await?;
            let target = row.as_ref().map_or_else(
                || site_mw(site, &vec![1.0; site.units.len()]),
                |r| r.target_mw,
            );
            let racks = repo::rack_power(tx, &site.name).await?;
            let baseline = if racks.is_empty() {
                row.as_ref()
                    .map_or(target - site.fixed_mw, |r| r.asic_target_mw)
            } else {
                measured_mw(&racks, site.pue)
            };
            let dr = DrRow {
                dr_id: d.dr_id,
                site: site.name.clone(),
                curtail_mw: d.curtail_mw,
                cap_mw: target - d.curtail_mw,
                issued_at: d.issued_at,
                respond_by: anchor + Duration::seconds(i64::from(d.respond_within_s)),
                release_at: anchor + Duration::seconds(i64::from(d.duration_s)),
            };
            if repo::insert_dr(tx, &dr).await? {
                baselines.insert(site.name.clone(), baseline);
            }
        }
        if baselines.is_empty() {
            return Ok(());
        }
        let past = self.current_past(tx).await?;
        self.decide(tx, &past, Trigger::Redecide, &baselines, Cause::of(e))
            .await
    }

    #[tracing::instrument(skip_all, fields(zone = %w.zone))]
    async fn on_peak_warning(
        &self,
        tx: &mut PgConnection,
        e: &Envelope,
        w: &PeakWarningIssued,
    ) -> Result<(), ApplyError> {
        let p = finite(w.probability, "probability")?;
        if !(0.0..=1.0).contains(&p) {
            return Err(ApplyError::Poison(format!(
                "probability {p} outside [0, 1]"
            )));
        }
        repo::lock_decisions(tx).await?;
        repo::insert_peak_warning(tx, &w.zone, w.interval_start, p, w.load_mw).await?;
        let past = repo::past(tx, self.history_limit()).await?;
        let Some(now) = past.last() else {
            return Ok(());
        };
        let start = w.interval_start.unix_timestamp();
        #[allow(clippy::cast_possible_truncation)]
        let len = (now.dt_h * 3600.0) as i64;
        if (now.ts..now.ts + len).contains(&start) {
            self.decide(tx, &past, Trigger::Redecide, &HashMap::new(), Cause::of(e))
                .await?;
        }
        Ok(())
    }

    #[tracing::instrument(skip_all, fields(site = %b.site, rack = %b.rack))]
    async fn on_telemetry(
        &self,
        tx: &mut PgConnection,
        e: &Envelope,
        b: &AsicTelemetryBatch,
    ) -> Result<(), ApplyError> {
        let mut power_w = 0.0;
        for s in &b.samples {
            power_w += finite(s.power_w, "power_w")?.max(0.0);
        }
        repo::upsert_rack(tx, &b.site, &b.rack, b.sampled_at, power_w).await?;
        let Some(site) = self.site_model(&b.site) else {
            return Ok(());
        };
        let pending = repo::pending_for_site(tx, &b.site, b.sampled_at).await?;
        if pending.is_empty() {
            return Ok(());
        }
        let measured = measured_mw(&repo::rack_power(tx, &b.site).await?, site.pue);
        let tolerance = self.tolerance_mw(site);
        for p in pending {
            if !confirms(&pending_of(&p), measured, tolerance) {
                continue;
            }
            if !repo::close(tx, p.decision_id, "met", b.sampled_at).await? {
                continue;
            }
            let after_s = seconds(b.sampled_at - p.made_at).max(0.0);
            self.confirmed(tx, &p, measured, after_s, true, Cause::of(e))
                .await?;
        }
        Ok(())
    }

    fn tolerance_mw(&self, site: &SiteModel) -> f64 {
        let nameplate: f64 = site
            .units
            .iter()
            .filter(|u| u.is_asic())
            .map(|u| u.mw)
            .sum();
        nameplate * self.settings.confirm_tolerance_fraction.max(0.0)
    }

    async fn confirmed(
        &self,
        tx: &mut PgConnection,
        p: &PendingRow,
        measured: f64,
        after_s: f64,
        met: bool,
        cause: Cause,
    ) -> Result<(), ApplyError> {
        let outcome = if met { "met" } else { "missed" };
        if p.dr_id.is_some() {
            metrics::counter!(m::DR_EVENTS, "outcome" => outcome).increment(1);
        } else {
            metrics::counter!(m::CONFIRMATIONS, "outcome" => outcome).increment(1);
        }
        tracing::info!(decision_id = %p.decision_id, site = %p.site, dr_id = ?p.dr_id, measured_mw = measured, after_s, met, "decision confirmed");
        let target = match (p.baseline_mw, p.curtail_mw) {
            (Some(b), Some(c)) => b - c,
            _ => p.asic_target_mw,
        };
        self.append(
            tx,
            &p.site,
            Event::DecisionConfirmed(DecisionConfirmed {
                decision_id: p.decision_id,
                site: p.site.clone(),
                target_mw: target,
                measured_mw: measured,
                after_s,
                met,
            }),
            Cause {
                correlation_id: p.correlation_id,
                ..cause
            },
        )
        .await?;
        Ok(())
    }

    /// One pass of the deadline sweep: releases demand-response caps whose duration ended
    /// (and decides again), and closes decisions telemetry did not confirm in time
    /// (`met: false`). Returns how many decisions it closed.
    #[tracing::instrument(skip_all, err)]
    pub async fn sweep_once(&self, pool: &PgPool) -> Result<usize, ApplyError> {
        let mut tx = pool.begin().await?;
        repo::lock_decisions(&mut tx).await?;
        let now = OffsetDateTime::now_utc();
        let released = repo::release_due_dr(&mut tx, now).await?;
        if !released.is_empty() {
            tracing::info!(sites = ?released, "demand response released");
            let past = self.current_past(&mut tx).await?;
            self.decide(
                &mut tx,
                &past,
                Trigger::Redecide,
                &HashMap::new(),
                Cause::internal(),
            )
            .await?;
        }
        let overdue = repo::overdue(&mut tx, now).await?;
        let mut closed = 0;
        for p in &overdue {
            let racks = repo::rack_power(&mut tx, &p.site).await?;
            let pue = self.site_model(&p.site).map_or(1.0, |s| s.pue);
            if racks.is_empty() && p.dr_id.is_none() {
                // Nothing measures this site: say so in the metrics, not as a missed target.
                repo::close(&mut tx, p.decision_id, "unmeasured", now).await?;
                metrics::counter!(m::CONFIRMATIONS, "outcome" => "unmeasured").increment(1);
                continue;
            }
            if repo::close(&mut tx, p.decision_id, "missed", now).await? {
                let measured = measured_mw(&racks, pue);
                let after_s = seconds(now - p.made_at).max(0.0);
                self.confirmed(&mut tx, p, measured, after_s, false, Cause::internal())
                    .await?;
                closed += 1;
            }
        }
        tx.commit().await?;
        Ok(closed)
    }

    /// Runs [`Self::sweep_once`] every `sweep_interval_ms` until cancelled.
    pub async fn run_sweep(self, pool: PgPool, token: CancellationToken) -> anyhow::Result<()> {
        let mut tick = tokio::time::interval(self.settings.sweep_interval());
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = token.cancelled() => return Ok(()),
                _ = tick.tick() => {}
            }
            let started = Instant::now();
            if let Err(e) = self.sweep_once(&pool).await {
                tracing::warn!(error = %e, elapsed_ms = started.elapsed().as_millis(), "optimizer sweep failed; retrying");
            }
        }
    }
}

/// When a demand-response event's clock starts: its `issued_at`, unless that is more than
/// [`CLOCK_SKEW_S`] from the optimizer's clock (a replayed trace issues events in trace
/// time), in which case the moment it arrived.
fn deadline_anchor(issued_at: OffsetDateTime, now: OffsetDateTime) -> OffsetDateTime {
    if (now - issued_at).abs() <= Duration::seconds(CLOCK_SKEW_S) {
        issued_at
    } else {
        now
    }
}

/// Largest difference between a grid event's `issued_at` and the optimizer's clock still
/// taken as the same clock, s.
const CLOCK_SKEW_S: i64 = 60;

fn pending_of(p: &PendingRow) -> Pending {
    Pending {
        asic_target_mw: p.asic_target_mw,
        dr: p.baseline_mw.zip(p.curtail_mw),
    }
}

impl Projection for Optimizer {
    fn name(&self) -> &str {
        &self.name
    }

    async fn apply(&self, tx: &mut PgConnection, e: &Envelope) -> Result<(), ApplyError> {
        match &e.payload {
            Event::MarketPriceObserved(p) => self.on_market(tx, e, p).await,
            Event::DemandResponseRequested(d) => self.on_demand_response(tx, e, d).await,
            Event::PeakWarningIssued(w) => self.on_peak_warning(tx, e, w).await,
            Event::AsicTelemetryBatch(b) => self.on_telemetry(tx, e, b).await,
            _ => Ok(()),
        }
    }

    async fn reset(&self, tx: &mut PgConnection) -> Result<(), sqlx::Error> {
        repo::reset(tx).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_demand_response_clock_starts_at_issue_unless_it_was_issued_in_trace_time() {
        let now = OffsetDateTime::now_utc();
        let issued = now - Duration::seconds(5);
        assert_eq!(deadline_anchor(issued, now), issued);
        let replayed = now - Duration::days(900);
        assert_eq!(deadline_anchor(replayed, now), now);
    }
}
