//! Fleet economics against the real PostgreSQL and the real broker: the telemetry ingest
//! (hcp-tsdb) writing ASIC batches and GPU heartbeats exactly once across a crash, dead
//! letters, rollups and site power; and the gateway's market, profitability and decision
//! endpoints serving what was published.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use hcp_bus::{OutgoingMessage, Producer};
use hcp_db::sqlx;
use hcp_db::{DatabaseSettings, EventStore, ExpectedVersion, Publish};
use hcp_events::payload::{
    AsicSample, AsicState, AsicTarget, AsicTelemetryBatch, DecisionConfirmed, DecisionMade,
    GpuSample, MarketPriceObserved, RunReported, RunStatus, WorkerHeartbeat,
};
use hcp_events::{headers, site_stream, Envelope, Event, Topic};
use hcp_tests::{read_topic, wait_until, TestEnv};
use hcp_tsdb::{Ingest, IngestSettings};
use rdkafka::message::{Headers, Message};
use reqwest::StatusCode;
use serde_json::Value;
use time::{Duration as TimeDelta, OffsetDateTime};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

const WAIT: Duration = Duration::from_secs(60);
const POLL: Duration = Duration::from_millis(50);
const ADMIN: &str = "hcp-dev-admin-key";

fn settings() -> IngestSettings {
    IngestSettings {
        // Small batches: many transactions, so a crash lands mid-stream.
        max_batch_messages: 7,
        batch_linger_ms: 5,
        retry_backoff_ms: 100,
        ..IngestSettings::default()
    }
}

fn sample(id: String, state: AsicState, power_w: f64) -> AsicSample {
    AsicSample {
        asic_id: id,
        model: "S21 XP".into(),
        state,
        hashrate_ths: 270.0,
        power_w,
        power_target_w: 3645.0,
        temperature_c: 60.0,
        hw_errors: 0,
        accepted_shares: 3,
    }
}

/// An envelope as a device gateway would produce it (sequence = a per-stream counter).
fn envelope(stream: String, seq: i64, event: Event) -> Vec<u8> {
    let mut e = Envelope::new(stream, "test-devices", event);
    e.sequence = seq;
    e.to_json().unwrap()
}

/// The same in the compact encoding (ASIC batches only).
fn compact_envelope(stream: String, seq: i64, event: Event) -> Vec<u8> {
    let mut e = Envelope::new(stream, "test-devices", event);
    e.sequence = seq;
    hcp_events::compact::encode(&e).unwrap()
}

fn asic_batch(site: &str, rack: &str, at: OffsetDateTime, n: usize, power_w: f64) -> Event {
    Event::AsicTelemetryBatch(AsicTelemetryBatch {
        site: site.into(),
        rack: rack.into(),
        sampled_at: at,
        samples: (0..n)
            .map(|i| {
                let state = if i == 0 {
                    AsicState::Curtailed
                } else {
                    AsicState::Hashing
                };
                sample(format!("{site}/{rack}/a{i}"), state, power_w)
            })
            .collect(),
    })
}

fn heartbeat(site: &str, worker: &str, gpus: usize, power_w: f64) -> Event {
    Event::WorkerHeartbeat(WorkerHeartbeat {
        worker_id: worker.into(),
        site: site.into(),
        backend: "sim".into(),
        gpus: vec![],
        running: vec![],
        samples: (0..gpus)
            .map(|g| GpuSample {
                gpu_id: format!("{worker}/gpu-{g}"),
                utilization_pct: 50.0,
                memory_used_mib: 1024,
                power_w,
                temperature_c: 55.0,
            })
            .collect(),
    })
}

async fn produce(env: &TestEnv, topic: Topic, key: &str, payloads: Vec<Vec<u8>>) {
    let producer = Producer::new(&env.kafka, "test-devices").unwrap();
    let msgs: Vec<OutgoingMessage> = payloads
        .into_iter()
        .map(|payload| OutgoingMessage {
            topic: env.topic(topic),
            key: key.into(),
            payload,
            headers: vec![],
        })
        .collect();
    producer.send_batch(&msgs).await.unwrap();
}

fn start_ingest(env: &TestEnv) -> (CancellationToken, tokio::task::JoinHandle<()>) {
    start_ingest_on(env, env.pool.clone())
}

fn start_ingest_on(
    env: &TestEnv,
    pool: sqlx::PgPool,
) -> (CancellationToken, tokio::task::JoinHandle<()>) {
    let producer = Producer::new(&env.kafka, "telemetry-ingest").unwrap();
    let ingest = Ingest::new(&env.kafka, pool, producer, settings()).unwrap();
    let token = CancellationToken::new();
    let handle = tokio::spawn(ingest.run(token.clone()));
    (token, handle)
}

async fn count(env: &TestEnv, sql: &str) -> i64 {
    sqlx::query_scalar(sql).fetch_one(&env.pool).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn asic_batches_and_gpu_heartbeats_land_exactly_once_across_an_ingest_crash() {
    hcp_tests::init_tracing();
    let env = TestEnv::new().await;
    let t0 = OffsetDateTime::now_utc() - TimeDelta::minutes(5);
    let racks = 8;
    let rounds = 25;
    let per_batch = 20;
    // The instance that crashes has its own pool, closed at the crash like a dying process's
    // connections (a `COPY` cut off mid-stream must not come back through the test's pool).
    let crash_pool = hcp_db::connect(&DatabaseSettings::from_url(&env.database_url))
        .await
        .unwrap();
    let (_token, first) = start_ingest_on(&env, crash_pool.clone());

    // Half the stream, then the crash while the rest is arriving.
    let mut seq = 0;
    let mut batches = Vec::new();
    for r in 0..rounds {
        for k in 0..racks {
            seq += 1;
            let at = t0 + TimeDelta::seconds(r);
            let e = asic_batch("west-1", &format!("r{k}"), at, per_batch, 3000.0);
            // Devices may send either encoding: every other batch is compact.
            batches.push(if seq % 2 == 0 {
                compact_envelope(site_stream("west-1"), seq, e)
            } else {
                envelope(site_stream("west-1"), seq, e)
            });
        }
    }
    let second_half = batches.split_off(batches.len() / 2);
    produce(&env, Topic::Telemetry, "site-west-1", batches).await;
    let mut reports = Vec::new();
    for i in 1..=30 {
        reports.push(envelope(
            "reports-w1".into(),
            i,
            heartbeat("west-1", "w1", 4, 700.0),
        ));
    }
    // A run report on the same topic is not telemetry: ignored, offsets still advance.
    reports.push(envelope(
        "reports-w1".into(),
        31,
        Event::RunReported(RunReported {
            workload_id: Uuid::new_v4(),
            worker_id: "w1".into(),
            status: RunStatus::Started,
            progress: 0.0,
            runtime_s: 0.0,
            detail: None,
            switch: None,
            output: None,
        }),
    ));
    produce(&env, Topic::WorkerReports, "w1", reports).await;
    assert!(
        wait_until(WAIT, POLL, || async {
            count(&env, "SELECT count(*) FROM asic_telemetry").await > 0
        })
        .await,
        "the first ingest wrote nothing"
    );
    let producing = {
        let env_kafka = env.kafka.clone();
        tokio::spawn(async move {
            let producer = Producer::new(&env_kafka, "test-devices").unwrap();
            for chunk in second_half.chunks(10) {
                let msgs: Vec<OutgoingMessage> = chunk
                    .iter()
                    .map(|p| OutgoingMessage {
                        topic: env_kafka.topic(Topic::Telemetry),
                        key: "site-west-1".into(),
                        payload: p.clone(),
                        headers: vec![],
                    })
                    .collect();
                producer.send_batch(&msgs).await.unwrap();
            }
        })
    };
    // Crash: the task is dropped wherever it is (a transaction in flight rolls back, the
    // broker never hears of the last offsets).
    first.abort();
    let _ = first.await;
    crash_pool.close().await;
    let at_crash = count(&env, "SELECT count(*) FROM asic_telemetry").await;
    producing.await.unwrap();

    let expected = rounds * racks * per_batch as i64;
    assert!(at_crash < expected, "the crash came after the whole stream");
    let (token, second) = start_ingest(&env);
    assert!(
        wait_until(WAIT, POLL, || async {
            count(&env, "SELECT count(*) FROM asic_telemetry").await >= expected
                && count(&env, "SELECT count(*) FROM gpu_telemetry").await >= 120
        })
        .await,
        "not everything arrived after the restart (had {at_crash} rows at the crash)"
    );
    // Every message's offset is stored: nothing more can arrive.
    let stored: i64 = count(
        &env,
        "SELECT coalesce(sum(next_offset), 0)::int8 FROM consumer_offsets \
         WHERE consumer = 'telemetry-ingest'",
    )
    .await;
    assert!(
        wait_until(WAIT, POLL, || async {
            count(
                &env,
                "SELECT coalesce(sum(next_offset), 0)::int8 FROM consumer_offsets \
                 WHERE consumer = 'telemetry-ingest'",
            )
            .await
                == rounds * racks + 31
        })
        .await,
        "offsets stored: {stored}"
    );
    token.cancel();
    second.await.unwrap();

    assert_eq!(
        count(&env, "SELECT count(*) FROM asic_telemetry").await,
        expected
    );
    assert_eq!(
        count(
            &env,
            "SELECT count(*) FROM (SELECT DISTINCT asic_id, time FROM asic_telemetry) d"
        )
        .await,
        expected,
        "duplicates after the restart"
    );
    // Every sample reads back through the view with its values, whichever encoding it came in.
    let (power, curtailed, hashrate): (f64, i64, f64) = sqlx::query_as(
        "SELECT sum(power_w), count(*) FILTER (WHERE state = 'curtailed'), avg(hashrate_ths) \
         FROM asic_telemetry",
    )
    .fetch_one(&env.pool)
    .await
    .unwrap();
    assert_eq!(power, expected as f64 * 3000.0);
    assert_eq!(curtailed, rounds * racks);
    assert_eq!(hashrate, 270.0);
    assert_eq!(count(&env, "SELECT count(*) FROM gpu_telemetry").await, 120);
    assert_eq!(
        count(
            &env,
            "SELECT count(*) FROM (SELECT DISTINCT gpu_id, time FROM gpu_telemetry) d"
        )
        .await,
        120
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_telemetry_goes_to_dead_letters_with_the_reason_and_the_rest_is_written() {
    hcp_tests::init_tracing();
    let env = TestEnv::new().await;
    let now = OffsetDateTime::now_utc();
    let good = envelope(site_stream("s"), 1, asic_batch("s", "r1", now, 3, 3000.0));
    // Valid JSON, wrong payload shape for the type.
    let mut wrong: Value = serde_json::from_slice(&good).unwrap();
    wrong["payload"]["samples"] = Value::from("not a list");
    // A compact message cut short.
    let mut cut = compact_envelope(site_stream("s"), 2, asic_batch("s", "r2", now, 3, 1.0));
    cut.truncate(cut.len() - 5);
    produce(
        &env,
        Topic::Telemetry,
        "site-s",
        vec![
            b"{definitely not json".to_vec(),
            serde_json::to_vec(&wrong).unwrap(),
            cut,
            good,
        ],
    )
    .await;
    let (token, handle) = start_ingest(&env);
    let dead = read_topic(&env.kafka, &env.topic(Topic::DeadLetters), 3, WAIT).await;
    assert_eq!(dead.len(), 3);
    for m in &dead {
        let reason = m
            .headers()
            .unwrap()
            .iter()
            .find(|h| h.key == headers::DLQ_REASON)
            .and_then(|h| h.value)
            .map(|v| String::from_utf8_lossy(v).into_owned())
            .unwrap();
        assert!(
            reason.contains("malformed envelope") || reason.contains("invalid payload"),
            "{reason}"
        );
        let consumer = m
            .headers()
            .unwrap()
            .iter()
            .find(|h| h.key == headers::DLQ_CONSUMER)
            .and_then(|h| h.value)
            .unwrap();
        assert_eq!(consumer, b"telemetry-ingest");
    }
    assert!(
        wait_until(WAIT, POLL, || async {
            count(&env, "SELECT count(*) FROM asic_telemetry").await == 3
        })
        .await
    );
    token.cancel();
    handle.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rollup_sums_each_closed_minute_per_site_and_site_power_follows_the_last_batch() {
    hcp_tests::init_tracing();
    let env = TestEnv::new().await;
    // Two closed minutes, a little in the past (inside the pre-created partitions).
    let m0 = hcp_tsdb::rows::minute(OffsetDateTime::now_utc() - TimeDelta::minutes(4));
    let m1 = m0 + TimeDelta::minutes(1);
    let mut seq = 0;
    let mut asic = Vec::new();
    // Site a: 2 racks x 10 ASICs, every 10 s in minute 0 at 3000 W, in minute 1 at 1000 W.
    for (minute, power) in [(m0, 3000.0), (m1, 1000.0)] {
        for s in (0..60).step_by(10) {
            for rack in ["r1", "r2"] {
                seq += 1;
                let at = minute + TimeDelta::seconds(s);
                asic.push(envelope(
                    site_stream("a"),
                    seq,
                    asic_batch("a", rack, at, 10, power),
                ));
            }
        }
    }
    // Site b: one batch of 5 in minute 0.
    asic.push(envelope(
        site_stream("b"),
        1,
        asic_batch("b", "r1", m0 + TimeDelta::seconds(30), 5, 2000.0),
    ));
    produce(&env, Topic::Telemetry, "site-a", asic).await;
    let hb: Vec<Vec<u8>> = (1..=3)
        .map(|i| envelope("reports-g1".into(), i, heartbeat("a", "g1", 8, 500.0)))
        .collect();
    produce(&env, Topic::WorkerReports, "g1", hb).await;
    let (token, handle) = start_ingest(&env);
    assert!(
        wait_until(WAIT, POLL, || async {
            count(&env, "SELECT count(*) FROM asic_telemetry").await == 245
                && count(&env, "SELECT count(*) FROM gpu_telemetry").await == 24
        })
        .await
    );
    token.cancel();
    handle.await.unwrap();

    // Partition upkeep and retention run (idempotently) on the same tables.
    hcp_tsdb::maintenance::partitions(&env.pool).await.unwrap();
    let rolled = hcp_tsdb::maintenance::rollup(&env.pool, Duration::from_secs(1))
        .await
        .unwrap();
    // m0, m1, and the heartbeats' (current) minute only once it has closed.
    assert!(rolled >= 2, "rolled {rolled}");

    type Row = (i64, i32, f64, f64, i32, i32);
    let row = |site: &'static str, bucket: OffsetDateTime| {
        let pool = env.pool.clone();
        async move {
            sqlx::query_as::<_, Row>(
                "SELECT samples, devices, power_mw, hashrate_phs, hashing, curtailed \
                 FROM asic_rollup_1m WHERE site = $1 AND bucket = $2",
            )
            .bind(site)
            .bind(bucket)
            .fetch_one(&pool)
            .await
            .unwrap()
        }
    };
    let (samples, devices, mw, phs, hashing, curtailed) = row("a", m0).await;
    assert_eq!((samples, devices, hashing, curtailed), (120, 20, 18, 2));
    assert!((mw - 0.06).abs() < 1e-9, "20 x 3000 W = 0.06 MW, got {mw}");
    assert!(
        (phs - 5.4).abs() < 1e-9,
        "20 x 270 TH/s = 5.4 PH/s, got {phs}"
    );
    let (_, _, mw1, ..) = row("a", m1).await;
    assert!((mw1 - 0.02).abs() < 1e-9, "{mw1}");
    let (samples_b, devices_b, mw_b, ..) = row("b", m0).await;
    assert_eq!((samples_b, devices_b), (5, 5));
    assert!((mw_b - 0.01).abs() < 1e-9);

    // Site power: the racks' last batches (minute 1, 1000 W x 10 x 2) and the worker's GPUs.
    let (asic_mw, gpu_mw, hashing, curtailed, gpus): (f64, f64, i32, i32, i32) = sqlx::query_as(
        "SELECT asic_mw, gpu_mw, asics_hashing, asics_curtailed, gpus \
             FROM site_power_latest WHERE site = 'a'",
    )
    .fetch_one(&env.pool)
    .await
    .unwrap();
    assert!((asic_mw - 0.02).abs() < 1e-9, "{asic_mw}");
    assert!((gpu_mw - 0.004).abs() < 1e-9, "{gpu_mw}");
    assert_eq!((hashing, curtailed, gpus), (18, 2, 8));

    // Rolling up again changes nothing (the pending minutes are gone).
    let again = hcp_tsdb::maintenance::rollup(&env.pool, Duration::from_secs(1))
        .await
        .unwrap();
    assert!(
        again <= 1,
        "only the heartbeats' minute can still be pending: {again}"
    );
    assert_eq!(row("a", m0).await.0, 120);
}

// ---- gateway ----------------------------------------------------------------------------

async fn append(env: &TestEnv, stream: &str, events: Vec<Event>, topic: Topic) {
    let envs: Vec<Envelope> = events
        .into_iter()
        .map(|e| Envelope::new(stream, "test", e))
        .collect();
    EventStore::new(env.pool.clone())
        .append_and_commit(
            stream,
            ExpectedVersion::Any,
            &envs,
            &Publish::to(env.topic(topic)),
        )
        .await
        .unwrap();
}

fn price(series: &str, at: OffsetDateTime, value: f64, unit: &str) -> Event {
    Event::MarketPriceObserved(MarketPriceObserved {
        series: series.into(),
        interval_start: at,
        value,
        unit: unit.into(),
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_serves_published_prices_profitability_and_decisions() {
    hcp_tests::init_tracing();
    let env = TestEnv::new().await;
    let mut s = hcp_gateway::Settings::defaults().unwrap();
    s.common.database = DatabaseSettings::from_url(&env.database_url);
    s.common.database.max_connections = 5;
    s.common.kafka = env.kafka.clone();
    s.common.admin.port = 0;
    s.gateway.port = 0;
    s.gateway.fleet_file =
        concat!(env!("CARGO_MANIFEST_DIR"), "/../config/fleet.example.toml").into();
    s.gateway.energy_series = "ercot.dam.LZ_WEST".into();
    let gw = hcp_gateway::spawn(s).await.unwrap();
    let http = reqwest::Client::new();
    let base = format!("{}/api/v1", gw.base_url());
    let get = |path: String| {
        let http = http.clone();
        let url = format!("{base}{path}");
        async move {
            let r = http.get(url).bearer_auth(ADMIN).send().await.unwrap();
            let status = r.status();
            (status, r.json::<Value>().await.unwrap_or(Value::Null))
        }
    };

    // Before any price: profitability says what is missing.
    let (status, body) = get("/profitability".into()).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["missing"].as_array().unwrap().len(), 2, "{body}");
    assert!(body["sites"][0]["resources"][0]["margin_usd_per_h"].is_null());

    let h0 = hcp_tsdb::rows::minute(OffsetDateTime::now_utc()) - TimeDelta::hours(3);
    let energy: Vec<Event> = (0..3)
        .map(|i| {
            price(
                "ercot.dam.LZ_WEST",
                h0 + TimeDelta::hours(i),
                20.0 + i as f64,
                "usd_per_mwh",
            )
        })
        .collect();
    append(&env, "market-ercot.dam.LZ_WEST", energy, Topic::Market).await;
    append(
        &env,
        "market-btc.hashprice",
        vec![price("btc.hashprice", h0, 0.055, "usd_per_th_day")],
        Topic::Market,
    )
    .await;
    let decision = Uuid::new_v4();
    append(
        &env,
        &site_stream("west-1"),
        vec![
            Event::DecisionMade(DecisionMade {
                decision_id: decision,
                site: "west-1".into(),
                policy: "rule".into(),
                reason: "cheap power".into(),
                asic_targets: vec![AsicTarget {
                    model: "S21 XP".into(),
                    fraction: 1.0,
                }],
                gpu_batch_allowed: true,
                target_mw: 21.5,
                energy_usd_per_mwh: 22.0,
                hashprice_usd_per_th_day: 0.055,
                expected_profit_usd_per_h: 1234.5,
                dr_id: None,
            }),
            Event::DecisionConfirmed(DecisionConfirmed {
                decision_id: decision,
                site: "west-1".into(),
                target_mw: 21.5,
                measured_mw: 21.4,
                after_s: 12.0,
                met: true,
            }),
        ],
        Topic::Decisions,
    )
    .await;

    assert!(
        wait_until(WAIT, POLL, || async {
            let (_, b) = get("/market/prices".into()).await;
            b["prices"].as_array().map_or(0, Vec::len) == 2
        })
        .await,
        "the market projection did not fill"
    );
    let (_, list) = get("/market/prices".into()).await;
    let ercot = list["prices"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["series"] == "ercot.dam.LZ_WEST")
        .unwrap();
    assert_eq!(ercot["value"], 22.0, "the latest interval's value");

    let (status, hist) = get("/market/prices/ercot.dam.LZ_WEST?limit=2".into()).await;
    assert_eq!(status, StatusCode::OK, "{hist}");
    let values: Vec<f64> = hist["points"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["value"].as_f64().unwrap())
        .collect();
    assert_eq!(values, vec![21.0, 22.0], "the newest two, oldest first");
    let from = (h0 + TimeDelta::minutes(30))
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    let (_, hist) = get(format!(
        "/market/prices/ercot.dam.LZ_WEST?from={}",
        from.replace('+', "%2B")
    ))
    .await;
    assert_eq!(hist["points"].as_array().unwrap().len(), 2, "{hist}");
    let (status, _) = get("/market/prices/no.such.series".into()).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = get("/market/prices/ercot.dam.LZ_WEST?from=yesterday".into()).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);

    let (_, body) = get("/profitability".into()).await;
    assert!(body["missing"].as_array().unwrap().is_empty(), "{body}");
    assert_eq!(body["energy_usd_per_mwh"], 22.0);
    assert_eq!(body["hashprice_usd_per_ph_day"], 55.0);
    let west = &body["sites"][0];
    assert_eq!(west["site"], "west-1");
    let xp = west["resources"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == "S21 XP")
        .unwrap();
    assert!(xp["margin_usd_per_h"].as_f64().unwrap() > 0.0, "{xp}");
    assert!(xp["recommendation"].is_string());

    assert!(
        wait_until(WAIT, POLL, || async {
            let (_, b) = get("/decisions?site=west-1".into()).await;
            b["decisions"][0]["met"] == Value::Bool(true)
        })
        .await,
        "the decision board did not fill"
    );
    let (_, d) = get("/decisions?site=west-1&limit=5".into()).await;
    let first = &d["decisions"][0];
    assert_eq!(first["decision_id"], decision.to_string());
    assert_eq!(first["asic_targets"][0]["model"], "S21 XP");
    assert_eq!(first["measured_mw"], 21.4);
    let (_, none) = get("/decisions?site=elsewhere".into()).await;
    assert!(none["decisions"].as_array().unwrap().is_empty());

    // The OpenAPI document lists the new operations.
    let (_, doc) = get("/openapi.json".into()).await;
    for path in [
        "/api/v1/market/prices",
        "/api/v1/market/prices/{series}",
        "/api/v1/profitability",
        "/api/v1/decisions",
    ] {
        assert!(doc["paths"][path]["get"].is_object(), "{path}");
    }
    // Authenticated like the rest.
    let r = http
        .get(format!("{base}/market/prices"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    gw.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_ingest_instances_share_the_partitions_and_write_every_sample_once() {
    hcp_tests::init_tracing();
    let env = TestEnv::new().await;
    let now = OffsetDateTime::now_utc();
    // Several sites, so their streams spread over the partitions.
    for site in ["s0", "s1", "s2", "s3", "s4", "s5"] {
        let batches: Vec<Vec<u8>> = (1..=10)
            .map(|i| {
                let at = now - TimeDelta::seconds(30 - i);
                envelope(site_stream(site), i, asic_batch(site, "r1", at, 10, 2500.0))
            })
            .collect();
        produce(&env, Topic::Telemetry, &site_stream(site), batches).await;
    }
    let token = CancellationToken::new();
    let settings = IngestSettings {
        consumers: 2,
        ..settings()
    };
    let producer = Producer::new(&env.kafka, "telemetry-ingest").unwrap();
    let handle = hcp_tsdb::spawn_ingest(
        env.pool.clone(),
        &env.kafka,
        producer,
        settings,
        token.clone(),
    )
    .unwrap();
    assert!(
        wait_until(WAIT, POLL, || async {
            count(&env, "SELECT count(*) FROM asic_telemetry").await >= 600
                && count(
                    &env,
                    "SELECT coalesce(sum(next_offset), 0)::int8 FROM consumer_offsets \
                     WHERE consumer = 'telemetry-ingest'",
                )
                .await
                    == 60
        })
        .await
    );
    token.cancel();
    handle.await.unwrap();
    assert_eq!(
        count(
            &env,
            "SELECT count(*) FROM (SELECT DISTINCT asic_id, time FROM asic_telemetry) d"
        )
        .await,
        600
    );
    assert_eq!(
        count(&env, "SELECT count(*) FROM asic_telemetry").await,
        600
    );
    let sites: i64 = count(&env, "SELECT count(*) FROM site_power_latest").await;
    assert_eq!(sites, 6);
}
