//! The `hcp` command line.

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use hcp_db::EventStore;
use hcp_runtime::Shutdown;

use crate::app::{self, Application, Roles};
use crate::settings::Settings;
use hcp_readmodel::{MarketPrices, WorkloadBoard};

/// HCP operator tool.
#[derive(Debug, Parser)]
#[command(
    name = "hcp",
    version,
    about = "HCP control plane: the event spine and its tools"
)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum ProjectionName {
    WorkloadBoard,
    MarketPrices,
}

#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
enum Role {
    Relay,
    Consumers,
    Generator,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Apply database migrations and exit.
    Migrate,
    /// Create every topic of the namespace (idempotent) and exit.
    Topics,
    /// Run the spine: outbox relay, projection consumers, demo generators, admin server.
    Spine {
        /// Run only these parts (default: all).
        #[arg(long, value_delimiter = ',')]
        roles: Vec<Role>,
        /// Stop by itself after this many seconds (default: until Ctrl-C).
        #[arg(long = "for")]
        run_for: Option<u64>,
    },
    /// Rebuild a projection from the event log.
    Rebuild {
        /// Which projection.
        projection: ProjectionName,
    },
    /// Print a stream's events as JSON lines, optionally as known at a past time.
    Stream {
        /// Stream id, e.g. `workload-<uuid>`.
        stream_id: String,
        /// RFC 3339 time: show the stream as the store knew it then.
        #[arg(long)]
        as_of: Option<String>,
    },
    /// Print the spine's figures (events, outbox lag, board, market rows).
    Status,
    /// Benchmark the spine on the real stack (own database and topics) and print a table.
    Bench {
        /// Events for the throughput rows.
        #[arg(long, default_value_t = 20_000)]
        events: usize,
        /// Sequential single-event appends for the latency row.
        #[arg(long, default_value_t = 2_000)]
        appends: usize,
        /// Offered load for the latency-under-load row, events/s.
        #[arg(long, default_value_t = 1_000)]
        rate: u32,
        /// Seconds of load for the latency-under-load row.
        #[arg(long, default_value_t = 10)]
        seconds: u64,
    },
    /// Benchmark the telemetry ingest under a simulated fleet (own database and topics).
    BenchIngest {
        /// ASICs (100 samples per rack message).
        #[arg(long, default_value_t = 250_000)]
        asics: u64,
        /// GPUs (8 samples per worker heartbeat).
        #[arg(long, default_value_t = 50_000)]
        gpus: u64,
        /// Samples per device per second; 0 produces as fast as possible.
        #[arg(long, default_value_t = 1.0)]
        hz: f64,
        /// Seconds of load.
        #[arg(long, default_value_t = 20)]
        seconds: u64,
        /// Most messages per ingest transaction.
        #[arg(long, default_value_t = 1000)]
        max_batch: usize,
        /// Ingest instances in the consumer group (parallel COPY).
        #[arg(long, default_value_t = 1)]
        consumers: usize,
        /// ASIC batches as JSON envelopes instead of the compact binary encoding.
        #[arg(long)]
        json: bool,
    },
    /// Backtest the decision policies on a market trace against the hindsight optimum.
    Backtest(Box<crate::backtest::BacktestArgs>),
    /// Write the JSON Schemas of every external-facing message.
    Schemas {
        /// Output directory.
        #[arg(long, default_value = "schemas")]
        out: PathBuf,
    },
}

fn out(line: &str) -> anyhow::Result<()> {
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "{line}").context("failed to write to stdout")
}

/// Parses arguments and runs; returns the process exit code.
pub async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if let Command::Schemas { out: dir } = &cli.command {
        return write_schemas(dir);
    }
    if let Command::Backtest(args) = cli.command {
        return tokio::task::spawn_blocking(move || crate::backtest::run(*args))
            .await
            .context("backtest thread failed")?;
    }
    let settings = Settings::load()?;
    let _telemetry = hcp_telemetry::init_tracing(&settings.service_name, &settings.telemetry)?;
    match cli.command {
        Command::Migrate => {
            let pool = hcp_db::connect(&settings.database)
                .await
                .context("failed to connect to PostgreSQL")?;
            hcp_db::migrate(&pool).await.context("migration failed")?;
            out("migrations applied")?;
        }
        Command::Topics => {
            let names = hcp_bus::admin::ensure_all_topics(&settings.kafka).await?;
            out(&format!("topics ready: {}", names.join(", ")))?;
        }
        Command::Spine { roles, run_for } => {
            let roles = if roles.is_empty() {
                Roles::ALL
            } else {
                Roles {
                    relay: roles.contains(&Role::Relay),
                    consumers: roles.contains(&Role::Consumers),
                    generator: roles.contains(&Role::Generator),
                }
            };
            let shutdown =
                Shutdown::new(Duration::from_millis(settings.shutdown.drain_deadline_ms));
            let _signals = shutdown.listen_for_signals();
            let app = Application::build(settings.clone(), roles).await?;
            tracing::info!(
                admin = %format!("http://{}:{}/metrics", settings.admin.host, app.admin_port()),
                brokers = %settings.kafka.brokers,
                ?roles,
                "spine running; Ctrl-C to stop"
            );
            if let Some(secs) = run_for {
                let s = shutdown.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_secs(secs)).await;
                    s.trigger();
                });
            }
            app.run_until_stopped(shutdown).await?;
        }
        Command::Rebuild { projection } => {
            let pool = app::prepare(&settings).await?;
            let n = match projection {
                ProjectionName::WorkloadBoard => {
                    hcp_db::rebuild(&pool, &WorkloadBoard::new()).await?
                }
                ProjectionName::MarketPrices => {
                    hcp_db::rebuild(&pool, &MarketPrices::new()).await?
                }
            };
            out(&format!(
                "rebuilt {projection:?} from the log: {n} events applied"
            ))?;
        }
        Command::Stream { stream_id, as_of } => {
            let pool = hcp_db::connect(&settings.database).await?;
            let as_of = as_of
                .map(|s| {
                    time::OffsetDateTime::parse(&s, &time::format_description::well_known::Rfc3339)
                        .with_context(|| format!("--as-of {s} is not an RFC 3339 time"))
                })
                .transpose()?;
            for e in EventStore::new(pool)
                .read_stream_as_of(&stream_id, as_of)
                .await?
            {
                let json = e.envelope.to_json()?;
                out(&String::from_utf8_lossy(&json))?;
            }
        }
        Command::Status => {
            let pool = hcp_db::connect(&settings.database).await?;
            let s = app::status(&pool).await?;
            out(&s.to_string())?;
            if let Some(market) = app::market_status(&pool).await? {
                out(&market)?;
            }
            for site in app::site_status(&pool).await? {
                out(&site.to_string())?;
            }
        }
        Command::Bench {
            events,
            appends,
            rate,
            seconds,
        } => {
            let opts = crate::bench::BenchOptions {
                events,
                appends,
                rate,
                seconds,
            };
            let rows = crate::bench::run(&settings, opts).await?;
            out("| spine metric | value |")?;
            out("|---|---|")?;
            for (k, v) in rows {
                out(&format!("| {k} | {v} |"))?;
            }
        }
        Command::BenchIngest {
            asics,
            gpus,
            hz,
            seconds,
            max_batch,
            consumers,
            json,
        } => {
            let opts = crate::ingest_bench::IngestBenchOptions {
                asics,
                gpus,
                hz,
                seconds,
                max_batch,
                consumers,
                json,
            };
            let rows = crate::ingest_bench::run(&settings, opts).await?;
            out("| ingest metric | value |")?;
            out("|---|---|")?;
            for (k, v) in rows {
                out(&format!("| {k} | {v} |"))?;
            }
        }
        Command::Schemas { .. } | Command::Backtest(_) => {}
    }
    Ok(())
}

fn write_schemas(dir: &std::path::Path) -> anyhow::Result<()> {
    for f in hcp_events::schema::all() {
        let path = dir.join(&f.path);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("failed to create {}", parent.display()))?;
        }
        std::fs::write(&path, &f.json)
            .with_context(|| format!("failed to write {}", path.display()))?;
        out(&format!("wrote {}", path.display()))?;
    }
    Ok(())
}
