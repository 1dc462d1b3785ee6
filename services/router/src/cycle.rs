//! The scheduling cycle's memory and decisions, free of I/O: the workloads, the fair queue,
//! the workers and their GPUs as the router's tables last said, what earlier passes proposed,
//! failed or preempted and are waiting to see reflected, and the pass itself (deadlines,
//! placement, preemption) that turns that memory into a [`Plan`]. The loop that feeds it and
//! writes its plans is [`crate::placer`].

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use hcp_domain::breaker::{Admission, Breaker, BreakerState};
use hcp_domain::bucket::TokenBucket;
use hcp_domain::placement::{
    place_all, FreeIndex, GpuInfo, PlacementRequest, ScoreWeights, SiteAttributes, WorkerInfo,
};
use hcp_domain::preempt::{choose_victims, PreemptionPolicy, RunningWorkload};
use hcp_domain::queue::FairQueue;
use hcp_domain::WorkloadState;
use hcp_events::payload::{
    WorkloadFailed, WorkloadPlacementProposed, WorkloadPreempted, WorkloadQueued,
};
use hcp_events::{Event, WorkloadKind};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::commit::Append;
use crate::config::RouterConfig;
use crate::metrics as m;
use crate::repo::{self, Changes, GpuRow, SiteRow, WorkloadRow};

/// Seconds between housekeeping rounds (site attributes, purging ended workloads).
pub(crate) const HOUSEKEEPING_EVERY_S: i64 = 10;

/// With nothing changed and no timer due, a pass is still run this often (token refills,
/// cooldowns and anything else that only time changes).
const IDLE_RECHECK_MS: i64 = 1000;

/// Real-time workloads sit at these priorities (base 8 plus tier).
const REALTIME_LEVELS: [u8; 3] = [10, 9, 8];

/// Debug builds check the kept free-GPU index against one built new at every pass, up to this
/// many GPUs (beyond it the check would slow the tests' larger fleets for little gain).
const INDEX_CHECK_MAX_GPUS: usize = 2_000;

#[derive(Debug, Clone)]
struct Workload {
    tenant: String,
    kind: Option<WorkloadKind>,
    priority: Option<u8>,
    interruptible: bool,
    class_reason: Option<String>,
    request: PlacementRequest,
    deadline: Option<OffsetDateTime>,
    state: WorkloadState,
    last_version: i64,
    last_event_id: Uuid,
    correlation_id: Uuid,
    attempts: u32,
    next_attempt_at: Option<OffsetDateTime>,
    /// The recorded proposal waiting for an answer: (worker, GPUs, when).
    proposed: Option<(String, Vec<String>, OffsetDateTime)>,
    worker_id: Option<String>,
    gpu_ids: Vec<String>,
    progress_at: Option<OffsetDateTime>,
    preempted_for: Option<Uuid>,
    preempted_at: Option<OffsetDateTime>,
}

impl Workload {
    /// Classified by the projection but not announced yet: its stream holds only the
    /// submission (sequence 1), and the cycle appends `workload.queued` before anything else.
    fn unannounced(&self) -> bool {
        self.state == WorkloadState::Queued && self.priority.is_some() && self.last_version == 1
    }

    /// The `workload.queued` that announces the classification.
    fn queued_event(&self, id: Uuid) -> Option<Event> {
        Some(Event::WorkloadQueued(WorkloadQueued {
            workload_id: id,
            kind: self.kind?,
            priority: self.priority?,
            interruptible: self.interruptible,
            reason: self.class_reason.clone().unwrap_or_default(),
        }))
    }

    fn from_row(r: WorkloadRow, state: WorkloadState) -> Self {
        Self {
            tenant: r.tenant_id,
            kind: r.kind.as_deref().and_then(repo::parse_kind),
            priority: r.priority.and_then(|p| u8::try_from(p).ok()),
            interruptible: r.interruptible.unwrap_or(false),
            class_reason: r.class_reason,
            request: PlacementRequest {
                gpu_count: u32::try_from(r.gpu_count).unwrap_or(0),
                gpu_type: r.gpu_type,
                min_memory_mib: u64::try_from(r.gpu_memory_mib).unwrap_or(0),
            },
            deadline: r.deadline,
            state,
            last_version: r.last_version,
            last_event_id: r.last_event_id,
            correlation_id: r.correlation_id,
            attempts: u32::try_from(r.attempts).unwrap_or(0),
            next_attempt_at: r.next_attempt_at,
            proposed: match (r.proposed_worker, r.proposed_gpus, r.proposed_at) {
                (Some(w), Some(g), Some(at)) => Some((w, g, at)),
                _ => None,
            },
            worker_id: r.worker_id,
            gpu_ids: r.gpu_ids,
            progress_at: r.progress_at,
            preempted_for: r.preempted_for,
            preempted_at: r.preempted_at,
        }
    }
}

#[derive(Debug, Clone)]
struct WorkerEntry {
    site: String,
    healthy: bool,
    breaker: Breaker,
}

#[derive(Debug, Clone)]
struct Gpu {
    worker_id: String,
    model: String,
    memory_mib: u64,
    held_by: Option<Uuid>,
}

/// A proposal waiting for its answer.
#[derive(Debug, Clone)]
struct Proposal {
    /// The stream version of the proposal event.
    version: i64,
    worker_id: String,
    gpu_ids: Vec<String>,
    at: OffsetDateTime,
}

/// A wave of preemptions for one real-time workload.
#[derive(Debug, Clone)]
struct Preemption {
    victims: Vec<Uuid>,
    at: OffsetDateTime,
}

/// What one pass decided.
#[derive(Debug, Default)]
pub(crate) struct Plan {
    pub(crate) expired: Vec<Append>,
    pub(crate) proposals: Vec<Append>,
    /// `workload.queued` for classified workloads this pass could not place.
    pub(crate) announcements: Vec<Append>,
    /// Per real-time workload, its victims' preempted events.
    pub(crate) preemptions: Vec<(Uuid, Vec<Append>)>,
    pub(crate) considered: usize,
    /// The earliest end of a backoff the pass skipped.
    pub(crate) backoff_due: Option<OffsetDateTime>,
}

/// Per append of a [`Plan`], the stream version it got (`None`: skipped or failed).
#[derive(Debug, Default)]
pub(crate) struct Appended {
    pub(crate) expired: Vec<Option<i64>>,
    pub(crate) proposed: Vec<Option<i64>>,
    pub(crate) announced: Vec<Option<i64>>,
    pub(crate) waves: Vec<Vec<Option<i64>>>,
}

/// What actually went through in a pass.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Done {
    pub(crate) expired: u64,
    pub(crate) placed: u64,
    pub(crate) preempted: u64,
}

/// Everything the loop keeps in memory.
#[derive(Debug)]
pub(crate) struct State {
    pub(crate) watermark: i64,
    workloads: HashMap<Uuid, Workload>,
    queue: FairQueue<Uuid>,
    deadlines: BTreeSet<(OffsetDateTime, Uuid)>,
    /// Scheduled or running: preemption candidates.
    running: HashSet<Uuid>,
    workers: BTreeMap<String, WorkerEntry>,
    gpus: HashMap<String, Gpu>,
    worker_gpus: HashMap<String, BTreeSet<String>>,
    sites: HashMap<String, SiteRow>,
    proposals: HashMap<Uuid, Proposal>,
    /// The free-GPU index, kept between passes (`None`: built at the next pass).
    index: Option<FreeIndex>,
    /// Workers to re-index before the next pass: their row, GPUs or proposals changed, or the
    /// last pass placed on them.
    dirty: HashSet<String>,
    /// Deadline failures appended (stream version), until the row moves past them.
    failing: HashMap<Uuid, i64>,
    /// Preempted events appended (stream version), until the row moves past them.
    pending_victims: HashMap<Uuid, i64>,
    /// Classified workloads whose `workload.queued` is not appended yet.
    unannounced: HashSet<Uuid>,
    /// Announcements appended (stream version), until the row moves past them.
    announcing: HashMap<Uuid, i64>,
    /// Real-time workload → its last wave of victims.
    preemptions: HashMap<Uuid, Preemption>,
    bucket: TokenBucket,
    pub(crate) last_housekeeping: Option<OffsetDateTime>,
    /// When a pass is next needed if no row changes: the earliest backoff, proposal or
    /// preemption expiry, deadline or breaker transition seen by the last pass.
    pub(crate) next_due: OffsetDateTime,
}

impl State {
    /// Whether applying `changes` and planning is small enough to do on the async runtime:
    /// handing a few rows to a blocking thread costs more (a cold thread's wake-up) than the
    /// work, and it is on a lone submission's path.
    pub(crate) fn is_small(&self, changes: &crate::repo::Changes) -> bool {
        const SMALL: usize = 64;
        self.queue.len() + changes.workloads.len() + changes.gpus.len() < SMALL
    }

    pub(crate) fn new(config: &RouterConfig, now: OffsetDateTime) -> Self {
        Self {
            watermark: 0,
            workloads: HashMap::new(),
            queue: FairQueue::new(),
            deadlines: BTreeSet::new(),
            running: HashSet::new(),
            workers: BTreeMap::new(),
            gpus: HashMap::new(),
            worker_gpus: HashMap::new(),
            sites: HashMap::new(),
            proposals: HashMap::new(),
            index: None,
            dirty: HashSet::new(),
            failing: HashMap::new(),
            pending_victims: HashMap::new(),
            unannounced: HashSet::new(),
            announcing: HashMap::new(),
            preemptions: HashMap::new(),
            bucket: TokenBucket::new(config.preemption_burst, config.preemptions_per_minute, now),
            last_housekeeping: None,
            next_due: OffsetDateTime::UNIX_EPOCH,
        }
    }

    pub(crate) fn apply(&mut self, changes: Changes) {
        for w in changes.workers {
            self.dirty.insert(w.worker_id.clone());
            self.workers.insert(
                w.worker_id,
                WorkerEntry {
                    site: w.site,
                    healthy: w.healthy,
                    breaker: w.breaker.0,
                },
            );
        }
        for g in changes.gpus {
            self.apply_gpu(g);
        }
        for r in changes.workloads {
            self.apply_workload(r);
        }
        self.watermark = changes.next_watermark;
    }

    /// Sets the sites' scoring attributes (every worker's score may move: the index is built
    /// anew when they changed).
    pub(crate) fn set_sites(&mut self, sites: HashMap<String, SiteRow>) {
        if sites != self.sites {
            self.index = None;
        }
        self.sites = sites;
    }

    fn apply_gpu(&mut self, g: GpuRow) {
        self.dirty.insert(g.worker_id.clone());
        if let Some(old) = self.gpus.remove(&g.gpu_id) {
            if let Some(set) = self.worker_gpus.get_mut(&old.worker_id) {
                set.remove(&g.gpu_id);
            }
            self.dirty.insert(old.worker_id);
        }
        if g.removed {
            return;
        }
        self.worker_gpus
            .entry(g.worker_id.clone())
            .or_default()
            .insert(g.gpu_id.clone());
        self.gpus.insert(
            g.gpu_id,
            Gpu {
                worker_id: g.worker_id,
                model: g.model,
                memory_mib: u64::try_from(g.memory_mib).unwrap_or(0),
                held_by: g.held_by,
            },
        );
    }

    fn forget(&mut self, id: Uuid) {
        if let Some(old) = self.workloads.remove(&id) {
            if let Some(d) = old.deadline {
                self.deadlines.remove(&(d, id));
            }
        }
        self.queue.remove(&id);
        self.running.remove(&id);
        self.drop_proposal(&id);
        self.failing.remove(&id);
        self.pending_victims.remove(&id);
        self.unannounced.remove(&id);
        self.announcing.remove(&id);
        self.preemptions.remove(&id);
    }

    fn apply_workload(&mut self, r: WorkloadRow) {
        let id = r.workload_id;
        let Some(state) = WorkloadState::parse(&r.state) else {
            tracing::warn!(workload_id = %id, state = %r.state, "unknown state in router_queue");
            return;
        };
        if state.is_terminal() {
            self.forget(id);
            return;
        }
        let w = Workload::from_row(r, state);
        if self
            .proposals
            .get(&id)
            .is_some_and(|p| w.last_version > p.version || w.state != WorkloadState::Queued)
        {
            self.drop_proposal(&id);
        }
        // A proposal recorded in the table (e.g. made before a restart) blocks like one made now.
        if let (WorkloadState::Queued, Some((worker_id, gpu_ids, at))) = (w.state, &w.proposed) {
            if !self.proposals.contains_key(&id) {
                self.set_proposal(
                    id,
                    Proposal {
                        version: w.last_version,
                        worker_id: worker_id.clone(),
                        gpu_ids: gpu_ids.clone(),
                        at: *at,
                    },
                );
            }
        }
        if self.failing.get(&id).is_some_and(|v| w.last_version >= *v) {
            self.failing.remove(&id);
        }
        if self
            .pending_victims
            .get(&id)
            .is_some_and(|v| w.last_version >= *v)
        {
            self.pending_victims.remove(&id);
        }
        if self
            .announcing
            .get(&id)
            .is_some_and(|v| w.last_version >= *v)
        {
            self.announcing.remove(&id);
        }
        if w.unannounced() {
            self.unannounced.insert(id);
        } else {
            self.unannounced.remove(&id);
        }
        let placeable = w.state == WorkloadState::Queued && w.priority.is_some();
        match (placeable, self.queue.priority_of(&id)) {
            (true, Some(p)) if Some(p) == w.priority => {}
            (true, current) => {
                if current.is_some() {
                    self.queue.remove(&id);
                }
                if let Some(p) = w.priority {
                    if let Err(e) = self.queue.push(id, p, &w.tenant) {
                        tracing::warn!(workload_id = %id, error = %e, "cannot queue workload");
                    }
                }
            }
            (false, Some(_)) => {
                self.queue.remove(&id);
            }
            (false, None) => {}
        }
        if let Some(d) = self.workloads.get(&id).and_then(|o| o.deadline) {
            self.deadlines.remove(&(d, id));
        }
        if let (WorkloadState::Queued, Some(d)) = (w.state, w.deadline) {
            self.deadlines.insert((d, id));
        }
        if matches!(w.state, WorkloadState::Scheduled | WorkloadState::Running) {
            self.running.insert(id);
        } else {
            self.running.remove(&id);
        }
        self.workloads.insert(id, w);
    }

    /// Whether `id` may be placed now, and what it needs.
    fn eligible(&self, id: &Uuid, now: OffsetDateTime) -> Option<&PlacementRequest> {
        let w = self.workloads.get(id)?;
        let ok = w.state == WorkloadState::Queued
            && w.priority.is_some()
            && !self.proposals.contains_key(id)
            && !self.failing.contains_key(id)
            && !self.announcing.contains_key(id)
            && w.next_attempt_at.is_none_or(|t| t <= now)
            && w.deadline.is_none_or(|d| d > now);
        ok.then_some(&w.request)
    }

    /// Whether the victims of `id`'s last preemption wave are still stopping.
    fn victims_stopping(&self, id: &Uuid) -> bool {
        self.preemptions.get(id).is_some_and(|p| {
            p.victims.iter().any(|v| {
                self.pending_victims.contains_key(v)
                    || self.workloads.get(v).is_some_and(|w| {
                        w.state == WorkloadState::Preempted && w.preempted_for == Some(*id)
                    })
            })
        })
    }

    /// `event` for workload `id` at the version last seen, announced first when it has not
    /// been (the stream then reads submitted, queued, `event`).
    fn append_for(&self, id: Uuid, event: Event) -> Option<Append> {
        let w = self.workloads.get(&id)?;
        Some(Append {
            workload_id: id,
            expected: w.last_version,
            correlation_id: w.correlation_id,
            causation_id: w.last_event_id,
            announce: if w.unannounced() {
                w.queued_event(id)
            } else {
                None
            },
            event,
        })
    }

    fn drop_proposal(&mut self, id: &Uuid) {
        if let Some(p) = self.proposals.remove(id) {
            self.mark_proposal(&p);
        }
    }

    fn set_proposal(&mut self, id: Uuid, proposal: Proposal) {
        self.mark_proposal(&proposal);
        if let Some(old) = self.proposals.insert(id, proposal) {
            self.mark_proposal(&old);
        }
    }

    /// Marks for re-indexing what a proposal touches: its worker (its probe) and whichever
    /// workers its GPUs are on now (a GPU may have moved since it was proposed).
    fn mark_proposal(&mut self, p: &Proposal) {
        self.dirty.insert(p.worker_id.clone());
        for gid in &p.gpu_ids {
            if let Some(g) = self.gpus.get(gid) {
                self.dirty.insert(g.worker_id.clone());
            }
        }
    }

    /// The GPUs promised to proposals, and the workers with a proposal out.
    fn promised(&self) -> (HashSet<&str>, HashSet<&str>) {
        let promised = self
            .proposals
            .values()
            .flat_map(|p| p.gpu_ids.iter().map(String::as_str))
            .collect();
        let probing = self
            .proposals
            .values()
            .map(|p| p.worker_id.as_str())
            .collect();
        (promised, probing)
    }

    /// Worker `id` as the scheduler sees it now: GPUs held or promised are allocated; a
    /// half-open worker with a proposal out has used its probe.
    fn worker_info(
        &self,
        (id, w): (&String, &WorkerEntry),
        now: OffsetDateTime,
        config: &RouterConfig,
        (promised, probing): &(HashSet<&str>, HashSet<&str>),
    ) -> WorkerInfo {
        let mut admission = w.breaker.admission(now, &config.breaker);
        if admission == Admission::Probe && probing.contains(id.as_str()) {
            admission = Admission::Deny;
        }
        let site = self.sites.get(&w.site).copied().unwrap_or_default();
        let gpus = self
            .worker_gpus
            .get(id)
            .into_iter()
            .flatten()
            .filter_map(|gid| {
                let g = self.gpus.get(gid)?;
                Some(GpuInfo {
                    gpu_id: gid.clone(),
                    model: g.model.clone(),
                    memory_mib: g.memory_mib,
                    allocated: g.held_by.is_some() || promised.contains(gid.as_str()),
                })
            })
            .collect();
        WorkerInfo {
            worker_id: id.clone(),
            site: w.site.clone(),
            healthy: w.healthy,
            admission,
            gpus,
            site_attributes: SiteAttributes {
                latency_ms: site.latency_ms,
                cost_per_gpu_hour: site.cost_per_gpu_hour,
            },
            profitability: site.profitability,
        }
    }

    /// The whole fleet as the scheduler sees it now (see [`State::worker_info`]).
    fn worker_infos(&self, now: OffsetDateTime, config: &RouterConfig) -> Vec<WorkerInfo> {
        let promised = self.promised();
        self.workers
            .iter()
            .map(|w| self.worker_info(w, now, config, &promised))
            .collect()
    }

    /// The free-GPU index, brought up to date: the workers marked dirty and those whose
    /// breaker is not closed (their admission moves with time) are re-indexed; a change the
    /// kept index cannot take (a new worker or GPU class, new site attributes) builds it anew.
    /// The pass is O(changes), not O(fleet).
    fn take_index(&mut self, now: OffsetDateTime, config: &RouterConfig) -> FreeIndex {
        let unsettled = self
            .workers
            .iter()
            .filter(|(_, w)| !matches!(w.breaker, Breaker::Closed { .. }))
            .map(|(id, _)| id.clone());
        self.dirty.extend(unsettled);
        let dirty = std::mem::take(&mut self.dirty);
        let kept = self.index.take().and_then(|mut index| {
            let promised = self.promised();
            let all_taken = dirty.iter().all(|id| {
                self.workers.get_key_value(id).is_none_or(|w| {
                    index.update_worker(&self.worker_info(w, now, config, &promised))
                })
            });
            all_taken.then(|| {
                index.start_pass();
                index
            })
        });
        let index = kept.unwrap_or_else(|| {
            FreeIndex::new(&self.worker_infos(now, config), ScoreWeights::default())
        });
        if cfg!(debug_assertions) && self.gpus.len() <= INDEX_CHECK_MAX_GPUS {
            let fresh = FreeIndex::new(&self.worker_infos(now, config), ScoreWeights::default());
            assert_eq!(
                index.contents(),
                fresh.contents(),
                "the kept free-GPU index drifted from the router's memory"
            );
        }
        index
    }

    /// Decides this pass: deadline failures, placements and preemptions.
    pub(crate) fn plan(&mut self, now: OffsetDateTime, config: &RouterConfig) -> Plan {
        let plan = self.decide(now, config);
        self.next_due = self.next_due(now, config, plan.backoff_due);
        plan
    }

    /// When the next pass is needed if nothing changes (see [`State::next_due`]).
    fn next_due(
        &self,
        now: OffsetDateTime,
        config: &RouterConfig,
        backoff_due: Option<OffsetDateTime>,
    ) -> OffsetDateTime {
        let ms = |v: u64| time::Duration::milliseconds(i64::try_from(v).unwrap_or(i64::MAX));
        let breakers = self.workers.values().filter_map(|w| match w.breaker {
            Breaker::Open { until, .. } => Some(until),
            Breaker::HalfOpen {
                probe_started: Some(t),
                ..
            } => Some(t + ms(config.breaker.probe_timeout_ms)),
            _ => None,
        });
        let proposals = self
            .proposals
            .values()
            .map(|p| p.at + ms(config.proposal_timeout_ms));
        let preemptions = self
            .preemptions
            .values()
            .map(|p| p.at + ms(config.preemption_timeout_ms));
        let deadline = self.deadlines.iter().map(|(d, _)| *d).find(|d| *d > now);
        breakers
            .chain(proposals)
            .chain(preemptions)
            .chain(deadline)
            .chain(backoff_due)
            .filter(|t| *t > now)
            .fold(
                now + time::Duration::milliseconds(IDLE_RECHECK_MS),
                |a, b| a.min(b),
            )
    }

    fn decide(&mut self, now: OffsetDateTime, config: &RouterConfig) -> Plan {
        let mut plan = Plan::default();
        let proposal_timeout = time::Duration::milliseconds(config.proposal_timeout_ms as i64);
        let timed_out: Vec<Uuid> = self
            .proposals
            .iter()
            .filter(|(_, p)| now - p.at >= proposal_timeout)
            .map(|(id, _)| *id)
            .collect();
        for id in timed_out {
            self.drop_proposal(&id);
        }
        let preemption_timeout = time::Duration::milliseconds(config.preemption_timeout_ms as i64);
        let workloads = &self.workloads;
        self.preemptions.retain(|id, p| {
            now - p.at < preemption_timeout
                && workloads
                    .get(id)
                    .is_some_and(|w| w.state == WorkloadState::Queued)
        });

        // Deadlines.
        let expired: Vec<(OffsetDateTime, Uuid)> = self
            .deadlines
            .iter()
            .take_while(|(d, _)| *d <= now)
            .copied()
            .collect();
        for (deadline, id) in expired {
            if self.proposals.contains_key(&id) || self.failing.contains_key(&id) {
                continue;
            }
            let when = deadline
                .format(&time::format_description::well_known::Rfc3339)
                .unwrap_or_else(|_| deadline.to_string());
            let event = Event::WorkloadFailed(WorkloadFailed {
                workload_id: id,
                reason: format!("deadline {when} passed before placement"),
            });
            plan.expired.extend(self.append_for(id, event));
        }

        // Placement.
        let mut index = self.take_index(now, config);
        let mut first: Vec<(u8, Uuid)> = self
            .preemptions
            .keys()
            .filter_map(|id| Some((self.workloads.get(id)?.priority?, *id)))
            .collect();
        first.sort_by(|a, b| b.cmp(a));
        let first_ids: HashSet<Uuid> = first.iter().map(|(_, id)| *id).collect();
        let mut backoff_due: Option<OffsetDateTime> = None;
        let order = first
            .iter()
            .map(|(_, id)| *id)
            .chain(
                self.queue
                    .drain_order()
                    .map(|(id, _)| id)
                    .filter(|id| !first_ids.contains(id)),
            )
            .filter_map(|id| {
                let backoff = self
                    .workloads
                    .get(&id)
                    .and_then(|w| w.next_attempt_at)
                    .filter(|t| *t > now);
                if let Some(t) = backoff {
                    backoff_due = Some(backoff_due.map_or(t, |d: OffsetDateTime| d.min(t)));
                }
                self.eligible(&id, now).map(|r| (id, r))
            });
        let outcome = place_all(&mut index, order);
        self.index = Some(index);
        plan.backoff_due = backoff_due;
        plan.considered = outcome.considered;
        let mut placed: HashSet<Uuid> = HashSet::with_capacity(outcome.placed.len());
        let mut placed_gpus: HashSet<String> = HashSet::new();
        for (id, p) in outcome.placed {
            // Promised now if its append goes through, free again if not: re-indexed next pass.
            self.dirty.insert(p.worker_id.clone());
            let Some(w) = self.workloads.get(&id) else {
                continue;
            };
            placed.insert(id);
            placed_gpus.extend(p.gpu_ids.iter().cloned());
            let event = Event::WorkloadPlacementProposed(WorkloadPlacementProposed {
                workload_id: id,
                worker_id: p.worker_id,
                gpu_ids: p.gpu_ids,
                score: p.score,
                attempt: w.attempts.saturating_add(1),
            });
            plan.proposals.extend(self.append_for(id, event));
        }

        // Announce what was classified and has to wait.
        let expiring: HashSet<Uuid> = plan.expired.iter().map(|a| a.workload_id).collect();
        let mut waiting: Vec<Uuid> = self
            .unannounced
            .iter()
            .filter(|id| {
                // A proposal or deadline failure appended earlier carried the announcement;
                // until the row shows it, announcing again would only conflict.
                !placed.contains(*id)
                    && !expiring.contains(*id)
                    && !self.announcing.contains_key(*id)
                    && !self.proposals.contains_key(*id)
                    && !self.failing.contains_key(*id)
            })
            .copied()
            .collect();
        waiting.sort_unstable();
        for id in waiting {
            let Some(event) = self.workloads.get(&id).and_then(|w| w.queued_event(id)) else {
                continue;
            };
            if let Some(mut a) = self.append_for(id, event) {
                a.announce = None;
                plan.announcements.push(a);
            }
        }

        // Preemption for real-time work that still does not fit.
        let candidates: Vec<Uuid> = REALTIME_LEVELS
            .iter()
            .flat_map(|p| self.queue.iter_level(*p))
            .filter(|id| {
                !placed.contains(*id)
                    && self
                        .workloads
                        .get(*id)
                        .is_some_and(|w| w.kind == Some(WorkloadKind::RealtimeInference))
                    && self.eligible(id, now).is_some()
                    && !self.victims_stopping(id)
            })
            .take(config.max_preemptions_per_tick)
            .copied()
            .collect();
        if candidates.is_empty() {
            return plan;
        }
        let mut infos = self.worker_infos(now, config);
        for info in &mut infos {
            for g in &mut info.gpus {
                g.allocated |= placed_gpus.contains(&g.gpu_id);
            }
        }
        let mut running: Vec<RunningWorkload<Uuid>> = self
            .running
            .iter()
            .filter(|id| !self.pending_victims.contains_key(*id))
            .filter_map(|id| {
                let w = self.workloads.get(id)?;
                Some(RunningWorkload {
                    id: *id,
                    worker_id: w.worker_id.clone()?,
                    gpu_ids: w.gpu_ids.clone(),
                    priority: w.priority?,
                    interruptible: w.interruptible,
                    progress_at_risk_s: w
                        .progress_at
                        .map_or(0.0, |t| (now - t).as_seconds_f64().max(0.0)),
                    last_preempted_at: w.preempted_at,
                    stopping: false,
                })
            })
            .collect();
        running.sort_by_key(|r| r.id);
        let policy = PreemptionPolicy {
            victim_cooldown: time::Duration::seconds(config.victim_cooldown_s as i64),
        };
        for id in candidates {
            let Some(w) = self.workloads.get(&id) else {
                continue;
            };
            let Some(priority) = w.priority else { continue };
            let Some(choice) = choose_victims(&w.request, priority, &infos, &running, now, &policy)
            else {
                continue;
            };
            let n = u32::try_from(choice.victims.len()).unwrap_or(u32::MAX);
            if !self.bucket.try_take(n, now) {
                tracing::debug!(workload_id = %id, victims = n, "preemption rate-limited");
                break;
            }
            running.retain(|r| !choice.victims.contains(&r.id));
            let appends = choice
                .victims
                .iter()
                .filter_map(|v| {
                    self.append_for(
                        *v,
                        Event::WorkloadPreempted(WorkloadPreempted {
                            workload_id: *v,
                            for_workload_id: id,
                            reason: format!(
                                "making room on {} for real-time workload {id} (priority {priority})",
                                choice.worker_id
                            ),
                        }),
                    )
                })
                .collect();
            plan.preemptions.push((id, appends));
        }
        plan
    }

    /// Remembers what the plan appended: proposals (until answered), deadline failures and
    /// preemption waves (until their rows move past them).
    pub(crate) fn record(&mut self, plan: &Plan, appended: Appended, now: OffsetDateTime) -> Done {
        let mut done = Done::default();
        for (a, v) in plan.expired.iter().zip(appended.expired) {
            if let Some(v) = v {
                self.failing.insert(a.workload_id, v);
                done.expired += 1;
                tracing::info!(workload_id = %a.workload_id, "deadline passed before placement");
            }
        }
        for (a, v) in plan.announcements.iter().zip(appended.announced) {
            if let Some(v) = v {
                self.announcing.insert(a.workload_id, v);
            }
        }
        for (a, v) in plan.proposals.iter().zip(appended.proposed) {
            let (Some(v), Event::WorkloadPlacementProposed(p)) = (v, &a.event) else {
                continue;
            };
            done.placed += 1;
            self.set_proposal(
                a.workload_id,
                Proposal {
                    version: v,
                    worker_id: p.worker_id.clone(),
                    gpu_ids: p.gpu_ids.clone(),
                    at: now,
                },
            );
        }
        for ((id, appends), versions) in plan.preemptions.iter().zip(appended.waves) {
            let mut victims = Vec::new();
            for (a, v) in appends.iter().zip(versions) {
                if let Some(v) = v {
                    self.pending_victims.insert(a.workload_id, v);
                    victims.push(a.workload_id);
                }
            }
            if !victims.is_empty() {
                done.preempted += victims.len() as u64;
                tracing::info!(workload_id = %id, victims = ?victims, "preempting for real-time work");
                self.preemptions
                    .insert(*id, Preemption { victims, at: now });
            }
        }
        done
    }

    pub(crate) fn record_metrics(&self, now: OffsetDateTime) {
        for (p, label) in (1..=10u8).zip(m::PRIORITY_LABELS) {
            metrics::gauge!(m::QUEUE_DEPTH, "priority" => label).set(self.queue.len_at(p) as f64);
        }
        let mut counts = [0usize; 3];
        for w in self.workers.values() {
            let i = match w.breaker.state(now) {
                BreakerState::Closed => 0,
                BreakerState::Open => 1,
                BreakerState::HalfOpen => 2,
            };
            counts[i] += 1;
        }
        for (state, n) in ["closed", "open", "half_open"].into_iter().zip(counts) {
            metrics::gauge!(m::BREAKERS, "state" => state).set(n as f64);
        }
    }
}

#[cfg(test)]
mod tests;
