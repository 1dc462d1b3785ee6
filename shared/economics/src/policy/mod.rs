//! Decision policies and the interface they share with the runner (and, later, the live
//! optimizer service).
//!
//! # No look-ahead, by construction
//!
//! A policy is called once per interval with a [`Context`] whose [`Past`] is a slice of the
//! observations up to and including the present one. The runner builds that slice by pushing
//! one observation at a time onto its own buffer; the trace itself is never handed to a policy,
//! so a future value is not merely forbidden, it is out of reach. The test
//! `policies_decide_the_same_when_the_future_is_poisoned` replaces every value after the present
//! with NaN or 1e12 and checks that no decision changes.
//!
//! A policy returns a power level per unit (0 = off). The runner then enforces the rules a
//! policy might break: a unit inside its minimum on/off time keeps its state, levels are clamped
//! to `[min_level, 1]`, and the site cap is restored by trimming the least valuable units.

mod baselines;
mod cp;
mod qlearn;
mod rule;

pub use baselines::{AlwaysOn, Strike};
pub use cp::{is_cp_month, realised_peaks, CpParams, CpWatch};
pub use qlearn::{QLearn, QLearnParams};
pub use rule::{Rule, RuleParams};

use crate::dispatch::{fill_by_merit, split};
use crate::fleet::{FleetModel, SiteModel};
use crate::trace::Observation;

/// Every observation up to and including the present interval.
#[derive(Debug, Clone, Copy)]
pub struct Past<'a> {
    obs: &'a [Observation],
    now: &'a Observation,
}

impl<'a> Past<'a> {
    /// A view of `obs`, whose last element is the present; `None` if empty.
    pub fn new(obs: &'a [Observation]) -> Option<Self> {
        obs.last().map(|now| Self { obs, now })
    }

    /// The present interval.
    pub fn now(&self) -> &'a Observation {
        self.now
    }

    /// All observations so far, oldest first, the present last.
    pub fn all(&self) -> &'a [Observation] {
        self.obs
    }

    /// Number of observations so far.
    pub fn len(&self) -> usize {
        self.obs.len()
    }

    /// Always false (a `Past` has a present).
    pub fn is_empty(&self) -> bool {
        false
    }
}

/// The commitment state of one unit.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct UnitState {
    /// Committed (running) or curtailed.
    pub on: bool,
    /// Power level in the last interval (0 when off).
    pub level: f64,
    /// Intervals spent in the current on/off state, the last one included.
    pub dwell: u32,
}

impl UnitState {
    /// The state every run starts from: on, full power, free to switch.
    pub fn start() -> Self {
        Self {
            on: true,
            level: 1.0,
            dwell: u32::MAX / 2,
        }
    }

    /// Whether the minimum on/off time allows a change now.
    pub fn can_switch(&self, min_on: u32, min_off: u32) -> bool {
        self.dwell >= if self.on { min_on } else { min_off }
    }

    /// The state after running at `level` for one interval.
    pub fn after(&self, level: f64) -> Self {
        let on = level > 0.0;
        Self {
            on,
            level,
            dwell: if on == self.on {
                self.dwell.saturating_add(1).min(u32::MAX / 2)
            } else {
                1
            },
        }
    }
}

/// What a policy sees when deciding.
#[derive(Debug, Clone, Copy)]
pub struct Context<'a> {
    /// The market so far.
    pub past: Past<'a>,
    /// The fleet.
    pub fleet: &'a FleetModel,
    /// `states[site][unit]` before this interval.
    pub states: &'a [Vec<UnitState>],
    /// Carbon price, $/t (eco mode when > 0).
    pub carbon_price: f64,
}

/// A decision policy.
pub trait Policy: std::fmt::Debug {
    /// Short name for reports.
    fn name(&self) -> &'static str;
    /// Levels for this interval: `levels[site][unit]`, 0 = off.
    fn decide(&mut self, ctx: &Context<'_>) -> Vec<Vec<f64>>;
}

/// The policies selectable from the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PolicyKind {
    /// [`Rule`].
    Rule,
    /// [`QLearn`].
    QLearn,
    /// [`AlwaysOn`].
    AlwaysOn,
    /// [`Strike`].
    Strike,
}

impl PolicyKind {
    /// All kinds, the default first.
    pub const ALL: [PolicyKind; 4] = [
        PolicyKind::Rule,
        PolicyKind::QLearn,
        PolicyKind::AlwaysOn,
        PolicyKind::Strike,
    ];

    /// The report name.
    pub fn name(self) -> &'static str {
        match self {
            PolicyKind::Rule => "rule",
            PolicyKind::QLearn => "qlearn",
            PolicyKind::AlwaysOn => "always-on",
            PolicyKind::Strike => "strike",
        }
    }

    /// Whether this is a baseline rather than a candidate policy.
    pub fn is_baseline(self) -> bool {
        matches!(self, PolicyKind::AlwaysOn | PolicyKind::Strike)
    }

    /// A fresh policy with default parameters.
    pub fn build(self) -> Box<dyn Policy> {
        match self {
            PolicyKind::Rule => Box::new(Rule::new(RuleParams::default())),
            PolicyKind::QLearn => Box::new(QLearn::new(QLearnParams::default())),
            PolicyKind::AlwaysOn => Box::new(AlwaysOn),
            PolicyKind::Strike => Box::new(Strike),
        }
    }
}

/// Revenue per facility MW of each unit at hashprice `hashprice` (the baselines' merit order).
pub fn revenue_per_mw(site: &SiteModel, hashprice: f64) -> Vec<f64> {
    site.units
        .iter()
        .map(|u| u.revenue_usd_per_h(hashprice) / u.mw.max(f64::MIN_POSITIVE))
        .collect()
}

/// Applies minimum on/off times to the wished commitments.
pub fn commitments(site: &SiteModel, states: &[UnitState], wish: &[bool]) -> Vec<bool> {
    site.units
        .iter()
        .zip(states)
        .zip(wish)
        .map(|((u, s), &w)| {
            if s.can_switch(u.min_on, u.min_off) {
                w
            } else {
                s.on
            }
        })
        .collect()
}

/// The best split for the committed units at these margins; if their minimum levels do not
/// fit under the cap, the switchable units with the lowest margin per MW are dropped first.
pub fn best_split(
    site: &SiteModel,
    states: &[UnitState],
    committed: &[bool],
    margins: &[f64],
) -> Vec<f64> {
    let avail = site.available_mw();
    let mut c = committed.to_vec();
    loop {
        if let Some(s) = split(&site.units, margins, &c, avail) {
            return s.levels;
        }
        let worst = (0..c.len())
            .filter(|&i| {
                c[i] && states
                    .get(i)
                    .is_none_or(|s| s.can_switch(site.units[i].min_on, site.units[i].min_off))
            })
            .min_by(|&a, &b| {
                let ka = margins[a] / site.units[a].mw.max(f64::MIN_POSITIVE);
                let kb = margins[b] / site.units[b].mw.max(f64::MIN_POSITIVE);
                ka.total_cmp(&kb)
            });
        match worst {
            Some(i) => c[i] = false,
            None => {
                let key: Vec<f64> = margins.to_vec();
                return fill_by_merit(&site.units, &key, &c, avail);
            }
        }
    }
}
