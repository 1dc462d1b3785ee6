//! The baselines: always on, and a fixed break-even strike price (as Braiins' curtailment does).

use super::{commitments, revenue_per_mw, Context, Policy};
use crate::dispatch::fill_by_merit;
use crate::econ::unit_margin_usd;

/// Every unit on at full power (down to the cap, filled in order of revenue per MW).
#[derive(Debug, Clone, Copy, Default)]
pub struct AlwaysOn;

impl Policy for AlwaysOn {
    fn name(&self) -> &'static str {
        "always-on"
    }

    fn decide(&mut self, ctx: &Context<'_>) -> Vec<Vec<f64>> {
        let now = ctx.past.now();
        ctx.fleet
            .sites
            .iter()
            .map(|site| {
                let on = vec![true; site.units.len()];
                fill_by_merit(
                    &site.units,
                    &revenue_per_mw(site, now.hashprice),
                    &on,
                    site.available_mw(),
                )
            })
            .collect()
    }
}

/// Curtail an ASIC group whenever the price at the meter is above its break-even price
/// (hashprice / (J/TH x 0.024) / PUE) for the current hashprice; no hysteresis, no carbon, no
/// 4CP. GPUs always run.
#[derive(Debug, Clone, Copy, Default)]
pub struct Strike;

impl Policy for Strike {
    fn name(&self) -> &'static str {
        "strike"
    }

    fn decide(&mut self, ctx: &Context<'_>) -> Vec<Vec<f64>> {
        let now = ctx.past.now();
        ctx.fleet
            .sites
            .iter()
            .zip(ctx.states)
            .map(|(site, states)| {
                let wish: Vec<bool> = site
                    .units
                    .iter()
                    .map(|u| !u.is_asic() || unit_margin_usd(u, now, 0.0, 0.0) >= 0.0)
                    .collect();
                let committed = commitments(site, states, &wish);
                fill_by_merit(
                    &site.units,
                    &revenue_per_mw(site, now.hashprice),
                    &committed,
                    site.available_mw(),
                )
            })
            .collect()
    }
}
