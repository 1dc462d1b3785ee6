//! The power split of one interval under a site's cap, given which units are committed:
//!
//! maximise sum_u m_u x_u  subject to  sum_u MW_u x_u <= available MW,
//! x_u in [min_level_u, 1] for committed units, x_u = 0 for the others,
//!
//! where m_u is the unit's margin at full power ([`crate::econ::unit_margin_usd`]). When the cap
//! does not bind the answer is a per-unit threshold (full if m_u > 0, else the minimum level);
//! when it binds it is an LP, solved with [`crate::lp::maximize`]. Substituting
//! y_u = x_u - min_level_u makes it a fractional knapsack, so a greedy fill by margin per MW is
//! also optimal: [`split_greedy`] exists to cross-check the LP.

use crate::fleet::Unit;
use crate::lp;

/// A power split.
#[derive(Debug, Clone, PartialEq)]
pub struct Split {
    /// Level of each unit (0 = off).
    pub levels: Vec<f64>,
    /// sum_u m_u x_u, $.
    pub value: f64,
}

const SLACK_MW: f64 = 1e-9;

fn floor_load(units: &[Unit], committed: &[bool]) -> (Vec<f64>, f64) {
    let levels: Vec<f64> = units
        .iter()
        .zip(committed)
        .map(|(u, &c)| if c { u.min_level } else { 0.0 })
        .collect();
    let mw = units.iter().zip(&levels).map(|(u, x)| u.mw * x).sum();
    (levels, mw)
}

fn value(margins: &[f64], levels: &[f64]) -> f64 {
    margins.iter().zip(levels).map(|(m, x)| m * x).sum()
}

/// The optimal split: a threshold when the cap cannot bind, else the LP. `None` when the
/// committed units' minimum levels alone exceed `available_mw`.
pub fn split(
    units: &[Unit],
    margins: &[f64],
    committed: &[bool],
    available_mw: f64,
) -> Option<Split> {
    let full: f64 = units
        .iter()
        .zip(committed)
        .filter(|(_, &c)| c)
        .map(|(u, _)| u.mw)
        .sum();
    if full <= available_mw + SLACK_MW {
        let levels: Vec<f64> = units
            .iter()
            .zip(committed)
            .zip(margins)
            .map(|((u, &c), &m)| match (c, m > 0.0) {
                (false, _) => 0.0,
                (true, true) => 1.0,
                (true, false) => u.min_level,
            })
            .collect();
        return Some(Split {
            value: value(margins, &levels),
            levels,
        });
    }
    split_lp(units, margins, committed, available_mw)
}

/// The split by the simplex, always (see the module docs).
pub fn split_lp(
    units: &[Unit],
    margins: &[f64],
    committed: &[bool],
    available_mw: f64,
) -> Option<Split> {
    let (mut levels, floor_mw) = floor_load(units, committed);
    let room = available_mw - floor_mw;
    if room < -SLACK_MW {
        return None;
    }
    let vars: Vec<usize> = (0..units.len())
        .filter(|&i| committed.get(i).copied().unwrap_or(false) && units[i].min_level < 1.0)
        .collect();
    if !vars.is_empty() {
        let c: Vec<f64> = vars.iter().map(|&i| margins[i]).collect();
        let mut a = vec![vars.iter().map(|&i| units[i].mw).collect::<Vec<f64>>()];
        let mut b = vec![room.max(0.0)];
        for (k, &i) in vars.iter().enumerate() {
            let mut row = vec![0.0; vars.len()];
            row[k] = 1.0;
            a.push(row);
            b.push(1.0 - units[i].min_level);
        }
        let sol = lp::maximize(&c, &a, &b).ok()?;
        for (k, &i) in vars.iter().enumerate() {
            levels[i] += sol.x[k].clamp(0.0, 1.0 - units[i].min_level);
        }
    }
    Some(Split {
        value: value(margins, &levels),
        levels,
    })
}

/// The split by a greedy fill in order of margin per MW (optimal; see the module docs).
pub fn split_greedy(
    units: &[Unit],
    margins: &[f64],
    committed: &[bool],
    available_mw: f64,
) -> Option<Split> {
    let (mut levels, floor_mw) = floor_load(units, committed);
    let mut room = available_mw - floor_mw;
    if room < -SLACK_MW {
        return None;
    }
    let mut order: Vec<usize> = (0..units.len())
        .filter(|&i| committed.get(i).copied().unwrap_or(false) && margins[i] > 0.0)
        .collect();
    order.sort_by(|&a, &b| {
        let ka = margins[a] / units[a].mw.max(f64::MIN_POSITIVE);
        let kb = margins[b] / units[b].mw.max(f64::MIN_POSITIVE);
        kb.total_cmp(&ka)
    });
    for i in order {
        let u = &units[i];
        let want = 1.0 - u.min_level;
        let take = if u.mw > 0.0 {
            want.min(room.max(0.0) / u.mw)
        } else {
            want
        };
        levels[i] += take;
        room -= take * u.mw;
    }
    Some(Split {
        value: value(margins, &levels),
        levels,
    })
}

/// A price-blind split for the baselines: committed units at full power in order of `key`
/// (higher first, e.g. revenue per MW) until the cap, the rest at their minimum level or off.
pub fn fill_by_merit(
    units: &[Unit],
    key: &[f64],
    committed: &[bool],
    available_mw: f64,
) -> Vec<f64> {
    let mut levels = vec![0.0; units.len()];
    let mut order: Vec<usize> = (0..units.len())
        .filter(|&i| committed.get(i).copied().unwrap_or(false))
        .collect();
    order.sort_by(|&a, &b| key[b].total_cmp(&key[a]));
    let mut room = available_mw;
    for i in order {
        let u = &units[i];
        if u.mw <= room + SLACK_MW {
            levels[i] = 1.0;
            room -= u.mw;
        } else if u.mw * u.min_level <= room + SLACK_MW {
            levels[i] = (room / u.mw).clamp(u.min_level, 1.0);
            room = 0.0;
        }
    }
    levels
}
