//! `hcp-market-sim`: replays (or synthesises) the market onto the `market` topic. See `--help`
//! and simulators/README.md.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Parser, ValueEnum};
use hcp_bus::KafkaSettings;
use hcp_market_sim::grid::{DrSpec, PeakParams, SpikeDr};
use hcp_market_sim::publish::{parse_bound, Source};
use hcp_market_sim::replay::{PriceKind, ReplayInputs};
use hcp_market_sim::synthetic::SyntheticParams;
use hcp_market_sim::timeline::GridOptions;
use hcp_market_sim::MarketSimConfig;
use hcp_runtime::Shutdown;
use hcp_telemetry::{AdminServer, Readiness, TelemetrySettings};

/// Day-ahead or real-time prices.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Prices {
    /// ERCOT day-ahead (`ercot.dam.<ZONE>`).
    Dam,
    /// ERCOT real-time (`ercot.rt.<ZONE>`).
    Rt,
}

/// Command line.
#[derive(Debug, Parser)]
#[command(
    name = "hcp-market-sim",
    version,
    about = "Publish ERCOT / Bitcoin market events (replayed or synthetic) to HCP's market topic"
)]
struct Args {
    /// Kafka bootstrap servers.
    #[arg(long, env = "HCP_KAFKA__BROKERS", default_value = "127.0.0.1:59092")]
    brokers: String,
    /// Topic namespace.
    #[arg(long, env = "HCP_KAFKA__NAMESPACE", default_value = "hcp")]
    namespace: String,
    /// Admin server (/metrics, /health, /ready); port 0 picks one.
    #[arg(long, default_value = "127.0.0.1:9111")]
    admin_addr: SocketAddr,
    /// Simulated seconds per real second (1 = real time, 3600 = an hour a second).
    #[arg(long, default_value_t = 3600.0)]
    speed: f64,
    /// First day (UTC, inclusive), e.g. 2023-08-01. Synthetic default: 2023-01-01.
    #[arg(long)]
    from: Option<String>,
    /// Last day (UTC, inclusive). Synthetic default: 30 days after --from.
    #[arg(long)]
    to: Option<String>,
    /// Generate the market from --seed instead of replaying files.
    #[arg(long)]
    synthetic: bool,
    /// Seed of everything random (synthetic market, GPU rates, random grid events).
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Replay: day-ahead or real-time prices.
    #[arg(long, value_enum, default_value = "dam")]
    prices: Prices,
    /// Price zone column, e.g. LZ_WEST or HB_NORTH.
    #[arg(long, default_value = "LZ_WEST")]
    zone: String,
    /// Directory of the default trace files.
    #[arg(long, default_value = "../shared/data/market")]
    data_dir: PathBuf,
    /// Price file (default: the 2023 DAM or the December 2023 RT file in --data-dir).
    #[arg(long)]
    prices_file: Option<PathBuf>,
    /// Daily BTC price file.
    #[arg(long)]
    btc_file: Option<PathBuf>,
    /// Daily difficulty file.
    #[arg(long)]
    difficulty_file: Option<PathBuf>,
    /// Hourly carbon-intensity file.
    #[arg(long)]
    carbon_file: Option<PathBuf>,
    /// Hourly system-load file (drives 4CP warnings).
    #[arg(long)]
    load_file: Option<PathBuf>,
    /// Replay without carbon intensity.
    #[arg(long)]
    no_carbon: bool,
    /// Replay without system load (and so without 4CP warnings).
    #[arg(long)]
    no_load: bool,
    /// GPU model of the synthesised spot rate.
    #[arg(long, default_value = "H100")]
    gpu_model: String,
    /// Mean GPU spot rate, $/GPU-hour.
    #[arg(long, default_value_t = 2.0)]
    gpu_mean: f64,
    /// A demand-response request, `TIME:MW:RESPOND:DURATION`, e.g.
    /// 2023-08-10T20:00Z:10MW:60s:30m (repeatable).
    #[arg(long = "dr-at")]
    dr_at: Vec<DrSpec>,
    /// Probability of a random demand-response request in a spike interval (0 = never).
    #[arg(long, default_value_t = 0.0)]
    dr_spike_probability: f64,
    /// Price at or above which an interval is a spike, $/MWh.
    #[arg(long, default_value_t = 1000.0)]
    dr_spike_threshold: f64,
    /// Shape of random requests, `MW:RESPOND:DURATION`.
    #[arg(long, default_value = "10MW:60s:30m")]
    dr_spike_shape: String,
    /// 4CP: warn when load is within this fraction of the month's running max (June-September).
    #[arg(long, default_value_t = 0.02)]
    cp_within: f64,
    /// 4CP: lowest probability worth a warning.
    #[arg(long, default_value_t = 0.2)]
    cp_min_probability: f64,
    /// No 4CP warnings.
    #[arg(long)]
    no_peaks: bool,
    /// No progress lines on stderr.
    #[arg(long)]
    quiet: bool,
}

#[tokio::main]
async fn main() -> ExitCode {
    match run(Args::parse()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("hcp-market-sim: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn day(s: &str, what: &str) -> anyhow::Result<time::Date> {
    hcp_economics::trace::parse_date(s)
        .with_context(|| format!("{what} `{s}` is not a date like 2023-08-01"))
}

fn config(a: &Args) -> anyhow::Result<MarketSimConfig> {
    let synthetic = SyntheticParams {
        seed: a.seed,
        gpu_mean: a.gpu_mean,
        ..SyntheticParams::default()
    };
    let source = if a.synthetic {
        let from = parse_bound(a.from.as_deref().unwrap_or("2023-01-01"))
            .context("--from is not a date or time")?;
        let to = match &a.to {
            Some(t) => parse_bound(t).context("--to is not a date or time")? + 86_400,
            None => from + 30 * 86_400,
        };
        Source::Synthetic { from, to }
    } else {
        let f =
            |o: &Option<PathBuf>, name: &str| o.clone().unwrap_or_else(|| a.data_dir.join(name));
        let (kind, default_prices) = match a.prices {
            Prices::Dam => (PriceKind::Dam, "ercot_dam_spp_hourly_2023.csv"),
            Prices::Rt => (PriceKind::Rt, "ercot_rt_spp_lz_hourly_2023-12_partial.csv"),
        };
        Source::Replay(ReplayInputs {
            kind,
            prices: f(&a.prices_file, default_prices),
            zone: a.zone.clone(),
            btc: f(&a.btc_file, "btc_usd_daily.csv"),
            difficulty: f(&a.difficulty_file, "btc_difficulty_daily.csv"),
            carbon: (!a.no_carbon)
                .then(|| f(&a.carbon_file, "ercot_carbon_intensity_hourly_2023.csv")),
            load: (!a.no_load).then(|| f(&a.load_file, "ercot_native_load_hourly_2023.csv")),
            from: a.from.as_deref().map(|s| day(s, "--from")).transpose()?,
            to: a.to.as_deref().map(|s| day(s, "--to")).transpose()?,
        })
    };
    let spike_dr = if a.dr_spike_probability > 0.0 {
        if a.dr_spike_probability > 1.0 {
            bail!("--dr-spike-probability must be in [0, 1]");
        }
        let shape: DrSpec = format!("1970-01-01T00:00Z:{}", a.dr_spike_shape).parse()?;
        Some(SpikeDr {
            threshold_usd_per_mwh: a.dr_spike_threshold,
            probability: a.dr_spike_probability,
            shape,
        })
    } else {
        None
    };
    Ok(MarketSimConfig {
        source,
        speed: a.speed,
        synthetic,
        gpu_model: a.gpu_model.clone(),
        grid: GridOptions {
            dr_zone: a.zone.clone(),
            dr_schedule: a.dr_at.clone(),
            spike_dr,
            peaks: (!a.no_peaks).then_some(PeakParams {
                within: a.cp_within,
                min_probability: a.cp_min_probability,
                ..PeakParams::default()
            }),
            peak_zone: "ERCOT".into(),
            seed: a.seed,
        },
        progress: !a.quiet,
    })
}

async fn run(args: Args) -> anyhow::Result<()> {
    let config = config(&args)?;
    let _telemetry = hcp_telemetry::init_tracing("hcp-market-sim", &TelemetrySettings::default())?;
    hcp_market_sim::metrics::describe();
    hcp_bus::metrics_names::describe();
    let metrics = hcp_telemetry::install_metrics()
        .map_err(|e| anyhow::anyhow!("failed to install the metrics recorder: {e}"))?;
    let shutdown = Shutdown::new(Duration::from_secs(5));
    let _signals = shutdown.listen_for_signals();
    let readiness = Readiness::default();
    readiness.register("kafka");
    let admin = AdminServer::bind(args.admin_addr, metrics, readiness.clone())
        .await
        .with_context(|| format!("failed to bind the admin server on {}", args.admin_addr))?;
    let admin_task = tokio::spawn(admin.run(shutdown.token()));

    let mut kafka = KafkaSettings::new(&args.brokers);
    kafka.namespace = args.namespace.clone();
    hcp_bus::admin::ensure_all_topics(&kafka)
        .await
        .with_context(|| format!("failed to create topics on {}", kafka.brokers))?;
    readiness.set("kafka", true);
    let summary = hcp_market_sim::run(config, &kafka, shutdown.token()).await?;
    tracing::info!(
        rows = summary.rows,
        events = summary.events,
        cancelled = summary.cancelled,
        "market-sim finished"
    );
    shutdown.trigger();
    let _ = admin_task.await;
    Ok(())
}
