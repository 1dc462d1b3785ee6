//! Queue ETA estimates.
//!
//! The fleet is treated as one pool of GPU-seconds drained evenly by its healthy GPUs:
//!
//! ```text
//! eta_start_s    = (ahead_gpu_seconds + busy_gpu_seconds) / fleet_gpus
//! eta_complete_s = eta_start_s + remaining_s
//! ```
//!
//! - `ahead_gpu_seconds`: Σ gpu_count × declared duration × (1 − progress) over the queued work
//!   ahead of this workload (queue order: priority, then age);
//! - `busy_gpu_seconds`: Σ gpu_count × remaining seconds over the work holding GPUs now;
//! - `fleet_gpus`: GPUs on healthy workers;
//! - `remaining_s`: this workload's declared duration × (1 − progress), less the time it has
//!   run since then.
//!
//! It is a fluid approximation: it ignores gang placement (a 8-GPU job waits for 8 free GPUs
//! on one worker), GPU-model constraints, work that arrives later with a higher priority, and
//! preemption. No estimate is given when the fleet has no healthy GPU.

/// Inputs of an estimate.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EtaInputs {
    /// Whether the workload is still waiting in the queue.
    pub queued: bool,
    /// GPU-seconds of queued work ahead of it.
    pub ahead_gpu_seconds: f64,
    /// GPU-seconds of work left on the GPUs that are held now.
    pub busy_gpu_seconds: f64,
    /// Healthy GPUs in the fleet.
    pub fleet_gpus: i64,
    /// Seconds of its own work left.
    pub remaining_s: f64,
}

/// An estimate, in seconds from now.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Eta {
    /// Until it starts (0 once it holds GPUs).
    pub start_s: f64,
    /// Until it completes.
    pub complete_s: f64,
}

/// The estimate (see the module docs for the formula); `None` without healthy GPUs for work
/// that is still queued.
pub fn estimate(i: EtaInputs) -> Option<Eta> {
    let start_s = if i.queued {
        if i.fleet_gpus <= 0 {
            return None;
        }
        (i.ahead_gpu_seconds.max(0.0) + i.busy_gpu_seconds.max(0.0)) / i.fleet_gpus as f64
    } else {
        0.0
    };
    Some(Eta {
        start_s,
        complete_s: start_s + i.remaining_s.max(0.0),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queued_work_waits_for_the_work_ahead_and_the_busy_gpus_spread_over_the_fleet() {
        // 3 workloads of 1 GPU × 100 s ahead, 2 GPUs busy for 50 s more, 4 GPUs in the fleet.
        let eta = estimate(EtaInputs {
            queued: true,
            ahead_gpu_seconds: 300.0,
            busy_gpu_seconds: 100.0,
            fleet_gpus: 4,
            remaining_s: 60.0,
        })
        .unwrap();
        assert_eq!(eta.start_s, 100.0);
        assert_eq!(eta.complete_s, 160.0);
    }

    #[test]
    fn running_work_only_has_its_own_remainder_left() {
        let eta = estimate(EtaInputs {
            queued: false,
            ahead_gpu_seconds: 1e9,
            busy_gpu_seconds: 1e9,
            fleet_gpus: 0,
            remaining_s: 42.0,
        })
        .unwrap();
        assert_eq!(
            eta,
            Eta {
                start_s: 0.0,
                complete_s: 42.0
            }
        );
    }

    #[test]
    fn there_is_no_estimate_without_a_healthy_gpu() {
        let i = EtaInputs {
            queued: true,
            ahead_gpu_seconds: 0.0,
            busy_gpu_seconds: 0.0,
            fleet_gpus: 0,
            remaining_s: 10.0,
        };
        assert_eq!(estimate(i), None);
    }
}
