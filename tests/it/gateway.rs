//! The gateway against the real PostgreSQL and the real broker: the whole service in-process
//! (REST on port 0, the service shell's outbox relay, the board, resource and intake consumers),
//! driven over HTTP and Kafka like a client would.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use hcp_bus::{OutgoingMessage, Producer};
use hcp_db::sqlx;
use hcp_db::{DatabaseSettings, EventStore, ExpectedVersion, Publish};
use hcp_events::payload::{
    GpuSpec, WorkerLost, WorkerRegistered, WorkloadKind, WorkloadQueued, WorkloadScheduled,
};
use hcp_events::{headers, worker_stream, workload_stream, Envelope, Event, Topic};
use hcp_gateway::{RunningGateway, Settings};
use hcp_tests::{read_topic, wait_until, TestEnv};
use rdkafka::message::{Headers, Message};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use uuid::Uuid;

/// The compiled-in development admin key (the tests run with the defaults).
const ADMIN: &str = "hcp-dev-admin-key";
const WAIT: Duration = Duration::from_secs(30);
const POLL: Duration = Duration::from_millis(50);

/// One test's world: its database and namespace, and a gateway on them.
struct World {
    env: TestEnv,
    gw: RunningGateway,
    http: reqwest::Client,
}

/// A response: status, headers, JSON body (`Null` when not JSON).
struct Reply {
    status: StatusCode,
    headers: reqwest::header::HeaderMap,
    body: Value,
}

impl World {
    async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    async fn start_with(tweak: impl FnOnce(&mut Settings)) -> Self {
        hcp_tests::init_tracing();
        let env = TestEnv::new().await;
        let mut s = Settings::defaults().expect("defaults");
        s.common.database = DatabaseSettings::from_url(&env.database_url);
        s.common.database.max_connections = 5;
        s.common.kafka = env.kafka.clone();
        s.common.admin.port = 0;
        s.gateway.port = 0;
        tweak(&mut s);
        let gw = hcp_gateway::spawn(s).await.expect("gateway starts");
        Self {
            env,
            gw,
            http: reqwest::Client::new(),
        }
    }

    async fn call(
        &self,
        method: Method,
        path: &str,
        key: Option<&str>,
        body: Option<Value>,
        extra: &[(&str, &str)],
    ) -> Reply {
        let mut req = self
            .http
            .request(method, format!("{}/api/v1{path}", self.gw.base_url()));
        if let Some(k) = key {
            req = req.bearer_auth(k);
        }
        for (h, v) in extra {
            req = req.header(*h, *v);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let res = req.send().await.expect("request");
        let status = res.status();
        let headers = res.headers().clone();
        let body = res.json().await.unwrap_or(Value::Null);
        Reply {
            status,
            headers,
            body,
        }
    }

    async fn get(&self, path: &str, key: &str) -> Reply {
        self.call(Method::GET, path, Some(key), None, &[]).await
    }

    async fn post(&self, path: &str, key: &str) -> Reply {
        self.call(Method::POST, path, Some(key), None, &[]).await
    }

    /// Creates a tenant and returns a new key for it.
    async fn tenant(&self, id: &str, tier: &str) -> String {
        let r = self
            .call(
                Method::POST,
                "/admin/tenants",
                Some(ADMIN),
                Some(json!({"id": id, "name": format!("Tenant {id}"), "tier": tier})),
                &[],
            )
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
        let r = self.post(&format!("/admin/tenants/{id}/keys"), ADMIN).await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
        r.body["key"].as_str().unwrap().to_owned()
    }

    async fn submit(&self, key: &str, body: Value, idempotency_key: Option<&str>) -> Reply {
        let extra: Vec<(&str, &str)> = idempotency_key
            .map(|k| vec![("Idempotency-Key", k)])
            .unwrap_or_default();
        self.call(Method::POST, "/workloads", Some(key), Some(body), &extra)
            .await
    }

    async fn submit_ok(&self, key: &str, body: Value) -> Uuid {
        let r = self.submit(key, body, None).await;
        assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.body);
        r.body["workload_id"].as_str().unwrap().parse().unwrap()
    }

    async fn count(&self, sql: &str, bind: &str) -> i64 {
        sqlx::query_scalar(sql)
            .bind(bind)
            .fetch_one(&self.env.pool)
            .await
            .unwrap()
    }

    /// Appends events as another service would (router, resource-manager), published to
    /// `topic`.
    async fn append(
        &self,
        stream: &str,
        expected: ExpectedVersion,
        events: Vec<Event>,
        topic: Topic,
    ) {
        let envs: Vec<Envelope> = events
            .into_iter()
            .map(|e| Envelope::new(stream, "test", e))
            .collect();
        EventStore::new(self.env.pool.clone())
            .append_and_commit(stream, expected, &envs, &Publish::to(self.env.topic(topic)))
            .await
            .unwrap();
    }

    async fn produce_request(&self, key: &str, payload: Vec<u8>) {
        let producer = Producer::new(&self.env.kafka, "test-client").unwrap();
        producer
            .send(&OutgoingMessage {
                topic: self.env.topic(Topic::WorkloadRequests),
                key: key.to_owned(),
                payload,
                headers: vec![],
            })
            .await
            .unwrap();
    }

    async fn stop(self) {
        self.gw.stop().await.expect("gateway drains cleanly");
    }
}

fn workload(model: &str) -> Value {
    json!({"model": model, "kind": "batch_inference", "gpu_count": 1, "duration_s": 100})
}

fn first_field(r: &Reply) -> &str {
    r.body["error"]["fields"][0]["field"].as_str().unwrap_or("")
}

fn header<'a>(m: &'a rdkafka::message::OwnedMessage, key: &str) -> Option<&'a str> {
    m.headers()?
        .iter()
        .find(|h| h.key == key)
        .and_then(|h| h.value)
        .and_then(|v| std::str::from_utf8(v).ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_without_a_valid_key_are_refused_with_401_and_a_json_reason() {
    let w = World::start().await;
    for key in [None, Some("hcp_not-a-key"), Some("")] {
        let r = w.call(Method::GET, "/workloads", key, None, &[]).await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED, "key {key:?}");
        assert_eq!(r.body["error"]["code"], "unauthorized");
        assert_eq!(r.headers["www-authenticate"], "Bearer");
    }
    let r = w
        .call(
            Method::GET,
            "/workloads",
            None,
            None,
            &[("Authorization", "Basic YTpi")],
        )
        .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    w.stop().await;
}

/// A tenant's key, used once (so the gateway has looked it up), then revoked in the database.
async fn used_then_revoked(w: &World) -> String {
    let key = w.tenant("acme", "pro").await;
    assert_eq!(w.get("/workloads", &key).await.status, StatusCode::OK);
    sqlx::query("UPDATE api_keys SET revoked_at = now() WHERE tenant_id = 'acme'")
        .execute(&w.env.pool)
        .await
        .unwrap();
    key
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_revoked_in_the_database_is_refused_once_its_remembered_lookup_expires() {
    // Remembered keys (`gateway.key_cache_ms`) spare a lookup per request; a revocation
    // still takes effect, within that time.
    let w = World::start_with(|s| s.gateway.key_cache_ms = 300).await;
    let key = used_then_revoked(&w).await;
    let refused = wait_until(WAIT, POLL, || async {
        w.get("/workloads", &key).await.status == StatusCode::UNAUTHORIZED
    })
    .await;
    assert!(refused, "a revoked key is still accepted");
    w.stop().await;

    // With the cache off, the first request after the revocation is refused.
    let w = World::start_with(|s| s.gateway.key_cache_ms = 0).await;
    let key = used_then_revoked(&w).await;
    assert_eq!(
        w.get("/workloads", &key).await.status,
        StatusCode::UNAUTHORIZED
    );
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_creates_tenants_and_keys_and_only_key_hashes_are_stored() {
    let w = World::start().await;
    let key = w.tenant("acme", "pro").await;
    assert!(key.starts_with("hcp_") && key.len() > 40, "{key}");

    // The key works, and only its SHA-256 is stored: no column of any row holds the key.
    assert_eq!(w.get("/workloads", &key).await.status, StatusCode::OK);
    let by_hash = w
        .count(
            "SELECT count(*) FROM api_keys WHERE key_hash = sha256(convert_to($1, 'UTF8')) \
             AND tenant_id = 'acme'",
            &key,
        )
        .await;
    assert_eq!(by_hash, 1);
    let plaintext = w
        .count(
            "SELECT (SELECT count(*) FROM api_keys k WHERE k::text LIKE '%' || $1 || '%') \
                  + (SELECT count(*) FROM tenants t WHERE t::text LIKE '%' || $1 || '%')",
            &key[4..],
        )
        .await;
    assert_eq!(plaintext, 0, "the plaintext key is in the database");

    // Same id again: 409. Bad tier: 400 naming it. Unknown tenant: 404.
    let dup = w
        .call(
            Method::POST,
            "/admin/tenants",
            Some(ADMIN),
            Some(json!({"id": "acme", "name": "Again", "tier": "free"})),
            &[],
        )
        .await;
    assert_eq!(dup.status, StatusCode::CONFLICT);
    assert_eq!(dup.body["error"]["code"], "tenant_exists");
    let bad = w
        .call(
            Method::POST,
            "/admin/tenants",
            Some(ADMIN),
            Some(json!({"id": "x", "name": "X", "tier": "platinum"})),
            &[],
        )
        .await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    assert_eq!(first_field(&bad), "tier");
    assert_eq!(
        w.post("/admin/tenants/nobody/keys", ADMIN).await.status,
        StatusCode::NOT_FOUND
    );

    // A tenant's key may not use admin routes; the admin key may not submit.
    let forbidden = w.post("/admin/tenants/acme/keys", &key).await;
    assert_eq!(forbidden.status, StatusCode::FORBIDDEN);
    assert_eq!(forbidden.body["error"]["code"], "forbidden");
    let r = w.submit(ADMIN, workload("m"), None).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_workload_is_refused_with_400_naming_the_field_and_records_nothing() {
    let w = World::start().await;
    let key = w.tenant("acme", "pro").await;
    let cases = [
        (
            json!({"model": "m", "gpu_count": 0, "duration_s": 10}),
            "gpu_count",
            "validation",
        ),
        (
            json!({"model": "m", "gpu_count": "four", "duration_s": 10}),
            "gpu_count",
            "invalid_body",
        ),
        (
            json!({"gpu_count": 1, "duration_s": 10}),
            "model",
            "invalid_body",
        ),
        (
            json!({"model": "m", "gpu_count": 1, "duration_s": 10, "tenant_id": "other"}),
            "tenant_id",
            "invalid_body",
        ),
        (
            json!({"model": "m", "gpu_count": 1, "duration_s": 10,
                   "deadline": "2001-01-01T00:00:00Z"}),
            "deadline",
            "validation",
        ),
    ];
    for (body, field, code) in cases {
        let r = w.submit(&key, body.clone(), None).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{body}: {}", r.body);
        assert_eq!(r.body["error"]["code"], code, "{body}");
        assert_eq!(first_field(&r), field, "{body}: {}", r.body);
        assert!(
            r.body["error"]["message"].as_str().unwrap().contains(field),
            "{}",
            r.body
        );
    }
    let r = w
        .call(
            Method::POST,
            "/workloads",
            Some(&key),
            None,
            &[("content-type", "application/json")],
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    let bad_key = w
        .submit(&key, workload("m"), Some("has spaces in it"))
        .await;
    assert_eq!(bad_key.status, StatusCode::BAD_REQUEST);
    assert_eq!(first_field(&bad_key), "Idempotency-Key");
    let events: i64 = sqlx::query_scalar("SELECT count(*) FROM events")
        .fetch_one(&w.env.pool)
        .await
        .unwrap();
    assert_eq!(events, 0);
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resubmitting_with_the_same_idempotency_key_returns_the_same_workload_and_one_event() {
    let w = World::start().await;
    let key = w.tenant("acme", "enterprise").await;
    let first = w.submit(&key, workload("llama"), Some("order-42")).await;
    assert_eq!(first.status, StatusCode::ACCEPTED, "{}", first.body);
    assert_eq!(first.body["state"], "queued");
    let id = first.body["workload_id"].as_str().unwrap().to_owned();
    assert_eq!(
        first.body["links"]["self"],
        format!("/api/v1/workloads/{id}")
    );

    // Read-your-writes: visible at once, whether or not the board has caught up.
    let got = w.get(&format!("/workloads/{id}"), &key).await;
    assert_eq!(got.status, StatusCode::OK, "{}", got.body);
    assert_eq!(got.body["state"], "queued");
    assert_eq!(got.body["tenant_id"], "acme");
    assert_eq!(got.body["tier"], "enterprise");
    assert_eq!(got.body["source"], "rest");

    // The same key, sequentially and concurrently: the same workload, nothing new recorded.
    let again = w.submit(&key, workload("llama"), Some("order-42")).await;
    assert_eq!(again.status, StatusCode::ACCEPTED);
    assert_eq!(again.body["workload_id"], id.as_str());
    assert_eq!(again.headers["idempotent-replayed"], "true");
    let racing = futures_like_join(&w, &key, "order-43", 6).await;
    assert!(racing.windows(2).all(|p| p[0] == p[1]), "{racing:?}");
    let submitted = "SELECT count(*) FROM events WHERE event_type = 'workload.submitted' \
                     AND payload->>'tenant_id' = $1";
    assert_eq!(w.count(submitted, "acme").await, 2);

    // The same key with another body is refused, naming the key.
    let other = w.submit(&key, workload("mistral"), Some("order-42")).await;
    assert_eq!(
        other.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{}",
        other.body
    );
    assert_eq!(other.body["error"]["code"], "idempotency_key_reused");
    assert_eq!(first_field(&other), "Idempotency-Key");

    // Without the header, a client-chosen request_id is the key.
    let rid = Uuid::new_v4();
    let mut body = workload("bert");
    body["request_id"] = json!(rid);
    let a = w.submit(&key, body.clone(), None).await;
    let b = w.submit(&key, body, None).await;
    assert_eq!(a.body["workload_id"], b.body["workload_id"]);
    assert_eq!(w.count(submitted, "acme").await, 3);
    w.stop().await;
}

/// Submits the same request with the same key `n` times at once; returns the ids.
async fn futures_like_join(w: &World, key: &str, idem: &str, n: usize) -> Vec<String> {
    let mut handles = Vec::new();
    for _ in 0..n {
        let http = w.http.clone();
        let url = format!("{}/api/v1/workloads", w.gw.base_url());
        let (key, idem) = (key.to_owned(), idem.to_owned());
        handles.push(tokio::spawn(async move {
            let r = http
                .post(url)
                .bearer_auth(key)
                .header("Idempotency-Key", idem)
                .json(&workload("gemma"))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), StatusCode::ACCEPTED);
            let v: Value = r.json().await.unwrap();
            v["workload_id"].as_str().unwrap().to_owned()
        }));
    }
    let mut ids = Vec::new();
    for h in handles {
        ids.push(h.await.unwrap());
    }
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_trace_continues_into_the_events_it_causes() {
    let w = World::start().await;
    let key = w.tenant("acme", "pro").await;
    let trace_id = Uuid::new_v4().simple().to_string();
    let traceparent = format!("00-{trace_id}-00f067aa0ba902b7-01");
    let r = w
        .call(
            Method::POST,
            "/workloads",
            Some(&key),
            Some(workload("llama")),
            &[("traceparent", &traceparent)],
        )
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.body);
    let id = r.body["workload_id"].as_str().unwrap().to_owned();
    let stored = |id: String| {
        let pool = w.env.pool.clone();
        async move {
            sqlx::query_scalar::<_, Option<String>>(
                "SELECT traceparent FROM events WHERE stream_id = $1 ORDER BY stream_sequence DESC \
                 LIMIT 1",
            )
            .bind(format!("workload-{id}"))
            .fetch_one(&pool)
            .await
            .unwrap()
            .unwrap_or_default()
        }
    };
    let submitted = stored(id.clone()).await;
    assert!(
        submitted.starts_with(&format!("00-{trace_id}-")),
        "{submitted}"
    );
    // A command continues the trace of the request that made it.
    let r = w
        .call(
            Method::POST,
            &format!("/workloads/{id}/cancel"),
            Some(&key),
            None,
            &[("traceparent", &traceparent)],
        )
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED);
    let cancelled = stored(id).await;
    assert!(
        cancelled.starts_with(&format!("00-{trace_id}-")),
        "{cancelled}"
    );
    assert_ne!(cancelled, submitted, "each event has its own span");

    // Over Kafka: the producer's traceparent header.
    let rid = Uuid::new_v4();
    let producer = Producer::new(&w.env.kafka, "test-client").unwrap();
    producer
        .send(&OutgoingMessage {
            topic: w.env.topic(Topic::WorkloadRequests),
            key: "acme".into(),
            payload: serde_json::to_vec(&json!({
                "request_id": rid, "tenant_id": "acme", "model": "m", "gpu_count": 1,
                "duration_s": 5,
            }))
            .unwrap(),
            headers: vec![(
                headers::TRACEPARENT.into(),
                traceparent.clone().into_bytes(),
            )],
        })
        .await
        .unwrap();
    let by_request = "SELECT count(*) FROM events WHERE payload->>'request_id' = $1";
    let found = wait_until(WAIT, POLL, || async {
        w.count(by_request, &rid.to_string()).await == 1
    })
    .await;
    assert!(found, "the Kafka request was not submitted");
    let via_kafka: Option<String> =
        sqlx::query_scalar("SELECT traceparent FROM events WHERE payload->>'request_id' = $1")
            .bind(rid.to_string())
            .fetch_one(&w.env.pool)
            .await
            .unwrap();
    let via_kafka = via_kafka.unwrap_or_default();
    assert!(
        via_kafka.starts_with(&format!("00-{trace_id}-")),
        "{via_kafka}"
    );
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenants_never_see_each_others_workloads() {
    let w = World::start().await;
    let a = w.tenant("alpha", "pro").await;
    let b = w.tenant("beta", "pro").await;
    let ida = w.submit_ok(&a, workload("a-model")).await;
    let idb = w.submit_ok(&b, workload("b-model")).await;

    for path in [
        format!("/workloads/{ida}"),
        format!("/workloads/{ida}/status"),
    ] {
        let r = w.get(&path, &b).await;
        assert_eq!(r.status, StatusCode::NOT_FOUND, "{path}");
        assert_eq!(r.body["error"]["code"], "not_found");
    }
    assert_eq!(
        w.post(&format!("/workloads/{ida}/cancel"), &b).await.status,
        StatusCode::NOT_FOUND
    );

    // Lists come from the board: wait until it has both, then check the filtering.
    let ids = |r: Reply| -> Vec<String> {
        r.body["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["workload_id"].as_str().unwrap().to_owned())
            .collect()
    };
    let both = wait_until(WAIT, POLL, || async {
        ids(w.get("/workloads", ADMIN).await).len() == 2
    })
    .await;
    assert!(both, "the board never showed both workloads");
    assert_eq!(ids(w.get("/workloads", &a).await), vec![ida.to_string()]);
    assert_eq!(ids(w.get("/workloads", &b).await), vec![idb.to_string()]);
    // Newest first for the admin.
    assert_eq!(
        ids(w.get("/workloads", ADMIN).await),
        vec![idb.to_string(), ida.to_string()]
    );
    let bad = w.get("/workloads?state=sleeping", &a).await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    assert_eq!(first_field(&bad), "state");
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listing_pages_through_every_workload_newest_first_with_a_cursor() {
    let w = World::start().await;
    let key = w.tenant("acme", "enterprise").await;
    let mut submitted = Vec::new();
    for i in 0..5 {
        submitted.push(
            w.submit_ok(&key, workload(&format!("m{i}")))
                .await
                .to_string(),
        );
    }
    let on_board = wait_until(WAIT, POLL, || async {
        w.get("/workloads?limit=200", &key).await.body["items"]
            .as_array()
            .is_some_and(|a| a.len() == 5)
    })
    .await;
    assert!(on_board);
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            Some(c) => format!("/workloads?limit=2&cursor={c}"),
            None => "/workloads?limit=2".into(),
        };
        let r = w.get(&path, &key).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.body);
        for i in r.body["items"].as_array().unwrap() {
            seen.push(i["workload_id"].as_str().unwrap().to_owned());
        }
        match r.body["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
    }
    submitted.reverse();
    assert_eq!(seen, submitted);
    let r = w.get("/workloads?limit=0", &key).await;
    assert_eq!(first_field(&r), "limit");
    let r = w.get("/workloads?cursor=nonsense", &key).await;
    assert_eq!(first_field(&r), "cursor");
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_free_tenant_over_its_rate_limit_gets_429_with_retry_after() {
    let w = World::start_with(|s| {
        s.gateway.rate_limits.free.burst = 3;
        s.gateway.rate_limits.free.per_second = 0.2;
    })
    .await;
    let free = w.tenant("freeloader", "free").await;
    let pro = w.tenant("payer", "pro").await;
    for _ in 0..3 {
        assert_eq!(w.get("/queue", &free).await.status, StatusCode::OK);
    }
    let r = w.get("/queue", &free).await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS, "{}", r.body);
    assert_eq!(r.body["error"]["code"], "rate_limited");
    assert!(r.body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("free"));
    let retry: u64 = r.headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=5).contains(&retry), "Retry-After {retry}");
    // Another tenant has its own bucket.
    assert_eq!(w.get("/queue", &pro).await.status, StatusCode::OK);
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openapi_document_is_served_without_a_key_and_lists_the_workload_paths() {
    let w = World::start().await;
    let r = w.call(Method::GET, "/openapi.json", None, None, &[]).await;
    assert_eq!(r.status, StatusCode::OK);
    let doc = r.body;
    assert_eq!(doc["openapi"], "3.0.3");
    for (path, method) in [
        ("/api/v1/workloads", "post"),
        ("/api/v1/workloads", "get"),
        ("/api/v1/workloads/{workload_id}", "get"),
        ("/api/v1/workloads/{workload_id}/status", "get"),
        ("/api/v1/workloads/{workload_id}/cancel", "post"),
        ("/api/v1/workloads/{workload_id}/pause", "post"),
        ("/api/v1/workloads/{workload_id}/resume", "post"),
        ("/api/v1/queue", "get"),
        ("/api/v1/resources/summary", "get"),
        ("/api/v1/admin/tenants", "post"),
    ] {
        assert!(
            doc["paths"][path][method].is_object(),
            "{method} {path} missing"
        );
    }
    let body_ref = doc["paths"]["/api/v1/workloads"]["post"]["requestBody"]["content"]
        ["application/json"]["schema"]["$ref"]
        .as_str()
        .unwrap();
    let name = body_ref.rsplit('/').next().unwrap();
    let schema = &doc["components"]["schemas"][name];
    assert!(schema["properties"]["gpu_count"].is_object(), "{schema}");
    assert!(schema["properties"].get("tenant_id").is_none());
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kafka_request_becomes_a_submitted_workload_with_source_kafka_once() {
    let w = World::start().await;
    let key = w.tenant("acme", "free").await;
    let rid = Uuid::new_v4();
    let request = serde_json::to_vec(&json!({
        "request_id": rid, "tenant_id": "acme", "model": "whisper-large-v3",
        "gpu_count": 1, "duration_s": 30, "latency_target_ms": 200,
    }))
    .unwrap();
    // Twice (a producer retry), then a marker on the same partition (same key).
    w.produce_request("acme", request.clone()).await;
    w.produce_request("acme", request).await;
    let marker = Uuid::new_v4();
    let marker_body = serde_json::to_vec(&json!({
        "request_id": marker, "tenant_id": "acme", "model": "m", "gpu_count": 1, "duration_s": 1,
    }))
    .unwrap();
    w.produce_request("acme", marker_body).await;

    let by_request = "SELECT count(*) FROM events WHERE event_type = 'workload.submitted' \
                      AND payload->>'request_id' = $1";
    let done = wait_until(WAIT, POLL, || async {
        w.count(by_request, &marker.to_string()).await == 1
    })
    .await;
    assert!(done, "the Kafka requests were never submitted");
    assert_eq!(w.count(by_request, &rid.to_string()).await, 1);
    let id: Uuid = sqlx::query_scalar(
        "SELECT (payload->>'workload_id')::uuid FROM events \
         WHERE payload->>'request_id' = $1 AND payload->>'source' = 'kafka'",
    )
    .bind(rid.to_string())
    .fetch_one(&w.env.pool)
    .await
    .unwrap();
    let got = w.get(&format!("/workloads/{id}"), &key).await;
    assert_eq!(got.status, StatusCode::OK, "{}", got.body);
    assert_eq!(got.body["source"], "kafka");
    assert_eq!(got.body["tier"], "free");
    // The partition's position is in PostgreSQL, past all three messages.
    let next: i64 = sqlx::query_scalar(
        "SELECT max(next_offset) FROM consumer_offsets WHERE consumer = 'gateway-intake'",
    )
    .fetch_one(&w.env.pool)
    .await
    .unwrap();
    assert!(next >= 3, "stored offset {next}");
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_kafka_request_is_dead_lettered_with_its_reason_and_does_not_block() {
    let w = World::start().await;
    w.tenant("acme", "pro").await;
    let valid = |tenant: &str, gpus: u32| {
        serde_json::to_vec(&json!({
            "request_id": Uuid::new_v4(), "tenant_id": tenant, "model": "m",
            "gpu_count": gpus, "duration_s": 10,
        }))
        .unwrap()
    };
    // All on one partition (same key), the valid one last.
    w.produce_request("k", b"{not json".to_vec()).await;
    w.produce_request("k", valid("acme", 0)).await;
    w.produce_request("k", valid("nobody", 1)).await;
    let last = Uuid::new_v4();
    let ok = serde_json::to_vec(&json!({
        "request_id": last, "tenant_id": "acme", "model": "m", "gpu_count": 1, "duration_s": 10,
    }))
    .unwrap();
    w.produce_request("k", ok).await;

    let dead = read_topic(&w.env.kafka, &w.env.topic(Topic::DeadLetters), 3, WAIT).await;
    assert_eq!(dead.len(), 3, "dead letters");
    let reasons: Vec<&str> = dead
        .iter()
        .map(|m| header(m, headers::DLQ_REASON).unwrap())
        .collect();
    assert!(reasons[0].contains("not a JSON"), "{reasons:?}");
    assert!(reasons[1].contains("gpu_count"), "{reasons:?}");
    assert!(
        reasons[2].contains("unknown tenant `nobody`"),
        "{reasons:?}"
    );
    for m in &dead {
        assert_eq!(
            header(m, headers::DLQ_SOURCE_TOPIC),
            Some(w.env.topic(Topic::WorkloadRequests).as_str())
        );
        assert_eq!(header(m, headers::DLQ_CONSUMER), Some("gateway-intake"));
    }
    assert_eq!(
        dead[0].payload(),
        Some(&b"{not json"[..]),
        "original bytes kept"
    );
    let submitted = wait_until(WAIT, POLL, || async {
        w.count(
            "SELECT count(*) FROM events WHERE payload->>'request_id' = $1",
            &last.to_string(),
        )
        .await
            == 1
    })
    .await;
    assert!(
        submitted,
        "the valid request behind the bad ones was not submitted"
    );
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_a_queued_workload_appends_cancelled_and_a_second_cancel_is_refused_with_409() {
    let w = World::start().await;
    let key = w.tenant("acme", "pro").await;
    let id = w.submit_ok(&key, workload("llama")).await;

    // Pausing queued work is refused by the state machine, naming the state.
    let pause = w.post(&format!("/workloads/{id}/pause"), &key).await;
    assert_eq!(pause.status, StatusCode::CONFLICT);
    assert!(pause.body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("queued"));

    let r = w.post(&format!("/workloads/{id}/cancel"), &key).await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.body);
    assert_eq!(r.body["state"], "cancelled");
    let stream = EventStore::new(w.env.pool.clone())
        .read_stream(&workload_stream(id))
        .await
        .unwrap();
    let types: Vec<&str> = stream
        .iter()
        .map(|e| e.envelope.event_type().as_str())
        .collect();
    assert_eq!(types, ["workload.submitted", "workload.cancelled"]);
    match &stream[1].envelope.payload {
        Event::WorkloadCancelled(p) => assert_eq!(p.requested_by, "tenant:acme"),
        other => panic!("{other:?}"),
    }
    assert_eq!(
        stream[1].envelope.correlation_id,
        stream[0].envelope.correlation_id
    );

    // Read-your-writes at once; the board follows.
    assert_eq!(
        w.get(&format!("/workloads/{id}"), &key).await.body["state"],
        "cancelled"
    );
    let on_board = wait_until(WAIT, POLL, || async {
        let r = w.get("/workloads?state=cancelled", &key).await;
        r.body["items"][0]["workload_id"] == json!(id)
    })
    .await;
    assert!(on_board, "the board never showed the workload cancelled");
    let status = w.get(&format!("/workloads/{id}/status"), &key).await;
    assert_eq!(status.body["state"], "cancelled");
    assert!(status.body["eta_start_s"].is_null());

    let again = w.post(&format!("/workloads/{id}/cancel"), &key).await;
    assert_eq!(again.status, StatusCode::CONFLICT, "{}", again.body);
    assert_eq!(again.body["error"]["code"], "invalid_transition");
    let message = again.body["error"]["message"].as_str().unwrap();
    assert!(message.contains("state cancelled"), "{message}");
    assert_eq!(
        EventStore::new(w.env.pool.clone())
            .stream_version(&workload_stream(id))
            .await
            .unwrap(),
        2
    );
    w.stop().await;
}

fn registered(worker: &str, gpus: &[(&str, &str)]) -> Event {
    Event::WorkerRegistered(WorkerRegistered {
        worker_id: worker.into(),
        site: "lab".into(),
        backend: "sim".into(),
        gpus: gpus
            .iter()
            .map(|(id, model)| GpuSpec {
                gpu_id: (*id).into(),
                model: (*model).into(),
                memory_mib: 81_920,
            })
            .collect(),
    })
}

fn queued(id: Uuid, priority: u8) -> Event {
    Event::WorkloadQueued(WorkloadQueued {
        workload_id: id,
        kind: WorkloadKind::BatchInference,
        priority,
        interruptible: true,
        reason: "stated".into(),
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fleet_summary_counts_registered_allocated_and_lost_gpus() {
    let w = World::start().await;
    let owner = w.tenant("owner", "pro").await;
    let other = w.tenant("other", "pro").await;
    w.append(
        &worker_stream("w1"),
        ExpectedVersion::NoStream,
        vec![registered(
            "w1",
            &[("w1/gpu-0", "H100"), ("w1/gpu-1", "H100")],
        )],
        Topic::Resources,
    )
    .await;
    w.append(
        &worker_stream("w2"),
        ExpectedVersion::NoStream,
        vec![
            registered("w2", &[("w2/gpu-0", "A100")]),
            Event::WorkerLost(WorkerLost {
                worker_id: "w2".into(),
                silent_for_s: 12.0,
            }),
        ],
        Topic::Resources,
    )
    .await;
    // The router queues the owner's workload and the resource-manager schedules it on w1.
    let id = w.submit_ok(&owner, workload("llama")).await;
    w.append(
        &workload_stream(id),
        ExpectedVersion::Exact(1),
        vec![
            queued(id, 5),
            Event::WorkloadScheduled(WorkloadScheduled {
                workload_id: id,
                worker_id: "w1".into(),
                gpu_ids: vec!["w1/gpu-0".into()],
            }),
        ],
        Topic::Workloads,
    )
    .await;

    let expected = json!({"model": "all", "total": 3, "allocated": 1, "available": 1,
                          "unavailable": 1, "utilisation_pct": 50.0});
    let converged = wait_until(WAIT, POLL, || async {
        w.get("/resources/summary", &owner).await.body["gpus"] == expected
    })
    .await;
    let summary = w.get("/resources/summary", &owner).await.body;
    assert!(converged, "{summary}");
    assert_eq!(
        summary["workers"],
        json!({"total": 2, "healthy": 1, "lost": 1})
    );
    let models: Vec<&str> = summary["by_model"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["model"].as_str().unwrap())
        .collect();
    assert_eq!(models, ["A100", "H100"]);

    // The owner sees which of its workloads holds the GPU; another tenant does not. Ownership
    // comes from the workload board, a projection of its own, so it may trail the allocation
    // by a moment (the id stays hidden until it is known whose it is).
    let owned = wait_until(WAIT, POLL, || async {
        w.get("/resources/w1", &owner).await.body["gpus"][0]["workload_id"] == json!(id)
    })
    .await;
    let mine = w.get("/resources/w1", &owner).await.body;
    assert!(owned, "{mine}");
    assert_eq!(mine["gpus"][0]["state"], "allocated");
    assert_eq!(mine["gpus"][0]["workload_id"], json!(id));
    assert_eq!(mine["gpus"][1]["state"], "available");
    let theirs = w.get("/resources/w1", &other).await.body;
    assert_eq!(theirs["gpus"][0]["state"], "allocated");
    assert!(theirs["gpus"][0]["workload_id"].is_null());
    let lost = w.get("/resources", &other).await.body;
    assert_eq!(lost["workers"][1]["gpus"][0]["state"], "unavailable");
    assert_eq!(
        w.get("/resources/w9", &owner).await.status,
        StatusCode::NOT_FOUND
    );

    // Cancelling releases the GPU.
    assert_eq!(
        w.post(&format!("/workloads/{id}/cancel"), &owner)
            .await
            .status,
        StatusCode::ACCEPTED
    );
    let released = wait_until(WAIT, POLL, || async {
        w.get("/resources/summary", &owner).await.body["gpus"]["allocated"] == 0
    })
    .await;
    assert!(released);
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_reports_the_queue_position_by_priority_then_age_and_an_eta() {
    let w = World::start().await;
    let key = w.tenant("acme", "pro").await;
    w.append(
        &worker_stream("w1"),
        ExpectedVersion::NoStream,
        vec![registered(
            "w1",
            &[("w1/gpu-0", "H100"), ("w1/gpu-1", "H100")],
        )],
        Topic::Resources,
    )
    .await;
    // Oldest first: a (priority 4), b (priority 8), c (priority 4); 1 GPU × 100 s each.
    let mut ids = Vec::new();
    for (model, priority) in [("a", 4), ("b", 8), ("c", 4)] {
        let id = w.submit_ok(&key, workload(model)).await;
        w.append(
            &workload_stream(id),
            ExpectedVersion::Exact(1),
            vec![queued(id, priority)],
            Topic::Workloads,
        )
        .await;
        ids.push(id);
    }
    let classified = wait_until(WAIT, POLL, || async {
        let q = w.get("/queue", &key).await.body;
        q["total"] == 3
            && q["unclassified"] == 0
            && w.get("/resources", &key).await.body["workers"]
                .as_array()
                .is_some_and(|a| a.len() == 1)
    })
    .await;
    assert!(classified, "{}", w.get("/queue", &key).await.body);

    let position = |id: Uuid| {
        let w = &w;
        let key = &key;
        async move { w.get(&format!("/workloads/{id}/status"), key).await.body }
    };
    let (a, b, c) = (
        position(ids[0]).await,
        position(ids[1]).await,
        position(ids[2]).await,
    );
    assert_eq!(b["queue_position"], 1, "{b}");
    assert_eq!(a["queue_position"], 2, "{a}");
    assert_eq!(c["queue_position"], 3, "{c}");
    // c waits for b and a: 200 GPU-seconds over 2 GPUs = 100 s; then runs 100 s.
    assert_eq!(c["fleet_gpus"], 2);
    assert_eq!(c["eta_start_s"], 100.0, "{c}");
    assert_eq!(c["eta_complete_s"], 200.0, "{c}");
    assert_eq!(b["eta_start_s"], 0.0, "{b}");

    let q = w.get("/queue", &key).await.body;
    let depth = |p: u64| {
        q["by_priority"]
            .as_array()
            .unwrap()
            .iter()
            .find(|d| d["priority"] == p)
            .map(|d| d["depth"].as_i64().unwrap())
    };
    assert_eq!((depth(8), depth(4), depth(1)), (Some(1), Some(2), Some(0)));
    assert_eq!(q["scope"], "tenant");
    let all = w.get("/queue", ADMIN).await.body;
    assert_eq!(all["scope"], "all");
    assert_eq!(all["total"], 3);
    w.stop().await;
}

/// A small valid request of `tenant`.
fn small_request(tenant: &str, duration_s: u32) -> hcp_events::WorkloadRequest {
    hcp_events::WorkloadRequest {
        request_id: Uuid::nil(),
        tenant_id: tenant.into(),
        kind: None,
        model: "llama-3-8b".into(),
        gpu_count: 1,
        gpu_memory_gib: None,
        gpu_type: None,
        duration_s,
        latency_target_ms: None,
        interruptible: None,
        deadline: None,
        input: None,
    }
}

// A current-thread runtime: every submission below is queued before the committer runs again,
// so they meet in one group, deterministically.
#[tokio::test]
async fn concurrent_rest_submissions_are_committed_together_and_each_gets_its_own_answer() {
    use hcp_events::payload::SubmissionSource;
    use hcp_events::Tier;
    use hcp_gateway::group::{GroupCommit, OwnedSubmission};
    use hcp_gateway::submit::{self, SubmitError, Submitted};

    let env = TestEnv::new().await;
    let group = GroupCommit::start(env.pool.clone(), env.topic(Topic::Workloads), 256);
    let owned = |duration_s: u32, key: Option<&str>| {
        let request = small_request("acme", duration_s);
        OwnedSubmission {
            fingerprint: submit::fingerprint(&request),
            request,
            tier: Tier::Pro,
            source: SubmissionSource::Rest,
            idempotency_key: key.map(str::to_owned),
        }
    };
    let mut batch: Vec<OwnedSubmission> = (0..30).map(|i| owned(60 + i, None)).collect();
    // The same key twice for the same request: one workload, one replay.
    batch.push(owned(600, Some("k-1")));
    batch.push(owned(600, Some("k-1")));
    // The same key for a different request: refused, and only that one.
    batch.push(owned(601, Some("k-1")));
    let tasks: Vec<_> = batch
        .into_iter()
        .map(|s| {
            let group = group.clone();
            tokio::spawn(async move { group.submit(s).await })
        })
        .collect();
    let mut outcomes = Vec::new();
    for t in tasks {
        outcomes.push(t.await.unwrap());
    }

    let created: Vec<Uuid> = outcomes
        .iter()
        .filter_map(|o| match o {
            Ok(Submitted::Created(id)) => Some(*id),
            _ => None,
        })
        .collect();
    assert_eq!(created.len(), 31, "{outcomes:?}");
    assert!(
        matches!(outcomes[31], Ok(Submitted::Replayed(id)) if Some(&id) == created.last()),
        "{:?}",
        outcomes[31]
    );
    assert!(
        matches!(outcomes[32], Err(SubmitError::KeyReused { .. })),
        "{:?}",
        outcomes[32]
    );
    // One event per new workload, all written by one transaction.
    let (events, transactions): (i64, i64) = sqlx::query_as(
        "SELECT count(*), count(DISTINCT xmin::text) FROM events \
         WHERE event_type = 'workload.submitted'",
    )
    .fetch_one(&env.pool)
    .await
    .unwrap();
    assert_eq!((events, transactions), (31, 1));
    let outboxed: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox")
        .fetch_one(&env.pool)
        .await
        .unwrap();
    assert_eq!(outboxed, 31);
}
