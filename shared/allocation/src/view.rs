//! A workload stream folded into what an allocation decision needs.

use std::collections::HashSet;

use hcp_domain::{transition, InvalidTransition, WorkloadState};
use hcp_events::payload::WorkloadSubmitted;
use hcp_events::{Envelope, Event};
use uuid::Uuid;

/// A workload stream folded into what the allocation decisions (placing, recording run
/// reports) need.
#[derive(Debug, Clone, Default)]
pub struct WorkloadView {
    /// Current state (`None`: no stream).
    pub state: Option<WorkloadState>,
    /// The stream's version (its last sequence; 0 when empty).
    pub version: i64,
    /// The workload's correlation id (its first event's).
    pub correlation_id: Option<Uuid>,
    /// The submission (model, GPU count, constraints).
    pub submitted: Option<WorkloadSubmitted>,
    /// Progress of the last checkpoint (or the resume point of the last requeue), 0-1.
    pub last_checkpoint: f64,
    /// Proposals already answered (scheduled or rejected), by the proposal's event id.
    pub answered: HashSet<Uuid>,
    /// Event id of the latest proposal.
    pub latest_proposal: Option<Uuid>,
}

impl WorkloadView {
    /// Folds a stream's events, in sequence order.
    pub fn fold<'a>(
        events: impl IntoIterator<Item = &'a Envelope>,
    ) -> Result<Self, InvalidTransition> {
        let mut v = Self::default();
        for e in events {
            v.push(e)?;
        }
        Ok(v)
    }

    /// Folds one more event (the next in the stream).
    pub fn push(&mut self, e: &Envelope) -> Result<(), InvalidTransition> {
        self.state = Some(transition(self.state, &e.payload)?);
        self.version = e.sequence;
        self.correlation_id.get_or_insert(e.correlation_id);
        match &e.payload {
            Event::WorkloadSubmitted(s) => self.submitted = Some(s.clone()),
            Event::WorkloadCheckpointed(c) => self.last_checkpoint = c.progress,
            Event::WorkloadRequeued(r) => self.last_checkpoint = r.resume_progress,
            Event::WorkloadPlacementProposed(_) => self.latest_proposal = Some(e.event_id),
            Event::WorkloadScheduled(_) | Event::WorkloadPlacementRejected(_) => {
                if let Some(c) = e.causation_id {
                    self.answered.insert(c);
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// The state after `events`, or the first refusal.
    pub fn check(&self, events: &[Event]) -> Result<WorkloadState, InvalidTransition> {
        let mut state = self.state;
        for e in events {
            state = Some(transition(state, e)?);
        }
        state.ok_or(InvalidTransition {
            from: WorkloadState::Queued,
            event: "nothing",
        })
    }
}
