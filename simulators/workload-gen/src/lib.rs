//! The workload generator. It creates its tenants through the gateway's admin API (one per
//! tier), then submits the [`mix`] at `--rate` per second, over REST (each tenant's own key,
//! an `Idempotency-Key` per request) or straight to the `workload-requests` topic as a
//! producer in another team would. It prints one progress line a second and a summary with
//! REST latency percentiles (client side), which `make bench` reports.

pub mod mix;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::{Parser, ValueEnum};
use hcp_bus::producer::OutgoingMessage;
use hcp_bus::{KafkaSettings, Producer};
use hcp_events::Topic;
use hdrhistogram::Histogram;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};
use tokio::sync::Semaphore;
use uuid::Uuid;

/// How submissions travel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Via {
    /// `POST /api/v1/workloads` on the gateway.
    Rest,
    /// Produce to the `workload-requests` topic.
    Kafka,
}

/// Command line.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "hcp-workload-gen",
    version,
    about = "Submit a realistic AI workload mix to HCP"
)]
pub struct Args {
    /// REST or Kafka.
    #[arg(long, value_enum, default_value = "rest")]
    pub via: Via,
    /// Submissions per second.
    #[arg(long, default_value_t = 10.0)]
    pub rate: f64,
    /// Stop after this many submissions (default: run until --seconds or Ctrl-C).
    #[arg(long)]
    pub count: Option<u64>,
    /// Stop after this many seconds.
    #[arg(long)]
    pub seconds: Option<u64>,
    /// Gateway base URL.
    #[arg(long, env = "HCP_GATEWAY_URL", default_value = "http://127.0.0.1:8080")]
    pub gateway: String,
    /// The gateway's admin key (creates the generator's tenants and keys).
    #[arg(long, env = "HCP_ADMIN_KEY", default_value = "hcp-dev-admin-key")]
    pub admin_key: String,
    /// Tenant id prefix; one tenant per tier is created as `<prefix>-enterprise` etc.
    #[arg(long, default_value = "gen")]
    pub tenant_prefix: String,
    /// Multiply every run time by this (0.01 makes a 10-minute job take 6 s).
    #[arg(long, default_value_t = 1.0)]
    pub duration_scale: f64,
    /// `mix` (the realistic mix) or `small` (1 GPU, `--small-duration-s`, batch inference: the
    /// benchmark's shape).
    #[arg(long, value_enum, default_value = "mix")]
    pub shape: Shape,
    /// Run time of `--shape small` jobs, seconds.
    #[arg(long, default_value_t = 2)]
    pub small_duration_s: u32,
    /// Ask for this GPU model in every request.
    #[arg(long)]
    pub gpu_type: Option<String>,
    /// Also GET each accepted workload once (measures read latency).
    #[arg(long)]
    pub measure_gets: bool,
    /// Requests in flight at most.
    #[arg(long, default_value_t = 64)]
    pub concurrency: usize,
    /// Kafka bootstrap servers (for --via kafka).
    #[arg(long, env = "HCP_KAFKA__BROKERS", default_value = "127.0.0.1:59092")]
    pub brokers: String,
    /// Topic namespace (for --via kafka).
    #[arg(long, env = "HCP_KAFKA__NAMESPACE", default_value = "hcp")]
    pub namespace: String,
    /// How long the producer gathers requests into one produce request (for --via kafka).
    /// The default is librdkafka's own, what an outside client gets without tuning (HCP's
    /// own producers hand over whole batches and do not linger).
    #[arg(long, default_value_t = 5)]
    pub linger_ms: u32,
    /// Random seed (default: from the clock).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Print the summary as one JSON object on stdout.
    #[arg(long)]
    pub json: bool,
}

/// What to submit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Shape {
    /// The realistic mix ([`mix::sample`]).
    Mix,
    /// Identical small jobs (benchmarks).
    Small,
}

const TIERS: [&str; 3] = ["enterprise", "pro", "free"];

#[derive(Debug, Default)]
struct Stats {
    sent: AtomicU64,
    accepted: AtomicU64,
    rejected: AtomicU64,
    throttled: AtomicU64,
    failed: AtomicU64,
}

#[derive(Debug)]
struct Latencies {
    submit: Histogram<u64>,
    get: Histogram<u64>,
}

/// A tenant the generator submits as.
#[derive(Debug, Clone)]
struct Tenant {
    id: String,
    key: String,
}

/// Runs the generator until `--count`, `--seconds` or Ctrl-C.
pub async fn run(args: Args) -> anyhow::Result<()> {
    if !(args.rate > 0.0 && args.rate.is_finite()) {
        bail!("--rate must be a positive number, got {}", args.rate);
    }
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .pool_max_idle_per_host(args.concurrency)
        .build()
        .context("http client")?;
    let tenants = ensure_tenants(&http, &args).await?;
    let producer = match args.via {
        Via::Kafka => {
            let mut k = KafkaSettings::new(args.brokers.clone());
            k.namespace = args.namespace.clone();
            k.linger_ms = args.linger_ms;
            Some((
                Producer::new(&k, "hcp-workload-gen")?,
                k.topic(Topic::WorkloadRequests),
            ))
        }
        Via::Rest => None,
    };
    let stats = Arc::new(Stats::default());
    let lat = Arc::new(Mutex::new(Latencies {
        submit: Histogram::new(3).context("histogram")?,
        get: Histogram::new(3).context("histogram")?,
    }));
    let permits = Arc::new(Semaphore::new(args.concurrency.max(1)));
    let mut rng = rand::rngs::StdRng::seed_from_u64(args.seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(7)
    }));
    let started = Instant::now();
    let deadline = args.seconds.map(|s| started + Duration::from_secs(s));
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / args.rate));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut report = tokio::time::interval(Duration::from_secs(1));
    report.tick().await;
    let mut last_sent = 0;
    eprintln!(
        "==> submitting via {:?} at {}/s as {} tenants ({})",
        args.via,
        args.rate,
        tenants.len(),
        tenants
            .iter()
            .map(|t| t.id.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    );
    loop {
        let sent = stats.sent.load(Ordering::Relaxed);
        if args.count.is_some_and(|c| sent >= c) || deadline.is_some_and(|d| Instant::now() >= d) {
            break;
        }
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            _ = report.tick() => {
                let s = stats.sent.load(Ordering::Relaxed);
                eprintln!(
                    "  t={:>4}s sent={s} ({}/s) accepted={} rejected={} throttled={} errors={}",
                    started.elapsed().as_secs(),
                    s - last_sent,
                    stats.accepted.load(Ordering::Relaxed),
                    stats.rejected.load(Ordering::Relaxed),
                    stats.throttled.load(Ordering::Relaxed),
                    stats.failed.load(Ordering::Relaxed),
                );
                last_sent = s;
            }
            _ = tick.tick() => {
                let tenant = tenants[rng.random_range(0..tenants.len())].clone();
                let body = match args.shape {
                    Shape::Mix => mix::sample(&mut rng, args.gpu_type.as_deref(), args.duration_scale),
                    Shape::Small => mix::small(args.small_duration_s, args.gpu_type.as_deref()),
                };
                stats.sent.fetch_add(1, Ordering::Relaxed);
                let permit = Arc::clone(&permits).acquire_owned().await.context("semaphore")?;
                let (stats, lat, http) = (Arc::clone(&stats), Arc::clone(&lat), http.clone());
                match &producer {
                    Some((p, topic)) => {
                        let msg = kafka_request(&tenant, &body, topic);
                        let p = p.clone();
                        tokio::spawn(async move {
                            let _permit = permit;
                            match p.send(&msg).await {
                                Ok(()) => stats.accepted.fetch_add(1, Ordering::Relaxed),
                                Err(_) => stats.failed.fetch_add(1, Ordering::Relaxed),
                            };
                        });
                    }
                    None => {
                        let (base, measure_gets) = (args.gateway.clone(), args.measure_gets);
                        tokio::spawn(async move {
                            let _permit = permit;
                            submit(&http, &base, &tenant, &body, measure_gets, &stats, &lat).await;
                        });
                    }
                }
            }
        }
    }
    // Let in-flight requests finish.
    let _ = permits.acquire_many(args.concurrency.max(1) as u32).await;
    if let Some((p, _)) = &producer {
        let _ = p.flush(Duration::from_secs(5));
    }
    summarise(&args, &stats, &lat, started.elapsed())
}

fn kafka_request(tenant: &Tenant, body: &mix::Submission, topic: &str) -> OutgoingMessage {
    let request_id = Uuid::now_v7();
    let mut v = serde_json::to_value(body).unwrap_or(Value::Null);
    if let Some(o) = v.as_object_mut() {
        o.insert("tenant_id".into(), json!(tenant.id));
        o.insert("request_id".into(), json!(request_id));
    }
    OutgoingMessage {
        topic: topic.to_owned(),
        key: request_id.to_string(),
        payload: serde_json::to_vec(&v).unwrap_or_default(),
        headers: Vec::new(),
    }
}

async fn submit(
    http: &reqwest::Client,
    base: &str,
    tenant: &Tenant,
    body: &mix::Submission,
    measure_gets: bool,
    stats: &Stats,
    lat: &Mutex<Latencies>,
) {
    let t0 = Instant::now();
    let res = http
        .post(format!("{base}/api/v1/workloads"))
        .bearer_auth(&tenant.key)
        .header("Idempotency-Key", Uuid::now_v7().to_string())
        .json(body)
        .send()
        .await;
    let elapsed = t0.elapsed();
    let res = match res {
        Ok(r) => r,
        Err(_) => {
            stats.failed.fetch_add(1, Ordering::Relaxed);
            return;
        }
    };
    let status = res.status().as_u16();
    let id = res.json::<Value>().await.ok().and_then(|v| {
        v.get("workload_id")
            .and_then(Value::as_str)
            .map(str::to_owned)
    });
    match status {
        200..=299 => {
            stats.accepted.fetch_add(1, Ordering::Relaxed);
            if let Ok(mut l) = lat.lock() {
                let _ = l.submit.record(elapsed.as_micros() as u64);
            }
        }
        429 => {
            stats.throttled.fetch_add(1, Ordering::Relaxed);
            return;
        }
        400..=499 => {
            stats.rejected.fetch_add(1, Ordering::Relaxed);
            return;
        }
        _ => {
            stats.failed.fetch_add(1, Ordering::Relaxed);
            return;
        }
    }
    if let (true, Some(id)) = (measure_gets, id) {
        let t0 = Instant::now();
        let ok = http
            .get(format!("{base}/api/v1/workloads/{id}"))
            .bearer_auth(&tenant.key)
            .send()
            .await
            .is_ok_and(|r| r.status().is_success());
        if ok {
            if let Ok(mut l) = lat.lock() {
                let _ = l.get.record(t0.elapsed().as_micros() as u64);
            }
        }
    }
}

/// Creates (or reuses) one tenant per tier and a fresh key for each.
async fn ensure_tenants(http: &reqwest::Client, args: &Args) -> anyhow::Result<Vec<Tenant>> {
    let mut out = Vec::new();
    for tier in TIERS {
        let id = format!("{}-{tier}", args.tenant_prefix);
        let res = http
            .post(format!("{}/api/v1/admin/tenants", args.gateway))
            .bearer_auth(&args.admin_key)
            .json(&json!({"id": id, "name": format!("generator ({tier})"), "tier": tier}))
            .send()
            .await
            .with_context(|| format!("cannot reach the gateway at {}", args.gateway))?;
        if !(res.status().is_success() || res.status().as_u16() == 409) {
            bail!(
                "creating tenant {id} failed: {} {}",
                res.status(),
                res.text().await.unwrap_or_default()
            );
        }
        let res = http
            .post(format!("{}/api/v1/admin/tenants/{id}/keys", args.gateway))
            .bearer_auth(&args.admin_key)
            .send()
            .await?;
        if !res.status().is_success() {
            bail!("creating a key for {id} failed: {}", res.status());
        }
        let v: Value = res.json().await?;
        let key = v
            .get("key")
            .and_then(Value::as_str)
            .context("the key response has no `key`")?
            .to_owned();
        out.push(Tenant { id, key });
    }
    Ok(out)
}

fn summarise(
    args: &Args,
    stats: &Stats,
    lat: &Mutex<Latencies>,
    elapsed: Duration,
) -> anyhow::Result<()> {
    let l = lat
        .lock()
        .map_err(|_| anyhow::anyhow!("latency lock poisoned"))?;
    let ms = |h: &Histogram<u64>, q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    let accepted = stats.accepted.load(Ordering::Relaxed);
    let summary = json!({
        "via": format!("{:?}", args.via).to_lowercase(),
        "seconds": elapsed.as_secs_f64(),
        "sent": stats.sent.load(Ordering::Relaxed),
        "accepted": accepted,
        "rejected": stats.rejected.load(Ordering::Relaxed),
        "throttled": stats.throttled.load(Ordering::Relaxed),
        "errors": stats.failed.load(Ordering::Relaxed),
        "accepted_per_s": accepted as f64 / elapsed.as_secs_f64().max(1e-9),
        "submit_ms": {"count": l.submit.len(), "p50": ms(&l.submit, 0.5), "p99": ms(&l.submit, 0.99)},
        "get_ms": {"count": l.get.len(), "p50": ms(&l.get, 0.5), "p99": ms(&l.get, 0.99)},
    });
    if args.json {
        #[allow(clippy::print_stdout)]
        {
            println!("{summary}");
        }
    } else {
        eprintln!("==> done: {summary}");
    }
    Ok(())
}
