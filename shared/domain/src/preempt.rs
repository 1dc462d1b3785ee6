//! Preemption choice: which running work to stop so that a real-time workload that cannot be
//! placed fits on ONE worker.
//!
//! Candidates are running, interruptible workloads of strictly lower priority that are not
//! already stopping and were not preempted within the cooldown. For each schedulable worker and
//! each GPU class there that the request accepts, victims are taken in order of lowest
//! priority, then least progress at risk, until the class's free GPUs plus theirs cover the
//! request; victims that turn out unnecessary are dropped again, so the set is minimal. Among
//! workers the plan with the lowest highest-victim priority wins, then the fewest victims, then
//! the least progress at risk, then the fewest GPUs freed beyond the need, then the worker id.
//! Rate limiting ([`crate::bucket::TokenBucket`]) is the caller's.

use std::collections::HashMap;

use time::{Duration, OffsetDateTime};

use crate::breaker::Admission;
use crate::placement::{PlacementRequest, WorkerInfo};

/// A running workload, as preemption sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct RunningWorkload<K> {
    /// Its id.
    pub id: K,
    /// The worker it runs on.
    pub worker_id: String,
    /// The GPUs it holds there.
    pub gpu_ids: Vec<String>,
    /// Its priority.
    pub priority: u8,
    /// Whether it may be checkpointed and stopped.
    pub interruptible: bool,
    /// Work done since its last checkpoint, seconds (what a stop would put at risk).
    pub progress_at_risk_s: f64,
    /// When it was last preempted, if ever.
    pub last_preempted_at: Option<OffsetDateTime>,
    /// Already being stopped for someone else.
    pub stopping: bool,
}

/// Preemption rules that are not the rate limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PreemptionPolicy {
    /// A workload preempted less than this ago is left alone.
    pub victim_cooldown: Duration,
}

impl Default for PreemptionPolicy {
    fn default() -> Self {
        Self {
            victim_cooldown: Duration::minutes(5),
        }
    }
}

/// The chosen victims.
#[derive(Debug, Clone, PartialEq)]
pub struct PreemptionPlan<K> {
    /// The worker the real-time workload will land on once they stop.
    pub worker_id: String,
    /// The workloads to preempt.
    pub victims: Vec<K>,
    /// Matching GPUs that will then be free there (free now + freed).
    pub gpus_available: u32,
}

/// Chooses the victims for a workload of `priority` needing `req` (see the module docs), or
/// `None` when no single worker can make room.
pub fn choose_victims<K: Copy>(
    req: &PlacementRequest,
    priority: u8,
    workers: &[WorkerInfo],
    running: &[RunningWorkload<K>],
    now: OffsetDateTime,
    policy: &PreemptionPolicy,
) -> Option<PreemptionPlan<K>> {
    let need = req.gpu_count as usize;
    if need == 0 {
        return None;
    }
    let mut by_worker: HashMap<&str, Vec<&RunningWorkload<K>>> = HashMap::new();
    for r in running.iter().filter(|r| {
        r.interruptible
            && r.priority < priority
            && !r.stopping
            && r.last_preempted_at
                .is_none_or(|t| now - t >= policy.victim_cooldown)
    }) {
        by_worker.entry(r.worker_id.as_str()).or_default().push(r);
    }
    // (max victim priority, victims, progress at risk (ms), GPUs beyond need, worker id)
    type Cost<'a> = (u8, usize, i64, usize, &'a str);
    let mut best: Option<(Cost<'_>, PreemptionPlan<K>)> = None;
    for w in workers
        .iter()
        .filter(|w| w.healthy && w.admission != Admission::Deny)
    {
        let Some(victims) = by_worker.get(w.worker_id.as_str()) else {
            continue;
        };
        let class_of: HashMap<&str, (&str, u64)> = w
            .gpus
            .iter()
            .map(|g| (g.gpu_id.as_str(), (g.model.as_str(), g.memory_mib)))
            .collect();
        let mut classes: Vec<(&str, u64)> = w
            .gpus
            .iter()
            .filter(|g| req.accepts(&g.model, g.memory_mib))
            .map(|g| (g.model.as_str(), g.memory_mib))
            .collect();
        classes.sort_unstable();
        classes.dedup();
        for class in classes {
            let free = w
                .gpus
                .iter()
                .filter(|g| !g.allocated && (g.model.as_str(), g.memory_mib) == class)
                .count();
            if free >= need {
                continue;
            }
            let mut cands: Vec<(&RunningWorkload<K>, usize)> = victims
                .iter()
                .map(|v| {
                    let gain = v
                        .gpu_ids
                        .iter()
                        .filter(|g| class_of.get(g.as_str()) == Some(&class))
                        .count();
                    (*v, gain)
                })
                .filter(|(_, gain)| *gain > 0)
                .collect();
            cands.sort_by(|(a, ga), (b, gb)| {
                a.priority
                    .cmp(&b.priority)
                    .then(a.progress_at_risk_s.total_cmp(&b.progress_at_risk_s))
                    .then(gb.cmp(ga))
            });
            let mut chosen = Vec::new();
            let mut total = free;
            for c in cands {
                if total >= need {
                    break;
                }
                total += c.1;
                chosen.push(c);
            }
            if total < need {
                continue;
            }
            // Drop victims that are not needed after all, costliest first.
            let mut i = chosen.len();
            while i > 0 {
                i -= 1;
                if total - chosen[i].1 >= need {
                    total -= chosen[i].1;
                    chosen.remove(i);
                }
            }
            let cost: Cost<'_> = (
                chosen.iter().map(|(v, _)| v.priority).max().unwrap_or(0),
                chosen.len(),
                chosen
                    .iter()
                    .map(|(v, _)| (v.progress_at_risk_s.max(0.0) * 1000.0).round() as i64)
                    .sum(),
                total - need,
                w.worker_id.as_str(),
            );
            if best.as_ref().is_none_or(|(b, _)| cost < *b) {
                let plan = PreemptionPlan {
                    worker_id: w.worker_id.clone(),
                    victims: chosen.iter().map(|(v, _)| v.id).collect(),
                    gpus_available: total as u32,
                };
                best = Some((cost, plan));
            }
        }
    }
    best.map(|(_, plan)| plan)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::placement::GpuInfo;
    use time::macros::datetime;

    const NOW: OffsetDateTime = datetime!(2026-11-23 12:00 UTC);

    /// A worker whose GPUs `gpu-0..n` are allocated for the first `allocated` of them.
    fn worker(id: &str, n: usize, allocated: usize) -> WorkerInfo {
        WorkerInfo {
            worker_id: id.into(),
            site: "s".into(),
            healthy: true,
            admission: Admission::Allow,
            gpus: (0..n)
                .map(|i| GpuInfo {
                    gpu_id: format!("{id}/gpu-{i}"),
                    model: "H100".into(),
                    memory_mib: 81920,
                    allocated: i < allocated,
                })
                .collect(),
            site_attributes: Default::default(),
            profitability: None,
        }
    }

    fn run(id: u32, worker: &str, gpus: &[usize], priority: u8, risk: f64) -> RunningWorkload<u32> {
        RunningWorkload {
            id,
            worker_id: worker.into(),
            gpu_ids: gpus.iter().map(|g| format!("{worker}/gpu-{g}")).collect(),
            priority,
            interruptible: true,
            progress_at_risk_s: risk,
            last_preempted_at: None,
            stopping: false,
        }
    }

    fn need(n: u32) -> PlacementRequest {
        PlacementRequest {
            gpu_count: n,
            gpu_type: Some("H100".into()),
            min_memory_mib: 0,
        }
    }

    fn choose(
        n: u32,
        workers: &[WorkerInfo],
        running: &[RunningWorkload<u32>],
    ) -> Option<PreemptionPlan<u32>> {
        choose_victims(
            &need(n),
            9,
            workers,
            running,
            NOW,
            &PreemptionPolicy::default(),
        )
    }

    #[test]
    fn the_lowest_priority_work_is_stopped_first() {
        let w = [worker("w", 2, 2)];
        let running = [run(1, "w", &[0], 4, 1.0), run(2, "w", &[1], 2, 100.0)];
        let plan = choose(1, &w, &running).unwrap();
        assert_eq!(plan.victims, vec![2]);
        assert_eq!(plan.worker_id, "w");
    }

    #[test]
    fn at_equal_priority_the_least_progress_lost_goes() {
        let w = [worker("w", 2, 2)];
        let running = [run(1, "w", &[0], 2, 30.0), run(2, "w", &[1], 2, 5.0)];
        assert_eq!(choose(1, &w, &running).unwrap().victims, vec![2]);
    }

    #[test]
    fn the_set_is_minimal_and_counts_the_free_gpus() {
        // 8 GPUs, 7 held by one-GPU jobs, 1 free: a 3-GPU request needs exactly two victims.
        let w = [worker("w", 8, 7)];
        let running: Vec<_> = (0..7)
            .map(|i| run(i, "w", &[i as usize], 1, f64::from(i)))
            .collect();
        let plan = choose(3, &w, &running).unwrap();
        assert_eq!(plan.victims, vec![0, 1]);
        assert_eq!(plan.gpus_available, 3);
    }

    #[test]
    fn a_big_victim_taken_early_makes_small_ones_unnecessary() {
        // Greedy takes the 1-GPU job (lowest priority) then the 4-GPU job; the 1-GPU job is
        // then not needed and is dropped.
        let w = [worker("w", 5, 5)];
        let running = [
            run(1, "w", &[0], 1, 0.0),
            run(2, "w", &[1, 2, 3, 4], 2, 0.0),
        ];
        let plan = choose(4, &w, &running).unwrap();
        assert_eq!(plan.victims, vec![2]);
    }

    #[test]
    fn protected_work_is_never_chosen() {
        let w = [worker("w", 4, 4)];
        let mut realtime = run(1, "w", &[0], 8, 0.0);
        realtime.interruptible = false;
        let same = run(2, "w", &[1], 9, 0.0);
        let mut cooling = run(3, "w", &[2], 1, 0.0);
        cooling.last_preempted_at = Some(NOW - Duration::minutes(1));
        let mut stopping = run(4, "w", &[3], 1, 0.0);
        stopping.stopping = true;
        assert_eq!(
            choose(1, &w, &[realtime, same, cooling.clone(), stopping]),
            None
        );
        // Once the cooldown is over it is fair game again.
        cooling.last_preempted_at = Some(NOW - Duration::minutes(6));
        assert_eq!(choose(1, &w, &[cooling]).unwrap().victims, vec![3]);
    }

    #[test]
    fn victims_must_all_be_on_one_worker() {
        let w = [worker("a", 2, 2), worker("b", 2, 2)];
        let running = [run(1, "a", &[0, 1], 1, 0.0), run(2, "b", &[0, 1], 1, 0.0)];
        assert_eq!(choose(3, &w, &running), None);
        let plan = choose(2, &w, &running).unwrap();
        assert_eq!((plan.worker_id.as_str(), plan.victims), ("a", vec![1]));
    }

    #[test]
    fn the_worker_needing_the_least_disruption_wins() {
        let w = [worker("a", 4, 4), worker("b", 4, 3)];
        let running = [
            run(1, "a", &[0, 1, 2, 3], 3, 0.0),
            run(2, "b", &[0], 3, 0.0),
            run(3, "b", &[1], 3, 0.0),
            run(4, "b", &[2], 5, 0.0),
        ];
        // Needing 2: on b one victim (+1 free) beats a's one victim of the same priority only
        // by freeing fewer GPUs beyond the need.
        let plan = choose(2, &w, &running).unwrap();
        assert_eq!((plan.worker_id.as_str(), plan.victims), ("b", vec![2]));
    }

    #[test]
    fn an_unschedulable_worker_is_not_considered() {
        let mut w = worker("w", 1, 1);
        w.admission = Admission::Deny;
        assert_eq!(choose(1, &[w], &[run(1, "w", &[0], 1, 0.0)]), None);
    }
}
