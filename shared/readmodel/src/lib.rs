//! Read models shared by the gateway and the operator CLI. Each is a [`Projection`]: applied live by the transactional
//! consumer and rebuilt offline by replaying the log, with identical results.

use hcp_db::sqlx::{self, PgConnection};
use hcp_db::{ApplyError, Projection};
use hcp_domain::{transition, WorkloadState};
use hcp_events::{Envelope, Event};

fn detail_of(event: &Event) -> Option<String> {
    match event {
        Event::WorkloadQueued(p) => Some(format!("priority {}: {}", p.priority, p.reason)),
        Event::WorkloadPlacementRejected(p) => Some(format!(
            "placement on {} refused: {}",
            p.worker_id, p.reason
        )),
        Event::WorkloadScheduled(p) => Some(format!("{}:{}", p.worker_id, p.gpu_ids.join(","))),
        Event::WorkloadPreempted(p) => Some(format!("preempted for {}", p.for_workload_id)),
        Event::WorkloadRequeued(p) => Some(format!(
            "requeued at {:.0}%: {}",
            p.resume_progress * 100.0,
            p.reason
        )),
        Event::WorkloadFailed(p) => Some(p.reason.clone()),
        Event::WorkloadCancelled(p) => Some(format!("cancelled by {}", p.requested_by)),
        _ => None,
    }
}

/// One row per workload with its current state (table `workload_board`).
#[derive(Debug, Clone)]
pub struct WorkloadBoard {
    name: String,
}

impl WorkloadBoard {
    /// The board under its standard consumer name.
    pub fn new() -> Self {
        Self::named("workload-board")
    }

    /// The board under another consumer name (tests run several side by side).
    pub fn named(name: impl Into<String>) -> Self {
        Self { name: name.into() }
    }
}

impl Default for WorkloadBoard {
    fn default() -> Self {
        Self::new()
    }
}

impl Projection for WorkloadBoard {
    fn name(&self) -> &str {
        &self.name
    }

    async fn apply(&self, tx: &mut PgConnection, e: &Envelope) -> Result<(), ApplyError> {
        let Some(workload_id) = e.payload.workload_id() else {
            return Ok(());
        };
        if let Event::WorkloadSubmitted(p) = &e.payload {
            let inserted = sqlx::query(
                "INSERT INTO workload_board (workload_id, tenant_id, kind, model, gpu_count, \
                     state, detail, events_seen, last_sequence, submitted_at, updated_at) \
                 VALUES ($1, $2, $3, $4, $5, 'queued', NULL, 1, $6, $7, $7) \
                 ON CONFLICT (workload_id) DO NOTHING",
            )
            .bind(workload_id)
            .bind(&p.tenant_id)
            .bind(
                p.kind
                    .and_then(|k| serde_json::to_value(k).ok())
                    .and_then(|v| v.as_str().map(str::to_owned))
                    .unwrap_or_else(|| "unclassified".into()),
            )
            .bind(&p.model)
            .bind(i32::try_from(p.gpu_count).unwrap_or(i32::MAX))
            .bind(e.sequence)
            .bind(e.occurred_at)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            if inserted == 0 {
                return Err(ApplyError::Poison(format!(
                    "workload {workload_id} was already submitted"
                )));
            }
            return Ok(());
        }
        // One round trip: the update only matches a row in a state the event may leave. The
        // allowed states come from the pure `transition` function.
        if matches!(
            e.payload,
            Event::RunReported(_) | Event::DeviceCommand(_) | Event::WorkerHeartbeat(_)
        ) {
            return Ok(());
        }
        let allowed: Vec<WorkloadState> = WorkloadState::ALL
            .into_iter()
            .filter(|from| transition(Some(*from), &e.payload).is_ok())
            .collect();
        // Events that keep the state (queued → queued, checkpointed) update it to itself.
        let to = |from: WorkloadState| transition(Some(from), &e.payload).ok();
        let fixed = allowed
            .first()
            .and_then(|f| to(*f))
            .filter(|t| allowed.iter().all(|f| to(*f) == Some(*t)));
        let from_names: Vec<&str> = allowed.iter().map(|s| s.as_str()).collect();
        let updated = match (fixed, allowed.is_empty()) {
            (_, true) => 0,
            (target, false) => sqlx::query(
                "UPDATE workload_board SET state = COALESCE($2, state), \
                     detail = COALESCE($3, detail), \
                     events_seen = events_seen + 1, last_sequence = $4, updated_at = $5 \
                 WHERE workload_id = $1 AND state = ANY($6)",
            )
            .bind(workload_id)
            .bind(target.map(|t| t.as_str()))
            .bind(detail_of(&e.payload))
            .bind(e.sequence)
            .bind(e.occurred_at)
            .bind(&from_names)
            .execute(&mut *tx)
            .await?
            .rows_affected(),
        };
        if updated == 1 {
            return Ok(());
        }
        // Refused: say why (a rare path, so the extra read is fine).
        let state: Option<String> =
            sqlx::query_scalar("SELECT state FROM workload_board WHERE workload_id = $1")
                .bind(workload_id)
                .fetch_optional(&mut *tx)
                .await?;
        let reason = match state.as_deref().and_then(WorkloadState::parse) {
            None => format!("{} for unknown workload {workload_id}", e.event_type()),
            Some(from) => transition(Some(from), &e.payload)
                .err()
                .map(|err| err.to_string())
                .unwrap_or_else(|| format!("{} refused in state {from}", e.event_type())),
        };
        Err(ApplyError::Poison(reason))
    }

    async fn reset(&self, tx: &mut PgConnection) -> Result<(), sqlx::Error> {
        sqlx::query("DELETE FROM workload_board")
            .execute(tx)
            .await
            .map(|_| ())
    }
}

/// Observed market values into the `market_prices` time-series table.
#[derive(Debug, Clone)]
pub struct MarketPrices {
    name: String,
}

impl MarketPrices {
    /// Standard consumer name.
    pub fn new() -> Self {
        Self {
            name: "market-prices".into(),
        }
    }
}

impl Default for MarketPrices {
    fn default() -> Self {
        Self::new()
    }
}

impl Projection for MarketPrices {
    fn name(&self) -> &str {
        &self.name
    }

    async fn apply(&self, tx: &mut PgConnection, e: &Envelope) -> Result<(), ApplyError> {
        let Event::MarketPriceObserved(p) = &e.payload else {
            return Ok(());
        };
        if !p.value.is_finite() {
            return Err(ApplyError::Poison(format!(
                "non-finite value for {}",
                p.series
            )));
        }
        sqlx::query(
            "INSERT INTO market_prices (series, interval_start, value, unit) \
             VALUES ($1, $2, $3, $4) \
             ON CONFLICT (series, interval_start) DO UPDATE SET value = EXCLUDED.value, \
                 unit = EXCLUDED.unit, recorded_at = clock_timestamp()",
        )
        .bind(&p.series)
        .bind(p.interval_start)
        .bind(p.value)
        .bind(&p.unit)
        .execute(tx)
        .await?;
        Ok(())
    }

    async fn reset(&self, tx: &mut PgConnection) -> Result<(), sqlx::Error> {
        sqlx::query("DELETE FROM market_prices")
            .execute(tx)
            .await
            .map(|_| ())
    }
}
