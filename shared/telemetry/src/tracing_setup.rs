//! Logs and traces.

use opentelemetry::trace::TracerProvider as _;
use opentelemetry::KeyValue;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use opentelemetry_sdk::Resource;
use serde::Deserialize;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

/// How log lines are rendered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// One JSON object per line (production, containers).
    Json,
    /// Human-readable, coloured when on a terminal (development).
    #[default]
    Pretty,
}

/// Telemetry configuration (the `[telemetry]` section).
#[derive(Debug, Clone, Deserialize)]
pub struct TelemetrySettings {
    /// Log rendering.
    #[serde(default)]
    pub log_format: LogFormat,
    /// `EnvFilter` directives, e.g. `info,hcp_db=debug`. `RUST_LOG` wins when set.
    #[serde(default = "default_filter")]
    pub log_filter: String,
    /// `EnvFilter` directives for spans sent to OpenTelemetry, independent of the log filter
    /// so that quiet logs do not break trace propagation.
    #[serde(default = "default_filter")]
    pub trace_filter: String,
    /// OTLP/HTTP endpoint (e.g. `http://127.0.0.1:4318`). Falls back to
    /// `OTEL_EXPORTER_OTLP_ENDPOINT`; no export when neither is set.
    #[serde(default)]
    pub otlp_endpoint: Option<String>,
}

fn default_filter() -> String {
    "info".into()
}

impl Default for TelemetrySettings {
    fn default() -> Self {
        Self {
            log_format: LogFormat::default(),
            log_filter: default_filter(),
            trace_filter: default_filter(),
            otlp_endpoint: None,
        }
    }
}

/// Errors setting up telemetry.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    /// The OTLP exporter could not be built.
    #[error("failed to build the OTLP exporter for {endpoint}: {reason}")]
    Exporter {
        /// Endpoint configured.
        endpoint: String,
        /// Why.
        reason: String,
    },
    /// A global subscriber was already installed.
    #[error("a tracing subscriber is already installed")]
    AlreadyInstalled,
}

/// Flushes and shuts down trace export when dropped (at the end of `main`).
#[derive(Debug)]
pub struct TelemetryGuard {
    provider: SdkTracerProvider,
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        if let Err(e) = self.provider.shutdown() {
            // The subscriber may already be gone; stderr is the last resort.
            eprintln!("trace export shutdown failed: {e}");
        }
    }
}

/// Builds the tracer provider: always samples and generates ids; exports only with an endpoint.
pub fn tracer_provider(
    service_name: &str,
    settings: &TelemetrySettings,
) -> Result<SdkTracerProvider, TelemetryError> {
    let resource = Resource::builder()
        .with_service_name(service_name.to_owned())
        .with_attribute(KeyValue::new("service.namespace", "hcp"))
        .build();
    let mut builder = SdkTracerProvider::builder().with_resource(resource);
    let endpoint = settings
        .otlp_endpoint
        .clone()
        .or_else(|| std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT").ok())
        .filter(|e| !e.is_empty());
    if let Some(endpoint) = endpoint {
        use opentelemetry_otlp::WithExportConfig;
        let traces = format!("{}/v1/traces", endpoint.trim_end_matches('/'));
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_endpoint(traces)
            .build()
            .map_err(|e| TelemetryError::Exporter {
                endpoint: endpoint.clone(),
                reason: e.to_string(),
            })?;
        builder = builder.with_batch_exporter(exporter);
    }
    Ok(builder.build())
}

/// Installs the global subscriber (logs + traces) and the W3C propagator.
pub fn init_tracing(
    service_name: &str,
    settings: &TelemetrySettings,
) -> Result<TelemetryGuard, TelemetryError> {
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    let provider = tracer_provider(service_name, settings)?;
    let tracer = provider.tracer("hcp");
    opentelemetry::global::set_tracer_provider(provider.clone());

    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&settings.log_filter))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let fmt = match settings.log_format {
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .with_current_span(true)
            .flatten_event(true)
            .with_filter(filter)
            .boxed(),
        LogFormat::Pretty => tracing_subscriber::fmt::layer()
            .compact()
            .with_filter(filter)
            .boxed(),
    };
    let trace_filter =
        EnvFilter::try_new(&settings.trace_filter).unwrap_or_else(|_| EnvFilter::new("info"));
    tracing_subscriber::registry()
        .with(fmt)
        .with(
            tracing_opentelemetry::layer()
                .with_tracer(tracer)
                .with_filter(trace_filter),
        )
        .try_init()
        .map_err(|_| TelemetryError::AlreadyInstalled)?;
    Ok(TelemetryGuard { provider })
}
