//! `hcp backtest`: replays a market trace through the decision policies in accelerated time and
//! scores them against the exact hindsight optimum and the baselines (see docs/backtest.md).
//!
//! Everything it computes lives in `hcp-economics`; this module only parses flags, reports
//! progress on stderr, writes the CSV and PNG, and prints the summary (a table, or one JSON
//! document with `--json`).

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::{Args, ValueEnum};
use hcp_economics::backtest::{backtest, rows_csv, Backtest, RunOptions};
use hcp_economics::fleet::FleetConfig;
use hcp_economics::plot::backtest_png;
use hcp_economics::policy::PolicyKind;
use hcp_economics::trace::{self, parse_date, MissingPolicy, TraceOptions};

const MARKET: &str = "../shared/data/market";

/// Flags of `hcp backtest`. File defaults point at `../shared/data/market` (2023, ERCOT).
#[derive(Debug, Args)]
pub struct BacktestArgs {
    /// Wide price CSV: `interval_start_utc` or `timestamp_utc`, then one column per zone.
    #[arg(
        long,
        default_value = "../shared/data/market/ercot_dam_spp_hourly_2023.csv"
    )]
    prices: PathBuf,
    /// Price column (zone or settlement point).
    #[arg(long, default_value = "LZ_WEST")]
    zone: String,
    /// Real-time price CSV (same format); replaces `--prices` for the intervals it covers.
    #[arg(long)]
    rt_prices: Option<PathBuf>,
    /// Daily BTC price CSV.
    #[arg(long, default_value = "../shared/data/market/btc_usd_daily.csv")]
    btc: PathBuf,
    /// BTC price column.
    #[arg(long, default_value = "price_usd")]
    btc_column: String,
    /// Daily difficulty CSV.
    #[arg(long, default_value = "../shared/data/market/btc_difficulty_daily.csv")]
    difficulty: PathBuf,
    /// Difficulty column.
    #[arg(long, default_value = "difficulty")]
    difficulty_column: String,
    /// Hourly carbon-intensity CSV (default: the 2023 ERCOT file when present).
    #[arg(long)]
    carbon: Option<PathBuf>,
    /// Carbon-intensity column, gCO2eq/kWh.
    #[arg(long, default_value = "ci_direct_gco2eq_per_kwh")]
    carbon_column: String,
    /// Ignore carbon intensity even if the default file exists.
    #[arg(long, conflicts_with = "carbon")]
    no_carbon: bool,
    /// Hourly system-load CSV for 4CP (default: the 2023 ERCOT file when present).
    #[arg(long)]
    load: Option<PathBuf>,
    /// System-load column, MW.
    #[arg(long, default_value = "ERCOT_MW")]
    load_column: String,
    /// Ignore system load (no 4CP) even if the default file exists.
    #[arg(long, conflicts_with = "load")]
    no_load: bool,
    /// Fleet and site description (TOML).
    #[arg(long, default_value = "config/fleet.example.toml")]
    fleet: PathBuf,
    /// First scored day, UTC (YYYY-MM-DD); default: the first price.
    #[arg(long)]
    from: Option<String>,
    /// Last scored day, UTC, inclusive; default: the last price.
    #[arg(long)]
    to: Option<String>,
    /// Days before `--from` fed to the policies as history (not scored).
    #[arg(long, default_value_t = 30)]
    warmup_days: u32,
    /// The policy to report (all run; this one heads the CSV and the plot).
    #[arg(long, value_enum, default_value_t = PolicyArg::Rule)]
    policy: PolicyArg,
    /// Carbon price, $/t CO2eq: eco mode when > 0.
    #[arg(long, default_value_t = 0.0)]
    carbon_price: f64,
    /// Fees' share of the block reward, in [0, 1) (0 = subsidy only).
    #[arg(long, default_value_t = 0.0)]
    fee_share: f64,
    /// Intervals missing from the price file: forward-fill the last price, or skip them.
    #[arg(long, value_enum, default_value_t = MissingArg::Ffill)]
    missing: MissingArg,
    /// Output directory for backtest.csv and backtest.png.
    #[arg(long, default_value = "var/backtest")]
    out: PathBuf,
    /// Print one JSON summary on stdout instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum PolicyArg {
    Rule,
    #[value(name = "qlearn")]
    QLearn,
    AlwaysOn,
    Strike,
}

impl From<PolicyArg> for PolicyKind {
    fn from(p: PolicyArg) -> Self {
        match p {
            PolicyArg::Rule => PolicyKind::Rule,
            PolicyArg::QLearn => PolicyKind::QLearn,
            PolicyArg::AlwaysOn => PolicyKind::AlwaysOn,
            PolicyArg::Strike => PolicyKind::Strike,
        }
    }
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum MissingArg {
    Ffill,
    Skip,
}

/// An optional input: the flag, else the default file if it exists, unless disabled.
fn optional(flag: Option<PathBuf>, disabled: bool, default_name: &str) -> Option<PathBuf> {
    if disabled {
        return None;
    }
    flag.or_else(|| {
        let p = Path::new(MARKET).join(default_name);
        p.exists().then_some(p)
    })
}

fn day(flag: &str, s: Option<&String>) -> anyhow::Result<Option<time::Date>> {
    s.map(|s| parse_date(s).with_context(|| format!("--{flag} {s} is not a date (YYYY-MM-DD)")))
        .transpose()
}

/// Runs the backtest (CPU-bound; call from a blocking thread).
pub fn run(args: BacktestArgs) -> anyhow::Result<()> {
    let mut opts = TraceOptions::new(&args.zone);
    opts.btc_column = args.btc_column.clone();
    opts.difficulty_column = args.difficulty_column.clone();
    opts.carbon_column = args.carbon_column.clone();
    opts.load_column = args.load_column.clone();
    opts.from = day("from", args.from.as_ref())?;
    opts.to = day("to", args.to.as_ref())?;
    opts.warmup_days = args.warmup_days;
    opts.fee_share = args.fee_share;
    opts.missing = match args.missing {
        MissingArg::Ffill => MissingPolicy::ForwardFill,
        MissingArg::Skip => MissingPolicy::Skip,
    };
    let carbon = optional(
        args.carbon.clone(),
        args.no_carbon,
        "ercot_carbon_intensity_hourly_2023.csv",
    );
    let load = optional(
        args.load.clone(),
        args.no_load,
        "ercot_native_load_hourly_2023.csv",
    );
    eprintln!(
        "backtest: loading {} [{}]{}{}",
        args.prices.display(),
        args.zone,
        carbon
            .as_ref()
            .map(|p| format!(", carbon {}", p.display()))
            .unwrap_or_default(),
        load.as_ref()
            .map(|p| format!(", load {}", p.display()))
            .unwrap_or_default()
    );
    let trace = trace::load(
        &args.prices,
        args.rt_prices.as_deref(),
        &args.btc,
        &args.difficulty,
        carbon.as_deref(),
        load.as_deref(),
        &opts,
    )?;
    let fleet =
        FleetConfig::load(&args.fleet)?.model(&args.fleet.display().to_string(), trace.dt_h)?;
    let run_opts = RunOptions {
        carbon_price: args.carbon_price,
        ..RunOptions::default()
    };
    let mut last_quarter = (String::new(), usize::MAX);
    let bt = backtest(
        &trace,
        &fleet,
        args.policy.into(),
        &run_opts,
        &mut |name, done, total| {
            let quarter = (4 * done).checked_div(total).unwrap_or(4);
            if last_quarter.0 != name || last_quarter.1 != quarter {
                last_quarter = (name.to_owned(), quarter);
                eprintln!("backtest: {name:<9} {:>3}% ({done}/{total})", 25 * quarter);
            }
        },
    )?;
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("failed to create {}", args.out.display()))?;
    let csv_path = args.out.join("backtest.csv");
    let png_path = args.out.join("backtest.png");
    std::fs::write(&csv_path, rows_csv(&trace, &bt))
        .with_context(|| format!("failed to write {}", csv_path.display()))?;
    std::fs::write(&png_path, backtest_png(&trace, &bt))
        .with_context(|| format!("failed to write {}", png_path.display()))?;
    eprintln!(
        "backtest: {} intervals in {:.2} s; wrote {} and {}",
        bt.report.intervals,
        bt.report.elapsed_s,
        csv_path.display(),
        png_path.display()
    );
    let mut stdout = std::io::stdout().lock();
    if args.json {
        let mut v = serde_json::to_value(&bt.report).context("failed to serialise the report")?;
        if let Some(o) = v.as_object_mut() {
            o.insert("csv".to_owned(), csv_path.display().to_string().into());
            o.insert("png".to_owned(), png_path.display().to_string().into());
        }
        writeln!(stdout, "{v}").context("failed to write to stdout")?;
    } else {
        write_table(&mut stdout, &bt).context("failed to write to stdout")?;
    }
    Ok(())
}

fn write_table(w: &mut impl Write, bt: &Backtest) -> std::io::Result<()> {
    let r = &bt.report;
    writeln!(
        w,
        "{} {} .. {}: {} intervals of {} h ({} warm-up, {} price-filled, {} skipped, {} real-time), {} 4CP peak(s), carbon price ${}/t",
        r.zone,
        r.from,
        r.to,
        r.intervals,
        r.interval_hours,
        r.warmup_intervals,
        r.filled_intervals,
        r.skipped_intervals,
        r.rt_intervals,
        r.four_cp_peaks,
        r.carbon_price_usd_per_t
    )?;
    if r.carbon_price_usd_per_t > 0.0 {
        writeln!(
            w,
            "eco mode: % of optimum compares objectives (profit minus carbon at the carbon price)"
        )?;
    }
    writeln!(
        w,
        "| run | role | profit $ | objective $ | % of optimum | energy $ | energy vs always-on | MWh | ASIC uptime | curtailments | 4CP $ | switching $ | carbon t |"
    )?;
    writeln!(
        w,
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    )?;
    let pct = |v: Option<f64>| v.map_or_else(|| "-".to_owned(), |x| format!("{x:.2}%"));
    for s in &r.results {
        writeln!(
            w,
            "| {} | {} | {:.0} | {:.0} | {} | {:.0} | {} | {:.0} | {:.2}% | {} | {:.0} | {:.0} | {} |",
            s.name,
            s.role,
            s.profit_usd,
            s.objective_usd,
            pct(s.pct_of_optimum),
            s.energy_cost_usd,
            pct(s.energy_cost_vs_always_on_pct),
            s.mwh,
            s.uptime_pct,
            s.curtailments,
            s.four_cp_cost_usd,
            s.switching_cost_usd,
            s.carbon_t
                .map_or_else(|| "-".to_owned(), |c| format!("{c:.0}"))
        )?;
    }
    writeln!(
        w,
        "Q-learning beats the rule-based policy on this trace: {}",
        if r.qlearn_beats_rule { "yes" } else { "no" }
    )
}
