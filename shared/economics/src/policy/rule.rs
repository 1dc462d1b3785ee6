//! The rule-based policy: break-even with switching-cost hysteresis, minimum on/off times,
//! eco mode and 4CP peak avoidance, then the optimal power split under the cap.
//!
//! For each unit, the margin at full power now ([`crate::econ::unit_margin_usd`]) includes energy
//! at the present price, carbon at the configured carbon price (eco mode) and, during a 4CP
//! alert ([`CpWatch`]), the 4CP charge per MW. Switching-cost awareness uses a persistence
//! forecast learned from the past: the mean length of the unit's runs of negative (positive)
//! margins over the last `persistence_days`. A running unit is curtailed when the present loss
//! times max(minimum off time, mean negative run) exceeds its switching cost; a curtailed unit
//! restarts when the present gain times max(minimum on time, mean positive run) exceeds it. The 4CP charge during an alert is weighted by
//! the chance that the alert is the month's peak ([`CpWatch::peak_probability`]): worth
//! curtailing ASICs for, usually not GPUs. With zero switching costs this is the exact
//! break-even rule; the band widens only as far as the configured costs justify. Nothing is
//! fitted to a price history, so it carries to other years and zones unchanged.

use super::{best_split, commitments, Context, CpParams, CpWatch, Policy};
use crate::econ::{site_margins, unit_margin_usd};
use crate::fleet::Unit;
use crate::trace::Observation;

/// Parameters of [`Rule`].
#[derive(Debug, Clone, Copy)]
pub struct RuleParams {
    /// 4CP alert.
    pub cp: CpParams,
    /// History used to estimate how long margins stay positive or negative, days.
    pub persistence_days: f64,
}

impl Default for RuleParams {
    fn default() -> Self {
        Self {
            cp: CpParams::default(),
            persistence_days: 30.0,
        }
    }
}

/// The rule-based policy.
#[derive(Debug, Clone)]
pub struct Rule {
    params: RuleParams,
    watch: CpWatch,
}

impl Rule {
    /// A rule policy with `params`.
    pub fn new(params: RuleParams) -> Self {
        Self {
            params,
            watch: CpWatch::new(params.cp),
        }
    }
}

impl Policy for Rule {
    fn name(&self) -> &'static str {
        "rule"
    }

    fn decide(&mut self, ctx: &Context<'_>) -> Vec<Vec<f64>> {
        let now = ctx.past.now();
        let alert = self
            .watch
            .update(ctx.past.all())
            .last()
            .copied()
            .unwrap_or(false);
        let p_peak = self.watch.peak_probability();
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let lookback = (self.params.persistence_days * 24.0 / now.dt_h.max(1e-6)) as usize;
        let all = ctx.past.all();
        let recent = &all[all.len().saturating_sub(lookback.max(1))..];
        ctx.fleet
            .sites
            .iter()
            .zip(ctx.states)
            .map(|(site, states)| {
                let cp = if alert {
                    site.cp_usd_per_mw_at_peak() * p_peak
                } else {
                    0.0
                };
                let margins = site_margins(site, now, ctx.carbon_price, cp);
                let wish: Vec<bool> = site
                    .units
                    .iter()
                    .zip(states)
                    .zip(&margins)
                    .map(|((u, s), &m)| {
                        let (pos, neg) = run_lengths(u, recent, ctx.carbon_price);
                        if s.on {
                            -m * f64::from(u.min_off).max(neg) <= u.switch_cost_usd
                        } else {
                            m * f64::from(u.min_on).max(pos) > u.switch_cost_usd
                        }
                    })
                    .collect();
                let committed = commitments(site, states, &wish);
                best_split(site, states, &committed, &margins)
            })
            .collect()
    }
}

/// Mean lengths, in intervals, of the runs of positive and of negative margins (energy and
/// carbon, no 4CP) of `u` over `recent`: a persistence forecast learned from the past.
fn run_lengths(u: &Unit, recent: &[Observation], carbon_price: f64) -> (f64, f64) {
    let mut runs = [(0u32, 0u32); 2];
    let mut prev: Option<bool> = None;
    for o in recent {
        let pos = unit_margin_usd(u, o, carbon_price, 0.0) > 0.0;
        if prev != Some(pos) {
            runs[usize::from(pos)].0 += 1;
        }
        runs[usize::from(pos)].1 += 1;
        prev = Some(pos);
    }
    let mean = |(k, len): (u32, u32)| {
        if k == 0 {
            1.0
        } else {
            f64::from(len) / f64::from(k)
        }
    };
    (mean(runs[1]), mean(runs[0]))
}
