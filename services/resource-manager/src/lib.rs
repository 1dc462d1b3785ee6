//! hcp-resource-manager: keeps the worker inventory and health from heartbeats (the fleet as
//! the allocation ledger sees it), answers placement proposals through the allocation ledger
//! (`hcp-allocation`: `workload.scheduled` plus a start command, or
//! `workload.placement_rejected`), turns run reports into workload events, releases GPUs,
//! sends device commands for cancel, pause, resume and preemption, and requeues the work of
//! silent or restarted workers from their last checkpoint. Every change to a pool's
//! allocations, here or in the router's placement loop, runs under the pool's advisory lock
//! (ADR 0004, ADR 0005).
//!
//! - [`domain`]: the decisions, pure;
//! - [`repo`]: the SQL of its tables;
//! - [`projection`]: the consumer-side projection ([`ResourceManager`]), with its batch path
//!   (proposals and reports answered set-based) in `batch`, its appends in `append` and the
//!   heartbeat memo in `memo`;
//! - [`health`]: the periodic sweep ([`HealthSweep`]);
//! - [`asic`]: optimizer decisions into ASIC commands per model.

mod append;
pub mod asic;
mod batch;
mod beats;
pub mod config;
pub mod domain;
pub mod health;
mod memo;
pub mod metrics;
pub mod projection;
pub mod repo;

pub use append::{Topics, PRODUCER};
pub use config::{RmSettings, Settings, DEFAULTS};
pub use health::HealthSweep;
pub use memo::HeartbeatMemo;
pub use projection::ResourceManager;

use hcp_events::Topic;
use hcp_service::ServiceContext;

/// Adds the resource-manager's tasks to a started service: the consumer of `workloads`,
/// `worker-reports` and `decisions`, and the health sweep.
pub fn start(settings: &Settings, ctx: &mut ServiceContext) -> anyhow::Result<()> {
    metrics::describe();
    let topics = Topics::new(ctx.kafka());
    let rm = &settings.resource_manager;
    let projection = ResourceManager::new(topics.clone(), rm.clone());
    let memo = projection.memo();
    ctx.spawn_consumer(
        projection,
        &[Topic::Workloads, Topic::WorkerReports, Topic::Decisions],
    )?;
    let sweep = HealthSweep::new(ctx.pool().clone(), topics, rm.clone()).hearing(memo);
    let token = ctx.token();
    ctx.spawn("health sweep", sweep.run(token));
    Ok(())
}
