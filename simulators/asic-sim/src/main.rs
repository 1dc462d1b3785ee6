//! `hcp-asic-sim`: simulates an ASIC fleet that obeys device commands and publishes per-rack
//! telemetry. See `--help` and simulators/README.md.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, ValueEnum};
use hcp_asic_sim::fleet::{RampKind, SimParams};
use hcp_asic_sim::layout::{sites_from_config, sites_from_counts};
use hcp_asic_sim::{AsicSim, AsicSimConfig};
use hcp_bus::KafkaSettings;
use hcp_economics::fleet::FleetConfig;
use hcp_runtime::Shutdown;
use hcp_telemetry::{AdminServer, Readiness, TelemetrySettings};

/// Ramp shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Ramp {
    /// Constant rate.
    Linear,
    /// Exponential approach.
    FirstOrder,
}

/// Command line.
#[derive(Debug, Parser)]
#[command(
    name = "hcp-asic-sim",
    version,
    about = "Simulate an ASIC fleet that obeys HCP's device commands and publishes telemetry"
)]
struct Args {
    /// Kafka bootstrap servers.
    #[arg(long, env = "HCP_KAFKA__BROKERS", default_value = "127.0.0.1:59092")]
    brokers: String,
    /// Topic namespace.
    #[arg(long, env = "HCP_KAFKA__NAMESPACE", default_value = "hcp")]
    namespace: String,
    /// Consumer group for device commands (default `<namespace>.asic-sim`; give each instance
    /// its own when several run).
    #[arg(long)]
    group: Option<String>,
    /// Admin server (/metrics with the per-site summary, /health, /ready); port 0 picks one.
    #[arg(long, default_value = "127.0.0.1:9112")]
    admin_addr: SocketAddr,
    /// Fleet description (sites and ASIC groups), as for `hcp backtest`.
    #[arg(long, default_value = "config/fleet.example.toml")]
    fleet: PathBuf,
    /// Ignore --fleet: this many sites `site-1..`, sharing --asics machines of the three models.
    #[arg(long)]
    sites: Option<u32>,
    /// Machines in total with --sites.
    #[arg(long, default_value_t = 9000)]
    asics: u32,
    /// Multiply every group's count (e.g. 27.78 turns the example fleet into 250,000 ASICs).
    #[arg(long, default_value_t = 1.0)]
    scale: f64,
    /// Devices per rack (one telemetry message per rack and tick).
    #[arg(long, default_value_t = 100)]
    rack_size: u32,
    /// Simulated seconds between ticks and telemetry samples.
    #[arg(long, default_value_t = 1.0)]
    tick_s: f64,
    /// Simulated seconds per real second.
    #[arg(long, default_value_t = 1.0)]
    time_scale: f64,
    /// Tick as fast as possible (benchmark).
    #[arg(long)]
    unpaced: bool,
    /// Stop after this many ticks.
    #[arg(long)]
    ticks: Option<u64>,
    /// Ramp shape.
    #[arg(long, value_enum, default_value = "linear")]
    ramp: Ramp,
    /// Full power to idle, seconds.
    #[arg(long, default_value_t = 3.0)]
    curtail_ramp_s: f64,
    /// Idle to full power, seconds.
    #[arg(long, default_value_t = 8.0)]
    resume_ramp_s: f64,
    /// Overheats per device-hour.
    #[arg(long, default_value_t = 1e-4)]
    overheat_rate: f64,
    /// Hash board failures per device-hour.
    #[arg(long, default_value_t = 2e-5)]
    board_failure_rate: f64,
    /// Drop-outs per device-hour.
    #[arg(long, default_value_t = 5e-5)]
    offline_rate: f64,
    /// Seed of faults and sample noise.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// No progress lines on stderr.
    #[arg(long)]
    quiet: bool,
    /// Send telemetry as JSON envelopes instead of the compact binary encoding
    /// (`schemas/compact/asic-telemetry-batch.v1.ksy`).
    #[arg(long)]
    json_telemetry: bool,
}

#[tokio::main]
async fn main() -> ExitCode {
    match run(Args::parse()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("hcp-asic-sim: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(a: Args) -> anyhow::Result<()> {
    let sites = match a.sites {
        Some(n) => sites_from_counts(n, a.asics),
        None => {
            let cfg = FleetConfig::load(&a.fleet)?;
            sites_from_config(&cfg, a.scale)?
        }
    };
    let config = AsicSimConfig {
        sites,
        rack_size: a.rack_size,
        params: SimParams {
            ramp: match a.ramp {
                Ramp::Linear => RampKind::Linear,
                Ramp::FirstOrder => RampKind::FirstOrder,
            },
            curtail_ramp_s: a.curtail_ramp_s,
            resume_ramp_s: a.resume_ramp_s,
            overheat_per_hour: a.overheat_rate,
            board_failure_per_hour: a.board_failure_rate,
            offline_per_hour: a.offline_rate,
            seed: a.seed,
            ..SimParams::default()
        },
        tick_s: a.tick_s,
        time_scale: a.time_scale,
        unpaced: a.unpaced,
        max_ticks: a.ticks,
        group: a.group.clone(),
        progress: !a.quiet,
        json_telemetry: a.json_telemetry,
    };
    let sim = AsicSim::new(config)?;
    let _telemetry = hcp_telemetry::init_tracing("hcp-asic-sim", &TelemetrySettings::default())?;
    hcp_asic_sim::metrics::describe();
    hcp_bus::metrics_names::describe();
    let metrics = hcp_telemetry::install_metrics()
        .map_err(|e| anyhow::anyhow!("failed to install the metrics recorder: {e}"))?;
    let shutdown = Shutdown::new(Duration::from_secs(10));
    let _signals = shutdown.listen_for_signals();
    let readiness = Readiness::default();
    readiness.register("kafka");
    let admin = AdminServer::bind(a.admin_addr, metrics, readiness.clone())
        .await
        .with_context(|| format!("failed to bind the admin server on {}", a.admin_addr))?;
    let admin_task = tokio::spawn(admin.run(shutdown.token()));
    let mut kafka = KafkaSettings::new(&a.brokers);
    kafka.namespace = a.namespace.clone();
    hcp_bus::admin::ensure_all_topics(&kafka)
        .await
        .with_context(|| format!("failed to create topics on {}", kafka.brokers))?;
    readiness.set("kafka", true);
    let stats = sim.run(&kafka, shutdown.token()).await?;
    let cores = stats.busy_s / stats.elapsed_s.max(1e-9);
    eprintln!(
        "asic-sim: {} ticks in {:.1} s ({:.2} ticks/s), {} messages ({:.0}/s), {} samples ({:.0}/s), simulation thread busy {:.0}% of one core",
        stats.ticks,
        stats.elapsed_s,
        stats.ticks as f64 / stats.elapsed_s.max(1e-9),
        stats.messages,
        stats.messages as f64 / stats.elapsed_s.max(1e-9),
        stats.samples,
        stats.samples as f64 / stats.elapsed_s.max(1e-9),
        cores * 100.0
    );
    shutdown.trigger();
    let _ = admin_task.await;
    Ok(())
}
