//! The free-GPU index ([`FreeIndex`]) and a pass over it ([`place_all`]).
//!
//! An index is built from the whole fleet once ([`FreeIndex::new`]) and can then be kept
//! between passes: its owner re-indexes only the workers that changed
//! ([`FreeIndex::update_worker`]) and starts each pass with [`FreeIndex::start_pass`]. A change
//! it cannot take in place (a worker, or a GPU class, it was not built with) is refused, and
//! the owner builds a new index. Kept or new, it holds the same free GPUs and makes the same
//! choices: nothing in a choice depends on the order in which workers or classes were indexed
//! (ties between classes on one worker go to the smaller first free GPU id).

use std::cmp::{Ordering, Reverse};
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::hash::{BuildHasherDefault, Hasher};

use super::{
    gpu_type_matches, GpuInfo, Placement, PlacementRequest, ScoreWeights, WorkerInfo,
    NEUTRAL_COST_PER_GPU_HOUR, NEUTRAL_LATENCY_MS, NEUTRAL_PROFITABILITY,
};
use crate::breaker::Admission;

const SCALE: f64 = 1e9;

/// Requested GPU types remembered at most (a kept index forgets them all beyond this, at the
/// start of a pass).
const MAX_TYPE_SLOTS: usize = 1_024;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
struct ClassId(u32);

/// Workers with the same free count of one class, best static score first.
type Bucket = BTreeSet<(Reverse<i64>, u32)>;

/// FNV-1a: the per-request lookups (type names, shapes) hash a few bytes each, where SipHash's
/// set-up cost dominates. Requested type names come from tenants, so the maps they key are
/// bounded (see [`MAX_TYPE_SLOTS`]): colliding names could at worst slow lookups in a map of
/// that size.
#[derive(Debug, Clone, Copy)]
struct Fnv(u64);

impl Default for Fnv {
    fn default() -> Self {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
}

impl Hasher for Fnv {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0 ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3);
        }
    }
}

type FastMap<K, V> = HashMap<K, V, BuildHasherDefault<Fnv>>;
type FastSet<K> = HashSet<K, BuildHasherDefault<Fnv>>;

#[derive(Debug)]
struct IndexedWorker {
    worker_id: String,
    /// Fixed-point static score (latency, cost, profitability).
    static_key: i64,
    /// Placements still allowed (`None`: unlimited; a probe allows one until re-indexed).
    placements_left: Option<u32>,
    /// Classes with free GPUs on this worker.
    classes: Vec<ClassId>,
}

/// Free GPUs of the schedulable workers, indexed for fast gang placement (see the module docs).
#[derive(Debug)]
pub struct FreeIndex {
    weights: ScoreWeights,
    /// Every worker it was built with, in worker id order (the index is the tie-break).
    workers: Vec<IndexedWorker>,
    positions: FastMap<String, u32>,
    classes: Vec<(String, u64)>,
    /// GPU ids by slot; a GPU keeps its slot when its worker is re-indexed.
    gpu_ids: Vec<String>,
    gpu_slots: FastMap<String, u32>,
    /// Free GPUs per (worker, class), sorted by GPU id.
    free: HashMap<(u32, ClassId), Vec<u32>>,
    /// Per class, per free count: workers by (static score desc, worker index).
    buckets: Vec<Vec<Bucket>>,
    class_free: Vec<usize>,
    total_free: usize,
    /// Requested type → classes of that type (interned; `u32::MAX` is "any type").
    type_slots: FastMap<String, u32>,
    slot_classes: Vec<Vec<ClassId>>,
    /// (type slot, min memory, gpu count) shapes that found nothing in this pass.
    exhausted: FastSet<(u32, u64, u32)>,
    /// The largest free count of one class on one worker: no bigger gang fits anywhere.
    max_gang: usize,
}

/// What an index holds, to compare a kept index with a new one (see [`FreeIndex::contents`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexContents {
    /// Per worker: its static score (fixed point), the placements it has left (`None`:
    /// unlimited) and its free GPUs, sorted.
    pub workers: BTreeMap<String, (i64, Option<u32>, Vec<String>)>,
    /// Free GPUs in all.
    pub total_free: usize,
    /// The largest free count of one class on one worker.
    pub max_gang: usize,
}

fn unit(v: f64) -> f64 {
    if v.is_finite() {
        v.clamp(0.0, 1.0)
    } else {
        0.5
    }
}

fn static_score(w: &WorkerInfo, weights: &ScoreWeights) -> f64 {
    let latency = w.site_attributes.latency_ms.map_or(0.5, |ms| {
        unit(NEUTRAL_LATENCY_MS / (NEUTRAL_LATENCY_MS + ms.max(0.0)))
    });
    let cost = w.site_attributes.cost_per_gpu_hour.map_or(0.5, |c| {
        unit(NEUTRAL_COST_PER_GPU_HOUR / (NEUTRAL_COST_PER_GPU_HOUR + c.max(0.0)))
    });
    let profit = unit(w.profitability.unwrap_or(NEUTRAL_PROFITABILITY));
    weights.latency * latency + weights.cost * cost + weights.profitability * profit
}

fn fixed(v: f64) -> i64 {
    (v * SCALE).round() as i64
}

fn schedulable(w: &WorkerInfo) -> bool {
    w.healthy && w.admission != Admission::Deny
}

impl FreeIndex {
    /// Indexes `workers`: the free GPUs of those healthy and not refused by their breaker.
    pub fn new(workers: &[WorkerInfo], weights: ScoreWeights) -> Self {
        let mut order: Vec<&WorkerInfo> = workers.iter().collect();
        order.sort_by(|a, b| a.worker_id.cmp(&b.worker_id));
        let mut index = Self {
            weights,
            workers: Vec::with_capacity(order.len()),
            positions: FastMap::default(),
            classes: Vec::new(),
            gpu_ids: Vec::new(),
            gpu_slots: FastMap::default(),
            free: HashMap::new(),
            buckets: Vec::new(),
            class_free: Vec::new(),
            total_free: 0,
            type_slots: FastMap::default(),
            slot_classes: Vec::new(),
            exhausted: FastSet::default(),
            max_gang: 0,
        };
        for w in order {
            let wi = index.workers.len() as u32;
            index.positions.insert(w.worker_id.clone(), wi);
            index.workers.push(IndexedWorker {
                worker_id: w.worker_id.clone(),
                static_key: 0,
                placements_left: None,
                classes: Vec::new(),
            });
            index.fill(wi, w);
        }
        index
    }

    /// Re-indexes one worker from `info` (health, admission, site attributes, and which of its
    /// GPUs are free), as [`FreeIndex::new`] would. Returns `false`, changing nothing, when the
    /// index cannot take it in place (a worker it was not built with, or a free GPU of a class
    /// it has not seen): build a new index then.
    pub fn update_worker(&mut self, info: &WorkerInfo) -> bool {
        let Some(&wi) = self.positions.get(&info.worker_id) else {
            return false;
        };
        if schedulable(info)
            && info
                .gpus
                .iter()
                .any(|g| !g.allocated && self.class_id(&g.model, g.memory_mib).is_none())
        {
            return false;
        }
        self.clear_worker(wi);
        self.fill(wi, info);
        true
    }

    /// Forgets what the previous pass learned (request shapes that found nothing). Call before
    /// each pass over a kept index.
    pub fn start_pass(&mut self) {
        self.exhausted.clear();
        if self.type_slots.len() > MAX_TYPE_SLOTS {
            self.type_slots.clear();
            self.slot_classes.clear();
        }
    }

    /// What the index holds (for checks that a kept index matches a new one).
    pub fn contents(&self) -> IndexContents {
        let workers = self
            .workers
            .iter()
            .enumerate()
            .map(|(wi, w)| {
                let mut gpus: Vec<String> = w
                    .classes
                    .iter()
                    .filter_map(|c| self.free.get(&(wi as u32, *c)))
                    .flatten()
                    .map(|g| self.gpu_ids[*g as usize].clone())
                    .collect();
                gpus.sort_unstable();
                (w.worker_id.clone(), (w.static_key, w.placements_left, gpus))
            })
            .collect();
        IndexContents {
            workers,
            total_free: self.total_free,
            max_gang: self.max_gang,
        }
    }

    fn class_id(&self, model: &str, memory_mib: u64) -> Option<ClassId> {
        self.classes
            .iter()
            .position(|(m, mem)| m == model && *mem == memory_mib)
            .map(|i| ClassId(i as u32))
    }

    fn class_of(&mut self, model: &str, memory_mib: u64) -> ClassId {
        if let Some(c) = self.class_id(model, memory_mib) {
            return c;
        }
        let c = ClassId(self.classes.len() as u32);
        self.classes.push((model.to_owned(), memory_mib));
        self.class_free.push(0);
        self.buckets.push(Vec::new());
        c
    }

    fn gpu_slot(&mut self, gpu_id: &str) -> u32 {
        if let Some(slot) = self.gpu_slots.get(gpu_id) {
            return *slot;
        }
        let slot = self.gpu_ids.len() as u32;
        self.gpu_ids.push(gpu_id.to_owned());
        self.gpu_slots.insert(gpu_id.to_owned(), slot);
        slot
    }

    /// Indexes worker `wi` (empty) from `w`.
    fn fill(&mut self, wi: u32, w: &WorkerInfo) {
        let static_key = fixed(static_score(w, &self.weights));
        let entry = &mut self.workers[wi as usize];
        entry.static_key = static_key;
        entry.placements_left = (w.admission == Admission::Probe).then_some(1);
        if !schedulable(w) {
            return;
        }
        let mut gpus: Vec<&GpuInfo> = w.gpus.iter().filter(|g| !g.allocated).collect();
        gpus.sort_by(|a, b| a.gpu_id.cmp(&b.gpu_id));
        let mut classes = Vec::new();
        for g in gpus {
            let c = self.class_of(&g.model, g.memory_mib);
            let gi = self.gpu_slot(&g.gpu_id);
            let list = self.free.entry((wi, c)).or_default();
            if list.is_empty() {
                classes.push(c);
            }
            list.push(gi);
            self.class_free[c.0 as usize] += 1;
            self.total_free += 1;
        }
        for c in &classes {
            let f = self.free.get(&(wi, *c)).map_or(0, Vec::len);
            self.bucket_insert(*c, f, static_key, wi);
            self.max_gang = self.max_gang.max(f);
        }
        self.workers[wi as usize].classes = classes;
    }

    /// Takes every free GPU of worker `wi` out of the index.
    fn clear_worker(&mut self, wi: u32) {
        let key = self.workers[wi as usize].static_key;
        let classes = std::mem::take(&mut self.workers[wi as usize].classes);
        for c in classes {
            let n = self.free.remove(&(wi, c)).map_or(0, |l| l.len());
            self.bucket_remove(c, n, key, wi);
            self.class_free[c.0 as usize] -= n;
            self.total_free -= n;
        }
        self.shrink_max_gang();
    }

    fn bucket_insert(&mut self, c: ClassId, f: usize, key: i64, w: u32) {
        if f == 0 {
            return;
        }
        let b = &mut self.buckets[c.0 as usize];
        if b.len() <= f {
            b.resize_with(f + 1, BTreeSet::new);
        }
        b[f].insert((Reverse(key), w));
    }

    /// Lowers `max_gang` past free counts no worker has any more.
    fn shrink_max_gang(&mut self) {
        while self.max_gang > 0
            && !self
                .buckets
                .iter()
                .any(|b| b.get(self.max_gang).is_some_and(|set| !set.is_empty()))
        {
            self.max_gang -= 1;
        }
    }

    fn bucket_remove(&mut self, c: ClassId, f: usize, key: i64, w: u32) {
        if let Some(set) = self.buckets[c.0 as usize].get_mut(f) {
            set.remove(&(Reverse(key), w));
        }
    }

    /// Free GPUs left in the index.
    pub fn total_free(&self) -> usize {
        self.total_free
    }

    /// Whether nothing is free any more (a pass can stop).
    pub fn is_exhausted(&self) -> bool {
        self.total_free == 0
    }

    fn type_slot(&mut self, wanted: Option<&str>) -> u32 {
        let Some(wanted) = wanted else {
            return u32::MAX;
        };
        if let Some(slot) = self.type_slots.get(wanted) {
            return *slot;
        }
        let slot = self.slot_classes.len() as u32;
        let classes = self
            .classes
            .iter()
            .enumerate()
            .filter(|(_, (model, _))| gpu_type_matches(model, Some(wanted)))
            .map(|(i, _)| ClassId(i as u32))
            .collect();
        self.slot_classes.push(classes);
        self.type_slots.insert(wanted.to_owned(), slot);
        slot
    }

    /// The first free GPU id of `c` on worker `w` (the last tie-break between classes).
    fn first_gpu(&self, w: u32, c: ClassId) -> Option<&str> {
        let g = self.free.get(&(w, c))?.first()?;
        Some(self.gpu_ids[*g as usize].as_str())
    }

    /// Places `req` on the best worker and removes its GPUs from the index, or returns `None`
    /// when nothing free fits now.
    pub fn place(&mut self, req: &PlacementRequest) -> Option<Placement> {
        let k = req.gpu_count as usize;
        if k == 0 || self.total_free < k || k > self.max_gang {
            return None;
        }
        let slot = self.type_slot(req.gpu_type.as_deref());
        let shape = (slot, req.min_memory_mib, req.gpu_count);
        if self.exhausted.contains(&shape) {
            return None;
        }
        // (score, fit, worker, class); better = higher score, then tighter fit, then smaller
        // worker index (= worker id order), then the smaller first free GPU id.
        let mut best: Option<(i64, usize, u32, ClassId)> = None;
        let all: Vec<ClassId>;
        let candidates: &[ClassId] = if slot == u32::MAX {
            all = (0..self.classes.len() as u32).map(ClassId).collect();
            &all
        } else {
            &self.slot_classes[slot as usize]
        };
        for &c in candidates {
            let ci = c.0 as usize;
            if self.classes[ci].1 < req.min_memory_mib || self.class_free[ci] < k {
                continue;
            }
            for (f, set) in self.buckets[ci].iter().enumerate().skip(k) {
                let Some(&(Reverse(s), w)) = set.first() else {
                    continue;
                };
                let score = s + fixed(self.weights.packing * k as f64 / f as f64);
                let better = match best {
                    None => true,
                    Some((bs, bf, bw, bc)) => {
                        match (Reverse(score), f, w).cmp(&(Reverse(bs), bf, bw)) {
                            Ordering::Less => true,
                            Ordering::Greater => false,
                            Ordering::Equal => self.first_gpu(w, c) < self.first_gpu(bw, bc),
                        }
                    }
                };
                if better {
                    best = Some((score, f, w, c));
                }
            }
        }
        let Some((score, f, w, c)) = best else {
            self.exhausted.insert(shape);
            return None;
        };
        let key = self.workers[w as usize].static_key;
        let list = self.free.get_mut(&(w, c))?;
        if list.len() < k {
            return None;
        }
        let taken: Vec<u32> = list.drain(..k).collect();
        let left = list.len();
        if left == 0 {
            self.free.remove(&(w, c));
            self.workers[w as usize].classes.retain(|x| *x != c);
        }
        self.bucket_remove(c, f, key, w);
        self.bucket_insert(c, left, key, w);
        self.class_free[c.0 as usize] -= k;
        self.total_free -= k;
        if f == self.max_gang {
            self.shrink_max_gang();
        }
        let probe_used = match self.workers[w as usize].placements_left.as_mut() {
            Some(n) => {
                *n = n.saturating_sub(1);
                *n == 0
            }
            None => false,
        };
        if probe_used {
            self.clear_worker(w);
        }
        Some(Placement {
            worker_id: self.workers[w as usize].worker_id.clone(),
            gpu_ids: taken
                .into_iter()
                .map(|g| self.gpu_ids[g as usize].clone())
                .collect(),
            score: score as f64 / SCALE,
        })
    }
}

/// The result of [`place_all`].
#[derive(Debug, Clone, PartialEq)]
pub struct PassOutcome<K> {
    /// What was placed, in pass order.
    pub placed: Vec<(K, Placement)>,
    /// Items looked at before the pass stopped.
    pub considered: usize,
}

/// Places `items` in the order given (the queue's drain order), skipping what does not fit
/// now, until the items or the free GPUs run out.
pub fn place_all<'a, K>(
    index: &mut FreeIndex,
    items: impl IntoIterator<Item = (K, &'a PlacementRequest)>,
) -> PassOutcome<K> {
    let mut out = PassOutcome {
        placed: Vec::new(),
        considered: 0,
    };
    for (id, req) in items {
        if index.is_exhausted() {
            break;
        }
        out.considered += 1;
        if let Some(p) = index.place(req) {
            out.placed.push((id, p));
        }
    }
    out
}

#[cfg(test)]
mod tests;
