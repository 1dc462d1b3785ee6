//! The simulated backend: GPUs with a few resident models each, model switches with phase
//! timings (a resident model skips the load), progress that follows the (scaled) clock,
//! periodic checkpoints, pause and resume, and plausible telemetry.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use hcp_events::payload::{GpuSample, GpuSpec, ModelSwitch, RunStatus};
use uuid::Uuid;

use super::{Backend, BackendError, RunUpdate, StartRun};
use crate::config::WorkerSettings;

/// Bytes per parameter of a resident model (fp16).
const BYTES_PER_PARAM: f64 = 2.0;
/// Progress below 1 by less than this counts as done (float noise).
const EPS: f64 = 1e-9;

/// The simulator's knobs (from `[worker]`).
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// Simulated seconds per real second.
    pub time_scale: f64,
    /// Checkpoint every this fraction (0 disables)...
    pub checkpoint_every: f64,
    /// ...but no more often than every this many simulated seconds.
    pub checkpoint_min_s: f64,
    /// Models resident per GPU.
    pub vram_models: usize,
    /// Cold load per GiB on one GPU, simulated ms.
    pub cold_load_ms_per_gib: f64,
    /// Bind, simulated ms.
    pub bind_ms: f64,
    /// First batch, simulated ms.
    pub first_batch_ms: f64,
    /// Size of a model without a parameter count in its name, GiB.
    pub default_model_gib: f64,
    /// Idle power, W.
    pub idle_power_w: f64,
    /// Full-load power, W.
    pub max_power_w: f64,
}

impl From<&WorkerSettings> for SimConfig {
    fn from(s: &WorkerSettings) -> Self {
        Self {
            time_scale: s.time_scale,
            checkpoint_every: s.checkpoint_every,
            checkpoint_min_s: s.checkpoint_min_s.max(0.0),
            vram_models: s.vram_models.max(1),
            cold_load_ms_per_gib: s.cold_load_ms_per_gib.max(0.0),
            bind_ms: s.bind_ms.max(0.0),
            first_batch_ms: s.first_batch_ms.max(0.0),
            default_model_gib: s.default_model_gib.max(0.0),
            idle_power_w: s.idle_power_w,
            max_power_w: s.max_power_w,
        }
    }
}

/// A model's size in GiB: a parameter count in its name (`llama-3-8b`, `qwen2.5-0.5B`) at
/// fp16, else `default_gib`.
pub fn model_size_gib(model: &str, default_gib: f64) -> f64 {
    model
        .split(['-', '_', '/', ':', ' '])
        .filter_map(|part| {
            let part = part.to_ascii_lowercase();
            let n = part.strip_suffix('b')?;
            n.parse::<f64>().ok().filter(|v| v.is_finite() && *v > 0.0)
        })
        .next_back()
        .map_or(default_gib, |billions| {
            billions * 1e9 * BYTES_PER_PARAM / f64::from(1u32 << 30)
        })
}

#[derive(Debug)]
struct SimGpu {
    spec: GpuSpec,
    /// Resident models, most recently used first, with their per-GPU size in GiB.
    resident: VecDeque<(String, f64)>,
    temperature_c: f64,
}

#[derive(Debug)]
struct SimRun {
    gpu_ids: Vec<String>,
    duration_s: f64,
    resume: f64,
    switch: ModelSwitch,
    /// When the model switch is done and work begins.
    ready_at: Instant,
    started_reported: bool,
    paused: bool,
    /// Simulated seconds of work banked before `since`.
    done_s: f64,
    /// Start of the current running segment (`None` while switching or paused).
    since: Option<Instant>,
    last_checkpoint: f64,
}

impl SimRun {
    fn work_s(&self, now: Instant, scale: f64) -> f64 {
        self.done_s
            + self.since.map_or(0.0, |s| {
                now.saturating_duration_since(s).as_secs_f64() * scale
            })
    }

    fn progress(&self, now: Instant, scale: f64) -> f64 {
        let p = if self.duration_s <= 0.0 {
            1.0
        } else {
            self.resume + self.work_s(now, scale) / self.duration_s
        };
        p.min(1.0)
    }

    fn bank(&mut self, now: Instant, scale: f64) {
        self.done_s = self.work_s(now, scale);
        self.since = None;
    }
}

/// Simulated GPUs and runs.
#[derive(Debug)]
pub struct SimBackend {
    cfg: SimConfig,
    gpus: Vec<SimGpu>,
    runs: BTreeMap<Uuid, SimRun>,
    noise: u64,
}

impl SimBackend {
    /// `gpus` simulated GPUs of `model` with `memory_mib` each, ids `<worker>/gpu-N`.
    pub fn new(worker_id: &str, gpus: u32, model: &str, memory_mib: u64, cfg: SimConfig) -> Self {
        let gpus = (0..gpus)
            .map(|n| SimGpu {
                spec: GpuSpec {
                    gpu_id: format!("{worker_id}/gpu-{n}"),
                    model: model.to_owned(),
                    memory_mib,
                },
                resident: VecDeque::new(),
                temperature_c: 30.0,
            })
            .collect();
        // A per-worker seed, so that workers of one process do not report identical noise.
        let seed = worker_id.bytes().fold(0x9e37_79b9_7f4a_7c15_u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
        }) | 1;
        Self {
            cfg,
            gpus,
            runs: BTreeMap::new(),
            noise: seed,
        }
    }

    /// A backend for one worker of `settings`.
    pub fn from_settings(worker_id: &str, settings: &WorkerSettings) -> Self {
        Self::new(
            worker_id,
            settings.gpus_per_worker,
            &settings.gpu_model,
            settings.memory_mib,
            SimConfig::from(settings),
        )
    }

    /// Noise in [-1, 1] (xorshift64).
    fn jitter(&mut self) -> f64 {
        let mut x = self.noise;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.noise = x;
        (x >> 11) as f64 / (1u64 << 52) as f64 - 1.0
    }

    fn gpu_mut(&mut self, id: &str) -> Option<&mut SimGpu> {
        self.gpus.iter_mut().find(|g| g.spec.gpu_id == id)
    }

    /// The model switch for `model` onto `gpu_ids`, and makes it resident there.
    fn switch_to(&mut self, model: &str, gpu_ids: &[String]) -> ModelSwitch {
        let per_gpu_gib =
            model_size_gib(model, self.cfg.default_model_gib) / gpu_ids.len().max(1) as f64;
        let resident = gpu_ids.iter().all(|id| {
            self.gpus
                .iter()
                .any(|g| &g.spec.gpu_id == id && g.resident.iter().any(|(m, _)| m == model))
        });
        let keep = self.cfg.vram_models;
        for id in gpu_ids {
            if let Some(g) = self.gpu_mut(id) {
                g.resident.retain(|(m, _)| m != model);
                g.resident.push_front((model.to_owned(), per_gpu_gib));
                g.resident.truncate(keep);
            }
        }
        ModelSwitch {
            model: model.to_owned(),
            resident,
            load_ms: if resident {
                0.0
            } else {
                self.cfg.cold_load_ms_per_gib * per_gpu_gib
            },
            bind_ms: self.cfg.bind_ms,
            first_batch_ms: self.cfg.first_batch_ms,
        }
    }

    fn update(
        &self,
        id: Uuid,
        run: &SimRun,
        status: RunStatus,
        progress: f64,
        now: Instant,
    ) -> RunUpdate {
        RunUpdate {
            workload_id: id,
            status,
            progress,
            runtime_s: run.work_s(now, self.cfg.time_scale),
            detail: None,
            switch: None,
        }
    }

    #[cfg(test)]
    fn ready_at(&self, id: Uuid) -> Option<Instant> {
        self.runs.get(&id).map(|r| r.ready_at)
    }

    fn run_mut(&mut self, id: Uuid) -> Result<&mut SimRun, BackendError> {
        self.runs.get_mut(&id).ok_or(BackendError::UnknownRun(id))
    }
}

impl Backend for SimBackend {
    fn kind(&self) -> &'static str {
        "sim"
    }

    fn gpus(&self) -> Vec<GpuSpec> {
        self.gpus.iter().map(|g| g.spec.clone()).collect()
    }

    fn start(&mut self, now: Instant, run: StartRun) -> Result<Vec<RunUpdate>, BackendError> {
        if run.gpu_ids.is_empty() {
            return Err(BackendError::NoGpus);
        }
        if let Some(unknown) = run
            .gpu_ids
            .iter()
            .find(|id| !self.gpus.iter().any(|g| &&g.spec.gpu_id == id))
        {
            return Err(BackendError::UnknownGpu(unknown.clone()));
        }
        // A repeated start replaces the run; runs on the same GPUs lost them.
        self.runs.remove(&run.workload_id);
        let displaced: Vec<Uuid> = self
            .runs
            .iter()
            .filter(|(_, r)| r.gpu_ids.iter().any(|g| run.gpu_ids.contains(g)))
            .map(|(id, _)| *id)
            .collect();
        let mut updates = Vec::new();
        for id in displaced {
            if let Some(r) = self.runs.remove(&id) {
                let mut u = self.update(id, &r, RunStatus::Stopped, r.last_checkpoint, now);
                u.detail = Some("its GPUs were given to another run".into());
                updates.push(u);
            }
        }
        let switch = self.switch_to(&run.model, &run.gpu_ids);
        let total_ms = switch.load_ms + switch.bind_ms + switch.first_batch_ms;
        let real = Duration::from_secs_f64((total_ms / 1000.0 / self.cfg.time_scale).max(0.0));
        let resume = if run.resume_progress.is_finite() {
            run.resume_progress.clamp(0.0, 1.0)
        } else {
            0.0
        };
        self.runs.insert(
            run.workload_id,
            SimRun {
                gpu_ids: run.gpu_ids,
                duration_s: f64::from(run.duration_s),
                resume,
                switch,
                ready_at: now + real,
                started_reported: false,
                paused: false,
                done_s: 0.0,
                since: None,
                last_checkpoint: resume,
            },
        );
        Ok(updates)
    }

    fn pause(&mut self, now: Instant, workload_id: Uuid) -> Result<RunUpdate, BackendError> {
        let scale = self.cfg.time_scale;
        let run = self.run_mut(workload_id)?;
        run.bank(now, scale);
        run.paused = true;
        let p = run.progress(now, scale);
        let run = &self.runs[&workload_id];
        Ok(self.update(workload_id, run, RunStatus::Paused, p, now))
    }

    fn resume(&mut self, now: Instant, workload_id: Uuid) -> Result<RunUpdate, BackendError> {
        let scale = self.cfg.time_scale;
        let run = self.run_mut(workload_id)?;
        if run.paused {
            run.paused = false;
            if run.started_reported {
                run.since = Some(now);
            }
        }
        let p = run.progress(now, scale);
        let run = &self.runs[&workload_id];
        Ok(self.update(workload_id, run, RunStatus::Resumed, p, now))
    }

    fn checkpoint(&mut self, now: Instant, workload_id: Uuid) -> Result<RunUpdate, BackendError> {
        let scale = self.cfg.time_scale;
        let run = self.run_mut(workload_id)?;
        let p = run.progress(now, scale);
        run.last_checkpoint = run.last_checkpoint.max(p);
        let saved = run.last_checkpoint;
        let run = &self.runs[&workload_id];
        Ok(self.update(workload_id, run, RunStatus::Checkpointed, saved, now))
    }

    fn stop(
        &mut self,
        now: Instant,
        workload_id: Uuid,
        checkpoint: bool,
        reason: &str,
    ) -> Result<RunUpdate, BackendError> {
        let run = self
            .runs
            .remove(&workload_id)
            .ok_or(BackendError::UnknownRun(workload_id))?;
        let progress = if checkpoint {
            run.progress(now, self.cfg.time_scale)
                .max(run.last_checkpoint)
        } else {
            run.last_checkpoint
        };
        let mut u = self.update(workload_id, &run, RunStatus::Stopped, progress, now);
        u.detail = Some(reason.to_owned());
        Ok(u)
    }

    fn poll(&mut self, now: Instant) -> Vec<RunUpdate> {
        let scale = self.cfg.time_scale;
        let (every, min_s) = (self.cfg.checkpoint_every, self.cfg.checkpoint_min_s);
        let mut updates = Vec::new();
        let mut done = Vec::new();
        for (id, run) in &mut self.runs {
            if !run.started_reported {
                if now < run.ready_at {
                    continue;
                }
                run.started_reported = true;
                if !run.paused {
                    run.since = Some(run.ready_at);
                }
                updates.push(RunUpdate {
                    workload_id: *id,
                    status: RunStatus::Started,
                    progress: run.resume,
                    runtime_s: 0.0,
                    detail: None,
                    switch: Some(run.switch.clone()),
                });
            }
            let p = run.progress(now, scale);
            if p >= 1.0 - EPS {
                let needed = (1.0 - run.resume) * run.duration_s;
                updates.push(RunUpdate {
                    workload_id: *id,
                    status: RunStatus::Completed,
                    progress: 1.0,
                    runtime_s: run.work_s(now, scale).min(needed),
                    detail: None,
                    switch: None,
                });
                done.push(*id);
            } else if let Some(step) = super::checkpoint_step(every, min_s, run.duration_s) {
                let reached = ((p + EPS) / step).floor() * step;
                if reached > run.last_checkpoint + EPS {
                    run.last_checkpoint = reached;
                    updates.push(RunUpdate {
                        workload_id: *id,
                        status: RunStatus::Checkpointed,
                        progress: reached,
                        runtime_s: run.work_s(now, scale),
                        detail: None,
                        switch: None,
                    });
                }
            }
        }
        for id in done {
            self.runs.remove(&id);
        }
        updates
    }

    fn running(&self) -> Vec<Uuid> {
        self.runs.keys().copied().collect()
    }

    fn samples(&mut self, _now: Instant) -> Vec<GpuSample> {
        let mut out = Vec::with_capacity(self.gpus.len());
        for i in 0..self.gpus.len() {
            let id = self.gpus[i].spec.gpu_id.clone();
            let holder = self.runs.values().find(|r| r.gpu_ids.contains(&id));
            let (base, spread) = match holder {
                None => (0.0, 0.5),
                Some(r) if r.paused => (2.0, 1.0),
                Some(r) if r.since.is_none() => (35.0, 5.0),
                Some(_) => (95.0, 2.5),
            };
            let busy = holder.is_some_and(|r| r.since.is_some());
            let util = (base + spread * self.jitter()).clamp(0.0, 100.0);
            let power_noise = 5.0 * self.jitter();
            let cfg = &self.cfg;
            let power = (cfg.idle_power_w
                + (cfg.max_power_w - cfg.idle_power_w) * util / 100.0
                + power_noise)
                .max(0.0);
            let gpu = &mut self.gpus[i];
            // Temperature follows utilisation with lag: ~30 °C idle, ~73 °C at 95 %.
            let target = 30.0 + 0.45 * util;
            gpu.temperature_c += (target - gpu.temperature_c) * 0.3;
            let resident_gib: f64 = gpu.resident.iter().map(|(_, gib)| gib).sum();
            let activations = if busy {
                0.1 * gpu.spec.memory_mib as f64
            } else {
                0.0
            };
            let used = (resident_gib * 1024.0 + activations).min(gpu.spec.memory_mib as f64);
            out.push(GpuSample {
                gpu_id: id,
                utilization_pct: util,
                memory_used_mib: used.max(0.0) as u64,
                power_w: power,
                temperature_c: gpu.temperature_c,
            });
        }
        out
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn cfg() -> SimConfig {
        SimConfig {
            time_scale: 10.0,
            checkpoint_every: 0.1,
            checkpoint_min_s: 0.0,
            vram_models: 2,
            cold_load_ms_per_gib: 100.0,
            bind_ms: 40.0,
            first_batch_ms: 60.0,
            default_model_gib: 2.0,
            idle_power_w: 70.0,
            max_power_w: 700.0,
        }
    }

    fn backend() -> SimBackend {
        SimBackend::new("w", 4, "H100", 81_559, cfg())
    }

    fn id(n: u128) -> Uuid {
        Uuid::from_u128(n)
    }

    fn start(n: u128, model: &str, gpus: &[u32], duration_s: u32, resume: f64) -> StartRun {
        StartRun {
            workload_id: id(n),
            model: model.into(),
            gpu_ids: gpus.iter().map(|g| format!("w/gpu-{g}")).collect(),
            duration_s,
            resume_progress: resume,
        }
    }

    fn secs(s: f64) -> Duration {
        Duration::from_secs_f64(s)
    }

    /// Starts a run and polls past its switch; returns the instant work began.
    fn started(b: &mut SimBackend, t0: Instant, run: StartRun) -> (Instant, RunUpdate) {
        let workload = run.workload_id;
        b.start(t0, run).unwrap();
        let ready = b.ready_at(workload).unwrap();
        let switch_s = ready.duration_since(t0).as_secs_f64();
        let ups = b.poll(ready);
        assert_eq!(ups.len(), 1, "{ups:?}");
        let up = ups.into_iter().next().unwrap();
        assert_eq!(up.status, RunStatus::Started);
        let switch = up.switch.clone().unwrap();
        let want = (switch.load_ms + switch.bind_ms + switch.first_batch_ms) / 1000.0 / 10.0;
        assert!(
            (switch_s - want).abs() < 1e-6,
            "the switch takes its scaled time"
        );
        (ready, up)
    }

    #[test]
    fn a_model_size_comes_from_its_name() {
        assert!((model_size_gib("llama-3-8b", 2.0) - 14.901).abs() < 0.01);
        assert!((model_size_gib("qwen2.5-0.5B", 2.0) - 0.931).abs() < 0.01);
        assert_eq!(model_size_gib("all-MiniLM-L6-v2", 2.0), 2.0);
    }

    #[test]
    fn progress_follows_the_scaled_clock_with_checkpoints_on_each_tenth() {
        let mut b = backend();
        let t0 = Instant::now();
        let (work, up) = started(&mut b, t0, start(1, "m", &[0], 100, 0.0));
        assert_eq!(up.progress, 0.0);
        // 100 simulated s at 10x: 10 real s. After 2.5 real s: 25 %, checkpoint at 20 %.
        let ups = b.poll(work + secs(2.5));
        assert_eq!(ups.len(), 1);
        assert_eq!(ups[0].status, RunStatus::Checkpointed);
        assert!((ups[0].progress - 0.2).abs() < 1e-9);
        assert!((ups[0].runtime_s - 25.0).abs() < 1e-6);
        assert!(b.poll(work + secs(2.6)).is_empty(), "no checkpoint twice");
        let ups = b.poll(work + secs(10.0));
        assert_eq!(ups.last().unwrap().status, RunStatus::Completed);
        assert!((ups.last().unwrap().runtime_s - 100.0).abs() < 1e-6);
        assert!(b.running().is_empty());
    }

    #[test]
    fn a_resumed_run_only_does_the_rest() {
        let mut b = backend();
        let t0 = Instant::now();
        let (work, up) = started(&mut b, t0, start(1, "m", &[0], 100, 0.6));
        assert_eq!(up.progress, 0.6);
        // 40 % left: 40 simulated s = 4 real s.
        assert!(b
            .poll(work + secs(3.9))
            .iter()
            .all(|u| u.status != RunStatus::Completed));
        let ups = b.poll(work + secs(4.0));
        let done = ups
            .iter()
            .find(|u| u.status == RunStatus::Completed)
            .unwrap();
        assert!((done.runtime_s - 40.0).abs() < 1e-6);
    }

    #[test]
    fn pause_freezes_progress_and_resume_continues_it() {
        let mut b = backend();
        let t0 = Instant::now();
        let (work, _) = started(&mut b, t0, start(1, "m", &[0], 100, 0.0));
        let paused = b.pause(work + secs(1.5), id(1)).unwrap();
        assert_eq!(paused.status, RunStatus::Paused);
        assert!((paused.progress - 0.15).abs() < 1e-9);
        // An hour later, still 15 %.
        let cp = b.checkpoint(work + secs(3600.0), id(1)).unwrap();
        assert!((cp.progress - 0.15).abs() < 1e-9);
        let resumed = b.resume(work + secs(3600.0), id(1)).unwrap();
        assert_eq!(resumed.status, RunStatus::Resumed);
        let stop = b.stop(work + secs(3601.0), id(1), true, "r").unwrap();
        assert!((stop.progress - 0.25).abs() < 1e-9);
    }

    #[test]
    fn a_stop_with_checkpoint_keeps_current_progress_and_without_the_last_checkpoint() {
        let mut b = backend();
        let t0 = Instant::now();
        let (work, _) = started(&mut b, t0, start(1, "m", &[0], 100, 0.0));
        b.poll(work + secs(3.3)); // checkpoint at 30 %
        let with = b.stop(work + secs(3.5), id(1), true, "preempted").unwrap();
        assert_eq!(with.status, RunStatus::Stopped);
        assert!((with.progress - 0.35).abs() < 1e-9);
        assert_eq!(with.detail.as_deref(), Some("preempted"));

        let (work, _) = started(&mut b, t0, start(2, "m", &[1], 100, 0.0));
        b.poll(work + secs(3.3));
        let without = b.stop(work + secs(3.5), id(2), false, "cancelled").unwrap();
        assert!((without.progress - 0.3).abs() < 1e-9);
        assert_eq!(
            b.stop(work, id(2), false, "again"),
            Err(BackendError::UnknownRun(id(2)))
        );
    }

    #[test]
    fn a_resident_model_skips_the_load_and_a_cold_one_pays_per_gib() {
        let mut b = backend();
        let t0 = Instant::now();
        let (_, first) = started(&mut b, t0, start(1, "llama-3-8b", &[0, 1], 10, 0.0));
        let cold = first.switch.unwrap();
        assert!(!cold.resident);
        // 14.9 GiB over 2 GPUs at 100 ms/GiB.
        assert!((cold.load_ms - 745.06).abs() < 0.1, "{}", cold.load_ms);
        b.stop(t0 + secs(1.0), id(1), false, "done").unwrap();
        let (_, second) = started(
            &mut b,
            t0 + secs(20.0),
            start(2, "llama-3-8b", &[0, 1], 10, 0.0),
        );
        let warm = second.switch.unwrap();
        assert!(warm.resident);
        assert_eq!(warm.load_ms, 0.0);
        assert_eq!((warm.bind_ms, warm.first_batch_ms), (40.0, 60.0));
        // Two other models evict it (two resident per GPU).
        for (n, m) in [(3, "a-1b"), (4, "b-1b")] {
            started(&mut b, t0 + secs(40.0), start(n, m, &[0, 1], 10, 0.0));
            b.stop(t0 + secs(41.0), id(n), false, "done").unwrap();
        }
        let (_, third) = started(
            &mut b,
            t0 + secs(60.0),
            start(5, "llama-3-8b", &[0, 1], 10, 0.0),
        );
        assert!(!third.switch.unwrap().resident);
    }

    #[test]
    fn no_progress_is_made_during_the_switch() {
        let mut b = backend();
        let t0 = Instant::now();
        b.start(t0, start(1, "llama-3-8b", &[0], 100, 0.0)).unwrap();
        // Cold load of 14.9 GiB at 100 ms/GiB + 100 ms = 1.59 simulated s = 0.159 real s.
        assert!(b.poll(t0 + secs(0.1)).is_empty());
        let cp = b.checkpoint(t0 + secs(0.1), id(1)).unwrap();
        assert_eq!(cp.progress, 0.0);
    }

    #[test]
    fn a_start_on_busy_gpus_stops_the_run_holding_them() {
        let mut b = backend();
        let t0 = Instant::now();
        started(&mut b, t0, start(1, "m", &[0, 1], 100, 0.0));
        let ups = b
            .start(t0 + secs(11.0), start(2, "m", &[1, 2], 100, 0.0))
            .unwrap();
        assert_eq!(ups.len(), 1);
        assert_eq!(
            (ups[0].workload_id, ups[0].status),
            (id(1), RunStatus::Stopped)
        );
        assert_eq!(b.running(), vec![id(2)]);
        assert_eq!(
            b.start(t0, start(3, "m", &[7], 1, 0.0)),
            Err(BackendError::UnknownGpu("w/gpu-7".into()))
        );
    }

    #[test]
    fn busy_gpus_report_high_utilisation_power_and_heat_and_idle_ones_do_not() {
        let mut b = backend();
        let t0 = Instant::now();
        let (work, _) = started(&mut b, t0, start(1, "llama-3-8b", &[0], 1000, 0.0));
        let mut last = Vec::new();
        for k in 0..20 {
            last = b.samples(work + secs(f64::from(k)));
        }
        let busy = &last[0];
        let idle = &last[1];
        assert!((90.0..=100.0).contains(&busy.utilization_pct), "{busy:?}");
        assert!(idle.utilization_pct <= 1.0, "{idle:?}");
        assert!(busy.power_w > 600.0 && idle.power_w < 100.0);
        assert!(busy.temperature_c > 65.0 && idle.temperature_c < 35.0);
        assert!(busy.memory_used_mib > 15_000 && idle.memory_used_mib == 0);
    }
}
