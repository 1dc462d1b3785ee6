//! The workload board: one row per workload with its current state, what it asked for and where
//! it runs (table `workload_board`). The state comes from the pure state machine
//! ([`hcp_domain::transition`]); the other columns from [`Changes`], which the SQL projection and
//! the in-memory fold ([`WorkloadRecord::from_stream`]) share, so a row read from the board and
//! one folded from the event store agree.

use std::collections::HashMap;

use hcp_db::{ApplyError, Projection};
use hcp_domain::{transition, InvalidTransition, WorkloadState};
use hcp_events::payload::{WorkloadKind, WorkloadSubmitted};
use hcp_events::{Envelope, Event};
use sqlx::{PgConnection, PgExecutor};
use time::OffsetDateTime;
use uuid::Uuid;

/// Column value of a workload class; `unclassified` until stated or inferred.
pub const fn kind_str(kind: Option<WorkloadKind>) -> &'static str {
    match kind {
        Some(WorkloadKind::RealtimeInference) => "realtime_inference",
        Some(WorkloadKind::BatchInference) => "batch_inference",
        Some(WorkloadKind::Training) => "training",
        None => "unclassified",
    }
}

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

/// Where a workload's GPUs are, as an event changes it.
#[derive(Debug, Clone, PartialEq)]
enum Placement {
    Keep,
    Set(String, Vec<String>),
    /// Back in the queue: its GPUs were released.
    Clear,
}

/// What an event changes on a row besides the state and the counters.
#[derive(Debug, Clone, PartialEq)]
struct Changes {
    detail: Option<String>,
    kind: Option<&'static str>,
    priority: Option<i16>,
    interruptible: Option<bool>,
    placement: Placement,
    /// Fraction done at the last checkpoint (or the resume point).
    progress: Option<f64>,
    /// Why the workload is where it is (classification, refusal, preemption, failure).
    reason: Option<String>,
    /// When it last started running.
    started_at: Option<OffsetDateTime>,
    /// When `progress` was last known to be exact (start, checkpoint, requeue).
    progress_at: Option<OffsetDateTime>,
}

impl Changes {
    fn of(e: &Envelope) -> Self {
        let at = e.occurred_at;
        let mut c = Changes {
            detail: detail_of(&e.payload),
            kind: None,
            priority: None,
            interruptible: None,
            placement: Placement::Keep,
            progress: None,
            reason: None,
            started_at: None,
            progress_at: None,
        };
        match &e.payload {
            Event::WorkloadQueued(p) => {
                c.kind = Some(kind_str(Some(p.kind)));
                c.priority = Some(i16::from(p.priority));
                c.interruptible = Some(p.interruptible);
                c.reason = Some(p.reason.clone());
            }
            Event::WorkloadPlacementRejected(p) => c.reason = Some(p.reason.clone()),
            Event::WorkloadScheduled(p) => {
                c.placement = Placement::Set(p.worker_id.clone(), p.gpu_ids.clone());
            }
            Event::WorkloadStarted(_) => {
                c.started_at = Some(at);
                c.progress_at = Some(at);
            }
            Event::WorkloadCheckpointed(p) => {
                c.progress = Some(p.progress);
                c.progress_at = Some(at);
            }
            Event::WorkloadPreempted(p) => c.reason = Some(p.reason.clone()),
            Event::WorkloadRequeued(p) => {
                c.placement = Placement::Clear;
                c.progress = Some(p.resume_progress);
                c.progress_at = Some(at);
                c.reason = Some(p.reason.clone());
            }
            Event::WorkloadCompleted(_) => {
                c.progress = Some(1.0);
                c.progress_at = Some(at);
            }
            Event::WorkloadFailed(p) => c.reason = Some(p.reason.clone()),
            Event::WorkloadCancelled(p) => {
                c.reason = Some(format!("cancelled by {}", p.requested_by));
            }
            _ => {}
        }
        c
    }
}

/// Events on a workload stream that are not lifecycle transitions (they never reach the log,
/// but a replay must not trip on them).
fn is_lifecycle(event: &Event) -> bool {
    !matches!(
        event,
        Event::RunReported(_) | Event::DeviceCommand(_) | Event::WorkerHeartbeat(_)
    )
}

/// One row of the board. Columns added after the first version are optional: rows written
/// before them have none.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct WorkloadRecord {
    /// The workload.
    pub workload_id: Uuid,
    /// The client's request id.
    pub request_id: Option<Uuid>,
    /// Owner tenant.
    pub tenant_id: String,
    /// The tenant's tier at submission.
    pub tier: Option<String>,
    /// Class: stated, then as the router classified it (`unclassified` before).
    pub kind: String,
    /// Model.
    pub model: String,
    /// GPUs required.
    pub gpu_count: i32,
    /// Required GPU model.
    pub gpu_type: Option<String>,
    /// Minimum GPU memory, GiB.
    pub gpu_memory_gib: Option<i32>,
    /// Declared run time, seconds.
    pub duration_s: Option<i32>,
    /// Latency target, milliseconds.
    pub latency_target_ms: Option<i32>,
    /// Whether it may be checkpointed and paused (the router's decision once queued).
    pub interruptible: Option<bool>,
    /// Start-by deadline.
    pub deadline: Option<OffsetDateTime>,
    /// `rest` or `kafka`.
    pub source: Option<String>,
    /// Current state ([`WorkloadState`] wire value).
    pub state: String,
    /// Priority 1-10 once the router queued it.
    pub priority: Option<i16>,
    /// Worker holding its GPUs (or where it last ran).
    pub worker_id: Option<String>,
    /// Its GPUs on that worker.
    pub gpu_ids: Option<Vec<String>>,
    /// Fraction done at the last checkpoint, 0-1.
    pub progress: f64,
    /// When `progress` was last exact.
    pub progress_at: Option<OffsetDateTime>,
    /// Why it is where it is.
    pub reason: Option<String>,
    /// Short text about the last event.
    pub detail: Option<String>,
    /// Events applied.
    pub events_seen: i32,
    /// Stream sequence of the last event applied.
    pub last_sequence: i64,
    /// When it was submitted.
    pub submitted_at: OffsetDateTime,
    /// When it last started running.
    pub started_at: Option<OffsetDateTime>,
    /// When the last event happened.
    pub updated_at: OffsetDateTime,
}

const RECORD_COLUMNS: &str = "workload_id, request_id, tenant_id, tier, kind, model, gpu_count, \
    gpu_type, gpu_memory_gib, duration_s, latency_target_ms, interruptible, deadline, source, \
    state, priority, worker_id, gpu_ids, progress, progress_at, reason, detail, events_seen, \
    last_sequence, submitted_at, started_at, updated_at";

fn to_i32(v: u32) -> i32 {
    i32::try_from(v).unwrap_or(i32::MAX)
}

impl WorkloadRecord {
    fn submitted(e: &Envelope, p: &WorkloadSubmitted) -> Self {
        Self {
            workload_id: p.workload_id,
            request_id: Some(p.request_id),
            tenant_id: p.tenant_id.clone(),
            tier: Some(p.tier.as_str().to_owned()),
            kind: kind_str(p.kind).to_owned(),
            model: p.model.clone(),
            gpu_count: to_i32(p.gpu_count),
            gpu_type: p.gpu_type.clone(),
            gpu_memory_gib: p.gpu_memory_gib.map(to_i32),
            duration_s: Some(to_i32(p.duration_s)),
            latency_target_ms: p.latency_target_ms.map(to_i32),
            interruptible: p.interruptible,
            deadline: p.deadline,
            source: serde_json::to_value(p.source)
                .ok()
                .and_then(|v| v.as_str().map(str::to_owned)),
            state: WorkloadState::Queued.as_str().to_owned(),
            priority: None,
            worker_id: None,
            gpu_ids: None,
            progress: 0.0,
            progress_at: None,
            reason: None,
            detail: None,
            events_seen: 1,
            last_sequence: e.sequence,
            submitted_at: e.occurred_at,
            started_at: None,
            updated_at: e.occurred_at,
        }
    }

    fn apply_changes(&mut self, e: &Envelope, to: WorkloadState, c: Changes) {
        self.state = to.as_str().to_owned();
        self.events_seen += 1;
        self.last_sequence = e.sequence;
        self.updated_at = e.occurred_at;
        if c.detail.is_some() {
            self.detail = c.detail;
        }
        if let Some(k) = c.kind {
            self.kind = k.to_owned();
        }
        self.priority = c.priority.or(self.priority);
        self.interruptible = c.interruptible.or(self.interruptible);
        match c.placement {
            Placement::Keep => {}
            Placement::Set(w, g) => {
                self.worker_id = Some(w);
                self.gpu_ids = Some(g);
            }
            Placement::Clear => {
                self.worker_id = None;
                self.gpu_ids = None;
            }
        }
        self.progress = c.progress.unwrap_or(self.progress);
        self.progress_at = c.progress_at.or(self.progress_at);
        if c.reason.is_some() {
            self.reason = c.reason;
        }
        self.started_at = c.started_at.or(self.started_at);
    }

    /// Folds a workload's stream (as read from the event store) into the row the board will
    /// hold once it has applied the same events: read-your-writes before the board catches up.
    /// `None` for an empty stream; an error when the stream does not start with
    /// `workload.submitted` or breaks the state machine.
    pub fn from_stream<'a>(
        events: impl IntoIterator<Item = &'a Envelope>,
    ) -> Result<Option<Self>, InvalidTransition> {
        let mut record: Option<Self> = None;
        for e in events {
            match (&mut record, &e.payload) {
                (None, Event::WorkloadSubmitted(p)) => record = Some(Self::submitted(e, p)),
                (None, other) => {
                    transition(None, other)?;
                }
                (Some(_), p) if !is_lifecycle(p) => {}
                (Some(r), p) => {
                    let from = WorkloadState::parse(&r.state).unwrap_or(WorkloadState::Queued);
                    let to = transition(Some(from), p)?;
                    r.apply_changes(e, to, Changes::of(e));
                }
            }
        }
        Ok(record)
    }

    /// The state as the typed enum.
    pub fn workload_state(&self) -> Option<WorkloadState> {
        WorkloadState::parse(&self.state)
    }

    /// Estimated seconds of work left at `now`: the declared duration times what is left after
    /// the last exact progress (checkpoint, resume point), less the time spent running since
    /// then. Runs report no progress between checkpoints, so this is an estimate; paused and
    /// preempted work is not counted down.
    pub fn remaining_s(&self, now: OffsetDateTime) -> f64 {
        let total = f64::from(self.duration_s.unwrap_or(0).max(0));
        let left = total * (1.0 - self.progress.clamp(0.0, 1.0));
        let running_for = match (self.workload_state(), self.progress_at) {
            (Some(WorkloadState::Running), Some(at)) => (now - at).as_seconds_f64().max(0.0),
            _ => 0.0,
        };
        match self.workload_state() {
            Some(s) if s.is_terminal() => 0.0,
            _ => (left - running_for).max(0.0),
        }
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

    /// A workload's row records the sequence of the last lifecycle event applied; the other
    /// events of its stream change nothing here.
    async fn marks(
        &self,
        tx: &mut PgConnection,
        streams: &[&str],
    ) -> Result<HashMap<String, i64>, sqlx::Error> {
        hcp_db::projection::workload_row_marks(
            tx,
            "SELECT workload_id, last_sequence FROM workload_board WHERE workload_id = ANY($1)",
            streams,
        )
        .await
    }

    async fn apply(&self, tx: &mut PgConnection, e: &Envelope) -> Result<(), ApplyError> {
        let Some(workload_id) = e.payload.workload_id() else {
            return Ok(());
        };
        if let Event::WorkloadSubmitted(p) = &e.payload {
            let r = WorkloadRecord::submitted(e, p);
            let inserted = sqlx::query(
                "INSERT INTO workload_board (workload_id, request_id, tenant_id, tier, kind, \
                     model, gpu_count, gpu_type, gpu_memory_gib, duration_s, latency_target_ms, \
                     interruptible, deadline, source, state, detail, events_seen, last_sequence, \
                     submitted_at, updated_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, NULL, \
                     1, $16, $17, $17) \
                 ON CONFLICT (workload_id) DO NOTHING",
            )
            .bind(r.workload_id)
            .bind(r.request_id)
            .bind(&r.tenant_id)
            .bind(&r.tier)
            .bind(&r.kind)
            .bind(&r.model)
            .bind(r.gpu_count)
            .bind(&r.gpu_type)
            .bind(r.gpu_memory_gib)
            .bind(r.duration_s)
            .bind(r.latency_target_ms)
            .bind(r.interruptible)
            .bind(r.deadline)
            .bind(&r.source)
            .bind(&r.state)
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
        if !is_lifecycle(&e.payload) {
            return Ok(());
        }
        // One round trip: the update only matches a row in a state the event may leave. The
        // allowed states come from the pure `transition` function.
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
        let c = Changes::of(e);
        let (set_placement, worker_id, gpu_ids) = match c.placement {
            Placement::Keep => (false, None, None),
            Placement::Set(w, g) => (true, Some(w), Some(g)),
            Placement::Clear => (true, None, None),
        };
        let updated = if allowed.is_empty() {
            0
        } else {
            sqlx::query(
                "UPDATE workload_board SET state = COALESCE($2, state), \
                     detail = COALESCE($3, detail), \
                     events_seen = events_seen + 1, last_sequence = $4, updated_at = $5, \
                     kind = COALESCE($7, kind), priority = COALESCE($8, priority), \
                     interruptible = COALESCE($9, interruptible), \
                     worker_id = CASE WHEN $10 THEN $11 ELSE worker_id END, \
                     gpu_ids = CASE WHEN $10 THEN $12 ELSE gpu_ids END, \
                     progress = COALESCE($13, progress), \
                     progress_at = COALESCE($14, progress_at), \
                     reason = COALESCE($15, reason), \
                     started_at = COALESCE($16, started_at) \
                 WHERE workload_id = $1 AND state = ANY($6)",
            )
            .bind(workload_id)
            .bind(fixed.map(|t| t.as_str()))
            .bind(c.detail)
            .bind(e.sequence)
            .bind(e.occurred_at)
            .bind(&from_names)
            .bind(c.kind)
            .bind(c.priority)
            .bind(c.interruptible)
            .bind(set_placement)
            .bind(worker_id)
            .bind(gpu_ids)
            .bind(c.progress)
            .bind(c.progress_at)
            .bind(c.reason)
            .bind(c.started_at)
            .execute(&mut *tx)
            .await?
            .rows_affected()
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

    fn batches(&self) -> bool {
        true
    }

    /// The batch, set-based: one `SELECT … FOR UPDATE` of every row it touches, the events
    /// folded in memory by the same rules as [`WorkloadRecord::from_stream`], and one upsert
    /// of every changed row. Any event [`Projection::apply`] would refuse makes it
    /// [`ApplyError::Poison`], so the consumer redoes the batch event by event.
    async fn apply_batch(
        &self,
        tx: &mut PgConnection,
        events: &[&Envelope],
    ) -> Result<(), ApplyError> {
        let mut ids: Vec<Uuid> = events
            .iter()
            .filter_map(|e| e.payload.workload_id())
            .collect();
        ids.sort_unstable();
        ids.dedup();
        if ids.is_empty() {
            return Ok(());
        }
        let rows: Vec<WorkloadRecord> = sqlx::query_as(&format!(
            "SELECT {RECORD_COLUMNS} FROM workload_board WHERE workload_id = ANY($1) \
             ORDER BY workload_id FOR UPDATE"
        ))
        .bind(&ids)
        .fetch_all(&mut *tx)
        .await?;
        let mut board: HashMap<Uuid, WorkloadRecord> =
            rows.into_iter().map(|r| (r.workload_id, r)).collect();
        let mut changed: Vec<Uuid> = Vec::new();
        for e in events {
            let Some(id) = e.payload.workload_id() else {
                continue;
            };
            match &e.payload {
                Event::WorkloadSubmitted(p) => {
                    if board.contains_key(&id) {
                        return Err(ApplyError::Poison(format!(
                            "workload {id} was already submitted"
                        )));
                    }
                    board.insert(id, WorkloadRecord::submitted(e, p));
                }
                p if !is_lifecycle(p) => continue,
                p => {
                    let Some(r) = board.get_mut(&id) else {
                        return Err(ApplyError::Poison(format!(
                            "{} for unknown workload {id}",
                            e.event_type()
                        )));
                    };
                    let from = WorkloadState::parse(&r.state).ok_or_else(|| {
                        ApplyError::Poison(format!("workload {id} in unknown state {}", r.state))
                    })?;
                    let to = transition(Some(from), p)
                        .map_err(|err| ApplyError::Poison(err.to_string()))?;
                    r.apply_changes(e, to, Changes::of(e));
                }
            }
            changed.push(id);
        }
        changed.sort_unstable();
        changed.dedup();
        let rows: Vec<&WorkloadRecord> = changed.iter().filter_map(|id| board.get(id)).collect();
        upsert_rows(tx, &rows).await?;
        Ok(())
    }

    async fn reset(&self, tx: &mut PgConnection) -> Result<(), sqlx::Error> {
        sqlx::query("DELETE FROM workload_board")
            .execute(tx)
            .await
            .map(|_| ())
    }
}

/// Writes whole rows, inserting new ones and replacing existing ones, in one statement.
async fn upsert_rows(tx: &mut PgConnection, rows: &[&WorkloadRecord]) -> Result<(), sqlx::Error> {
    if rows.is_empty() {
        return Ok(());
    }
    macro_rules! col {
        ($f:ident) => {
            rows.iter().map(|r| r.$f.clone()).collect::<Vec<_>>()
        };
    }
    // GPU lists vary in length, which a two-dimensional array cannot hold: JSON per row.
    let gpu_ids: Vec<Option<sqlx::types::Json<&Vec<String>>>> = rows
        .iter()
        .map(|r| r.gpu_ids.as_ref().map(sqlx::types::Json))
        .collect();
    sqlx::query(&format!(
        "INSERT INTO workload_board ({RECORD_COLUMNS}) \
         SELECT u.workload_id, u.request_id, u.tenant_id, u.tier, u.kind, u.model, u.gpu_count, \
                u.gpu_type, u.gpu_memory_gib, u.duration_s, u.latency_target_ms, \
                u.interruptible, u.deadline, u.source, u.state, u.priority, u.worker_id, \
                CASE WHEN u.gpu_ids IS NULL THEN NULL \
                     ELSE ARRAY(SELECT jsonb_array_elements_text(u.gpu_ids)) END, \
                u.progress, u.progress_at, u.reason, u.detail, u.events_seen, \
                u.last_sequence, u.submitted_at, u.started_at, u.updated_at \
         FROM UNNEST($1::uuid[], $2::uuid[], $3::text[], $4::text[], $5::text[], $6::text[], \
                     $7::int[], $8::text[], $9::int[], $10::int[], $11::int[], $12::bool[], \
                     $13::timestamptz[], $14::text[], $15::text[], $16::smallint[], \
                     $17::text[], $18::jsonb[], $19::float8[], $20::timestamptz[], \
                     $21::text[], $22::text[], $23::int[], $24::bigint[], \
                     $25::timestamptz[], $26::timestamptz[], $27::timestamptz[]) \
              AS u(workload_id, request_id, tenant_id, tier, kind, model, gpu_count, \
                   gpu_type, gpu_memory_gib, duration_s, latency_target_ms, interruptible, \
                   deadline, source, state, priority, worker_id, gpu_ids, progress, \
                   progress_at, reason, detail, events_seen, last_sequence, submitted_at, \
                   started_at, updated_at) \
         ON CONFLICT (workload_id) DO UPDATE SET \
             kind = EXCLUDED.kind, state = EXCLUDED.state, priority = EXCLUDED.priority, \
             interruptible = EXCLUDED.interruptible, worker_id = EXCLUDED.worker_id, \
             gpu_ids = EXCLUDED.gpu_ids, progress = EXCLUDED.progress, \
             progress_at = EXCLUDED.progress_at, reason = EXCLUDED.reason, \
             detail = EXCLUDED.detail, events_seen = EXCLUDED.events_seen, \
             last_sequence = EXCLUDED.last_sequence, started_at = EXCLUDED.started_at, \
             updated_at = EXCLUDED.updated_at"
    ))
    .bind(col!(workload_id))
    .bind(col!(request_id))
    .bind(col!(tenant_id))
    .bind(col!(tier))
    .bind(col!(kind))
    .bind(col!(model))
    .bind(col!(gpu_count))
    .bind(col!(gpu_type))
    .bind(col!(gpu_memory_gib))
    .bind(col!(duration_s))
    .bind(col!(latency_target_ms))
    .bind(col!(interruptible))
    .bind(col!(deadline))
    .bind(col!(source))
    .bind(col!(state))
    .bind(col!(priority))
    .bind(col!(worker_id))
    .bind(gpu_ids)
    .bind(col!(progress))
    .bind(col!(progress_at))
    .bind(col!(reason))
    .bind(col!(detail))
    .bind(col!(events_seen))
    .bind(col!(last_sequence))
    .bind(col!(submitted_at))
    .bind(col!(started_at))
    .bind(col!(updated_at))
    .execute(tx)
    .await?;
    Ok(())
}

/// One workload's row.
pub async fn get<'e>(
    db: impl PgExecutor<'e>,
    workload_id: Uuid,
) -> Result<Option<WorkloadRecord>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT {RECORD_COLUMNS} FROM workload_board WHERE workload_id = $1"
    ))
    .bind(workload_id)
    .fetch_optional(db)
    .await
}

/// What to list, newest first.
#[derive(Debug, Clone, Default)]
pub struct ListFilter<'a> {
    /// Only this tenant's workloads (`None`: all tenants).
    pub tenant_id: Option<&'a str>,
    /// Only this state.
    pub state: Option<WorkloadState>,
    /// Only this class (`unclassified` included).
    pub kind: Option<&'a str>,
    /// Keyset cursor: only rows strictly older than `(submitted_at, workload_id)`.
    pub before: Option<(OffsetDateTime, Uuid)>,
    /// Most rows.
    pub limit: i64,
}

/// Workloads matching `filter`, newest first (ties broken by id, descending), for keyset
/// pagination on `(submitted_at, workload_id)`.
pub async fn list<'e>(
    db: impl PgExecutor<'e>,
    filter: &ListFilter<'_>,
) -> Result<Vec<WorkloadRecord>, sqlx::Error> {
    let (before_at, before_id) = filter.before.unzip();
    sqlx::query_as(&format!(
        "SELECT {RECORD_COLUMNS} FROM workload_board \
         WHERE ($1::text IS NULL OR tenant_id = $1) \
           AND ($2::text IS NULL OR state = $2) \
           AND ($3::text IS NULL OR kind = $3) \
           AND ($4::timestamptz IS NULL OR (submitted_at, workload_id) < ($4, $5)) \
         ORDER BY submitted_at DESC, workload_id DESC LIMIT $6"
    ))
    .bind(filter.tenant_id)
    .bind(filter.state.map(WorkloadState::as_str))
    .bind(filter.kind)
    .bind(before_at)
    .bind(before_id)
    .bind(filter.limit)
    .fetch_all(db)
    .await
}

/// Where a queued workload stands in the shared queue.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct QueueStanding {
    /// 1 for the next to be placed.
    pub position: i64,
    /// GPU-seconds of declared work queued ahead of it.
    pub ahead_gpu_seconds: f64,
}

/// The queue order: priority (higher first; unclassified work counts as 0, after all
/// classified work), then age (older first), then id. Returns the standing of a workload with
/// `priority` submitted at `submitted_at` among every tenant's queued work.
pub async fn queue_standing<'e>(
    db: impl PgExecutor<'e>,
    workload_id: Uuid,
    priority: Option<i16>,
    submitted_at: OffsetDateTime,
) -> Result<QueueStanding, sqlx::Error> {
    let (ahead, gpu_seconds): (i64, f64) = sqlx::query_as(
        "SELECT count(*), COALESCE(sum(gpu_count::float8 * COALESCE(duration_s, 0) \
                 * (1 - progress)), 0)::float8 \
         FROM workload_board \
         WHERE state = 'queued' AND workload_id <> $1 \
           AND (COALESCE(priority, 0) > $2 \
                OR (COALESCE(priority, 0) = $2 AND (submitted_at, workload_id) < ($3, $1)))",
    )
    .bind(workload_id)
    .bind(priority.unwrap_or(0))
    .bind(submitted_at)
    .fetch_one(db)
    .await?;
    Ok(QueueStanding {
        position: ahead + 1,
        ahead_gpu_seconds: gpu_seconds,
    })
}

/// Workloads that hold GPUs now (scheduled, running, paused, preempted).
pub async fn holding_gpus<'e>(db: impl PgExecutor<'e>) -> Result<Vec<WorkloadRecord>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT {RECORD_COLUMNS} FROM workload_board \
         WHERE state IN ('scheduled', 'running', 'paused', 'preempted')"
    ))
    .fetch_all(db)
    .await
}

/// Queued workloads per priority (`None`: not yet classified), for one tenant or all.
pub async fn queue_depth<'e>(
    db: impl PgExecutor<'e>,
    tenant_id: Option<&str>,
) -> Result<Vec<(Option<i16>, i64)>, sqlx::Error> {
    sqlx::query_as(
        "SELECT priority, count(*) FROM workload_board \
         WHERE state = 'queued' AND ($1::text IS NULL OR tenant_id = $1) \
         GROUP BY priority ORDER BY priority DESC NULLS LAST",
    )
    .bind(tenant_id)
    .fetch_all(db)
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use hcp_events::payload::*;
    use hcp_events::workload_stream;
    use time::Duration;

    fn at(id: Uuid, seq: i64, secs: i64, payload: Event) -> Envelope {
        let mut e = Envelope::new(workload_stream(id), "test", payload);
        e.sequence = seq;
        e.occurred_at = OffsetDateTime::UNIX_EPOCH + Duration::seconds(secs);
        e
    }

    fn lifecycle(id: Uuid) -> Vec<Envelope> {
        vec![
            at(
                id,
                1,
                0,
                Event::WorkloadSubmitted(WorkloadSubmitted::simple(
                    id,
                    "acme",
                    WorkloadKind::Training,
                    "llama",
                    2,
                    100,
                )),
            ),
            at(
                id,
                2,
                1,
                Event::WorkloadQueued(WorkloadQueued {
                    workload_id: id,
                    kind: WorkloadKind::Training,
                    priority: 2,
                    interruptible: true,
                    reason: "stated".into(),
                }),
            ),
            at(
                id,
                3,
                2,
                Event::WorkloadScheduled(WorkloadScheduled {
                    workload_id: id,
                    worker_id: "w1".into(),
                    gpu_ids: vec!["w1/gpu-0".into(), "w1/gpu-1".into()],
                }),
            ),
            at(
                id,
                4,
                10,
                Event::WorkloadStarted(WorkloadStarted { workload_id: id }),
            ),
        ]
    }

    #[test]
    fn folding_a_stream_gives_the_row_the_board_would_hold() {
        let id = Uuid::now_v7();
        let r = WorkloadRecord::from_stream(&lifecycle(id))
            .unwrap()
            .unwrap();
        assert_eq!(r.state, "running");
        assert_eq!(r.priority, Some(2));
        assert_eq!(r.interruptible, Some(true));
        assert_eq!(r.worker_id.as_deref(), Some("w1"));
        assert_eq!(r.gpu_ids.as_ref().map(Vec::len), Some(2));
        assert_eq!(r.events_seen, 4);
        assert_eq!(r.last_sequence, 4);
        assert_eq!(r.tier.as_deref(), Some("pro"));
        assert_eq!(r.source.as_deref(), Some("rest"));
    }

    #[test]
    fn a_requeue_clears_the_placement_and_keeps_the_resume_point() {
        let id = Uuid::now_v7();
        let mut evs = lifecycle(id);
        evs.push(at(
            id,
            5,
            20,
            Event::WorkloadRequeued(WorkloadRequeued {
                workload_id: id,
                resume_progress: 0.4,
                reason: "worker lost".into(),
            }),
        ));
        let r = WorkloadRecord::from_stream(&evs).unwrap().unwrap();
        assert_eq!(r.state, "queued");
        assert_eq!(r.worker_id, None);
        assert_eq!(r.progress, 0.4);
        assert_eq!(r.reason.as_deref(), Some("worker lost"));
    }

    #[test]
    fn a_stream_that_breaks_the_state_machine_does_not_fold() {
        let id = Uuid::now_v7();
        let mut evs = lifecycle(id);
        evs.swap(2, 3); // started before scheduled
        assert!(WorkloadRecord::from_stream(&evs).is_err());
        assert!(WorkloadRecord::from_stream(&evs[3..]).is_err());
        assert_eq!(WorkloadRecord::from_stream(&[]).unwrap(), None);
    }

    #[test]
    fn remaining_work_counts_down_only_while_running() {
        let id = Uuid::now_v7();
        let r = WorkloadRecord::from_stream(&lifecycle(id))
            .unwrap()
            .unwrap();
        // Declared 100 s, started at t=10: at t=40 about 70 s are left.
        let now = OffsetDateTime::UNIX_EPOCH + Duration::seconds(40);
        assert!((r.remaining_s(now) - 70.0).abs() < 1e-9);
        // Long past its declared duration: never negative.
        let later = OffsetDateTime::UNIX_EPOCH + Duration::seconds(1000);
        assert_eq!(r.remaining_s(later), 0.0);
        let mut paused = r.clone();
        paused.state = "paused".into();
        assert!((paused.remaining_s(now) - 100.0).abs() < 1e-9);
    }
}
