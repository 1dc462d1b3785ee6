//! The heartbeat memo: what each worker's last stored heartbeat said, shared by the
//! projection (which skips repeats) and the health sweep (which asks it before declaring a
//! worker lost).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use hcp_events::payload::{GpuSpec, WorkerHeartbeat};
use uuid::Uuid;

/// What each worker's last stored heartbeat said. Workers beat once a second; most beats
/// repeat the last one, and storing each cost seven statements (a 10,000-GPU fleet sends
/// 1,250 a second). A repeat within `heartbeat_store_ms` of the last stored one, while its
/// runs and allocations agree, is answered from here and touches no table.
///
/// The memo is a cache of what was written, never a source of truth: it may be ahead of the
/// database when a transaction that recorded into it rolled back, which at worst delays one
/// store by `heartbeat_store_ms` (kept well under the worker timeout); any change in the
/// heartbeat, a restart, or a second instance sharing the worker takes the full path.
#[derive(Debug, Default)]
pub struct HeartbeatMemo {
    workers: Mutex<HashMap<String, StoredBeat>>,
    /// When each worker's last heartbeat was applied here, stored or not.
    heard: Mutex<HashMap<String, Instant>>,
}

#[derive(Debug)]
struct StoredBeat {
    site: String,
    backend: String,
    gpus: Vec<GpuSpec>,
    running: Vec<Uuid>,
    stored_at: Instant,
}

impl HeartbeatMemo {
    fn sorted(running: &[Uuid]) -> Vec<Uuid> {
        let mut r = running.to_vec();
        r.sort_unstable();
        r.dedup();
        r
    }

    /// Whether a heartbeat of `worker_id` was applied here within `within`: the health sweep
    /// asks before it declares a worker lost whose stored `last_seen` is old.
    pub fn heard_within(&self, worker_id: &str, within: Duration) -> bool {
        self.heard
            .lock()
            .is_ok_and(|h| h.get(worker_id).is_some_and(|t| t.elapsed() < within))
    }

    /// Notes that a heartbeat of `worker_id` was applied now, stored or not.
    pub(crate) fn hear(&self, worker_id: &str) {
        if let Ok(mut heard) = self.heard.lock() {
            match heard.get_mut(worker_id) {
                Some(t) => *t = Instant::now(),
                None => {
                    heard.insert(worker_id.to_owned(), Instant::now());
                }
            }
        }
    }

    /// Whether `h` repeats the last stored heartbeat of its worker within `every`.
    pub(crate) fn repeats(&self, h: &WorkerHeartbeat, every: Duration) -> bool {
        let Ok(workers) = self.workers.lock() else {
            return false;
        };
        workers.get(&h.worker_id).is_some_and(|s| {
            s.stored_at.elapsed() < every
                && s.site == h.site
                && s.backend == h.backend
                && s.gpus == h.gpus
                && s.running == Self::sorted(&h.running)
        })
    }

    /// Records a stored heartbeat; `settled` false forgets it (the next one is stored too).
    pub(crate) fn record(&self, h: &WorkerHeartbeat, settled: bool) {
        let Ok(mut workers) = self.workers.lock() else {
            return;
        };
        if settled {
            workers.insert(
                h.worker_id.clone(),
                StoredBeat {
                    site: h.site.clone(),
                    backend: h.backend.clone(),
                    gpus: h.gpus.clone(),
                    running: Self::sorted(&h.running),
                    stored_at: Instant::now(),
                },
            );
        } else {
            workers.remove(&h.worker_id);
        }
    }
}
