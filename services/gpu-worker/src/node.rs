//! The worker process: one or more workers (each a [`Backend`]) sharing one command consumer
//! and one idempotent producer. It consumes `device-commands` with a plain consumer (group
//! `<namespace>.gpu-worker.<base id>`), obeys commands for its own worker ids once each, advances
//! runs every tick, and produces run reports and heartbeats straight to `worker-reports` (stream
//! `reports-<worker>`, sequence = a strictly increasing µs clock). No database.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use hcp_bus::{BusError, KafkaSettings, OutgoingMessage, Producer};
use hcp_events::payload::{
    CommandAction, DeviceCommand, InferenceInput, RunOutput, RunReported, RunStatus,
    WorkerHeartbeat,
};
use hcp_events::{headers, pack, report_stream, Envelope, Event, Topic};
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::message::{BorrowedMessage, Message};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::backend::sim::SimBackend;
use crate::backend::{Backend, BackendError, RunUpdate, StartRun};
use crate::clock::MicrosClock;
use crate::commands::{CommandFilter, Verdict};
use crate::config::WorkerSettings;
use crate::embed::{CpuEmbedder, Embedder};
use crate::metrics as m;
use crate::minilm;

/// The `producer` of every envelope a worker sends.
pub const PRODUCER: &str = "gpu-worker";

/// How many obeyed command ids are remembered per process.
const DEDUP_CAPACITY: usize = 100_000;

/// Why the worker process stopped.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// Kafka clients could not be created or subscribed.
    #[error(transparent)]
    Bus(#[from] BusError),
    /// The consumer failed to subscribe.
    #[error("kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
}

/// The command a run answers to: its reports carry its id as causation, its correlation and
/// its trace.
#[derive(Debug, Clone)]
struct Cause {
    event_id: Uuid,
    correlation_id: Uuid,
    traceparent: Option<String>,
    tracestate: Option<String>,
}

#[derive(Debug)]
struct Worker<B> {
    id: String,
    backend: B,
    causes: HashMap<Uuid, Cause>,
    /// Inference on the inputs of runs that carry them, by workload.
    jobs: HashMap<Uuid, Job>,
    /// What computes it: the backend's devices, or the CPU.
    embedder: Arc<dyn Embedder>,
}

/// The inference of one start of a run with inputs. It computes off the runtime while the run
/// goes on; the backend's `completed` is held until it is done and then reported with the
/// output (or as `failed`, with the reason, when inference failed).
#[derive(Debug)]
struct Job {
    /// Tells this start's result from that of an earlier start of the same workload.
    id: Uuid,
    result: Option<Result<RunOutput, String>>,
    held: Option<RunUpdate>,
    /// Set when the run ends first: a job still waiting for a thread is then skipped.
    cancelled: Arc<AtomicBool>,
}

/// Ends a run's job, if it has one; a result that comes later is dropped.
fn end_job(jobs: &mut HashMap<Uuid, Job>, workload_id: Uuid) {
    if let Some(job) = jobs.remove(&workload_id) {
        job.cancelled.store(true, Ordering::Relaxed);
    }
}

/// A task for the inference threads.
struct Task {
    cancelled: Arc<AtomicBool>,
    run: Box<dyn FnOnce() + Send>,
}

/// A fixed set of inference threads (one per core) fed in order, so a burst of requests queues
/// instead of oversubscribing the cores the node's heartbeats also need. Dropping it ends the
/// threads once the queue is empty.
#[derive(Debug)]
struct InferencePool {
    tx: std::sync::mpsc::Sender<Task>,
}

impl std::fmt::Debug for Task {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Task")
            .field("cancelled", &self.cancelled)
            .finish_non_exhaustive()
    }
}

impl InferencePool {
    fn new(threads: usize) -> Self {
        let (tx, rx) = std::sync::mpsc::channel::<Task>();
        let rx = Arc::new(Mutex::new(rx));
        for i in 0..threads.max(1) {
            let rx = rx.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("inference-{i}"))
                .spawn(move || loop {
                    let next = rx.lock().unwrap_or_else(PoisonError::into_inner).recv();
                    let Ok(task) = next else { break };
                    if !task.cancelled.load(Ordering::Relaxed) {
                        (task.run)();
                    }
                });
            if let Err(e) = spawned {
                tracing::error!(error = %e, "cannot start an inference thread");
            }
        }
        Self { tx }
    }
}

/// An inference job's result: worker index, workload, job id, result.
type JobDone = (usize, Uuid, Uuid, Result<RunOutput, String>);

/// A report or heartbeat waiting to be produced.
#[derive(Debug)]
struct Pending {
    envelope: Envelope,
    cause: Option<Cause>,
    /// Heartbeats are dropped when a send fails (the next one supersedes them); run reports
    /// are retried.
    retry: bool,
}

/// The workers of one process.
#[derive(Debug)]
pub struct WorkerNode<B> {
    settings: WorkerSettings,
    kafka: KafkaSettings,
    workers: Vec<Worker<B>>,
    clock: MicrosClock,
    pool: InferencePool,
    jobs_tx: mpsc::UnboundedSender<JobDone>,
    jobs_rx: mpsc::UnboundedReceiver<JobDone>,
}

impl WorkerNode<SimBackend> {
    /// `settings.count` simulated workers.
    pub fn simulated(settings: WorkerSettings, kafka: KafkaSettings) -> Self {
        let backends = settings
            .worker_ids()
            .into_iter()
            .map(|id| {
                let b = SimBackend::from_settings(&id, &settings);
                (id, b)
            })
            .collect();
        Self::new(settings, kafka, backends)
    }
}

impl<B: Backend> WorkerNode<B> {
    /// Workers over the given backends, by worker id.
    /// Inputs are embedded on the CPU by all-MiniLM-L6-v2 from [`minilm::model_dir`].
    pub fn new(settings: WorkerSettings, kafka: KafkaSettings, backends: Vec<(String, B)>) -> Self {
        let (jobs_tx, jobs_rx) = mpsc::unbounded_channel();
        let cpu: Arc<dyn Embedder> = Arc::new(CpuEmbedder::new(minilm::model_dir()));
        Self {
            settings,
            kafka,
            workers: backends
                .into_iter()
                .map(|(id, backend)| Worker {
                    embedder: backend.embedder().unwrap_or_else(|| cpu.clone()),
                    id,
                    backend,
                    causes: HashMap::new(),
                    jobs: HashMap::new(),
                })
                .collect(),
            clock: MicrosClock::new(),
            pool: InferencePool::new(
                std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get),
            ),
            jobs_tx,
            jobs_rx,
        }
    }

    /// Replaces what computes the inference of runs with inputs, on every worker.
    pub fn with_embedder(mut self, embedder: Arc<dyn Embedder>) -> Self {
        for w in &mut self.workers {
            w.embedder = embedder.clone();
        }
        self
    }

    /// The worker ids this process runs.
    pub fn worker_ids(&self) -> Vec<String> {
        self.workers.iter().map(|w| w.id.clone()).collect()
    }

    /// Runs until `shutdown` is cancelled, then flushes what is pending.
    pub async fn run(mut self, shutdown: CancellationToken) -> Result<(), WorkerError> {
        let base = self.settings.base_id();
        let producer = Producer::new(&self.kafka, &format!("gpu-worker-{base}"))?;
        let group = format!("{}.gpu-worker.{base}", self.kafka.namespace);
        let consumer: StreamConsumer = self
            .kafka
            .consumer_config(&group, &group)
            .create()
            .map_err(|e| BusError::Config(e.to_string()))?;
        consumer.subscribe(&[&self.kafka.topic(Topic::DeviceCommands)])?;
        let reports_topic = self.kafka.topic(Topic::WorkerReports);
        let mut filter = CommandFilter::new(self.worker_ids(), DEDUP_CAPACITY);
        let mut tick = tokio::time::interval(self.settings.tick());
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let heartbeat = self.settings.heartbeat();
        let mut next_heartbeat = Instant::now();
        let mut pending: Vec<Pending> = Vec::new();
        tracing::info!(workers = self.workers.len(), %group, "gpu worker started");
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                msg = consumer.recv() => match msg {
                    Ok(msg) => {
                        self.on_message(&msg, &mut filter, &mut pending);
                        if let Err(e) = consumer.commit_message(&msg, CommitMode::Async) {
                            tracing::debug!(error = %e, "command offset commit failed");
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "command consumer error");
                        tokio::time::sleep(self.settings.tick()).await;
                    }
                },
                Some(done) = self.jobs_rx.recv() => self.on_job_done(done, &mut pending),
                _ = tick.tick() => {
                    let now = Instant::now();
                    self.poll(now, &mut pending);
                    if now >= next_heartbeat {
                        self.heartbeats(now, &mut pending);
                        next_heartbeat = now + heartbeat;
                    }
                }
            }
            if !pending.is_empty() {
                self.send(&producer, &reports_topic, &mut pending).await;
            }
        }
        if !pending.is_empty() {
            self.send(&producer, &reports_topic, &mut pending).await;
        }
        let _ = producer.flush(std::time::Duration::from_secs(2));
        if let Err(e) = consumer.commit_consumer_state(CommitMode::Sync) {
            tracing::debug!(error = %e, "final command offset commit failed");
        }
        hcp_bus::close_consumer(consumer, "gpu-worker", hcp_bus::close::CLOSE_TIMEOUT).await;
        tracing::info!("gpu worker stopped");
        Ok(())
    }

    fn on_message(
        &mut self,
        msg: &BorrowedMessage<'_>,
        filter: &mut CommandFilter,
        pending: &mut Vec<Pending>,
    ) {
        let undecodable = |e: &dyn std::fmt::Display| {
            tracing::warn!(error = %e, offset = msg.offset(), "ignoring an undecodable command");
            metrics::counter!(m::COMMANDS, "action" => "unknown", "outcome" => "malformed")
                .increment(1);
        };
        let items = match pack::items(msg.payload().unwrap_or_default()) {
            Ok(items) => items,
            Err(e) => return undecodable(&e),
        };
        for item in items {
            match item.decode() {
                Ok(envelope) => {
                    let parent = hcp_bus::trace::context_of_item(msg.headers(), &item);
                    self.on_command(&envelope, parent, filter, pending);
                }
                Err(e) => undecodable(&e),
            }
        }
    }

    /// Handles one decoded event of the command topic (commands for other workers and other
    /// events are ignored).
    fn on_command(
        &mut self,
        envelope: &Envelope,
        parent: hcp_bus::trace::Context,
        filter: &mut CommandFilter,
        pending: &mut Vec<Pending>,
    ) {
        let Event::DeviceCommand(cmd) = &envelope.payload else {
            return;
        };
        let verdict = filter.check(cmd);
        metrics::counter!(m::COMMANDS, "action" => action_name(&cmd.action), "outcome" => verdict.as_str())
            .increment(1);
        if verdict != Verdict::Obey {
            if verdict == Verdict::AlreadyObeyed {
                tracing::debug!(command_id = %cmd.command_id, "ignoring a command obeyed before");
            }
            return;
        }
        let span = tracing::info_span!(
            "device_command",
            worker_id = %cmd.worker_id,
            workload_id = %cmd.workload_id,
            action = action_name(&cmd.action),
        );
        hcp_bus::trace::set_parent(&span, parent);
        let _entered = span.enter();
        let (traceparent, tracestate) = hcp_bus::trace::current_trace_headers();
        let cause = Cause {
            event_id: envelope.event_id,
            correlation_id: envelope.correlation_id,
            traceparent,
            tracestate,
        };
        self.obey(cmd, cause, Instant::now(), pending);
    }

    fn obey(
        &mut self,
        cmd: &DeviceCommand,
        cause: Cause,
        now: Instant,
        pending: &mut Vec<Pending>,
    ) {
        let Some(wi) = self.workers.iter().position(|w| w.id == cmd.worker_id) else {
            return;
        };
        let w = &mut self.workers[wi];
        let id = cmd.workload_id;
        let result: Result<Vec<RunUpdate>, BackendError> = match &cmd.action {
            CommandAction::Start {
                model,
                gpu_ids,
                duration_s,
                resume_progress,
                input,
            } => {
                tracing::info!(%model, gpus = gpu_ids.len(), resume_progress, "starting run");
                w.causes.insert(id, cause.clone());
                let started = w.backend.start(
                    now,
                    StartRun {
                        workload_id: id,
                        model: model.clone(),
                        gpu_ids: gpu_ids.clone(),
                        duration_s: *duration_s,
                        resume_progress: *resume_progress,
                    },
                );
                // A new start replaces the job of an earlier one (its result is then dropped).
                end_job(&mut w.jobs, id);
                if let (Ok(_), Some(input)) = (&started, input) {
                    let job = queue_job(
                        &w.embedder,
                        &self.pool,
                        &self.jobs_tx,
                        (wi, id),
                        model,
                        gpu_ids,
                        input,
                    );
                    w.jobs.insert(id, job);
                }
                started
            }
            CommandAction::Pause => w.backend.pause(now, id).map(|u| vec![u]),
            CommandAction::Resume => w.backend.resume(now, id).map(|u| vec![u]),
            CommandAction::Checkpoint => w.backend.checkpoint(now, id).map(|u| vec![u]),
            CommandAction::Stop { checkpoint, reason } => {
                tracing::info!(checkpoint, %reason, "stopping run");
                // Also when the backend already finished the run and its completion waits for
                // the inference: the stop ends that wait, and nothing more is reported.
                end_job(&mut w.jobs, id);
                w.backend
                    .stop(now, id, *checkpoint, reason)
                    .map(|u| vec![u])
            }
        };
        let updates = match result {
            Ok(updates) => updates,
            Err(BackendError::UnknownRun(_)) => {
                tracing::debug!(workload_id = %id, "command for a run this worker does not hold");
                return;
            }
            Err(e) => {
                tracing::warn!(workload_id = %id, error = %e, "run failed to start");
                vec![RunUpdate {
                    workload_id: id,
                    status: RunStatus::Failed,
                    progress: 0.0,
                    runtime_s: 0.0,
                    detail: Some(e.to_string()),
                    switch: None,
                }]
            }
        };
        for u in updates {
            let c = if u.workload_id == id {
                Some(cause.clone())
            } else {
                w.causes.get(&u.workload_id).cloned()
            };
            deliver(w, u, c, &self.clock, pending);
        }
    }

    fn poll(&mut self, now: Instant, pending: &mut Vec<Pending>) {
        let mut runs = 0;
        for w in &mut self.workers {
            for u in w.backend.poll(now) {
                let c = w.causes.get(&u.workload_id).cloned();
                deliver(w, u, c, &self.clock, pending);
            }
            runs += w.backend.running().len();
        }
        metrics::gauge!(m::RUNS).set(runs as f64);
    }

    /// An inference job finished: its run's held completion goes out now, or the result waits
    /// for the completion. A job whose run ended (stopped, failed) or was started again is
    /// dropped.
    fn on_job_done(&mut self, (wi, id, job_id, result): JobDone, pending: &mut Vec<Pending>) {
        let Some(w) = self.workers.get_mut(wi) else {
            return;
        };
        let Some(job) = w.jobs.get_mut(&id).filter(|j| j.id == job_id) else {
            tracing::debug!(workload_id = %id, "dropping the inference result of an ended run");
            return;
        };
        match job.held.take() {
            Some(u) => {
                w.jobs.remove(&id);
                let c = w.causes.get(&id).cloned();
                let (u, output) = with_result(u, result);
                pending.push(report(&w.id, &mut w.causes, u, output, c, &self.clock));
            }
            None => job.result = Some(result),
        }
    }

    fn heartbeats(&mut self, now: Instant, pending: &mut Vec<Pending>) {
        for w in &mut self.workers {
            let mut e = Envelope::new(
                report_stream(&w.id),
                PRODUCER,
                Event::WorkerHeartbeat(WorkerHeartbeat {
                    worker_id: w.id.clone(),
                    site: self.settings.site.clone(),
                    backend: w.backend.kind().to_owned(),
                    gpus: w.backend.gpus(),
                    // A run whose completion waits for its inference still holds its work.
                    running: w
                        .backend
                        .running()
                        .into_iter()
                        .chain(
                            w.jobs
                                .iter()
                                .filter(|(_, j)| j.held.is_some())
                                .map(|(id, _)| *id),
                        )
                        .collect(),
                    samples: w.backend.samples(now),
                }),
            );
            e.sequence = self.clock.next();
            pending.push(Pending {
                envelope: e,
                cause: None,
                retry: false,
            });
        }
        metrics::counter!(m::HEARTBEATS).increment(self.workers.len() as u64);
    }

    /// Produces everything pending in order. On failure heartbeats are dropped and run
    /// reports kept for the next attempt with fresh sequences (a report that did arrive is
    /// then a duplicate the resource-manager ignores by state).
    async fn send(&self, producer: &Producer, topic: &str, pending: &mut Vec<Pending>) {
        let messages: Vec<OutgoingMessage> =
            pending.iter().filter_map(|p| outgoing(topic, p)).collect();
        match producer.send_packed(&messages).await {
            Ok(()) => pending.clear(),
            Err(e) => {
                metrics::counter!(m::SEND_FAILURES).increment(1);
                pending.retain(|p| p.retry);
                tracing::warn!(error = %e, kept = pending.len(), "report send failed; retrying");
                for p in pending.iter_mut() {
                    p.envelope.sequence = self.clock.next();
                }
            }
        }
    }
}

/// Queues the inference of a run's inputs on the pool; the result comes back on `tx`. A panic
/// in the embedder fails the run with the reason instead of holding it for ever.
fn queue_job(
    embedder: &Arc<dyn Embedder>,
    pool: &InferencePool,
    tx: &mpsc::UnboundedSender<JobDone>,
    (wi, workload_id): (usize, Uuid),
    model: &str,
    gpu_ids: &[String],
    input: &InferenceInput,
) -> Job {
    let job_id = Uuid::now_v7();
    let cancelled = Arc::new(AtomicBool::new(false));
    let (embedder, tx) = (embedder.clone(), tx.clone());
    let (model, gpu_ids, texts) = (model.to_owned(), gpu_ids.to_vec(), input.texts.clone());
    let run = Box::new(move || {
        let started = Instant::now();
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            embedder.embed(&model, &gpu_ids, &texts)
        }))
        .unwrap_or_else(|_| Err("inference failed on the worker (the embedder panicked)".into()));
        let outcome = if result.is_ok() { "ok" } else { "error" };
        metrics::histogram!(m::INFERENCE, "outcome" => outcome)
            .record(started.elapsed().as_secs_f64());
        let _ = tx.send((wi, workload_id, job_id, result));
    });
    let queued = pool.tx.send(Task {
        cancelled: cancelled.clone(),
        run,
    });
    Job {
        id: job_id,
        result: queued
            .err()
            .map(|_| Err("the worker's inference threads are gone".into())),
        held: None,
        cancelled,
    }
}

/// Reports an update, except that a completion whose inference is still running is held
/// until the job is done; the end of a run ends its job.
fn deliver<B>(
    w: &mut Worker<B>,
    u: RunUpdate,
    cause: Option<Cause>,
    clock: &MicrosClock,
    pending: &mut Vec<Pending>,
) {
    let mut output = None;
    let mut u = u;
    if let Some(job) = w.jobs.get_mut(&u.workload_id) {
        match u.status {
            RunStatus::Completed => match job.result.take() {
                None => {
                    job.held = Some(u);
                    return;
                }
                Some(result) => {
                    end_job(&mut w.jobs, u.workload_id);
                    (u, output) = with_result(u, result);
                }
            },
            RunStatus::Failed | RunStatus::Stopped => end_job(&mut w.jobs, u.workload_id),
            _ => {}
        }
    }
    pending.push(report(&w.id, &mut w.causes, u, output, cause, clock));
}

/// A completion with its inference result: the output, or `failed` with the reason.
fn with_result(
    mut u: RunUpdate,
    result: Result<RunOutput, String>,
) -> (RunUpdate, Option<RunOutput>) {
    match result {
        Ok(o) => (u, Some(o)),
        Err(reason) => {
            u.status = RunStatus::Failed;
            u.detail = Some(reason);
            (u, None)
        }
    }
}

/// A run update as a pending `run.reported`.
fn report(
    worker_id: &str,
    causes: &mut HashMap<Uuid, Cause>,
    u: RunUpdate,
    output: Option<RunOutput>,
    cause: Option<Cause>,
    clock: &MicrosClock,
) -> Pending {
    metrics::counter!(m::REPORTS, "status" => status_name(u.status)).increment(1);
    if let Some(s) = &u.switch {
        if !s.resident {
            metrics::histogram!(m::MODEL_SWITCH, "phase" => "load").record(s.load_ms / 1000.0);
        }
        metrics::histogram!(m::MODEL_SWITCH, "phase" => "bind").record(s.bind_ms / 1000.0);
        metrics::histogram!(m::MODEL_SWITCH, "phase" => "first_batch")
            .record(s.first_batch_ms / 1000.0);
        metrics::histogram!(m::MODEL_SWITCH, "phase" => "total")
            .record((s.load_ms + s.bind_ms + s.first_batch_ms) / 1000.0);
    }
    if matches!(
        u.status,
        RunStatus::Completed | RunStatus::Failed | RunStatus::Stopped
    ) {
        causes.remove(&u.workload_id);
    }
    tracing::debug!(workload_id = %u.workload_id, status = status_name(u.status), progress = u.progress, "run report");
    let mut e = Envelope::new(
        report_stream(worker_id),
        PRODUCER,
        Event::RunReported(RunReported {
            workload_id: u.workload_id,
            worker_id: worker_id.to_owned(),
            status: u.status,
            progress: u.progress,
            runtime_s: u.runtime_s,
            detail: u.detail,
            switch: u.switch,
            output,
        }),
    );
    if let Some(c) = &cause {
        e.causation_id = Some(c.event_id);
        e.correlation_id = c.correlation_id;
    }
    e.sequence = clock.next();
    Pending {
        envelope: e,
        cause,
        retry: true,
    }
}

fn outgoing(topic: &str, p: &Pending) -> Option<OutgoingMessage> {
    let payload = match p.envelope.to_json() {
        Ok(b) => b,
        Err(e) => {
            tracing::error!(error = %e, "cannot encode a report; dropping it");
            return None;
        }
    };
    let mut hs = vec![
        (
            headers::EVENT_TYPE.to_owned(),
            p.envelope.event_type().as_str().as_bytes().to_vec(),
        ),
        (
            headers::SCHEMA_VERSION.to_owned(),
            p.envelope.schema_version.to_string().into_bytes(),
        ),
        (
            headers::EVENT_ID.to_owned(),
            p.envelope.event_id.to_string().into_bytes(),
        ),
    ];
    if let Some(c) = &p.cause {
        if let Some(tp) = &c.traceparent {
            hs.push((headers::TRACEPARENT.to_owned(), tp.clone().into_bytes()));
        }
        if let Some(ts) = &c.tracestate {
            hs.push((headers::TRACESTATE.to_owned(), ts.clone().into_bytes()));
        }
    }
    Some(OutgoingMessage {
        topic: topic.to_owned(),
        key: p.envelope.stream_id.clone(),
        payload,
        headers: hs,
    })
}

fn action_name(a: &CommandAction) -> &'static str {
    match a {
        CommandAction::Start { .. } => "start",
        CommandAction::Pause => "pause",
        CommandAction::Resume => "resume",
        CommandAction::Checkpoint => "checkpoint",
        CommandAction::Stop { .. } => "stop",
    }
}

fn status_name(s: RunStatus) -> &'static str {
    match s {
        RunStatus::Started => "started",
        RunStatus::Checkpointed => "checkpointed",
        RunStatus::Paused => "paused",
        RunStatus::Resumed => "resumed",
        RunStatus::Completed => "completed",
        RunStatus::Failed => "failed",
        RunStatus::Stopped => "stopped",
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn node() -> WorkerNode<SimBackend> {
        let settings = WorkerSettings {
            worker_id: "n".into(),
            count: 2,
            time_scale: 100.0,
            ..Default::default()
        };
        WorkerNode::simulated(settings, KafkaSettings::new("127.0.0.1:1"))
    }

    fn cause() -> Cause {
        Cause {
            event_id: Uuid::from_u128(42),
            correlation_id: Uuid::from_u128(43),
            traceparent: None,
            tracestate: None,
        }
    }

    fn start(worker: &str, workload: u128, gpus: &[&str]) -> DeviceCommand {
        DeviceCommand {
            command_id: Uuid::now_v7(),
            worker_id: worker.into(),
            workload_id: Uuid::from_u128(workload),
            action: CommandAction::Start {
                model: "m".into(),
                gpu_ids: gpus.iter().map(|g| (*g).to_owned()).collect(),
                duration_s: 10,
                resume_progress: 0.0,
                input: None,
            },
        }
    }

    fn reported(p: &Pending) -> &RunReported {
        match &p.envelope.payload {
            Event::RunReported(r) => r,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_start_runs_on_the_named_worker_only_and_reports_carry_its_cause() {
        let mut n = node();
        assert_eq!(n.worker_ids(), vec!["n-0", "n-1"]);
        let mut pending = Vec::new();
        let t0 = Instant::now();
        n.obey(&start("n-1", 1, &["n-1/gpu-0"]), cause(), t0, &mut pending);
        assert!(
            pending.is_empty(),
            "the start report waits for the model switch"
        );
        assert!(n.workers[0].backend.running().is_empty());
        assert_eq!(n.workers[1].backend.running(), vec![Uuid::from_u128(1)]);
        n.poll(t0 + std::time::Duration::from_secs(60), &mut pending);
        let statuses: Vec<RunStatus> = pending.iter().map(|p| reported(p).status).collect();
        assert_eq!(statuses.first(), Some(&RunStatus::Started));
        assert_eq!(statuses.last(), Some(&RunStatus::Completed));
        for p in &pending {
            assert_eq!(p.envelope.stream_id, "reports-n-1");
            assert_eq!(p.envelope.causation_id, Some(Uuid::from_u128(42)));
            assert_eq!(p.envelope.correlation_id, Uuid::from_u128(43));
        }
        assert!(pending
            .windows(2)
            .all(|w| w[0].envelope.sequence < w[1].envelope.sequence));
    }

    #[test]
    fn a_start_on_an_unknown_gpu_reports_failed() {
        let mut n = node();
        let mut pending = Vec::new();
        n.obey(
            &start("n-0", 1, &["n-1/gpu-0"]),
            cause(),
            Instant::now(),
            &mut pending,
        );
        assert_eq!(pending.len(), 1);
        let r = reported(&pending[0]);
        assert_eq!(r.status, RunStatus::Failed);
        assert_eq!(
            r.detail.as_deref(),
            Some("GPU n-1/gpu-0 is not on this worker")
        );
    }

    /// Answers once `gate` is released: "ok" texts embed to their length, "panic" panics,
    /// others fail.
    #[derive(Debug)]
    struct GatedEmbedder {
        gate: std::sync::Mutex<std::sync::mpsc::Receiver<()>>,
    }

    impl Embedder for GatedEmbedder {
        fn embed(
            &self,
            model: &str,
            _gpu_ids: &[String],
            texts: &[String],
        ) -> Result<RunOutput, String> {
            self.gate.lock().unwrap().recv().unwrap();
            assert!(texts.iter().all(|t| t != "panic"), "embedder bug");
            if texts.iter().any(|t| t != "ok") {
                return Err(format!("{model} refused"));
            }
            let v: Vec<Vec<f32>> = texts.iter().map(|t| vec![t.len() as f32]).collect();
            Ok(RunOutput::embeddings(model, &v, "test", 0.0))
        }
    }

    fn gated() -> (WorkerNode<SimBackend>, std::sync::mpsc::Sender<()>) {
        let (tx, rx) = std::sync::mpsc::channel();
        let n = node().with_embedder(Arc::new(GatedEmbedder {
            gate: std::sync::Mutex::new(rx),
        }));
        (n, tx)
    }

    fn with_input(mut cmd: DeviceCommand, texts: &[&str]) -> DeviceCommand {
        if let CommandAction::Start { input, .. } = &mut cmd.action {
            *input = Some(InferenceInput {
                texts: texts.iter().map(|t| (*t).to_owned()).collect(),
            });
        }
        cmd
    }

    #[tokio::test]
    async fn a_completion_waits_for_its_inference_and_carries_the_output() {
        let (mut n, gate) = gated();
        let mut pending = Vec::new();
        let t0 = Instant::now();
        let cmd = with_input(start("n-0", 1, &["n-0/gpu-0"]), &["ok", "ok"]);
        n.obey(&cmd, cause(), t0, &mut pending);
        n.poll(t0 + std::time::Duration::from_secs(60), &mut pending);
        let statuses: Vec<RunStatus> = pending.iter().map(|p| reported(p).status).collect();
        assert!(statuses.contains(&RunStatus::Started));
        assert!(
            !statuses.contains(&RunStatus::Completed),
            "the completion waits for the inference"
        );
        // Still held: heartbeats keep listing it, so the resource-manager does not requeue it.
        pending.clear();
        n.heartbeats(t0, &mut pending);
        let Event::WorkerHeartbeat(h) = &pending[0].envelope.payload else {
            panic!()
        };
        assert_eq!(h.running, vec![Uuid::from_u128(1)]);
        pending.clear();
        gate.send(()).unwrap();
        let done = n.jobs_rx.recv().await.unwrap();
        n.on_job_done(done, &mut pending);
        assert_eq!(pending.len(), 1);
        let r = reported(&pending[0]);
        assert_eq!(r.status, RunStatus::Completed);
        assert_eq!(
            r.output.as_ref().unwrap().decode_vectors().unwrap(),
            vec![vec![2.0f32], vec![2.0]]
        );
        assert_eq!(pending[0].envelope.causation_id, Some(Uuid::from_u128(42)));
        assert!(n.workers[0].jobs.is_empty());
    }

    #[tokio::test]
    async fn failed_inference_fails_the_run_and_a_stopped_run_drops_its_result() {
        let (mut n, gate) = gated();
        let mut pending = Vec::new();
        let t0 = Instant::now();
        // Done before the run completes: the result waits for the completion.
        n.obey(
            &with_input(start("n-0", 1, &["n-0/gpu-0"]), &["bad"]),
            cause(),
            t0,
            &mut pending,
        );
        gate.send(()).unwrap();
        let done = n.jobs_rx.recv().await.unwrap();
        n.on_job_done(done, &mut pending);
        assert!(pending.is_empty());
        n.poll(t0 + std::time::Duration::from_secs(60), &mut pending);
        let last = reported(pending.last().unwrap());
        assert_eq!(last.status, RunStatus::Failed);
        assert_eq!(last.detail.as_deref(), Some("m refused"));
        assert!(last.output.is_none());

        // Stopped before its inference finishes: the late result is dropped.
        pending.clear();
        n.obey(
            &with_input(start("n-0", 2, &["n-0/gpu-1"]), &["ok"]),
            cause(),
            t0,
            &mut pending,
        );
        let stop = DeviceCommand {
            command_id: Uuid::now_v7(),
            worker_id: "n-0".into(),
            workload_id: Uuid::from_u128(2),
            action: CommandAction::Stop {
                checkpoint: false,
                reason: "test".into(),
            },
        };
        n.obey(&stop, cause(), t0, &mut pending);
        assert!(n.workers[0].jobs.is_empty());
        pending.clear();
        // A thread may already be in the job (then it finishes and its result is dropped), or
        // the job is skipped as cancelled (then nothing comes).
        gate.send(()).unwrap();
        let wait = std::time::Duration::from_millis(500);
        if let Ok(Some(done)) = tokio::time::timeout(wait, n.jobs_rx.recv()).await {
            n.on_job_done(done, &mut pending);
        }
        assert!(pending.is_empty(), "{pending:?}");
    }

    #[tokio::test]
    async fn a_stop_ends_a_held_completion_and_a_panicking_embedder_fails_the_run() {
        let (mut n, gate) = gated();
        let mut pending = Vec::new();
        let t0 = Instant::now();
        let later = t0 + std::time::Duration::from_secs(60);
        n.obey(
            &with_input(start("n-0", 1, &["n-0/gpu-0"]), &["ok"]),
            cause(),
            t0,
            &mut pending,
        );
        n.poll(later, &mut pending);
        assert!(n.workers[0].jobs[&Uuid::from_u128(1)].held.is_some());
        // The backend has finished the run, so it does not know it any more; the stop still
        // ends the wait, and heartbeats stop listing the run.
        let stop = DeviceCommand {
            command_id: Uuid::now_v7(),
            worker_id: "n-0".into(),
            workload_id: Uuid::from_u128(1),
            action: CommandAction::Stop {
                checkpoint: false,
                reason: "cancelled".into(),
            },
        };
        n.obey(&stop, cause(), later, &mut pending);
        assert!(n.workers[0].jobs.is_empty());
        pending.clear();
        n.heartbeats(later, &mut pending);
        let Event::WorkerHeartbeat(h) = &pending[0].envelope.payload else {
            panic!()
        };
        assert!(h.running.is_empty(), "{:?}", h.running);

        // A panic in the embedder is a failed run with the reason, not a run held for ever.
        pending.clear();
        n.obey(
            &with_input(start("n-0", 2, &["n-0/gpu-1"]), &["panic"]),
            cause(),
            later,
            &mut pending,
        );
        gate.send(()).unwrap();
        let done = tokio::time::timeout(std::time::Duration::from_secs(10), n.jobs_rx.recv())
            .await
            .unwrap()
            .unwrap();
        // The first job's result, if its thread got to it, is for an ended run: dropped.
        let done = if done.1 == Uuid::from_u128(2) {
            done
        } else {
            n.on_job_done(done, &mut pending);
            gate.send(()).unwrap();
            n.jobs_rx.recv().await.unwrap()
        };
        n.on_job_done(done, &mut pending);
        n.poll(later + std::time::Duration::from_secs(60), &mut pending);
        let last = reported(pending.last().unwrap());
        assert_eq!(last.workload_id, Uuid::from_u128(2));
        assert_eq!(last.status, RunStatus::Failed);
        assert!(last.detail.as_deref().unwrap().contains("panicked"));
    }

    #[test]
    fn heartbeats_list_gpus_runs_and_one_sample_per_gpu() {
        let mut n = node();
        let mut pending = Vec::new();
        let t0 = Instant::now();
        n.obey(&start("n-0", 1, &["n-0/gpu-3"]), cause(), t0, &mut pending);
        n.heartbeats(t0, &mut pending);
        assert_eq!(pending.len(), 2);
        let Event::WorkerHeartbeat(h) = &pending[0].envelope.payload else {
            panic!()
        };
        assert_eq!(h.worker_id, "n-0");
        assert_eq!(h.backend, "sim");
        assert_eq!(h.gpus.len(), 8);
        assert_eq!(h.samples.len(), 8);
        assert_eq!(h.running, vec![Uuid::from_u128(1)]);
        assert!(!pending[0].retry, "a heartbeat is never retried");
    }
}
