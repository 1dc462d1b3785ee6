//! Inference results: `POST /api/v1/embeddings` submits texts as a real-time inference
//! workload and waits (bounded) for its embeddings; `GET /api/v1/workloads/{id}/result` reads
//! the output of any completed workload. Results travel in the `workload.completed` event, so
//! they are read from the workload's stream.

use std::time::{Duration, Instant};

use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use hcp_domain::WorkloadState;
use hcp_events::payload::{InferenceInput, RunOutput, WorkloadKind};
use hcp_events::{workload_stream, Event, WorkloadRequest};
use hcp_readmodel::WorkloadRecord;
use uuid::Uuid;

use super::extract::{Caller, JsonBody, TenantCaller};
use super::views::{Accepted, EmbedRequest, EmbeddingsView};
use super::workloads::{accept, idempotency_key, load, parse_id, IDEMPOTENT_REPLAYED};
use super::AppState;
use crate::error::{ApiError, FieldProblem};

/// The model embedding requests run when they name none.
pub const DEFAULT_EMBEDDING_MODEL: &str = "all-MiniLM-L6-v2";
/// Default and longest wait for a result.
const DEFAULT_WAIT_MS: u32 = 10_000;
const MAX_WAIT_MS: u32 = 60_000;
/// How often a waiting request looks for its result: first soon (a short request is done in
/// tens of milliseconds), then less often, so long waits do not load the database.
const FIRST_POLL: Duration = Duration::from_millis(10);
const MAX_POLL: Duration = Duration::from_millis(250);

/// Whether `model` names the embedding model (bare or with its organisation, any case).
fn is_embedding_model(model: &str) -> bool {
    let bare = model.rsplit('/').next().unwrap_or(model);
    bare.eq_ignore_ascii_case(DEFAULT_EMBEDDING_MODEL)
}

/// The output of workload `id` when it has completed; `None` while it is still on its way. A
/// workload that ended otherwise, or completed without an output, is an error naming why.
async fn output(
    app: &AppState,
    id: Uuid,
    rec: &WorkloadRecord,
) -> Result<Option<EmbeddingsView>, ApiError> {
    match rec.workload_state() {
        Some(WorkloadState::Completed) => {}
        Some(s @ (WorkloadState::Failed | WorkloadState::Cancelled)) => {
            let why = rec
                .reason
                .clone()
                .unwrap_or_else(|| "no reason given".into());
            return Err(ApiError::Conflict {
                code: if s == WorkloadState::Failed {
                    "workload_failed"
                } else {
                    "workload_cancelled"
                },
                message: format!("workload {id} {}: {why}", s.as_str()),
            });
        }
        _ => return Ok(None),
    }
    let events = app.store().read_stream(&workload_stream(id)).await?;
    let out = events
        .into_iter()
        .rev()
        .find_map(|r| match r.envelope.payload {
            Event::WorkloadCompleted(c) => Some(c.output),
            _ => None,
        });
    let Some(Some(out)) = out else {
        return Err(ApiError::NotFound(format!(
            "result of workload {id} (it completed without an output)"
        )));
    };
    let vectors = out
        .decode_vectors()
        .map_err(|e| anyhow::anyhow!("workload {id} has an undecodable output: {e}"))?;
    let RunOutput::Embeddings {
        model,
        dims,
        device,
        compute_ms,
        ..
    } = out;
    Ok(Some(EmbeddingsView {
        workload_id: id,
        model,
        dims,
        device,
        compute_ms,
        embeddings: vectors,
    }))
}

fn result_link(id: Uuid) -> String {
    format!("/api/v1/workloads/{id}/result")
}

/// `GET /api/v1/workloads/{workload_id}/result`.
#[tracing::instrument(skip_all, fields(workload_id = %raw))]
pub async fn result(
    State(app): State<AppState>,
    caller: Caller,
    Path(raw): Path<String>,
) -> Result<Json<EmbeddingsView>, ApiError> {
    let id = parse_id(&raw)?;
    let rec = load(&app, &caller, id).await?;
    match output(&app, id, &rec).await? {
        Some(view) => Ok(Json(view)),
        None => Err(ApiError::Conflict {
            code: "not_ready",
            message: format!(
                "workload {id} is {}; its result is here once it completes",
                rec.state
            ),
        }),
    }
}

/// `POST /api/v1/embeddings`.
#[tracing::instrument(skip_all, fields(tenant_id = %tenant.id))]
pub async fn embed(
    State(app): State<AppState>,
    TenantCaller(tenant): TenantCaller,
    headers: HeaderMap,
    JsonBody(body): JsonBody<EmbedRequest>,
) -> Result<Response, ApiError> {
    let key = idempotency_key(&headers)?;
    let wait_ms = body.wait_ms.unwrap_or(DEFAULT_WAIT_MS);
    if wait_ms > MAX_WAIT_MS {
        return Err(ApiError::field(
            "validation",
            "wait_ms",
            format!("must be 0-{MAX_WAIT_MS}, got {wait_ms}"),
        ));
    }
    let model = body
        .model
        .unwrap_or_else(|| DEFAULT_EMBEDDING_MODEL.to_owned());
    if !is_embedding_model(&model) {
        return Err(ApiError::field(
            "validation",
            "model",
            format!("embeddings are served by {DEFAULT_EMBEDDING_MODEL}, not `{model}`"),
        ));
    }
    let request = WorkloadRequest {
        request_id: Uuid::nil(),
        tenant_id: tenant.id.clone(),
        kind: Some(WorkloadKind::RealtimeInference),
        model,
        gpu_count: 1,
        gpu_memory_gib: None,
        gpu_type: body.gpu_type,
        // The GPU is held for about a second; the run completes once its texts are embedded.
        duration_s: 1,
        latency_target_ms: Some(body.latency_target_ms.unwrap_or(1000)),
        interruptible: Some(false),
        deadline: None,
        input: Some(InferenceInput { texts: body.texts }),
    };
    let (id, replayed) = accept(&app, &tenant, key, None, &request)
        .await
        .map_err(rename_input_fields)?;
    let caller = Caller::Tenant(tenant);
    let deadline = Instant::now() + Duration::from_millis(u64::from(wait_ms));
    let mut pause = FIRST_POLL;
    let mut response = loop {
        let rec = load(&app, &caller, id).await?;
        if let Some(view) = output(&app, id, &rec).await? {
            break Json(view).into_response();
        }
        let now = Instant::now();
        if now >= deadline {
            let mut response =
                (StatusCode::ACCEPTED, Json(Accepted::new(id, rec.state))).into_response();
            if let Ok(v) = HeaderValue::from_str(&result_link(id)) {
                response.headers_mut().insert(header::LOCATION, v);
            }
            break response;
        }
        tokio::time::sleep(pause.min(deadline - now)).await;
        pause = (pause * 2).min(MAX_POLL);
    };
    if replayed {
        response
            .headers_mut()
            .insert(IDEMPOTENT_REPLAYED, HeaderValue::from_static("true"));
    }
    Ok(response)
}

/// This endpoint's body has `texts` where a workload request has `input.texts`.
fn rename_input_fields(e: ApiError) -> ApiError {
    match e {
        ApiError::BadRequest {
            code,
            message,
            fields,
        } => ApiError::BadRequest {
            code,
            message: message.replace("input.texts", "texts"),
            fields: fields
                .into_iter()
                .map(|f| {
                    let field = if f.field == "input.texts" {
                        "texts".to_owned()
                    } else {
                        f.field
                    };
                    FieldProblem {
                        field,
                        message: f.message,
                    }
                })
                .collect(),
        },
        other => other,
    }
}
