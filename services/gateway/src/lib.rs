//! hcp-gateway: the REST API (`/api/v1`) and the Kafka intake of workload requests, and the read
//! models they serve (docs/adr/0004-workload-path.md).
//!
//! - [`http`]: the axum API: tenants and API keys (only hashes stored), per-tier rate limits,
//!   idempotent submission, workload reads with read-your-writes, queue and ETA, commands
//!   (cancel, pause, resume), the fleet, and the OpenAPI document generated from the route
//!   table;
//! - [`intake`]: raw requests from `workload-requests`, exactly once, invalid ones to dead
//!   letters;
//! - [`submit`]: the one submission path both share;
//! - [`domain`]: pure rules (token buckets, ETA, cursors, keys);
//! - [`repo`]: the gateway's tables.
//!
//! The workload board, the resource board, market prices and the decision board
//! (`hcp-readmodel`) are projected inside the gateway process by the service shell's
//! transactional consumers; [`http::economics`] serves them with profitability.
//!
//! Tests start the whole service in-process with [`spawn`] (REST on port 0); the binary runs
//! [`build`] inside `hcp_service::main`.

pub mod config;
pub mod domain;
pub mod error;
pub mod group;
pub mod http;
pub mod intake;
pub mod metrics_names;
pub mod repo;
pub mod submit;

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use hcp_events::Topic;
use hcp_readmodel::{DecisionBoard, MarketPrices, ResourceBoard, WorkloadBoard};
use hcp_runtime::Shutdown;
use hcp_service::ServiceContext;
use secrecy::ExposeSecret;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

pub use config::Settings;

/// The service name (logs, traces, producer client id).
pub const SERVICE_NAME: &str = "hcp-gateway";

/// Adds the gateway's tasks to a started service: binds the REST listener, and runs the HTTP
/// server, the Kafka intake, the workload board and the resource board. This is the binary's
/// build step (`hcp_service::main`).
pub async fn build(settings: Settings, ctx: ServiceContext) -> anyhow::Result<ServiceContext> {
    build_bound(settings, ctx).await.map(|(ctx, _)| ctx)
}

async fn build_bound(
    settings: Settings,
    mut ctx: ServiceContext,
) -> anyhow::Result<(ServiceContext, SocketAddr)> {
    metrics_names::describe();
    let gw = settings.gateway;
    let addr = format!("{}:{}", gw.host, gw.port);
    let listener = TcpListener::bind(&addr)
        .await
        .with_context(|| format!("failed to bind the REST listener on {addr}"))?;
    let local = listener.local_addr().context("REST listener address")?;
    let state = http::AppState::new(
        ctx.pool().clone(),
        ctx.topic(Topic::Workloads),
        gw.admin_key.expose_secret(),
        gw.rate_limits,
        std::time::Duration::from_millis(gw.key_cache_ms),
    );
    let economics = http::economics::Economics::load(&gw.fleet_file, &gw.energy_series);
    let router = http::router(state, gw.max_body_bytes)
        .layer(axum::Extension(std::sync::Arc::new(economics)));
    let token = ctx.token();
    ctx.spawn("rest api", async move {
        axum::serve(listener, router)
            .with_graceful_shutdown(async move { token.cancelled().await })
            .await
            .context("REST server failed")
    });
    ctx.spawn_consumer(WorkloadBoard::new(), &[Topic::Workloads])?;
    // Read models that may lag by a tenth of a second fetch less often (broker CPU).
    ctx.spawn_background_consumer(ResourceBoard::new(), &[Topic::Resources])?;
    ctx.spawn_background_consumer(MarketPrices::new(), &[Topic::Market])?;
    ctx.spawn_background_consumer(DecisionBoard::new(), &[Topic::Decisions])?;
    let intake = intake::intake(
        ctx.kafka(),
        ctx.pool().clone(),
        ctx.producer().clone(),
        &gw.intake,
    )
    .context("failed to create the intake consumer")?;
    let token = ctx.token();
    ctx.spawn("kafka intake", async move {
        intake.run(token).await.context("the Kafka intake failed")
    });
    tracing::info!(addr = %local, "gateway listening");
    Ok((ctx, local))
}

/// A gateway started in-process with the same wiring as the binary (tests, embedding).
#[derive(Debug)]
pub struct RunningGateway {
    /// The REST address (port 0 in the settings picks a free one).
    pub addr: SocketAddr,
    /// The admin server's port (`/metrics`, `/health`, `/ready`).
    pub admin_port: u16,
    shutdown: Shutdown,
    handle: JoinHandle<anyhow::Result<()>>,
}

impl RunningGateway {
    /// `http://<addr>`.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Stops every task and waits for the drain.
    pub async fn stop(self) -> anyhow::Result<()> {
        self.shutdown.trigger();
        self.handle.await.context("gateway task panicked")?
    }
}

/// Starts the gateway in-process: the service shell (PostgreSQL, topics, admin server, outbox
/// relay) plus [`build`], without installing logging or signal handlers.
pub async fn spawn(settings: Settings) -> anyhow::Result<RunningGateway> {
    let shutdown = Shutdown::new(Duration::from_millis(
        settings.common.shutdown.drain_deadline_ms,
    ));
    let ctx = ServiceContext::start(SERVICE_NAME, &settings.common, shutdown.token()).await?;
    let admin_port = ctx.admin_port();
    let (ctx, addr) = build_bound(settings, ctx).await?;
    let s = shutdown.clone();
    let handle = tokio::spawn(async move { ctx.run(&s).await });
    Ok(RunningGateway {
        addr,
        admin_port,
        shutdown,
        handle,
    })
}
