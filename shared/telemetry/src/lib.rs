//! Observability for every HCP binary, set up once in `main`:
//! - structured logs (JSON or pretty) filtered by `RUST_LOG`-style directives;
//! - OpenTelemetry traces, exported over OTLP/HTTP when an endpoint is configured
//!   (`OTEL_EXPORTER_OTLP_ENDPOINT`), always generated so trace context propagates;
//! - a Prometheus recorder with explicit histogram buckets;
//! - the admin HTTP server (`/metrics`, `/health`, `/ready`).

pub mod admin;
pub mod metrics_setup;
pub mod tracing_setup;

pub use admin::{AdminServer, Readiness};
pub use metrics_setup::{install_metrics, LATENCY_BUCKETS_SECONDS};
pub use tracing_setup::{init_tracing, LogFormat, TelemetryGuard, TelemetrySettings};
