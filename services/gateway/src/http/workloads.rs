//! Workload handlers: submit, read (board first, the event store when the board lags), list,
//! status, queue, and the tenant's commands (cancel, pause, resume).

use std::collections::HashMap;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use hcp_db::{ExpectedVersion, Publish, StoreError};
use hcp_domain::{transition, WorkloadState};
use hcp_events::payload::{SubmissionSource, WorkloadCancelled, WorkloadPaused, WorkloadResumed};
use hcp_events::{workload_stream, Envelope, Event, WorkloadRequest};
use hcp_readmodel::board::{self, ListFilter};
use hcp_readmodel::{resources as fleet, WorkloadRecord};
use serde::Deserialize;
use time::OffsetDateTime;
use uuid::Uuid;

use super::extract::{Caller, JsonBody, TenantCaller};
use super::views::{
    Accepted, PriorityDepth, QueueView, StatusView, SubmitWorkload, WorkloadPage, WorkloadView,
};
use super::AppState;
use crate::domain::cursor::Cursor;
use crate::domain::eta::{self, EtaInputs};
use crate::error::{ApiError, FieldProblem};
use crate::group::OwnedSubmission;
use crate::metrics_names as m;
use crate::repo::Tenant;
use crate::submit::{self, SubmitError, Submitted, PRODUCER};

/// Header naming the client's idempotency key.
pub const IDEMPOTENCY_KEY: &str = "idempotency-key";
/// Response header set on a replayed submission.
pub const IDEMPOTENT_REPLAYED: &str = "idempotent-replayed";
/// Largest page.
pub const MAX_LIMIT: i64 = 200;
/// Default page.
pub const DEFAULT_LIMIT: i64 = 50;
/// Appends retried after a concurrent writer moved the stream.
const COMMAND_ATTEMPTS: usize = 5;

pub(crate) fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(value) = headers.get(IDEMPOTENCY_KEY) else {
        return Ok(None);
    };
    let key = value
        .to_str()
        .ok()
        .filter(|k| (1..=255).contains(&k.len()) && k.bytes().all(|b| b.is_ascii_graphic()))
        .ok_or_else(|| {
            ApiError::field(
                "validation",
                "Idempotency-Key",
                "must be 1-255 visible ASCII characters",
            )
        })?;
    Ok(Some(key.to_owned()))
}

/// `POST /api/v1/workloads`.
#[tracing::instrument(skip_all, fields(tenant_id = %tenant.id))]
pub async fn submit(
    State(app): State<AppState>,
    TenantCaller(tenant): TenantCaller,
    headers: HeaderMap,
    JsonBody(body): JsonBody<SubmitWorkload>,
) -> Result<Response, ApiError> {
    let key = idempotency_key(&headers)?;
    let request_id = body.request_id;
    let request = body.into_request(&tenant.id);
    let (id, replayed) = accept(&app, &tenant, key, request_id, &request).await?;
    let state = if replayed {
        load(&app, &Caller::Tenant(tenant), id).await?.state
    } else {
        WorkloadState::Queued.as_str().to_owned()
    };
    let mut response = (StatusCode::ACCEPTED, Json(Accepted::new(id, state))).into_response();
    if replayed {
        response
            .headers_mut()
            .insert(IDEMPOTENT_REPLAYED, HeaderValue::from_static("true"));
    }
    Ok(response)
}

/// Validates a REST request and records its submission (or finds the one its idempotency key
/// already made): the workload id, and whether it was a replay. The header key wins over a
/// client-chosen request id.
pub(crate) async fn accept(
    app: &AppState,
    tenant: &Tenant,
    key: Option<String>,
    request_id: Option<Uuid>,
    request: &WorkloadRequest,
) -> Result<(Uuid, bool), ApiError> {
    if let Err(errors) = request.validate(OffsetDateTime::now_utc()) {
        let fields: Vec<FieldProblem> = errors.into_iter().map(Into::into).collect();
        let message = fields
            .iter()
            .map(|f| format!("{}: {}", f.field, f.message))
            .collect::<Vec<_>>()
            .join("; ");
        return Err(ApiError::BadRequest {
            code: "validation",
            message,
            fields,
        });
    }
    let (key, key_field) = match (key, request_id) {
        (Some(k), _) => (Some(k), "Idempotency-Key"),
        (None, Some(id)) => (Some(id.to_string()), "request_id"),
        (None, None) => (None, "Idempotency-Key"),
    };
    let submission = OwnedSubmission {
        request: request.clone(),
        tier: tenant.tier,
        source: SubmissionSource::Rest,
        idempotency_key: key,
        fingerprint: submit::fingerprint(request),
    };
    let outcome = app.group().submit(submission).await;
    let outcome = match outcome {
        Ok(o) => o,
        Err(SubmitError::KeyReused { key, workload_id }) => {
            return Err(ApiError::Unprocessable {
                code: "idempotency_key_reused",
                message: format!(
                    "{key_field} `{key}` was already used for a different request \
                     (workload {workload_id}); use a new key"
                ),
                fields: vec![FieldProblem::new(
                    key_field,
                    "already used for a different request",
                )],
            })
        }
        Err(SubmitError::Store(e)) => return Err(e.into()),
        Err(SubmitError::Database(e)) => return Err(e.into()),
        Err(e @ SubmitError::Unavailable(_)) => return Err(ApiError::Internal(e.into())),
    };
    let replayed = matches!(outcome, Submitted::Replayed(_));
    if !replayed {
        metrics::counter!(m::SUBMISSIONS, "source" => "rest").increment(1);
    }
    Ok((outcome.workload_id(), replayed))
}

pub(crate) fn parse_id(raw: &str) -> Result<Uuid, ApiError> {
    Uuid::try_parse(raw).map_err(|_| ApiError::field("validation", "workload_id", "must be a UUID"))
}

/// The workload as the caller may see it: the board's row, or (when the board has not caught
/// up with the stream, e.g. right after a submit or a cancel) the stream folded in memory.
/// Another tenant's workload is reported missing.
pub(crate) async fn load(
    app: &AppState,
    caller: &Caller,
    id: Uuid,
) -> Result<WorkloadRecord, ApiError> {
    let not_found = || ApiError::NotFound(format!("workload {id}"));
    let stream = workload_stream(id);
    let row = board::get(app.pool(), id).await?;
    if let Some(r) = &row {
        if !caller.may_see(&r.tenant_id) {
            return Err(not_found());
        }
        let version = app.store().stream_version(&stream).await?;
        if version <= r.last_sequence {
            return row.ok_or_else(not_found);
        }
    }
    let events: Vec<Envelope> = app
        .store()
        .read_stream(&stream)
        .await?
        .into_iter()
        .map(|r| r.envelope)
        .collect();
    let folded = WorkloadRecord::from_stream(&events)
        .map_err(|e| anyhow::anyhow!("stream {stream} does not fold: {e}"))?;
    match folded {
        Some(r) if caller.may_see(&r.tenant_id) => Ok(r),
        _ => Err(not_found()),
    }
}

/// `GET /api/v1/workloads/{workload_id}`.
#[tracing::instrument(skip_all, fields(workload_id = %raw))]
pub async fn get_one(
    State(app): State<AppState>,
    caller: Caller,
    Path(raw): Path<String>,
) -> Result<Json<WorkloadView>, ApiError> {
    let id = parse_id(&raw)?;
    Ok(Json(load(&app, &caller, id).await?.into()))
}

/// Query of `GET /api/v1/workloads`.
#[derive(Debug, Default, Deserialize)]
pub struct ListParams {
    state: Option<String>,
    kind: Option<String>,
    limit: Option<String>,
    cursor: Option<String>,
}

const KINDS: [&str; 4] = [
    "realtime_inference",
    "batch_inference",
    "training",
    "unclassified",
];

/// `GET /api/v1/workloads`.
#[tracing::instrument(skip_all)]
pub async fn list(
    State(app): State<AppState>,
    caller: Caller,
    params: Result<Query<ListParams>, QueryRejection>,
) -> Result<Json<WorkloadPage>, ApiError> {
    let Query(p) = params.map_err(|e| ApiError::BadRequest {
        code: "validation",
        message: e.body_text(),
        fields: vec![],
    })?;
    let state = p
        .state
        .as_deref()
        .map(|s| {
            WorkloadState::parse(s).ok_or_else(|| {
                let names: Vec<&str> = WorkloadState::ALL.iter().map(|s| s.as_str()).collect();
                ApiError::field(
                    "validation",
                    "state",
                    format!("must be one of {}", names.join(", ")),
                )
            })
        })
        .transpose()?;
    let kind = p
        .kind
        .as_deref()
        .map(|k| {
            KINDS.contains(&k).then_some(k).ok_or_else(|| {
                ApiError::field(
                    "validation",
                    "kind",
                    format!("must be one of {}", KINDS.join(", ")),
                )
            })
        })
        .transpose()?;
    let limit = match p.limit.as_deref() {
        None => DEFAULT_LIMIT,
        Some(l) => l
            .parse::<i64>()
            .ok()
            .filter(|n| (1..=MAX_LIMIT).contains(n))
            .ok_or_else(|| {
                ApiError::field("validation", "limit", format!("must be 1-{MAX_LIMIT}"))
            })?,
    };
    let before = p
        .cursor
        .as_deref()
        .map(|c| {
            Cursor::decode(c).ok_or_else(|| {
                ApiError::field("validation", "cursor", "is not a cursor this API issued")
            })
        })
        .transpose()?;
    let filter = ListFilter {
        tenant_id: caller.tenant_scope(),
        state,
        kind,
        before: before.map(|c| (c.submitted_at, c.workload_id)),
        limit: limit + 1,
    };
    let mut rows = board::list(app.pool(), &filter).await?;
    let more = rows.len() as i64 > limit;
    rows.truncate(usize::try_from(limit).unwrap_or(usize::MAX));
    let next_cursor = rows.last().filter(|_| more).map(|r| {
        Cursor {
            submitted_at: r.submitted_at,
            workload_id: r.workload_id,
        }
        .encode()
    });
    Ok(Json(WorkloadPage {
        items: rows.into_iter().map(Into::into).collect(),
        next_cursor,
    }))
}

/// Healthy GPUs in the fleet.
async fn fleet_gpus(app: &AppState) -> Result<i64, ApiError> {
    Ok(fleet::gpu_counts(app.pool())
        .await?
        .iter()
        .map(|c| c.total - c.unavailable)
        .sum())
}

/// `GET /api/v1/workloads/{workload_id}/status`. See [`crate::domain::eta`] for the ETA.
#[tracing::instrument(skip_all, fields(workload_id = %raw))]
pub async fn status(
    State(app): State<AppState>,
    caller: Caller,
    Path(raw): Path<String>,
) -> Result<Json<StatusView>, ApiError> {
    let id = parse_id(&raw)?;
    let r = load(&app, &caller, id).await?;
    let now = OffsetDateTime::now_utc();
    let state = r.workload_state();
    let queued = state == Some(WorkloadState::Queued);
    let standing = if queued {
        Some(board::queue_standing(app.pool(), r.workload_id, r.priority, r.submitted_at).await?)
    } else {
        None
    };
    let fleet_gpus = fleet_gpus(&app).await?;
    let estimate = if state.is_some_and(|s| !s.is_terminal()) {
        let busy_gpu_seconds = if queued {
            board::holding_gpus(app.pool())
                .await?
                .iter()
                .map(|h| f64::from(h.gpu_count.max(0)) * h.remaining_s(now))
                .sum()
        } else {
            0.0
        };
        eta::estimate(EtaInputs {
            queued,
            ahead_gpu_seconds: standing.map_or(0.0, |s| s.ahead_gpu_seconds),
            busy_gpu_seconds,
            fleet_gpus,
            remaining_s: r.remaining_s(now),
        })
    } else {
        None
    };
    Ok(Json(StatusView {
        workload_id: r.workload_id,
        state: r.state.clone(),
        priority: r.priority,
        queue_position: standing.map(|s| s.position),
        eta_start_s: estimate.map(|e| e.start_s),
        eta_complete_s: estimate.map(|e| e.complete_s),
        progress: r.progress,
        fleet_gpus,
        updated_at: r.updated_at,
    }))
}

/// `GET /api/v1/queue`.
#[tracing::instrument(skip_all)]
pub async fn queue(
    State(app): State<AppState>,
    caller: Caller,
) -> Result<Json<QueueView>, ApiError> {
    let rows = board::queue_depth(app.pool(), caller.tenant_scope()).await?;
    let by: HashMap<Option<i16>, i64> = rows.into_iter().collect();
    let by_priority: Vec<PriorityDepth> = (1..=10u8)
        .rev()
        .map(|p| PriorityDepth {
            priority: p,
            depth: by.get(&Some(i16::from(p))).copied().unwrap_or(0),
        })
        .collect();
    Ok(Json(QueueView {
        scope: if caller.tenant_scope().is_some() {
            "tenant"
        } else {
            "all"
        }
        .into(),
        tenant_id: caller.tenant_scope().map(str::to_owned),
        total: by.values().sum(),
        unclassified: by.get(&None).copied().unwrap_or(0),
        by_priority,
    }))
}

/// A tenant's command on its workload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Command {
    Cancel,
    Pause,
    Resume,
}

impl Command {
    fn event(self, workload_id: Uuid, requested_by: String) -> Event {
        match self {
            Command::Cancel => Event::WorkloadCancelled(WorkloadCancelled {
                workload_id,
                requested_by,
            }),
            Command::Pause => Event::WorkloadPaused(WorkloadPaused {
                workload_id,
                requested_by,
            }),
            Command::Resume => Event::WorkloadResumed(WorkloadResumed {
                workload_id,
                requested_by,
            }),
        }
    }
}

/// Reads the stream, folds its state, asks the state machine, and appends with
/// `ExpectedVersion::Exact` (re-reading when another writer moved the stream meanwhile).
async fn command(
    app: &AppState,
    caller: &Caller,
    raw: &str,
    cmd: Command,
) -> Result<(StatusCode, Json<Accepted>), ApiError> {
    let id = parse_id(raw)?;
    let stream = workload_stream(id);
    for _ in 0..COMMAND_ATTEMPTS {
        let events: Vec<Envelope> = app
            .store()
            .read_stream(&stream)
            .await?
            .into_iter()
            .map(|r| r.envelope)
            .collect();
        let record = WorkloadRecord::from_stream(&events)
            .map_err(|e| anyhow::anyhow!("stream {stream} does not fold: {e}"))?
            .filter(|r| caller.may_see(&r.tenant_id))
            .ok_or_else(|| ApiError::NotFound(format!("workload {id}")))?;
        let (Some(from), Some(first), Some(last)) =
            (record.workload_state(), events.first(), events.last())
        else {
            return Err(ApiError::NotFound(format!("workload {id}")));
        };
        let event = cmd.event(id, caller.actor());
        let to = transition(Some(from), &event).map_err(|e| ApiError::Conflict {
            code: "invalid_transition",
            message: format!("workload {id} is {from}: {e}"),
        })?;
        if cmd == Command::Pause && record.interruptible != Some(true) {
            return Err(ApiError::Conflict {
                code: "not_interruptible",
                message: format!(
                    "workload {id} is not interruptible; only interruptible work can be paused"
                ),
            });
        }
        let mut envelope = Envelope::new(stream.clone(), PRODUCER, event);
        // The whole life of a workload is one flow.
        envelope.correlation_id = first.correlation_id;
        let (traceparent, tracestate) = hcp_bus::trace::current_trace_headers();
        let appended = app
            .store()
            .append_and_commit(
                &stream,
                ExpectedVersion::Exact(last.sequence),
                &[envelope],
                &Publish::to(app.workloads_topic()).with_trace(traceparent, tracestate),
            )
            .await;
        match appended {
            Ok(_) => {
                tracing::info!(workload_id = %id, state = %to, "workload command recorded");
                return Ok((StatusCode::ACCEPTED, Json(Accepted::new(id, to.as_str()))));
            }
            Err(StoreError::ConcurrencyConflict { .. }) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Err(ApiError::Conflict {
        code: "concurrent_update",
        message: format!("workload {id} kept changing; retry"),
    })
}

/// `POST /api/v1/workloads/{workload_id}/cancel`.
#[tracing::instrument(skip_all, fields(workload_id = %raw))]
pub async fn cancel(
    State(app): State<AppState>,
    caller: Caller,
    Path(raw): Path<String>,
) -> Result<(StatusCode, Json<Accepted>), ApiError> {
    command(&app, &caller, &raw, Command::Cancel).await
}

/// `POST /api/v1/workloads/{workload_id}/pause`.
#[tracing::instrument(skip_all, fields(workload_id = %raw))]
pub async fn pause(
    State(app): State<AppState>,
    caller: Caller,
    Path(raw): Path<String>,
) -> Result<(StatusCode, Json<Accepted>), ApiError> {
    command(&app, &caller, &raw, Command::Pause).await
}

/// `POST /api/v1/workloads/{workload_id}/resume`.
#[tracing::instrument(skip_all, fields(workload_id = %raw))]
pub async fn resume(
    State(app): State<AppState>,
    caller: Caller,
    Path(raw): Path<String>,
) -> Result<(StatusCode, Json<Accepted>), ApiError> {
    command(&app, &caller, &raw, Command::Resume).await
}
