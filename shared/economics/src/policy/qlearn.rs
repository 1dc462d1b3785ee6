//! A tabular Q-learning scheduler (a policy option; see docs/backtest.md for whether it beats
//! the rule-based policy).
//!
//! Per unit, the state is (price/break-even ratio bin, on/off, 4CP alert) and the action is
//! on/off. The ratio is the unit's cost per facility MWh (price, plus carbon in eco mode) over
//! its revenue per facility MWh at full power, so one table shape fits any unit, year or zone.
//! Training uses only the past: every `retrain_hours` the policy replays the last `window_days`
//! of observations it has seen (prices do not depend on the fleet's actions, so the reward of
//! either action at any past interval is known) for a few epsilon-greedy epochs, with 4CP
//! charges at the realised peaks of completed months. Until `min_history_hours` of history
//! exist it keeps units on. The exploration is seeded, so runs are reproducible.

use super::cp::realised_peaks;
use super::{best_split, commitments, Context, CpParams, CpWatch, Policy, UnitState};
use crate::econ::unit_margin_usd;
use crate::fleet::Unit;
use crate::trace::Observation;

/// Parameters of [`QLearn`].
#[derive(Debug, Clone, Copy)]
pub struct QLearnParams {
    /// Learning rate.
    pub alpha: f64,
    /// Discount per interval.
    pub gamma: f64,
    /// Exploration rate while training.
    pub epsilon: f64,
    /// Passes over the window per retraining.
    pub epochs: u32,
    /// History replayed per retraining, days.
    pub window_days: f64,
    /// Retraining period, hours.
    pub retrain_hours: f64,
    /// History needed before the learned table is used, hours.
    pub min_history_hours: f64,
    /// Seed of the exploration.
    pub seed: u64,
    /// 4CP alert (a state feature).
    pub cp: CpParams,
}

impl Default for QLearnParams {
    fn default() -> Self {
        Self {
            alpha: 0.1,
            // A short horizon (about two intervals): with 0.9 or more the two actions' values
            // differ by less than the noise of their bootstrapped futures and the policy flaps
            // (measured on 2023: 92% of optimum at 0.9, 57% at 0.97; 98-99% from 0.3 to 0.7).
            gamma: 0.5,
            epsilon: 0.1,
            epochs: 4,
            window_days: 60.0,
            retrain_hours: 24.0,
            min_history_hours: 72.0,
            seed: 0x5eed,
            cp: CpParams::default(),
        }
    }
}

/// Upper edges of the ratio bins (cost over revenue per MWh); a last bin takes the rest.
const RATIO_EDGES: [f64; 15] = [
    0.0, 0.25, 0.5, 0.7, 0.8, 0.9, 0.95, 1.0, 1.05, 1.1, 1.25, 1.5, 2.0, 3.0, 5.0,
];
const BINS: usize = RATIO_EDGES.len() + 1;
const STATES: usize = BINS * 2 * 2;

#[derive(Debug, Clone)]
struct Table {
    q: Vec<[f64; 2]>,
    visits: Vec<u32>,
}

impl Table {
    fn new() -> Self {
        Self {
            q: vec![[0.0; 2]; STATES],
            visits: vec![0; STATES],
        }
    }
}

fn state(bin: usize, on: bool, alert: bool) -> usize {
    (bin * 2 + usize::from(on)) * 2 + usize::from(alert)
}

fn ratio_bin(unit: &Unit, obs: &Observation, carbon_price: f64) -> usize {
    let revenue = unit.revenue_usd_per_h(obs.hashprice) / unit.mw.max(f64::MIN_POSITIVE);
    let cost = obs.price + carbon_price * obs.carbon_g_per_kwh.unwrap_or(0.0) / 1000.0;
    let ratio = if revenue > 0.0 {
        cost / revenue
    } else {
        f64::INFINITY
    };
    if ratio.is_nan() {
        return BINS - 1;
    }
    RATIO_EDGES
        .iter()
        .position(|&e| ratio < e)
        .unwrap_or(BINS - 1)
}

/// SplitMix64: a tiny deterministic generator for exploration.
#[derive(Debug, Clone)]
struct Rng(u64);

impl Rng {
    fn next_f64(&mut self) -> f64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        #[allow(clippy::cast_precision_loss)]
        let f = (z >> 11) as f64 / (1u64 << 53) as f64;
        f
    }
}

/// The Q-learning policy.
#[derive(Debug, Clone)]
pub struct QLearn {
    params: QLearnParams,
    watch: CpWatch,
    tables: Vec<Vec<Table>>,
    trained_at: Option<usize>,
    rng: Rng,
}

impl QLearn {
    /// A fresh, untrained policy.
    pub fn new(params: QLearnParams) -> Self {
        Self {
            params,
            watch: CpWatch::new(params.cp),
            tables: Vec::new(),
            trained_at: None,
            rng: Rng(params.seed),
        }
    }

    fn train(&mut self, ctx: &Context<'_>, alerts: &[bool]) {
        let all = ctx.past.all();
        let dt = ctx.past.now().dt_h.max(1e-6);
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let window = ((self.params.window_days * 24.0 / dt) as usize).max(2);
        let w0 = all.len().saturating_sub(window);
        let obs = &all[w0..];
        let peaks = realised_peaks(all, false);
        let peaks = &peaks[w0..];
        let alerts = &alerts[w0..];
        let p = self.params;
        for (site, tables) in ctx.fleet.sites.iter().zip(self.tables.iter_mut()) {
            let cp = site.cp_usd_per_mw_at_peak();
            for (unit, table) in site.units.iter().zip(tables.iter_mut()) {
                let mw = unit.mw.max(f64::MIN_POSITIVE);
                let bins: Vec<usize> = obs
                    .iter()
                    .map(|o| ratio_bin(unit, o, ctx.carbon_price))
                    .collect();
                let reward_on: Vec<f64> = obs
                    .iter()
                    .zip(peaks)
                    .map(|(o, &pk)| {
                        unit_margin_usd(unit, o, ctx.carbon_price, if pk { cp } else { 0.0 }) / mw
                    })
                    .collect();
                let switch = unit.switch_cost_usd / mw;
                for _ in 0..p.epochs {
                    let mut st = UnitState::start();
                    for k in 0..obs.len() {
                        let s = state(bins[k], st.on, alerts[k]);
                        let a = if !st.can_switch(unit.min_on, unit.min_off) {
                            st.on
                        } else if self.rng.next_f64() < p.epsilon {
                            self.rng.next_f64() < 0.5
                        } else {
                            greedy(&table.q[s], st.on)
                        };
                        let mut r = if a { reward_on[k] } else { 0.0 };
                        if a != st.on {
                            r -= switch;
                        }
                        st = st.after(if a { 1.0 } else { 0.0 });
                        let target = if k + 1 < obs.len() {
                            let s2 = state(bins[k + 1], a, alerts[k + 1]);
                            r + p.gamma * table.q[s2][0].max(table.q[s2][1])
                        } else {
                            r
                        };
                        let q = &mut table.q[s][usize::from(a)];
                        *q += p.alpha * (target - *q);
                        table.visits[s] = table.visits[s].saturating_add(1);
                    }
                }
            }
        }
    }
}

fn greedy(q: &[f64; 2], current: bool) -> bool {
    if q[1] > q[0] {
        true
    } else if q[0] > q[1] {
        false
    } else {
        current
    }
}

impl Policy for QLearn {
    fn name(&self) -> &'static str {
        "qlearn"
    }

    fn decide(&mut self, ctx: &Context<'_>) -> Vec<Vec<f64>> {
        let now = ctx.past.now();
        if self.tables.len() != ctx.fleet.sites.len() {
            self.tables = ctx
                .fleet
                .sites
                .iter()
                .map(|s| vec![Table::new(); s.units.len()])
                .collect();
        }
        let alerts = self.watch.update(ctx.past.all()).to_vec();
        let alert = alerts.last().copied().unwrap_or(false);
        let dt = now.dt_h.max(1e-6);
        let len = ctx.past.len();
        #[allow(clippy::cast_precision_loss)]
        let history_h = len as f64 * dt;
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let every = ((self.params.retrain_hours / dt) as usize).max(1);
        let due = match self.trained_at {
            None => history_h >= self.params.min_history_hours,
            Some(at) => len >= at + every,
        };
        if due {
            self.train(ctx, &alerts);
            self.trained_at = Some(len);
        }
        let trained = self.trained_at.is_some();
        ctx.fleet
            .sites
            .iter()
            .zip(ctx.states)
            .zip(&self.tables)
            .map(|((site, states), tables)| {
                let cp = if alert {
                    site.cp_usd_per_mw_at_peak()
                } else {
                    0.0
                };
                let margins: Vec<f64> = site
                    .units
                    .iter()
                    .map(|u| unit_margin_usd(u, now, ctx.carbon_price, cp))
                    .collect();
                let wish: Vec<bool> = site
                    .units
                    .iter()
                    .zip(states)
                    .zip(tables)
                    .map(|((u, st), table)| {
                        if !trained {
                            return true;
                        }
                        let s = state(ratio_bin(u, now, ctx.carbon_price), st.on, alert);
                        if table.visits[s] == 0 {
                            st.on
                        } else {
                            greedy(&table.q[s], st.on)
                        }
                    })
                    .collect();
                let committed = commitments(site, states, &wish);
                best_split(site, states, &committed, &margins)
            })
            .collect()
    }
}
