//! The REST API under `/api/v1`. Every route is declared once, in [`api::operations`], which
//! both builds the axum [`Router`] and generates the OpenAPI document, so the two cannot drift.

pub mod admin;
pub mod api;
pub mod economics;
pub mod extract;
pub mod inference;
pub mod resources;
pub mod views;
pub mod workloads;

use crate::group::GroupCommit;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::{header, HeaderMap, HeaderValue};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::Router;
use hcp_db::EventStore;
use opentelemetry::propagation::TextMapPropagator;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use sqlx::PgPool;
use tracing::Instrument;

use crate::config::TierLimits;
use crate::domain::key_cache::KeyCache;
use crate::domain::keys;
use crate::domain::rate_limit::RateLimiter;
use crate::error::ApiError;
use crate::metrics_names as m;
use crate::repo::{self, Tenant};

/// What every handler shares.
#[derive(Debug, Clone)]
pub struct AppState {
    inner: Arc<Inner>,
}

/// Most REST submissions one group-commit transaction records.
const GROUP_COMMIT_MAX: usize = 256;

/// Most tenant keys remembered at a time.
const KEY_CACHE_CAPACITY: usize = 10_000;

#[derive(Debug)]
struct Inner {
    pool: PgPool,
    store: EventStore,
    workloads_topic: String,
    admin_key_hash: [u8; 32],
    limiter: RateLimiter,
    /// Tenant keys found recently.
    tenants: Mutex<KeyCache<Tenant>>,
    /// REST submissions are committed in groups.
    group: GroupCommit,
    /// The OpenAPI document, generated once and served as is.
    openapi: Bytes,
}

impl AppState {
    /// State over `pool`; events are published to `workloads_topic`. Only the admin key's hash
    /// is kept; a tenant's key, once found, is trusted for `key_cache` without another lookup.
    /// Starts the group committer of REST submissions on the current runtime.
    pub fn new(
        pool: PgPool,
        workloads_topic: String,
        admin_key: &str,
        limits: TierLimits,
        key_cache: Duration,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                store: EventStore::new(pool.clone()),
                group: GroupCommit::start(pool.clone(), workloads_topic.clone(), GROUP_COMMIT_MAX),
                pool,
                workloads_topic,
                admin_key_hash: keys::hash(admin_key),
                limiter: RateLimiter::new(limits),
                tenants: Mutex::new(KeyCache::new(key_cache, KEY_CACHE_CAPACITY)),
                openapi: Bytes::from(api::openapi().to_string()),
            }),
        }
    }

    /// The group committer of REST submissions.
    pub fn group(&self) -> &GroupCommit {
        &self.inner.group
    }

    /// The pool.
    pub fn pool(&self) -> &PgPool {
        &self.inner.pool
    }

    /// The event store.
    pub fn store(&self) -> &EventStore {
        &self.inner.store
    }

    /// The concrete `workloads` topic.
    pub fn workloads_topic(&self) -> &str {
        &self.inner.workloads_topic
    }

    pub(crate) fn is_admin_key(&self, hash: &[u8; 32]) -> bool {
        &self.inner.admin_key_hash == hash
    }

    pub(crate) fn limiter(&self) -> &RateLimiter {
        &self.inner.limiter
    }

    /// The tenant owning the key with SHA-256 `hash` (not revoked), from the keys found
    /// recently or else from the database.
    pub(crate) async fn tenant_by_key_hash(
        &self,
        hash: &[u8; 32],
    ) -> Result<Option<Tenant>, sqlx::Error> {
        let cache = || {
            self.inner
                .tenants
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
        };
        if let Some(tenant) = cache().get(hash, Instant::now()) {
            return Ok(Some(tenant));
        }
        let tenant = repo::tenant_by_key_hash(&self.inner.pool, hash).await?;
        if let Some(t) = &tenant {
            cache().put(*hash, t.clone(), Instant::now());
        }
        Ok(tenant)
    }
}

/// The REST router: every operation of [`api::operations`], a JSON 404 for anything else,
/// the body size limit, and per-request spans and metrics.
pub fn router(state: AppState, max_body_bytes: usize) -> Router {
    let mut router = Router::new();
    for op in api::operations() {
        router = router.route(op.path, (op.handler)());
    }
    router
        .fallback(|| async { ApiError::NotFound("route".into()) })
        .layer(DefaultBodyLimit::max(max_body_bytes))
        .layer(middleware::from_fn(observe))
        .with_state(state)
}

/// `GET /api/v1/openapi.json` (no key needed).
pub async fn openapi_document(State(app): State<AppState>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        app.inner.openapi.clone(),
    )
        .into_response()
}

struct HeaderExtractor<'a>(&'a HeaderMap);

impl opentelemetry::propagation::Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}

/// One span per request (continuing the caller's W3C trace when it sends `traceparent`), and
/// the request counter and duration histogram labelled by route template, never by raw path.
async fn observe(req: Request, next: Next) -> Response {
    let started = Instant::now();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", |p| p.as_str())
        .to_owned();
    let span = tracing::info_span!(
        "http.request",
        http.method = %req.method(),
        http.route = %route,
        http.status = tracing::field::Empty,
        tenant_id = tracing::field::Empty,
    );
    let parent = TraceContextPropagator::new().extract(&HeaderExtractor(req.headers()));
    hcp_bus::trace::set_parent(&span, parent);
    let response = next.run(req).instrument(span.clone()).await.into_response();
    let status = response.status().as_u16();
    span.record("http.status", status);
    metrics::counter!(m::REQUESTS, "route" => route.clone(), "status" => status.to_string())
        .increment(1);
    metrics::histogram!(m::REQUEST_DURATION, "route" => route)
        .record(started.elapsed().as_secs_f64());
    response
}
