//! Whether a placement can be allocated, free of I/O: the worker must be known and healthy,
//! the GPUs its own, fitting the workload and held by nobody.

use std::collections::HashSet;

use hcp_events::payload::{GpuSpec, WorkloadSubmitted};
use uuid::Uuid;

/// A worker as the placement check sees it.
#[derive(Debug, Clone)]
pub struct WorkerInfo {
    /// The worker.
    pub worker_id: String,
    /// Whether it is healthy (not lost).
    pub healthy: bool,
    /// Its GPUs.
    pub gpus: Vec<GpuSpec>,
}

/// A live allocation of one GPU.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holder {
    /// The GPU.
    pub gpu_id: String,
    /// The workload holding it.
    pub workload_id: Uuid,
}

/// Why a placement was refused: the wire's [`RejectCode`](hcp_events::payload::RejectCode).
pub use hcp_events::payload::RejectCode as RejectReason;

/// A refused proposal: the label and the sentence the router and the customer see.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    /// Label.
    pub reason: RejectReason,
    /// Precise reason.
    pub detail: String,
}

impl Rejection {
    /// A rejection with its label and sentence.
    pub fn new(reason: RejectReason, detail: String) -> Self {
        Self { reason, detail }
    }
}

/// Whether `gpu` meets the workload's type and memory constraints.
pub fn gpu_fits(workload: &WorkloadSubmitted, gpu: &GpuSpec) -> bool {
    let type_ok = workload
        .gpu_type
        .as_deref()
        .is_none_or(|t| t.eq_ignore_ascii_case(&gpu.model));
    let memory_ok = workload
        .gpu_memory_gib
        .is_none_or(|gib| gpu.memory_mib >= u64::from(gib) * 1024);
    type_ok && memory_ok
}

/// Checks a placement (a gang of `gpu_ids` on `worker_id`) against the worker and the live
/// allocations of its GPUs. `Ok` means allocate.
pub fn check_placement(
    workload: &WorkloadSubmitted,
    worker_id: &str,
    gpu_ids: &[String],
    worker: Option<&WorkerInfo>,
    holders: &[Holder],
) -> Result<(), Rejection> {
    use RejectReason::*;
    if gpu_ids.is_empty() {
        return Err(Rejection::new(
            BadProposal,
            "the proposal lists no GPUs".into(),
        ));
    }
    let mut seen = HashSet::new();
    if let Some(dup) = gpu_ids.iter().find(|g| !seen.insert(g.as_str())) {
        return Err(Rejection::new(
            BadProposal,
            format!("GPU {dup} is listed twice"),
        ));
    }
    if gpu_ids.len() != workload.gpu_count as usize {
        return Err(Rejection::new(
            BadProposal,
            format!(
                "the proposal has {} GPUs; the workload needs {}",
                gpu_ids.len(),
                workload.gpu_count
            ),
        ));
    }
    let Some(worker) = worker else {
        return Err(Rejection::new(
            UnknownWorker,
            format!("worker {} has never sent a heartbeat", worker_id),
        ));
    };
    if !worker.healthy {
        return Err(Rejection::new(
            WorkerLost,
            format!("worker {} is lost", worker.worker_id),
        ));
    }
    for id in gpu_ids {
        let Some(gpu) = worker.gpus.iter().find(|g| &g.gpu_id == id) else {
            return Err(Rejection::new(
                UnknownGpu,
                format!("GPU {id} is not on worker {}", worker.worker_id),
            ));
        };
        if !gpu_fits(workload, gpu) {
            return Err(Rejection::new(
                GpuMismatch,
                format!(
                    "GPU {id} is a {} with {} MiB; the workload needs {}{}",
                    gpu.model,
                    gpu.memory_mib,
                    workload.gpu_type.as_deref().unwrap_or("any model"),
                    workload
                        .gpu_memory_gib
                        .map(|g| format!(" with {g} GiB"))
                        .unwrap_or_default()
                ),
            ));
        }
    }
    if let Some(h) = holders.first() {
        let more = holders.len() - 1;
        return Err(Rejection::new(
            GpuHeld,
            format!(
                "GPU {} is held by workload {}{}",
                h.gpu_id,
                h.workload_id,
                if more > 0 {
                    format!(" (and {more} more GPUs are held)")
                } else {
                    String::new()
                }
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use hcp_events::WorkloadKind;

    fn gpu(n: u32) -> GpuSpec {
        GpuSpec {
            gpu_id: format!("w/gpu-{n}"),
            model: "H100".into(),
            memory_mib: 81_559,
        }
    }

    fn worker(healthy: bool) -> WorkerInfo {
        WorkerInfo {
            worker_id: "w".into(),
            healthy,
            gpus: (0..8).map(gpu).collect(),
        }
    }

    fn submitted(gpus: u32) -> WorkloadSubmitted {
        WorkloadSubmitted::simple(
            Uuid::from_u128(7),
            "t",
            WorkloadKind::Training,
            "llama-3-8b",
            gpus,
            100,
        )
    }

    /// A gang of `w/gpu-<n>` on worker `w`.
    fn proposal(gpus: &[u32]) -> Vec<String> {
        gpus.iter().map(|n| format!("w/gpu-{n}")).collect()
    }

    fn check_placement_of(
        s: &WorkloadSubmitted,
        gpu_ids: &[String],
        w: Option<&WorkerInfo>,
        h: &[Holder],
    ) -> Result<(), Rejection> {
        check_placement(s, "w", gpu_ids, w, h)
    }

    #[test]
    fn a_free_healthy_gang_is_accepted() {
        let r = check_placement_of(&submitted(2), &proposal(&[0, 1]), Some(&worker(true)), &[]);
        assert_eq!(r, Ok(()));
    }

    #[test]
    fn a_held_gpu_is_refused_naming_its_holder() {
        let holder = Uuid::from_u128(99);
        let r = check_placement_of(
            &submitted(2),
            &proposal(&[0, 1]),
            Some(&worker(true)),
            &[Holder {
                gpu_id: "w/gpu-1".into(),
                workload_id: holder,
            }],
        )
        .unwrap_err();
        assert_eq!(r.reason, RejectReason::GpuHeld);
        assert_eq!(
            r.detail,
            format!("GPU w/gpu-1 is held by workload {holder}")
        );
    }

    #[test]
    fn every_precondition_has_its_own_reason() {
        let s = submitted(2);
        let cases = [
            (proposal(&[]), Some(worker(true)), RejectReason::BadProposal),
            (
                proposal(&[1, 1]),
                Some(worker(true)),
                RejectReason::BadProposal,
            ),
            (
                proposal(&[1]),
                Some(worker(true)),
                RejectReason::BadProposal,
            ),
            (proposal(&[0, 1]), None, RejectReason::UnknownWorker),
            (
                proposal(&[0, 1]),
                Some(worker(false)),
                RejectReason::WorkerLost,
            ),
            (
                proposal(&[0, 9]),
                Some(worker(true)),
                RejectReason::UnknownGpu,
            ),
        ];
        for (p, w, want) in cases {
            let got = check_placement_of(&s, &p, w.as_ref(), &[]).unwrap_err();
            assert_eq!(got.reason, want, "{}", got.detail);
        }
        let mut picky = submitted(1);
        picky.gpu_type = Some("A100".into());
        let got =
            check_placement_of(&picky, &proposal(&[0]), Some(&worker(true)), &[]).unwrap_err();
        assert_eq!(got.reason, RejectReason::GpuMismatch);
        assert!(got.detail.contains("needs A100"), "{}", got.detail);
        let mut big = submitted(1);
        big.gpu_memory_gib = Some(141);
        let got = check_placement_of(&big, &proposal(&[0]), Some(&worker(true)), &[]).unwrap_err();
        assert_eq!(got.reason, RejectReason::GpuMismatch);
    }
}
