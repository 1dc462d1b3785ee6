//! hcp-optimizer: fleet economics, live. It consumes `market` (prices, hashprice, carbon,
//! system load, demand-response requests, 4CP warnings) and `telemetry` (ASIC batches), and
//! appends `optimizer.decision_made` and `optimizer.decision_confirmed` to `site-<site>` on
//! `decisions`.
//!
//! A decision is taken whenever a new interval of the configured price series arrives, and at
//! once on a grid event: the hcp-economics rule policy (the code `hcp backtest` scores) sees the
//! stored past only, then [`domain`] applies 4CP warnings and demand-response caps (cheapest
//! margin per MW first, real-time GPUs never) and the decision is emitted when it changes or a
//! heartbeat is due. Telemetry (latest sample per rack, summed per site) confirms it.
//!
//! - [`domain`]: the decisions and confirmations, pure;
//! - [`repo`]: the SQL of its tables (migration 0008);
//! - [`engine`]: the projection ([`Optimizer`]) and the deadline sweep.

pub mod config;
pub mod domain;
pub mod engine;
pub mod metrics;
pub mod repo;

pub use config::{OptimizerSettings, Settings, DEFAULTS};
pub use engine::{Optimizer, Topics, POLICY, PRODUCER};

use anyhow::Context;
use hcp_economics::fleet::{FleetConfig, FleetModel};
use hcp_events::Topic;
use hcp_service::ServiceContext;

/// Loads and compiles the fleet description for the configured interval length.
pub fn load_fleet(settings: &OptimizerSettings) -> anyhow::Result<FleetModel> {
    let path = &settings.fleet_file;
    let cfg = FleetConfig::load(path)
        .with_context(|| format!("failed to load the fleet file {}", path.display()))?;
    cfg.model(&path.display().to_string(), settings.dt_h())
        .with_context(|| format!("invalid fleet file {}", path.display()))
}

/// Adds the optimizer's tasks to a started service: the consumer of `market` and `telemetry`,
/// the deadline sweep, and the telemetry store's ingest.
pub fn start(settings: &Settings, ctx: &mut ServiceContext) -> anyhow::Result<()> {
    metrics::describe();
    let fleet = load_fleet(&settings.optimizer)?;
    let optimizer = Optimizer::new(fleet, settings.optimizer.clone(), Topics::new(ctx.kafka()));
    ctx.spawn_consumer(optimizer.clone(), &[Topic::Market, Topic::Telemetry])?;
    let pool = ctx.pool().clone();
    let token = ctx.token();
    ctx.spawn("optimizer sweep", optimizer.run_sweep(pool, token));
    let ingest = hcp_tsdb::spawn_ingest(
        ctx.pool().clone(),
        ctx.kafka(),
        ctx.producer().clone(),
        settings.telemetry_ingest.clone(),
        ctx.token(),
    )
    .context("failed to start the telemetry ingest")?;
    ctx.spawn("telemetry ingest", async move {
        ingest
            .await
            .map_err(|e| anyhow::anyhow!("telemetry ingest panicked: {e}"))
    });
    Ok(())
}
