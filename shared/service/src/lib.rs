//! The shell every HCP service runs in. A service's `main` is:
//!
//! ```ignore
//! hcp_service::main("hcp-router", &[DEFAULTS], |settings: Settings, ctx| async move {
//!     ctx.spawn_consumer(RouterProjection::new(), &[Topic::Workloads, Topic::Resources])?;
//!     ctx.spawn("placement", placement_loop(ctx.pool().clone(), ctx.token()));
//!     Ok(ctx)
//! })
//! ```
//!
//! [`ServiceContext::start`] connects to PostgreSQL (and migrates), creates the namespace's
//! topics, binds the admin server (`/metrics`, `/health`, `/ready`) and starts the outbox relay
//! (one relay is active across all processes; the others stand by on an advisory lock).
//! [`ServiceContext::run`] waits for a stop signal and drains every task within the deadline.

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use hcp_bus::transactional::{ConsumerSettings, KafkaOutboxSink, TransactionalConsumer};
use hcp_bus::{KafkaSettings, Producer};
use hcp_db::sqlx::PgPool;
use hcp_db::{DatabaseSettings, EventStore, OutboxRelay, Projection, RelaySettings};
use hcp_events::Topic;
use hcp_runtime::Shutdown;
use hcp_telemetry::{AdminServer, Readiness, TelemetrySettings};
use serde::Deserialize;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// The compiled-in defaults every binary shares (`config/default.toml`).
pub const COMMON_DEFAULTS: &str = include_str!("../../../config/default.toml");

/// The fetch wait of consumers started with [`ServiceContext::spawn_background_consumer`].
pub const BACKGROUND_FETCH_WAIT: Duration = Duration::from_millis(100);

/// Settings every service has (flatten them into a service's own settings).
#[derive(Debug, Clone, Deserialize)]
pub struct CommonSettings {
    /// Service name for traces and logs.
    pub service_name: String,
    /// PostgreSQL.
    pub database: DatabaseSettings,
    /// Kafka.
    pub kafka: KafkaSettings,
    /// Admin HTTP server.
    pub admin: AdminSettings,
    /// Logs and traces.
    #[serde(default)]
    pub telemetry: TelemetrySettings,
    /// Shutdown.
    pub shutdown: ShutdownSettings,
}

/// `[admin]`.
#[derive(Debug, Clone, Deserialize)]
pub struct AdminSettings {
    /// Bind host (loopback by default).
    pub host: String,
    /// Port; 0 picks a free one.
    pub port: u16,
}

/// `[shutdown]`.
#[derive(Debug, Clone, Deserialize)]
pub struct ShutdownSettings {
    /// How long in-flight work may take to drain after a stop signal.
    pub drain_deadline_ms: u64,
}

/// Settings types that carry the common settings.
pub trait HasCommon {
    /// The common part.
    fn common(&self) -> &CommonSettings;
}

impl HasCommon for CommonSettings {
    fn common(&self) -> &CommonSettings {
        self
    }
}

/// A started service: connections, admin server, relay, and the tasks it runs.
#[derive(Debug)]
pub struct ServiceContext {
    name: String,
    kafka: KafkaSettings,
    pool: PgPool,
    producer: Producer,
    readiness: Readiness,
    admin_port: u16,
    token: CancellationToken,
    tasks: JoinSet<anyhow::Result<()>>,
}

impl ServiceContext {
    /// Connects, migrates, creates topics, binds the admin server and starts the outbox relay.
    pub async fn start(
        name: &str,
        common: &CommonSettings,
        token: CancellationToken,
    ) -> anyhow::Result<Self> {
        hcp_db::metrics_names::describe();
        hcp_bus::metrics_names::describe();
        let metrics = hcp_telemetry::install_metrics()
            .map_err(|e| anyhow::anyhow!("failed to install the metrics recorder: {e}"))?;
        let readiness = Readiness::default();
        readiness.register("postgres+kafka");
        let pool = hcp_db::connect(&common.database)
            .await
            .context("failed to connect to PostgreSQL (is the stack up? `make stack-up`)")?;
        hcp_db::migrate(&pool)
            .await
            .context("failed to apply migrations")?;
        hcp_bus::admin::ensure_all_topics(&common.kafka)
            .await
            .with_context(|| {
                format!(
                    "failed to create topics on {} (is the broker up? `make stack-up`)",
                    common.kafka.brokers
                )
            })?;
        readiness.set("postgres+kafka", true);
        let addr: SocketAddr = format!("{}:{}", common.admin.host, common.admin.port)
            .parse()
            .context("invalid admin address")?;
        let admin = AdminServer::bind(addr, metrics, readiness.clone())
            .await
            .with_context(|| format!("failed to bind the admin server on {addr}"))?;
        let admin_port = admin.local_addr().map(|a| a.port()).unwrap_or(0);
        let producer = Producer::new(&common.kafka, name).context("failed to create producer")?;
        let mut tasks: JoinSet<anyhow::Result<()>> = JoinSet::new();
        let t = token.clone();
        tasks.spawn(async move { admin.run(t).await.context("admin server failed") });
        let relay = OutboxRelay::new(
            pool.clone(),
            KafkaOutboxSink(producer.clone()),
            RelaySettings::default(),
        );
        let t = token.clone();
        tasks.spawn(async move { relay.run(t).await.context("outbox relay failed") });
        tracing::info!(service = name, admin_port, "service started");
        Ok(Self {
            name: name.to_owned(),
            kafka: common.kafka.clone(),
            pool,
            producer,
            readiness,
            admin_port,
            token,
            tasks,
        })
    }

    /// The service name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The pool.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// An event store over the pool.
    pub fn store(&self) -> EventStore {
        EventStore::new(self.pool.clone())
    }

    /// The idempotent producer.
    pub fn producer(&self) -> &Producer {
        &self.producer
    }

    /// Kafka settings.
    pub fn kafka(&self) -> &KafkaSettings {
        &self.kafka
    }

    /// The concrete name of a topic in this namespace.
    pub fn topic(&self, topic: Topic) -> String {
        self.kafka.topic(topic)
    }

    /// Readiness flags for `/ready`.
    pub fn readiness(&self) -> &Readiness {
        &self.readiness
    }

    /// The admin server's port.
    pub fn admin_port(&self) -> u16 {
        self.admin_port
    }

    /// The shutdown token (cancelled on the first stop signal).
    pub fn token(&self) -> CancellationToken {
        self.token.clone()
    }

    /// Runs `fut` as one of the service's tasks; an error stops nothing else but is reported
    /// when the service drains.
    pub fn spawn<F>(&mut self, what: &'static str, fut: F)
    where
        F: Future<Output = anyhow::Result<()>> + Send + 'static,
    {
        self.tasks
            .spawn(async move { fut.await.with_context(|| format!("{what} failed")) });
    }

    /// Runs a transactional consumer that applies `topics` to `projection` (consumer group
    /// `<namespace>.<projection name>`; malformed and poison events go to dead letters).
    pub fn spawn_consumer<P: Projection + 'static>(
        &mut self,
        projection: P,
        topics: &[Topic],
    ) -> anyhow::Result<()> {
        self.spawn_consumer_fetching(projection, topics, None)
    }

    /// Like [`ServiceContext::spawn_consumer`], for a read model that may lag by up to
    /// [`BACKGROUND_FETCH_WAIT`]: its consumer fetches that much less often when idle (every
    /// fetch costs the broker CPU; the latency-critical consumers keep the short wait).
    pub fn spawn_background_consumer<P: Projection + 'static>(
        &mut self,
        projection: P,
        topics: &[Topic],
    ) -> anyhow::Result<()> {
        self.spawn_consumer_fetching(projection, topics, Some(BACKGROUND_FETCH_WAIT))
    }

    fn spawn_consumer_fetching<P: Projection + 'static>(
        &mut self,
        projection: P,
        topics: &[Topic],
        fetch_wait_max: Option<Duration>,
    ) -> anyhow::Result<()> {
        let group = format!("{}.{}", self.kafka.namespace, projection.name());
        let topics = topics.iter().map(|t| self.kafka.topic(*t)).collect();
        let mut settings =
            ConsumerSettings::new(group, topics, self.kafka.topic(Topic::DeadLetters));
        settings.fetch_wait_max = fetch_wait_max;
        let consumer = TransactionalConsumer::for_projection(
            &self.kafka,
            settings,
            self.pool.clone(),
            projection,
            self.producer.clone(),
        )
        .context("failed to create consumer")?;
        let t = self.token.clone();
        self.spawn("consumer", async move {
            consumer.run(t).await.map_err(Into::into)
        });
        Ok(())
    }

    /// Waits for the token, then drains every task within the deadline.
    pub async fn run(mut self, shutdown: &Shutdown) -> anyhow::Result<()> {
        self.token.cancelled().await;
        self.readiness.set("postgres+kafka", false);
        let mut tasks = std::mem::take(&mut self.tasks);
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
        let _ = self.producer.flush(Duration::from_secs(2));
        match drained {
            Ok(None) => Ok(()),
            Ok(Some(e)) => Err(e),
            Err(timeout) => Err(anyhow::anyhow!("{timeout}")),
        }
    }
}

/// A service's whole `main`: loads settings (common defaults, then `defaults`, then
/// `HCP_CONFIG`, then `HCP_*` variables), sets up logs and traces, starts the context, lets
/// `build` add the service's tasks, runs until Ctrl-C/SIGTERM and drains. Returns the exit code.
pub async fn main<S, F, Fut>(name: &str, defaults: &[&str], build: F) -> std::process::ExitCode
where
    S: HasCommon + for<'de> Deserialize<'de>,
    F: FnOnce(S, ServiceContext) -> Fut,
    Fut: Future<Output = anyhow::Result<ServiceContext>>,
{
    match run_main(name, defaults, build).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{name}: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run_main<S, F, Fut>(name: &str, defaults: &[&str], build: F) -> anyhow::Result<()>
where
    S: HasCommon + for<'de> Deserialize<'de>,
    F: FnOnce(S, ServiceContext) -> Fut,
    Fut: Future<Output = anyhow::Result<ServiceContext>>,
{
    let mut layers = vec![COMMON_DEFAULTS];
    layers.extend_from_slice(defaults);
    let settings: S = hcp_runtime::load_layered(&layers)?;
    let common = settings.common().clone();
    let _telemetry = hcp_telemetry::init_tracing(&common.service_name, &common.telemetry)?;
    let shutdown = Shutdown::new(Duration::from_millis(common.shutdown.drain_deadline_ms));
    let _signals = shutdown.listen_for_signals();
    let ctx = ServiceContext::start(name, &common, shutdown.token()).await?;
    let ctx = build(settings, ctx).await?;
    ctx.run(&shutdown).await
}
