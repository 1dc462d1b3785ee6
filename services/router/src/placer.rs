//! The placement loop (its memory and the pass's decisions are in `cycle`, its writes in
//! `commit`). Every tick (or sooner, when the consumer or the log's tail committed something:
//! at once after an idle pass, at most every `min_gap_ms` while passes place) it:
//!
//! 1. reads the router tables incrementally (rows written since the previous read's oldest
//!    running transaction; the first read loads everything) into memory: the workloads, the
//!    fair queue, the workers and their GPUs;
//! 2. fails queued workloads whose deadline passed;
//! 3. runs the pure placement pass (`hcp_domain`), on a blocking thread unless it is small:
//!    beneficiaries of earlier preemptions first, then the queue's drain order, skipping
//!    workloads with an unanswered proposal or in backoff, on GPUs that are neither held nor
//!    promised;
//! 4. for real-time workloads that still do not fit, chooses victims to preempt (rate-limited,
//!    at most one wave per workload while its victims are stopping);
//! 5. writes its decisions (`commit`): deadline failures (`workload.failed`); each placement,
//!    either directly through the allocation ledger (`workload.scheduled` and the start command
//!    under the pool's lock, in the pass's own transaction) or, without
//!    [`Placer::placing_directly`], as `workload.placement_proposed` for the resource-manager
//!    to answer; preemptions (`workload.preempted`). All at `ExpectedVersion::Exact(last seen
//!    version)`: a conflict means the workload moved on, and the decision is dropped.
//!
//! What it proposed is remembered until the workload's row moves past the proposal (scheduled,
//! rejected, cancelled) or the proposal times out, so nothing is proposed twice and nothing
//! sticks.

use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use hcp_db::sqlx::PgPool;
use hcp_db::Publish;
use time::OffsetDateTime;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::commit;
use crate::config::RouterConfig;
use crate::cycle::{Appended, Plan, State, HOUSEKEEPING_EVERY_S};
use crate::metrics::{self as m, Rejection};
use crate::repo;

/// The placement loop (see the module docs).
#[derive(Debug)]
pub struct Placer {
    pool: PgPool,
    config: Arc<RouterConfig>,
    workloads_topic: String,
    /// Set: placements are made directly through the allocation ledger, start commands
    /// published here. Unset: they are proposed to the resource-manager.
    commands_topic: Option<String>,
    wake: Arc<Notify>,
    state: Option<Box<State>>,
    /// The last pass wrote decisions: a wake-up then waits out `min_gap_ms`, so that under
    /// load passes batch; after an idle pass a wake-up is served at once.
    busy: bool,
}

impl Placer {
    /// A loop over the router tables in `pool`, appending to `workloads_topic`, woken early by
    /// `wake`.
    pub fn new(
        pool: PgPool,
        config: Arc<RouterConfig>,
        workloads_topic: String,
        wake: Arc<Notify>,
    ) -> Self {
        Self {
            pool,
            config,
            workloads_topic,
            commands_topic: None,
            wake,
            state: None,
            busy: false,
        }
    }

    /// Places directly: each pass's placements are allocated through the allocation ledger in
    /// the pass's transactions (`workload.scheduled` and a start command published to
    /// `commands_topic`), with no proposal for the resource-manager to answer. A refused
    /// placement is recorded as its proposal and rejection, as the resource-manager would.
    pub fn placing_directly(mut self, commands_topic: String) -> Self {
        self.commands_topic = Some(commands_topic);
        self
    }

    /// Runs passes until `token` is cancelled. A failed pass is logged and retried on the next
    /// tick (its proposals were not recorded, so nothing is lost or doubled).
    pub async fn run(mut self, token: CancellationToken) -> anyhow::Result<()> {
        tracing::info!(tick_ms = self.config.tick_ms, "placement loop started");
        let tick = self.config.tick();
        let gap = std::time::Duration::from_millis(self.config.min_gap_ms);
        loop {
            let started = tokio::time::Instant::now();
            if let Err(e) = self.pass().await {
                tracing::warn!(error = %format!("{e:#}"), "placement pass failed; retrying");
            }
            tokio::select! {
                _ = token.cancelled() => break,
                _ = tokio::time::sleep_until(started + tick) => {}
                _ = self.wake.notified() => {
                    if self.busy {
                        tokio::select! {
                            _ = token.cancelled() => break,
                            _ = tokio::time::sleep_until(started + gap) => {}
                        }
                    }
                }
            }
        }
        tracing::info!("placement loop stopped");
        Ok(())
    }

    /// One pass: load changes; unless nothing changed and no timer is due, decide (on a
    /// blocking thread) and append. Public so tests can drive passes one at a time.
    pub async fn pass(&mut self) -> anyhow::Result<()> {
        let started = Instant::now();
        self.busy = false;
        let now = OffsetDateTime::now_utc();
        let config = self.config.clone();
        let mut state = self
            .state
            .take()
            .unwrap_or_else(|| Box::new(State::new(&config, now)));
        let watermark = state.watermark;
        let housekeeping = state
            .last_housekeeping
            .is_none_or(|t| now - t >= time::Duration::seconds(HOUSEKEEPING_EVERY_S));
        let loaded = async {
            let changes = repo::read_changes(&self.pool, watermark)
                .await
                .context("failed to read router tables")?;
            let sites = if housekeeping {
                let purged = repo::purge_ended(
                    &self.pool,
                    now - time::Duration::seconds(config.purge_after_s as i64),
                )
                .await
                .context("failed to purge ended workloads")?;
                if purged > 0 {
                    tracing::debug!(purged, "purged ended workloads");
                }
                Some(
                    repo::read_sites(&self.pool)
                        .await
                        .context("failed to read sites")?,
                )
            } else {
                None
            };
            anyhow::Ok((changes, sites))
        }
        .await;
        let (changes, sites) = match loaded {
            Ok(x) => x,
            Err(e) => {
                self.state = Some(state);
                return Err(e);
            }
        };
        let nothing_changed = changes.workers.is_empty()
            && changes.gpus.is_empty()
            && changes.workloads.is_empty()
            && sites.is_none();
        if nothing_changed && now < state.next_due {
            // Nothing new and no timer due: the last pass's decisions still stand.
            state.watermark = changes.next_watermark;
            self.state = Some(state);
            return Ok(());
        }
        // A span only for passes that run (an idle router would otherwise trace 20 a second).
        let span = tracing::info_span!(
            "placement_pass",
            rows = changes.workloads.len(),
            considered = tracing::field::Empty,
            placed = tracing::field::Empty,
            preempted = tracing::field::Empty,
        );
        async {
            let small = state.is_small(&changes);
            let work = move || {
                state.apply(changes);
                if let Some(sites) = sites {
                    state.set_sites(sites);
                    state.last_housekeeping = Some(now);
                }
                let plan = state.plan(now, &config);
                (state, plan)
            };
            let (state, plan) = if small {
                work()
            } else {
                tokio::task::spawn_blocking(work)
                    .await
                    .context("placement pass panicked")?
            };
            self.state = Some(state);
            tracing::Span::current().record("considered", plan.considered);
            self.execute(plan, now).await;
            if let Some(state) = &self.state {
                state.record_metrics(now);
            }
            metrics::histogram!(m::PLACEMENT_PASS).record(started.elapsed().as_secs_f64());
            Ok(())
        }
        .instrument(span)
        .await
    }

    fn publish(&self) -> Publish {
        let (traceparent, tracestate) = hcp_bus::trace::current_trace_headers();
        Publish::to(self.workloads_topic.clone()).with_trace(traceparent, tracestate)
    }

    /// Appends everything the plan decided and remembers what went through.
    async fn execute(&mut self, plan: Plan, now: OffsetDateTime) {
        let publish = self.publish();
        let chunk = self.config.propose_chunk;
        let expired = commit::append_all(&self.pool, &publish, chunk, &plan.expired).await;
        let proposed = match &self.commands_topic {
            Some(commands) => {
                let commands = Publish::to(commands.clone())
                    .with_trace(publish.traceparent.clone(), publish.tracestate.clone());
                commit::place_all(&self.pool, &publish, &commands, chunk, &plan.proposals).await
            }
            None => commit::append_all(&self.pool, &publish, chunk, &plan.proposals).await,
        };
        let mut waves = Vec::with_capacity(plan.preemptions.len());
        for (_, appends) in &plan.preemptions {
            waves.push(commit::append_all(&self.pool, &publish, chunk, appends).await);
        }
        let announced = commit::append_all(&self.pool, &publish, chunk, &plan.announcements).await;
        let Some(state) = self.state.as_mut() else {
            return;
        };
        let done = state.record(
            &plan,
            Appended {
                expired,
                proposed,
                announced,
                waves,
            },
            now,
        );
        self.busy = done.placed + done.preempted + done.expired > 0;
        metrics::counter!(m::PLACEMENTS).increment(done.placed);
        metrics::counter!(m::PREEMPTIONS).increment(done.preempted);
        for _ in 0..done.expired {
            m::rejected(Rejection::Deadline);
        }
        let span = tracing::Span::current();
        span.record("placed", done.placed);
        span.record("preempted", done.preempted);
    }
}
