//! The hindsight optimum against brute force: (a) the threshold, (b) the DP with switching
//! costs and minimum times, (c) the LP split under a binding cap, and the simplex itself.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::needless_range_loop)]

mod common;

use common::Rng;
use hcp_economics::dispatch::{split, split_greedy, split_lp};
use hcp_economics::fleet::{SiteModel, Unit, UnitKind};
use hcp_economics::lp::maximize;
use hcp_economics::optimum::{dp, threshold, DpLimits};

fn unit(r: &mut Rng, i: usize, switching: bool) -> Unit {
    Unit {
        name: format!("u{i}"),
        kind: UnitKind::GpuBatch { usd_per_hour: 0.0 },
        mw: r.range(0.5, 3.0),
        switch_cost_usd: if switching { r.range(0.0, 40.0) } else { 0.0 },
        min_on: if switching { 1 + r.below(3) as u32 } else { 1 },
        min_off: if switching { 1 + r.below(3) as u32 } else { 1 },
        min_level: if r.f64() < 0.5 {
            1.0
        } else {
            r.range(0.2, 1.0)
        },
    }
}

fn site(units: Vec<Unit>, cap: f64) -> SiteModel {
    SiteModel {
        name: "s".to_owned(),
        cap_mw: cap,
        pue: 1.0,
        cp_usd_per_mw_year: 0.0,
        units,
        fixed_mw: 0.0,
        fixed_usd_per_h: 0.0,
    }
}

fn margins(r: &mut Rng, t: usize, n: usize) -> Vec<Vec<f64>> {
    (0..t)
        .map(|_| (0..n).map(|_| r.range(-60.0, 60.0)).collect())
        .collect()
}

/// Best value over every commitment sequence that respects the minimum times, starting all on
/// and free to switch, each stage split optimally.
fn brute_force(s: &SiteModel, m: &[Vec<f64>]) -> f64 {
    let n = s.units.len();
    let t_len = m.len();
    let mut best = f64::NEG_INFINITY;
    for code in 0u64..(1u64 << (n * t_len)) {
        let mut on = vec![true; n];
        let mut dwell = vec![u32::MAX / 2; n];
        let mut total = 0.0;
        let mut ok = true;
        for (t, mt) in m.iter().enumerate() {
            let mut c = vec![false; n];
            for u in 0..n {
                c[u] = code & (1 << (t * n + u)) != 0;
                if c[u] != on[u] {
                    let need = if on[u] {
                        s.units[u].min_on
                    } else {
                        s.units[u].min_off
                    };
                    if dwell[u] < need {
                        ok = false;
                    }
                    total -= s.units[u].switch_cost_usd;
                    dwell[u] = 1;
                } else {
                    dwell[u] = dwell[u].saturating_add(1);
                }
                on[u] = c[u];
            }
            if !ok {
                break;
            }
            match split_greedy(&s.units, mt, &c, s.available_mw()) {
                Some(sp) => total += sp.value,
                None => {
                    ok = false;
                    break;
                }
            }
        }
        if ok {
            best = best.max(total);
        }
    }
    best
}

#[test]
fn threshold_matches_brute_force_without_switching_costs_or_a_binding_cap() {
    let mut r = Rng(1);
    for _ in 0..40 {
        let n = 1 + r.below(2) as usize;
        let t = 5;
        let units: Vec<Unit> = (0..n).map(|i| unit(&mut r, i, false)).collect();
        let s = site(units, 100.0);
        let m = margins(&mut r, t, n);
        let th = threshold(&m);
        let bf = brute_force(&s, &m);
        assert!(
            (th.value - bf).abs() < 1e-9,
            "threshold {} vs brute force {bf}",
            th.value
        );
    }
}

#[test]
fn dp_matches_brute_force_with_switching_costs_minimum_times_and_a_cap() {
    let mut r = Rng(2);
    for case in 0..60 {
        // One unit over 12 intervals, or two units over 6 (4,096 schedules each).
        let (n, t) = if case % 2 == 0 { (1, 12) } else { (2, 6) };
        let units: Vec<Unit> = (0..n).map(|i| unit(&mut r, i, true)).collect();
        let full: f64 = units.iter().map(|u| u.mw).sum();
        // Half the cases with a cap that binds.
        let cap = if case % 4 < 2 {
            full + 1.0
        } else {
            r.range(0.6, 1.0) * full
        };
        let s = site(units, cap);
        let m = margins(&mut r, t, n);
        let bf = brute_force(&s, &m);
        let got = dp(&s, &m, DpLimits::default()).unwrap();
        assert!(
            (got.value - bf).abs() < 1e-6,
            "case {case}: dp {} vs brute force {bf}",
            got.value
        );
        // The schedule it returns is worth what it says and respects the cap.
        let mut on = vec![true; n];
        let mut value = 0.0;
        for (lv, mt) in got.levels.iter().zip(&m) {
            let load: f64 = s.units.iter().zip(lv).map(|(u, x)| u.mw * x).sum();
            assert!(load <= cap + 1e-9);
            for u in 0..n {
                value += mt[u] * lv[u];
                if (lv[u] > 0.0) != on[u] {
                    value -= s.units[u].switch_cost_usd;
                }
                on[u] = lv[u] > 0.0;
            }
        }
        assert!((value - got.value).abs() < 1e-6);
    }
}

#[test]
fn dp_reduces_to_the_threshold_when_switching_is_free() {
    let mut r = Rng(3);
    let units: Vec<Unit> = (0..3).map(|i| unit(&mut r, i, false)).collect();
    let s = site(units, 100.0);
    let m = margins(&mut r, 200, 3);
    let got = dp(&s, &m, DpLimits::default()).unwrap();
    assert!((got.value - threshold(&m).value).abs() < 1e-6);
}

#[test]
fn lp_split_matches_the_greedy_rule_and_a_grid_search_when_the_cap_binds() {
    let mut r = Rng(4);
    for _ in 0..200 {
        let n = 3;
        let units: Vec<Unit> = (0..n).map(|i| unit(&mut r, i, false)).collect();
        let full: f64 = units.iter().map(|u| u.mw).sum();
        let cap = r.range(0.3, 1.0) * full;
        let m: Vec<f64> = (0..n).map(|_| r.range(-20.0, 80.0)).collect();
        let c = vec![true; n];
        let lp = split_lp(&units, &m, &c, cap);
        let gr = split_greedy(&units, &m, &c, cap);
        let (Some(lp), Some(gr)) = (lp, gr) else {
            // Infeasible for both or neither.
            assert_eq!(
                split_lp(&units, &m, &c, cap).is_none(),
                split_greedy(&units, &m, &c, cap).is_none()
            );
            continue;
        };
        assert!(
            (lp.value - gr.value).abs() < 1e-6,
            "lp {} greedy {}",
            lp.value,
            gr.value
        );
        assert_eq!(
            split(&units, &m, &c, cap).map(|s| (s.value * 1e6).round()),
            Some((lp.value * 1e6).round())
        );
        // Grid search over levels in steps of 1/40: never better than the LP, and close to it.
        let steps = 40;
        let mut best = f64::NEG_INFINITY;
        let lv = |u: &Unit, k: usize| u.min_level + (1.0 - u.min_level) * k as f64 / steps as f64;
        for a in 0..=steps {
            for b in 0..=steps {
                for d in 0..=steps {
                    let x = [lv(&units[0], a), lv(&units[1], b), lv(&units[2], d)];
                    let load: f64 = units.iter().zip(&x).map(|(u, x)| u.mw * x).sum();
                    if load <= cap + 1e-12 {
                        best = best.max(m.iter().zip(&x).map(|(m, x)| m * x).sum());
                    }
                }
            }
        }
        assert!(best <= lp.value + 1e-9, "grid {best} beats lp {}", lp.value);
        let slack: f64 = units
            .iter()
            .zip(&m)
            .map(|(u, m)| m.abs() * (1.0 - u.min_level) / steps as f64)
            .sum();
        assert!(
            lp.value - best <= 2.0 * slack + 1e-9,
            "grid {best} far below lp {}",
            lp.value
        );
    }
}

/// Solves the square system by Gaussian elimination; None if singular.
fn solve(mut a: Vec<Vec<f64>>, mut b: Vec<f64>) -> Option<Vec<f64>> {
    let n = b.len();
    for col in 0..n {
        let p = (col..n).max_by(|&i, &j| a[i][col].abs().total_cmp(&a[j][col].abs()))?;
        if a[p][col].abs() < 1e-12 {
            return None;
        }
        a.swap(col, p);
        b.swap(col, p);
        for i in 0..n {
            if i != col {
                let f = a[i][col] / a[col][col];
                for k in 0..n {
                    a[i][k] -= f * a[col][k];
                }
                b[i] -= f * b[col];
            }
        }
    }
    Some((0..n).map(|i| b[i] / a[i][i]).collect())
}

#[test]
fn simplex_matches_vertex_enumeration_on_random_bounded_lps() {
    let mut r = Rng(5);
    for _ in 0..200 {
        let (n, m) = (3, 4);
        let c: Vec<f64> = (0..n).map(|_| r.range(-5.0, 10.0)).collect();
        let a: Vec<Vec<f64>> = (0..m)
            .map(|_| (0..n).map(|_| r.range(0.05, 4.0)).collect())
            .collect();
        let b: Vec<f64> = (0..m).map(|_| r.range(0.0, 10.0)).collect();
        let got = maximize(&c, &a, &b).unwrap();
        // All constraints: A x <= b and -x <= 0; a vertex makes n of them tight.
        let mut rows: Vec<(Vec<f64>, f64)> = a.iter().cloned().zip(b.iter().copied()).collect();
        for j in 0..n {
            let mut e = vec![0.0; n];
            e[j] = -1.0;
            rows.push((e, 0.0));
        }
        let mut best = f64::NEG_INFINITY;
        let k = rows.len();
        for i in 0..k {
            for j in i + 1..k {
                for l in j + 1..k {
                    let sys: Vec<_> = [i, j, l].iter().map(|&q| rows[q].clone()).collect();
                    let Some(x) = solve(
                        sys.iter().map(|s| s.0.clone()).collect(),
                        sys.iter().map(|s| s.1).collect(),
                    ) else {
                        continue;
                    };
                    let feasible = rows.iter().all(|(ar, br)| {
                        ar.iter().zip(&x).map(|(p, q)| p * q).sum::<f64>() <= br + 1e-7
                    });
                    if feasible {
                        best = best.max(c.iter().zip(&x).map(|(p, q)| p * q).sum());
                    }
                }
            }
        }
        assert!(
            (got.value - best).abs() < 1e-6,
            "simplex {} vs vertices {best}",
            got.value
        );
        for (ar, br) in a.iter().zip(&b) {
            assert!(ar.iter().zip(&got.x).map(|(p, q)| p * q).sum::<f64>() <= br + 1e-7);
        }
    }
}
