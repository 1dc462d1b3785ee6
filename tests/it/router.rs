//! The router in-process against the real PostgreSQL and the real broker: its consumer
//! (classification, inventory, rejections), its placement loop and an outbox relay. The test
//! plays the other services: it appends `worker.registered` as the resource-manager would,
//! `workload.submitted` as the gateway would, and answers proposals as the resource-manager
//! would. Every assertion is over the event log.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use hcp_bus::transactional::{ConsumerSettings, TransactionalConsumer};
use hcp_bus::Producer;
use hcp_db::sqlx;
use hcp_db::{EventStore, ExpectedVersion, Projection, Publish};
use hcp_events::payload::*;
use hcp_events::{worker_stream, workload_stream, Envelope, Event, Tier, Topic, WorkloadKind};
use hcp_router::{Placer, RouterConfig, RouterProjection, TOPICS};
use hcp_tests::fixtures::start_relay;
use hcp_tests::{wait_until, TestEnv};
use time::OffsetDateTime;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

const WAIT: Duration = Duration::from_secs(40);
const POLL: Duration = Duration::from_millis(50);

/// A router running in-process: consumer + placement loop + relay.
/// How the in-process router places.
#[derive(Debug, Clone, Copy)]
enum Mode {
    /// Proposes; the test answers as the resource-manager would.
    Propose,
    /// Places directly through the allocation ledger.
    Direct,
    /// No placement loop (the test drives passes itself).
    NoPlacer,
}

struct Router {
    token: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
    relay: hcp_tests::fixtures::Running,
}

impl Router {
    /// Proposing, with the test in the resource-manager's place.
    fn start(env: &TestEnv, config: RouterConfig) -> Self {
        Self::start_with(env, config, Mode::Propose)
    }

    fn start_with(env: &TestEnv, config: RouterConfig, mode: Mode) -> Self {
        let config = Arc::new(config);
        let wake = Arc::new(Notify::new());
        let topic = env.topic(Topic::Workloads);
        let projection = RouterProjection::new(config.clone(), topic.clone(), wake.clone());
        let settings = ConsumerSettings::new(
            format!("{}.{}", env.kafka.namespace, projection.name()),
            TOPICS.iter().map(|t| env.topic(*t)).collect(),
            env.topic(Topic::DeadLetters),
        );
        let producer = Producer::new(&env.kafka, "router-test").expect("producer");
        let consumer = TransactionalConsumer::for_projection(
            &env.kafka,
            settings,
            env.pool.clone(),
            projection,
            producer,
        )
        .expect("consumer");
        let token = CancellationToken::new();
        let t = token.clone();
        let consumer = tokio::spawn(async move { consumer.run(t).await.expect("consumer") });
        let mut tasks = vec![consumer];
        let mut placer = Placer::new(env.pool.clone(), config, topic, wake);
        match mode {
            Mode::Propose => {}
            Mode::Direct => placer = placer.placing_directly(env.topic(Topic::DeviceCommands)),
            Mode::NoPlacer => {
                return Self {
                    token,
                    tasks,
                    relay: start_relay(env),
                }
            }
        }
        let t = token.clone();
        tasks.push(tokio::spawn(
            async move { placer.run(t).await.expect("placer") },
        ));
        Self {
            token,
            tasks,
            relay: start_relay(env),
        }
    }

    async fn stop(self) {
        self.token.cancel();
        for t in self.tasks {
            t.await.expect("router task");
        }
        self.relay.stop().await;
    }
}

fn config() -> RouterConfig {
    let mut c = RouterConfig::defaults().expect("defaults");
    c.tick_ms = 20;
    c.backoff_base_ms = 20;
    c.backoff_max_ms = 200;
    c.max_attempts = 3;
    c
}

fn gpus(worker: &str, n: usize) -> Vec<GpuSpec> {
    (0..n)
        .map(|i| GpuSpec {
            gpu_id: format!("{worker}/gpu-{i}"),
            model: "H100".into(),
            memory_mib: 80 * 1024,
        })
        .collect()
}

/// Appends `worker.registered` as the resource-manager would, and waits until the router's
/// inventory has it (so feasibility checks see it).
async fn register(env: &TestEnv, worker: &str, n: usize) {
    register_with(env, worker, "site-a", gpus(worker, n)).await;
}

/// [`register`] with the worker's site and GPUs.
async fn register_with(env: &TestEnv, worker: &str, site: &str, gpus: Vec<GpuSpec>) {
    let e = Envelope::new(
        worker_stream(worker),
        "resource-manager",
        Event::WorkerRegistered(WorkerRegistered {
            worker_id: worker.into(),
            site: site.into(),
            backend: "sim".into(),
            gpus,
        }),
    );
    EventStore::new(env.pool.clone())
        .append_and_commit(
            &e.stream_id.clone(),
            ExpectedVersion::Any,
            &[e],
            &Publish::to(env.topic(Topic::Resources)),
        )
        .await
        .expect("append worker.registered");
    let pool = env.pool.clone();
    let worker = worker.to_owned();
    assert!(
        wait_until(WAIT, POLL, || {
            let (pool, worker) = (pool.clone(), worker.clone());
            async move {
                sqlx::query_scalar::<_, i64>(
                    "SELECT count(*) FROM router_worker_classes WHERE worker_id = $1",
                )
                .bind(worker)
                .fetch_one(&pool)
                .await
                .unwrap_or(0)
                    > 0
            }
        })
        .await,
        "the router never saw the worker"
    );
}

/// Appends `workload.submitted` as the gateway would.
async fn submit(env: &TestEnv, s: WorkloadSubmitted) -> Uuid {
    let id = s.workload_id;
    let e = Envelope::new(workload_stream(id), "gateway", Event::WorkloadSubmitted(s));
    EventStore::new(env.pool.clone())
        .append_and_commit(
            &workload_stream(id),
            ExpectedVersion::NoStream,
            &[e],
            &Publish::to(env.topic(Topic::Workloads)),
        )
        .await
        .expect("append workload.submitted");
    id
}

fn submission(kind: Option<WorkloadKind>, gpu_count: u32) -> WorkloadSubmitted {
    let mut s = WorkloadSubmitted::simple(
        Uuid::now_v7(),
        "acme",
        WorkloadKind::BatchInference,
        "all-MiniLM-L6-v2",
        gpu_count,
        60,
    );
    s.kind = kind;
    s
}

async fn events(env: &TestEnv, id: Uuid) -> Vec<Envelope> {
    EventStore::new(env.pool.clone())
        .read_stream(&workload_stream(id))
        .await
        .expect("read stream")
        .into_iter()
        .map(|r| r.envelope)
        .collect()
}

/// Waits (bounded) until the workload's stream satisfies `done`; returns the stream.
async fn wait_for(
    env: &TestEnv,
    id: Uuid,
    what: &str,
    done: impl Fn(&[Envelope]) -> bool,
) -> Vec<Envelope> {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let evs = events(env, id).await;
        if done(&evs) {
            return evs;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}; stream: {:?}",
            evs.iter()
                .map(|e| e.event_type().as_str())
                .collect::<Vec<_>>()
        );
        tokio::time::sleep(POLL).await;
    }
}

/// Waits (bounded) until the workload's `router_queue` row satisfies `condition` (SQL over
/// its columns).
async fn row_becomes(env: &TestEnv, id: Uuid, condition: &str) -> bool {
    let query = format!("SELECT {condition} FROM router_queue WHERE workload_id = $1");
    wait_until(WAIT, POLL, || {
        let (pool, query) = (env.pool.clone(), query.clone());
        async move {
            sqlx::query_scalar::<_, bool>(&query)
                .bind(id)
                .fetch_one(&pool)
                .await
                .unwrap_or(false)
        }
    })
    .await
}

fn types(evs: &[Envelope]) -> Vec<&'static str> {
    evs.iter().map(|e| e.event_type().as_str()).collect()
}

fn last_is(evs: &[Envelope], ty: hcp_events::EventType) -> bool {
    evs.last().is_some_and(|e| e.event_type() == ty)
}

/// Appends an event to a workload stream at exactly `after` (as another service would).
async fn append_at(env: &TestEnv, id: Uuid, after: i64, event: Event) {
    let e = Envelope::new(workload_stream(id), "resource-manager", event);
    EventStore::new(env.pool.clone())
        .append_and_commit(
            &workload_stream(id),
            ExpectedVersion::Exact(after),
            &[e],
            &Publish::to(env.topic(Topic::Workloads)),
        )
        .await
        .expect("append");
}

#[tokio::test]
async fn a_submitted_workload_is_classified_then_proposed_for_the_registered_worker() {
    let env = TestEnv::new().await;
    let router = Router::start(&env, config());
    register(&env, "w-1", 8).await;

    let mut s = submission(None, 4);
    s.latency_target_ms = Some(50);
    s.tier = Tier::Pro;
    let id = submit(&env, s).await;

    let evs = wait_for(&env, id, "a placement proposal", |evs| {
        evs.iter()
            .any(|e| matches!(e.payload, Event::WorkloadPlacementProposed(_)))
    })
    .await;
    assert_eq!(
        types(&evs),
        vec![
            "workload.submitted",
            "workload.queued",
            "workload.placement_proposed"
        ]
    );
    let Event::WorkloadQueued(q) = &evs[1].payload else {
        panic!("not queued: {:?}", evs[1])
    };
    assert_eq!(q.kind, WorkloadKind::RealtimeInference);
    assert_eq!(q.priority, 9, "realtime 8 + pro 1");
    assert!(!q.interruptible);
    assert!(
        q.reason.contains("inferred from latency_target_ms=50"),
        "{}",
        q.reason
    );
    let Event::WorkloadPlacementProposed(p) = &evs[2].payload else {
        panic!("not proposed: {:?}", evs[2])
    };
    assert_eq!(p.worker_id, "w-1");
    assert_eq!(p.gpu_ids.len(), 4);
    assert!(p.gpu_ids.iter().all(|g| g.starts_with("w-1/gpu-")));
    assert_eq!(p.attempt, 1);
    // Caused by the queued event, in the submission's flow.
    assert_eq!(evs[2].causation_id, Some(evs[1].event_id));
    assert_eq!(evs[2].correlation_id, evs[0].correlation_id);
    router.stop().await;
}

#[tokio::test]
async fn a_request_no_worker_could_ever_hold_fails_at_once_naming_the_fleet() {
    let env = TestEnv::new().await;
    let router = Router::start(&env, config());
    register(&env, "w-1", 8).await;
    register(&env, "w-2", 4).await;

    let mut s = submission(Some(WorkloadKind::Training), 16);
    s.gpu_type = Some("H100".into());
    let id = submit(&env, s).await;

    let evs = wait_for(&env, id, "workload.failed", |evs| {
        last_is(evs, hcp_events::EventType::WorkloadFailed)
    })
    .await;
    assert_eq!(types(&evs), vec!["workload.submitted", "workload.failed"]);
    let Event::WorkloadFailed(f) = &evs[1].payload else {
        unreachable!()
    };
    assert_eq!(
        f.reason,
        "requested 16 GPUs of type H100 on one worker, but the fleet's best match is \
         8 x H100 (80 GiB) on worker w-1"
    );
    router.stop().await;
}

#[tokio::test]
async fn a_workload_whose_deadline_passes_in_the_queue_fails_with_the_reason() {
    let env = TestEnv::new().await;
    let router = Router::start(&env, config());
    // No worker at all: the workload is queued (the fleet may be starting) but cannot be placed.
    let mut s = submission(Some(WorkloadKind::BatchInference), 1);
    s.deadline = Some(OffsetDateTime::now_utc() + time::Duration::seconds(2));
    let id = submit(&env, s).await;

    let evs = wait_for(&env, id, "workload.failed", |evs| {
        last_is(evs, hcp_events::EventType::WorkloadFailed)
    })
    .await;
    assert_eq!(
        types(&evs),
        vec!["workload.submitted", "workload.queued", "workload.failed"]
    );
    let Event::WorkloadFailed(f) = &evs[2].payload else {
        unreachable!()
    };
    assert!(f.reason.starts_with("deadline "), "{}", f.reason);
    assert!(
        f.reason.ends_with("passed before placement"),
        "{}",
        f.reason
    );
    assert!(evs[2].occurred_at >= evs[0].occurred_at + time::Duration::seconds(1));
    router.stop().await;
}

#[tokio::test]
async fn a_rejected_placement_is_retried_with_backoff_and_fails_after_max_attempts() {
    let env = TestEnv::new().await;
    let router = Router::start(&env, config());
    register(&env, "w-1", 8).await;
    let id = submit(&env, submission(Some(WorkloadKind::BatchInference), 2)).await;

    // Play the resource-manager: refuse every proposal (retryably).
    let mut refused = 0;
    let evs = loop {
        let evs = wait_for(&env, id, "a proposal or the failure", |evs| {
            last_is(evs, hcp_events::EventType::WorkloadPlacementProposed)
                || last_is(evs, hcp_events::EventType::WorkloadFailed)
        })
        .await;
        if last_is(&evs, hcp_events::EventType::WorkloadFailed) {
            break evs;
        }
        let last = evs.last().unwrap();
        let Event::WorkloadPlacementProposed(p) = &last.payload else {
            unreachable!()
        };
        assert_eq!(p.attempt, refused + 1);
        append_at(
            &env,
            id,
            last.sequence,
            Event::WorkloadPlacementRejected(WorkloadPlacementRejected {
                workload_id: id,
                worker_id: p.worker_id.clone(),
                reason: "unknown_gpu: w-1/gpu-0 vanished (test)".into(),
                retryable: true,
                code: Some(RejectCode::UnknownGpu),
            }),
        )
        .await;
        refused += 1;
        assert!(refused <= 3, "proposed again after max attempts");
    };
    assert_eq!(refused, 3);
    assert_eq!(
        types(&evs),
        vec![
            "workload.submitted",
            "workload.queued",
            "workload.placement_proposed",
            "workload.placement_rejected",
            "workload.placement_proposed",
            "workload.placement_rejected",
            "workload.placement_proposed",
            "workload.placement_rejected",
            "workload.failed",
        ]
    );
    // Backoff: the second retry waited longer than the first (20 ms, then 40 ms at least).
    let gap = |i: usize| evs[i + 1].occurred_at - evs[i].occurred_at;
    assert!(gap(3) >= time::Duration::milliseconds(20), "{}", gap(3));
    assert!(gap(5) >= time::Duration::milliseconds(40), "{}", gap(5));
    let Event::WorkloadFailed(f) = &evs[8].payload else {
        unreachable!()
    };
    assert!(
        f.reason.contains("after 3 attempts") && f.reason.contains("vanished (test)"),
        "{}",
        f.reason
    );
    // Three consecutive refusals that were w-1's fault opened its circuit breaker.
    let breaker: String =
        sqlx::query_scalar("SELECT breaker->>'state' FROM router_workers WHERE worker_id = 'w-1'")
            .fetch_one(&env.pool)
            .await
            .unwrap();
    assert_eq!(breaker, "open");
    router.stop().await;
}

#[tokio::test]
async fn realtime_work_preempts_lower_priority_training_and_the_victim_is_requeued() {
    let env = TestEnv::new().await;
    let router = Router::start(&env, config());
    register(&env, "w-1", 2).await;

    // Training takes both GPUs (the test schedules and starts it as the resource-manager would).
    let train = submit(&env, submission(Some(WorkloadKind::Training), 2)).await;
    let evs = wait_for(&env, train, "the training proposal", |evs| {
        last_is(evs, hcp_events::EventType::WorkloadPlacementProposed)
    })
    .await;
    let Event::WorkloadPlacementProposed(p) = &evs.last().unwrap().payload else {
        unreachable!()
    };
    let (worker, gpu_ids) = (p.worker_id.clone(), p.gpu_ids.clone());
    let v = evs.last().unwrap().sequence;
    append_at(
        &env,
        train,
        v,
        Event::WorkloadScheduled(WorkloadScheduled {
            workload_id: train,
            worker_id: worker.clone(),
            gpu_ids: gpu_ids.clone(),
        }),
    )
    .await;
    append_at(
        &env,
        train,
        v + 1,
        Event::WorkloadStarted(WorkloadStarted { workload_id: train }),
    )
    .await;

    // Real-time work arrives and cannot fit.
    let mut s = submission(Some(WorkloadKind::RealtimeInference), 2);
    s.tier = Tier::Enterprise;
    let rt = submit(&env, s).await;
    let evs = wait_for(&env, train, "the preemption", |evs| {
        last_is(evs, hcp_events::EventType::WorkloadPreempted)
    })
    .await;
    let Event::WorkloadPreempted(pre) = &evs.last().unwrap().payload else {
        unreachable!()
    };
    assert_eq!(pre.for_workload_id, rt);
    assert_eq!(
        events(&env, rt).await.len(),
        2,
        "nothing proposed for the real-time work while the GPUs are held"
    );

    // The resource-manager stops it at a checkpoint and requeues it, releasing the GPUs.
    let v = evs.last().unwrap().sequence;
    append_at(
        &env,
        train,
        v,
        Event::WorkloadCheckpointed(WorkloadCheckpointed {
            workload_id: train,
            progress: 0.25,
        }),
    )
    .await;
    append_at(
        &env,
        train,
        v + 1,
        Event::WorkloadRequeued(WorkloadRequeued {
            workload_id: train,
            resume_progress: 0.25,
            reason: "preempted".into(),
        }),
    )
    .await;

    // The real-time work gets the freed GPUs; the victim waits in the queue with its priority.
    let evs = wait_for(&env, rt, "the real-time proposal", |evs| {
        last_is(evs, hcp_events::EventType::WorkloadPlacementProposed)
    })
    .await;
    let Event::WorkloadPlacementProposed(p) = &evs.last().unwrap().payload else {
        unreachable!()
    };
    assert_eq!(p.worker_id, worker);
    assert_eq!(p.gpu_ids, gpu_ids);
    let row: (String, i16, f64) =
        sqlx::query_as("SELECT state, priority, progress FROM router_queue WHERE workload_id = $1")
            .bind(train)
            .fetch_one(&env.pool)
            .await
            .unwrap();
    assert_eq!(row, ("queued".to_owned(), 2, 0.25));
    assert_eq!(
        types(&events(&env, train).await).last(),
        Some(&"workload.requeued"),
        "the victim is not proposed onto the GPUs promised to the real-time work"
    );
    router.stop().await;
}

#[tokio::test]
async fn a_restarted_router_neither_proposes_twice_nor_reuses_promised_gpus() {
    let env = TestEnv::new().await;
    let router = Router::start(&env, config());
    register(&env, "w-1", 2).await;
    let first = submit(&env, submission(Some(WorkloadKind::BatchInference), 1)).await;
    let evs = wait_for(&env, first, "the first proposal", |evs| {
        last_is(evs, hcp_events::EventType::WorkloadPlacementProposed)
    })
    .await;
    let Event::WorkloadPlacementProposed(p1) = &evs.last().unwrap().payload else {
        unreachable!()
    };
    // Wait until the router has recorded its own proposal, then restart it (all memory lost).
    assert!(row_becomes(&env, first, "proposed_at IS NOT NULL").await);
    router.stop().await;
    let router = Router::start(&env, config());

    // A second workload going through proves the new loop has loaded and run passes.
    let second = submit(&env, submission(Some(WorkloadKind::BatchInference), 1)).await;
    let evs2 = wait_for(&env, second, "the second proposal", |evs| {
        last_is(evs, hcp_events::EventType::WorkloadPlacementProposed)
    })
    .await;
    let Event::WorkloadPlacementProposed(p2) = &evs2.last().unwrap().payload else {
        unreachable!()
    };
    assert_ne!(p1.gpu_ids, p2.gpu_ids, "a promised GPU was proposed again");
    assert_eq!(
        types(&events(&env, first).await),
        vec![
            "workload.submitted",
            "workload.queued",
            "workload.placement_proposed"
        ],
        "the first workload was proposed again after the restart"
    );
    router.stop().await;
}

/// The router's tables, as comparable text (the ids of events the router appended itself
/// differ between two runs and are left out).
async fn router_tables(env: &TestEnv) -> Vec<String> {
    let mut rows: Vec<String> = sqlx::query_scalar(
        "SELECT concat_ws('|', workload_id, state, last_version, updated_at, kind, priority, \
             interruptible, class_reason, queued_at, proposed_worker, proposed_gpus::text, proposed_at, \
             attempts, next_attempt_at, last_error, worker_id, gpu_ids::text, progress, \
             progress_at, preempted_for, preempted_at) \
         FROM router_queue ORDER BY workload_id",
    )
    .fetch_all(&env.pool)
    .await
    .unwrap();
    rows.extend(
        sqlx::query_scalar::<_, String>(
            "SELECT concat_ws('|', gpu_id, held_by) FROM router_gpus ORDER BY gpu_id",
        )
        .fetch_all(&env.pool)
        .await
        .unwrap(),
    );
    rows.extend(
        sqlx::query_scalar::<_, String>(
            "SELECT concat_ws('|', worker_id, healthy, breaker::text) FROM router_workers \
             ORDER BY worker_id",
        )
        .fetch_all(&env.pool)
        .await
        .unwrap(),
    );
    rows
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_folds_to_the_same_tables_as_its_events_applied_one_by_one() {
    hcp_tests::init_tracing();
    let (one, batch) = (TestEnv::new().await, TestEnv::new().await);
    let registered = Envelope::new(
        worker_stream("wf"),
        "resource-manager",
        Event::WorkerRegistered(WorkerRegistered {
            worker_id: "wf".into(),
            site: "site-a".into(),
            backend: "sim".into(),
            gpus: gpus("wf", 8),
        }),
    );
    let g = |n: u32| format!("wf/gpu-{n}");
    let ids: Vec<Uuid> = (0..7).map(|_| Uuid::now_v7()).collect();
    let submitted = |id: Uuid, n: u32| {
        Event::WorkloadSubmitted(WorkloadSubmitted::simple(
            id,
            "acme",
            WorkloadKind::Training,
            "llama-3-8b",
            n,
            60,
        ))
    };
    let queued = |id: Uuid| {
        Event::WorkloadQueued(WorkloadQueued {
            workload_id: id,
            kind: WorkloadKind::Training,
            priority: 5,
            interruptible: true,
            reason: "test".into(),
        })
    };
    let proposed = |id: Uuid, a: u32, b: u32| {
        Event::WorkloadPlacementProposed(WorkloadPlacementProposed {
            workload_id: id,
            worker_id: "wf".into(),
            gpu_ids: vec![g(a), g(b)],
            score: 1.0,
            attempt: 1,
        })
    };
    let scheduled = |id: Uuid, a: u32, b: u32| {
        Event::WorkloadScheduled(WorkloadScheduled {
            workload_id: id,
            worker_id: "wf".into(),
            gpu_ids: vec![g(a), g(b)],
        })
    };
    // The code as a version 2 event carries it (the router falls back to the reason's label
    // only for version 1 events).
    let rejected = |id: Uuid, reason: &str, retryable: bool| {
        Event::WorkloadPlacementRejected(WorkloadPlacementRejected {
            workload_id: id,
            worker_id: "wf".into(),
            reason: reason.into(),
            retryable,
            code: RejectCode::from_v1_reason(reason),
        })
    };
    let started = |id: Uuid| Event::WorkloadStarted(WorkloadStarted { workload_id: id });
    let streams: Vec<Vec<Event>> = vec![
        // Classified by the router into its row (the placement cycle announces it).
        vec![submitted(ids[0], 2)],
        // No worker could ever hold 16 GPUs: failed by the router.
        vec![submitted(ids[1], 16)],
        // A whole run.
        vec![
            submitted(ids[2], 2),
            queued(ids[2]),
            proposed(ids[2], 0, 1),
            scheduled(ids[2], 0, 1),
            started(ids[2]),
            Event::WorkloadCheckpointed(WorkloadCheckpointed {
                workload_id: ids[2],
                progress: 0.5,
            }),
            Event::WorkloadCompleted(WorkloadCompleted {
                workload_id: ids[2],
                runtime_s: 60.0,
                output: None,
            }),
        ],
        // A race (no attempt spent), then a worker's fault (an attempt, the breaker).
        vec![
            submitted(ids[3], 2),
            queued(ids[3]),
            proposed(ids[3], 2, 3),
            rejected(ids[3], "gpu_held: wf/gpu-2 is held", true),
            proposed(ids[3], 2, 3),
            rejected(ids[3], "unknown_gpu: wf/gpu-3 is not on wf", true),
        ],
        // Refused for good: failed by the router.
        vec![
            submitted(ids[4], 2),
            queued(ids[4]),
            proposed(ids[4], 4, 5),
            rejected(ids[4], "gpu_mismatch: wf/gpu-4 is an A100", false),
        ],
        // Preempted, requeued and placed again on the GPUs the whole run freed.
        vec![
            submitted(ids[5], 2),
            queued(ids[5]),
            proposed(ids[5], 6, 7),
            scheduled(ids[5], 6, 7),
            started(ids[5]),
            Event::WorkloadPreempted(WorkloadPreempted {
                workload_id: ids[5],
                for_workload_id: ids[2],
                reason: "test".into(),
            }),
            Event::WorkloadRequeued(WorkloadRequeued {
                workload_id: ids[5],
                resume_progress: 0.3,
                reason: "preempted".into(),
            }),
            proposed(ids[5], 0, 1),
            scheduled(ids[5], 0, 1),
        ],
        // Cancelled in the queue: the router's classification finds the stream moved on.
        vec![
            submitted(ids[6], 2),
            Event::WorkloadCancelled(WorkloadCancelled {
                workload_id: ids[6],
                requested_by: "acme".into(),
            }),
        ],
    ];
    // The same envelopes (ids, times) in both databases.
    let mut envelopes: Vec<Vec<Envelope>> = Vec::new();
    for (id, events) in ids.iter().zip(&streams) {
        let mut prev: Option<Envelope> = None;
        let mut stream = Vec::new();
        for (seq, ev) in (1..).zip(events) {
            let mut e = Envelope::new(workload_stream(*id), "test", ev.clone());
            if let Some(p) = &prev {
                e = e.caused_by(p);
            }
            e.sequence = seq;
            prev = Some(e.clone());
            stream.push(e);
        }
        envelopes.push(stream);
    }
    for env in [&one, &batch] {
        let store = EventStore::new(env.pool.clone());
        for stream in &envelopes {
            store
                .append_and_commit(
                    &stream[0].stream_id,
                    ExpectedVersion::NoStream,
                    stream,
                    &Publish::to(env.topic(Topic::Workloads)),
                )
                .await
                .unwrap();
        }
    }
    // The order a consumer might see: the registration, then the streams interleaved.
    let mut order: Vec<&Envelope> = vec![&registered];
    for i in 0..9 {
        order.extend(envelopes.iter().filter_map(|s| s.get(i)));
    }
    let projection = |env: &TestEnv| {
        RouterProjection::new(
            Arc::new(config()),
            env.topic(Topic::Workloads),
            Arc::new(Notify::new()),
        )
    };
    let p = projection(&one);
    for e in &order {
        let mut tx = one.pool.begin().await.unwrap();
        p.apply(&mut tx, e).await.unwrap();
        tx.commit().await.unwrap();
    }
    let p = projection(&batch);
    let mut tx = batch.pool.begin().await.unwrap();
    p.apply_batch(&mut tx, &order).await.unwrap();
    tx.commit().await.unwrap();

    let tables = router_tables(&batch).await;
    assert_eq!(tables, router_tables(&one).await);
    let row = |id: Uuid| {
        tables
            .iter()
            .find(|r| r.starts_with(&id.to_string()))
            .cloned()
            .unwrap()
    };
    // Classified at the submission's version, with the reason the announcement will give.
    assert!(row(ids[0]).contains("|queued|1|"), "{}", row(ids[0]));
    assert!(
        row(ids[0]).contains("|training|") && row(ids[0]).contains("training as stated"),
        "{}",
        row(ids[0])
    );
    assert!(row(ids[1]).contains("|failed|2|"), "{}", row(ids[1]));
    assert!(row(ids[2]).contains("|completed|7|"), "{}", row(ids[2]));
    assert!(row(ids[3]).contains("|queued|6|"), "{}", row(ids[3]));
    assert!(row(ids[4]).contains("|failed|5|"), "{}", row(ids[4]));
    assert!(row(ids[5]).contains("|scheduled|9|"), "{}", row(ids[5]));
    assert!(row(ids[6]).contains("|cancelled|2|"), "{}", row(ids[6]));
    let holder = |gpu: u32| {
        tables
            .iter()
            .find(|r| **r == g(gpu) || r.starts_with(&format!("{}|", g(gpu))))
            .cloned()
            .unwrap()
    };
    assert_eq!(holder(0), format!("{}|{}", g(0), ids[5]));
    assert_eq!(holder(1), format!("{}|{}", g(1), ids[5]));
    for free in 2..8 {
        assert_eq!(holder(free), g(free));
    }
    // What the router's projection appended: failed for the second and the fifth (the queued
    // events are the placement cycle's).
    let log = EventStore::new(batch.pool.clone())
        .read_all(0, 1000)
        .await
        .unwrap();
    let appended: Vec<(String, &str)> = log
        .iter()
        .filter(|r| r.envelope.producer == hcp_router::PRODUCER)
        .map(|r| {
            (
                r.envelope.stream_id.clone(),
                r.envelope.event_type().as_str(),
            )
        })
        .collect();
    assert_eq!(
        appended,
        [
            (workload_stream(ids[1]), "workload.failed"),
            (workload_stream(ids[4]), "workload.failed"),
        ]
    );
}

/// The resource-manager's record of a worker (from a heartbeat): what the allocation ledger
/// checks a direct placement against.
async fn heartbeat(env: &TestEnv, worker: &str, n: usize) {
    let rm = hcp_resource_manager::ResourceManager::new(
        hcp_resource_manager::Topics::new(&env.kafka),
        hcp_resource_manager::RmSettings {
            sweep_interval_ms: 200,
            worker_timeout_ms: 30_000,
            restart_grace_ms: 30_000,
            start_ack_timeout_ms: 300_000,
            heartbeat_store_ms: 2_000,
        },
    );
    let mut e = Envelope::new(
        hcp_events::report_stream(worker),
        "test-worker",
        Event::WorkerHeartbeat(WorkerHeartbeat {
            worker_id: worker.into(),
            site: "site-a".into(),
            backend: "sim".into(),
            gpus: gpus(worker, n),
            running: vec![],
            samples: vec![],
        }),
    );
    e.sequence = 1;
    let mut tx = env.pool.begin().await.unwrap();
    rm.apply(&mut tx, &e).await.unwrap();
    tx.commit().await.unwrap();
}

#[tokio::test]
async fn placing_directly_schedules_in_one_step_and_refuses_what_the_ledger_does_not_know() {
    let env = TestEnv::new().await;
    heartbeat(&env, "w-1", 8).await;
    let router = Router::start_with(&env, config(), Mode::Direct);
    register(&env, "w-1", 8).await;

    let id = submit(&env, submission(Some(WorkloadKind::Training), 2)).await;
    let evs = wait_for(&env, id, "workload.scheduled", |evs| {
        last_is(evs, hcp_events::EventType::WorkloadScheduled)
    })
    .await;
    // No proposal: the placement and the allocation were one step.
    assert_eq!(
        types(&evs),
        [
            "workload.submitted",
            "workload.queued",
            "workload.scheduled"
        ]
    );
    assert_eq!(evs[2].causation_id, Some(evs[1].event_id));
    assert_eq!(evs[2].producer, hcp_router::PRODUCER);
    // Classified and placed in one cycle: queued and scheduled were written by one
    // transaction (the log's rows are never updated, so xmin is the writing transaction).
    let writers: i64 = sqlx::query_scalar(
        "SELECT count(DISTINCT xmin::text) FROM events WHERE stream_id = $1 \
         AND stream_sequence IN (2, 3)",
    )
    .bind(workload_stream(id))
    .fetch_one(&env.pool)
    .await
    .unwrap();
    assert_eq!(writers, 1, "queued and scheduled in separate transactions");
    let Event::WorkloadScheduled(s) = &evs[2].payload else {
        panic!("not scheduled: {:?}", evs[2])
    };
    let live: Vec<String> = sqlx::query_scalar(
        "SELECT gpu_id FROM rm_allocations WHERE workload_id = $1 AND released_at IS NULL \
         ORDER BY gpu_id",
    )
    .bind(id)
    .fetch_all(&env.pool)
    .await
    .unwrap();
    let mut want = s.gpu_ids.clone();
    want.sort();
    assert_eq!(live, want);
    let run: String = sqlx::query_scalar("SELECT state FROM rm_runs WHERE workload_id = $1")
        .bind(id)
        .fetch_one(&env.pool)
        .await
        .unwrap();
    assert_eq!(
        run, "scheduled",
        "unacknowledged until the worker reports it started"
    );
    let commands = EventStore::new(env.pool.clone())
        .read_stream(&hcp_events::command_stream("w-1"))
        .await
        .unwrap();
    assert!(
        matches!(
            commands.as_slice(),
            [c] if matches!(&c.envelope.payload, Event::DeviceCommand(d)
                if d.workload_id == id
                    && matches!(&d.action, CommandAction::Start { gpu_ids, .. } if *gpu_ids == s.gpu_ids))
        ),
        "{commands:?}"
    );

    // A worker the router knows but the ledger does not (it never sent a heartbeat): the
    // placement is refused and recorded as its proposal and rejection; no worker the ledger
    // knows has A100s, so the refusal is final and the workload fails.
    let mut a100 = gpus("w-2", 4);
    for g in &mut a100 {
        g.model = "A100".into();
    }
    register_with(&env, "w-2", "site-b", a100).await;
    let mut s = submission(Some(WorkloadKind::Training), 2);
    s.gpu_type = Some("A100".into());
    let id = submit(&env, s).await;
    let evs = wait_for(&env, id, "workload.failed", |evs| {
        last_is(evs, hcp_events::EventType::WorkloadFailed)
    })
    .await;
    let rejections: Vec<&WorkloadPlacementRejected> = evs
        .iter()
        .filter_map(|e| match &e.payload {
            Event::WorkloadPlacementRejected(r) => Some(r),
            _ => None,
        })
        .collect();
    assert_eq!(
        types(&evs),
        [
            "workload.submitted",
            "workload.queued",
            "workload.placement_proposed",
            "workload.placement_rejected",
            "workload.failed"
        ]
    );
    assert!(
        matches!(rejections.as_slice(), [r] if r.reason.starts_with("unknown_worker: ")
            && r.worker_id == "w-2" && !r.retryable),
        "{rejections:?}"
    );
    let Some(Event::WorkloadFailed(f)) = evs.last().map(|e| &e.payload) else {
        panic!("not failed")
    };
    assert!(f.reason.contains("unknown_worker"), "{}", f.reason);
    // Each rejection answers the proposal recorded with it.
    for (i, e) in evs.iter().enumerate() {
        if matches!(e.payload, Event::WorkloadPlacementRejected(_)) {
            assert!(matches!(
                evs[i - 1].payload,
                Event::WorkloadPlacementProposed(_)
            ));
            assert_eq!(e.causation_id, Some(evs[i - 1].event_id));
        }
    }
    let held: i64 =
        sqlx::query_scalar("SELECT count(*) FROM rm_allocations WHERE workload_id = $1")
            .bind(id)
            .fetch_one(&env.pool)
            .await
            .unwrap();
    assert_eq!(held, 0);
    router.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_placement_loops_placing_directly_at_once_never_double_book() {
    let env = TestEnv::new().await;
    heartbeat(&env, "w-1", 8).await;
    // The router's consumer and relay, without its own placement loop.
    let router = Router::start_with(&env, config(), Mode::NoPlacer);
    register(&env, "w-1", 8).await;
    let mut ids = Vec::new();
    for _ in 0..12 {
        ids.push(submit(&env, submission(Some(WorkloadKind::Training), 2)).await);
    }
    let pool = env.pool.clone();
    assert!(
        wait_until(WAIT, POLL, || {
            let pool = pool.clone();
            async move {
                sqlx::query_scalar::<_, i64>(
                    "SELECT count(*) FROM router_queue WHERE state = 'queued' \
                     AND priority IS NOT NULL",
                )
                .fetch_one(&pool)
                .await
                .unwrap_or(0)
                    == 12
            }
        })
        .await,
        "the router never classified the 12 workloads"
    );
    // Two placement loops (two router instances) over the same tables, one pass each, at once:
    // both see 12 queued workloads and 8 free GPUs.
    let placer = || {
        Placer::new(
            env.pool.clone(),
            Arc::new(config()),
            env.topic(Topic::Workloads),
            Arc::new(Notify::new()),
        )
        .placing_directly(env.topic(Topic::DeviceCommands))
    };
    let (mut a, mut b) = (placer(), placer());
    let (ra, rb) = tokio::join!(a.pass(), b.pass());
    ra.unwrap();
    rb.unwrap();

    let log = EventStore::new(env.pool.clone())
        .read_all(0, 100_000)
        .await
        .unwrap();
    let mut holder: std::collections::HashMap<String, Uuid> = Default::default();
    let mut scheduled: std::collections::HashMap<Uuid, usize> = Default::default();
    for r in &log {
        if let Event::WorkloadScheduled(s) = &r.envelope.payload {
            *scheduled.entry(s.workload_id).or_default() += 1;
            for g in &s.gpu_ids {
                if let Some(other) = holder.insert(g.clone(), s.workload_id) {
                    panic!("GPU {g} given to {} while {other} holds it", s.workload_id);
                }
            }
        }
    }
    assert_eq!(scheduled.len(), 4, "8 GPUs hold four 2-GPU workloads");
    assert!(scheduled.values().all(|n| *n == 1), "{scheduled:?}");
    let live: i64 =
        sqlx::query_scalar("SELECT count(*) FROM rm_allocations WHERE released_at IS NULL")
            .fetch_one(&env.pool)
            .await
            .unwrap();
    assert_eq!(live, 8);
    let runs: i64 = sqlx::query_scalar("SELECT count(*) FROM rm_runs WHERE state = 'scheduled'")
        .fetch_one(&env.pool)
        .await
        .unwrap();
    assert_eq!(runs, 4);
    let starts = EventStore::new(env.pool.clone())
        .read_stream(&hcp_events::command_stream("w-1"))
        .await
        .unwrap();
    assert_eq!(starts.len(), 4, "one start command per placement");
    router.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_submission_taken_from_the_log_is_placed_without_the_consumer_which_then_applies_it_once()
{
    let env = TestEnv::new().await;
    // The consumer learns the worker, then stops.
    let router = Router::start_with(&env, config(), Mode::NoPlacer);
    register(&env, "w-1", 2).await;
    router.stop().await;

    // Only the log's tail and the placement loop: no consumer and no relay, so nothing of the
    // submission can reach the router through the broker.
    let shared = Arc::new(config());
    let wake = Arc::new(Notify::new());
    let topic = env.topic(Topic::Workloads);
    let token = CancellationToken::new();
    let ahead = hcp_router::ahead::Ahead::new(
        env.pool.clone(),
        RouterProjection::new(shared.clone(), topic.clone(), wake.clone()),
    );
    let tail = ahead.start().await.expect("the tail listens");
    let t = token.clone();
    let following = tokio::spawn(async move { ahead.follow(tail, &t).await.expect("tail") });
    let placer = Placer::new(env.pool.clone(), shared, topic, wake);
    let t = token.clone();
    let placing = tokio::spawn(async move { placer.run(t).await.expect("placer") });

    let id = submit(&env, submission(Some(WorkloadKind::BatchInference), 1)).await;
    let expected = vec![
        "workload.submitted",
        "workload.queued",
        "workload.placement_proposed",
    ];
    let evs = wait_for(&env, id, "a proposal made from the tail", |evs| {
        last_is(evs, hcp_events::EventType::WorkloadPlacementProposed)
    })
    .await;
    assert_eq!(types(&evs), expected);
    token.cancel();
    following.await.unwrap();
    placing.await.unwrap();

    // The consumer now gets the submission from the broker (and the router's own appends):
    // the row the tail wrote is its mark, so it classifies nothing twice and claims nothing.
    let router = Router::start_with(&env, config(), Mode::NoPlacer);
    assert!(
        row_becomes(&env, id, "last_version = 3").await,
        "the consumer never applied the router's own appends"
    );
    router.stop().await;
    assert_eq!(types(&events(&env, id).await), expected);
    let claims: i64 =
        sqlx::query_scalar("SELECT count(*) FROM consumer_stream_positions WHERE stream_id = $1")
            .bind(workload_stream(id))
            .fetch_one(&env.pool)
            .await
            .unwrap();
    assert_eq!(
        claims, 0,
        "the consumer claimed a stream the tail had already marked"
    );
}
