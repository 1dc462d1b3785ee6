//! The `router` projection over the workloads and resources topics. It keeps the router's
//! tables and, inside the same consumer transaction, appends what follows directly from an
//! event: `workload.queued` or `workload.failed` for a submission, and `workload.failed` when
//! placement was refused for good. Effects, new events, outbox rows and consumer offsets
//! commit together, so a crash either did all of it or none.
//!
//! Workload events are folded set-based by `crate::fold`, a whole run of them at once (one
//! event on the one-by-one path); worker registrations and losses end a run and are applied
//! on their own, so every event sees the tables as its predecessors left them.

use std::sync::Arc;

use hcp_db::sqlx::PgConnection;
use hcp_db::{ApplyError, Projection, Publish};
use hcp_domain::breaker::Breaker;
use hcp_events::{Envelope, Event};
use tokio::sync::Notify;

use crate::config::RouterConfig;
use crate::repo;

/// The router's projection.
#[derive(Debug, Clone)]
pub struct RouterProjection {
    name: String,
    config: Arc<RouterConfig>,
    workloads_topic: String,
    wake: Arc<Notify>,
}

/// How an event takes part in the projection.
enum Role {
    /// A `workload.*` event: folded with its neighbours.
    Workload,
    /// A worker registration or loss: applied on its own.
    Worker,
    /// Not a fact the router keeps.
    Ignored,
}

fn role(e: &Envelope) -> Role {
    match &e.payload {
        Event::WorkerRegistered(_) | Event::WorkerLost(_) => Role::Worker,
        // Worker reports and commands do not travel on these topics; they are not facts
        // about a workload's state.
        Event::RunReported(_) | Event::DeviceCommand(_) | Event::WorkerHeartbeat(_) => {
            Role::Ignored
        }
        Event::WorkloadSubmitted(_) => Role::Workload,
        payload if payload.workload_id().is_some() => Role::Workload,
        _ => Role::Ignored,
    }
}

impl RouterProjection {
    /// The projection under its standard consumer name, appending to `workloads_topic` and
    /// waking the placement loop through `wake` after each committed batch.
    pub fn new(config: Arc<RouterConfig>, workloads_topic: String, wake: Arc<Notify>) -> Self {
        Self {
            name: "router".into(),
            config,
            workloads_topic,
            wake,
        }
    }

    fn publish(&self) -> Publish {
        let (traceparent, tracestate) = hcp_bus::trace::current_trace_headers();
        Publish::to(self.workloads_topic.clone()).with_trace(traceparent, tracestate)
    }

    /// Folds a run of workload events (the consumer's, or the log's tail's, `crate::ahead`).
    pub(crate) async fn fold(
        &self,
        tx: &mut PgConnection,
        run: &[&Envelope],
    ) -> Result<(), ApplyError> {
        crate::fold::apply_workload_events(&self.config, &self.publish(), tx, run).await
    }

    async fn apply_worker_event(
        &self,
        tx: &mut PgConnection,
        e: &Envelope,
    ) -> Result<(), ApplyError> {
        match &e.payload {
            Event::WorkerRegistered(p) => repo::register_worker(tx, p, e.occurred_at).await?,
            Event::WorkerLost(p) => {
                repo::mark_lost(tx, &p.worker_id, e.occurred_at).await?;
                let (at, policy) = (e.occurred_at, self.config.breaker);
                repo::update_breaker(tx, &p.worker_id, |b: &mut Breaker| {
                    b.record_failure(at, &policy)
                })
                .await?;
            }
            _ => {}
        }
        Ok(())
    }
}

impl Projection for RouterProjection {
    fn name(&self) -> &str {
        &self.name
    }

    /// A tracked workload's row records its stream's version as the router last saw it (the
    /// fold skips anything at or below it, the router's own appends included).
    async fn marks(
        &self,
        tx: &mut PgConnection,
        streams: &[&str],
    ) -> Result<std::collections::HashMap<String, i64>, hcp_db::sqlx::Error> {
        repo::workload_marks(tx, streams).await
    }

    async fn apply(&self, tx: &mut PgConnection, e: &Envelope) -> Result<(), ApplyError> {
        match role(e) {
            Role::Workload => self.fold(tx, &[e]).await?,
            Role::Worker => self.apply_worker_event(tx, e).await?,
            Role::Ignored => {}
        }
        Ok(())
    }

    async fn apply_batch(
        &self,
        tx: &mut PgConnection,
        events: &[&Envelope],
    ) -> Result<(), ApplyError> {
        let mut run: Vec<&Envelope> = Vec::with_capacity(events.len());
        for &e in events {
            match role(e) {
                Role::Workload => run.push(e),
                Role::Worker => {
                    self.fold(tx, &run).await?;
                    run.clear();
                    self.apply_worker_event(tx, e).await?;
                }
                Role::Ignored => {}
            }
        }
        self.fold(tx, &run).await
    }

    fn batches(&self) -> bool {
        true
    }

    /// The placement loop reads the tables in its own snapshot: it is woken once they are
    /// committed.
    fn committed(&self) {
        self.wake.notify_one();
    }

    async fn reset(&self, tx: &mut PgConnection) -> Result<(), hcp_db::sqlx::Error> {
        for table in [
            "router_queue",
            "router_fleet_classes",
            "router_worker_classes",
            "router_gpus",
            "router_workers",
        ] {
            hcp_db::sqlx::query(&format!("DELETE FROM {table}"))
                .execute(&mut *tx)
                .await?;
        }
        Ok(())
    }
}
