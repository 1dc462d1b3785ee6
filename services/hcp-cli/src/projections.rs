//! The spine's read models. Each is a [`Projection`]: applied live by the transactional
//! consumer and rebuilt offline by replaying the log, with identical results.

use hcp_db::sqlx::{self, PgConnection};
use hcp_db::{ApplyError, Projection};
use hcp_events::{Envelope, Event};
use uuid::Uuid;

/// Lifecycle states shown on the board.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BoardState {
    /// Accepted, waiting for placement.
    Queued,
    /// Placed on GPUs.
    Scheduled,
    /// Running.
    Running,
    /// Finished.
    Completed,
    /// Failed.
    Failed,
    /// Cancelled.
    Cancelled,
}

impl BoardState {
    /// Column value.
    pub const fn as_str(self) -> &'static str {
        match self {
            BoardState::Queued => "queued",
            BoardState::Scheduled => "scheduled",
            BoardState::Running => "running",
            BoardState::Completed => "completed",
            BoardState::Failed => "failed",
            BoardState::Cancelled => "cancelled",
        }
    }

    /// Every state.
    pub const ALL: [BoardState; 6] = [
        Self::Queued,
        Self::Scheduled,
        Self::Running,
        Self::Completed,
        Self::Failed,
        Self::Cancelled,
    ];

    fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|x| x.as_str() == s)
    }

    /// Whether no further transition is possible.
    pub const fn is_terminal(self) -> bool {
        matches!(self, Self::Completed | Self::Failed | Self::Cancelled)
    }
}

/// The transition an event asks for from `from`, or why it is refused. Pure, so the state
/// machine is unit-tested without a database.
pub fn transition(from: BoardState, event: &Event) -> Result<BoardState, String> {
    use BoardState::*;
    let to = match event {
        Event::WorkloadScheduled(_) if from == Queued => Scheduled,
        Event::WorkloadStarted(_) if from == Scheduled => Running,
        Event::WorkloadCompleted(_) if from == Running => Completed,
        Event::WorkloadFailed(_) if !from.is_terminal() => Failed,
        Event::WorkloadCancelled(_) if !from.is_terminal() => Cancelled,
        other => {
            return Err(format!(
                "{} is not allowed in state {}",
                other.event_type(),
                from.as_str()
            ))
        }
    };
    Ok(to)
}

fn workload_of(event: &Event) -> Option<Uuid> {
    match event {
        Event::WorkloadSubmitted(p) => Some(p.workload_id),
        Event::WorkloadScheduled(p) => Some(p.workload_id),
        Event::WorkloadStarted(p) => Some(p.workload_id),
        Event::WorkloadCompleted(p) => Some(p.workload_id),
        Event::WorkloadFailed(p) => Some(p.workload_id),
        Event::WorkloadCancelled(p) => Some(p.workload_id),
        Event::MarketPriceObserved(_) => None,
    }
}

fn detail_of(event: &Event) -> Option<String> {
    match event {
        Event::WorkloadScheduled(p) => Some(format!("{}:{}", p.worker_id, p.gpu_ids.join(","))),
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
        let Some(workload_id) = workload_of(&e.payload) else {
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
                serde_json::to_value(p.kind)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_owned)),
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
        let allowed: Vec<BoardState> = BoardState::ALL
            .into_iter()
            .filter(|from| transition(*from, &e.payload).is_ok())
            .collect();
        let to = allowed
            .first()
            .and_then(|from| transition(*from, &e.payload).ok());
        let from_names: Vec<&str> = allowed.iter().map(|s| s.as_str()).collect();
        let updated = match to {
            Some(to) => sqlx::query(
                "UPDATE workload_board SET state = $2, detail = COALESCE($3, detail), \
                     events_seen = events_seen + 1, last_sequence = $4, updated_at = $5 \
                 WHERE workload_id = $1 AND state = ANY($6)",
            )
            .bind(workload_id)
            .bind(to.as_str())
            .bind(detail_of(&e.payload))
            .bind(e.sequence)
            .bind(e.occurred_at)
            .bind(&from_names)
            .execute(&mut *tx)
            .await?
            .rows_affected(),
            None => 0,
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
        let reason = match state.as_deref().and_then(BoardState::parse) {
            None => format!("{} for unknown workload {workload_id}", e.event_type()),
            Some(from) => transition(from, &e.payload).err().unwrap_or_else(|| {
                format!("{} refused in state {}", e.event_type(), from.as_str())
            }),
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

#[cfg(test)]
mod tests {
    use super::*;
    use hcp_events::payload::*;

    fn id() -> Uuid {
        Uuid::nil()
    }

    #[test]
    fn given_a_queued_workload_when_scheduled_then_it_is_scheduled() {
        let e = Event::WorkloadScheduled(WorkloadScheduled {
            workload_id: id(),
            worker_id: "w".into(),
            gpu_ids: vec![],
        });
        assert_eq!(
            transition(BoardState::Queued, &e),
            Ok(BoardState::Scheduled)
        );
    }

    #[test]
    fn given_a_queued_workload_when_completed_then_the_transition_is_refused() {
        let e = Event::WorkloadCompleted(WorkloadCompleted {
            workload_id: id(),
            runtime_s: 1.0,
        });
        let err = transition(BoardState::Queued, &e).unwrap_err();
        assert!(
            err.contains("workload.completed is not allowed in state queued"),
            "{err}"
        );
    }

    #[test]
    fn given_a_terminal_workload_when_cancelled_then_the_transition_is_refused() {
        let e = Event::WorkloadCancelled(WorkloadCancelled {
            workload_id: id(),
            requested_by: "t".into(),
        });
        for s in [
            BoardState::Completed,
            BoardState::Failed,
            BoardState::Cancelled,
        ] {
            assert!(transition(s, &e).is_err());
        }
        assert_eq!(
            transition(BoardState::Running, &e),
            Ok(BoardState::Cancelled)
        );
    }
}
