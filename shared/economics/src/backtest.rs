//! The backtest runner: policies, baselines and the hindsight optimum over one trace, in
//! accelerated time.
//!
//! Every run starts with all units on and free to switch, is scored on the trace's scored
//! window (warm-up observations are history only) and is accounted by the same
//! [`crate::econ::account_site`]. 4CP peaks are the realised monthly load peaks of the trace:
//! the scorer and the optimum know them, policies do not (they see [`crate::policy::Past`]).

use serde::Serialize;

use crate::econ::{account_site, site_margins, Ledger};
use crate::fleet::{FleetModel, SiteModel};
use crate::optimum::{dp, DpLimits};
use crate::policy::{realised_peaks, Context, Past, Policy, PolicyKind, UnitState};
use crate::trace::{fmt_ts, Trace};
use crate::EconError;

/// Options of a run.
#[derive(Debug, Clone, Copy, Default)]
pub struct RunOptions {
    /// Carbon price, $/t: eco mode when > 0 (policies and the optimum maximise profit minus
    /// carbon cost).
    pub carbon_price: f64,
    /// Size limits of the exact DP.
    pub dp_limits: DpLimits,
}

/// One scored interval of one run.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct IntervalOut {
    /// ASIC facility power, MW.
    pub asic_mw: f64,
    /// GPU facility power (real-time included), MW.
    pub gpu_mw: f64,
    /// Cash profit of the interval, $.
    pub profit_usd: f64,
    /// Objective (profit minus carbon cost), $.
    pub objective_usd: f64,
}

/// A finished run.
#[derive(Debug, Clone)]
pub struct RunResult {
    /// Policy name, or `optimum`.
    pub name: String,
    /// Totals.
    pub ledger: Ledger,
    /// Per scored interval.
    pub rows: Vec<IntervalOut>,
    /// Decisions the runner had to correct (minimum times, levels, cap).
    pub overrides: u64,
}

/// 4CP peak flags over `trace.obs`: the highest system-load interval of each June..September
/// month in the trace (a window that ends mid-month takes the peak of what it has).
pub fn four_cp_peaks(trace: &Trace) -> Vec<bool> {
    realised_peaks(&trace.obs, true)
}

fn interval_out(site_levels: &[(&SiteModel, &[f64])]) -> (f64, f64) {
    let (mut asic, mut gpu) = (0.0, 0.0);
    for (site, levels) in site_levels {
        gpu += site.fixed_mw;
        for (u, x) in site.units.iter().zip(levels.iter()) {
            if u.is_asic() {
                asic += u.mw * x;
            } else {
                gpu += u.mw * x;
            }
        }
    }
    (asic, gpu)
}

/// Makes a decision legal: minimum on/off times, levels in `[min_level, 1]`, the site cap.
/// Returns the number of corrections.
fn enforce(site: &SiteModel, states: &[UnitState], levels: &mut Vec<f64>, margins: &[f64]) -> u64 {
    let n = site.units.len();
    let mut fixes = 0;
    if levels.len() != n {
        levels.resize(n, 1.0);
        fixes += 1;
    }
    for (i, u) in site.units.iter().enumerate() {
        let x = levels[i];
        let want_on = x.is_nan() || x > 0.0;
        let st = states[i];
        let on = if want_on != st.on && !st.can_switch(u.min_on, u.min_off) {
            fixes += 1;
            st.on
        } else {
            want_on
        };
        let y = if on {
            if x.is_nan() {
                1.0
            } else {
                x.clamp(u.min_level, 1.0)
            }
        } else {
            0.0
        };
        if y != x {
            fixes += u64::from(!(x <= 0.0 && y == 0.0));
        }
        levels[i] = y;
    }
    let avail = site.available_mw();
    let load = |l: &[f64]| -> f64 { site.units.iter().zip(l).map(|(u, x)| u.mw * x).sum() };
    if load(levels) > avail + 1e-9 {
        fixes += 1;
        let mut order: Vec<usize> = (0..n).filter(|&i| levels[i] > 0.0).collect();
        order.sort_by(|&a, &b| {
            let ka = margins[a] / site.units[a].mw.max(f64::MIN_POSITIVE);
            let kb = margins[b] / site.units[b].mw.max(f64::MIN_POSITIVE);
            ka.total_cmp(&kb)
        });
        for &i in &order {
            let over = load(levels) - avail;
            if over <= 1e-9 {
                break;
            }
            let u = &site.units[i];
            levels[i] = (levels[i] - over / u.mw.max(f64::MIN_POSITIVE)).max(u.min_level);
        }
        for &i in &order {
            if load(levels) <= avail + 1e-9 {
                break;
            }
            let u = &site.units[i];
            if states[i].can_switch(u.min_on, u.min_off) || !states[i].on {
                levels[i] = 0.0;
            }
        }
    }
    fixes
}

/// Runs `policy` over the trace. `progress(done, total)` is called about a hundred times.
pub fn run_policy(
    trace: &Trace,
    fleet: &FleetModel,
    policy: &mut dyn Policy,
    opts: &RunOptions,
    peaks: &[bool],
    progress: &mut dyn FnMut(usize, usize),
) -> RunResult {
    let mut states: Vec<Vec<UnitState>> = fleet
        .sites
        .iter()
        .map(|s| vec![UnitState::start(); s.units.len()])
        .collect();
    // The policy's only window on the market: grows by one observation per interval.
    let mut seen = Vec::with_capacity(trace.obs.len());
    seen.extend_from_slice(&trace.obs[..trace.scored_from]);
    let total = trace.obs.len() - trace.scored_from;
    let step = (total / 100).max(1);
    let mut ledger = Ledger::default();
    let mut rows = Vec::with_capacity(total);
    let mut overrides = 0;
    for (k, obs) in trace.obs[trace.scored_from..].iter().enumerate() {
        seen.push(*obs);
        let Some(past) = Past::new(&seen) else {
            continue;
        };
        let mut levels = policy.decide(&Context {
            past,
            fleet,
            states: &states,
            carbon_price: opts.carbon_price,
        });
        levels.resize(fleet.sites.len(), Vec::new());
        let peak = peaks.get(trace.scored_from + k).copied().unwrap_or(false);
        let mut profit = 0.0;
        let mut objective = 0.0;
        for ((site, st), lv) in fleet
            .sites
            .iter()
            .zip(states.iter_mut())
            .zip(levels.iter_mut())
        {
            let margins = site_margins(site, obs, opts.carbon_price, 0.0);
            overrides += enforce(site, st, lv, &margins);
            let prev: Vec<bool> = st.iter().map(|s| s.on).collect();
            let l = account_site(site, obs, &prev, lv, opts.carbon_price, peak);
            profit += l.profit_usd();
            objective += l.objective_usd();
            ledger.add(&l);
            for (s, &x) in st.iter_mut().zip(lv.iter()) {
                *s = s.after(x);
            }
        }
        let pairs: Vec<(&SiteModel, &[f64])> = fleet
            .sites
            .iter()
            .zip(levels.iter())
            .map(|(s, l)| (s, l.as_slice()))
            .collect();
        let (asic_mw, gpu_mw) = interval_out(&pairs);
        rows.push(IntervalOut {
            asic_mw,
            gpu_mw,
            profit_usd: profit,
            objective_usd: objective,
        });
        if (k + 1) % step == 0 || k + 1 == total {
            progress(k + 1, total);
        }
    }
    RunResult {
        name: policy.name().to_owned(),
        ledger,
        rows,
        overrides,
    }
}

/// The exact hindsight optimum (see [`crate::optimum`]), accounted like any policy.
pub fn run_optimum(
    trace: &Trace,
    fleet: &FleetModel,
    opts: &RunOptions,
    peaks: &[bool],
) -> Result<RunResult, EconError> {
    let scored = trace.scored();
    let off = trace.scored_from;
    let mut schedules = Vec::with_capacity(fleet.sites.len());
    for site in &fleet.sites {
        let cp = site.cp_usd_per_mw_at_peak();
        let margins: Vec<Vec<f64>> = scored
            .iter()
            .enumerate()
            .map(|(k, o)| {
                let pk = peaks.get(off + k).copied().unwrap_or(false);
                site_margins(site, o, opts.carbon_price, if pk { cp } else { 0.0 })
            })
            .collect();
        schedules.push(dp(site, &margins, opts.dp_limits)?);
    }
    let mut states: Vec<Vec<bool>> = fleet
        .sites
        .iter()
        .map(|s| vec![true; s.units.len()])
        .collect();
    let mut ledger = Ledger::default();
    let mut rows = Vec::with_capacity(scored.len());
    for (k, obs) in scored.iter().enumerate() {
        let peak = peaks.get(off + k).copied().unwrap_or(false);
        let (mut profit, mut objective) = (0.0, 0.0);
        let mut pairs = Vec::with_capacity(fleet.sites.len());
        for ((site, sched), prev) in fleet.sites.iter().zip(&schedules).zip(states.iter_mut()) {
            let lv = &sched.levels[k];
            let l = account_site(site, obs, prev, lv, opts.carbon_price, peak);
            profit += l.profit_usd();
            objective += l.objective_usd();
            ledger.add(&l);
            for (p, &x) in prev.iter_mut().zip(lv) {
                *p = x > 0.0;
            }
            pairs.push((site, lv.as_slice()));
        }
        let (asic_mw, gpu_mw) = interval_out(&pairs);
        rows.push(IntervalOut {
            asic_mw,
            gpu_mw,
            profit_usd: profit,
            objective_usd: objective,
        });
    }
    Ok(RunResult {
        name: "optimum".to_owned(),
        ledger,
        rows,
        overrides: 0,
    })
}

/// One line of the summary.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    /// `optimum`, or the policy name.
    pub name: String,
    /// `policy` (the selected one), `optimum`, `baseline` or `alternative`.
    pub role: String,
    /// Cash profit: revenue - energy - 4CP - switching, $.
    pub profit_usd: f64,
    /// What is maximised: profit - carbon cost at the carbon price, $.
    pub objective_usd: f64,
    /// Revenue, $.
    pub revenue_usd: f64,
    /// Energy cost, $.
    pub energy_cost_usd: f64,
    /// Energy cost as a percentage of always-on's.
    pub energy_cost_vs_always_on_pct: Option<f64>,
    /// Switching costs, $.
    pub switching_cost_usd: f64,
    /// 4CP charges, $.
    pub four_cp_cost_usd: f64,
    /// Carbon cost at the carbon price, $.
    pub carbon_cost_usd: f64,
    /// Facility energy, MWh.
    pub mwh: f64,
    /// ASIC energy as a percentage of full power all the time.
    pub uptime_pct: f64,
    /// Unit curtailments (on -> off).
    pub curtailments: u64,
    /// Emissions, t CO2eq (None without a carbon file).
    pub carbon_t: Option<f64>,
    /// Objective as a percentage of the optimum's (None if the optimum is not positive).
    pub pct_of_optimum: Option<f64>,
    /// Decisions corrected by the runner.
    pub overrides: u64,
}

/// The backtest report.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// The selected policy.
    pub policy: String,
    /// Price column.
    pub zone: String,
    /// First scored interval start.
    pub from: String,
    /// Last scored interval start.
    pub to: String,
    /// Scored intervals.
    pub intervals: usize,
    /// Interval length, hours.
    pub interval_hours: f64,
    /// Warm-up intervals fed as history.
    pub warmup_intervals: usize,
    /// Intervals with forward-filled prices.
    pub filled_intervals: usize,
    /// Intervals skipped for missing prices.
    pub skipped_intervals: usize,
    /// Intervals priced from the real-time file.
    pub rt_intervals: usize,
    /// 4CP peaks in the scored window.
    pub four_cp_peaks: usize,
    /// Carbon price, $/t.
    pub carbon_price_usd_per_t: f64,
    /// Whether Q-learning beat the rule-based policy on this trace.
    pub qlearn_beats_rule: bool,
    /// Wall-clock seconds of the whole backtest.
    pub elapsed_s: f64,
    /// Optimum, then the policies and baselines.
    pub results: Vec<Summary>,
}

/// A finished backtest: the report and every run's rows (optimum first).
#[derive(Debug, Clone)]
pub struct Backtest {
    /// The summary.
    pub report: Report,
    /// The runs, in the order of `report.results`.
    pub runs: Vec<RunResult>,
}

/// Runs the optimum and every policy ([`PolicyKind::ALL`]); `selected` is reported as the policy.
/// `progress(name, done, total)` reports progress.
pub fn backtest(
    trace: &Trace,
    fleet: &FleetModel,
    selected: PolicyKind,
    opts: &RunOptions,
    progress: &mut dyn FnMut(&str, usize, usize),
) -> Result<Backtest, EconError> {
    let started = std::time::Instant::now();
    let peaks = four_cp_peaks(trace);
    let total = trace.obs.len() - trace.scored_from;
    progress("optimum", 0, total);
    let mut runs = vec![run_optimum(trace, fleet, opts, &peaks)?];
    progress("optimum", total, total);
    let mut kinds = vec![selected];
    kinds.extend(PolicyKind::ALL.iter().copied().filter(|&k| k != selected));
    for kind in &kinds {
        let mut p = kind.build();
        let name = kind.name();
        runs.push(run_policy(
            trace,
            fleet,
            p.as_mut(),
            opts,
            &peaks,
            &mut |d, t| {
                progress(name, d, t);
            },
        ));
    }
    let opt = runs[0].ledger.objective_usd();
    let always_on_energy = runs
        .iter()
        .find(|r| r.name == PolicyKind::AlwaysOn.name())
        .map(|r| r.ledger.energy_cost_usd);
    let carbon_known = trace.scored().iter().any(|o| o.carbon_g_per_kwh.is_some());
    let results: Vec<Summary> = runs
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let l = &r.ledger;
            let role = if i == 0 {
                "optimum"
            } else if r.name == selected.name() {
                "policy"
            } else if PolicyKind::ALL
                .iter()
                .any(|k| k.name() == r.name && k.is_baseline())
            {
                "baseline"
            } else {
                "alternative"
            };
            Summary {
                name: r.name.clone(),
                role: role.to_owned(),
                profit_usd: l.profit_usd(),
                objective_usd: l.objective_usd(),
                revenue_usd: l.revenue_usd,
                energy_cost_usd: l.energy_cost_usd,
                energy_cost_vs_always_on_pct: always_on_energy
                    .filter(|&a| a > 0.0)
                    .map(|a| 100.0 * l.energy_cost_usd / a),
                switching_cost_usd: l.switching_cost_usd,
                four_cp_cost_usd: l.four_cp_cost_usd,
                carbon_cost_usd: l.carbon_cost_usd,
                mwh: l.mwh,
                uptime_pct: if l.asic_full_mwh > 0.0 {
                    100.0 * l.asic_mwh / l.asic_full_mwh
                } else {
                    0.0
                },
                curtailments: l.curtailments,
                carbon_t: carbon_known.then_some(l.carbon_t),
                pct_of_optimum: (opt > 0.0).then(|| 100.0 * l.objective_usd() / opt),
                overrides: r.overrides,
            }
        })
        .collect();
    let objective_of = |name: &str| {
        results
            .iter()
            .find(|s| s.name == name)
            .map_or(f64::NEG_INFINITY, |s| s.objective_usd)
    };
    let scored = trace.scored();
    let report = Report {
        policy: selected.name().to_owned(),
        zone: trace.zone.clone(),
        from: scored.first().map(|o| fmt_ts(o.ts)).unwrap_or_default(),
        to: scored.last().map(|o| fmt_ts(o.ts)).unwrap_or_default(),
        intervals: scored.len(),
        interval_hours: trace.dt_h,
        warmup_intervals: trace.scored_from,
        filled_intervals: trace.filled,
        skipped_intervals: trace.skipped,
        rt_intervals: trace.rt_intervals,
        four_cp_peaks: peaks[trace.scored_from..].iter().filter(|&&p| p).count(),
        carbon_price_usd_per_t: opts.carbon_price,
        qlearn_beats_rule: objective_of("qlearn") > objective_of("rule"),
        elapsed_s: started.elapsed().as_secs_f64(),
        results,
    };
    Ok(Backtest { report, runs })
}

/// The per-interval CSV: market, the selected policy's allocation and profit, the optimum's,
/// and every run's cumulative profit.
pub fn rows_csv(trace: &Trace, bt: &Backtest) -> String {
    use std::fmt::Write as _;
    let mut s = String::from(
        "timestamp_utc,price_usd_per_mwh,hashprice_usd_per_ph_day,carbon_g_per_kwh,system_load_mw,price_filled",
    );
    let sel = bt
        .runs
        .iter()
        .position(|r| r.name == bt.report.policy)
        .unwrap_or(0);
    for r in [&bt.runs[sel], &bt.runs[0]] {
        let n = if std::ptr::eq(r, &bt.runs[0]) {
            "optimum"
        } else {
            "policy"
        };
        let _ = write!(s, ",{n}_asic_mw,{n}_gpu_mw,{n}_profit_usd");
    }
    for r in &bt.runs {
        let _ = write!(s, ",{}_cum_profit_usd", r.name.replace('-', "_"));
    }
    s.push('\n');
    let mut cum = vec![0.0; bt.runs.len()];
    for (k, o) in trace.scored().iter().enumerate() {
        let opt = |v: Option<f64>| v.map(|x| format!("{x}")).unwrap_or_default();
        let _ = write!(
            s,
            "{},{},{:.4},{},{},{}",
            fmt_ts(o.ts),
            o.price,
            o.hashprice,
            opt(o.carbon_g_per_kwh),
            opt(o.system_load_mw),
            o.filled
        );
        for r in [&bt.runs[sel], &bt.runs[0]] {
            let row = r.rows.get(k).copied().unwrap_or_default();
            let _ = write!(
                s,
                ",{:.4},{:.4},{:.2}",
                row.asic_mw, row.gpu_mw, row.profit_usd
            );
        }
        for (c, r) in cum.iter_mut().zip(&bt.runs) {
            *c += r.rows.get(k).map_or(0.0, |x| x.profit_usd);
            let _ = write!(s, ",{c:.2}");
        }
        s.push('\n');
    }
    s
}
