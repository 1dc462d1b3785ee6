//! `hcp bench-ingest`: the telemetry ingest (hcp-tsdb) under a simulated fleet on the real
//! stack. Creates its own database and topic namespace, produces ASIC batches (100 samples a
//! rack) and GPU heartbeats (8 GPUs a worker) at the fleet's sample rate (or as fast as the
//! producer goes), runs the ingest in-process, and prints what it sustained: samples/s
//! offered and written, and the Kafka→DB latency (`occurred_at` to commit) p50/p99/max.
//!
//! The messages are rendered from per-rack templates (only the ids and timestamps change), so
//! the load generator spends its CPU on producing, not on JSON encoding; the ingest decodes
//! every message in full.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use hcp_bus::{KafkaSettings, Producer};
use hcp_db::sqlx::{self, Connection, PgConnection};
use hcp_db::DatabaseSettings;
use hcp_events::Topic;
use hcp_tsdb::{CommitStats, Ingest, IngestSettings};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer as _};
use secrecy::ExposeSecret;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::settings::Settings;

/// What to simulate.
#[derive(Debug, Clone, Copy)]
pub struct IngestBenchOptions {
    /// ASICs (100 a rack).
    pub asics: u64,
    /// GPUs (8 a worker).
    pub gpus: u64,
    /// Samples per device per second; 0: produce as fast as possible.
    pub hz: f64,
    /// Seconds of load.
    pub seconds: u64,
    /// Most messages per ingest transaction.
    pub max_batch: usize,
    /// Ingest instances in the consumer group.
    pub consumers: usize,
    /// ASIC batches as JSON envelopes instead of the compact encoding.
    pub json: bool,
}

const ASICS_PER_RACK: u64 = 100;
const GPUS_PER_WORKER: u64 = 8;

/// One pre-rendered message source: a rack or a worker.
struct Source {
    key: String,
    /// JSON before the timestamps, between them, and after.
    head: String,
    middle: String,
    tail: String,
    /// Instead of the JSON: a compact message and where its two timestamps lie.
    compact: Option<(Vec<u8>, [usize; 2])>,
    samples: u64,
    telemetry: bool,
}

/// A rack's batch in the compact encoding, its timestamps patched on each send.
fn compact_rack_source(site: &str, rack: u64) -> anyhow::Result<Source> {
    use hcp_events::payload::{AsicSample, AsicState, AsicTelemetryBatch};
    use hcp_events::{Envelope, Event};
    let samples = (0..ASICS_PER_RACK)
        .map(|i| AsicSample {
            asic_id: format!("{site}-r{rack}-a{i}"),
            model: "S21 XP".into(),
            state: AsicState::Hashing,
            hashrate_ths: 265.0 + (i % 10) as f64,
            power_w: 3600.0 + (i % 7) as f64 * 5.0,
            power_target_w: 3645.0,
            temperature_c: 58.0 + (i % 5) as f64,
            hw_errors: 0,
            accepted_shares: (i % 4) as u32,
        })
        .collect();
    let stream = format!("site-{site}");
    let mut e = Envelope::new(
        stream.clone(),
        "bench-ingest",
        Event::AsicTelemetryBatch(AsicTelemetryBatch {
            site: site.into(),
            rack: format!("r{rack}"),
            sampled_at: OffsetDateTime::UNIX_EPOCH,
            samples,
        }),
    );
    e.sequence = 1;
    let bytes = hcp_events::compact::encode(&e)?;
    // The layout (hcp_events::compact): occurred_at follows the 41-byte header (no causation
    // id); sampled_at follows sequence and the four length-prefixed strings.
    let occurred = 41;
    let sampled = occurred
        + 16
        + [
            stream.len(),
            e.producer.len(),
            site.len(),
            1 + rack.to_string().len(),
        ]
        .iter()
        .map(|n| 2 + n)
        .sum::<usize>();
    let mut s = Source {
        key: stream,
        head: String::new(),
        middle: String::new(),
        tail: String::new(),
        compact: Some((bytes, [occurred, sampled])),
        samples: ASICS_PER_RACK,
        telemetry: true,
    };
    // Check the offsets once: both timestamps must read back as the one patched in.
    let at = OffsetDateTime::now_utc();
    let mut buf = Vec::new();
    render(&s, at, &mut buf)?;
    let back = Envelope::decode(&buf)?;
    let Event::AsicTelemetryBatch(b) = &back.payload else {
        anyhow::bail!("the compact template decodes to {:?}", back.event_type());
    };
    anyhow::ensure!(
        back.occurred_at == at && b.sampled_at == at,
        "the compact template's timestamp offsets are wrong"
    );
    s.head.clear();
    Ok(s)
}

fn rack_source(site: &str, rack: u64) -> Source {
    let mut samples = String::with_capacity(250 * ASICS_PER_RACK as usize);
    for i in 0..ASICS_PER_RACK {
        if i > 0 {
            samples.push(',');
        }
        samples.push_str(&format!(
            r#"{{"asic_id":"{site}-r{rack}-a{i}","model":"S21 XP","state":"hashing","hashrate_ths":{},"power_w":{},"power_target_w":3645.0,"temperature_c":{},"hw_errors":0,"accepted_shares":{}}}"#,
            265.0 + (i % 10) as f64,
            3600.0 + (i % 7) as f64 * 5.0,
            58.0 + (i % 5) as f64,
            i % 4
        ));
    }
    let stream = format!("site-{site}");
    Source {
        key: stream.clone(),
        head: format!(
            r#"{{"event_id":"{}","event_type":"asic.telemetry_batch","schema_version":1,"stream_id":"{stream}","sequence":1,"occurred_at":""#,
            Uuid::now_v7()
        ),
        middle: format!(
            r#"","correlation_id":"{}","producer":"bench-ingest","payload":{{"site":"{site}","rack":"r{rack}","sampled_at":""#,
            Uuid::now_v7()
        ),
        tail: format!(r#"","samples":[{samples}]}}}}"#),
        compact: None,
        samples: ASICS_PER_RACK,
        telemetry: true,
    }
}

fn worker_source(site: &str, worker: u64) -> Source {
    let mut samples = String::new();
    for g in 0..GPUS_PER_WORKER {
        if g > 0 {
            samples.push(',');
        }
        samples.push_str(&format!(
            r#"{{"gpu_id":"{site}-w{worker}/gpu-{g}","utilization_pct":{},"memory_used_mib":40960,"power_w":{},"temperature_c":61.0}}"#,
            80.0 + g as f64,
            650.0 + g as f64
        ));
    }
    let stream = format!("reports-{site}-w{worker}");
    Source {
        key: stream.clone(),
        head: format!(
            r#"{{"event_id":"{}","event_type":"worker.heartbeat","schema_version":1,"stream_id":"{stream}","sequence":1,"occurred_at":""#,
            Uuid::now_v7()
        ),
        // The heartbeat's samples are timed by occurred_at; the payload has no sample time,
        // so the second timestamp lands in `backend` (any string is valid there).
        middle: format!(
            r#"","correlation_id":"{}","producer":"bench-ingest","payload":{{"worker_id":"{site}-w{worker}","site":"{site}","gpus":[],"running":[],"backend":""#,
            Uuid::now_v7()
        ),
        tail: format!(r#"","samples":[{samples}]}}}}"#),
        compact: None,
        samples: GPUS_PER_WORKER,
        telemetry: false,
    }
}

fn render(s: &Source, now: OffsetDateTime, buf: &mut Vec<u8>) -> anyhow::Result<()> {
    buf.clear();
    if let Some((bytes, offsets)) = &s.compact {
        buf.extend_from_slice(bytes);
        let nanos = i64::try_from(now.unix_timestamp_nanos())?.to_le_bytes();
        for at in offsets {
            buf[*at..*at + 8].copy_from_slice(&nanos);
        }
        return Ok(());
    }
    let now = now.format(&Rfc3339).context("format time")?;
    buf.extend_from_slice(s.head.as_bytes());
    buf.extend_from_slice(now.as_bytes());
    buf.extend_from_slice(s.middle.as_bytes());
    buf.extend_from_slice(now.as_bytes());
    buf.extend_from_slice(s.tail.as_bytes());
    Ok(())
}

/// Produces on a dedicated thread until `stop` or `deadline`; returns samples produced.
fn produce(
    kafka: &KafkaSettings,
    sources: Vec<Source>,
    opts: IngestBenchOptions,
    produced: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
) -> anyhow::Result<u64> {
    let producer: BaseProducer = kafka
        .producer_config("bench-ingest")
        .set("linger.ms", "5")
        .set("batch.size", "1000000")
        .set("queue.buffering.max.kbytes", "1048576")
        .create()
        .context("bench producer")?;
    let telemetry = kafka.topic(Topic::Telemetry);
    let reports = kafka.topic(Topic::WorkerReports);
    let started = Instant::now();
    let mut buf = Vec::with_capacity(32 * 1024);
    let mut sent_samples = 0u64;
    let mut round = 0u64;
    'outer: while started.elapsed() < Duration::from_secs(opts.seconds) {
        // Paced: round r (every source once) starts at r / hz seconds.
        if opts.hz > 0.0 {
            let due = Duration::from_secs_f64(round as f64 / opts.hz);
            if due >= Duration::from_secs(opts.seconds) {
                break;
            }
            if let Some(wait) = due.checked_sub(started.elapsed()) {
                std::thread::sleep(wait);
            }
        }
        let n = sources.len() as f64;
        for (i, s) in sources.iter().enumerate() {
            if stop.load(Ordering::Relaxed) {
                break 'outer;
            }
            // Spread each round over its second, as a fleet's racks would (every 64 sends).
            if opts.hz > 0.0 && i % 64 == 0 {
                let due = Duration::from_secs_f64((round as f64 + i as f64 / n) / opts.hz);
                if let Some(wait) = due.checked_sub(started.elapsed()) {
                    std::thread::sleep(wait);
                }
            }
            render(s, OffsetDateTime::now_utc(), &mut buf)?;
            let topic = if s.telemetry { &telemetry } else { &reports };
            loop {
                match producer.send(BaseRecord::to(topic).key(&s.key).payload(&buf)) {
                    Ok(()) => break,
                    Err((e, _)) => {
                        if e.rdkafka_error_code()
                            != Some(rdkafka::types::RDKafkaErrorCode::QueueFull)
                        {
                            anyhow::bail!("produce failed: {e}");
                        }
                        producer.poll(Duration::from_millis(5));
                    }
                }
            }
            producer.poll(Duration::ZERO);
            sent_samples += s.samples;
            produced.store(sent_samples, Ordering::Relaxed);
        }
        round += 1;
    }
    producer
        .flush(Duration::from_secs(60))
        .context("flushing the bench producer")?;
    Ok(sent_samples)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// CPU seconds this process has used (user + system), from /proc.
fn process_cpu_s() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let after = stat.rsplit_once(')')?.1;
    let f: Vec<&str> = after.split_whitespace().collect();
    let utime: f64 = f.get(11)?.parse().ok()?;
    let stime: f64 = f.get(12)?.parse().ok()?;
    Some((utime + stime) / 100.0)
}

/// Deletes the bench namespace's topics: the test broker keeps every byte in memory.
async fn drop_topics(kafka: &KafkaSettings, namespace: &str) {
    use rdkafka::admin::{AdminClient, AdminOptions};
    use rdkafka::client::DefaultClientContext;
    let admin: AdminClient<DefaultClientContext> = match kafka.admin_config("bench-ingest").create()
    {
        Ok(a) => a,
        Err(e) => {
            tracing::warn!(error = %e, "cannot delete the bench topics");
            return;
        }
    };
    let names: Vec<String> = Topic::ALL.iter().map(|t| t.name_in(namespace)).collect();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    if let Err(e) = admin.delete_topics(&refs, &AdminOptions::new()).await {
        tracing::warn!(error = %e, "cannot delete the bench topics");
    }
}

/// Runs the bench in a fresh database and namespace and returns the table rows.
pub async fn run(
    settings: &Settings,
    opts: IngestBenchOptions,
) -> anyhow::Result<Vec<(String, String)>> {
    let admin_url = settings.database.url.expose_secret().to_owned();
    let suffix = Uuid::new_v4().simple().to_string()[..10].to_owned();
    let db = format!("hcp_bench_ingest_{suffix}");
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
    drop_topics(&settings.kafka, &format!("bench{suffix}")).await;
    sqlx::query(&format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)"))
        .execute(&mut admin)
        .await?;
    result
}

async fn run_in(
    url: &str,
    settings: &Settings,
    opts: IngestBenchOptions,
    suffix: &str,
) -> anyhow::Result<Vec<(String, String)>> {
    let pool = hcp_db::connect(&DatabaseSettings::from_url(url)).await?;
    hcp_db::migrate(&pool).await?;
    let mut kafka = settings.kafka.clone();
    kafka.namespace = format!("bench{suffix}");
    hcp_bus::admin::ensure_all_topics(&kafka).await?;

    let ingest_settings = IngestSettings {
        max_batch_messages: opts.max_batch,
        batch_linger_ms: 20,
        ..IngestSettings::default()
    };
    let dlq = Producer::new(&kafka, "bench-ingest-dlq")?;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<CommitStats>();
    let token = CancellationToken::new();
    let mut ingest_tasks = Vec::new();
    for _ in 0..opts.consumers.max(1) {
        let ingest = Ingest::new(&kafka, pool.clone(), dlq.clone(), ingest_settings.clone())?
            .with_observer(tx.clone());
        ingest_tasks.push(tokio::spawn(ingest.run(token.clone())));
    }
    drop(tx);

    // Warm-up: one rack until the ingest has joined its group and committed it.
    let warm = vec![rack_source("warmup", 0)];
    let warm_opts = IngestBenchOptions {
        seconds: 1,
        hz: 1.0,
        ..opts
    };
    let k = kafka.clone();
    tokio::task::spawn_blocking(move || {
        produce(
            &k,
            warm,
            warm_opts,
            Arc::default(),
            Arc::new(AtomicBool::new(false)),
        )
    })
    .await??;
    tokio::time::timeout(Duration::from_secs(60), rx.recv())
        .await
        .context("the ingest did not start within 60 s")?;
    while rx.try_recv().is_ok() {}

    let mut sources = Vec::new();
    for r in 0..opts.asics.div_ceil(ASICS_PER_RACK) {
        let site = format!("s{}", r % 4);
        sources.push(if opts.json {
            rack_source(&site, r)
        } else {
            compact_rack_source(&site, r)?
        });
    }
    for w in 0..opts.gpus.div_ceil(GPUS_PER_WORKER) {
        sources.push(worker_source(&format!("s{}", w % 4), w));
    }
    let offered: u64 = sources.iter().map(|s| s.samples).sum();
    let produced = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let cpu0 = process_cpu_s();
    let started = Instant::now();
    let producer = {
        let (k, p, s) = (kafka.clone(), produced.clone(), stop.clone());
        tokio::task::spawn_blocking(move || produce(&k, sources, opts, p, s))
    };

    let mut written = 0u64;
    let mut latencies: Vec<Duration> = Vec::new();
    let mut last_commit = started;
    let mut batches = 0u64;
    let mut producer = Some(producer);
    let mut sent: Option<u64> = None;
    let drain_deadline = Duration::from_secs(opts.seconds + 120);
    loop {
        if let Some(total) = sent {
            if written >= total {
                break;
            }
        }
        if started.elapsed() > drain_deadline {
            stop.store(true, Ordering::Relaxed);
            break;
        }
        if producer.as_ref().is_some_and(|p| p.is_finished()) {
            if let Some(p) = producer.take() {
                sent = Some(p.await??);
            }
        }
        match tokio::time::timeout(Duration::from_millis(200), rx.recv()).await {
            Ok(Some(s)) => {
                written += s.asic_samples + s.gpu_samples;
                latencies.extend(s.latencies);
                last_commit = Instant::now();
                batches += 1;
            }
            Ok(None) => break,
            Err(_) => {}
        }
    }
    let production_s = opts.seconds as f64;
    let elapsed = last_commit.duration_since(started).as_secs_f64();
    let cpu = match (cpu0, process_cpu_s()) {
        (Some(a), Some(b)) => format!(
            "{:.1} s ({:.0}% of one core)",
            b - a,
            (b - a) / elapsed * 100.0
        ),
        _ => "n/a".into(),
    };
    token.cancel();
    for t in ingest_tasks {
        let _ = t.await;
    }
    latencies.sort_unstable();
    let sent = sent.unwrap_or_else(|| produced.load(Ordering::Relaxed));
    let ms = |d: Duration| format!("{:.1} ms", d.as_secs_f64() * 1000.0);
    let target = if opts.hz > 0.0 {
        format!("{:.0}", offered as f64 * opts.hz)
    } else {
        "as fast as possible".into()
    };
    let rows = vec![
        (
            "fleet".into(),
            format!(
                "{} ASICs ({} racks), {} GPUs ({} workers)",
                opts.asics,
                opts.asics.div_ceil(ASICS_PER_RACK),
                opts.gpus,
                opts.gpus.div_ceil(GPUS_PER_WORKER)
            ),
        ),
        ("target samples/s".into(), target),
        (
            "produced samples/s".into(),
            format!("{:.0}", sent as f64 / production_s),
        ),
        (
            "written samples/s (first produce to last commit)".into(),
            format!("{:.0}", written as f64 / elapsed.max(1e-9)),
        ),
        (
            "samples written / produced".into(),
            format!("{written} / {sent}"),
        ),
        (
            "drain after production stopped".into(),
            format!("{:.1} s", (elapsed - production_s).max(0.0)),
        ),
        (
            "Kafka→DB latency p50 / p99 / max".into(),
            format!(
                "{} / {} / {}",
                ms(percentile(&latencies, 0.5)),
                ms(percentile(&latencies, 0.99)),
                ms(latencies.last().copied().unwrap_or_default())
            ),
        ),
        (
            "ingest transactions (consumers)".into(),
            format!("{batches} ({})", opts.consumers.max(1)),
        ),
        ("bench process CPU (producer + ingest)".into(), cpu),
    ];
    Ok(rows)
}
