//! The optimizer's decisions, pure: no I/O, no clock. The policy is the hcp-economics rule
//! policy (the code `hcp backtest` scores), fed only the past; this module adds what a live
//! site needs on top of it: 4CP warnings, demand-response caps, the decision's wire form, and
//! confirmation from measured power.

use hcp_economics::econ::{account_site, site_margins};
use hcp_economics::fleet::{FleetModel, SiteModel, UnitKind};
use hcp_economics::policy::{Context, Past, Policy, Rule, RuleParams, UnitState};
use hcp_economics::trace::Observation;
use hcp_events::payload::AsicTarget;
use serde::{Deserialize, Serialize};

/// Tolerance for comparing levels and megawatts.
const EPS: f64 = 1e-6;

/// Series names of `market.price_observed` the optimizer reads.
pub mod series {
    /// Hashprice, `usd_per_th_day` (or `usd_per_ph_day`).
    pub const HASHPRICE: &str = "btc.hashprice";
    /// Grid carbon intensity, `gco2_per_kwh`.
    pub const CARBON: &str = "grid.carbon";
    /// System load, `mw`.
    pub const LOAD: &str = "grid.load";
}

/// The latest market values known when an interval opens.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct LatestMarket {
    /// Hashprice, $/PH/day.
    pub hashprice_usd_per_ph_day: Option<f64>,
    /// Carbon intensity, g/kWh.
    pub carbon_g_per_kwh: Option<f64>,
    /// System load, MW.
    pub system_load_mw: Option<f64>,
}

/// Hashprice in $/PH/day from a market value and its unit; `None` for an unknown unit.
pub fn hashprice_per_ph_day(value: f64, unit: &str) -> Option<f64> {
    match unit {
        "usd_per_th_day" => Some(value * 1000.0),
        "usd_per_ph_day" => Some(value),
        _ => None,
    }
}

/// The observation of the interval starting at `ts` (Unix seconds) with energy `price`:
/// `None` until a hashprice is known (the policy cannot value mining without it).
pub fn build_observation(
    ts: i64,
    dt_h: f64,
    price: f64,
    latest: &LatestMarket,
) -> Option<Observation> {
    let hashprice = latest.hashprice_usd_per_ph_day?;
    Some(Observation {
        ts,
        dt_h,
        price,
        hashprice,
        btc_usd: 0.0,
        difficulty: 0.0,
        carbon_g_per_kwh: latest.carbon_g_per_kwh,
        system_load_mw: latest.system_load_mw,
        filled: false,
    })
}

/// A unit's commitment state as stored (mirror of [`UnitState`]).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct StoredState {
    /// Committed.
    pub on: bool,
    /// Level in the last interval.
    pub level: f64,
    /// Intervals in the current on/off state.
    pub dwell: u32,
}

impl From<UnitState> for StoredState {
    fn from(s: UnitState) -> Self {
        Self {
            on: s.on,
            level: s.level,
            dwell: s.dwell,
        }
    }
}

impl From<StoredState> for UnitState {
    fn from(s: StoredState) -> Self {
        Self {
            on: s.on,
            level: s.level,
            dwell: s.dwell,
        }
    }
}

/// The states every site starts from (on, full power, free to switch), as the backtest does.
pub fn start_states(site: &SiteModel) -> Vec<UnitState> {
    vec![UnitState::start(); site.units.len()]
}

/// What overrides the policy for one site in one decision.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Overrides {
    /// A 4CP warning for this interval: the probability it is a coincident peak.
    pub peak_probability: Option<f64>,
    /// An active demand-response cap on site power, MW at the meter.
    pub dr_cap_mw: Option<f64>,
    /// Carbon price, $/t (0 outside eco mode).
    pub carbon_price: f64,
}

/// One site's decision for one interval.
#[derive(Debug, Clone, PartialEq)]
pub struct SiteDecision {
    /// Level per unit (0 = off).
    pub levels: Vec<f64>,
    /// Site power aimed at, MW at the meter (real-time GPUs included).
    pub target_mw: f64,
    /// ASIC part of it, MW at the meter.
    pub asic_target_mw: f64,
    /// Expected profit at the interval's prices, $/h.
    pub expected_profit_usd_per_h: f64,
    /// Whether batch/training GPU work may run.
    pub gpu_batch_allowed: bool,
    /// Why, in words.
    pub reason: String,
}

/// Runs the rule policy over `past` for every site of `fleet` (states before the interval):
/// the same call the backtest runner makes. Returns `levels[site][unit]`.
pub fn policy_levels(
    fleet: &FleetModel,
    past: &[Observation],
    states: &[Vec<UnitState>],
    carbon_price: f64,
) -> Option<Vec<Vec<f64>>> {
    let past = Past::new(past)?;
    let mut rule = Rule::new(RuleParams::default());
    let mut levels = rule.decide(&Context {
        past,
        fleet,
        states,
        carbon_price,
    });
    levels.resize(fleet.sites.len(), Vec::new());
    for (l, s) in levels.iter_mut().zip(&fleet.sites) {
        l.resize(s.units.len(), 1.0);
    }
    Some(levels)
}

/// Facility power of `levels`, MW at the meter, real-time GPUs included.
pub fn site_mw(site: &SiteModel, levels: &[f64]) -> f64 {
    site.fixed_mw
        + site
            .units
            .iter()
            .zip(levels)
            .map(|(u, x)| u.mw * x)
            .sum::<f64>()
}

/// ASIC facility power of `levels`, MW.
pub fn asic_mw(site: &SiteModel, levels: &[f64]) -> f64 {
    site.units
        .iter()
        .zip(levels)
        .filter(|(u, _)| u.is_asic())
        .map(|(u, x)| u.mw * x)
        .sum()
}

/// Lowers `levels` until site power is at most `cap_mw`, cheapest margin per MW first (a unit
/// goes down to its minimum level if that is enough, else off). Real-time GPUs are fixed load
/// and are never touched, so a cap below them is met as far as possible. Returns the MW shed.
pub fn shed_to_cap(site: &SiteModel, levels: &mut [f64], margins: &[f64], cap_mw: f64) -> f64 {
    let before = site_mw(site, levels);
    let mut need = before - cap_mw;
    if need <= EPS {
        return 0.0;
    }
    let mut order: Vec<usize> = (0..levels.len().min(site.units.len()))
        .filter(|&i| levels[i] > 0.0)
        .collect();
    order.sort_by(|&a, &b| {
        let ka = margins.get(a).copied().unwrap_or(0.0) / site.units[a].mw.max(f64::MIN_POSITIVE);
        let kb = margins.get(b).copied().unwrap_or(0.0) / site.units[b].mw.max(f64::MIN_POSITIVE);
        ka.total_cmp(&kb)
    });
    for i in order {
        if need <= EPS {
            break;
        }
        let u = &site.units[i];
        let x = levels[i];
        let partial = (x - u.min_level).max(0.0) * u.mw;
        if partial + EPS >= need && u.mw > 0.0 {
            levels[i] = x - need / u.mw;
            need = 0.0;
        } else {
            levels[i] = 0.0;
            need -= x * u.mw;
        }
    }
    before - site_mw(site, levels)
}

/// Turns off the units a 4CP charge (weighted by the warning's probability) makes unprofitable.
/// Returns how many were turned off.
pub fn avoid_peak(levels: &mut [f64], margins_with_cp: &[f64]) -> usize {
    let mut n = 0;
    for (x, &m) in levels.iter_mut().zip(margins_with_cp) {
        if *x > 0.0 && m < 0.0 {
            *x = 0.0;
            n += 1;
        }
    }
    n
}

/// Finishes one site's decision: applies the 4CP warning and the demand-response cap to the
/// policy's `levels` and describes the result.
pub fn finish_site(
    site: &SiteModel,
    obs: &Observation,
    states: &[UnitState],
    mut levels: Vec<f64>,
    ov: &Overrides,
) -> SiteDecision {
    let margins = site_margins(site, obs, ov.carbon_price, 0.0);
    let mut why = vec![format!(
        "price ${:.2}/MWh, hashprice ${:.2}/PH/day",
        obs.price, obs.hashprice
    )];
    if ov.carbon_price > 0.0 {
        why.push(format!(
            "eco mode at ${:.0}/t, carbon {} g/kWh",
            ov.carbon_price,
            obs.carbon_g_per_kwh
                .map_or_else(|| "unknown".to_owned(), |c| format!("{c:.0}"))
        ));
    }
    if let Some(p) = ov.peak_probability {
        let cp = site.cp_usd_per_mw_at_peak() * p.clamp(0.0, 1.0);
        let with_cp = site_margins(site, obs, ov.carbon_price, cp);
        let n = avoid_peak(&mut levels, &with_cp);
        why.push(format!("4CP warning (p = {p:.2}): {n} unit(s) curtailed"));
    }
    if let Some(cap) = ov.dr_cap_mw {
        let shed = shed_to_cap(site, &mut levels, &margins, cap);
        why.push(format!(
            "demand response: cap {cap:.3} MW, {shed:.3} MW shed cheapest first"
        ));
    }
    let curtailed: Vec<&str> = site
        .units
        .iter()
        .zip(&levels)
        .filter(|(_, &x)| x <= 0.0)
        .map(|(u, _)| u.name.as_str())
        .collect();
    if curtailed.is_empty() {
        why.push("all units running".to_owned());
    } else {
        why.push(format!("curtailed: {}", curtailed.join(", ")));
    }
    let prev_on: Vec<bool> = states.iter().map(|s| s.on).collect();
    let ledger = account_site(site, obs, &prev_on, &levels, ov.carbon_price, false);
    let gpu_batch_allowed = site
        .units
        .iter()
        .zip(&levels)
        .filter(|(u, _)| matches!(u.kind, UnitKind::GpuBatch { .. }))
        .all(|(_, &x)| x > 0.0);
    SiteDecision {
        target_mw: site_mw(site, &levels),
        asic_target_mw: asic_mw(site, &levels),
        expected_profit_usd_per_h: ledger.objective_usd() / obs.dt_h.max(1e-9),
        gpu_batch_allowed,
        reason: why.join("; "),
        levels,
    }
}

/// The model of an ASIC unit named `<site>/<model>`.
fn model_of(name: &str) -> &str {
    name.split_once('/').map_or(name, |(_, m)| m)
}

/// ASIC targets per model: the power-weighted mean level of the site's groups of that model.
pub fn asic_targets(site: &SiteModel, levels: &[f64]) -> Vec<AsicTarget> {
    let mut out: Vec<(String, f64, f64)> = Vec::new();
    for (u, &x) in site.units.iter().zip(levels) {
        if !u.is_asic() {
            continue;
        }
        let m = model_of(&u.name);
        match out.iter_mut().find(|(n, _, _)| n == m) {
            Some((_, mw, w)) => {
                *mw += u.mw;
                *w += u.mw * x;
            }
            None => out.push((m.to_owned(), u.mw, u.mw * x)),
        }
    }
    out.into_iter()
        .map(|(model, mw, w)| AsicTarget {
            model,
            fraction: if mw > 0.0 {
                (w / mw).clamp(0.0, 1.0)
            } else {
                0.0
            },
        })
        .collect()
}

/// Whether a decision must be emitted: its levels changed, it answers a new grid event, or the
/// heartbeat is due.
pub fn should_emit(
    previous: Option<&[f64]>,
    levels: &[f64],
    dr_changed: bool,
    intervals_since_emit: u32,
    heartbeat_intervals: u32,
) -> bool {
    let changed = previous.is_none_or(|p| {
        p.len() != levels.len() || p.iter().zip(levels).any(|(a, b)| (a - b).abs() > EPS)
    });
    changed
        || dr_changed
        || (heartbeat_intervals > 0 && intervals_since_emit >= heartbeat_intervals)
}

/// A decision waiting for telemetry.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Pending {
    /// ASIC power aimed at, MW at the meter.
    pub asic_target_mw: f64,
    /// For demand response: measured site power before it and the MW to shed.
    pub dr: Option<(f64, f64)>,
}

/// Whether measured power (MW at the meter) confirms `p`: for demand response, a drop of at
/// least the requested MW from the baseline; otherwise ASIC power within `tolerance_mw` of
/// the target.
pub fn confirms(p: &Pending, measured_mw: f64, tolerance_mw: f64) -> bool {
    match p.dr {
        Some((baseline, curtail)) => baseline - measured_mw + EPS >= curtail,
        None => (measured_mw - p.asic_target_mw).abs() <= tolerance_mw + EPS,
    }
}

/// Measured site power, MW at the meter: the racks' latest ASIC wall power times PUE.
pub fn measured_mw(rack_power_w: &[f64], pue: f64) -> f64 {
    rack_power_w.iter().sum::<f64>() / 1e6 * pue
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use hcp_economics::fleet::FleetConfig;

    const FLEET: &str = r#"
[[site]]
name = "t1"
power_cap_mw = 30.0
pue = 1.0
four_cp_usd_per_mw_year = 50000.0
[[site.asic]]
model = "S21"
count = 2000
[[site.asic]]
model = "S21 XP"
count = 2000
[site.gpu]
count = 1000
power_kw = 1.0
rental_usd_per_gpu_hour = 2.0
realtime_share = 0.3
"#;

    fn fleet() -> FleetModel {
        FleetConfig::from_toml("t", FLEET)
            .unwrap()
            .model("t", 1.0)
            .unwrap()
    }

    fn obs(price: f64) -> Observation {
        build_observation(
            1_700_000_000,
            1.0,
            price,
            &LatestMarket {
                hashprice_usd_per_ph_day: Some(50.0),
                ..LatestMarket::default()
            },
        )
        .unwrap()
    }

    fn decide(price: f64, ov: Overrides) -> SiteDecision {
        let f = fleet();
        let past = [obs(price)];
        let states = vec![start_states(&f.sites[0])];
        let levels = policy_levels(&f, &past, &states, 0.0).unwrap();
        finish_site(&f.sites[0], &past[0], &states[0], levels[0].clone(), &ov)
    }

    #[test]
    fn hashprice_in_th_per_day_is_converted_and_unknown_units_are_refused() {
        assert_eq!(hashprice_per_ph_day(0.05, "usd_per_th_day"), Some(50.0));
        assert_eq!(hashprice_per_ph_day(50.0, "usd_per_ph_day"), Some(50.0));
        assert_eq!(hashprice_per_ph_day(50.0, "btc"), None);
        assert!(build_observation(0, 1.0, 20.0, &LatestMarket::default()).is_none());
    }

    #[test]
    fn a_scarcity_price_curtails_every_asic_and_pauses_batch_but_keeps_realtime_gpus() {
        let d = decide(3000.0, Overrides::default());
        let f = fleet();
        assert!(d.levels.iter().all(|&x| x == 0.0), "{:?}", d.levels);
        assert!(!d.gpu_batch_allowed);
        assert!((d.target_mw - f.sites[0].fixed_mw).abs() < 1e-9);
        assert!(d.target_mw > 0.0, "real-time inference keeps its power");
        let t = asic_targets(&f.sites[0], &d.levels);
        assert_eq!(t.len(), 2);
        assert!(t.iter().all(|t| t.fraction == 0.0));
    }

    #[test]
    fn a_low_price_runs_everything_at_full_power() {
        let d = decide(20.0, Overrides::default());
        assert!(d.levels.iter().all(|&x| x == 1.0), "{:?}", d.levels);
        assert!(d.gpu_batch_allowed);
        assert!(d.expected_profit_usd_per_h > 0.0);
        // 7 MW of S21 + 7.29 MW of S21 XP + 1 MW of GPUs.
        assert!((d.target_mw - 15.29).abs() < 1e-9, "{}", d.target_mw);
        assert!((d.asic_target_mw - 14.29).abs() < 1e-9);
    }

    #[test]
    fn demand_response_sheds_the_cheapest_margin_first_and_never_realtime_gpus() {
        // At $100/MWh the S21 (17.5 J/TH) earns least per MW, then the S21 XP, then GPUs.
        let d = decide(
            100.0,
            Overrides {
                dr_cap_mw: Some(15.29 - 5.0),
                ..Overrides::default()
            },
        );
        assert_eq!(d.levels, vec![0.0, 1.0, 1.0], "S21 goes first");
        assert!(d.reason.contains("demand response"), "{}", d.reason);
        // An impossible cap sheds every switchable unit and keeps real-time inference.
        let d = decide(
            100.0,
            Overrides {
                dr_cap_mw: Some(0.0),
                ..Overrides::default()
            },
        );
        assert_eq!(d.levels, vec![0.0, 0.0, 0.0]);
        assert!((d.target_mw - 0.3).abs() < 1e-9);
    }

    #[test]
    fn shedding_uses_a_power_target_when_the_minimum_level_allows_it() {
        let mut f = fleet();
        f.sites[0].units[0].min_level = 0.5;
        let site = &f.sites[0];
        let mut levels = vec![1.0, 1.0, 1.0];
        let margins = site_margins(site, &obs(100.0), 0.0, 0.0);
        let shed = shed_to_cap(site, &mut levels, &margins, 15.29 - 2.0);
        assert!((shed - 2.0).abs() < 1e-9);
        assert!((levels[0] - (1.0 - 2.0 / 7.0)).abs() < 1e-9, "{levels:?}");
        assert_eq!(&levels[1..], &[1.0, 1.0]);
    }

    #[test]
    fn a_peak_warning_curtails_the_units_its_charge_makes_unprofitable() {
        let d = decide(
            60.0,
            Overrides {
                peak_probability: Some(1.0),
                ..Overrides::default()
            },
        );
        // 50,000 $/MW-year / 4 = $12,500 per MW in the peak interval: nothing earns that.
        assert_eq!(d.levels, vec![0.0, 0.0, 0.0]);
        assert!(d.reason.contains("4CP"), "{}", d.reason);
        let d = decide(60.0, Overrides::default());
        assert_eq!(d.levels, vec![1.0, 1.0, 1.0]);
    }

    #[test]
    fn minimum_off_time_holds_a_curtailed_unit_off_although_the_price_fell() {
        let mut f = fleet();
        for u in &mut f.sites[0].units {
            u.min_off = 3;
        }
        let mut states = vec![start_states(&f.sites[0])];
        let mut past = Vec::new();
        let mut on = Vec::new();
        for price in [300.0, 20.0, 20.0, 20.0] {
            past.push(obs(price));
            let l = policy_levels(&f, &past, &states, 0.0).unwrap();
            on.push(l[0][0] > 0.0);
            for (s, &x) in states[0].iter_mut().zip(&l[0]) {
                *s = s.after(x);
            }
        }
        assert_eq!(on, vec![false, false, false, true]);
    }

    #[test]
    fn decisions_are_emitted_on_change_grid_events_and_heartbeats_only() {
        let a = [1.0, 0.0];
        assert!(should_emit(None, &a, false, 0, 12));
        assert!(!should_emit(Some(&a), &a, false, 3, 12));
        assert!(should_emit(Some(&a), &[1.0, 1.0], false, 3, 12));
        assert!(should_emit(Some(&a), &a, true, 3, 12));
        assert!(should_emit(Some(&a), &a, false, 12, 12));
        assert!(!should_emit(Some(&a), &a, false, 99, 0));
    }

    #[test]
    fn confirmation_needs_the_requested_drop_for_dr_and_the_target_otherwise() {
        let dr = Pending {
            asic_target_mw: 7.29,
            dr: Some((14.29, 5.0)),
        };
        assert!(!confirms(&dr, 12.0, 0.5));
        assert!(confirms(&dr, 9.29, 0.5));
        assert!(confirms(&dr, 7.3, 0.5));
        let normal = Pending {
            asic_target_mw: 7.29,
            dr: None,
        };
        assert!(confirms(&normal, 7.5, 0.5));
        assert!(!confirms(&normal, 14.29, 0.5));
        assert!((measured_mw(&[7e6, 7.29e6], 1.05) - 14.29 * 1.05).abs() < 1e-9);
    }
}
