//! Gang placement: all of a workload's GPUs on ONE worker, of one model and one memory size
//! (a *GPU class*), chosen by score.
//!
//! - [`feasible_ever`] ignores allocation and health: could any worker of the fleet ever hold
//!   this request? When not, the reason names the request and the fleet's best match.
//! - [`FreeIndex`] holds the free GPUs of the schedulable workers, indexed per class by each
//!   worker's free count, so that [`FreeIndex::place`] finds the best worker in
//!   O(classes × GPUs-per-worker × log workers) instead of scanning the fleet. Within a pass a
//!   GPU is handed out once; a request shape that failed once is not retried in the same pass
//!   (free capacity only shrinks), and the pass stops as soon as nothing is free.
//!
//! **Score** (higher is better) = `w_latency · latency + w_cost · cost + w_packing · packing +
//! w_profit · profitability`, each term in [0, 1]:
//! latency `50 / (50 + site latency ms)`, cost `2 / (2 + $ per GPU-hour)` (unknown values are
//! neutral: 0.5), packing `gpus requested / matching GPUs free on the worker` (best fit keeps
//! whole nodes free for big gangs), profitability as given (0.5 until the optimizer sets it).
//! Scores are compared as fixed-point integers, so ties are exact; ties go to the tighter fit,
//! then to the smaller worker id, then to the smaller GPU ids: deterministic.

use std::cmp::Reverse;
use std::collections::HashMap;
use std::fmt::Write as _;

use crate::breaker::Admission;

mod index;

pub use index::{place_all, FreeIndex, IndexContents, PassOutcome};

/// Latency (ms) that scores 0.5.
pub const NEUTRAL_LATENCY_MS: f64 = 50.0;
/// Cost ($ per GPU-hour) that scores 0.5.
pub const NEUTRAL_COST_PER_GPU_HOUR: f64 = 2.0;
/// Profitability until the optimizer provides one.
pub const NEUTRAL_PROFITABILITY: f64 = 0.5;

/// One GPU of a worker.
#[derive(Debug, Clone, PartialEq)]
pub struct GpuInfo {
    /// Fleet-unique id.
    pub gpu_id: String,
    /// Model, e.g. `H100` or `NVIDIA H100 80GB HBM3`.
    pub model: String,
    /// Memory, MiB.
    pub memory_mib: u64,
    /// Whether it is held (or promised) already.
    pub allocated: bool,
}

/// Per-site attributes; `None` is neutral.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct SiteAttributes {
    /// Network latency to the site's users, ms.
    pub latency_ms: Option<f64>,
    /// GPU cost, $ per GPU-hour.
    pub cost_per_gpu_hour: Option<f64>,
}

/// A worker as the scheduler sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct WorkerInfo {
    /// Worker id.
    pub worker_id: String,
    /// Site it runs in.
    pub site: String,
    /// Heartbeating (not lost).
    pub healthy: bool,
    /// What its circuit breaker allows.
    pub admission: Admission,
    /// Its GPUs.
    pub gpus: Vec<GpuInfo>,
    /// Site latency and cost.
    pub site_attributes: SiteAttributes,
    /// Profitability in [0, 1] from the optimizer, if any.
    pub profitability: Option<f64>,
}

/// What a workload needs.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PlacementRequest {
    /// GPUs, all on one worker.
    pub gpu_count: u32,
    /// Required GPU model (matched case-insensitively as a substring of the GPU's model, so
    /// `H100` matches `NVIDIA H100 80GB HBM3`).
    pub gpu_type: Option<String>,
    /// Minimum memory per GPU, MiB (0: any).
    pub min_memory_mib: u64,
}

impl PlacementRequest {
    /// Whether a GPU of `model` with `memory_mib` can serve this request.
    pub fn accepts(&self, model: &str, memory_mib: u64) -> bool {
        memory_mib >= self.min_memory_mib && gpu_type_matches(model, self.gpu_type.as_deref())
    }
}

impl std::fmt::Display for PlacementRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} GPU", self.gpu_count)?;
        if self.gpu_count != 1 {
            f.write_str("s")?;
        }
        if let Some(t) = &self.gpu_type {
            write!(f, " of type {t}")?;
        }
        if self.min_memory_mib > 0 {
            write!(f, " with >= {} each", mem(self.min_memory_mib))?;
        }
        Ok(())
    }
}

/// Memory for humans: GiB when whole, MiB otherwise.
fn mem(mib: u64) -> String {
    if mib.is_multiple_of(1024) {
        format!("{} GiB", mib / 1024)
    } else {
        format!("{mib} MiB")
    }
}

/// Whether a GPU model satisfies a requested type (case-insensitive substring; `None`: any).
pub fn gpu_type_matches(model: &str, wanted: Option<&str>) -> bool {
    match wanted {
        None => true,
        Some(w) => model.to_ascii_lowercase().contains(&w.to_ascii_lowercase()),
    }
}

/// Score weights.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ScoreWeights {
    /// Site latency.
    pub latency: f64,
    /// Site cost.
    pub cost: f64,
    /// Packing (best fit).
    pub packing: f64,
    /// Profitability.
    pub profitability: f64,
}

impl Default for ScoreWeights {
    fn default() -> Self {
        Self {
            latency: 0.25,
            cost: 0.25,
            packing: 0.25,
            profitability: 0.25,
        }
    }
}

/// A chosen placement.
#[derive(Debug, Clone, PartialEq)]
pub struct Placement {
    /// The worker.
    pub worker_id: String,
    /// Its GPUs (gang: all or none).
    pub gpu_ids: Vec<String>,
    /// Score; higher is better.
    pub score: f64,
}

/// The largest gang of one GPU class that one worker can hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClassCapacity {
    /// GPU model.
    pub model: String,
    /// Memory per GPU, MiB.
    pub memory_mib: u64,
    /// GPUs of this class on the biggest worker.
    pub largest_gang: u32,
    /// That worker.
    pub worker_id: String,
}

/// What the fleet could ever hold, per GPU class (health and allocation ignored).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FleetShape {
    classes: Vec<ClassCapacity>,
}

impl FleetShape {
    /// Builds the shape from per-worker class counts, keeping the largest per class (ties: the
    /// smaller worker id).
    pub fn from_classes(entries: impl IntoIterator<Item = ClassCapacity>) -> Self {
        let mut best: HashMap<(String, u64), ClassCapacity> = HashMap::new();
        for c in entries {
            let key = (c.model.clone(), c.memory_mib);
            match best.get_mut(&key) {
                Some(b)
                    if (c.largest_gang, Reverse(&c.worker_id))
                        > (b.largest_gang, Reverse(&b.worker_id)) =>
                {
                    *b = c
                }
                Some(_) => {}
                None => {
                    best.insert(key, c);
                }
            }
        }
        let mut classes: Vec<ClassCapacity> = best.into_values().collect();
        classes.sort_by(|a, b| (&a.model, a.memory_mib).cmp(&(&b.model, b.memory_mib)));
        Self { classes }
    }

    /// Builds the shape from full worker descriptions.
    pub fn from_workers(workers: &[WorkerInfo]) -> Self {
        let mut counts: HashMap<(&str, &str, u64), u32> = HashMap::new();
        for w in workers {
            for g in &w.gpus {
                *counts
                    .entry((&w.worker_id, &g.model, g.memory_mib))
                    .or_default() += 1;
            }
        }
        Self::from_classes(counts.into_iter().map(|((worker, model, memory_mib), n)| {
            ClassCapacity {
                model: model.to_owned(),
                memory_mib,
                largest_gang: n,
                worker_id: worker.to_owned(),
            }
        }))
    }

    /// No GPUs known at all.
    pub fn is_empty(&self) -> bool {
        self.classes.is_empty()
    }

    /// The classes, sorted by model and memory.
    pub fn classes(&self) -> &[ClassCapacity] {
        &self.classes
    }
}

/// Why a request can never be placed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Infeasible(pub String);

fn describe_class(c: &ClassCapacity) -> String {
    format!(
        "{} x {} ({}) on worker {}",
        c.largest_gang,
        c.model,
        mem(c.memory_mib),
        c.worker_id
    )
}

/// Whether any worker of the fleet could ever hold `req`, ignoring allocation and health. An
/// empty fleet proves nothing and passes (the fleet may be starting).
pub fn feasible_ever(req: &PlacementRequest, fleet: &FleetShape) -> Result<(), Infeasible> {
    if fleet.is_empty() {
        return Ok(());
    }
    let typed: Vec<&ClassCapacity> = fleet
        .classes
        .iter()
        .filter(|c| gpu_type_matches(&c.model, req.gpu_type.as_deref()))
        .collect();
    if typed.is_empty() {
        let mut listed = String::new();
        for (i, c) in fleet.classes.iter().take(5).enumerate() {
            if i > 0 {
                listed.push_str(", ");
            }
            listed.push_str(&describe_class(c));
        }
        if fleet.classes.len() > 5 {
            let _ = write!(listed, " and {} more", fleet.classes.len() - 5);
        }
        return Err(Infeasible(format!(
            "requested {req}, but no GPU in the fleet is of that type; the fleet has {listed}"
        )));
    }
    let fits: Vec<&&ClassCapacity> = typed
        .iter()
        .filter(|c| c.memory_mib >= req.min_memory_mib)
        .collect();
    let Some(best) = fits
        .iter()
        .max_by(|a, b| {
            (a.largest_gang, a.memory_mib, Reverse(&a.model)).cmp(&(
                b.largest_gang,
                b.memory_mib,
                Reverse(&b.model),
            ))
        })
        .copied()
    else {
        let biggest = typed
            .iter()
            .max_by_key(|c| (c.memory_mib, c.largest_gang))
            .copied();
        let best = biggest.map(describe_class).unwrap_or_default();
        return Err(Infeasible(format!(
            "requested {req}, but the fleet's largest matching GPU is {best}"
        )));
    };
    if best.largest_gang >= req.gpu_count {
        Ok(())
    } else {
        Err(Infeasible(format!(
            "requested {req} on one worker, but the fleet's best match is {}",
            describe_class(best)
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    pub(crate) fn worker(id: &str, model: &str, n: usize, memory_gib: u64) -> WorkerInfo {
        WorkerInfo {
            worker_id: id.into(),
            site: "site-a".into(),
            healthy: true,
            admission: Admission::Allow,
            gpus: (0..n)
                .map(|i| GpuInfo {
                    gpu_id: format!("{id}/gpu-{i}"),
                    model: model.into(),
                    memory_mib: memory_gib * 1024,
                    allocated: false,
                })
                .collect(),
            site_attributes: SiteAttributes::default(),
            profitability: None,
        }
    }

    fn req(n: u32, ty: Option<&str>, gib: u64) -> PlacementRequest {
        PlacementRequest {
            gpu_count: n,
            gpu_type: ty.map(str::to_owned),
            min_memory_mib: gib * 1024,
        }
    }

    #[test]
    fn a_gang_lands_on_one_worker_with_enough_free_gpus() {
        let mut w1 = worker("w1", "H100", 8, 80);
        for g in w1.gpus.iter_mut().take(6) {
            g.allocated = true;
        }
        let w2 = worker("w2", "H100", 8, 80);
        let mut idx = FreeIndex::new(&[w1, w2], ScoreWeights::default());
        let p = idx.place(&req(4, Some("H100"), 0)).unwrap();
        assert_eq!(p.worker_id, "w2");
        assert_eq!(
            p.gpu_ids,
            vec!["w2/gpu-0", "w2/gpu-1", "w2/gpu-2", "w2/gpu-3"]
        );
        // The two free GPUs on w1 are a tighter fit for a pair.
        let p = idx.place(&req(2, None, 0)).unwrap();
        assert_eq!(p.worker_id, "w1");
        assert_eq!(p.gpu_ids, vec!["w1/gpu-6", "w1/gpu-7"]);
        assert_eq!(idx.total_free(), 4);
    }

    #[test]
    fn no_gpu_is_given_twice_in_a_pass() {
        let mut idx = FreeIndex::new(&[worker("w1", "A100", 4, 40)], ScoreWeights::default());
        let mut seen = HashSet::new();
        for _ in 0..4 {
            let p = idx.place(&req(1, Some("a100"), 0)).unwrap();
            assert!(seen.insert(p.gpu_ids[0].clone()));
        }
        assert!(idx.place(&req(1, None, 0)).is_none());
        assert!(idx.is_exhausted());
    }

    #[test]
    fn type_and_memory_constraints_are_honoured() {
        let workers = [
            worker("a", "A100", 8, 40),
            worker("b", "NVIDIA H100 80GB HBM3", 8, 80),
        ];
        let mut idx = FreeIndex::new(&workers, ScoreWeights::default());
        assert_eq!(idx.place(&req(1, Some("h100"), 0)).unwrap().worker_id, "b");
        assert_eq!(idx.place(&req(1, None, 64)).unwrap().worker_id, "b");
        assert!(idx.place(&req(1, Some("A100"), 64)).is_none());
        assert!(idx.place(&req(1, Some("B200"), 0)).is_none());
    }

    #[test]
    fn unhealthy_and_open_breaker_workers_get_nothing_and_a_probe_gets_one() {
        let mut sick = worker("a", "H100", 8, 80);
        sick.healthy = false;
        let mut open = worker("b", "H100", 8, 80);
        open.admission = Admission::Deny;
        let mut probing = worker("c", "H100", 8, 80);
        probing.admission = Admission::Probe;
        let mut idx = FreeIndex::new(&[sick, open, probing], ScoreWeights::default());
        assert_eq!(idx.total_free(), 8);
        assert_eq!(idx.place(&req(1, None, 0)).unwrap().worker_id, "c");
        assert!(idx.place(&req(1, None, 0)).is_none());
        assert!(idx.is_exhausted());
    }

    #[test]
    fn cheaper_faster_and_more_profitable_sites_win() {
        let mut far = worker("a", "H100", 8, 80);
        far.site_attributes.latency_ms = Some(200.0);
        let near = worker("b", "H100", 8, 80);
        let mut idx = FreeIndex::new(&[far.clone(), near.clone()], ScoreWeights::default());
        assert_eq!(idx.place(&req(1, None, 0)).unwrap().worker_id, "b");

        let mut dear = near.clone();
        dear.site_attributes.cost_per_gpu_hour = Some(10.0);
        let mut idx = FreeIndex::new(&[dear, worker("c", "H100", 8, 80)], Default::default());
        assert_eq!(idx.place(&req(1, None, 0)).unwrap().worker_id, "c");

        let mut rich = worker("z", "H100", 8, 80);
        rich.profitability = Some(0.9);
        let mut idx = FreeIndex::new(&[near, rich], Default::default());
        assert_eq!(idx.place(&req(1, None, 0)).unwrap().worker_id, "z");
    }

    #[test]
    fn equal_scores_break_ties_by_worker_id() {
        let mut idx = FreeIndex::new(
            &[worker("w9", "H100", 8, 80), worker("w1", "H100", 8, 80)],
            ScoreWeights::default(),
        );
        let p = idx.place(&req(8, None, 0)).unwrap();
        assert_eq!(p.worker_id, "w1");
        assert!((p.score - 0.625).abs() < 1e-9, "{}", p.score);
    }

    #[test]
    fn a_gang_larger_than_any_free_block_is_refused_while_smaller_ones_still_fit() {
        let mut a = worker("a", "H100", 4, 80);
        a.gpus[0].allocated = true;
        let b = worker("b", "H100", 2, 80);
        let mut idx = FreeIndex::new(&[a, b], ScoreWeights::default());
        assert_eq!(idx.place(&req(3, None, 0)).unwrap().worker_id, "a");
        // Now the largest free block is b's two GPUs.
        assert!(idx.place(&req(3, None, 0)).is_none());
        assert_eq!(idx.place(&req(2, None, 0)).unwrap().worker_id, "b");
        assert!(idx.place(&req(2, None, 0)).is_none());
        assert!(idx.place(&req(1, None, 0)).is_none());
        assert!(idx.is_exhausted());
    }

    #[test]
    fn a_pass_places_in_order_skips_what_does_not_fit_and_stops_when_full() {
        let mut idx = FreeIndex::new(&[worker("w", "H100", 4, 80)], ScoreWeights::default());
        let big = req(8, None, 0);
        let one = req(1, None, 0);
        let three = req(3, None, 0);
        let items = vec![(1, &big), (2, &three), (3, &three), (4, &one), (5, &one)];
        let out = place_all(&mut idx, items);
        let placed: Vec<i32> = out.placed.iter().map(|(id, _)| *id).collect();
        assert_eq!(placed, vec![2, 4]);
        assert_eq!(out.considered, 4, "stops once nothing is free");
    }

    #[test]
    fn feasibility_names_the_request_and_the_fleets_best_match() {
        let fleet = FleetShape::from_workers(&[
            worker("w1", "H100", 8, 80),
            worker("w2", "H100", 4, 80),
            worker("w3", "A100", 8, 40),
        ]);
        assert_eq!(feasible_ever(&req(8, Some("H100"), 80), &fleet), Ok(()));
        let err = feasible_ever(&req(16, Some("H100"), 0), &fleet).unwrap_err();
        assert_eq!(
            err.0,
            "requested 16 GPUs of type H100 on one worker, but the fleet's best match is \
             8 x H100 (80 GiB) on worker w1"
        );
        let err = feasible_ever(&req(1, Some("B200"), 0), &fleet).unwrap_err();
        assert!(
            err.0.contains("no GPU in the fleet is of that type"),
            "{err}"
        );
        assert!(err.0.contains("8 x H100 (80 GiB) on worker w1"), "{err}");
        let err = feasible_ever(&req(1, Some("A100"), 80), &fleet).unwrap_err();
        assert!(err
            .0
            .contains("requested 1 GPU of type A100 with >= 80 GiB each"));
        assert!(err.0.contains("8 x A100 (40 GiB) on worker w3"), "{err}");
    }

    #[test]
    fn feasibility_ignores_allocation_and_health_and_an_empty_fleet_passes() {
        let mut w = worker("w1", "H100", 8, 80);
        w.healthy = false;
        for g in &mut w.gpus {
            g.allocated = true;
        }
        let fleet = FleetShape::from_workers(&[w]);
        assert_eq!(feasible_ever(&req(8, None, 0), &fleet), Ok(()));
        assert_eq!(
            feasible_ever(&req(64, None, 0), &FleetShape::default()),
            Ok(())
        );
    }

    #[test]
    fn a_gang_never_mixes_gpu_classes() {
        let mut w = worker("w", "H100", 2, 80);
        w.gpus
            .extend(worker("w", "H100", 2, 94).gpus.into_iter().map(|mut g| {
                g.gpu_id.push('b');
                g
            }));
        let mut idx = FreeIndex::new(&[w.clone()], ScoreWeights::default());
        assert!(idx.place(&req(3, None, 0)).is_none());
        let p = idx.place(&req(2, None, 90)).unwrap();
        assert!(p.gpu_ids.iter().all(|g| g.ends_with('b')), "{p:?}");
        assert!(feasible_ever(&req(3, None, 0), &FleetShape::from_workers(&[w])).is_err());
    }
}
