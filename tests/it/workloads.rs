//! The workload path end to end, every service its own process, on the real broker and the
//! real PostgreSQL: REST and Kafka submissions run to completion, cancel, impossible requests,
//! preemption, a silent worker, and SIGKILL of the resource-manager and the router under load
//! with the event log checked for lost work and double-booked GPUs.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashSet;
use std::time::Duration;

use hcp_bus::{OutgoingMessage, Producer};
use hcp_events::Topic;
use hcp_tests::cluster::{assert_no_double_booking, event_log, Api, Cluster, ClusterOptions, Svc};
use hcp_tests::{wait_until, TestEnv};
use serde_json::json;
use uuid::Uuid;

const LONG: Duration = Duration::from_secs(60);

fn job(gpus: u32, duration_s: u32) -> serde_json::Value {
    json!({"model": "llama-3.1-8b-lora", "kind": "training", "gpu_count": gpus,
           "duration_s": duration_s, "interruptible": true})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rest_and_a_kafka_submission_both_run_to_completion() {
    let env = TestEnv::new().await;
    let cluster = Cluster::start(&env, ClusterOptions::default()).await;
    let api = Api::tenant(&cluster, "acme", "pro").await;

    let rest = api
        .submit_ok(
            json!({"model": "all-MiniLM-L6-v2", "gpu_count": 1, "duration_s": 20,
                          "latency_target_ms": 50}),
        )
        .await;

    let request_id = Uuid::now_v7();
    let producer = Producer::new(&env.kafka, "test-producer").unwrap();
    producer
        .send(&OutgoingMessage {
            topic: env.topic(Topic::WorkloadRequests),
            key: request_id.to_string(),
            payload: serde_json::to_vec(&json!({"request_id": request_id, "tenant_id": "acme",
                "model": "mistral-7b-instruct", "gpu_count": 2, "duration_s": 20}))
            .unwrap(),
            headers: vec![],
        })
        .await
        .unwrap();

    assert!(
        api.wait_state(rest, "completed", LONG).await,
        "REST workload ended {}; router log:\n{}",
        api.state(rest).await,
        cluster.log_of(Svc::Router)
    );
    // The Kafka submission is visible through the API under the same tenant.
    let mut kafka_id = None;
    for _ in 0..300 {
        let (_, v) = api.get("/workloads?limit=50").await;
        kafka_id = v["items"].as_array().and_then(|xs| {
            xs.iter()
                .find(|x| x["model"] == "mistral-7b-instruct")
                .and_then(|x| x["workload_id"].as_str())
                .and_then(|s| s.parse::<Uuid>().ok())
        });
        if kafka_id.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let kafka_id = kafka_id.expect("the Kafka submission never appeared in the tenant's list");
    assert!(
        api.wait_state(kafka_id, "completed", LONG).await,
        "Kafka workload ended {}",
        api.state(kafka_id).await
    );

    // The whole lifecycle is in the log, in order.
    let log = event_log(&env.pool).await;
    let types: Vec<&str> = log
        .iter()
        .filter(|e| e.stream_id == format!("workload-{rest}"))
        .map(|e| e.event_type.as_str())
        .collect();
    // The router places directly through the allocation ledger: no proposal hop.
    assert_eq!(
        types,
        [
            "workload.submitted",
            "workload.queued",
            "workload.scheduled",
            "workload.started",
            "workload.completed"
        ]
    );
    let submitted = log
        .iter()
        .find(|e| {
            e.stream_id == format!("workload-{kafka_id}") && e.event_type == "workload.submitted"
        })
        .unwrap();
    assert_eq!(submitted.payload["source"], "kafka");
    assert!(assert_no_double_booking(&log) >= 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_impossible_request_is_rejected_at_once_with_the_reason() {
    let env = TestEnv::new().await;
    let cluster = Cluster::start(&env, ClusterOptions::default()).await;
    let api = Api::tenant(&cluster, "acme", "pro").await;
    // Let the fleet register before asking for the impossible.
    let ok = wait_until(LONG, Duration::from_millis(200), || async {
        let (_, v) = api.get("/resources/summary").await;
        v["gpus"]["total"].as_u64() == Some(16)
    })
    .await;
    assert!(ok, "the fleet never registered 16 GPUs");

    let id = api.submit_ok(job(16, 60)).await;
    assert!(
        api.wait_state(id, "failed", Duration::from_secs(20)).await,
        "16 GPUs on 8-GPU workers ended {}",
        api.state(id).await
    );
    let (_, v) = api.get(&format!("/workloads/{id}")).await;
    let reason = v["reason"].as_str().unwrap_or_default();
    assert!(reason.contains("16"), "the reason names the request: {v}");
    assert!(
        reason.contains('8'),
        "the reason names the fleet's best match: {v}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_works_in_every_live_state_and_is_refused_after_the_end() {
    let env = TestEnv::new().await;
    let options = ClusterOptions {
        workers: 1,
        gpus_per_worker: 2,
        time_scale: 1.0,
        ..Default::default()
    };
    let cluster = Cluster::start(&env, options).await;
    let api = Api::tenant(&cluster, "acme", "pro").await;

    // Running: a long job holds both GPUs.
    let running = api.submit_ok(job(2, 3600)).await;
    assert!(api.wait_state(running, "running", LONG).await);
    // Queued: nothing is free for it.
    let queued = api.submit_ok(job(2, 3600)).await;
    assert!(api.wait_state(queued, "queued", LONG).await);
    // Paused: pause the running job first, then cancel it.
    let (status, v) = api.post(&format!("/workloads/{running}/pause")).await;
    assert!((200..300).contains(&status), "{status} {v}");
    assert!(api.wait_state(running, "paused", LONG).await);

    for id in [queued, running] {
        let (status, v) = api.post(&format!("/workloads/{id}/cancel")).await;
        assert!((200..300).contains(&status), "{status} {v}");
        assert!(api.wait_state(id, "cancelled", LONG).await);
        let (status, v) = api.post(&format!("/workloads/{id}/cancel")).await;
        assert_eq!(status, 409, "a second cancel must be refused: {v}");
        assert!(v.to_string().contains("cancelled"), "{v}");
    }
    // The GPUs came back: a new job runs.
    let next = api.submit_ok(job(2, 5)).await;
    assert!(api.wait_state(next, "running", LONG).await);
    assert_no_double_booking(&event_log(&env.pool).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn realtime_work_preempts_training_which_later_completes_from_its_checkpoint() {
    let env = TestEnv::new().await;
    let options = ClusterOptions {
        workers: 1,
        gpus_per_worker: 2,
        time_scale: 10.0,
        ..Default::default()
    };
    let cluster = Cluster::start(&env, options).await;
    let trainer = Api::tenant(&cluster, "lab", "free").await;
    let shop = Api::tenant(&cluster, "shop", "enterprise").await;

    // Training fills the fleet (2 GPUs for 200 simulated seconds = 20 s real).
    let training = trainer.submit_ok(job(2, 200)).await;
    assert!(trainer.wait_state(training, "running", LONG).await);
    // Let it make progress past a checkpoint.
    let checkpointed = wait_until(LONG, Duration::from_millis(100), || async {
        event_log(&env.pool).await.iter().any(|e| {
            e.stream_id == format!("workload-{training}") && e.event_type == "workload.checkpointed"
        })
    })
    .await;
    assert!(checkpointed, "the training never checkpointed");

    let realtime = shop
        .submit_ok(
            json!({"model": "all-MiniLM-L6-v2", "gpu_count": 1, "duration_s": 20,
                          "latency_target_ms": 30}),
        )
        .await;
    assert!(
        shop.wait_state(realtime, "running", LONG).await,
        "real-time work ended {}; router log:\n{}",
        shop.state(realtime).await,
        cluster.log_of(Svc::Router)
    );
    assert!(
        trainer
            .wait_state(training, "completed", Duration::from_secs(120))
            .await,
        "preempted training ended {}",
        trainer.state(training).await
    );

    let log = event_log(&env.pool).await;
    let stream = format!("workload-{training}");
    let mine: Vec<_> = log.iter().filter(|e| e.stream_id == stream).collect();
    assert!(
        mine.iter().any(|e| e.event_type == "workload.preempted"
            && e.payload["for_workload_id"] == realtime.to_string()),
        "no preemption for the real-time work"
    );
    let resumed_from = mine
        .iter()
        .find(|e| e.event_type == "workload.requeued")
        .map(|e| e.payload["resume_progress"].as_f64().unwrap())
        .expect("requeued after preemption");
    assert!(
        resumed_from > 0.0,
        "progress was lost: resumed from {resumed_from}"
    );
    assert_eq!(
        mine.iter()
            .filter(|e| e.event_type == "workload.scheduled")
            .count(),
        2,
        "scheduled once, then again after preemption"
    );
    assert_no_double_booking(&log);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_workers_work_is_requeued_and_finishes_elsewhere() {
    let env = TestEnv::new().await;
    let options = ClusterOptions {
        workers: 1,
        gpus_per_worker: 2,
        time_scale: 5.0,
        env: vec![(
            "HCP_RESOURCE_MANAGER__WORKER_TIMEOUT_MS".into(),
            "3000".into(),
        )],
    };
    let mut cluster = Cluster::start(&env, options).await;
    let api = Api::tenant(&cluster, "acme", "pro").await;
    let id = api.submit_ok(job(2, 100)).await;
    assert!(api.wait_state(id, "running", LONG).await);

    cluster.kill(Svc::Worker);
    let requeued = wait_until(LONG, Duration::from_millis(200), || async {
        event_log(&env.pool)
            .await
            .iter()
            .any(|e| e.event_type == "workload.requeued" && e.stream_id == format!("workload-{id}"))
    })
    .await;
    assert!(
        requeued,
        "the silent worker's work was not requeued; rm log:\n{}",
        cluster.log_of(Svc::ResourceManager)
    );
    let log = event_log(&env.pool).await;
    assert!(log.iter().any(|e| e.event_type == "worker.lost"));

    // A worker comes back; the work runs to the end.
    cluster.start_svc(Svc::Worker);
    assert!(
        api.wait_state(id, "completed", Duration::from_secs(120))
            .await,
        "requeued work ended {}",
        api.state(id).await
    );
    assert_no_double_booking(&event_log(&env.pool).await);
}

/// Submits `n` short jobs, SIGKILLs `victim` twice while they flow, restarts it, and checks
/// over the event log that every accepted workload completed and no GPU was double-booked.
async fn kill_under_load(victim: Svc) {
    let env = TestEnv::new().await;
    let options = ClusterOptions {
        workers: 4,
        gpus_per_worker: 8,
        time_scale: 50.0,
        ..Default::default()
    };
    let mut cluster = Cluster::start(&env, options).await;
    let api = Api::tenant(&cluster, "acme", "enterprise").await;
    let n = 120;
    let mut ids = HashSet::new();
    for i in 0..n {
        let body = json!({"model": "mistral-7b-instruct", "kind": "batch_inference",
                          "gpu_count": 1 + (i % 4), "duration_s": 50 + (i % 7) * 10});
        ids.insert(api.submit_ok(body).await);
        if i == n / 3 || i == 2 * n / 3 {
            cluster.kill(victim);
            tokio::time::sleep(Duration::from_millis(500)).await;
            cluster.start_svc(victim);
            if victim == Svc::Gateway {
                // Submissions go through it: accepted ones before the kill must complete.
                cluster.wait_for_gateway().await;
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let all_done = wait_until(
        Duration::from_secs(180),
        Duration::from_millis(500),
        || async {
            let done: i64 = hcp_db::sqlx::query_scalar(
                "SELECT count(*) FROM events WHERE event_type = 'workload.completed'",
            )
            .fetch_one(&env.pool)
            .await
            .unwrap();
            done as usize >= ids.len()
        },
    )
    .await;
    let log = event_log(&env.pool).await;
    let completed: HashSet<Uuid> = log
        .iter()
        .filter(|e| e.event_type == "workload.completed")
        .map(|e| e.payload["workload_id"].as_str().unwrap().parse().unwrap())
        .collect();
    let missing: Vec<_> = ids.difference(&completed).collect();
    assert!(
        all_done && missing.is_empty(),
        "{} of {} accepted workloads did not complete: {:?}\n{} log:\n{}",
        missing.len(),
        ids.len(),
        missing.iter().take(5).collect::<Vec<_>>(),
        victim.binary(),
        cluster.log_of(victim)
    );
    assert_eq!(
        log.iter()
            .filter(|e| e.event_type == "workload.completed")
            .count(),
        ids.len(),
        "a workload completed twice"
    );
    assert!(assert_no_double_booking(&log) >= ids.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_of_the_resource_manager_under_load_loses_nothing_and_double_books_nothing() {
    kill_under_load(Svc::ResourceManager).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_of_the_router_under_load_loses_nothing_and_double_books_nothing() {
    kill_under_load(Svc::Router).await;
}

/// The gateway records submissions (group commit) and may hold the active outbox relay, whose
/// pass it can leave half published: killed twice mid-flow, nothing it accepted is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_of_the_gateway_under_load_loses_nothing_and_double_books_nothing() {
    kill_under_load(Svc::Gateway).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn posted_texts_come_back_as_the_models_embeddings_and_failures_say_why() {
    use hcp_gpu_worker::minilm::{model_dir, MiniLm};

    let env = TestEnv::new().await;
    let cluster = Cluster::start(&env, ClusterOptions::default()).await;
    let api = Api::tenant(&cluster, "acme", "pro").await;

    let texts = ["The GPU is busy.", "A cat sat on the mat."];
    let (status, _, v) = api
        .post_json("/embeddings", json!({"texts": texts, "wait_ms": 30000}))
        .await;
    assert_eq!(
        status,
        200,
        "{v}\nworker log:\n{}",
        cluster.log_of(Svc::Worker)
    );
    assert_eq!(v["model"], "all-MiniLM-L6-v2");
    assert_eq!(v["dims"], 384);
    assert_eq!(v["device"], "cpu");
    // Exactly what the model computes for these texts, in order.
    let model = MiniLm::load(&model_dir()).expect("all-MiniLM-L6-v2 (make fetch-minilm)");
    let got: Vec<Vec<f32>> = serde_json::from_value(v["embeddings"].clone()).unwrap();
    assert_eq!(got, model.embed_cpu(&texts));
    let id: Uuid = v["workload_id"].as_str().unwrap().parse().unwrap();
    assert_eq!(api.state(id).await, "completed");

    // The result stays readable, by its tenant only.
    let (status, again) = api.get(&format!("/workloads/{id}/result")).await;
    assert_eq!(status, 200, "{again}");
    assert_eq!(again["embeddings"], v["embeddings"]);
    let other = Api::tenant(&cluster, "globex", "pro").await;
    assert_eq!(other.get(&format!("/workloads/{id}/result")).await.0, 404);

    // The same over Kafka: texts in a produced request come back from the result endpoint.
    let request_id = Uuid::now_v7();
    Producer::new(&env.kafka, "test-producer")
        .unwrap()
        .send(&OutgoingMessage {
            topic: env.topic(Topic::WorkloadRequests),
            key: request_id.to_string(),
            payload: serde_json::to_vec(&json!({"request_id": request_id, "tenant_id": "acme",
                "model": "all-MiniLM-L6-v2", "kind": "realtime_inference", "gpu_count": 1,
                "duration_s": 1, "input": {"texts": [texts[1]]}}))
            .unwrap(),
            headers: vec![],
        })
        .await
        .unwrap();
    let mut from_kafka = None;
    for _ in 0..300 {
        let (_, list) = api.get("/workloads?limit=50").await;
        from_kafka = list["items"].as_array().and_then(|xs| {
            xs.iter()
                .find(|x| x["request_id"] == request_id.to_string())
                .and_then(|x| x["workload_id"].as_str())
                .and_then(|s| s.parse::<Uuid>().ok())
        });
        if from_kafka.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let from_kafka = from_kafka.expect("the Kafka request never appeared");
    assert!(api.wait_state(from_kafka, "completed", LONG).await);
    let (status, kafka_result) = api.get(&format!("/workloads/{from_kafka}/result")).await;
    assert_eq!(status, 200, "{kafka_result}");
    assert_eq!(kafka_result["embeddings"][0], v["embeddings"][1]);

    // Not waiting: 202 with where the result will be; it is not there yet.
    let (status, location, accepted) = api
        .post_json("/embeddings", json!({"texts": ["later"], "wait_ms": 0}))
        .await;
    assert_eq!(status, 202, "{accepted}");
    let later = accepted["workload_id"].as_str().unwrap();
    assert_eq!(
        location.as_deref(),
        Some(format!("/api/v1/workloads/{later}/result").as_str())
    );
    let (status, early) = api.get(&format!("/workloads/{later}/result")).await;
    if status == 409 {
        assert_eq!(early["error"]["code"], "not_ready", "{early}");
    } else {
        assert_eq!(status, 200, "{early}");
    }

    // The endpoint serves one model and says so.
    let (status, _, bad) = api
        .post_json(
            "/embeddings",
            json!({"texts": ["hello"], "model": "llama-3-70b"}),
        )
        .await;
    assert_eq!(status, 400, "{bad}");
    assert_eq!(bad["error"]["fields"][0]["field"], "model");
    // Texts on a workload of a model no worker can run them with: it fails, and its result
    // says why.
    let unserved = api
        .submit_ok(
            json!({"model": "llama-3-70b", "kind": "realtime_inference", "gpu_count": 1,
                          "duration_s": 1, "input": {"texts": ["hello"]}}),
        )
        .await;
    assert!(api.wait_state(unserved, "failed", LONG).await);
    let (status, failed) = api.get(&format!("/workloads/{unserved}/result")).await;
    assert_eq!(status, 409, "{failed}");
    assert_eq!(failed["error"]["code"], "workload_failed");
    let message = failed["error"]["message"].as_str().unwrap();
    assert!(message.contains("no inference implementation"), "{message}");

    // Work without inputs has no result to fetch.
    let plain = api
        .submit_ok(json!({"model": "llama-3.1-8b", "kind": "batch_inference",
                          "gpu_count": 1, "duration_s": 1}))
        .await;
    assert!(api.wait_state(plain, "completed", LONG).await);
    let (status, none) = api.get(&format!("/workloads/{plain}/result")).await;
    assert_eq!(status, 404, "{none}");

    // Bad input is refused with the field named.
    let too_many: Vec<String> = (0..65).map(|i| format!("text {i}")).collect();
    let (status, _, bad) = api
        .post_json("/embeddings", json!({"texts": too_many}))
        .await;
    assert_eq!(status, 400, "{bad}");
    assert_eq!(bad["error"]["fields"][0]["field"], "texts");
    let (status, _, bad) = api
        .post_json("/embeddings", json!({"texts": ["x"], "wait_ms": 60001}))
        .await;
    assert_eq!(status, 400, "{bad}");
    assert_eq!(bad["error"]["fields"][0]["field"], "wait_ms");
    let (status, _, bad) = api
        .post_json(
            "/workloads",
            json!({"model": "m", "kind": "training", "gpu_count": 1, "duration_s": 5,
                   "input": {"texts": ["x"]}}),
        )
        .await;
    assert_eq!(status, 400, "{bad}");
    assert_eq!(bad["error"]["fields"][0]["field"], "input");
}
