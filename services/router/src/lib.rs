//! hcp-router: classifies workloads, keeps the 10-level priority queue and proposes gang
//! placements (with preemption) to the resource-manager (ADR 0004, steps 2, 3 and 7).
//!
//! - [`projection`]: the `router` projection over `workloads` + `resources` (its workload
//!   events folded set-based, a batch at a time, in `fold`); classifies each
//!   submission in the consumer's transaction (`workload.queued` or `workload.failed`),
//!   tracks workers, GPUs and holdings, feeds the circuit breakers, and fails workloads whose
//!   placement was refused too often;
//! - [`ahead`]: submissions folded from the event store as they commit, a broker hop before
//!   the consumer brings them (`router.follow_log`);
//! - [`placer`]: the placement loop (placements, deadlines, preemption); its memory and
//!   decisions in `cycle`, its writes in `commit`;
//! - [`repo`]: the SQL; [`config`]: settings; [`metrics`]: metric names.
//!
//! The scheduling rules themselves are pure and live in `hcp-domain`.

pub mod ahead;
mod commit;
pub mod config;
mod cycle;
mod fold;
pub mod metrics;
pub mod placer;
pub mod projection;
pub mod repo;

use std::sync::Arc;

use hcp_events::Topic;
use hcp_service::ServiceContext;
use tokio::sync::Notify;

pub use config::{RouterConfig, Settings};
pub use placer::Placer;
pub use projection::RouterProjection;

/// The `producer` of the events the router appends.
pub const PRODUCER: &str = "router";

/// The topics the router's projection consumes.
pub const TOPICS: [Topic; 2] = [Topic::Workloads, Topic::Resources];

/// Adds the router's consumer and placement loop to a started service.
pub async fn start(settings: Settings, mut ctx: ServiceContext) -> anyhow::Result<ServiceContext> {
    metrics::describe();
    let config = Arc::new(settings.router);
    let wake = Arc::new(Notify::new());
    let topic = ctx.topic(Topic::Workloads);
    let projection = RouterProjection::new(config.clone(), topic.clone(), wake.clone());
    if config.follow_log {
        let ahead = ahead::Ahead::new(ctx.pool().clone(), projection.clone());
        ctx.spawn("submissions ahead of the consumer", ahead.run(ctx.token()));
    }
    ctx.spawn_consumer(projection, &TOPICS)?;
    let mut placer = Placer::new(ctx.pool().clone(), config.clone(), topic, wake);
    if config.place_directly {
        placer = placer.placing_directly(ctx.topic(Topic::DeviceCommands));
    }
    ctx.spawn("placement loop", placer.run(ctx.token()));
    Ok(ctx)
}
