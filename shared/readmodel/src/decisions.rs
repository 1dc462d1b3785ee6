//! The optimizer's decisions as readers see them: one row per `optimizer.decision_made`
//! (topic `decisions`), completed by its `optimizer.decision_confirmed`. Table
//! `decision_board` (migration 0007).
//!
//! Both events of a decision are on the site's stream, hence in order; a confirmation whose
//! decision is unknown (the decision predates this read model's log) is ignored.

use hcp_db::{ApplyError, Projection};
use hcp_events::{Envelope, Event};
use sqlx::{PgConnection, PgExecutor};
use time::OffsetDateTime;
use uuid::Uuid;

/// Decisions and confirmations into `decision_board`.
#[derive(Debug, Clone)]
pub struct DecisionBoard {
    name: String,
}

impl DecisionBoard {
    /// The projection under its standard consumer name.
    pub fn new() -> Self {
        Self {
            name: "decision-board".into(),
        }
    }
}

impl Default for DecisionBoard {
    fn default() -> Self {
        Self::new()
    }
}

impl Projection for DecisionBoard {
    fn name(&self) -> &str {
        &self.name
    }

    async fn apply(&self, tx: &mut PgConnection, e: &Envelope) -> Result<(), ApplyError> {
        match &e.payload {
            Event::DecisionMade(d) => {
                let targets = serde_json::to_value(
                    d.asic_targets
                        .iter()
                        .map(|t| serde_json::json!({ "model": t.model, "fraction": t.fraction }))
                        .collect::<Vec<_>>(),
                )
                .map_err(|err| ApplyError::Poison(err.to_string()))?;
                for (name, v) in [
                    ("target_mw", d.target_mw),
                    ("energy_usd_per_mwh", d.energy_usd_per_mwh),
                    ("hashprice_usd_per_th_day", d.hashprice_usd_per_th_day),
                    ("expected_profit_usd_per_h", d.expected_profit_usd_per_h),
                ] {
                    if !v.is_finite() {
                        return Err(ApplyError::Poison(format!("{name} is not finite")));
                    }
                }
                sqlx::query(
                    "INSERT INTO decision_board (decision_id, site, policy, reason, asic_targets, \
                         gpu_batch_allowed, target_mw, energy_usd_per_mwh, \
                         hashprice_usd_per_th_day, expected_profit_usd_per_h, dr_id, decided_at) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12) \
                     ON CONFLICT (decision_id) DO NOTHING",
                )
                .bind(d.decision_id)
                .bind(&d.site)
                .bind(&d.policy)
                .bind(&d.reason)
                .bind(targets)
                .bind(d.gpu_batch_allowed)
                .bind(d.target_mw)
                .bind(d.energy_usd_per_mwh)
                .bind(d.hashprice_usd_per_th_day)
                .bind(d.expected_profit_usd_per_h)
                .bind(d.dr_id)
                .bind(e.occurred_at)
                .execute(tx)
                .await?;
            }
            Event::DecisionConfirmed(c) => {
                let done = sqlx::query(
                    "UPDATE decision_board SET confirmed_at = $2, measured_mw = $3, \
                         confirm_after_s = $4, met = $5 \
                     WHERE decision_id = $1",
                )
                .bind(c.decision_id)
                .bind(e.occurred_at)
                .bind(c.measured_mw)
                .bind(c.after_s)
                .bind(c.met)
                .execute(tx)
                .await?;
                if done.rows_affected() == 0 {
                    tracing::debug!(decision_id = %c.decision_id,
                        "confirmation of an unknown decision ignored");
                }
            }
            _ => {}
        }
        Ok(())
    }

    async fn reset(&self, tx: &mut PgConnection) -> Result<(), sqlx::Error> {
        sqlx::query("DELETE FROM decision_board")
            .execute(tx)
            .await
            .map(|_| ())
    }
}

/// One decision with its confirmation, if any.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct DecisionRecord {
    /// Decision id.
    pub decision_id: Uuid,
    /// Site.
    pub site: String,
    /// Policy that made it.
    pub policy: String,
    /// Why, in words.
    pub reason: String,
    /// `[{"model", "fraction"}]`.
    pub asic_targets: serde_json::Value,
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
    /// Demand-response event answered, if any.
    pub dr_id: Option<Uuid>,
    /// When it was made.
    pub decided_at: OffsetDateTime,
    /// When telemetry confirmed (or failed to confirm) it.
    pub confirmed_at: Option<OffsetDateTime>,
    /// What telemetry measured, MW.
    pub measured_mw: Option<f64>,
    /// Seconds from the decision to the measurement.
    pub confirm_after_s: Option<f64>,
    /// Whether the target was met in time.
    pub met: Option<bool>,
}

/// The newest decisions first, of one site or all, at most `limit`.
pub async fn recent<'e>(
    db: impl PgExecutor<'e>,
    site: Option<&str>,
    limit: i64,
) -> Result<Vec<DecisionRecord>, sqlx::Error> {
    sqlx::query_as(
        "SELECT decision_id, site, policy, reason, asic_targets, gpu_batch_allowed, target_mw, \
             energy_usd_per_mwh, hashprice_usd_per_th_day, expected_profit_usd_per_h, dr_id, \
             decided_at, confirmed_at, measured_mw, confirm_after_s, met \
         FROM decision_board WHERE ($1::text IS NULL OR site = $1) \
         ORDER BY decided_at DESC, decision_id DESC LIMIT $2",
    )
    .bind(site)
    .bind(limit)
    .fetch_all(db)
    .await
}
