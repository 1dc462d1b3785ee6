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
struct Router {
    token: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
    relay: hcp_tests::fixtures::Running,
}

impl Router {
    fn start(env: &TestEnv, config: RouterConfig) -> Self {
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
        let consumer = TransactionalConsumer::new(
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
        let placer = Placer::new(env.pool.clone(), config, topic, wake);
        let t = token.clone();
        let placer = tokio::spawn(async move { placer.run(t).await.expect("placer") });
        Self {
            token,
            tasks: vec![consumer, placer],
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
    let e = Envelope::new(
        worker_stream(worker),
        "resource-manager",
        Event::WorkerRegistered(WorkerRegistered {
            worker_id: worker.into(),
            site: "site-a".into(),
            backend: "sim".into(),
            gpus: gpus(worker, n),
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
    let pool = env.pool.clone();
    assert!(
        wait_until(WAIT, POLL, || {
            let pool = pool.clone();
            async move {
                sqlx::query_scalar::<_, bool>(
                    "SELECT proposed_at IS NOT NULL FROM router_queue WHERE workload_id = $1",
                )
                .bind(first)
                .fetch_one(&pool)
                .await
                .unwrap_or(false)
            }
        })
        .await
    );
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
