//! Admin handlers (bootstrap admin key only): tenants and their API keys.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;

use super::extract::{AdminCaller, JsonBody};
use super::views::{CreateTenant, CreatedKey, TenantView};
use super::AppState;
use crate::domain::keys;
use crate::error::{ApiError, FieldProblem};
use crate::repo;

fn validate(body: &CreateTenant) -> Result<(), ApiError> {
    let mut fields = Vec::new();
    let id_ok = (1..=64).contains(&body.id.len())
        && body
            .id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    if !id_ok {
        fields.push(FieldProblem::new(
            "id",
            "must be 1-64 characters of A-Z a-z 0-9 . _ -",
        ));
    }
    if body.name.trim().is_empty() || body.name.chars().count() > 128 {
        fields.push(FieldProblem::new("name", "must be 1-128 characters"));
    }
    if fields.is_empty() {
        return Ok(());
    }
    Err(ApiError::BadRequest {
        code: "validation",
        message: fields
            .iter()
            .map(|f| format!("{}: {}", f.field, f.message))
            .collect::<Vec<_>>()
            .join("; "),
        fields,
    })
}

/// `POST /api/v1/admin/tenants`.
#[tracing::instrument(skip_all, fields(tenant_id = %body.id))]
pub async fn create_tenant(
    State(app): State<AppState>,
    _admin: AdminCaller,
    JsonBody(body): JsonBody<CreateTenant>,
) -> Result<(StatusCode, Json<TenantView>), ApiError> {
    validate(&body)?;
    let tenant = repo::create_tenant(app.pool(), &body.id, body.name.trim(), body.tier)
        .await?
        .ok_or_else(|| ApiError::Conflict {
            code: "tenant_exists",
            message: format!("tenant `{}` already exists", body.id),
        })?;
    tracing::info!(tenant_id = %tenant.id, tier = tenant.tier.as_str(), "tenant created");
    Ok((
        StatusCode::CREATED,
        Json(TenantView {
            id: tenant.id,
            name: tenant.name,
            tier: tenant.tier,
            created_at: tenant.created_at,
        }),
    ))
}

/// `POST /api/v1/admin/tenants/{tenant_id}/keys`.
#[tracing::instrument(skip_all, fields(tenant_id = %tenant_id))]
pub async fn create_key(
    State(app): State<AppState>,
    _admin: AdminCaller,
    Path(tenant_id): Path<String>,
) -> Result<(StatusCode, Json<CreatedKey>), ApiError> {
    let tenant = repo::tenant(app.pool(), &tenant_id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("tenant {tenant_id}")))?;
    let key = keys::generate();
    let prefix = keys::display_prefix(&key).to_owned();
    let created_at = repo::insert_key(app.pool(), &keys::hash(&key), &prefix, &tenant.id).await?;
    tracing::info!(tenant_id = %tenant.id, key_prefix = %prefix, "API key created");
    Ok((
        StatusCode::CREATED,
        Json(CreatedKey {
            tenant_id: tenant.id,
            key,
            key_prefix: prefix,
            created_at,
        }),
    ))
}
