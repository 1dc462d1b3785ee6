//! Heartbeats stored set-based. A 10,000-GPU fleet sends 1,250 heartbeats a second; most
//! repeat the stored one and are answered from the memo, but each worker's is still stored
//! every `heartbeat_store_ms` (its `last_seen` for another instance), and with short runs most
//! change their run list. One by one that was five statements a heartbeat. Here the
//! heartbeats of a consumer batch (distinct workers) are stored together: one read of the
//! runs they hold, one locked read of their rows, one upsert of the workers (their
//! `last_seen`), the GPU inventory of those that (re)register, one update per direction of the
//! missing-run clocks.
//!
//! A heartbeat whose first look finds something that changes allocations or commands (a run
//! to requeue or stop) takes the one-by-one path, which locks its pool first; so does one
//! whose GPU ids another heartbeat of the batch also reports (each of those, in batch order).

use std::collections::HashSet;

use hcp_db::sqlx::PgConnection;
use hcp_db::{ApplyError, Projection};
use hcp_events::payload::WorkerHeartbeat;
use hcp_events::Envelope;

use crate::domain::reconcile;
use crate::metrics as m;
use crate::projection::ResourceManager;
use crate::projection::{check_heartbeat, registration};
use crate::repo::{self, Beat};

impl ResourceManager {
    /// Stores `beats` (heartbeats of distinct workers, none a repeat of its stored one) and
    /// empties the list.
    pub(crate) async fn apply_beats(
        &self,
        tx: &mut PgConnection,
        beats: &mut Vec<(&Envelope, &WorkerHeartbeat)>,
    ) -> Result<(), ApplyError> {
        let beats = std::mem::take(beats);
        if let [(e, _)] = beats.as_slice() {
            return Projection::apply(self, tx, e).await;
        }
        if beats.is_empty() {
            return Ok(());
        }
        for (e, h) in &beats {
            check_heartbeat(e, h)?;
            self.memo.hear(&h.worker_id);
        }
        let ids: Vec<&str> = beats.iter().map(|(_, h)| h.worker_id.as_str()).collect();
        let held = repo::held_runs_of(tx, &ids).await?;
        let grace = self.settings.grace();
        let mut alone: Vec<&Envelope> = Vec::new();
        let mut together = Vec::with_capacity(beats.len());
        // GPU ids reported by more than one heartbeat of the batch (a GPU that moved): all
        // those heartbeats keep the one-by-one path, in batch order.
        let mut seen: HashSet<&str> = HashSet::new();
        let mut shared: HashSet<&str> = HashSet::new();
        for (_, h) in &beats {
            let mine: HashSet<&str> = h.gpus.iter().map(|g| g.gpu_id.as_str()).collect();
            for g in mine {
                if !seen.insert(g) {
                    shared.insert(g);
                }
            }
        }
        for (e, h) in &beats {
            let runs = held
                .get(&h.worker_id)
                .map(Vec::as_slice)
                .unwrap_or_default();
            let rec = reconcile(runs, &h.running, grace);
            let moved = h.gpus.iter().any(|g| shared.contains(g.gpu_id.as_str()));
            if rec.needs_pool_lock() || moved {
                alone.push(e);
            } else {
                together.push((*e, *h, rec));
            }
        }
        together.sort_by(|a, b| a.1.worker_id.cmp(&b.1.worker_id));
        let ids: Vec<&str> = together
            .iter()
            .map(|(_, h, _)| h.worker_id.as_str())
            .collect();
        let before = repo::lock_workers(tx, &ids).await?;
        let rows: Vec<Beat<'_>> = together
            .iter()
            .map(|(e, h, _)| Beat {
                worker_id: &h.worker_id,
                site: &h.site,
                backend: &h.backend,
                gpus: &h.gpus,
                report_id: e.event_id,
                sent_at: e.occurred_at,
            })
            .collect();
        let registrations: Vec<Option<&'static str>> = together
            .iter()
            .map(|(_, h, _)| registration(before.get(&h.worker_id), h))
            .collect();
        repo::upsert_workers(tx, &rows).await?;
        // The inventory of workers that (re)register; the others' is unchanged.
        let inventories: Vec<(&str, &[_])> = together
            .iter()
            .zip(&registrations)
            .filter(|(_, why)| why.is_some())
            .map(|((_, h, _), _)| (h.worker_id.as_str(), h.gpus.as_slice()))
            .collect();
        repo::upsert_inventories(tx, &inventories).await?;
        let mut mark = Vec::new();
        let mut clear = Vec::new();
        let mut registered = Vec::with_capacity(together.len());
        for ((e, h, rec), why) in together.iter().zip(&registrations) {
            if let Some(why) = why {
                self.register(tx, e, h, why).await?;
            }
            registered.push(why.is_some());
            mark.extend(rec.mark_missing.iter().copied());
            clear.extend(rec.clear_missing.iter().copied());
        }
        repo::set_missing(tx, &mark, true).await?;
        repo::set_missing(tx, &clear, false).await?;
        for ((_, h, rec), registered) in together.iter().zip(registered) {
            self.memo.record(
                h,
                !registered && rec.settled() && rec.clear_missing.is_empty(),
            );
        }
        metrics::counter!(m::HEARTBEATS_STORED_TOGETHER).increment(together.len() as u64);
        tracing::debug!(
            together = together.len(),
            alone = alone.len(),
            "heartbeats stored"
        );
        for e in alone {
            Projection::apply(self, tx, e).await?;
        }
        Ok(())
    }
}
