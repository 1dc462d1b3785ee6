//! A kept index, re-indexed worker by worker, against one built new from the same fleet.

use super::*;
use crate::placement::SiteAttributes;

/// A small deterministic generator (xorshift64*), so a failure replays.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

const CLASSES: [(&str, u64); 3] = [("H100", 81920), ("A100", 40960), ("A100", 81920)];

fn fleet(rng: &mut Rng, workers: usize) -> Vec<WorkerInfo> {
    (0..workers)
        .map(|i| {
            // Each worker has one or two classes, so ties between classes on a worker occur.
            let first = CLASSES[rng.below(3) as usize];
            let second = CLASSES[rng.below(3) as usize];
            let n = 2 + rng.below(7) as usize;
            WorkerInfo {
                worker_id: format!("w{i:03}"),
                site: "s".into(),
                healthy: true,
                admission: Admission::Allow,
                gpus: (0..n)
                    .map(|g| {
                        let (model, memory_mib) = if g % 2 == 0 { first } else { second };
                        GpuInfo {
                            gpu_id: format!("w{i:03}/gpu-{g}"),
                            model: model.into(),
                            memory_mib,
                            allocated: false,
                        }
                    })
                    .collect(),
                site_attributes: SiteAttributes {
                    latency_ms: Some([5.0, 20.0][rng.below(2) as usize]),
                    cost_per_gpu_hour: None,
                },
                profitability: None,
            }
        })
        .collect()
}

fn request(rng: &mut Rng) -> PlacementRequest {
    PlacementRequest {
        gpu_count: 1 + rng.below(4) as u32,
        gpu_type: [None, Some("A100".to_owned()), Some("h100".to_owned())][rng.below(3) as usize]
            .clone(),
        min_memory_mib: [0, 81920][rng.below(2) as usize],
    }
}

/// Marks what `placed` took as allocated in `fleet` (as the router's proposals would).
fn allocate(fleet: &mut [WorkerInfo], placed: &[Placement]) {
    for p in placed {
        let w = fleet
            .iter_mut()
            .find(|w| w.worker_id == p.worker_id)
            .unwrap();
        for g in &mut w.gpus {
            g.allocated |= p.gpu_ids.contains(&g.gpu_id);
        }
    }
}

#[test]
fn a_kept_index_updated_worker_by_worker_places_as_a_new_one_would() {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut fleet = fleet(&mut rng, 40);
    let mut kept = FreeIndex::new(&fleet, ScoreWeights::default());
    for round in 0..300 {
        // Change a few workers: free or take GPUs, health, breaker, site latency.
        let mut changed = Vec::new();
        for _ in 0..1 + rng.below(4) {
            let i = rng.below(fleet.len() as u64) as usize;
            let w = &mut fleet[i];
            match rng.below(5) {
                0 => w.healthy = !w.healthy,
                1 => {
                    w.admission =
                        [Admission::Allow, Admission::Deny, Admission::Probe][rng.below(3) as usize]
                }
                2 => w.site_attributes.latency_ms = Some(rng.below(100) as f64),
                _ => {
                    for g in &mut w.gpus {
                        if rng.below(3) == 0 {
                            g.allocated = !g.allocated;
                        }
                    }
                }
            }
            changed.push(i);
        }
        for i in changed {
            assert!(kept.update_worker(&fleet[i]), "round {round}: refused");
        }
        kept.start_pass();
        let mut fresh = FreeIndex::new(&fleet, ScoreWeights::default());
        assert_eq!(
            kept.contents(),
            fresh.contents(),
            "round {round}: contents differ"
        );
        let requests: Vec<PlacementRequest> = (0..6).map(|_| request(&mut rng)).collect();
        let a = place_all(&mut kept, requests.iter().enumerate());
        let b = place_all(&mut fresh, requests.iter().enumerate());
        assert_eq!(a, b, "round {round}: choices differ");
        // What the pass placed is promised now; its workers are re-indexed from that.
        allocate(
            &mut fleet,
            &a.placed.iter().map(|(_, p)| p.clone()).collect::<Vec<_>>(),
        );
        for (_, p) in &a.placed {
            let i = fleet
                .iter()
                .position(|w| w.worker_id == p.worker_id)
                .unwrap();
            assert!(kept.update_worker(&fleet[i]));
        }
        // Every so often, free everything a pass took (runs ending).
        if round % 25 == 24 {
            for w in &mut fleet {
                w.gpus.iter_mut().for_each(|g| g.allocated = false);
            }
            for w in &fleet {
                assert!(kept.update_worker(w));
            }
        }
    }
}

#[test]
fn a_worker_or_class_the_index_was_not_built_with_is_refused_and_nothing_changes() {
    let mut rng = Rng(7);
    let fleet = fleet(&mut rng, 3);
    let mut index = FreeIndex::new(&fleet, ScoreWeights::default());
    let before = index.contents();

    let mut stranger = fleet[0].clone();
    stranger.worker_id = "w999".into();
    assert!(!index.update_worker(&stranger));

    let mut new_class = fleet[1].clone();
    new_class.gpus[0].model = "B200".into();
    new_class.gpus[1].allocated = true;
    assert!(!index.update_worker(&new_class));
    assert_eq!(index.contents(), before);

    // A new class on GPUs that are all allocated is no obstacle: nothing of it is indexed.
    let mut busy = fleet[2].clone();
    for g in &mut busy.gpus {
        g.model = "B200".into();
        g.allocated = true;
    }
    assert!(index.update_worker(&busy));
    assert!(index.contents().workers["w002"].2.is_empty());
}

#[test]
fn a_probe_allows_one_placement_until_the_worker_is_indexed_again() {
    let mut rng = Rng(11);
    let mut fleet = fleet(&mut rng, 1);
    fleet[0].admission = Admission::Probe;
    let mut index = FreeIndex::new(&fleet, ScoreWeights::default());
    let one = PlacementRequest {
        gpu_count: 1,
        gpu_type: None,
        min_memory_mib: 0,
    };
    assert!(index.place(&one).is_some());
    assert!(index.place(&one).is_none(), "the probe is used up");
    assert!(index.update_worker(&fleet[0]));
    index.start_pass();
    assert!(index.place(&one).is_some(), "a new pass, a new probe");
}

#[test]
fn requested_type_names_are_forgotten_beyond_a_bound() {
    let mut rng = Rng(3);
    let fleet = fleet(&mut rng, 2);
    let mut index = FreeIndex::new(&fleet, ScoreWeights::default());
    // Tenants name the types: a kept index must not remember every name it was ever asked.
    for i in 0..=MAX_TYPE_SLOTS {
        let unknown = PlacementRequest {
            gpu_count: 1,
            gpu_type: Some(format!("type-{i}")),
            min_memory_mib: 0,
        };
        assert!(index.place(&unknown).is_none());
    }
    assert_eq!(index.type_slots.len(), MAX_TYPE_SLOTS + 1);
    index.start_pass();
    assert!(index.type_slots.is_empty() && index.slot_classes.is_empty());
    let a100 = PlacementRequest {
        gpu_count: 1,
        gpu_type: Some("a100".into()),
        min_memory_mib: 0,
    };
    let any = PlacementRequest {
        gpu_type: None,
        ..a100.clone()
    };
    let placed = index.place(&a100).or_else(|| index.place(&any));
    assert!(placed.is_some(), "the index still places after forgetting");
}
