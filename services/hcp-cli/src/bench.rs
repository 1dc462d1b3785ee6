//! `hcp bench`: the spine's figures on the real stack. Creates its own database and topic
//! namespace, measures, prints a Markdown table, and drops the database.
//!
//! Rows:
//! - append latency p50/p99: one event per transaction, sequential;
//! - outbox publish throughput: a pre-filled outbox drained by the relay;
//! - consumer apply throughput: the workload board consuming everything published;
//! - append→projection latency p50/p99 under a fixed load, relay and consumer running.

use std::time::{Duration, Instant};

use anyhow::Context;
use hcp_bus::transactional::{ConsumerSettings, KafkaOutboxSink, TransactionalConsumer};
use hcp_bus::{KafkaSettings, Producer};
use hcp_db::sqlx::{self, Connection, PgConnection, PgPool};
use hcp_db::{
    ApplyError, DatabaseSettings, EventStore, ExpectedVersion, OutboxRelay, Projection, Publish,
    RelaySettings,
};
use hcp_events::{Envelope, Topic};
use secrecy::ExposeSecret;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::settings::Settings;
use hcp_readmodel::WorkloadBoard;

/// Bench sizes.
#[derive(Debug, Clone, Copy)]
pub struct BenchOptions {
    /// Events for the throughput rows.
    pub events: usize,
    /// Sequential appends for the latency row.
    pub appends: usize,
    /// Offered load for the latency-under-load row (events/s).
    pub rate: u32,
    /// Duration of the latency-under-load row.
    pub seconds: u64,
}

fn lifecycle(id: Uuid) -> Vec<Envelope> {
    crate::generator::happy_path(id, "bench", "bench")
}

/// Records append→apply latency of every event.
#[derive(Debug)]
struct LatencyProbe;

impl Projection for LatencyProbe {
    fn name(&self) -> &str {
        "bench-latency"
    }
    async fn apply(&self, tx: &mut PgConnection, e: &Envelope) -> Result<(), ApplyError> {
        sqlx::query(
            "INSERT INTO bench_latency (event_id, applied_at) VALUES ($1, clock_timestamp())",
        )
        .bind(e.event_id)
        .execute(tx)
        .await?;
        Ok(())
    }
    async fn reset(&self, tx: &mut PgConnection) -> Result<(), sqlx::Error> {
        sqlx::query("DELETE FROM bench_latency")
            .execute(tx)
            .await
            .map(|_| ())
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

async fn wait_for(
    pool: &PgPool,
    sql: &str,
    target: i64,
    limit: Duration,
) -> anyhow::Result<(Instant, i64, Instant)> {
    let deadline = Instant::now() + limit;
    let mut first: Option<(Instant, i64)> = None;
    loop {
        let n: i64 = sqlx::query_scalar(sql).fetch_one(pool).await?;
        if n > 0 && first.is_none() {
            first = Some((Instant::now(), n));
        }
        if n >= target {
            let (t0, n0) = first.unwrap_or((Instant::now(), n));
            return Ok((t0, n0, Instant::now()));
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "timed out waiting: {n} of {target} ({sql})"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Runs the bench and returns the table rows `(metric, value)`.
pub async fn run(settings: &Settings, opts: BenchOptions) -> anyhow::Result<Vec<(String, String)>> {
    let admin_url = settings.database.url.expose_secret().to_owned();
    let suffix = Uuid::new_v4().simple().to_string()[..10].to_owned();
    let db = format!("hcp_bench_{suffix}");
    let mut admin = PgConnection::connect(&admin_url)
        .await
        .context("connect for bench")?;
    sqlx::query(&format!("CREATE DATABASE {db}"))
        .execute(&mut admin)
        .await?;
    let url = match admin_url.rsplit_once('/') {
        Some((base, _)) => format!("{base}/{db}"),
        None => anyhow::bail!("database URL has no database name"),
    };
    let result = run_in(&url, settings, opts, &suffix).await;
    sqlx::query(&format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)"))
        .execute(&mut admin)
        .await?;
    result
}

async fn run_in(
    url: &str,
    settings: &Settings,
    opts: BenchOptions,
    suffix: &str,
) -> anyhow::Result<Vec<(String, String)>> {
    let mut dbs = DatabaseSettings::from_url(url);
    dbs.max_connections = 20;
    let pool = hcp_db::connect(&dbs).await?;
    hcp_db::migrate(&pool).await?;
    sqlx::query(
        "CREATE TABLE bench_latency (event_id UUID PRIMARY KEY, applied_at TIMESTAMPTZ NOT NULL)",
    )
    .execute(&pool)
    .await?;
    let mut kafka: KafkaSettings = settings.kafka.clone();
    kafka.namespace = format!("bench{suffix}");
    hcp_bus::admin::ensure_all_topics(&kafka).await?;
    let topic = kafka.topic(Topic::Workloads);
    let store = EventStore::new(pool.clone());
    let mut rows = Vec::new();
    let say = |s: &str| tracing::info!("bench: {s}");

    // 1. Append latency, one event per transaction.
    say("append latency");
    let mut lat = Vec::with_capacity(opts.appends);
    for _ in 0..opts.appends {
        let id = Uuid::now_v7();
        let e = lifecycle(id).remove(0);
        let t = Instant::now();
        store
            .append_and_commit(
                &e.stream_id.clone(),
                ExpectedVersion::NoStream,
                &[e],
                &Publish::default(),
            )
            .await?;
        lat.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    lat.sort_by(f64::total_cmp);
    rows.push((
        "append latency p50 / p99 (1 event/tx)".into(),
        format!(
            "{:.2} / {:.2} ms",
            percentile(&lat, 0.5),
            percentile(&lat, 0.99)
        ),
    ));

    // 2. Outbox publish throughput.
    say("filling the outbox");
    let workloads = opts.events / 4;
    let total = (workloads * 4) as i64;
    for chunk in (0..workloads).collect::<Vec<_>>().chunks(250) {
        let mut tx = pool.begin().await?;
        for _ in chunk {
            let id = Uuid::now_v7();
            EventStore::append(
                &mut tx,
                &format!("workload-{id}"),
                ExpectedVersion::NoStream,
                &lifecycle(id),
                &Publish::to(&topic),
            )
            .await?;
        }
        tx.commit().await?;
    }
    say("draining the outbox");
    let producer = Producer::new(&kafka, "bench")?;
    let relay = OutboxRelay::new(
        pool.clone(),
        KafkaOutboxSink(producer.clone()),
        RelaySettings::default(),
    );
    let t = Instant::now();
    let mut published = 0;
    while published < total {
        published += relay.relay_once().await? as i64;
    }
    let secs = t.elapsed().as_secs_f64();
    rows.push((
        "outbox publish throughput".into(),
        format!(
            "{:.0} events/s ({total} events in {secs:.2} s)",
            total as f64 / secs
        ),
    ));

    // 3. Consumer apply throughput (timed from the first applied event, excluding group join).
    say("consuming");
    let token = CancellationToken::new();
    let group = format!("{}.workload-board", kafka.namespace);
    let consumer = TransactionalConsumer::for_projection(
        &kafka,
        ConsumerSettings::new(group, vec![topic.clone()], kafka.topic(Topic::DeadLetters)),
        pool.clone(),
        WorkloadBoard::new(),
        producer.clone(),
    )?;
    let t1 = token.clone();
    let board = tokio::spawn(async move { consumer.run(t1).await });
    let (first, seen_first, done) = wait_for(
        &pool,
        "SELECT coalesce(sum(events_seen), 0)::bigint FROM workload_board",
        total,
        Duration::from_secs(600),
    )
    .await?;
    let secs = (done - first).as_secs_f64().max(1e-6);
    rows.push((
        "consumer apply throughput".into(),
        format!(
            "{:.0} events/s ({total} events in {secs:.2} s)",
            (total - seen_first) as f64 / secs
        ),
    ));
    token.cancel();
    let _ = board.await;

    // 4. Append→projection latency under a fixed load.
    say("latency under load");
    let token = CancellationToken::new();
    let relay = OutboxRelay::new(
        pool.clone(),
        KafkaOutboxSink(producer.clone()),
        RelaySettings::default(),
    );
    let t2 = token.clone();
    let relay_task = tokio::spawn(async move { relay.run(t2).await });
    let group = format!("{}.bench-latency", kafka.namespace);
    let consumer = TransactionalConsumer::for_projection(
        &kafka,
        ConsumerSettings::new(group, vec![topic.clone()], kafka.topic(Topic::DeadLetters)),
        pool.clone(),
        LatencyProbe,
        producer.clone(),
    )?;
    let t3 = token.clone();
    let probe = tokio::spawn(async move { consumer.run(t3).await });
    // Wait until the probe has caught up with the backlog (and joined its group).
    wait_for(
        &pool,
        "SELECT count(*) FROM bench_latency",
        total,
        Duration::from_secs(600),
    )
    .await?;
    let before: i64 = sqlx::query_scalar("SELECT coalesce(max(global_position), 0) FROM events")
        .fetch_one(&pool)
        .await?;
    let tick_ms = 5u64;
    let per_tick = ((opts.rate as f64) * tick_ms as f64 / 1000.0)
        .ceil()
        .max(1.0) as usize;
    let ticks = opts.seconds * 1000 / tick_ms;
    let mut interval = tokio::time::interval(Duration::from_millis(tick_ms));
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let started = Instant::now();
    let mut offered = 0i64;
    for _ in 0..ticks {
        interval.tick().await;
        let mut tx = pool.begin().await?;
        for _ in 0..per_tick {
            let id = Uuid::now_v7();
            let e = lifecycle(id).remove(0);
            EventStore::append(
                &mut tx,
                &e.stream_id.clone(),
                ExpectedVersion::NoStream,
                &[e],
                &Publish::to(&topic),
            )
            .await?;
            offered += 1;
        }
        tx.commit().await?;
    }
    let achieved = offered as f64 / started.elapsed().as_secs_f64();
    wait_for(
        &pool,
        "SELECT count(*) FROM bench_latency",
        total + offered,
        Duration::from_secs(120),
    )
    .await?;
    token.cancel();
    let _ = relay_task.await;
    let _ = probe.await;
    let mut e2e: Vec<f64> = sqlx::query_scalar(
        "SELECT (extract(epoch FROM b.applied_at - e.recorded_at) * 1000)::float8 \
         FROM bench_latency b JOIN events e ON e.event_id = b.event_id WHERE e.global_position > $1",
    )
    .bind(before)
    .fetch_all(&pool)
    .await?;
    e2e.sort_by(f64::total_cmp);
    rows.push((
        format!(
            "append→projection latency p50 / p99 at {:.0} events/s",
            achieved
        ),
        format!(
            "{:.1} / {:.1} ms ({} events)",
            percentile(&e2e, 0.5),
            percentile(&e2e, 0.99),
            e2e.len()
        ),
    ));
    pool.close().await;
    Ok(rows)
}
