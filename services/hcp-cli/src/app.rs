//! The spine application: outbox relay, projection consumers, demo generators and the admin
//! server, under one shutdown token.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use hcp_bus::transactional::{ConsumerSettings, KafkaOutboxSink, TransactionalConsumer};
use hcp_bus::Producer;
use hcp_db::sqlx::PgPool;
use hcp_db::{EventStore, OutboxRelay, Projection, RelaySettings};
use hcp_events::Topic;
use hcp_runtime::Shutdown;
use hcp_telemetry::{AdminServer, Readiness};
use tokio::task::JoinSet;

use crate::generator;
use crate::settings::Settings;
use hcp_readmodel::{MarketPrices, WorkloadBoard};

/// Which parts to run (the `hcp spine` flags; tests run parts in separate processes).
#[derive(Debug, Clone, Copy)]
pub struct Roles {
    /// The outbox relay.
    pub relay: bool,
    /// The projection consumers.
    pub consumers: bool,
    /// The demo generators.
    pub generator: bool,
}

impl Roles {
    /// Everything.
    pub const ALL: Roles = Roles {
        relay: true,
        consumers: true,
        generator: true,
    };
}

/// A built, not yet running, spine.
#[derive(Debug)]
pub struct Application {
    settings: Settings,
    pool: PgPool,
    admin: AdminServer,
    readiness: Readiness,
    roles: Roles,
}

/// Connects to PostgreSQL, migrates, and creates the namespace's topics.
pub async fn prepare(settings: &Settings) -> anyhow::Result<PgPool> {
    let pool = hcp_db::connect(&settings.database)
        .await
        .context("failed to connect to PostgreSQL (is the stack up? `make stack-up`)")?;
    hcp_db::migrate(&pool)
        .await
        .context("failed to apply migrations")?;
    hcp_bus::admin::ensure_all_topics(&settings.kafka)
        .await
        .with_context(|| {
            format!(
                "failed to create topics on {} (is the broker up? `make stack-up`)",
                settings.kafka.brokers
            )
        })?;
    Ok(pool)
}

impl Application {
    /// Builds the application: database, topics, admin server.
    pub async fn build(settings: Settings, roles: Roles) -> anyhow::Result<Self> {
        hcp_db::metrics_names::describe();
        hcp_bus::metrics_names::describe();
        let metrics = hcp_telemetry::install_metrics()
            .map_err(|e| anyhow::anyhow!("failed to install the metrics recorder: {e}"))?;
        let readiness = Readiness::default();
        readiness.register("postgres+kafka");
        let pool = prepare(&settings).await?;
        readiness.set("postgres+kafka", true);
        let addr: SocketAddr = format!("{}:{}", settings.admin.host, settings.admin.port)
            .parse()
            .context("invalid admin address")?;
        let admin = AdminServer::bind(addr, metrics, readiness.clone())
            .await
            .with_context(|| format!("failed to bind the admin server on {addr}"))?;
        Ok(Self {
            settings,
            pool,
            admin,
            readiness,
            roles,
        })
    }

    /// The admin server's port.
    pub fn admin_port(&self) -> u16 {
        self.admin.local_addr().map(|a| a.port()).unwrap_or(0)
    }

    /// Runs until the shutdown token is cancelled, then drains within the deadline.
    pub async fn run_until_stopped(self, shutdown: Shutdown) -> anyhow::Result<()> {
        let token = shutdown.token();
        let kafka = &self.settings.kafka;
        let store = EventStore::new(self.pool.clone());
        let producer = Producer::new(kafka, "hcp-spine").context("failed to create producer")?;
        let mut tasks: JoinSet<anyhow::Result<()>> = JoinSet::new();

        let admin_token = token.clone();
        tasks.spawn(async move {
            self.admin
                .run(admin_token)
                .await
                .context("admin server failed")
        });

        if self.roles.relay {
            let relay = OutboxRelay::new(
                self.pool.clone(),
                KafkaOutboxSink(producer.clone()),
                RelaySettings::default(),
            );
            let t = token.clone();
            tasks.spawn(async move { relay.run(t).await.context("outbox relay failed") });
        }
        if self.roles.consumers {
            let dlq = kafka.topic(Topic::DeadLetters);
            spawn_consumer(
                &mut tasks,
                kafka,
                &self.pool,
                &producer,
                WorkloadBoard::new(),
                vec![kafka.topic(Topic::Workloads)],
                dlq.clone(),
                &token,
            )?;
            spawn_consumer(
                &mut tasks,
                kafka,
                &self.pool,
                &producer,
                MarketPrices::new(),
                vec![kafka.topic(Topic::Market)],
                dlq,
                &token,
            )?;
            self.readiness.register("consumers");
            self.readiness.set("consumers", true);
        }
        if self.roles.generator {
            let spine = &self.settings.spine;
            let (s, t, rate) = (
                store.clone(),
                kafka.topic(Topic::Workloads),
                spine.workloads_per_second,
            );
            let tok = token.clone();
            tasks.spawn(async move {
                let n = generator::run_workloads(s, t, rate, tok).await;
                tracing::info!(workloads = n, "workload generator stopped");
                Ok(())
            });
            match std::fs::read_to_string(&spine.market_csv) {
                Ok(text) => {
                    let rows = generator::parse_market_csv(&text, &spine.market_column)
                        .map_err(|e| anyhow::anyhow!("{}: {e}", spine.market_csv))?;
                    tracing::info!(rows = rows.len(), csv = %spine.market_csv, "replaying market prices");
                    let (s, t, series, rate, tok) = (
                        store.clone(),
                        kafka.topic(Topic::Market),
                        format!("ercot.dam.{}", spine.market_column),
                        spine.market_rows_per_second,
                        token.clone(),
                    );
                    tasks.spawn(async move {
                        let n = generator::run_market_replay(s, t, series, rows, rate, tok).await;
                        tracing::info!(rows = n, "market replay stopped");
                        Ok(())
                    });
                }
                Err(e) => {
                    tracing::warn!(csv = %spine.market_csv, error = %e, "market replay disabled")
                }
            }
        }
        let (pool, tok) = (self.pool.clone(), token.clone());
        tasks.spawn(async move {
            maintain_partitions(pool, Duration::from_secs(3600), tok).await;
            Ok(())
        });
        let every = Duration::from_secs(self.settings.spine.report_every_s.max(1));
        let (pool, tok) = (self.pool.clone(), token.clone());
        tasks.spawn(async move {
            report_status(pool, every, tok).await;
            Ok(())
        });

        token.cancelled().await;
        self.readiness.set("postgres+kafka", false);
        let drained = shutdown
            .drain(async {
                let mut first_err = None;
                while let Some(res) = tasks.join_next().await {
                    match res {
                        Ok(Ok(())) => {}
                        Ok(Err(e)) => {
                            tracing::error!(error = %format!("{e:#}"), "task failed");
                            first_err.get_or_insert(e);
                        }
                        Err(e) => {
                            first_err.get_or_insert(anyhow::anyhow!("task panicked: {e}"));
                        }
                    }
                }
                first_err
            })
            .await;
        let _ = producer.flush(Duration::from_secs(2));
        match drained {
            Ok(None) => Ok(()),
            Ok(Some(e)) => Err(e),
            Err(timeout) => Err(anyhow::anyhow!("{timeout}")),
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn spawn_consumer<P: Projection + 'static>(
    tasks: &mut JoinSet<anyhow::Result<()>>,
    kafka: &hcp_bus::KafkaSettings,
    pool: &PgPool,
    producer: &Producer,
    projection: P,
    topics: Vec<String>,
    dlq: String,
    token: &tokio_util::sync::CancellationToken,
) -> anyhow::Result<()> {
    let group = format!("{}.{}", kafka.namespace, projection.name());
    let settings = ConsumerSettings::new(group, topics, dlq);
    let consumer = TransactionalConsumer::for_projection(
        kafka,
        settings,
        pool.clone(),
        projection,
        producer.clone(),
    )
    .context("failed to create consumer")?;
    let t = token.clone();
    tasks.spawn(async move { consumer.run(t).await.context("consumer failed") });
    Ok(())
}

/// Spine status figures.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    /// Events in the log.
    pub events: i64,
    /// Events waiting to be published.
    pub outbox_lag: i64,
    /// Workloads on the board.
    pub workloads: i64,
    /// Of which finished (completed, failed, cancelled).
    pub finished: i64,
    /// Market rows stored.
    pub market_rows: i64,
    /// Workloads on the board per state, in lifecycle order (states with none left out).
    pub by_state: Vec<(String, i64)>,
    /// GPUs known to the resource-manager.
    pub gpus: i64,
    /// Of which allocated now.
    pub gpus_allocated: i64,
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let states: Vec<String> = self
            .by_state
            .iter()
            .map(|(s, n)| format!("{s}={n}"))
            .collect();
        write!(
            f,
            "workloads={} [{}] gpus={}/{} allocated events={} outbox_lag={} market_rows={}",
            self.workloads,
            states.join(" "),
            self.gpus_allocated,
            self.gpus,
            self.events,
            self.outbox_lag,
            self.market_rows
        )
    }
}

/// Reads the status figures.
pub async fn status(pool: &PgPool) -> Result<Status, hcp_db::sqlx::Error> {
    let (events, outbox_lag, workloads, finished, market_rows): (i64, i64, i64, i64, i64) =
        hcp_db::sqlx::query_as(
            "SELECT (SELECT coalesce(max(global_position), 0) FROM events), \
                    (SELECT count(*) FROM outbox), \
                    (SELECT count(*) FROM workload_board), \
                    (SELECT count(*) FROM workload_board \
                        WHERE state IN ('completed', 'failed', 'cancelled')), \
                    (SELECT count(*) FROM market_prices)",
        )
        .fetch_one(pool)
        .await?;
    let counts: Vec<(String, i64)> =
        hcp_db::sqlx::query_as("SELECT state, count(*) FROM workload_board GROUP BY state")
            .fetch_all(pool)
            .await?;
    let by_state = hcp_domain::WorkloadState::ALL
        .iter()
        .filter_map(|st| {
            counts
                .iter()
                .find(|(name, _)| name == st.as_str())
                .map(|(name, n)| (name.clone(), *n))
        })
        .collect();
    let (gpus, gpus_allocated): (i64, i64) = hcp_db::sqlx::query_as(
        "SELECT (SELECT count(*) FROM rm_gpus), \
                (SELECT count(*) FROM rm_allocations WHERE released_at IS NULL)",
    )
    .fetch_one(pool)
    .await?;
    Ok(Status {
        events,
        outbox_lag,
        workloads,
        finished,
        market_rows,
        by_state,
        gpus,
        gpus_allocated,
    })
}

async fn report_status(pool: PgPool, every: Duration, token: tokio_util::sync::CancellationToken) {
    let mut tick = tokio::time::interval(every);
    tick.tick().await;
    loop {
        tokio::select! {
            _ = token.cancelled() => return,
            _ = tick.tick() => {}
        }
        match status(&pool).await {
            Ok(s) => tracing::info!(
                events = s.events,
                outbox_lag = s.outbox_lag,
                workloads = s.workloads,
                finished = s.finished,
                market_rows = s.market_rows,
                "spine status"
            ),
            Err(e) => tracing::warn!(error = %e, "status query failed"),
        }
    }
}

/// One site's live economics: measured power by use (telemetry) and the optimizer's latest
/// decision (the price it decided at, target, expected profit).
#[derive(Debug, Clone, PartialEq)]
pub struct SiteStatus {
    /// Site.
    pub site: String,
    /// Measured ASIC power, MW.
    pub asic_mw: f64,
    /// Measured GPU power, MW.
    pub gpu_mw: f64,
    /// ASICs hashing.
    pub hashing: i32,
    /// ASICs curtailed.
    pub curtailed: i32,
    /// ASICs ramping.
    pub ramping: i32,
    /// The latest decision's energy price, $/MWh.
    pub price: Option<f64>,
    /// The latest decision's target, MW.
    pub target_mw: Option<f64>,
    /// The latest decision's expected profit, $/h.
    pub profit_per_h: Option<f64>,
    /// Whether batch GPU work is allowed.
    pub gpu_batch_allowed: Option<bool>,
}

impl std::fmt::Display for SiteStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "site {}: ASIC {:.1} MW ({} hashing, {} ramping, {} curtailed) GPU {:.2} MW",
            self.site, self.asic_mw, self.hashing, self.ramping, self.curtailed, self.gpu_mw
        )?;
        if let (Some(price), Some(target), Some(profit)) =
            (self.price, self.target_mw, self.profit_per_h)
        {
            write!(
                f,
                " | decided at ${price:.2}/MWh: target {target:.1} MW expected profit ${profit:.0}/h"
            )?;
        }
        if self.gpu_batch_allowed == Some(false) {
            f.write_str(" | GPU batch paused")?;
        }
        Ok(())
    }
}

/// Live economics per site (empty when no telemetry has arrived).
pub async fn site_status(pool: &PgPool) -> Result<Vec<SiteStatus>, hcp_db::sqlx::Error> {
    type Row = (
        String,
        f64,
        f64,
        i32,
        i32,
        i32,
        Option<f64>,
        Option<f64>,
        Option<f64>,
        Option<bool>,
    );
    let rows: Vec<Row> = hcp_db::sqlx::query_as(
        "SELECT p.site, p.asic_mw, p.gpu_mw, p.asics_hashing, p.asics_curtailed, p.asics_ramping, \
                d.energy_usd_per_mwh, d.target_mw, d.expected_profit_usd_per_h, d.gpu_batch_allowed \
         FROM site_power_latest p \
         LEFT JOIN LATERAL (SELECT * FROM decision_board b WHERE b.site = p.site \
                            ORDER BY decided_at DESC LIMIT 1) d ON true \
         ORDER BY p.site",
    )
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(
            |(site, asic_mw, gpu_mw, hashing, curtailed, ramping, price, target, profit, batch)| {
                SiteStatus {
                    site,
                    asic_mw,
                    gpu_mw,
                    hashing,
                    curtailed,
                    ramping,
                    price,
                    target_mw: target,
                    profit_per_h: profit,
                    gpu_batch_allowed: batch,
                }
            },
        )
        .collect())
}

/// The latest published value of each market series that drives decisions: energy prices
/// (`ercot.dam.*`, `ercot.rtm.*`) and the hashprice, as `series value @ interval start`, so a
/// replay's progress shows even while the optimizer holds its decision.
pub async fn market_status(pool: &PgPool) -> Result<Option<String>, hcp_db::sqlx::Error> {
    let rows: Vec<(String, f64, time::OffsetDateTime)> = hcp_db::sqlx::query_as(
        "SELECT DISTINCT ON (series) series, value, interval_start FROM market_prices \
         WHERE series LIKE 'ercot.%' OR series = 'btc.hashprice' \
         ORDER BY series, interval_start DESC",
    )
    .fetch_all(pool)
    .await?;
    if rows.is_empty() {
        return Ok(None);
    }
    let parts: Vec<String> = rows
        .iter()
        .map(|(series, value, at)| {
            let at = at
                .format(&time::format_description::well_known::Rfc3339)
                .unwrap_or_default();
            format!("{series} {value:.2} @ {at}")
        })
        .collect();
    Ok(Some(format!("market: {}", parts.join(", "))))
}

/// Keeps a week of partitions ahead of now for every partitioned time-series table (a no-op on
/// hypertables), so live rows never pile up in the default partition.
pub async fn ensure_partitions(pool: &PgPool) -> Result<i64, hcp_db::sqlx::Error> {
    hcp_db::sqlx::query_scalar(
        "SELECT coalesce(sum(hcp_ensure_partitions(table_name, now() - chunk, now() + 7 * chunk)), 0)::bigint \
         FROM timeseries_tables",
    )
    .fetch_one(pool)
    .await
}

async fn maintain_partitions(
    pool: PgPool,
    every: Duration,
    token: tokio_util::sync::CancellationToken,
) {
    let mut tick = tokio::time::interval(every);
    loop {
        tokio::select! {
            _ = token.cancelled() => return,
            _ = tick.tick() => {}
        }
        match ensure_partitions(&pool).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(created = n, "time-series partitions created"),
            Err(e) => tracing::warn!(error = %e, "partition maintenance failed"),
        }
    }
}
