//! The resource-manager's decisions, free of I/O: what a run report means for the workload, and
//! how a heartbeat's `running` list compares with the allocations a worker holds. The placement
//! check and the stream view belong to the allocation ledger (`hcp_allocation`), shared with
//! the router, and are re-exported here.

use std::collections::HashSet;
use std::time::Duration;

use hcp_domain::WorkloadState;
use hcp_events::payload::{
    GpuSpec, RunReported, RunStatus, WorkloadCheckpointed, WorkloadCompleted, WorkloadFailed,
    WorkloadRequeued, WorkloadStarted,
};
use hcp_events::Event;
use uuid::Uuid;

pub use hcp_allocation::{
    check_placement, gpu_fits, Holder, RejectReason, Rejection, WorkerInfo, WorkloadView,
};

/// Why a workload went back to the queue (the metric label).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RequeueKind {
    /// Stopped with a checkpoint after a preemption.
    Preempted,
    /// Stopped on the worker for another reason.
    Stopped,
    /// Its worker went silent.
    WorkerLost,
    /// Its worker restarted and forgot it.
    WorkerRestarted,
    /// Its worker never acknowledged the start command.
    StartLost,
}

impl RequeueKind {
    /// Metric label.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Preempted => "preempted",
            Self::Stopped => "stopped",
            Self::WorkerLost => "worker_lost",
            Self::WorkerRestarted => "worker_restarted",
            Self::StartLost => "start_lost",
        }
    }
}

/// What a run report means for the workload.
#[derive(Debug, Clone, PartialEq)]
pub enum ReportDecision {
    /// Append these events (in order); release the GPUs if `release`.
    Apply {
        /// Workload events.
        events: Vec<Event>,
        /// Whether the allocation ends.
        release: bool,
        /// Set when the workload goes back to the queue.
        requeue: Option<RequeueKind>,
    },
    /// Nothing to record (the label says why).
    Ignore(&'static str),
}

fn clamp_progress(p: f64) -> f64 {
    if p.is_finite() {
        p.clamp(0.0, 1.0)
    } else {
        0.0
    }
}

/// Decides what a report from the worker holding the allocation means, given the workload's
/// current stream. Every returned sequence is one the state machine accepts.
pub fn decide_report(view: &WorkloadView, r: &RunReported) -> ReportDecision {
    use WorkloadState::*;
    let Some(state) = view.state else {
        return ReportDecision::Ignore("unknown_workload");
    };
    let id = r.workload_id;
    let progress = clamp_progress(r.progress);
    let runtime_s = if r.runtime_s.is_finite() {
        r.runtime_s.max(0.0)
    } else {
        0.0
    };
    let checkpointed = || {
        Event::WorkloadCheckpointed(WorkloadCheckpointed {
            workload_id: id,
            progress,
        })
    };
    let (events, release, requeue) = match (r.status, state) {
        (RunStatus::Started, Scheduled) => (
            vec![Event::WorkloadStarted(WorkloadStarted { workload_id: id })],
            false,
            None,
        ),
        (RunStatus::Started, _) => return ReportDecision::Ignore("duplicate_start"),
        (RunStatus::Checkpointed, Running | Paused | Preempted) => {
            if progress <= view.last_checkpoint {
                return ReportDecision::Ignore("stale_checkpoint");
            }
            (vec![checkpointed()], false, None)
        }
        (RunStatus::Paused | RunStatus::Resumed, _) => {
            return ReportDecision::Ignore("informational")
        }
        // A run that finished just as a pause (or a preemption) reached it is done.
        (RunStatus::Completed, Running | Preempted | Paused) => (
            vec![Event::WorkloadCompleted(WorkloadCompleted {
                workload_id: id,
                runtime_s,
                output: r.output.clone(),
            })],
            true,
            None,
        ),
        // The start report was lost or refused: record both, in order.
        (RunStatus::Completed, Scheduled) => (
            vec![
                Event::WorkloadStarted(WorkloadStarted { workload_id: id }),
                Event::WorkloadCompleted(WorkloadCompleted {
                    workload_id: id,
                    runtime_s,
                    output: r.output.clone(),
                }),
            ],
            true,
            None,
        ),
        (RunStatus::Failed, s) if !s.is_terminal() && s != Queued => (
            vec![Event::WorkloadFailed(WorkloadFailed {
                workload_id: id,
                reason: r
                    .detail
                    .clone()
                    .unwrap_or_else(|| format!("failed on worker {}", r.worker_id)),
            })],
            true,
            None,
        ),
        (RunStatus::Stopped, Preempted | Running | Paused | Scheduled) => {
            // The checkpoint the run saved (never behind the last one recorded).
            let resume = progress.max(view.last_checkpoint);
            let mut events = Vec::with_capacity(2);
            if state != Scheduled && progress > view.last_checkpoint {
                events.push(checkpointed());
            }
            let (kind, reason) = if state == Preempted {
                (
                    RequeueKind::Preempted,
                    format!("preempted; resumes from {:.1}%", resume * 100.0),
                )
            } else {
                (
                    RequeueKind::Stopped,
                    format!(
                        "stopped on worker {}{}; resumes from {:.1}%",
                        r.worker_id,
                        r.detail
                            .as_deref()
                            .map(|d| format!(" ({d})"))
                            .unwrap_or_default(),
                        resume * 100.0
                    ),
                )
            };
            events.push(Event::WorkloadRequeued(WorkloadRequeued {
                workload_id: id,
                resume_progress: resume,
                reason,
            }));
            (events, true, Some(kind))
        }
        _ => return ReportDecision::Ignore("not_applicable_in_state"),
    };
    if view.check(&events).is_err() {
        return ReportDecision::Ignore("not_applicable_in_state");
    }
    ReportDecision::Apply {
        events,
        release,
        requeue,
    }
}

/// A run a worker holds GPUs for, with how long it has held them and how long the worker's
/// heartbeats have omitted it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeldRun {
    /// The workload.
    pub workload_id: Uuid,
    /// Time since allocation.
    pub held_for: Duration,
    /// Time since heartbeats started omitting it (`None`: listed).
    pub missing_for: Option<Duration>,
    /// Whether the worker has acknowledged the start (reported the run started). Until it
    /// has, heartbeats that omit the run only mean the command has not reached it yet.
    pub acknowledged: bool,
}

/// What a heartbeat's `running` list means against the allocations.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Reconciliation {
    /// Runs omitted for the first time: start their clock.
    pub mark_missing: Vec<Uuid>,
    /// Runs listed again: stop their clock.
    pub clear_missing: Vec<Uuid>,
    /// Runs omitted past the grace: requeue (with how long they were missing).
    pub requeue: Vec<(Uuid, Duration)>,
    /// Starts the worker has not acknowledged within the start timeout: requeue (with how
    /// long they were held).
    pub unacknowledged: Vec<(Uuid, Duration)>,
    /// Runs the worker has but holds no allocation for: stop them.
    pub zombies: Vec<Uuid>,
    /// Acknowledged runs the heartbeat omits (their clock runs towards the grace).
    pub omitted: usize,
}

impl Reconciliation {
    /// Whether the worker and its allocations agree, but for starts still on their way: a
    /// repeat of the same heartbeat can then change nothing until the next refresh.
    pub fn settled(&self) -> bool {
        self.omitted == 0
            && self.requeue.is_empty()
            && self.unacknowledged.is_empty()
            && self.zombies.is_empty()
    }

    /// Whether anything changes allocations or commands (needs the pool lock).
    pub fn needs_pool_lock(&self) -> bool {
        !self.requeue.is_empty() || !self.unacknowledged.is_empty() || !self.zombies.is_empty()
    }
}

/// How long a worker may leave a run out of its heartbeats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Grace {
    /// An acknowledged run omitted this long (the worker restarted and forgot it) is requeued.
    pub restart: Duration,
    /// A start not acknowledged this long after the allocation is requeued (a command lost on
    /// the way). Overload that delays commands must stay well inside it: a requeue while the
    /// command is still on its way would run the work twice.
    pub start_ack: Duration,
}

/// Compares what a worker holds with what it says it runs. The restart grace only counts for
/// runs the worker has acknowledged (reported started): before that, a heartbeat that omits
/// the run means the start command has not reached the worker yet, however long the bus takes
/// under load, so overload slows placement down but never runs work twice. An acknowledged
/// run omitted for longer than `grace.restart` (from both the first omission and the
/// allocation) is requeued; an unacknowledged one only after `grace.start_ack`.
pub fn reconcile(held: &[HeldRun], running: &[Uuid], grace: Grace) -> Reconciliation {
    let running_set: HashSet<Uuid> = running.iter().copied().collect();
    let held_set: HashSet<Uuid> = held.iter().map(|h| h.workload_id).collect();
    let mut out = Reconciliation::default();
    for h in held {
        if running_set.contains(&h.workload_id) {
            if h.missing_for.is_some() {
                out.clear_missing.push(h.workload_id);
            }
            continue;
        }
        if !h.acknowledged {
            if h.held_for >= grace.start_ack {
                out.unacknowledged.push((h.workload_id, h.held_for));
            } else if h.missing_for.is_some() {
                // A clock started before the start was acknowledged means nothing.
                out.clear_missing.push(h.workload_id);
            }
            continue;
        }
        out.omitted += 1;
        match h.missing_for {
            None => out.mark_missing.push(h.workload_id),
            Some(m) if m >= grace.restart && h.held_for >= grace.restart => {
                out.requeue.push((h.workload_id, m))
            }
            Some(_) => {}
        }
    }
    let mut seen = HashSet::new();
    out.zombies = running
        .iter()
        .copied()
        .filter(|id| !held_set.contains(id) && seen.insert(*id))
        .collect();
    out
}

/// Whether a heartbeat's GPUs differ from the registered ones (order does not matter).
pub fn inventory_changed(registered: &[GpuSpec], reported: &[GpuSpec]) -> bool {
    let key = |g: &GpuSpec| (g.gpu_id.clone(), g.model.clone(), g.memory_mib);
    let mut a: Vec<_> = registered.iter().map(key).collect();
    let mut b: Vec<_> = reported.iter().map(key).collect();
    a.sort();
    b.sort();
    a != b
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use hcp_events::payload::*;
    use hcp_events::{workload_stream, Envelope};

    fn id() -> Uuid {
        Uuid::from_u128(7)
    }

    fn gpu(n: u32) -> GpuSpec {
        GpuSpec {
            gpu_id: format!("w/gpu-{n}"),
            model: "H100".into(),
            memory_mib: 81_559,
        }
    }

    fn submitted(gpus: u32) -> WorkloadSubmitted {
        WorkloadSubmitted::simple(id(), "t", WorkloadKind::Training, "llama-3-8b", gpus, 100)
    }

    fn proposal(gpus: &[u32]) -> WorkloadPlacementProposed {
        WorkloadPlacementProposed {
            workload_id: id(),
            worker_id: "w".into(),
            gpu_ids: gpus.iter().map(|n| format!("w/gpu-{n}")).collect(),
            score: 1.0,
            attempt: 1,
        }
    }

    fn stream(events: Vec<Event>) -> Vec<Envelope> {
        events
            .into_iter()
            .zip(1..)
            .map(|(ev, seq)| {
                let mut e = Envelope::new(workload_stream(id()), "test", ev);
                e.sequence = seq;
                e
            })
            .collect()
    }

    fn report(status: RunStatus, progress: f64) -> RunReported {
        RunReported {
            workload_id: id(),
            worker_id: "w".into(),
            status,
            progress,
            runtime_s: 12.0,
            detail: None,
            switch: None,
            output: None,
        }
    }

    fn view_in(state: WorkloadState, last_checkpoint: f64) -> WorkloadView {
        WorkloadView {
            state: Some(state),
            version: 5,
            last_checkpoint,
            ..Default::default()
        }
    }

    #[test]
    fn the_view_tracks_version_checkpoint_and_answered_proposals() {
        let mut events = stream(vec![
            Event::WorkloadSubmitted(submitted(1)),
            Event::WorkloadPlacementProposed(proposal(&[0])),
        ]);
        let proposal_id = events[1].event_id;
        let mut answer = Envelope::new(
            workload_stream(id()),
            "rm",
            Event::WorkloadScheduled(WorkloadScheduled {
                workload_id: id(),
                worker_id: "w".into(),
                gpu_ids: vec!["w/gpu-0".into()],
            }),
        )
        .caused_by(&events[1]);
        answer.sequence = 3;
        events.push(answer);
        for (ev, seq) in [
            (
                Event::WorkloadStarted(WorkloadStarted { workload_id: id() }),
                4,
            ),
            (
                Event::WorkloadCheckpointed(WorkloadCheckpointed {
                    workload_id: id(),
                    progress: 0.3,
                }),
                5,
            ),
        ] {
            let mut e = Envelope::new(workload_stream(id()), "rm", ev);
            e.sequence = seq;
            events.push(e);
        }
        let v = WorkloadView::fold(&events).unwrap();
        assert_eq!(v.state, Some(WorkloadState::Running));
        assert_eq!(v.version, 5);
        assert_eq!(v.last_checkpoint, 0.3);
        assert!(v.answered.contains(&proposal_id));
        assert_eq!(v.latest_proposal, Some(proposal_id));
        assert_eq!(v.correlation_id, Some(events[0].correlation_id));
    }

    #[test]
    fn started_then_completed_releases() {
        let d = decide_report(
            &view_in(WorkloadState::Scheduled, 0.0),
            &report(RunStatus::Started, 0.0),
        );
        assert!(matches!(d, ReportDecision::Apply { release: false, .. }));
        let d = decide_report(
            &view_in(WorkloadState::Running, 0.9),
            &report(RunStatus::Completed, 1.0),
        );
        let ReportDecision::Apply {
            events, release, ..
        } = d
        else {
            panic!("{d:?}")
        };
        assert!(release);
        assert!(matches!(events[..], [Event::WorkloadCompleted(_)]));
    }

    #[test]
    fn a_completion_carries_the_runs_output_into_the_workload_event() {
        let out = RunOutput::embeddings("all-MiniLM-L6-v2", &[vec![0.5, 0.5]], "cpu", 1.0);
        let mut r = report(RunStatus::Completed, 1.0);
        r.output = Some(out.clone());
        for state in [WorkloadState::Running, WorkloadState::Scheduled] {
            let ReportDecision::Apply { events, .. } = decide_report(&view_in(state, 0.0), &r)
            else {
                panic!("not applied in {state:?}")
            };
            let Some(Event::WorkloadCompleted(c)) = events.last() else {
                panic!("{events:?}")
            };
            assert_eq!(c.output.as_ref(), Some(&out), "{state:?}");
        }
    }

    #[test]
    fn a_stop_after_preemption_checkpoints_and_requeues_from_that_checkpoint() {
        let d = decide_report(
            &view_in(WorkloadState::Preempted, 0.2),
            &report(RunStatus::Stopped, 0.35),
        );
        let ReportDecision::Apply {
            events,
            release,
            requeue,
        } = d
        else {
            panic!("{d:?}")
        };
        assert!(release);
        assert_eq!(requeue, Some(RequeueKind::Preempted));
        match &events[..] {
            [Event::WorkloadCheckpointed(c), Event::WorkloadRequeued(r)] => {
                assert_eq!(c.progress, 0.35);
                assert_eq!(r.resume_progress, 0.35);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_stop_without_a_new_checkpoint_resumes_from_the_last_one() {
        let d = decide_report(
            &view_in(WorkloadState::Running, 0.4),
            &report(RunStatus::Stopped, 0.4),
        );
        let ReportDecision::Apply {
            events, requeue, ..
        } = d
        else {
            panic!("{d:?}")
        };
        assert_eq!(requeue, Some(RequeueKind::Stopped));
        match &events[..] {
            [Event::WorkloadRequeued(r)] => assert_eq!(r.resume_progress, 0.4),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn duplicate_and_stale_reports_are_ignored() {
        let running = view_in(WorkloadState::Running, 0.5);
        assert_eq!(
            decide_report(&running, &report(RunStatus::Started, 0.0)),
            ReportDecision::Ignore("duplicate_start")
        );
        assert_eq!(
            decide_report(&running, &report(RunStatus::Checkpointed, 0.4)),
            ReportDecision::Ignore("stale_checkpoint")
        );
        let done = view_in(WorkloadState::Completed, 1.0);
        assert_eq!(
            decide_report(&done, &report(RunStatus::Completed, 1.0)),
            ReportDecision::Ignore("not_applicable_in_state")
        );
        assert_eq!(
            decide_report(&running, &report(RunStatus::Paused, 0.5)),
            ReportDecision::Ignore("informational")
        );
    }

    #[test]
    fn a_run_omitted_past_the_grace_is_requeued_and_one_just_started_is_not() {
        let grace = Grace {
            restart: Duration::from_secs(10),
            start_ack: Duration::from_secs(300),
        };
        let [a, b, c, d, z] = [1, 2, 3, 4, 5].map(Uuid::from_u128);
        let held = [
            // Listed: nothing to do.
            HeldRun {
                workload_id: a,
                held_for: Duration::from_secs(60),
                missing_for: None,
                acknowledged: true,
            },
            // Omitted for the first time: start the clock.
            HeldRun {
                workload_id: b,
                held_for: Duration::from_secs(60),
                missing_for: None,
                acknowledged: true,
            },
            // Omitted past the grace: requeue.
            HeldRun {
                workload_id: c,
                held_for: Duration::from_secs(60),
                missing_for: Some(Duration::from_secs(11)),
                acknowledged: true,
            },
            // Omitted long enough but allocated a moment ago: its start is in flight.
            HeldRun {
                workload_id: d,
                held_for: Duration::from_secs(1),
                missing_for: Some(Duration::from_secs(11)),
                acknowledged: true,
            },
        ];
        let r = reconcile(&held, &[a, z, z], grace);
        assert_eq!(r.mark_missing, vec![b]);
        assert_eq!(r.requeue, vec![(c, Duration::from_secs(11))]);
        assert_eq!(r.zombies, vec![z]);
        assert!(r.clear_missing.is_empty());
        assert!(r.needs_pool_lock());
        let back = reconcile(
            &[HeldRun {
                workload_id: c,
                held_for: Duration::from_secs(60),
                missing_for: Some(Duration::from_secs(3)),
                acknowledged: true,
            }],
            &[c],
            grace,
        );
        assert_eq!(back.clear_missing, vec![c]);
        assert!(!back.needs_pool_lock());
        assert!(back.settled());
        assert!(!r.settled(), "b's clock runs");
    }

    #[test]
    fn a_start_still_on_its_way_is_never_requeued_however_long_the_heartbeats_omit_it() {
        let grace = Grace {
            restart: Duration::from_secs(10),
            start_ack: Duration::from_secs(300),
        };
        let [slow, stale, lost] = [1, 2, 3].map(Uuid::from_u128);
        let unacknowledged = |workload_id, held_s, missing_s: Option<u64>| HeldRun {
            workload_id,
            held_for: Duration::from_secs(held_s),
            missing_for: missing_s.map(Duration::from_secs),
            acknowledged: false,
        };
        // Given an overloaded bus: the start commands took minutes to reach the worker.
        let held = [
            unacknowledged(slow, 120, None),
            unacknowledged(stale, 200, Some(60)),
            unacknowledged(lost, 301, None),
        ];
        // When its heartbeats omit all three.
        let r = reconcile(&held, &[], grace);
        // Then the two in flight are left alone (a stale clock is cleared), and only the start
        // past the acknowledgement timeout is requeued.
        assert!(r.requeue.is_empty(), "{:?}", r.requeue);
        assert!(r.mark_missing.is_empty(), "{:?}", r.mark_missing);
        assert_eq!(r.clear_missing, vec![stale]);
        assert_eq!(r.unacknowledged, vec![(lost, Duration::from_secs(301))]);
        assert!(r.needs_pool_lock());
        assert!(!r.settled());
        let in_flight = reconcile(&held[..2], &[], grace);
        assert!(
            in_flight.settled(),
            "starts on their way leave nothing to do"
        );
        // Once the worker acknowledges, the restart grace counts from the first omission.
        let acked = HeldRun {
            acknowledged: true,
            ..unacknowledged(slow, 120, None)
        };
        assert_eq!(reconcile(&[acked], &[], grace).mark_missing, vec![slow]);
    }

    #[test]
    fn inventory_order_does_not_matter_but_a_new_gpu_does() {
        let a = vec![gpu(0), gpu(1)];
        let b = vec![gpu(1), gpu(0)];
        assert!(!inventory_changed(&a, &b));
        assert!(inventory_changed(&a, &[gpu(0)]));
    }
}
