//! The resource-manager and the simulated gpu-worker against the real broker and the real
//! PostgreSQL, in-process: registration, the happy path, single-writer allocation under
//! concurrency, a silent worker, a restarted worker, cancel, preemption, dead letters.
//! The tests append the gateway's and the router's events themselves.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use hcp_bus::transactional::{ConsumerSettings, TransactionalConsumer};
use hcp_bus::{OutgoingMessage, Producer};
use hcp_db::sqlx;
use hcp_db::{apply_once, EventStore, ExpectedVersion, Projection, Publish, StoreError};
use hcp_events::payload::*;
use hcp_events::{
    command_stream, headers, report_stream, worker_stream, workload_stream, Envelope, Event, Topic,
};
use hcp_gpu_worker::{WorkerNode, WorkerSettings};
use hcp_resource_manager::{HealthSweep, ResourceManager, RmSettings, Topics};
use hcp_tests::fixtures::start_relay;
use hcp_tests::{init_tracing, read_topic, wait_until, TestEnv};
use rdkafka::message::{Headers, Message};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

const WAIT: Duration = Duration::from_secs(60);
const POLL: Duration = Duration::from_millis(50);
const SITE: &str = "site-t";

/// An in-process component.
struct Task {
    token: CancellationToken,
    handle: JoinHandle<()>,
}

impl Task {
    fn spawn<F>(f: impl FnOnce(CancellationToken) -> F) -> Self
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        let token = CancellationToken::new();
        let handle = tokio::spawn(f(token.clone()));
        Self { token, handle }
    }

    async fn stop(self) {
        self.token.cancel();
        let _ = self.handle.await;
    }
}

fn rm_settings() -> RmSettings {
    RmSettings {
        sweep_interval_ms: 200,
        worker_timeout_ms: 30_000,
        restart_grace_ms: 30_000,
        start_ack_timeout_ms: 300_000,
        heartbeat_store_ms: 2_000,
    }
}

/// A resource-manager consumer (group `<ns>.resource-manager`) of workloads + worker-reports.
fn start_rm(env: &TestEnv, settings: &RmSettings) -> Task {
    let producer = Producer::new(&env.kafka, "test-rm").unwrap();
    let cs = ConsumerSettings::new(
        format!("{}.resource-manager", env.kafka.namespace),
        vec![env.topic(Topic::Workloads), env.topic(Topic::WorkerReports)],
        env.topic(Topic::DeadLetters),
    );
    let rm = ResourceManager::new(Topics::new(&env.kafka), settings.clone());
    let consumer =
        TransactionalConsumer::for_projection(&env.kafka, cs, env.pool.clone(), rm, producer)
            .unwrap();
    Task::spawn(|t| async move { consumer.run(t).await.unwrap() })
}

fn start_sweep(env: &TestEnv, settings: &RmSettings) -> Task {
    let sweep = HealthSweep::new(env.pool.clone(), Topics::new(&env.kafka), settings.clone());
    Task::spawn(|t| async move { sweep.run(t).await.unwrap() })
}

fn worker_settings(id: &str, gpus: u32, time_scale: f64) -> WorkerSettings {
    WorkerSettings {
        worker_id: id.into(),
        count: 1,
        site: SITE.into(),
        gpus_per_worker: gpus,
        heartbeat_ms: 200,
        tick_ms: 20,
        time_scale,
        checkpoint_every: 0.1,
        checkpoint_min_s: 0.0,
        ..Default::default()
    }
}

fn start_worker(env: &TestEnv, settings: WorkerSettings) -> Task {
    let node = WorkerNode::simulated(settings, env.kafka.clone());
    Task::spawn(|t| async move { node.run(t).await.unwrap() })
}

fn gpu(worker: &str, n: u32) -> String {
    format!("{worker}/gpu-{n}")
}

async fn stream(env: &TestEnv, stream: &str) -> Vec<Envelope> {
    EventStore::new(env.pool.clone())
        .read_stream(stream)
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.envelope)
        .collect()
}

async fn workload_events(env: &TestEnv, id: Uuid) -> Vec<Envelope> {
    stream(env, &workload_stream(id)).await
}

async fn has_event(env: &TestEnv, id: Uuid, f: impl Fn(&Event) -> bool) -> bool {
    workload_events(env, id).await.iter().any(|e| f(&e.payload))
}

async fn wait_event(env: &TestEnv, id: Uuid, what: &str, f: impl Fn(&Event) -> bool + Copy) {
    assert!(
        wait_until(WAIT, POLL, || async { has_event(env, id, f).await }).await,
        "workload {id} never got {what}; its stream: {:#?}",
        workload_events(env, id)
            .await
            .iter()
            .map(|e| e.event_type().as_str())
            .collect::<Vec<_>>()
    );
}

async fn wait_registered(env: &TestEnv, worker: &str) {
    let s = worker_stream(worker);
    assert!(
        wait_until(WAIT, POLL, || async {
            stream(env, &s)
                .await
                .iter()
                .any(|e| matches!(e.payload, Event::WorkerRegistered(_)))
        })
        .await,
        "worker {worker} never registered"
    );
}

/// Appends submitted + queued (the gateway's and the router's part). Returns the version.
async fn submit(env: &TestEnv, id: Uuid, gpus: u32, duration_s: u32) -> i64 {
    let s = workload_stream(id);
    let submitted = Envelope::new(
        &s,
        "test-gateway",
        Event::WorkloadSubmitted(WorkloadSubmitted::simple(
            id,
            "acme",
            WorkloadKind::Training,
            "llama-3-8b",
            gpus,
            duration_s,
        )),
    );
    let queued = Envelope::new(
        &s,
        "test-router",
        Event::WorkloadQueued(WorkloadQueued {
            workload_id: id,
            kind: WorkloadKind::Training,
            priority: 5,
            interruptible: true,
            reason: "test".into(),
        }),
    )
    .caused_by(&submitted);
    EventStore::new(env.pool.clone())
        .append_and_commit(
            &s,
            ExpectedVersion::NoStream,
            &[submitted, queued],
            &Publish::to(env.topic(Topic::Workloads)),
        )
        .await
        .unwrap()
        .new_version
}

/// Appends a workload event at exactly the stream's current version, caused by its last
/// event. Returns the appended envelope (with its sequence).
/// Retries on a concurrency conflict (the resource-manager appends to the same stream).
async fn append_next(env: &TestEnv, id: Uuid, event: Event) -> Envelope {
    for _ in 0..20 {
        let events = workload_events(env, id).await;
        let last = events.last().unwrap();
        let mut e =
            Envelope::new(workload_stream(id), "test-router", event.clone()).caused_by(last);
        match EventStore::new(env.pool.clone())
            .append_and_commit(
                &workload_stream(id),
                ExpectedVersion::Exact(last.sequence),
                std::slice::from_ref(&e),
                &Publish::to(env.topic(Topic::Workloads)),
            )
            .await
        {
            Ok(out) => {
                e.sequence = out.new_version;
                return e;
            }
            Err(StoreError::ConcurrencyConflict { .. }) => continue,
            Err(other) => panic!("append: {other}"),
        }
    }
    panic!("workload {id} kept changing");
}

fn proposal(id: Uuid, worker: &str, gpus: &[u32], attempt: u32) -> Event {
    Event::WorkloadPlacementProposed(WorkloadPlacementProposed {
        workload_id: id,
        worker_id: worker.into(),
        gpu_ids: gpus.iter().map(|n| gpu(worker, *n)).collect(),
        score: 1.0,
        attempt,
    })
}

/// (gpu, released_at IS NOT NULL, release_reason) of a workload's allocations.
async fn allocations(env: &TestEnv, id: Uuid) -> Vec<(String, bool, Option<String>)> {
    sqlx::query_as(
        "SELECT gpu_id, released_at IS NOT NULL, release_reason FROM rm_allocations \
         WHERE workload_id = $1 ORDER BY allocation_id",
    )
    .bind(id)
    .fetch_all(&env.pool)
    .await
    .unwrap()
}

async fn commands(env: &TestEnv, worker: &str, id: Uuid) -> Vec<CommandAction> {
    stream(env, &command_stream(worker))
        .await
        .into_iter()
        .filter_map(|e| match e.payload {
            Event::DeviceCommand(c) if c.workload_id == id => Some(c.action),
            _ => None,
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_placed_workload_is_scheduled_started_and_completed_and_its_gpus_are_released() {
    init_tracing();
    let env = TestEnv::new().await;
    let settings = rm_settings();
    let relay = start_relay(&env);
    let rm = start_rm(&env, &settings);
    let worker = start_worker(&env, worker_settings("wa", 8, 20.0));
    wait_registered(&env, "wa").await;
    let registered = stream(&env, &worker_stream("wa")).await;
    let Event::WorkerRegistered(r) = &registered[0].payload else {
        panic!("{registered:?}")
    };
    assert_eq!(
        (r.site.as_str(), r.backend.as_str(), r.gpus.len()),
        (SITE, "sim", 8)
    );

    let id = Uuid::now_v7();
    submit(&env, id, 2, 20).await; // 20 simulated seconds: 1 s at 20x
    let proposed = append_next(&env, id, proposal(id, "wa", &[0, 1], 1)).await;
    wait_event(&env, id, "completed", |e| {
        matches!(e, Event::WorkloadCompleted(_))
    })
    .await;

    let events = workload_events(&env, id).await;
    let types: Vec<&str> = events.iter().map(|e| e.event_type().as_str()).collect();
    assert_eq!(
        &types[..5],
        &[
            "workload.submitted",
            "workload.queued",
            "workload.placement_proposed",
            "workload.scheduled",
            "workload.started"
        ]
    );
    assert_eq!(types.last(), Some(&"workload.completed"));
    assert!(types[5..types.len() - 1]
        .iter()
        .all(|t| *t == "workload.checkpointed"));
    let scheduled = &events[3];
    assert_eq!(scheduled.causation_id, Some(proposed.event_id));
    assert!(
        events
            .iter()
            .all(|e| e.correlation_id == events[0].correlation_id),
        "one correlation id across the workload's life"
    );
    let Event::WorkloadCompleted(done) = &events.last().unwrap().payload else {
        unreachable!()
    };
    assert!((done.runtime_s - 20.0).abs() < 1.0, "{done:?}");

    assert_eq!(
        allocations(&env, id).await,
        vec![
            (gpu("wa", 0), true, Some("completed".into())),
            (gpu("wa", 1), true, Some("completed".into())),
        ]
    );
    let cmds = commands(&env, "wa", id).await;
    assert_eq!(
        cmds,
        vec![CommandAction::Start {
            model: "llama-3-8b".into(),
            gpu_ids: vec![gpu("wa", 0), gpu("wa", 1)],
            duration_s: 20,
            resume_progress: 0.0,
            input: None,
        }]
    );
    let run: (String, String, f64) = sqlx::query_as(
        "SELECT worker_id, state, checkpoint_progress FROM rm_runs WHERE workload_id = $1",
    )
    .bind(id)
    .fetch_one(&env.pool)
    .await
    .unwrap();
    assert_eq!((run.0.as_str(), run.1.as_str()), ("wa", "completed"));

    // The worker's started report carried the model switch, cold on a fresh GPU.
    let all = hcp_tests::read_events(
        &env.kafka,
        &env.topic(Topic::WorkerReports),
        usize::MAX,
        Duration::from_secs(3),
    )
    .await;
    let switch = all
        .into_iter()
        .map(|w| w.envelope)
        .filter(|e| e.stream_id == report_stream("wa"))
        .find_map(|e| match e.payload {
            Event::RunReported(r) if r.status == RunStatus::Started => r.switch,
            _ => None,
        })
        .expect("a started report");
    assert!(!switch.resident && switch.load_ms > 0.0, "{switch:?}");

    // The worker's GPUs are in the inventory.
    let inventory: i64 =
        sqlx::query_scalar("SELECT count(*) FROM rm_gpus WHERE worker_id = 'wa' AND model <> ''")
            .fetch_one(&env.pool)
            .await
            .unwrap();
    assert_eq!(inventory, 8);

    worker.stop().await;
    rm.stop().await;
    relay.stop().await;
}

/// Replays the log in global order: a GPU is taken by `scheduled` and given back by the
/// events that end a placement. Panics on a double booking; returns how many placements.
fn replay_allocations(log: &[Envelope]) -> usize {
    let mut holder: HashMap<String, Uuid> = HashMap::new();
    let mut held: HashMap<Uuid, Vec<String>> = HashMap::new();
    let mut placements = 0;
    for e in log {
        match &e.payload {
            Event::WorkloadScheduled(s) => {
                for g in &s.gpu_ids {
                    if let Some(other) = holder.get(g) {
                        panic!(
                            "GPU {g} given to {} while {other} holds it (event {})",
                            s.workload_id, e.event_id
                        );
                    }
                    holder.insert(g.clone(), s.workload_id);
                }
                held.insert(s.workload_id, s.gpu_ids.clone());
                placements += 1;
            }
            Event::WorkloadCompleted(_)
            | Event::WorkloadFailed(_)
            | Event::WorkloadRequeued(_)
            | Event::WorkloadCancelled(_) => {
                let id = e.payload.workload_id().unwrap();
                for g in held.remove(&id).unwrap_or_default() {
                    holder.remove(&g);
                }
            }
            _ => {}
        }
    }
    placements
}

/// Every proposal in the log has exactly one answer (scheduled or rejected) caused by it.
fn assert_one_answer_each(log: &[Envelope]) -> (usize, usize) {
    let proposals: Vec<Uuid> = log
        .iter()
        .filter(|e| matches!(e.payload, Event::WorkloadPlacementProposed(_)))
        .map(|e| e.event_id)
        .collect();
    let mut answers: HashMap<Uuid, usize> = HashMap::new();
    let mut rejections = 0;
    for e in log {
        if matches!(
            e.payload,
            Event::WorkloadScheduled(_) | Event::WorkloadPlacementRejected(_)
        ) {
            *answers.entry(e.causation_id.unwrap()).or_default() += 1;
            rejections += usize::from(matches!(e.payload, Event::WorkloadPlacementRejected(_)));
        }
    }
    // The last proposal of each workload gets exactly one answer; an earlier one that a later
    // proposal superseded is left unanswered (the later one is the answer's subject).
    let mut last_of: HashMap<String, Uuid> = HashMap::new();
    for e in log {
        if matches!(e.payload, Event::WorkloadPlacementProposed(_)) {
            last_of.insert(e.stream_id.clone(), e.event_id);
        }
    }
    for p in &proposals {
        let want = if last_of.values().any(|l| l == p) {
            Some(&1)
        } else {
            answers.get(p).filter(|n| **n == 1)
        };
        assert_eq!(answers.get(p), want, "proposal {p} answers");
    }
    assert!(
        answers.keys().all(|a| proposals.contains(a)),
        "no answer without a proposal"
    );
    (proposals.len(), rejections)
}

async fn global_log(env: &TestEnv) -> Vec<Envelope> {
    EventStore::new(env.pool.clone())
        .read_all(0, 1_000_000)
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.envelope)
        .collect()
}

/// Pairs of live-at-once allocations of one GPU, from the allocation table's intervals.
async fn overlapping_allocations(env: &TestEnv) -> i64 {
    sqlx::query_scalar(
        "SELECT count(*) FROM rm_allocations a JOIN rm_allocations b \
         ON a.gpu_id = b.gpu_id AND a.allocation_id < b.allocation_id \
         WHERE b.allocated_at < coalesce(a.released_at, 'infinity') \
           AND a.allocated_at < coalesce(b.released_at, 'infinity')",
    )
    .fetch_one(&env.pool)
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conflicting_proposals_through_two_consumers_never_double_book_a_gpu() {
    init_tracing();
    let env = TestEnv::new().await;
    let settings = rm_settings();
    let relay = start_relay(&env);
    let rm_a = start_rm(&env, &settings);
    let rm_b = start_rm(&env, &settings);
    // 4 GPUs, runs of 10 simulated s at 100x: 0.1 s each.
    let worker = start_worker(&env, worker_settings("wb", 4, 100.0));
    wait_registered(&env, "wb").await;

    const N: usize = 16;
    let ids: Vec<Uuid> = (0..N).map(|_| Uuid::now_v7()).collect();
    for id in &ids {
        submit(&env, *id, 2, 10).await;
    }
    // A stand-in router: proposes every queued workload at once on overlapping pairs, and
    // proposes again whatever was rejected, until everything completed.
    let env = Arc::new(env);
    let mut attempt = 0_u32;
    let done = wait_until(Duration::from_secs(90), Duration::from_millis(100), || {
        attempt += 1;
        let env = env.clone();
        let ids = ids.clone();
        let round = attempt;
        async move {
            let mut proposals = Vec::new();
            let mut completed = 0;
            for (k, id) in ids.iter().enumerate() {
                let events = workload_events(&env, *id).await;
                match events.last().map(|e| &e.payload) {
                    Some(Event::WorkloadCompleted(_)) => completed += 1,
                    Some(Event::WorkloadQueued(_)) | Some(Event::WorkloadPlacementRejected(_)) => {
                        let first = ((k + round as usize) % 4) as u32;
                        let pair = [first, (first + 1) % 4];
                        let env = env.clone();
                        let id = *id;
                        proposals.push(tokio::spawn(async move {
                            append_next(&env, id, proposal(id, "wb", &pair, round)).await;
                        }));
                    }
                    _ => {}
                }
            }
            for p in proposals {
                p.await.unwrap();
            }
            completed == N
        }
    })
    .await;
    assert!(done, "every workload completes eventually");

    let log = global_log(&env).await;
    let placements = replay_allocations(&log);
    let (proposals, rejections) = assert_one_answer_each(&log);
    assert_eq!(
        placements, N,
        "each workload placed once (none failed or requeued)"
    );
    assert_eq!(proposals, placements + rejections);
    assert!(rejections > 0, "the proposals really conflicted");
    assert_eq!(overlapping_allocations(&env).await, 0);
    let held_rejections = log
        .iter()
        .filter(|e| match &e.payload {
            Event::WorkloadPlacementRejected(r) => r.reason.contains("is held by workload"),
            _ => false,
        })
        .count();
    assert!(held_rejections > 0);

    worker.stop().await;
    rm_a.stop().await;
    rm_b.stop().await;
    relay.stop().await;
}

/// The workload's last event is `workload.requeued` with a reason containing `why`, and every
/// allocation it had was released with `release_reason`.
async fn assert_last_requeued(env: &TestEnv, id: Uuid, why: &str, release_reason: &str) {
    let events = workload_events(env, id).await;
    let Some(Event::WorkloadRequeued(r)) = events.last().map(|e| &e.payload) else {
        panic!("the last event is not workload.requeued: {events:#?}")
    };
    assert!(r.reason.contains(why), "{}", r.reason);
    let allocations = allocations(env, id).await;
    assert!(
        allocations
            .iter()
            .all(|(_, released, reason)| *released && reason.as_deref() == Some(release_reason)),
        "{allocations:?}"
    );
}

/// A heartbeat envelope as a worker would send it.
fn heartbeat(worker: &str, gpus: u32, running: Vec<Uuid>, seq: i64) -> Envelope {
    let mut e = Envelope::new(
        report_stream(worker),
        "test-worker",
        Event::WorkerHeartbeat(WorkerHeartbeat {
            worker_id: worker.into(),
            site: SITE.into(),
            backend: "sim".into(),
            gpus: (0..gpus)
                .map(|n| GpuSpec {
                    gpu_id: gpu(worker, n),
                    model: "H100".into(),
                    memory_mib: 81_559,
                })
                .collect(),
            running,
            samples: vec![],
        }),
    );
    e.sequence = seq;
    e
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proposals_applied_concurrently_in_separate_transactions_never_double_book_a_gpu() {
    init_tracing();
    let env = TestEnv::new().await;
    let rm = Arc::new(ResourceManager::new(Topics::new(&env.kafka), rm_settings()));
    let mut tx = env.pool.begin().await.unwrap();
    apply_once(&mut tx, rm.as_ref(), &heartbeat("wc", 8, vec![], 1))
        .await
        .unwrap();
    tx.commit().await.unwrap();

    // 24 workloads, each proposed on a pair of 8 GPUs that overlaps its neighbours'.
    let mut proposals = Vec::new();
    for k in 0..24_u32 {
        let id = Uuid::now_v7();
        submit(&env, id, 2, 10).await;
        let first = k % 8;
        proposals
            .push(append_next(&env, id, proposal(id, "wc", &[first, (first + 1) % 8], 1)).await);
    }
    // All at once, each in its own transaction, as concurrent consumers would.
    let barrier = Arc::new(tokio::sync::Barrier::new(proposals.len()));
    let tasks: Vec<_> = proposals
        .iter()
        .cloned()
        .map(|p| {
            let (pool, rm, barrier) = (env.pool.clone(), rm.clone(), barrier.clone());
            tokio::spawn(async move {
                barrier.wait().await;
                let mut tx = pool.begin().await.unwrap();
                apply_once(&mut tx, rm.as_ref(), &p).await.unwrap();
                tx.commit().await.unwrap();
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let log = global_log(&env).await;
    let placements = replay_allocations(&log);
    let (n, rejections) = assert_one_answer_each(&log);
    assert_eq!(n, 24);
    assert_eq!(placements + rejections, 24);
    // Neighbouring pairs on a ring of 8 GPUs: every maximal set of disjoint ones has 3 or 4.
    assert!((3..=4).contains(&placements), "{placements} placements");
    let live: i64 =
        sqlx::query_scalar("SELECT count(*) FROM rm_allocations WHERE released_at IS NULL")
            .fetch_one(&env.pool)
            .await
            .unwrap();
    assert_eq!(live, 2 * placements as i64);

    // A redelivered proposal applied again (even bypassing the consumer's dedup) is not
    // answered twice.
    for p in &proposals {
        let mut tx = env.pool.begin().await.unwrap();
        rm.apply(&mut tx, p).await.unwrap();
        tx.commit().await.unwrap();
    }
    assert_eq!(global_log(&env).await.len(), log.len());
}

/// Submits `n` workloads of 2 GPUs and proposes each on a pair of neighbouring GPUs of a ring
/// of 8 on `worker`. Returns the proposals in order.
async fn ring_proposals(env: &TestEnv, worker: &str, n: u32) -> Vec<Envelope> {
    let mut proposals = Vec::new();
    for k in 0..n {
        let id = Uuid::now_v7();
        submit(env, id, 2, 10).await;
        let first = k % 8;
        proposals
            .push(append_next(env, id, proposal(id, worker, &[first, (first + 1) % 8], 1)).await);
    }
    proposals
}

/// Applies `events` as one consumer batch, in one transaction.
async fn apply_batch(env: &TestEnv, rm: &ResourceManager, events: &[Envelope]) {
    let refs: Vec<&Envelope> = events.iter().collect();
    let mut tx = env.pool.begin().await.unwrap();
    rm.apply_batch(&mut tx, &refs).await.unwrap();
    tx.commit().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proposals_answered_as_one_batch_count_gpus_taken_earlier_in_the_batch_as_held() {
    init_tracing();
    let env = TestEnv::new().await;
    let rm = ResourceManager::new(Topics::new(&env.kafka), rm_settings());
    apply_batch(&env, &rm, &[heartbeat("wg", 8, vec![], 1)]).await;
    let proposals = ring_proposals(&env, "wg", 24).await;
    apply_batch(&env, &rm, &proposals).await;

    let log = global_log(&env).await;
    let placements = replay_allocations(&log);
    let (n, rejections) = assert_one_answer_each(&log);
    assert_eq!((n, placements + rejections), (24, 24));
    // In batch order on a ring of 8: pairs 0-1, 2-3, 4-5, 6-7 win, every other one finds a
    // GPU taken earlier in the same batch.
    assert_eq!(placements, 4);
    let live: Vec<(String, Uuid)> = sqlx::query_as(
        "SELECT gpu_id, workload_id FROM rm_allocations WHERE released_at IS NULL ORDER BY gpu_id",
    )
    .fetch_all(&env.pool)
    .await
    .unwrap();
    let winners: Vec<Uuid> = proposals
        .iter()
        .step_by(2)
        .take(4)
        .map(|p| p.payload.workload_id().unwrap())
        .collect();
    let want: Vec<(String, Uuid)> = (0..8)
        .map(|g| (gpu("wg", g), winners[g as usize / 2]))
        .collect();
    assert_eq!(live, want);
    for id in &winners {
        let starts = commands(&env, "wg", *id).await;
        assert!(
            matches!(starts.as_slice(), [CommandAction::Start { gpu_ids, .. }] if gpu_ids.len() == 2),
            "{starts:?}"
        );
    }
    let held_rejections = log
        .iter()
        .filter(|e| matches!(&e.payload, Event::WorkloadPlacementRejected(r) if r.reason.starts_with("gpu_held: ") && r.retryable))
        .count();
    assert_eq!(held_rejections, 20);
    let runs: i64 = sqlx::query_scalar("SELECT count(*) FROM rm_runs WHERE state = 'scheduled'")
        .fetch_one(&env.pool)
        .await
        .unwrap();
    assert_eq!(runs, 4);

    // The same batch delivered again answers nothing twice.
    apply_batch(&env, &rm, &proposals).await;
    assert_eq!(global_log(&env).await.len(), log.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proposal_batches_applied_concurrently_never_double_book_a_gpu() {
    init_tracing();
    let env = TestEnv::new().await;
    let rm = Arc::new(ResourceManager::new(Topics::new(&env.kafka), rm_settings()));
    apply_batch(&env, &rm, &[heartbeat("wh", 8, vec![], 1)]).await;
    let proposals = ring_proposals(&env, "wh", 24).await;
    // Two consumers' batches, interleaved halves, each in its own transaction.
    let halves: [Vec<Envelope>; 2] = [
        proposals.iter().step_by(2).cloned().collect(),
        proposals.iter().skip(1).step_by(2).cloned().collect(),
    ];
    let barrier = Arc::new(tokio::sync::Barrier::new(2));
    let tasks: Vec<_> = halves
        .into_iter()
        .map(|half| {
            let (pool, rm, barrier) = (env.pool.clone(), rm.clone(), barrier.clone());
            tokio::spawn(async move {
                let refs: Vec<&Envelope> = half.iter().collect();
                barrier.wait().await;
                let mut tx = pool.begin().await.unwrap();
                rm.apply_batch(&mut tx, &refs).await.unwrap();
                tx.commit().await.unwrap();
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let log = global_log(&env).await;
    let placements = replay_allocations(&log);
    let (n, rejections) = assert_one_answer_each(&log);
    assert_eq!((n, placements + rejections), (24, 24));
    // The first batch to take the pool's lock places four disjoint pairs (the even pairs
    // 0-1, 2-3, 4-5, 6-7 or the odd ones 1-2, 3-4, 5-6, 7-0) and the second finds them held.
    assert_eq!(placements, 4);
    assert_eq!(overlapping_allocations(&env).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_of_run_reports_is_folded_in_order_and_releases_once() {
    init_tracing();
    let env = TestEnv::new().await;
    let rm = ResourceManager::new(Topics::new(&env.kafka), rm_settings());
    apply_batch(&env, &rm, &[heartbeat("wr", 8, vec![], 1)]).await;
    // Two placements, each answered alone: `a` on GPUs 0-1, `b` on 2-3.
    let mut placed = Vec::new();
    for pair in [[0, 1], [2, 3]] {
        let id = Uuid::now_v7();
        submit(&env, id, 2, 10).await;
        let p = append_next(&env, id, proposal(id, "wr", &pair, 1)).await;
        apply_batch(&env, &rm, &[p]).await;
        placed.push(id);
    }
    let (a, b) = (placed[0], placed[1]);

    let report = |id: Uuid, status: RunStatus, progress: f64, seq: i64| {
        let mut e = Envelope::new(
            report_stream("wr"),
            "test-worker",
            Event::RunReported(RunReported {
                workload_id: id,
                worker_id: "wr".into(),
                status,
                progress,
                runtime_s: 1.0,
                detail: None,
                switch: None,
                output: None,
            }),
        );
        e.sequence = seq;
        e
    };
    // One batch: both start (one twice), one checkpoints and completes, the other checkpoints;
    // a report after the completion finds nothing allocated.
    let batch = vec![
        report(a, RunStatus::Started, 0.0, 2),
        report(b, RunStatus::Started, 0.0, 3),
        report(a, RunStatus::Started, 0.0, 4),
        report(a, RunStatus::Checkpointed, 0.5, 5),
        report(b, RunStatus::Checkpointed, 0.25, 6),
        report(a, RunStatus::Completed, 1.0, 7),
        report(a, RunStatus::Checkpointed, 0.9, 8),
    ];
    apply_batch(&env, &rm, &batch).await;

    let types = |events: Vec<Envelope>| -> Vec<&'static str> {
        events.iter().map(|e| e.event_type().as_str()).collect()
    };
    assert_eq!(
        types(workload_events(&env, a).await),
        [
            "workload.submitted",
            "workload.queued",
            "workload.placement_proposed",
            "workload.scheduled",
            "workload.started",
            "workload.checkpointed",
            "workload.completed"
        ]
    );
    assert_eq!(
        types(workload_events(&env, b).await)[4..],
        ["workload.started", "workload.checkpointed"]
    );
    assert_eq!(
        allocations(&env, a).await,
        [
            (gpu("wr", 0), true, Some("completed".to_owned())),
            (gpu("wr", 1), true, Some("completed".to_owned()))
        ]
    );
    assert!(allocations(&env, b)
        .await
        .iter()
        .all(|(_, released, _)| !released));
    let runs: Vec<(Uuid, String, f64)> = sqlx::query_as(
        "SELECT workload_id, state, checkpoint_progress FROM rm_runs ORDER BY workload_id",
    )
    .fetch_all(&env.pool)
    .await
    .unwrap();
    let mut want = vec![
        (a, "completed".to_owned(), 0.5),
        (b, "running".to_owned(), 0.25),
    ];
    want.sort_by_key(|w| w.0);
    assert_eq!(runs, want);

    // Delivered again, the same reports change nothing.
    let before = global_log(&env).await.len();
    apply_batch(&env, &rm, &batch).await;
    assert_eq!(global_log(&env).await.len(), before);
}

/// The resource-manager's worker tables and what it appended, as comparable text.
async fn worker_tables(env: &TestEnv) -> Vec<String> {
    let mut rows: Vec<String> = sqlx::query_scalar(
        "SELECT concat_ws('|', worker_id, site, backend, state, gpus::text, last_report_id) \
         FROM rm_workers ORDER BY worker_id",
    )
    .fetch_all(&env.pool)
    .await
    .unwrap();
    rows.extend(
        sqlx::query_scalar::<_, String>(
            "SELECT concat_ws('|', gpu_id, worker_id, model, memory_mib) FROM rm_gpus \
             ORDER BY gpu_id",
        )
        .fetch_all(&env.pool)
        .await
        .unwrap(),
    );
    rows.extend(
        sqlx::query_scalar::<_, String>(
            "SELECT concat_ws('|', stream_id, event_type, count(*)) FROM events \
             WHERE producer = $1 GROUP BY stream_id, event_type ORDER BY 1",
        )
        .bind(hcp_resource_manager::PRODUCER)
        .fetch_all(&env.pool)
        .await
        .unwrap(),
    );
    rows
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeats_stored_as_one_batch_leave_the_tables_they_leave_one_by_one() {
    init_tracing();
    let (one, batch) = (TestEnv::new().await, TestEnv::new().await);
    // Every heartbeat is stored (no memo shortcut), so both paths do all their work.
    let settings = RmSettings {
        heartbeat_store_ms: 0,
        ..rm_settings()
    };
    let known = ["wb-1", "wb-2", "wb-3"].map(|w| heartbeat(w, 8, vec![], 1));
    let beats = vec![
        // Unchanged.
        heartbeat("wb-1", 8, vec![], 2),
        // Lost half its GPUs: re-registered, its GPU rows shrink.
        heartbeat("wb-2", 4, vec![], 2),
        // Holds a run it has no allocation for: stopped (the one-by-one path, pool locked).
        heartbeat("wb-3", 8, vec![Uuid::from_u128(77)], 2),
        // New.
        heartbeat("wb-4", 2, vec![], 1),
        // New, reporting a GPU the first also reports in this batch (it moved): both keep
        // their order.
        {
            let mut e = heartbeat("wb-6", 1, vec![], 1);
            if let Event::WorkerHeartbeat(h) = &mut e.payload {
                h.gpus[0].gpu_id = gpu("wb-1", 0);
            }
            e
        },
        // The first again in the same batch: applied after the earlier one.
        heartbeat("wb-1", 8, vec![], 3),
    ];
    for env in [&one, &batch] {
        let rm = ResourceManager::new(Topics::new(&env.kafka), settings.clone());
        for e in &known {
            let mut tx = env.pool.begin().await.unwrap();
            apply_once(&mut tx, &rm, e).await.unwrap();
            tx.commit().await.unwrap();
        }
    }
    let rm = ResourceManager::new(Topics::new(&one.kafka), settings.clone());
    for e in &beats {
        let mut tx = one.pool.begin().await.unwrap();
        apply_once(&mut tx, &rm, e).await.unwrap();
        tx.commit().await.unwrap();
    }
    let rm = ResourceManager::new(Topics::new(&batch.kafka), settings);
    apply_batch(&batch, &rm, &beats).await;

    let tables = worker_tables(&batch).await;
    assert_eq!(tables, worker_tables(&one).await);
    // And they say what the heartbeats said.
    let last = |w: &str| {
        tables
            .iter()
            .find(|r| r.starts_with(&format!("{w}|")))
            .cloned()
            .unwrap()
    };
    assert!(last("wb-1").ends_with(&beats[5].event_id.to_string()));
    assert!(
        tables.contains(&format!("{}|wb-6|H100|81559", gpu("wb-1", 0))),
        "{tables:?}"
    );
    assert_eq!(
        tables.iter().filter(|r| r.contains("|wb-2|H100|")).count(),
        4
    );
    assert_eq!(
        tables.iter().filter(|r| r.contains("|wb-4|H100|")).count(),
        2
    );
    assert!(
        tables.contains(&"worker-wb-2|worker.registered|2".to_owned()),
        "{tables:?}"
    );
    assert!(
        tables.contains(&"worker-wb-4|worker.registered|1".to_owned()),
        "{tables:?}"
    );
    assert_eq!(
        commands(&batch, "wb-3", Uuid::from_u128(77)).await.len(),
        1,
        "the unallocated run was not stopped"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_heartbeat_that_repeats_the_last_stored_one_touches_no_table_until_the_refresh() {
    init_tracing();
    let env = TestEnv::new().await;
    let rm = ResourceManager::new(
        Topics::new(&env.kafka),
        RmSettings {
            heartbeat_store_ms: 60_000,
            ..rm_settings()
        },
    );
    let last_report = || async {
        sqlx::query_scalar::<_, Option<Uuid>>(
            "SELECT last_report_id FROM rm_workers WHERE worker_id = 'wm'",
        )
        .fetch_one(&env.pool)
        .await
        .unwrap()
    };
    let mut stored = Vec::new();
    for (seq, running) in [
        // Registers (not remembered: a registration is always confirmed by the next beat).
        (1, vec![]),
        // Stored and remembered.
        (2, vec![]),
        // A repeat: answered from memory.
        (3, vec![]),
        // A change (a run the worker holds without an allocation): stored, and stopped.
        (4, vec![Uuid::from_u128(9)]),
    ] {
        let beat = heartbeat("wm", 8, running, seq);
        let mut tx = env.pool.begin().await.unwrap();
        apply_once(&mut tx, &rm, &beat).await.unwrap();
        tx.commit().await.unwrap();
        stored.push((beat.event_id, last_report().await));
    }
    assert_eq!(stored[0].1, Some(stored[0].0));
    assert_eq!(stored[1].1, Some(stored[1].0));
    assert_eq!(stored[2].1, Some(stored[1].0), "the repeat was written");
    assert_eq!(stored[3].1, Some(stored[3].0), "the change was not written");
    assert_eq!(
        commands(&env, "wm", Uuid::from_u128(9)).await.len(),
        1,
        "the unallocated run was not stopped"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_start_command_delayed_past_the_restart_grace_is_not_requeued_so_nothing_runs_twice() {
    init_tracing();
    let env = TestEnv::new().await;
    // No restart grace at all: under the old rule the second heartbeat omitting the run
    // requeued it while its start command was still on its way (issue 10: 16% ran twice).
    let overloaded = RmSettings {
        restart_grace_ms: 0,
        // Every heartbeat goes through the reconciliation.
        heartbeat_store_ms: 0,
        ..rm_settings()
    };
    let rm = ResourceManager::new(Topics::new(&env.kafka), overloaded.clone());
    let apply = |e: Envelope, rm: ResourceManager| {
        let pool = env.pool.clone();
        async move {
            let mut tx = pool.begin().await.unwrap();
            apply_once(&mut tx, &rm, &e).await.unwrap();
            tx.commit().await.unwrap();
        }
    };
    apply(heartbeat("wo", 8, vec![], 1), rm.clone()).await;
    let id = Uuid::now_v7();
    submit(&env, id, 2, 60).await;
    let proposed = append_next(&env, id, proposal(id, "wo", &[0, 1], 1)).await;
    apply(proposed, rm.clone()).await;
    assert!(has_event(&env, id, |e| matches!(e, Event::WorkloadScheduled(_))).await);

    // The worker has not received the start yet: its heartbeats keep omitting the run.
    for seq in 2..6 {
        apply(heartbeat("wo", 8, vec![], seq), rm.clone()).await;
    }
    assert!(
        !has_event(&env, id, |e| matches!(e, Event::WorkloadRequeued(_))).await,
        "an unacknowledged start was requeued"
    );
    let live = allocations(&env, id).await;
    assert_eq!(live.len(), 2);
    assert!(live.iter().all(|(_, released, _)| !released), "{live:?}");
    assert_eq!(
        commands(&env, "wo", id).await.len(),
        1,
        "one start, no second"
    );

    // A start that is never acknowledged within its own (much longer) timeout is taken as
    // lost and requeued, with a reason that says so.
    let lost = ResourceManager::new(
        Topics::new(&env.kafka),
        RmSettings {
            start_ack_timeout_ms: 0,
            ..overloaded
        },
    );
    apply(heartbeat("wo", 8, vec![], 6), lost).await;
    wait_event(&env, id, "requeued", |e| {
        matches!(e, Event::WorkloadRequeued(_))
    })
    .await;
    assert_last_requeued(&env, id, "never acknowledged the start", "start_lost").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_worker_is_lost_and_its_work_requeued_from_the_last_checkpoint() {
    init_tracing();
    let env = TestEnv::new().await;
    let settings = RmSettings {
        worker_timeout_ms: 1_500,
        ..rm_settings()
    };
    let relay = start_relay(&env);
    let rm = start_rm(&env, &settings);
    let sweep = start_sweep(&env, &settings);
    let worker = start_worker(&env, worker_settings("wd", 8, 20.0));
    wait_registered(&env, "wd").await;

    let id = Uuid::now_v7();
    submit(&env, id, 4, 200).await; // 10 s at 20x: checkpoints every second
    append_next(&env, id, proposal(id, "wd", &[0, 1, 2, 3], 1)).await;
    wait_event(
        &env,
        id,
        "a checkpoint",
        |e| matches!(e, Event::WorkloadCheckpointed(c) if c.progress >= 0.2),
    )
    .await;
    worker.stop().await; // silence

    wait_event(&env, id, "requeued", |e| {
        matches!(e, Event::WorkloadRequeued(_))
    })
    .await;
    let events = workload_events(&env, id).await;
    let last_checkpoint = events
        .iter()
        .filter_map(|e| match &e.payload {
            Event::WorkloadCheckpointed(c) => Some(c.progress),
            _ => None,
        })
        .next_back()
        .unwrap();
    let requeued = events.last().unwrap();
    let Event::WorkloadRequeued(r) = &requeued.payload else {
        panic!("{requeued:?}")
    };
    assert!(last_checkpoint >= 0.2);
    assert_eq!(r.resume_progress, last_checkpoint);
    assert!(r.reason.starts_with("worker wd silent for"), "{}", r.reason);

    let worker_events = stream(&env, &worker_stream("wd")).await;
    let lost = worker_events.last().unwrap();
    let Event::WorkerLost(l) = &lost.payload else {
        panic!("{worker_events:?}")
    };
    assert!(l.silent_for_s >= 1.5, "{l:?}");
    assert_eq!(requeued.causation_id, Some(lost.event_id));
    assert_eq!(requeued.correlation_id, events[0].correlation_id);
    assert!(allocations(&env, id)
        .await
        .iter()
        .all(|(_, released, reason)| *released && reason.as_deref() == Some("worker_lost")));
    let state: String = sqlx::query_scalar("SELECT state FROM rm_workers WHERE worker_id = 'wd'")
        .fetch_one(&env.pool)
        .await
        .unwrap();
    assert_eq!(state, "lost");

    // Back on the same id: registered again, and its GPUs can be allocated again.
    let worker = start_worker(&env, worker_settings("wd", 8, 20.0));
    assert!(
        wait_until(WAIT, POLL, || async {
            stream(&env, &worker_stream("wd"))
                .await
                .last()
                .is_some_and(|e| matches!(e.payload, Event::WorkerRegistered(_)))
        })
        .await,
        "re-registered"
    );
    append_next(&env, id, proposal(id, "wd", &[0, 1, 2, 3], 2)).await;
    assert!(
        wait_until(WAIT, POLL, || async {
            workload_events(&env, id)
                .await
                .iter()
                .filter(|e| matches!(e.payload, Event::WorkloadStarted(_)))
                .count()
                == 2
        })
        .await,
        "started again"
    );
    let starts = commands(&env, "wd", id).await;
    assert!(
        matches!(starts.last(), Some(CommandAction::Start { resume_progress, .. }) if *resume_progress == last_checkpoint),
        "{starts:?}"
    );

    worker.stop().await;
    sweep.stop().await;
    rm.stop().await;
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_worker_that_forgot_its_run_gets_it_requeued_after_the_grace() {
    init_tracing();
    let env = TestEnv::new().await;
    let settings = RmSettings {
        restart_grace_ms: 1_000,
        ..rm_settings()
    };
    let relay = start_relay(&env);
    let rm = start_rm(&env, &settings);
    let worker = start_worker(&env, worker_settings("we", 8, 20.0));
    wait_registered(&env, "we").await;
    let id = Uuid::now_v7();
    submit(&env, id, 1, 2_000).await;
    append_next(&env, id, proposal(id, "we", &[5], 1)).await;
    wait_event(&env, id, "started", |e| {
        matches!(e, Event::WorkloadStarted(_))
    })
    .await;

    // A restart: same id, fresh state, heartbeats that no longer list the run.
    worker.stop().await;
    let worker = start_worker(&env, worker_settings("we", 8, 20.0));
    wait_event(&env, id, "requeued", |e| {
        matches!(e, Event::WorkloadRequeued(_))
    })
    .await;
    assert_last_requeued(&env, id, "worker we restarted", "worker_restarted").await;
    assert_eq!(
        commands(&env, "we", id).await.len(),
        1,
        "the restarted worker resumed after the start it had obeyed"
    );

    worker.stop().await;
    rm.stop().await;
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_a_running_workload_releases_its_gpus_and_stops_the_run() {
    init_tracing();
    let env = TestEnv::new().await;
    let settings = rm_settings();
    let relay = start_relay(&env);
    let rm = start_rm(&env, &settings);
    let worker = start_worker(&env, worker_settings("wf", 8, 20.0));
    wait_registered(&env, "wf").await;
    let id = Uuid::now_v7();
    submit(&env, id, 2, 2_000).await;
    append_next(&env, id, proposal(id, "wf", &[2, 3], 1)).await;
    wait_event(&env, id, "started", |e| {
        matches!(e, Event::WorkloadStarted(_))
    })
    .await;

    let cancelled = append_next(
        &env,
        id,
        Event::WorkloadCancelled(WorkloadCancelled {
            workload_id: id,
            requested_by: "acme".into(),
        }),
    )
    .await;
    assert!(
        wait_until(WAIT, POLL, || async {
            allocations(&env, id)
                .await
                .iter()
                .all(|(_, released, _)| *released)
        })
        .await,
        "allocation released"
    );
    assert!(allocations(&env, id)
        .await
        .iter()
        .all(|(_, _, reason)| reason.as_deref() == Some("cancelled")));
    let stops: Vec<Envelope> = stream(&env, &command_stream("wf"))
        .await
        .into_iter()
        .filter(|e| matches!(&e.payload, Event::DeviceCommand(c) if c.workload_id == id && matches!(c.action, CommandAction::Stop { .. })))
        .collect();
    let Event::DeviceCommand(stop) = &stops[0].payload else {
        unreachable!()
    };
    assert_eq!(
        stop.action,
        CommandAction::Stop {
            checkpoint: false,
            reason: "cancelled by acme".into()
        }
    );
    assert_eq!(stops[0].causation_id, Some(cancelled.event_id));

    // The worker obeyed: it reported the run stopped (the resource-manager ignores that
    // report: the workload holds nothing any more).
    let topic = env.topic(Topic::WorkerReports);
    assert!(
        wait_until(WAIT, Duration::from_millis(200), || async {
            hcp_tests::read_events(&env.kafka, &topic, usize::MAX, Duration::from_secs(1))
                .await
                .into_iter()
                .map(|w| w.envelope)
                .any(|e| matches!(e.payload, Event::RunReported(r) if r.workload_id == id && r.status == RunStatus::Stopped))
        })
        .await,
        "the worker reported the run stopped"
    );
    // The GPUs are free: another workload gets them.
    let next = Uuid::now_v7();
    submit(&env, next, 2, 20).await;
    append_next(&env, next, proposal(next, "wf", &[2, 3], 1)).await;
    wait_event(&env, next, "scheduled", |e| {
        matches!(e, Event::WorkloadScheduled(_))
    })
    .await;

    worker.stop().await;
    rm.stop().await;
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_preempted_run_stops_with_a_checkpoint_and_is_requeued_from_it() {
    init_tracing();
    let env = TestEnv::new().await;
    let settings = rm_settings();
    let relay = start_relay(&env);
    let rm = start_rm(&env, &settings);
    let worker = start_worker(&env, worker_settings("wg", 8, 20.0));
    wait_registered(&env, "wg").await;
    let id = Uuid::now_v7();
    submit(&env, id, 8, 400).await; // 20 s at 20x
    append_next(&env, id, proposal(id, "wg", &[0, 1, 2, 3, 4, 5, 6, 7], 1)).await;
    wait_event(&env, id, "a checkpoint", |e| {
        matches!(e, Event::WorkloadCheckpointed(_))
    })
    .await;
    let preempted = append_next(
        &env,
        id,
        Event::WorkloadPreempted(WorkloadPreempted {
            workload_id: id,
            for_workload_id: Uuid::now_v7(),
            reason: "room for real-time work".into(),
        }),
    )
    .await;
    wait_event(&env, id, "requeued", |e| {
        matches!(e, Event::WorkloadRequeued(_))
    })
    .await;

    let events = workload_events(&env, id).await;
    let after: Vec<&Event> = events
        .iter()
        .skip_while(|e| e.event_id != preempted.event_id)
        .skip(1)
        .map(|e| &e.payload)
        .collect();
    let before_max = events
        .iter()
        .take_while(|e| e.event_id != preempted.event_id)
        .filter_map(|e| match &e.payload {
            Event::WorkloadCheckpointed(c) => Some(c.progress),
            _ => None,
        })
        .fold(0.0, f64::max);
    let (checkpoint, requeued) = match after.as_slice() {
        [.., Event::WorkloadCheckpointed(c), Event::WorkloadRequeued(r)] => (c, r),
        other => panic!("{other:#?}"),
    };
    assert!(checkpoint.progress > 0.0 && checkpoint.progress >= before_max);
    assert_eq!(requeued.resume_progress, checkpoint.progress);
    assert!(
        requeued.reason.starts_with("preempted"),
        "{}",
        requeued.reason
    );
    assert!(allocations(&env, id)
        .await
        .iter()
        .all(|(_, released, reason)| *released && reason.as_deref() == Some("preempted")));
    let cmds = commands(&env, "wg", id).await;
    assert!(matches!(
        &cmds[..],
        [
            CommandAction::Start { .. },
            CommandAction::Stop {
                checkpoint: true,
                ..
            }
        ]
    ));

    // Placed again, it resumes from that checkpoint.
    append_next(&env, id, proposal(id, "wg", &[0, 1, 2, 3, 4, 5, 6, 7], 2)).await;
    wait_event(&env, id, "scheduled again", |e| {
        matches!(e, Event::WorkloadScheduled(_))
    })
    .await;
    assert!(
        wait_until(WAIT, POLL, || async {
            commands(&env, "wg", id).await.len() == 3
        })
        .await
    );
    let cmds = commands(&env, "wg", id).await;
    assert!(
        matches!(&cmds[2], CommandAction::Start { resume_progress, .. } if *resume_progress == checkpoint.progress),
        "{cmds:?}"
    );

    worker.stop().await;
    rm.stop().await;
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_report_on_another_workers_stream_is_dead_lettered_with_the_reason() {
    init_tracing();
    let env = TestEnv::new().await;
    let rm = start_rm(&env, &rm_settings());
    let producer = Producer::new(&env.kafka, "test-bad-worker").unwrap();
    let mut bad = heartbeat("wx", 2, vec![], 1);
    bad.stream_id = report_stream("wy");
    let good = heartbeat("wz", 2, vec![], 1);
    for e in [&bad, &good] {
        producer
            .send(&OutgoingMessage {
                topic: env.topic(Topic::WorkerReports),
                key: e.stream_id.clone(),
                payload: e.to_json().unwrap(),
                headers: vec![],
            })
            .await
            .unwrap();
    }
    let dead = read_topic(&env.kafka, &env.topic(Topic::DeadLetters), 1, WAIT).await;
    assert_eq!(dead.len(), 1);
    let reason = dead[0]
        .headers()
        .unwrap()
        .iter()
        .find(|h| h.key == headers::DLQ_REASON)
        .and_then(|h| h.value)
        .map(|v| String::from_utf8_lossy(v).into_owned())
        .unwrap();
    assert!(
        reason.contains("a heartbeat of worker wx on stream reports-wy"),
        "{reason}"
    );
    // The consumer went on: the good heartbeat registered its worker.
    assert!(
        wait_until(WAIT, POLL, || async {
            let known: HashSet<String> = sqlx::query_scalar("SELECT worker_id FROM rm_workers")
                .fetch_all(&env.pool)
                .await
                .unwrap()
                .into_iter()
                .collect();
            known.contains("wz") && !known.contains("wx")
        })
        .await
    );
    rm.stop().await;
}
