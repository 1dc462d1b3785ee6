//! Extractors: who is calling (and whether their tier's rate limit allows it), and JSON bodies
//! whose errors name the field.

use std::time::Instant;

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use serde::de::DeserializeOwned;

use super::AppState;
use crate::domain::keys;
use crate::error::{ApiError, FieldProblem};
use crate::repo::Tenant;

/// The authenticated caller.
#[derive(Debug, Clone)]
pub enum Caller {
    /// The bootstrap admin key: every tenant's data, admin routes; no tenant of its own.
    Admin,
    /// A tenant's key.
    Tenant(Tenant),
}

impl Caller {
    /// The tenant whose data the caller may see; `None` for the admin (all tenants).
    pub fn tenant_scope(&self) -> Option<&str> {
        match self {
            Caller::Admin => None,
            Caller::Tenant(t) => Some(&t.id),
        }
    }

    /// Whether the caller may see a workload of `tenant_id`.
    pub fn may_see(&self, tenant_id: &str) -> bool {
        self.tenant_scope().is_none_or(|t| t == tenant_id)
    }

    /// Who is acting, for `requested_by` on events.
    pub fn actor(&self) -> String {
        match self {
            Caller::Admin => "admin".into(),
            Caller::Tenant(t) => format!("tenant:{}", t.id),
        }
    }
}

fn bearer(parts: &Parts) -> Option<&str> {
    let value = parts.headers.get(AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let token = bearer(parts).ok_or(ApiError::Unauthorized)?;
        let hash = keys::hash(token);
        if state.is_admin_key(&hash) {
            tracing::Span::current().record("tenant_id", "admin");
            return Ok(Caller::Admin);
        }
        let tenant = state
            .tenant_by_key_hash(&hash)
            .await?
            .ok_or(ApiError::Unauthorized)?;
        tracing::Span::current().record("tenant_id", tenant.id.as_str());
        state
            .limiter()
            .check(&tenant.id, tenant.tier, Instant::now())
            .map_err(|l| ApiError::RateLimited {
                tier: tenant.tier.as_str(),
                retry_after_s: l.retry_after_s,
            })?;
        Ok(Caller::Tenant(tenant))
    }
}

/// A caller that must be the admin (403 otherwise).
#[derive(Debug, Clone, Copy)]
pub struct AdminCaller;

impl FromRequestParts<AppState> for AdminCaller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        match Caller::from_request_parts(parts, state).await? {
            Caller::Admin => Ok(AdminCaller),
            Caller::Tenant(_) => Err(ApiError::Forbidden(
                "admin routes need the admin key".into(),
            )),
        }
    }
}

/// A caller that must be a tenant (403 for the admin key, which owns no workloads).
#[derive(Debug, Clone)]
pub struct TenantCaller(pub Tenant);

impl FromRequestParts<AppState> for TenantCaller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        match Caller::from_request_parts(parts, state).await? {
            Caller::Tenant(t) => Ok(TenantCaller(t)),
            Caller::Admin => Err(ApiError::Forbidden(
                "the admin key has no tenant; submit with a tenant's key".into(),
            )),
        }
    }
}

/// A JSON body. Errors are 400s in the API's shape, naming the field when serde knows it.
#[derive(Debug, Clone)]
pub struct JsonBody<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let bytes = Bytes::from_request(req, state)
            .await
            .map_err(|r| ApiError::Rejected {
                status: r.status(),
                message: r.body_text(),
            })?;
        parse_json(&bytes).map(JsonBody)
    }
}

/// Parses JSON, turning serde's error into a 400 that names the field.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let de = &mut serde_json::Deserializer::from_slice(bytes);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let field = field_of(&e);
        let message = e.inner().to_string();
        ApiError::BadRequest {
            code: "invalid_body",
            message: match &field {
                Some(f) => format!("{f}: {message}"),
                None => format!("request body: {message}"),
            },
            fields: field
                .map(|f| vec![FieldProblem::new(f, message)])
                .unwrap_or_default(),
        }
    })
}

/// The field a deserialisation error is about: its path, or for unknown and missing fields
/// (reported at the parent) the name serde quotes.
pub fn field_of(e: &serde_path_to_error::Error<serde_json::Error>) -> Option<String> {
    let message = e.inner().to_string();
    let quoted = ["unknown field `", "missing field `"]
        .iter()
        .find_map(|p| message.strip_prefix(p))
        .and_then(|rest| rest.split('`').next())
        .filter(|f| !f.is_empty());
    let path = e.path().to_string();
    // `.` is the root; `?` marks a segment serde could not name (e.g. a broken key).
    let known = !matches!(path.as_str(), "" | "." | "?") && !path.contains('?');
    match (quoted, known) {
        (Some(f), true) if path.rsplit('.').next() == Some(f) => Some(path),
        (Some(f), true) => Some(format!("{path}.{f}")),
        (Some(f), false) => Some(f.to_owned()),
        (None, true) => Some(path),
        (None, false) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hcp_events::WorkloadRequest;

    fn field(json: &str) -> Option<String> {
        match parse_json::<WorkloadRequest>(json.as_bytes()) {
            Err(ApiError::BadRequest { fields, .. }) => fields.first().map(|f| f.field.clone()),
            other => panic!("expected a 400, got {other:?}"),
        }
    }

    #[test]
    fn body_errors_name_the_field_wrong_unknown_or_missing() {
        let id = "\"request_id\":\"00000000-0000-0000-0000-000000000000\",\"tenant_id\":\"t\"";
        assert_eq!(
            field(&format!(
                "{{{id},\"model\":\"m\",\"gpu_count\":\"four\",\"duration_s\":1}}"
            ))
            .as_deref(),
            Some("gpu_count")
        );
        assert_eq!(
            field(&format!(
                "{{{id},\"model\":\"m\",\"gpu_count\":1,\"duration_s\":1,\"gpus\":4}}"
            ))
            .as_deref(),
            Some("gpus")
        );
        assert_eq!(
            field(&format!("{{{id},\"gpu_count\":1,\"duration_s\":1}}")).as_deref(),
            Some("model")
        );
        assert_eq!(field("not json"), None);
    }
}
