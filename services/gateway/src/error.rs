//! API errors, named for what the client must do, and their one JSON shape:
//! `{"error": {"code", "message", "fields": [{"field", "message"}]}}`.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use schemars::JsonSchema;
use serde::Serialize;

use crate::metrics_names as m;

/// One rejected field.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, JsonSchema)]
pub struct FieldProblem {
    /// The field (JSON name, query parameter or header).
    pub field: String,
    /// What is wrong with it.
    pub message: String,
}

impl FieldProblem {
    /// A problem with `field`.
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }
}

impl From<hcp_events::request::FieldError> for FieldProblem {
    fn from(e: hcp_events::request::FieldError) -> Self {
        Self::new(e.field, e.message)
    }
}

/// The body of every error response.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct ErrorBody {
    /// The error.
    pub error: ErrorDetail,
}

/// What went wrong.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct ErrorDetail {
    /// Stable machine-readable code, e.g. `validation`, `invalid_transition`.
    pub code: String,
    /// Human-readable explanation.
    pub message: String,
    /// The fields at fault (empty when the error is not about fields).
    pub fields: Vec<FieldProblem>,
}

/// Why a request failed.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The request is malformed or invalid: fix it (400).
    #[error("{message}")]
    BadRequest {
        /// Error code.
        code: &'static str,
        /// Explanation.
        message: String,
        /// Fields at fault.
        fields: Vec<FieldProblem>,
    },
    /// No key, or a key that is not valid (401).
    #[error("a valid API key is required: send `Authorization: Bearer <key>`")]
    Unauthorized,
    /// The key is valid but may not do this (403).
    #[error("{0}")]
    Forbidden(String),
    /// Unknown (or another tenant's) resource (404).
    #[error("{0} not found")]
    NotFound(String),
    /// Conflicts with the current state (409).
    #[error("{message}")]
    Conflict {
        /// Error code.
        code: &'static str,
        /// Explanation.
        message: String,
    },
    /// Understood, but cannot be honoured as sent (422).
    #[error("{message}")]
    Unprocessable {
        /// Error code.
        code: &'static str,
        /// Explanation.
        message: String,
        /// Fields at fault.
        fields: Vec<FieldProblem>,
    },
    /// Over the tenant's rate limit: retry after the given seconds (429).
    #[error("rate limit of the {tier} tier exceeded; retry in {retry_after_s} s")]
    RateLimited {
        /// The tenant's tier.
        tier: &'static str,
        /// Seconds to wait.
        retry_after_s: u64,
    },
    /// Refused by the HTTP layer before a handler ran (body too large, wrong content type).
    #[error("{message}")]
    Rejected {
        /// The status the HTTP layer chose.
        status: StatusCode,
        /// Its explanation.
        message: String,
    },
    /// A bug or an unavailable dependency (500); details go to the log, not the client.
    #[error("internal error")]
    Internal(#[from] anyhow::Error),
}

impl ApiError {
    /// A 400 about one field.
    pub fn field(code: &'static str, field: impl Into<String>, message: impl Into<String>) -> Self {
        let message = message.into();
        let field = field.into();
        ApiError::BadRequest {
            code,
            message: format!("{field}: {message}"),
            fields: vec![FieldProblem::new(field, message)],
        }
    }

    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest { .. } => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Conflict { .. } => StatusCode::CONFLICT,
            ApiError::Unprocessable { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Rejected { status, .. } => *status,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The stable error code (also the `reason` label of the rejections counter).
    pub fn code(&self) -> &'static str {
        match self {
            ApiError::BadRequest { code, .. }
            | ApiError::Conflict { code, .. }
            | ApiError::Unprocessable { code, .. } => code,
            ApiError::Unauthorized => "unauthorized",
            ApiError::Forbidden(_) => "forbidden",
            ApiError::NotFound(_) => "not_found",
            ApiError::RateLimited { .. } => "rate_limited",
            ApiError::Rejected { .. } => "rejected",
            ApiError::Internal(_) => "internal",
        }
    }

    /// The JSON body.
    pub fn body(&self) -> ErrorBody {
        let fields = match self {
            ApiError::BadRequest { fields, .. } | ApiError::Unprocessable { fields, .. } => {
                fields.clone()
            }
            _ => Vec::new(),
        };
        ErrorBody {
            error: ErrorDetail {
                code: self.code().to_owned(),
                message: self.to_string(),
                fields,
            },
        }
    }
}

impl From<hcp_db::StoreError> for ApiError {
    fn from(e: hcp_db::StoreError) -> Self {
        ApiError::Internal(e.into())
    }
}

impl From<sqlx::Error> for ApiError {
    fn from(e: sqlx::Error) -> Self {
        ApiError::Internal(e.into())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        if let ApiError::Internal(e) = &self {
            tracing::error!(error = %format!("{e:#}"), "request failed");
        } else {
            metrics::counter!(m::REJECTIONS, "reason" => self.code()).increment(1);
        }
        let mut response = (status, Json(self.body())).into_response();
        let headers = response.headers_mut();
        match &self {
            ApiError::Unauthorized => {
                headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            ApiError::RateLimited { retry_after_s, .. } => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from(*retry_after_s));
            }
            _ => {}
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_field_error_names_the_field_in_the_body() {
        let e = ApiError::field("validation", "gpu_count", "must be 1-64, got 0");
        assert_eq!(e.status(), StatusCode::BAD_REQUEST);
        let body = serde_json::to_value(e.body()).unwrap();
        assert_eq!(body["error"]["code"], "validation");
        assert_eq!(body["error"]["fields"][0]["field"], "gpu_count");
        assert_eq!(body["error"]["message"], "gpu_count: must be 1-64, got 0");
    }

    #[test]
    fn a_rate_limited_response_carries_retry_after() {
        let r = ApiError::RateLimited {
            tier: "free",
            retry_after_s: 3,
        }
        .into_response();
        assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(r.headers()[header::RETRY_AFTER], "3");
    }

    #[test]
    fn internal_errors_do_not_leak_their_cause() {
        let e = ApiError::Internal(anyhow::anyhow!("password=hunter2"));
        assert_eq!(e.body().error.message, "internal error");
    }
}
