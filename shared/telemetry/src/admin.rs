//! The admin HTTP server every service runs on its admin port: `/metrics` (Prometheus text),
//! `/health` (the process is alive) and `/ready` (every registered component is ready).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use metrics_exporter_prometheus::PrometheusHandle;
use tokio_util::sync::CancellationToken;

/// Named readiness flags. A service is ready when every component it registered is ready.
#[derive(Debug, Clone, Default)]
pub struct Readiness(Arc<Mutex<BTreeMap<String, bool>>>);

impl Readiness {
    /// Registers a component as not yet ready.
    pub fn register(&self, component: &str) {
        self.set(component, false);
    }

    /// Marks a component ready or not.
    pub fn set(&self, component: &str, ready: bool) {
        if let Ok(mut m) = self.0.lock() {
            m.insert(component.to_owned(), ready);
        }
    }

    /// Whether every component is ready (and at least one is registered).
    pub fn is_ready(&self) -> bool {
        self.0
            .lock()
            .map(|m| !m.is_empty() && m.values().all(|r| *r))
            .unwrap_or(false)
    }

    fn snapshot(&self) -> BTreeMap<String, bool> {
        self.0.lock().map(|m| m.clone()).unwrap_or_default()
    }
}

#[derive(Clone)]
struct AdminState {
    metrics: PrometheusHandle,
    readiness: Readiness,
}

/// A bound, not yet serving, admin server.
#[derive(Debug)]
pub struct AdminServer {
    listener: tokio::net::TcpListener,
    router: Router,
}

impl AdminServer {
    /// Binds `addr` (port 0 picks a free port).
    pub async fn bind(
        addr: SocketAddr,
        metrics: PrometheusHandle,
        readiness: Readiness,
    ) -> std::io::Result<Self> {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let router = Router::new()
            .route("/metrics", get(render_metrics))
            .route("/health", get(|| async { "ok" }))
            .route("/ready", get(ready))
            .with_state(AdminState { metrics, readiness });
        Ok(Self { listener, router })
    }

    /// The bound address.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until the token is cancelled.
    pub async fn run(self, shutdown: CancellationToken) -> std::io::Result<()> {
        axum::serve(self.listener, self.router)
            .with_graceful_shutdown(async move { shutdown.cancelled().await })
            .await
    }
}

async fn render_metrics(State(s): State<AdminState>) -> impl IntoResponse {
    (
        [("content-type", "text/plain; version=0.0.4")],
        s.metrics.render(),
    )
}

async fn ready(State(s): State<AdminState>) -> impl IntoResponse {
    let status = if s.readiness.is_ready() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(s.readiness.snapshot()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readiness_needs_every_component_and_at_least_one() {
        let r = Readiness::default();
        assert!(!r.is_ready());
        r.register("db");
        r.register("kafka");
        r.set("db", true);
        assert!(!r.is_ready());
        r.set("kafka", true);
        assert!(r.is_ready());
    }
}
