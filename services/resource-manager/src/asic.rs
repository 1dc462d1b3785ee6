//! ASIC command translation: an `optimizer.decision_made` becomes `asic.command_issued` events
//! per model (stream `site-<site>`, topic `device-commands`), carrying the decision id.
//!
//! A fraction of 0 curtails; a positive fraction sets a power target, preceded by `Resume`
//! when the model was curtailed. The last state commanded per site and model is kept in
//! `rm_asic_commanded` (written in the consumer's transaction), so an unchanged target sends
//! nothing and a redelivered decision sends nothing twice.
//!
//! GPU side: while a decision says `gpu_batch_allowed: false`, the site's running
//! interruptible batch-inference and training work is paused (`workload.paused`, requested by
//! [`OPTIMIZER`]; the usual path then sends the worker its `Pause`), and when batch work is
//! allowed again the work the optimizer paused (and only that) is resumed. Real-time
//! inference is never touched.

use hcp_db::sqlx::PgConnection;
use hcp_db::store::read_stream_on;
use hcp_db::{ApplyError, EventStore, ExpectedVersion};
use hcp_domain::WorkloadState;
use hcp_events::payload::{
    AsicAction, AsicCommandIssued, AsicScope, DecisionMade, WorkloadKind, WorkloadPaused,
    WorkloadResumed,
};
use hcp_events::{asic_command_stream, site_stream, workload_stream, Envelope, Event};
use uuid::Uuid;

use crate::append::{append_exact, envelope, publish, store_error, Cause, Topics};
use crate::domain::WorkloadView;
use crate::repo;

/// `requested_by` of the pauses and resumes the optimizer's decisions cause.
pub const OPTIMIZER: &str = "optimizer";

/// Fractions closer than this are the same target.
const SAME: f64 = 1e-6;

/// What was last commanded to one model of a site.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Commanded {
    /// Curtailed (idle).
    pub curtailed: bool,
    /// The last power target (kept while curtailed: `Resume` returns to it).
    pub fraction: f64,
}

/// The actions that take a model from `previous` (unknown: never commanded) to `fraction`, and
/// the state they leave it in. Empty when nothing changes.
pub fn translate(previous: Option<Commanded>, fraction: f64) -> (Vec<AsicAction>, Commanded) {
    let fraction = if fraction.is_finite() {
        fraction.clamp(0.0, 1.0)
    } else {
        1.0
    };
    if fraction <= 0.0 {
        return match previous {
            Some(p) if p.curtailed => (vec![], p),
            Some(p) => (
                vec![AsicAction::Curtail],
                Commanded {
                    curtailed: true,
                    ..p
                },
            ),
            None => (
                vec![AsicAction::Curtail],
                Commanded {
                    curtailed: true,
                    fraction: 1.0,
                },
            ),
        };
    }
    let target = Commanded {
        curtailed: false,
        fraction,
    };
    let set = AsicAction::PowerTarget { fraction };
    match previous {
        Some(p) if p.curtailed && (p.fraction - fraction).abs() <= SAME => {
            (vec![AsicAction::Resume], target)
        }
        Some(p) if p.curtailed => (vec![AsicAction::Resume, set], target),
        Some(p) if (p.fraction - fraction).abs() <= SAME => (vec![], target),
        _ => (vec![set], target),
    }
}

async fn commanded(
    tx: &mut PgConnection,
    site: &str,
    model: &str,
) -> Result<Option<Commanded>, ApplyError> {
    let row: Option<(bool, f64)> = hcp_db::sqlx::query_as(
        "SELECT curtailed, fraction FROM rm_asic_commanded WHERE site = $1 AND model = $2 \
         FOR UPDATE",
    )
    .bind(site)
    .bind(model)
    .fetch_optional(&mut *tx)
    .await?;
    Ok(row.map(|(curtailed, fraction)| Commanded {
        curtailed,
        fraction,
    }))
}

async fn save(
    tx: &mut PgConnection,
    site: &str,
    model: &str,
    c: Commanded,
    decision_id: Uuid,
) -> Result<(), ApplyError> {
    hcp_db::sqlx::query(
        "INSERT INTO rm_asic_commanded (site, model, curtailed, fraction, decision_id) \
         VALUES ($1, $2, $3, $4, $5) ON CONFLICT (site, model) DO UPDATE \
         SET curtailed = EXCLUDED.curtailed, fraction = EXCLUDED.fraction, \
             decision_id = EXCLUDED.decision_id, updated_at = clock_timestamp()",
    )
    .bind(site)
    .bind(model)
    .bind(c.curtailed)
    .bind(c.fraction)
    .bind(decision_id)
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// What the GPU side must do to one workload under a decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GpuMove {
    /// Pause it (running interruptible batch work while batch is not allowed).
    Pause,
    /// Resume it (paused by the optimizer, batch allowed again).
    Resume,
    /// Leave it.
    Keep,
}

/// The GPU move for a workload in `state`, of class `kind` (as the router queued it, or as
/// submitted), `interruptible`, last paused by `paused_by`.
pub fn gpu_move(
    batch_allowed: bool,
    state: Option<WorkloadState>,
    kind: Option<WorkloadKind>,
    interruptible: bool,
    paused_by: Option<&str>,
) -> GpuMove {
    let batch = matches!(
        kind,
        Some(WorkloadKind::BatchInference | WorkloadKind::Training)
    );
    match state {
        Some(WorkloadState::Running) if !batch_allowed && batch && interruptible => GpuMove::Pause,
        Some(WorkloadState::Paused) if batch_allowed && paused_by == Some(OPTIMIZER) => {
            GpuMove::Resume
        }
        _ => GpuMove::Keep,
    }
}

/// The runs on the site's workers that are running or paused.
async fn site_runs(tx: &mut PgConnection, site: &str) -> Result<Vec<Uuid>, ApplyError> {
    Ok(hcp_db::sqlx::query_scalar(
        "SELECT r.workload_id FROM rm_runs r JOIN rm_workers w ON w.worker_id = r.worker_id \
         WHERE w.site = $1 AND r.state IN ('running', 'paused') ORDER BY r.workload_id",
    )
    .bind(site)
    .fetch_all(&mut *tx)
    .await?)
}

/// Pauses or resumes the site's batch work as the decision's `gpu_batch_allowed` says.
/// Returns how many workloads it paused or resumed.
async fn apply_gpu_batch(
    tx: &mut PgConnection,
    topics: &Topics,
    e: &Envelope,
    d: &DecisionMade,
) -> Result<usize, ApplyError> {
    repo::lock_pool(tx, &d.site).await?;
    let mut moved = 0;
    for workload_id in site_runs(tx, &d.site).await? {
        let stream = workload_stream(workload_id);
        let events = read_stream_on(tx, &stream).await.map_err(store_error)?;
        let Ok(view) = WorkloadView::fold(events.iter().map(|r| &r.envelope)) else {
            continue;
        };
        let mut kind = view.submitted.as_ref().and_then(|s| s.kind);
        let mut interruptible = view
            .submitted
            .as_ref()
            .and_then(|s| s.interruptible)
            .unwrap_or(false);
        let mut paused_by = None;
        for r in &events {
            match &r.envelope.payload {
                Event::WorkloadQueued(q) => {
                    kind = Some(q.kind);
                    interruptible = q.interruptible;
                }
                Event::WorkloadPaused(p) => paused_by = Some(p.requested_by.clone()),
                _ => {}
            }
        }
        let event = match gpu_move(
            d.gpu_batch_allowed,
            view.state,
            kind,
            interruptible,
            paused_by.as_deref(),
        ) {
            GpuMove::Pause => Event::WorkloadPaused(WorkloadPaused {
                workload_id,
                requested_by: OPTIMIZER.into(),
            }),
            GpuMove::Resume => Event::WorkloadResumed(WorkloadResumed {
                workload_id,
                requested_by: OPTIMIZER.into(),
            }),
            GpuMove::Keep => continue,
        };
        let cause = Cause {
            event_id: e.event_id,
            correlation_id: view.correlation_id.unwrap_or(e.correlation_id),
        };
        let env = envelope(&stream, event, cause);
        // A concurrent change (cancel, completion) wins; the next decision looks again.
        if append_exact(
            tx,
            &stream,
            view.version,
            &[env],
            &publish(&topics.workloads),
        )
        .await?
        .is_some()
        {
            moved += 1;
        }
    }
    if moved > 0 {
        tracing::info!(
            moved,
            batch_allowed = d.gpu_batch_allowed,
            "GPU batch work paused or resumed"
        );
    }
    Ok(moved)
}

/// Applies one decision: appends the commands its ASIC targets need, and pauses or resumes
/// the site's GPU batch work. Returns how many ASIC commands it sent.
#[tracing::instrument(skip_all, fields(site = %d.site, decision_id = %d.decision_id))]
pub async fn on_decision(
    tx: &mut PgConnection,
    topics: &Topics,
    e: &Envelope,
    d: &DecisionMade,
) -> Result<usize, ApplyError> {
    if e.stream_id != site_stream(&d.site) {
        return Err(ApplyError::Poison(format!(
            "a decision for site {} on stream {}",
            d.site, e.stream_id
        )));
    }
    let stream = asic_command_stream(&d.site);
    let cause = Cause::of(e);
    let mut commands = Vec::new();
    for t in &d.asic_targets {
        let previous = commanded(tx, &d.site, &t.model).await?;
        let (actions, next) = translate(previous, t.fraction);
        if actions.is_empty() {
            continue;
        }
        save(tx, &d.site, &t.model, next, d.decision_id).await?;
        for action in actions {
            commands.push(envelope(
                &stream,
                Event::AsicCommandIssued(AsicCommandIssued {
                    command_id: Uuid::now_v7(),
                    site: d.site.clone(),
                    target: AsicScope::Model {
                        model: t.model.clone(),
                    },
                    action,
                    decision_id: Some(d.decision_id),
                }),
                cause,
            ));
        }
    }
    apply_gpu_batch(tx, topics, e, d).await?;
    if commands.is_empty() {
        return Ok(0);
    }
    EventStore::append(
        tx,
        &stream,
        ExpectedVersion::Any,
        &commands,
        &publish(&topics.commands),
    )
    .await
    .map_err(store_error)?;
    tracing::info!(commands = commands.len(), "ASIC commands issued");
    Ok(commands.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_interruptible_batch_work_is_paused_and_only_the_optimizers_pauses_are_resumed() {
        use WorkloadKind::*;
        let run = Some(WorkloadState::Running);
        let paused = Some(WorkloadState::Paused);
        assert_eq!(
            gpu_move(false, run, Some(Training), true, None),
            GpuMove::Pause
        );
        assert_eq!(
            gpu_move(false, run, Some(BatchInference), true, None),
            GpuMove::Pause
        );
        assert_eq!(
            gpu_move(false, run, Some(RealtimeInference), true, None),
            GpuMove::Keep
        );
        assert_eq!(
            gpu_move(false, run, Some(Training), false, None),
            GpuMove::Keep
        );
        assert_eq!(
            gpu_move(true, run, Some(Training), true, None),
            GpuMove::Keep
        );
        assert_eq!(
            gpu_move(true, paused, Some(Training), true, Some(OPTIMIZER)),
            GpuMove::Resume
        );
        assert_eq!(
            gpu_move(true, paused, Some(Training), true, Some("acme")),
            GpuMove::Keep,
            "a tenant's pause is the tenant's to lift"
        );
        assert_eq!(
            gpu_move(false, paused, Some(Training), true, Some(OPTIMIZER)),
            GpuMove::Keep
        );
    }

    const ON: Commanded = Commanded {
        curtailed: false,
        fraction: 1.0,
    };

    #[test]
    fn a_zero_fraction_curtails_once() {
        let (a, next) = translate(Some(ON), 0.0);
        assert_eq!(a, vec![AsicAction::Curtail]);
        assert!(next.curtailed);
        assert_eq!(next.fraction, 1.0, "the last power target is remembered");
        let (a, _) = translate(Some(next), 0.0);
        assert!(a.is_empty(), "already curtailed");
        let (a, _) = translate(None, 0.0);
        assert_eq!(a, vec![AsicAction::Curtail]);
    }

    #[test]
    fn after_a_curtail_resume_comes_first() {
        let off = Commanded {
            curtailed: true,
            fraction: 1.0,
        };
        assert_eq!(translate(Some(off), 1.0).0, vec![AsicAction::Resume]);
        assert_eq!(
            translate(Some(off), 0.6).0,
            vec![
                AsicAction::Resume,
                AsicAction::PowerTarget { fraction: 0.6 }
            ]
        );
    }

    #[test]
    fn an_unchanged_target_sends_nothing_and_a_new_one_a_power_target() {
        assert!(translate(Some(ON), 1.0).0.is_empty());
        let (a, next) = translate(Some(ON), 0.5);
        assert_eq!(a, vec![AsicAction::PowerTarget { fraction: 0.5 }]);
        assert_eq!(next.fraction, 0.5);
        assert_eq!(
            translate(None, 1.0).0,
            vec![AsicAction::PowerTarget { fraction: 1.0 }]
        );
    }
}
