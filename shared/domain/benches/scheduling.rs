//! Scheduling hot paths at fleet scale: the priority queue at one million entries, and one full
//! placement pass over 300k queued workloads and 10k GPUs.
//!
//! `cargo bench -p hcp-domain`.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use hcp_domain::breaker::Admission;
use hcp_domain::placement::{
    place_all, FreeIndex, GpuInfo, PlacementRequest, ScoreWeights, SiteAttributes, WorkerInfo,
};
use hcp_domain::queue::FairQueue;

/// A small deterministic generator (no dependency, same data every run).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

const TENANTS: u64 = 500;

fn tenant_names() -> Vec<String> {
    (0..TENANTS).map(|t| format!("tenant-{t}")).collect()
}

fn filled_queue(n: u64, rng: &mut Rng, tenants: &[String]) -> FairQueue<u64> {
    let mut q = FairQueue::new();
    for id in 0..n {
        let p = rng.below(10) as u8 + 1;
        q.push(id, p, &tenants[rng.below(TENANTS) as usize])
            .unwrap();
    }
    q
}

fn queue_benches(c: &mut Criterion) {
    let tenants = tenant_names();
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut q = filled_queue(1_000_000, &mut rng, &tenants);
    let mut next_id = 1_000_000u64;
    let mut g = c.benchmark_group("queue_at_1m");
    g.bench_function("enqueue_then_dequeue", |b| {
        b.iter(|| {
            let p = rng.below(10) as u8 + 1;
            q.push(next_id, p, &tenants[rng.below(TENANTS) as usize])
                .unwrap();
            next_id += 1;
            black_box(q.pop())
        })
    });
    g.bench_function("remove_by_id_then_enqueue", |b| {
        b.iter(|| {
            // Ids below next_id - len may have been popped; probe until one is present.
            let id = loop {
                let id = next_id - 1 - rng.below(1_000_000);
                if q.contains(&id) {
                    break id;
                }
            };
            let p = q.priority_of(&id).unwrap();
            assert!(q.remove(&id));
            q.push(id, p, &tenants[(id % TENANTS) as usize]).unwrap();
        })
    });
    g.sample_size(10);
    g.bench_function("drain_order_full_walk", |b| {
        b.iter(|| black_box(q.drain_order().count()))
    });
    g.finish();
    assert_eq!(q.len(), 1_000_000);
}

fn fleet(workers: usize, gpus_per_worker: usize, rng: &mut Rng) -> Vec<WorkerInfo> {
    let models = [("H100", 80), ("A100", 40), ("L40S", 48)];
    (0..workers)
        .map(|w| {
            let (model, gib) = models[w % models.len()];
            let id = format!("worker-{w:05}");
            WorkerInfo {
                gpus: (0..gpus_per_worker)
                    .map(|g| GpuInfo {
                        gpu_id: format!("{id}/gpu-{g}"),
                        model: model.into(),
                        memory_mib: gib * 1024,
                        // Roughly half the fleet is busy.
                        allocated: rng.below(2) == 0,
                    })
                    .collect(),
                worker_id: id,
                site: format!("site-{}", w % 7),
                healthy: rng.below(50) != 0,
                admission: Admission::Allow,
                site_attributes: SiteAttributes {
                    latency_ms: Some(5.0 + (w % 7) as f64 * 10.0),
                    cost_per_gpu_hour: Some(1.0 + (w % 5) as f64 * 0.5),
                },
                profitability: None,
            }
        })
        .collect()
}

fn request(rng: &mut Rng) -> PlacementRequest {
    let gpu_count = [1, 1, 1, 2, 2, 4, 8][rng.below(7) as usize];
    let gpu_type = match rng.below(4) {
        0 => None,
        1 => Some("H100".to_owned()),
        2 => Some("A100".to_owned()),
        _ => Some("L40S".to_owned()),
    };
    let min_memory_mib = if rng.below(5) == 0 { 45 * 1024 } else { 0 };
    PlacementRequest {
        gpu_count,
        gpu_type,
        min_memory_mib,
    }
}

fn placement_benches(c: &mut Criterion) {
    let mut rng = Rng(0x2545_f491_4f6c_dd1d);
    let workers = fleet(1250, 8, &mut rng);
    let tenants = tenant_names();
    let queued = 300_000u64;
    let mut queue = FairQueue::new();
    let mut requests: HashMap<u64, PlacementRequest> = HashMap::with_capacity(queued as usize);
    for id in 0..queued {
        queue
            .push(
                id,
                rng.below(10) as u8 + 1,
                &tenants[rng.below(TENANTS) as usize],
            )
            .unwrap();
        requests.insert(id, request(&mut rng));
    }
    let mut g = c.benchmark_group("placement");
    g.sample_size(10).measurement_time(Duration::from_secs(10));
    g.bench_function("index_10k_gpus", |b| {
        b.iter(|| black_box(FreeIndex::new(&workers, ScoreWeights::default())))
    });
    g.bench_function("full_pass_300k_queued_10k_gpus", |b| {
        b.iter_batched(
            || (),
            |()| {
                let mut index = FreeIndex::new(&workers, ScoreWeights::default());
                let items = queue.drain_order().map(|(id, _)| (id, &requests[&id]));
                black_box(place_all(&mut index, items))
            },
            BatchSize::LargeInput,
        )
    });
    // Worst cases: nothing fits, nothing runs out, and the pass walks all 300k.
    // (1) A fragmented fleet (one free GPU per worker) and a queue of gangs.
    let fragmented: Vec<WorkerInfo> = workers
        .iter()
        .cloned()
        .map(|mut w| {
            for (i, g) in w.gpus.iter_mut().enumerate() {
                g.allocated = i != 0;
            }
            w
        })
        .collect();
    let gangs: HashMap<u64, PlacementRequest> = requests
        .iter()
        .map(|(id, r)| {
            let mut r = r.clone();
            r.gpu_count = r.gpu_count.max(2);
            (*id, r)
        })
        .collect();
    // (2) Only L40S nodes have free GPUs, and everyone wants H100 or A100.
    let starved: Vec<WorkerInfo> = workers
        .iter()
        .cloned()
        .map(|mut w| {
            for g in &mut w.gpus {
                g.allocated = g.model != "L40S";
            }
            w
        })
        .collect();
    let typed: HashMap<u64, PlacementRequest> = requests
        .iter()
        .map(|(id, r)| {
            let mut r = r.clone();
            r.gpu_type = Some(if id % 2 == 0 { "H100" } else { "A100" }.to_owned());
            (*id, r)
        })
        .collect();
    for (name, fleet, reqs) in [
        (
            "full_pass_300k_nothing_fits_fragmented",
            &fragmented,
            &gangs,
        ),
        ("full_pass_300k_nothing_fits_wrong_type", &starved, &typed),
    ] {
        g.bench_function(name, |b| {
            b.iter(|| {
                let mut index = FreeIndex::new(fleet, ScoreWeights::default());
                let items = queue.drain_order().map(|(id, _)| (id, &reqs[&id]));
                let out = place_all(&mut index, items);
                assert_eq!(out.considered, queued as usize);
                assert!(out.placed.is_empty());
                black_box(out)
            })
        });
    }
    g.finish();
    // Print what one pass does, so the figure has its context.
    let mut index = FreeIndex::new(&workers, ScoreWeights::default());
    let free = index.total_free();
    let items = queue.drain_order().map(|(id, _)| (id, &requests[&id]));
    let out = place_all(&mut index, items);
    eprintln!(
        "one pass: {free} free GPUs, {} placements, {} of {queued} queued considered, {} GPUs left",
        out.placed.len(),
        out.considered,
        index.total_free()
    );
}

criterion_group!(benches, queue_benches, placement_benches);
criterion_main!(benches);
