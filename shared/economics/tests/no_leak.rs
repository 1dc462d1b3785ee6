//! Policies see only the past and present: poisoning every later value changes no decision.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use hcp_economics::backtest::{four_cp_peaks, run_policy, RunOptions};
use hcp_economics::policy::{Context, Past, Policy, PolicyKind, UnitState};
use hcp_economics::trace::Trace;

/// Replaces every value after interval `k` with garbage a policy could not ignore if it read it.
fn poison_after(trace: &Trace, k: usize, seed: u64) -> Trace {
    let mut t = trace.clone();
    for (i, o) in t.obs.iter_mut().enumerate().skip(k + 1) {
        let flip = (i as u64 + seed) % 3;
        o.price = [f64::NAN, 1e12, -1e12][flip as usize];
        o.hashprice = [1e12, f64::NAN, 0.0][flip as usize];
        o.carbon_g_per_kwh = Some([f64::NAN, 1e9, -1e9][flip as usize]);
        o.system_load_mw = Some([1e12, f64::NAN, -1.0][flip as usize]);
        o.btc_usd = f64::NAN;
        o.difficulty = f64::NAN;
    }
    t
}

/// Levels a policy chooses at each interval when driven directly, interval by interval.
fn decisions(
    kind: PolicyKind,
    trace: &Trace,
    upto: usize,
    carbon_price: f64,
) -> Vec<Vec<Vec<f64>>> {
    let fleet = common::fleet(common::FLEET);
    let mut p = kind.build();
    let mut states: Vec<Vec<UnitState>> = fleet
        .sites
        .iter()
        .map(|s| vec![UnitState::start(); s.units.len()])
        .collect();
    let mut out = Vec::new();
    for k in 0..=upto {
        let past = Past::new(&trace.obs[..=k]).unwrap();
        let levels = p.decide(&Context {
            past,
            fleet: &fleet,
            states: &states,
            carbon_price,
        });
        for (st, lv) in states.iter_mut().zip(&levels) {
            for (s, &x) in st.iter_mut().zip(lv) {
                *s = s.after(x);
            }
        }
        out.push(levels);
    }
    out
}

#[test]
fn policies_decide_the_same_when_the_future_is_poisoned() {
    // June, so the 4CP logic is live; 12 days, so Q-learning trains several times.
    let trace = common::synthetic_trace("2023-06-01T00:00:00Z", 24 * 12, 11);
    let n = trace.obs.len();
    for kind in PolicyKind::ALL {
        for (j, k) in [5, 80, 200, n - 2].into_iter().enumerate() {
            let clean = decisions(kind, &trace, k, 40.0);
            let dirty = decisions(kind, &poison_after(&trace, k, j as u64), k, 40.0);
            assert_eq!(clean, dirty, "{} looked past interval {k}", kind.name());
            // The check has teeth: decisions vary over the trace.
            if k > 100 && kind != PolicyKind::AlwaysOn {
                assert!(
                    clean.windows(2).any(|w| w[0] != w[1]),
                    "{} never changed its mind",
                    kind.name()
                );
            }
        }
    }
}

#[test]
fn the_runner_feeds_policies_one_interval_at_a_time() {
    // Through the real runner: allocations up to k are identical with a poisoned future.
    let fleet = common::fleet(common::FLEET);
    let trace = common::synthetic_trace("2023-07-01T00:00:00Z", 24 * 10, 12);
    let k = 150;
    let dirty = poison_after(&trace, k, 1);
    let opts = RunOptions::default();
    for kind in PolicyKind::ALL {
        let run = |t: &Trace| {
            let mut p = kind.build();
            // The scorer's 4CP flags are hindsight; hand both runs the same ones.
            run_policy(
                t,
                &fleet,
                p.as_mut(),
                &opts,
                &four_cp_peaks(&trace),
                &mut |_, _| {},
            )
        };
        let (a, b) = (run(&trace), run(&dirty));
        for i in 0..=k {
            assert_eq!(
                (a.rows[i].asic_mw, a.rows[i].gpu_mw),
                (b.rows[i].asic_mw, b.rows[i].gpu_mw),
                "{} differs at {i}",
                kind.name()
            );
        }
    }
}

/// A policy that tries to cheat can only see what the runner has pushed so far.
#[derive(Debug, Default)]
struct Peeker {
    lens: Vec<usize>,
}

impl Policy for Peeker {
    fn name(&self) -> &'static str {
        "peeker"
    }
    fn decide(&mut self, ctx: &Context<'_>) -> Vec<Vec<f64>> {
        assert_eq!(ctx.past.all().last().map(|o| o.ts), Some(ctx.past.now().ts));
        self.lens.push(ctx.past.len());
        ctx.fleet
            .sites
            .iter()
            .map(|s| vec![1.0; s.units.len()])
            .collect()
    }
}

#[test]
fn the_past_ends_at_the_present_interval() {
    let fleet = common::fleet(common::FLEET);
    let mut trace = common::synthetic_trace("2023-03-01T00:00:00Z", 48, 13);
    trace.scored_from = 10;
    let mut p = Peeker::default();
    run_policy(
        &trace,
        &fleet,
        &mut p,
        &RunOptions::default(),
        &[],
        &mut |_, _| {},
    );
    // Warm-up history (10) plus one more observation per scored interval.
    assert_eq!(p.lens, (11..=48).collect::<Vec<_>>());
}
