//! [`CudaBackend`]: the [`Backend`] over real GPUs. Each GPU has a dedicated thread (a
//! [`Lane`]) owning its [`GpuHost`], so CUDA calls never block the async runtime: the backend
//! sends it commands (switch to a model, work on or off, unbind, shut down) and collects what
//! it reports on [`Backend::poll`]. A run starts once every GPU of its gang has switched (the
//! reported switch takes each phase's slowest GPU); while it runs the threads push real
//! embedding batches, so NVML shows real load. Progress follows the (scaled) clock like the
//! simulator's, so runs, checkpoints and completions report the same way.
//!
//! The workload is all-MiniLM-L6-v2 whatever the model's name: the name keys the VRAM slot
//! (switching between names is real work), the weights are the MiniLM files.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use hcp_events::payload::{GpuSample, GpuSpec, ModelSwitch, RunStatus};
use uuid::Uuid;

use super::switch::GpuHost;
use super::telemetry::Telemetry;
use super::{CudaError, GpuInfo};
use crate::backend::{Backend, BackendError, RunUpdate, StartRun};
use crate::config::WorkerSettings;

/// Progress below 1 by less than this counts as done.
const EPS: f64 = 1e-9;
/// Longest wait for a GPU to embed a request's texts.
const EMBED_TIMEOUT: Duration = Duration::from_secs(120);
/// Sentences per background batch while a run works.
const WORK_BATCH: usize = 32;
const WORK_SENTENCES: [&str; 4] = [
    "A GPU in the data centre embeds this sentence.",
    "Sentence embeddings map text to vectors.",
    "The control plane schedules workloads on GPUs and ASICs.",
    "Batches keep the streaming multiprocessors busy.",
];

/// A command to a GPU's thread.
#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    /// Switch to `model` (load if needed, bind, first batch) for `workload`.
    Switch {
        /// The run.
        workload: Uuid,
        /// The model.
        model: String,
    },
    /// Push batches of `model` continuously (`true`) or stop (`false`).
    Work {
        /// The model.
        model: String,
        /// On or off.
        on: bool,
    },
    /// The run ended: the model's slot may be evicted.
    Unbind {
        /// The model.
        model: String,
    },
    /// Embed a request's texts with `model` (loaded again if it was evicted) and answer on
    /// `reply`.
    Embed {
        /// The model.
        model: String,
        /// The texts, in order.
        texts: Vec<String>,
        /// Where the embeddings (or why not) go.
        reply: ReplyTo,
    },
}

/// Embeddings of a request's texts, or why the GPU could not compute them.
pub type EmbedResult = Result<Vec<Vec<f32>>, String>;

/// Where a lane answers an [`Command::Embed`]. Commands compare by what they ask, so any two
/// of these compare equal.
#[derive(Debug, Clone)]
pub struct ReplyTo(pub mpsc::SyncSender<EmbedResult>);

impl PartialEq for ReplyTo {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

/// Sends commands to one GPU's thread from any thread.
pub type CommandSink = std::sync::Arc<dyn Fn(Command) + Send + Sync>;

/// What a GPU's thread reports.
#[derive(Debug, Clone, PartialEq)]
pub struct Switched {
    /// The run.
    pub workload: Uuid,
    /// The GPU.
    pub gpu_id: String,
    /// Timings, or why the switch failed.
    pub result: Result<ModelSwitch, String>,
}

/// One GPU as the backend drives it.
pub trait Lane: Send + std::fmt::Debug + 'static {
    /// The GPU's spec.
    fn spec(&self) -> GpuSpec;
    /// Sends a command (a dead thread drops it; its runs then never start and are reported
    /// failed by the caller's timeouts).
    fn send(&self, cmd: Command);
    /// Switches finished since the last call.
    fn finished(&self) -> Vec<Switched>;
    /// A telemetry sample.
    fn sample(&self) -> GpuSample;
    /// A handle that sends this GPU commands from other threads (the inference pool).
    fn sink(&self) -> CommandSink;
}

/// A GPU driven by its own thread.
#[derive(Debug)]
pub struct ThreadLane {
    info: GpuInfo,
    tx: Option<Sender<Command>>,
    /// In a mutex only so the backend is `Sync` (the node holds it across awaits).
    rx: std::sync::Mutex<Receiver<Switched>>,
    handle: Option<JoinHandle<()>>,
    telemetry: Option<std::sync::Arc<Telemetry>>,
}

impl ThreadLane {
    /// Opens the GPU on a new thread; fails when the GPU cannot be opened.
    pub fn spawn(
        info: GpuInfo,
        budget_fraction: f64,
        model_dir: PathBuf,
        telemetry: Option<std::sync::Arc<Telemetry>>,
    ) -> Result<Self, CudaError> {
        let (tx, cmd_rx) = mpsc::channel::<Command>();
        let (done_tx, rx) = mpsc::channel::<Switched>();
        let (ready_tx, ready_rx) = mpsc::channel::<Result<(), CudaError>>();
        let thread_info = info.clone();
        let handle = std::thread::Builder::new()
            .name(format!("gpu-{}", info.ordinal))
            .spawn(move || {
                let host = match GpuHost::open(thread_info, budget_fraction) {
                    Ok(h) => {
                        let _ = ready_tx.send(Ok(()));
                        h
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                lane_loop(host, &model_dir, &cmd_rx, &done_tx);
            })
            .map_err(|e| CudaError::Driver(format!("failed to start a GPU thread: {e}")))?;
        match ready_rx.recv() {
            Ok(Ok(())) => Ok(Self {
                info,
                tx: Some(tx),
                rx: std::sync::Mutex::new(rx),
                handle: Some(handle),
                telemetry,
            }),
            Ok(Err(e)) => {
                let _ = handle.join();
                Err(e)
            }
            Err(_) => {
                let _ = handle.join();
                Err(CudaError::Driver(
                    "the GPU thread died while opening".into(),
                ))
            }
        }
    }
}

impl Drop for ThreadLane {
    fn drop(&mut self) {
        // Closing the channel ends the loop, which frees every slot before the thread exits.
        self.tx.take();
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

fn lane_loop(
    mut host: GpuHost,
    model_dir: &std::path::Path,
    rx: &Receiver<Command>,
    done: &Sender<Switched>,
) {
    let gpu_id = host.info().uuid.clone();
    let mut working: Option<String> = None;
    let batch: Vec<&str> = (0..WORK_BATCH)
        .map(|i| WORK_SENTENCES[i % WORK_SENTENCES.len()])
        .collect();
    loop {
        let cmd = if working.is_some() {
            match rx.try_recv() {
                Ok(c) => Some(c),
                Err(mpsc::TryRecvError::Empty) => None,
                Err(mpsc::TryRecvError::Disconnected) => break,
            }
        } else {
            match rx.recv_timeout(Duration::from_millis(200)) {
                Ok(c) => Some(c),
                Err(RecvTimeoutError::Timeout) => None,
                Err(RecvTimeoutError::Disconnected) => break,
            }
        };
        match cmd {
            Some(Command::Switch { workload, model }) => {
                let result = host
                    .register(&model, model_dir)
                    .and_then(|()| host.switch(&model, &batch[..1]))
                    .map(|(t, _)| t.to_model_switch())
                    .map_err(|e| e.to_string());
                if let Err(e) = &result {
                    tracing::warn!(gpu = %gpu_id, %model, error = %e, "model switch failed");
                }
                let _ = done.send(Switched {
                    workload,
                    gpu_id: gpu_id.clone(),
                    result,
                });
            }
            Some(Command::Work { model, on }) => working = on.then_some(model),
            Some(Command::Embed {
                model,
                texts,
                reply,
            }) => {
                let _ = reply
                    .0
                    .send(embed_texts(&mut host, model_dir, &model, &texts));
            }
            Some(Command::Unbind { model }) => {
                if working.as_deref() == Some(model.as_str()) {
                    working = None;
                }
                let _ = host.unbind(&model);
            }
            None => {}
        }
        if let Some(m) = &working {
            if let Err(e) = host.embed(m, &batch) {
                tracing::warn!(gpu = %gpu_id, model = %m, error = %e, "batch failed");
                working = None;
            }
        }
    }
    if let Err(e) = host.clear() {
        tracing::warn!(gpu = %gpu_id, error = %e, "freeing VRAM at shutdown failed");
    }
}

/// A request's texts on this GPU: with the model resident (the run switched to it), else
/// loaded again first (evicted since), and unpinned again after.
fn embed_texts(
    host: &mut GpuHost,
    model_dir: &std::path::Path,
    model: &str,
    texts: &[String],
) -> EmbedResult {
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    if let Ok(v) = host.embed(model, &refs) {
        return Ok(v);
    }
    host.register(model, model_dir)
        .and_then(|()| host.switch(model, &refs[..refs.len().min(1)]))
        .and_then(|_| {
            let v = host.embed(model, &refs);
            let _ = host.unbind(model);
            v
        })
        .map_err(|e| format!("embedding on GPU {} failed: {e}", host.info().uuid))
}

impl Lane for ThreadLane {
    fn spec(&self) -> GpuSpec {
        self.info.spec()
    }

    fn send(&self, cmd: Command) {
        if let Some(tx) = &self.tx {
            let _ = tx.send(cmd);
        }
    }

    fn finished(&self) -> Vec<Switched> {
        self.rx
            .lock()
            .map(|rx| rx.try_iter().collect())
            .unwrap_or_default()
    }

    fn sample(&self) -> GpuSample {
        self.telemetry
            .as_ref()
            .and_then(|t| t.sample(&self.info.uuid).ok())
            .unwrap_or_default()
            .to_gpu_sample(&self.info.uuid)
    }

    fn sink(&self) -> CommandSink {
        let tx = self.tx.clone();
        std::sync::Arc::new(move |cmd| {
            if let Some(tx) = &tx {
                let _ = tx.send(cmd);
            }
        })
    }
}

/// Requests' texts on the GPUs of their run: the first GPU of the gang embeds them, between
/// its batches.
pub struct LaneEmbedder {
    sinks: BTreeMap<String, CommandSink>,
    timeout: Duration,
}

impl std::fmt::Debug for LaneEmbedder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LaneEmbedder")
            .field("gpus", &self.sinks.keys().collect::<Vec<_>>())
            .field("timeout", &self.timeout)
            .finish()
    }
}

impl crate::embed::Embedder for LaneEmbedder {
    fn embed(
        &self,
        model: &str,
        gpu_ids: &[String],
        texts: &[String],
    ) -> Result<hcp_events::payload::RunOutput, String> {
        crate::embed::check_model(model)?;
        let (gpu, sink) = gpu_ids
            .iter()
            .find_map(|g| self.sinks.get(g).map(|s| (g, s)))
            .ok_or_else(|| format!("none of the run's GPUs {gpu_ids:?} is on this worker"))?;
        let started = Instant::now();
        let (tx, rx) = mpsc::sync_channel(1);
        sink(Command::Embed {
            model: model.to_owned(),
            texts: texts.to_vec(),
            reply: ReplyTo(tx),
        });
        let vectors = rx.recv_timeout(self.timeout).map_err(|_| {
            format!(
                "GPU {gpu} did not answer within {} s",
                self.timeout.as_secs()
            )
        })??;
        Ok(hcp_events::payload::RunOutput::embeddings(
            crate::embed::EMBEDDING_MODEL,
            &vectors,
            "cuda",
            started.elapsed().as_secs_f64() * 1000.0,
        ))
    }
}

#[derive(Debug)]
struct Run {
    model: String,
    gpu_ids: Vec<String>,
    duration_s: f64,
    resume: f64,
    waiting: BTreeSet<String>,
    switches: Vec<ModelSwitch>,
    failure: Option<String>,
    started: bool,
    paused: bool,
    done_s: f64,
    since: Option<Instant>,
    last_checkpoint: f64,
}

impl Run {
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

    /// The gang's switch: each phase its slowest GPU's.
    fn merged_switch(&self) -> ModelSwitch {
        let max = |f: fn(&ModelSwitch) -> f64| self.switches.iter().map(f).fold(0.0, f64::max);
        ModelSwitch {
            model: self.model.clone(),
            resident: self.switches.iter().all(|s| s.resident),
            load_ms: max(|s| s.load_ms),
            bind_ms: max(|s| s.bind_ms),
            first_batch_ms: max(|s| s.first_batch_ms),
        }
    }
}

/// Real GPUs behind the [`Backend`] trait.
#[derive(Debug)]
pub struct CudaBackend<L: Lane = ThreadLane> {
    lanes: Vec<L>,
    runs: BTreeMap<Uuid, Run>,
    time_scale: f64,
    checkpoint_every: f64,
    checkpoint_min_s: f64,
}

impl CudaBackend<ThreadLane> {
    /// Opens every GPU (after [`super::require`]); the model files come from
    /// [`crate::minilm::model_dir`].
    pub fn open(settings: &WorkerSettings) -> Result<Self, CudaError> {
        let gpus = super::require(settings)?;
        let telemetry = Telemetry::init().ok().map(std::sync::Arc::new);
        let dir = crate::minilm::model_dir();
        let lanes = gpus
            .into_iter()
            .map(|g| {
                ThreadLane::spawn(
                    g,
                    settings.vram_budget_fraction,
                    dir.clone(),
                    telemetry.clone(),
                )
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self::with_lanes(lanes, settings))
    }
}

impl<L: Lane> CudaBackend<L> {
    /// A backend over given lanes (tests use lanes without a GPU).
    pub fn with_lanes(lanes: Vec<L>, settings: &WorkerSettings) -> Self {
        Self {
            lanes,
            runs: BTreeMap::new(),
            time_scale: settings.time_scale,
            checkpoint_every: settings.checkpoint_every,
            checkpoint_min_s: settings.checkpoint_min_s.max(0.0),
        }
    }

    fn lane(&self, gpu_id: &str) -> Option<&L> {
        self.lanes.iter().find(|l| l.spec().gpu_id == gpu_id)
    }

    fn send_all(&self, gpu_ids: &[String], cmd: &Command) {
        for id in gpu_ids {
            if let Some(l) = self.lane(id) {
                l.send(cmd.clone());
            }
        }
    }

    fn update(
        &self,
        id: Uuid,
        run: &Run,
        status: RunStatus,
        progress: f64,
        now: Instant,
    ) -> RunUpdate {
        RunUpdate {
            workload_id: id,
            status,
            progress,
            runtime_s: run.work_s(now, self.time_scale),
            detail: None,
            switch: None,
        }
    }

    fn end(&self, run: &Run) {
        self.send_all(
            &run.gpu_ids,
            &Command::Unbind {
                model: run.model.clone(),
            },
        );
    }

    fn run_mut(&mut self, id: Uuid) -> Result<&mut Run, BackendError> {
        self.runs.get_mut(&id).ok_or(BackendError::UnknownRun(id))
    }
}

impl<L: Lane> Backend for CudaBackend<L> {
    fn kind(&self) -> &'static str {
        "cuda"
    }

    fn gpus(&self) -> Vec<GpuSpec> {
        self.lanes.iter().map(Lane::spec).collect()
    }

    fn start(&mut self, now: Instant, run: StartRun) -> Result<Vec<RunUpdate>, BackendError> {
        if run.gpu_ids.is_empty() {
            return Err(BackendError::NoGpus);
        }
        if let Some(unknown) = run.gpu_ids.iter().find(|id| self.lane(id).is_none()) {
            return Err(BackendError::UnknownGpu(unknown.clone()));
        }
        if let Some(old) = self.runs.remove(&run.workload_id) {
            self.end(&old);
        }
        let displaced: Vec<Uuid> = self
            .runs
            .iter()
            .filter(|(_, r)| r.gpu_ids.iter().any(|g| run.gpu_ids.contains(g)))
            .map(|(id, _)| *id)
            .collect();
        let mut updates = Vec::new();
        for id in displaced {
            if let Some(r) = self.runs.remove(&id) {
                self.end(&r);
                let mut u = self.update(id, &r, RunStatus::Stopped, r.last_checkpoint, now);
                u.detail = Some("its GPUs were given to another run".into());
                updates.push(u);
            }
        }
        let resume = if run.resume_progress.is_finite() {
            run.resume_progress.clamp(0.0, 1.0)
        } else {
            0.0
        };
        self.send_all(
            &run.gpu_ids,
            &Command::Switch {
                workload: run.workload_id,
                model: run.model.clone(),
            },
        );
        self.runs.insert(
            run.workload_id,
            Run {
                model: run.model,
                waiting: run.gpu_ids.iter().cloned().collect(),
                gpu_ids: run.gpu_ids,
                duration_s: f64::from(run.duration_s),
                resume,
                switches: Vec::new(),
                failure: None,
                started: false,
                paused: false,
                done_s: 0.0,
                since: None,
                last_checkpoint: resume,
            },
        );
        Ok(updates)
    }

    fn pause(&mut self, now: Instant, workload_id: Uuid) -> Result<RunUpdate, BackendError> {
        let scale = self.time_scale;
        let run = self.run_mut(workload_id)?;
        run.bank(now, scale);
        run.paused = true;
        let p = run.progress(now, scale);
        let run = &self.runs[&workload_id];
        if run.started {
            self.send_all(
                &run.gpu_ids,
                &Command::Work {
                    model: run.model.clone(),
                    on: false,
                },
            );
        }
        Ok(self.update(workload_id, run, RunStatus::Paused, p, now))
    }

    fn resume(&mut self, now: Instant, workload_id: Uuid) -> Result<RunUpdate, BackendError> {
        let scale = self.time_scale;
        let run = self.run_mut(workload_id)?;
        let restart = run.paused && run.started;
        if run.paused {
            run.paused = false;
            if run.started {
                run.since = Some(now);
            }
        }
        let p = run.progress(now, scale);
        let run = &self.runs[&workload_id];
        if restart {
            self.send_all(
                &run.gpu_ids,
                &Command::Work {
                    model: run.model.clone(),
                    on: true,
                },
            );
        }
        Ok(self.update(workload_id, run, RunStatus::Resumed, p, now))
    }

    fn checkpoint(&mut self, now: Instant, workload_id: Uuid) -> Result<RunUpdate, BackendError> {
        let scale = self.time_scale;
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
        self.end(&run);
        let progress = if checkpoint {
            run.progress(now, self.time_scale).max(run.last_checkpoint)
        } else {
            run.last_checkpoint
        };
        let mut u = self.update(workload_id, &run, RunStatus::Stopped, progress, now);
        u.detail = Some(reason.to_owned());
        Ok(u)
    }

    fn poll(&mut self, now: Instant) -> Vec<RunUpdate> {
        for lane in &self.lanes {
            for s in lane.finished() {
                let Some(run) = self.runs.get_mut(&s.workload) else {
                    continue;
                };
                if !run.waiting.remove(&s.gpu_id) {
                    continue;
                }
                match s.result {
                    Ok(sw) => run.switches.push(sw),
                    Err(e) => {
                        run.failure
                            .get_or_insert(format!("model switch on {} failed: {e}", s.gpu_id));
                    }
                }
            }
        }
        let (scale, every, min_s) = (
            self.time_scale,
            self.checkpoint_every,
            self.checkpoint_min_s,
        );
        let mut updates = Vec::new();
        let mut done = Vec::new();
        let mut work_on = Vec::new();
        for (id, run) in &mut self.runs {
            if !run.started {
                if let Some(f) = &run.failure {
                    if run.waiting.is_empty() {
                        updates.push(RunUpdate {
                            workload_id: *id,
                            status: RunStatus::Failed,
                            progress: run.last_checkpoint,
                            runtime_s: 0.0,
                            detail: Some(f.clone()),
                            switch: None,
                        });
                        done.push(*id);
                    }
                    continue;
                }
                if !run.waiting.is_empty() {
                    continue;
                }
                run.started = true;
                if !run.paused {
                    run.since = Some(now);
                    work_on.push(*id);
                }
                updates.push(RunUpdate {
                    workload_id: *id,
                    status: RunStatus::Started,
                    progress: run.resume,
                    runtime_s: 0.0,
                    detail: None,
                    switch: Some(run.merged_switch()),
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
            } else if let Some(step) = crate::backend::checkpoint_step(every, min_s, run.duration_s)
            {
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
        for id in work_on {
            if let Some(r) = self.runs.get(&id) {
                self.send_all(
                    &r.gpu_ids,
                    &Command::Work {
                        model: r.model.clone(),
                        on: true,
                    },
                );
            }
        }
        for id in done {
            if let Some(r) = self.runs.remove(&id) {
                self.end(&r);
            }
        }
        updates
    }

    fn running(&self) -> Vec<Uuid> {
        self.runs.keys().copied().collect()
    }

    fn samples(&mut self, _now: Instant) -> Vec<GpuSample> {
        self.lanes.iter().map(Lane::sample).collect()
    }

    fn embedder(&self) -> Option<std::sync::Arc<dyn crate::embed::Embedder>> {
        Some(std::sync::Arc::new(LaneEmbedder {
            sinks: self
                .lanes
                .iter()
                .map(|l| (l.spec().gpu_id, l.sink()))
                .collect(),
            timeout: EMBED_TIMEOUT,
        }))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::sync::{Arc, Mutex};

    /// A GPU without CUDA: records commands; switches finish when the test says so.
    #[derive(Debug, Clone)]
    struct FakeLane {
        id: String,
        sent: Arc<Mutex<Vec<Command>>>,
        done: Arc<Mutex<Vec<Switched>>>,
    }

    impl FakeLane {
        fn new(id: &str) -> Self {
            Self {
                id: id.into(),
                sent: Arc::default(),
                done: Arc::default(),
            }
        }
        fn finish(&self, workload: Uuid, result: Result<ModelSwitch, String>) {
            self.done.lock().unwrap().push(Switched {
                workload,
                gpu_id: self.id.clone(),
                result,
            });
        }
        fn sent(&self) -> Vec<Command> {
            self.sent.lock().unwrap().clone()
        }
    }

    impl Lane for FakeLane {
        fn spec(&self) -> GpuSpec {
            GpuSpec {
                gpu_id: self.id.clone(),
                model: "H100".into(),
                memory_mib: 81_559,
            }
        }
        fn send(&self, cmd: Command) {
            self.sent.lock().unwrap().push(cmd);
        }
        fn finished(&self) -> Vec<Switched> {
            std::mem::take(&mut *self.done.lock().unwrap())
        }
        fn sample(&self) -> GpuSample {
            GpuSample {
                gpu_id: self.id.clone(),
                utilization_pct: 0.0,
                memory_used_mib: 0,
                power_w: 0.0,
                temperature_c: 0.0,
            }
        }
        /// Records the command; an `Embed` is answered with one `[len]` vector per text.
        fn sink(&self) -> CommandSink {
            let sent = self.sent.clone();
            Arc::new(move |cmd: Command| {
                if let Command::Embed { texts, reply, .. } = &cmd {
                    let v = texts.iter().map(|t| vec![t.len() as f32]).collect();
                    let _ = reply.0.send(Ok(v));
                }
                sent.lock().unwrap().push(cmd);
            })
        }
    }

    fn sw(load: f64, bind: f64, first: f64, resident: bool) -> ModelSwitch {
        ModelSwitch {
            model: "m".into(),
            resident,
            load_ms: load,
            bind_ms: bind,
            first_batch_ms: first,
        }
    }

    fn backend() -> (CudaBackend<FakeLane>, FakeLane, FakeLane) {
        let (a, b) = (FakeLane::new("GPU-a"), FakeLane::new("GPU-b"));
        let settings = WorkerSettings {
            time_scale: 1.0,
            checkpoint_every: 0.25,
            checkpoint_min_s: 0.0,
            ..Default::default()
        };
        (
            CudaBackend::with_lanes(vec![a.clone(), b.clone()], &settings),
            a,
            b,
        )
    }

    fn start(id: Uuid, gpus: &[&str]) -> StartRun {
        StartRun {
            workload_id: id,
            model: "m".into(),
            gpu_ids: gpus.iter().map(|g| (*g).to_owned()).collect(),
            duration_s: 100,
            resume_progress: 0.0,
        }
    }

    #[test]
    fn a_gang_run_starts_when_every_gpu_has_switched_reporting_the_slowest_phases() {
        let (mut be, a, b) = backend();
        let (t0, id) = (Instant::now(), Uuid::new_v4());
        be.start(t0, start(id, &["GPU-a", "GPU-b"])).unwrap();
        a.finish(id, Ok(sw(10.0, 1.0, 3.0, false)));
        assert!(be.poll(t0).is_empty());
        b.finish(id, Ok(sw(0.0, 2.0, 2.0, true)));
        let ups = be.poll(t0);
        assert_eq!(ups.len(), 1);
        assert_eq!(ups[0].status, RunStatus::Started);
        assert_eq!(ups[0].switch, Some(sw(10.0, 2.0, 3.0, false)));
        assert!(a.sent().contains(&Command::Work {
            model: "m".into(),
            on: true
        }));
    }

    #[test]
    fn progress_checkpoints_and_completion_follow_the_clock_and_free_the_gpus() {
        let (mut be, a, _) = backend();
        let (t0, id) = (Instant::now(), Uuid::new_v4());
        be.start(t0, start(id, &["GPU-a"])).unwrap();
        a.finish(id, Ok(sw(1.0, 1.0, 1.0, false)));
        be.poll(t0);
        let ups = be.poll(t0 + Duration::from_secs(30));
        assert_eq!(ups.len(), 1);
        assert_eq!(
            (ups[0].status, ups[0].progress),
            (RunStatus::Checkpointed, 0.25)
        );
        let ups = be.poll(t0 + Duration::from_secs(101));
        assert_eq!(ups[0].status, RunStatus::Completed);
        assert_eq!(ups[0].runtime_s, 100.0);
        assert!(be.running().is_empty());
        assert_eq!(
            a.sent().last(),
            Some(&Command::Unbind { model: "m".into() })
        );
    }

    #[test]
    fn a_failed_switch_fails_the_run_with_the_reason() {
        let (mut be, a, _) = backend();
        let (t0, id) = (Instant::now(), Uuid::new_v4());
        be.start(t0, start(id, &["GPU-a"])).unwrap();
        a.finish(id, Err("model m needs 2 bytes".into()));
        let ups = be.poll(t0);
        assert_eq!(ups[0].status, RunStatus::Failed);
        assert!(ups[0].detail.as_deref().unwrap().contains("needs 2 bytes"));
        assert!(be.running().is_empty());
    }

    #[test]
    fn pause_stops_the_batches_and_freezes_progress_until_resume() {
        let (mut be, a, _) = backend();
        let (t0, id) = (Instant::now(), Uuid::new_v4());
        be.start(t0, start(id, &["GPU-a"])).unwrap();
        a.finish(id, Ok(sw(1.0, 1.0, 1.0, true)));
        be.poll(t0);
        let p = be.pause(t0 + Duration::from_secs(10), id).unwrap();
        assert_eq!(p.progress, 0.1);
        assert_eq!(
            a.sent().last(),
            Some(&Command::Work {
                model: "m".into(),
                on: false
            })
        );
        let r = be.resume(t0 + Duration::from_secs(50), id).unwrap();
        assert_eq!(r.progress, 0.1);
        let s = be
            .stop(t0 + Duration::from_secs(60), id, true, "preempted")
            .unwrap();
        assert!((s.progress - 0.2).abs() < 1e-9);
        assert_eq!(s.detail.as_deref(), Some("preempted"));
    }

    #[test]
    fn a_requests_texts_go_to_the_first_gpu_of_its_run_and_come_back_as_cuda_embeddings() {
        let (be, a, b) = backend();
        let e = be.embedder().unwrap();
        let texts = vec!["ab".to_owned(), "abcd".to_owned()];
        let gpus = ["GPU-b".to_owned(), "GPU-a".to_owned()];
        let out = e.embed("all-MiniLM-L6-v2", &gpus, &texts).unwrap();
        assert_eq!(out.decode_vectors().unwrap(), vec![vec![2.0], vec![4.0]]);
        let hcp_events::payload::RunOutput::Embeddings { device, .. } = &out;
        assert_eq!(device, "cuda");
        assert!(a.sent().is_empty());
        assert!(matches!(
            b.sent().as_slice(),
            [Command::Embed { model, .. }] if model == "all-MiniLM-L6-v2"
        ));
        let err = e.embed("llama-3-70b", &gpus, &texts).unwrap_err();
        assert!(err.contains("no inference implementation"), "{err}");
        let err = e
            .embed("all-MiniLM-L6-v2", &["GPU-z".to_owned()], &texts)
            .unwrap_err();
        assert!(err.contains("GPU-z"), "{err}");
    }

    #[test]
    fn a_start_on_held_gpus_stops_the_holder_and_unknown_gpus_are_refused() {
        let (mut be, _, _) = backend();
        let (t0, first, second) = (Instant::now(), Uuid::new_v4(), Uuid::new_v4());
        be.start(t0, start(first, &["GPU-a"])).unwrap();
        let ups = be.start(t0, start(second, &["GPU-a", "GPU-b"])).unwrap();
        assert_eq!(ups.len(), 1);
        assert_eq!(
            (ups[0].workload_id, ups[0].status),
            (first, RunStatus::Stopped)
        );
        assert_eq!(
            be.start(t0, start(first, &["GPU-z"])),
            Err(BackendError::UnknownGpu("GPU-z".into()))
        );
        assert_eq!(be.start(t0, start(first, &[])), Err(BackendError::NoGpus));
        assert_eq!(be.gpus().len(), 2);
        assert_eq!(be.kind(), "cuda");
    }
}
