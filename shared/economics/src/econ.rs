//! Per-interval economics: revenue, energy cost (PUE included), carbon cost in eco mode, 4CP
//! charges and switching costs, hence profit.
//!
//! Everything is linear in a unit's power level, which is what lets the hindsight optimum use
//! an LP for the power split and a DP for the commitments.

use serde::Serialize;

use crate::fleet::{SiteModel, Unit};
use crate::trace::Observation;

/// Margin of `unit` over one interval at full power, $: revenue minus energy cost, minus
/// carbon cost at `carbon_price` $/t, minus `cp_usd_per_mw` (the 4CP charge per MW when the
/// interval is, or is treated as, a coincident peak).
pub fn unit_margin_usd(
    unit: &Unit,
    obs: &Observation,
    carbon_price: f64,
    cp_usd_per_mw: f64,
) -> f64 {
    let mwh = unit.mw * obs.dt_h;
    let revenue = unit.revenue_usd_per_h(obs.hashprice) * obs.dt_h;
    let carbon_t = mwh * obs.carbon_g_per_kwh.unwrap_or(0.0) / 1000.0;
    revenue - obs.price * mwh - carbon_price * carbon_t - cp_usd_per_mw * unit.mw
}

/// [`unit_margin_usd`] for every unit of `site`.
pub fn site_margins(
    site: &SiteModel,
    obs: &Observation,
    carbon_price: f64,
    cp_usd_per_mw: f64,
) -> Vec<f64> {
    site.units
        .iter()
        .map(|u| unit_margin_usd(u, obs, carbon_price, cp_usd_per_mw))
        .collect()
}

/// Money, energy and carbon over some intervals.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Ledger {
    /// Mining and GPU rental revenue, $.
    pub revenue_usd: f64,
    /// Electricity bought, $ (facility energy x price).
    pub energy_cost_usd: f64,
    /// Carbon at the configured carbon price, $ (a shadow cost: not in `profit`).
    pub carbon_cost_usd: f64,
    /// 4CP transmission charges, $.
    pub four_cp_cost_usd: f64,
    /// Switching costs, $.
    pub switching_cost_usd: f64,
    /// Facility energy, MWh.
    pub mwh: f64,
    /// Facility energy of the ASICs, MWh.
    pub asic_mwh: f64,
    /// Facility energy the ASICs would have used at full power all the time, MWh.
    pub asic_full_mwh: f64,
    /// Emissions, t CO2eq (intervals without a carbon value count as zero).
    pub carbon_t: f64,
    /// Units switched off (curtailment events).
    pub curtailments: u64,
    /// Intervals with no carbon-intensity value.
    pub carbon_missing: u64,
}

impl Ledger {
    /// Cash profit: revenue - energy - 4CP - switching.
    pub fn profit_usd(&self) -> f64 {
        self.revenue_usd - self.energy_cost_usd - self.four_cp_cost_usd - self.switching_cost_usd
    }

    /// What the optimizer maximises: profit minus the carbon shadow cost.
    pub fn objective_usd(&self) -> f64 {
        self.profit_usd() - self.carbon_cost_usd
    }

    /// Adds another ledger.
    pub fn add(&mut self, o: &Ledger) {
        self.revenue_usd += o.revenue_usd;
        self.energy_cost_usd += o.energy_cost_usd;
        self.carbon_cost_usd += o.carbon_cost_usd;
        self.four_cp_cost_usd += o.four_cp_cost_usd;
        self.switching_cost_usd += o.switching_cost_usd;
        self.mwh += o.mwh;
        self.asic_mwh += o.asic_mwh;
        self.asic_full_mwh += o.asic_full_mwh;
        self.carbon_t += o.carbon_t;
        self.curtailments += o.curtailments;
        self.carbon_missing += o.carbon_missing;
    }
}

/// Accounts one interval of one site: units at `levels` (0 = off), after being on/off as in
/// `prev_on`; `cp_peak` says whether the interval is a 4CP coincident peak.
pub fn account_site(
    site: &SiteModel,
    obs: &Observation,
    prev_on: &[bool],
    levels: &[f64],
    carbon_price: f64,
    cp_peak: bool,
) -> Ledger {
    let ci = obs.carbon_g_per_kwh;
    let mut l = Ledger {
        carbon_missing: u64::from(ci.is_none()),
        ..Ledger::default()
    };
    let cp_per_mw = if cp_peak {
        site.cp_usd_per_mw_at_peak()
    } else {
        0.0
    };
    let add_load = |l: &mut Ledger, mw: f64, revenue_per_h: f64| {
        let mwh = mw * obs.dt_h;
        let t = mwh * ci.unwrap_or(0.0) / 1000.0;
        l.revenue_usd += revenue_per_h * obs.dt_h;
        l.energy_cost_usd += obs.price * mwh;
        l.mwh += mwh;
        l.carbon_t += t;
        l.carbon_cost_usd += carbon_price * t;
        l.four_cp_cost_usd += cp_per_mw * mw;
    };
    add_load(&mut l, site.fixed_mw, site.fixed_usd_per_h);
    for (i, u) in site.units.iter().enumerate() {
        let x = levels.get(i).copied().unwrap_or(0.0);
        let was_on = prev_on.get(i).copied().unwrap_or(true);
        let on = x > 0.0;
        if on != was_on {
            l.switching_cost_usd += u.switch_cost_usd;
            l.curtailments += u64::from(was_on);
        }
        add_load(&mut l, x * u.mw, x * u.revenue_usd_per_h(obs.hashprice));
        if u.is_asic() {
            l.asic_mwh += x * u.mw * obs.dt_h;
            l.asic_full_mwh += u.mw * obs.dt_h;
        }
    }
    l
}
