//! The workload state machine. Every transition is an event; an event that does not fit the
//! current state is refused, whoever sends it.
//!
//! ```text
//! queued ──scheduled──▶ scheduled ──started──▶ running ──completed──▶ completed
//!   ▲                      │                    │  ▲ │
//!   │                      │            paused  ▼  │ resumed
//!   └──────requeued────────┴──── preempted ◀── paused
//! any non-terminal state ──failed──▶ failed, ──cancelled──▶ cancelled
//! ```

use hcp_events::Event;
use serde::{Deserialize, Serialize};

/// Where a workload is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WorkloadState {
    /// Accepted, waiting for placement.
    Queued,
    /// GPUs allocated; the worker is starting it.
    Scheduled,
    /// Running.
    Running,
    /// Paused in place (GPUs stay allocated).
    Paused,
    /// Being checkpointed and stopped to make room; goes back to the queue.
    Preempted,
    /// Finished.
    Completed,
    /// Failed (see the reason).
    Failed,
    /// Cancelled.
    Cancelled,
}

impl WorkloadState {
    /// Every state.
    pub const ALL: [WorkloadState; 8] = [
        Self::Queued,
        Self::Scheduled,
        Self::Running,
        Self::Paused,
        Self::Preempted,
        Self::Completed,
        Self::Failed,
        Self::Cancelled,
    ];

    /// Wire / column value.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Scheduled => "scheduled",
            Self::Running => "running",
            Self::Paused => "paused",
            Self::Preempted => "preempted",
            Self::Completed => "completed",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
        }
    }

    /// Parses a wire value.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|x| x.as_str() == s)
    }

    /// Whether no further transition is possible.
    pub const fn is_terminal(self) -> bool {
        matches!(self, Self::Completed | Self::Failed | Self::Cancelled)
    }

    /// Whether GPUs are allocated to the workload in this state.
    pub const fn holds_gpus(self) -> bool {
        matches!(
            self,
            Self::Scheduled | Self::Running | Self::Paused | Self::Preempted
        )
    }
}

impl std::fmt::Display for WorkloadState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An event that does not fit the state.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{event} is not allowed in state {from}")]
pub struct InvalidTransition {
    /// The current state.
    pub from: WorkloadState,
    /// The refused event type.
    pub event: &'static str,
}

/// The state after `event`, starting from `from` (`None`: no stream yet). Events that do not
/// concern workloads leave the state unchanged.
pub fn transition(
    from: Option<WorkloadState>,
    event: &Event,
) -> Result<WorkloadState, InvalidTransition> {
    use WorkloadState::*;
    let refuse = |from: WorkloadState| InvalidTransition {
        from,
        event: event.event_type().as_str(),
    };
    let Some(from) = from else {
        return match event {
            Event::WorkloadSubmitted(_) => Ok(Queued),
            _ => Err(InvalidTransition {
                from: Queued,
                event: event.event_type().as_str(),
            }),
        };
    };
    let to = match event {
        Event::WorkloadQueued(_)
        | Event::WorkloadPlacementProposed(_)
        | Event::WorkloadPlacementRejected(_)
            if from == Queued =>
        {
            Queued
        }
        Event::WorkloadScheduled(_) if from == Queued => Scheduled,
        Event::WorkloadStarted(_) if from == Scheduled => Running,
        Event::WorkloadCheckpointed(_) if matches!(from, Running | Paused | Preempted) => from,
        Event::WorkloadPaused(_) if from == Running => Paused,
        Event::WorkloadResumed(_) if from == Paused => Running,
        Event::WorkloadPreempted(_) if matches!(from, Scheduled | Running) => Preempted,
        Event::WorkloadRequeued(_) if matches!(from, Scheduled | Running | Paused | Preempted) => {
            Queued
        }
        // A run may finish before the checkpointing stop of a preemption, or a pause, reaches
        // it.
        Event::WorkloadCompleted(_) if matches!(from, Running | Preempted | Paused) => Completed,
        Event::WorkloadFailed(_) | Event::WorkloadCancelled(_) if !from.is_terminal() => {
            if matches!(event, Event::WorkloadFailed(_)) {
                Failed
            } else {
                Cancelled
            }
        }
        e if e.workload_id().is_none() => from,
        _ => return Err(refuse(from)),
    };
    Ok(to)
}

/// Folds a stream's events into its current state.
pub fn fold<'a>(
    events: impl IntoIterator<Item = &'a Event>,
) -> Result<Option<WorkloadState>, InvalidTransition> {
    let mut state = None;
    for e in events {
        state = Some(transition(state, e)?);
    }
    Ok(state)
}

#[cfg(test)]
mod tests {
    use super::*;
    use hcp_events::payload::*;
    use uuid::Uuid;

    fn id() -> Uuid {
        Uuid::nil()
    }

    fn submitted() -> Event {
        Event::WorkloadSubmitted(WorkloadSubmitted::simple(
            id(),
            "t",
            WorkloadKind::Training,
            "m",
            1,
            10,
        ))
    }
    fn scheduled() -> Event {
        Event::WorkloadScheduled(WorkloadScheduled {
            workload_id: id(),
            worker_id: "w".into(),
            gpu_ids: vec!["g".into()],
        })
    }
    fn started() -> Event {
        Event::WorkloadStarted(WorkloadStarted { workload_id: id() })
    }
    fn completed() -> Event {
        Event::WorkloadCompleted(WorkloadCompleted {
            workload_id: id(),
            runtime_s: 1.0,
            output: None,
        })
    }
    fn cancelled() -> Event {
        Event::WorkloadCancelled(WorkloadCancelled {
            workload_id: id(),
            requested_by: "t".into(),
        })
    }
    fn preempted() -> Event {
        Event::WorkloadPreempted(WorkloadPreempted {
            workload_id: id(),
            for_workload_id: Uuid::max(),
            reason: "r".into(),
        })
    }
    fn requeued() -> Event {
        Event::WorkloadRequeued(WorkloadRequeued {
            workload_id: id(),
            resume_progress: 0.4,
            reason: "r".into(),
        })
    }

    #[test]
    fn the_happy_path_ends_completed() {
        let evs = [submitted(), scheduled(), started(), completed()];
        assert_eq!(fold(&evs), Ok(Some(WorkloadState::Completed)));
    }

    #[test]
    fn preemption_goes_back_to_the_queue_and_can_run_again() {
        let evs = [
            submitted(),
            scheduled(),
            started(),
            preempted(),
            requeued(),
            scheduled(),
            started(),
            completed(),
        ];
        assert_eq!(fold(&evs), Ok(Some(WorkloadState::Completed)));
    }

    #[test]
    fn terminal_states_refuse_everything() {
        for end in [completed(), cancelled()] {
            let mut evs = vec![submitted(), scheduled(), started(), end];
            let state = fold(&evs).unwrap().unwrap();
            assert!(state.is_terminal());
            for next in [cancelled(), started(), scheduled(), requeued()] {
                evs.push(next);
                assert!(fold(&evs).is_err(), "{state} accepted more");
                evs.pop();
            }
        }
    }

    #[test]
    fn invalid_transitions_name_the_state_and_the_event() {
        let err = transition(Some(WorkloadState::Queued), &completed()).unwrap_err();
        assert_eq!(
            err.to_string(),
            "workload.completed is not allowed in state queued"
        );
        assert!(transition(None, &started()).is_err());
        assert!(transition(Some(WorkloadState::Queued), &submitted()).is_err());
    }

    #[test]
    fn a_run_that_finishes_as_a_pause_reaches_it_completes() {
        let paused = Event::WorkloadPaused(WorkloadPaused {
            workload_id: id(),
            requested_by: "t".into(),
        });
        let evs = [submitted(), scheduled(), started(), paused, completed()];
        assert_eq!(fold(&evs), Ok(Some(WorkloadState::Completed)));
    }

    #[test]
    fn cancel_is_allowed_in_every_live_state() {
        for s in WorkloadState::ALL.into_iter().filter(|s| !s.is_terminal()) {
            assert_eq!(
                transition(Some(s), &cancelled()),
                Ok(WorkloadState::Cancelled)
            );
        }
    }
}
