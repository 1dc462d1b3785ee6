//! The hindsight optimum of a site over a trace, computed exactly.
//!
//! - (a) [`threshold`]: without switching costs, minimum times or a binding cap, every interval
//!   and unit is independent: run at full power iff the margin is positive.
//! - (b) [`dp`]: with switching costs and minimum on/off times, dynamic programming over the
//!   commitment state of every unit (on/off and how long it has been so, capped at the longest
//!   minimum time). Exact: the state holds everything that constrains or prices the future.
//! - (c) inside each DP stage, the power split of the committed units under the site cap is the
//!   LP of [`crate::dispatch::split`] (power-target changes cost nothing; commitment changes do).
//!
//! The DP is exponential in the number of units of a site (2 x longest minimum time states per
//! unit); it refuses state spaces above [`DpLimits`] rather than run for hours.

use crate::dispatch::split;
use crate::fleet::SiteModel;
use crate::EconError;

/// A schedule: a level for every interval and unit, and its value.
#[derive(Debug, Clone, PartialEq)]
pub struct Schedule {
    /// `levels[t][u]`, 0 = off.
    pub levels: Vec<Vec<f64>>,
    /// Sum of split values minus switching costs, $.
    pub value: f64,
}

/// (a) The per-interval threshold schedule: full power iff the margin is positive. Exact when
/// switching costs are zero, minimum times are one interval and the cap does not bind.
pub fn threshold(margins: &[Vec<f64>]) -> Schedule {
    let levels: Vec<Vec<f64>> = margins
        .iter()
        .map(|row| {
            row.iter()
                .map(|&m| if m > 0.0 { 1.0 } else { 0.0 })
                .collect()
        })
        .collect();
    let value = margins.iter().flatten().map(|&m| m.max(0.0)).sum();
    Schedule { levels, value }
}

/// Bounds on the DP's size.
#[derive(Debug, Clone, Copy)]
pub struct DpLimits {
    /// Largest number of joint states of a site.
    pub max_states: usize,
    /// Largest states x intervals (memory for the back-pointers, 4 bytes each).
    pub max_cells: usize,
}

impl Default for DpLimits {
    fn default() -> Self {
        Self {
            max_states: 1 << 14,
            max_cells: 1 << 26,
        }
    }
}

struct Space {
    radix: Vec<usize>,
    stride: Vec<usize>,
    hold: Vec<usize>,
}

impl Space {
    fn decode(&self, s: usize) -> (u32, Vec<usize>) {
        let mut on = 0u32;
        let mut dwell = Vec::with_capacity(self.radix.len());
        for (u, (&r, &st)) in self.radix.iter().zip(&self.stride).enumerate() {
            let c = (s / st) % r;
            let l = self.hold[u];
            if c >= l {
                on |= 1 << u;
            }
            dwell.push(c % l + 1);
        }
        (on, dwell)
    }

    fn encode(&self, on: u32, dwell: &[usize]) -> usize {
        let mut s = 0;
        for (u, &d) in dwell.iter().enumerate() {
            let l = self.hold[u];
            let c = if on & (1 << u) != 0 { l } else { 0 } + (d.clamp(1, l) - 1);
            s += c * self.stride[u];
        }
        s
    }
}

/// (b)+(c) The exact optimum with switching costs, minimum on/off times and the cap. Units
/// start on and free to switch (as the backtest runner starts every policy). `margins[t][u]`
/// is unit `u`'s margin at full power in interval `t` (all charges included).
pub fn dp(site: &SiteModel, margins: &[Vec<f64>], limits: DpLimits) -> Result<Schedule, EconError> {
    let n = site.units.len();
    let t_len = margins.len();
    if n == 0 || t_len == 0 {
        return Ok(Schedule {
            levels: vec![vec![0.0; n]; t_len],
            value: 0.0,
        });
    }
    if n > 12 {
        return Err(EconError::Model(format!(
            "site {}: {n} switchable units is too many for the exact DP (at most 12); merge ASIC groups",
            site.name
        )));
    }
    let hold: Vec<usize> = site
        .units
        .iter()
        .map(|u| u.min_on.max(u.min_off).max(1) as usize)
        .collect();
    let radix: Vec<usize> = hold.iter().map(|h| 2 * h).collect();
    let mut stride = Vec::with_capacity(n);
    let mut states = 1usize;
    for &r in &radix {
        stride.push(states);
        states = states.saturating_mul(r);
    }
    if states > limits.max_states || states.saturating_mul(t_len) > limits.max_cells {
        return Err(EconError::Model(format!(
            "site {}: the exact DP needs {states} states x {t_len} intervals, above the limits; shorten min on/off times, merge units or shorten the window",
            site.name
        )));
    }
    let space = Space {
        radix,
        stride,
        hold,
    };
    let masks = 1usize << n;
    let cost: Vec<f64> = (0..masks)
        .map(|m| {
            site.units
                .iter()
                .enumerate()
                .filter(|(u, _)| m & (1 << u) != 0)
                .map(|(_, x)| x.switch_cost_usd)
                .sum()
        })
        .collect();
    // Transitions: for each state, the reachable (next state, toggle mask) pairs.
    let mut trans: Vec<Vec<(u32, u32)>> = Vec::with_capacity(states);
    for s in 0..states {
        let (on, dwell) = space.decode(s);
        let mut free = 0u32;
        for (u, unit) in site.units.iter().enumerate() {
            let need = if on & (1 << u) != 0 {
                unit.min_on
            } else {
                unit.min_off
            } as usize;
            if dwell[u] >= need {
                free |= 1 << u;
            }
        }
        let mut list = Vec::new();
        let mut sub = free;
        loop {
            let next_on = on ^ sub;
            let next_dwell: Vec<usize> = (0..n)
                .map(|u| {
                    if sub & (1 << u) != 0 {
                        1
                    } else {
                        (dwell[u] + 1).min(space.hold[u])
                    }
                })
                .collect();
            #[allow(clippy::cast_possible_truncation)]
            list.push((space.encode(next_on, &next_dwell) as u32, sub));
            if sub == 0 {
                break;
            }
            sub = (sub - 1) & free;
        }
        trans.push(list);
    }
    let on_of: Vec<u32> = (0..states).map(|s| space.decode(s).0).collect();
    let all_on = u32::try_from(masks - 1).unwrap_or(u32::MAX);
    let start = space.encode(all_on, &space.hold);
    let avail = site.available_mw();
    let mut v = vec![f64::NEG_INFINITY; states];
    v[start] = 0.0;
    let mut next = vec![f64::NEG_INFINITY; states];
    let mut pred = vec![u32::MAX; states * t_len];
    let mut stage = vec![f64::NEG_INFINITY; masks];
    let mut committed = vec![false; n];
    for (t, m) in margins.iter().enumerate() {
        for (mask, slot) in stage.iter_mut().enumerate() {
            for (u, c) in committed.iter_mut().enumerate() {
                *c = mask & (1 << u) != 0;
            }
            *slot = split(&site.units, m, &committed, avail).map_or(f64::NEG_INFINITY, |s| s.value);
        }
        next.fill(f64::NEG_INFINITY);
        let row = &mut pred[t * states..(t + 1) * states];
        for (s, &vs) in v.iter().enumerate() {
            if vs == f64::NEG_INFINITY {
                continue;
            }
            for &(s2, sub) in &trans[s] {
                let s2 = s2 as usize;
                let gain = stage[on_of[s2] as usize];
                if gain == f64::NEG_INFINITY {
                    continue;
                }
                let cand = vs - cost[sub as usize] + gain;
                if cand > next[s2] {
                    next[s2] = cand;
                    #[allow(clippy::cast_possible_truncation)]
                    {
                        row[s2] = s as u32;
                    }
                }
            }
        }
        std::mem::swap(&mut v, &mut next);
    }
    let (mut s, value) = v
        .iter()
        .enumerate()
        .max_by(|a, b| a.1.total_cmp(b.1))
        .map(|(s, &val)| (s, val))
        .ok_or_else(|| EconError::Model("empty DP".to_owned()))?;
    if value == f64::NEG_INFINITY {
        return Err(EconError::Model(format!(
            "site {}: no feasible schedule (minimum power levels exceed the cap)",
            site.name
        )));
    }
    let mut on_masks = vec![0u32; t_len];
    for t in (0..t_len).rev() {
        on_masks[t] = on_of[s];
        s = pred[t * states + s] as usize;
    }
    let mut levels = Vec::with_capacity(t_len);
    for (t, &mask) in on_masks.iter().enumerate() {
        let c: Vec<bool> = (0..n).map(|u| mask & (1 << u) != 0).collect();
        let sp = split(&site.units, &margins[t], &c, avail)
            .ok_or_else(|| EconError::Model("DP backtrack hit an infeasible stage".to_owned()))?;
        levels.push(sp.levels);
    }
    Ok(Schedule { levels, value })
}
