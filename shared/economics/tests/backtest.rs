//! The runner: scoring, rule enforcement, 4CP, eco mode and the output files.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use hcp_economics::backtest::{
    backtest, four_cp_peaks, rows_csv, run_optimum, run_policy, RunOptions,
};
use hcp_economics::econ::site_margins;
use hcp_economics::optimum::{dp, DpLimits};
use hcp_economics::plot::backtest_png;
use hcp_economics::policy::{AlwaysOn, Context, Policy, PolicyKind, Rule, RuleParams};

#[test]
fn the_optimum_bounds_every_policy_and_baseline() {
    let fleet = common::fleet(common::FLEET);
    for (seed, start) in [(21, "2023-08-01T00:00:00Z"), (22, "2023-02-01T00:00:00Z")] {
        let trace = common::synthetic_trace(start, 24 * 14, seed);
        let bt = backtest(
            &trace,
            &fleet,
            PolicyKind::Rule,
            &RunOptions::default(),
            &mut |_, _, _| {},
        )
        .unwrap();
        let opt = &bt.report.results[0];
        assert_eq!(opt.name, "optimum");
        assert!((opt.pct_of_optimum.unwrap() - 100.0).abs() < 1e-9);
        for s in &bt.report.results[1..] {
            assert!(
                s.objective_usd <= opt.objective_usd + 1e-6,
                "{} beats the optimum",
                s.name
            );
            assert!(s.pct_of_optimum.unwrap() <= 100.0 + 1e-9);
        }
        let names: Vec<&str> = bt.report.results.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["optimum", "rule", "qlearn", "always-on", "strike"]);
        let roles: Vec<&str> = bt.report.results.iter().map(|s| s.role.as_str()).collect();
        assert_eq!(
            roles,
            ["optimum", "policy", "alternative", "baseline", "baseline"]
        );
        let always_on = bt
            .report
            .results
            .iter()
            .find(|s| s.name == "always-on")
            .unwrap();
        assert!((always_on.energy_cost_vs_always_on_pct.unwrap() - 100.0).abs() < 1e-9);
        // The rule policy beats both baselines.
        let rule = &bt.report.results[1];
        for s in &bt.report.results[3..] {
            assert!(
                rule.objective_usd > s.objective_usd,
                "rule below {}",
                s.name
            );
        }
    }
}

#[test]
fn the_dp_value_is_what_the_accounting_says() {
    let fleet = common::fleet(common::FLEET);
    let trace = common::synthetic_trace("2023-06-20T00:00:00Z", 24 * 20, 23);
    let peaks = four_cp_peaks(&trace);
    assert!(
        peaks.iter().filter(|&&p| p).count() == 2,
        "June and July peaks"
    );
    let opts = RunOptions {
        carbon_price: 30.0,
        ..RunOptions::default()
    };
    let run = run_optimum(&trace, &fleet, &opts, &peaks).unwrap();
    let mut dp_total = 0.0;
    let mut fixed = 0.0;
    for site in &fleet.sites {
        let m: Vec<Vec<f64>> = trace
            .obs
            .iter()
            .zip(&peaks)
            .map(|(o, &p)| {
                site_margins(
                    site,
                    o,
                    30.0,
                    if p { site.cp_usd_per_mw_at_peak() } else { 0.0 },
                )
            })
            .collect();
        dp_total += dp(site, &m, DpLimits::default()).unwrap().value;
        for (o, &p) in trace.obs.iter().zip(&peaks) {
            let mwh = site.fixed_mw * o.dt_h;
            fixed += site.fixed_usd_per_h * o.dt_h
                - o.price * mwh
                - 30.0 * mwh * o.carbon_g_per_kwh.unwrap() / 1000.0
                - if p {
                    site.cp_usd_per_mw_at_peak() * site.fixed_mw
                } else {
                    0.0
                };
        }
    }
    let got = run.ledger.objective_usd();
    assert!(
        (got - (dp_total + fixed)).abs() < 1e-6 * got.abs().max(1.0),
        "{got} vs {}",
        dp_total + fixed
    );
}

#[test]
fn the_rule_policy_sits_out_4cp_peaks_that_always_on_pays_for() {
    let fleet = common::fleet(common::FLEET);
    let trace = common::synthetic_trace("2023-07-01T00:00:00Z", 24 * 31, 24);
    let peaks = four_cp_peaks(&trace);
    let at_peak: Vec<usize> = (0..peaks.len()).filter(|&i| peaks[i]).collect();
    assert_eq!(at_peak.len(), 1);
    let opts = RunOptions::default();
    let rule = run_policy(
        &trace,
        &fleet,
        &mut Rule::new(RuleParams::default()),
        &opts,
        &peaks,
        &mut |_, _| {},
    );
    let on = run_policy(&trace, &fleet, &mut AlwaysOn, &opts, &peaks, &mut |_, _| {});
    // The ASICs of the site that pays 4CP are off in the peak hour (site b pays none); what
    // is left there is GPU load, worth more than the probability-weighted charge.
    let no_cp_asic_mw: f64 = fleet
        .sites
        .iter()
        .filter(|s| s.cp_usd_per_mw_year == 0.0)
        .flat_map(|s| s.units.iter().filter(|u| u.is_asic()).map(|u| u.mw))
        .sum();
    assert!(rule.rows[at_peak[0]].asic_mw <= no_cp_asic_mw + 1e-9);
    assert!(on.rows[at_peak[0]].asic_mw > no_cp_asic_mw + 1.0);
    let gpu_cap: f64 = fleet
        .sites
        .iter()
        .map(|s| {
            s.cp_usd_per_mw_at_peak()
                * (s.fixed_mw
                    + s.units
                        .iter()
                        .filter(|u| !u.is_asic())
                        .map(|u| u.mw)
                        .sum::<f64>())
        })
        .sum();
    assert!(
        rule.ledger.four_cp_cost_usd <= gpu_cap + 1e-6,
        "rule paid {}",
        rule.ledger.four_cp_cost_usd
    );
    assert!(on.ledger.four_cp_cost_usd > 10.0 * rule.ledger.four_cp_cost_usd);
}

#[test]
fn eco_mode_cuts_emissions_at_a_high_carbon_price() {
    let fleet = common::fleet(common::FLEET);
    let trace = common::synthetic_trace("2023-03-01T00:00:00Z", 24 * 14, 25);
    let run = |price: f64| {
        let opts = RunOptions {
            carbon_price: price,
            ..RunOptions::default()
        };
        run_policy(
            &trace,
            &fleet,
            &mut Rule::new(RuleParams::default()),
            &opts,
            &[],
            &mut |_, _| {},
        )
        .ledger
    };
    let (plain, eco) = (run(0.0), run(400.0));
    assert!(
        eco.carbon_t < 0.9 * plain.carbon_t,
        "{} vs {}",
        eco.carbon_t,
        plain.carbon_t
    );
    assert!(eco.carbon_cost_usd > 0.0 && plain.carbon_cost_usd == 0.0);
}

/// Flips every unit every interval and asks for twice full power.
#[derive(Debug, Default)]
struct Flapper(u64);

impl Policy for Flapper {
    fn name(&self) -> &'static str {
        "flapper"
    }
    fn decide(&mut self, ctx: &Context<'_>) -> Vec<Vec<f64>> {
        self.0 += 1;
        let x = if self.0.is_multiple_of(2) { 0.0 } else { 2.0 };
        ctx.fleet
            .sites
            .iter()
            .map(|s| vec![x; s.units.len()])
            .collect()
    }
}

#[test]
fn the_runner_enforces_minimum_times_and_the_cap() {
    let fleet = common::fleet(common::FLEET);
    let trace = common::synthetic_trace("2023-03-01T00:00:00Z", 100, 26);
    let run = run_policy(
        &trace,
        &fleet,
        &mut Flapper::default(),
        &RunOptions::default(),
        &[],
        &mut |_, _| {},
    );
    assert!(run.overrides > 0);
    let cap: f64 = fleet.sites.iter().map(|s| s.cap_mw).sum();
    for r in &run.rows {
        assert!(r.asic_mw + r.gpu_mw <= cap + 1e-9);
    }
    // Every unit here has a minimum on or off time of 2, so it can switch at most every other
    // interval on one side: fewer than one curtailment per unit per two intervals.
    let units: usize = fleet.sites.iter().map(|s| s.units.len()).sum();
    assert!(run.ledger.curtailments < (units * 100 / 2) as u64);
}

#[test]
fn the_csv_and_png_outputs_are_well_formed() {
    let fleet = common::fleet(common::FLEET);
    let trace = common::synthetic_trace("2023-08-01T00:00:00Z", 24 * 5, 27);
    let bt = backtest(
        &trace,
        &fleet,
        PolicyKind::Strike,
        &RunOptions::default(),
        &mut |_, _, _| {},
    )
    .unwrap();
    let csv = rows_csv(&trace, &bt);
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines.len(), 1 + trace.obs.len());
    let cols = lines[0].split(',').count();
    assert!(lines.iter().all(|l| l.split(',').count() == cols));
    assert!(lines[0].contains("strike_cum_profit_usd") && lines[0].contains("optimum_asic_mw"));
    let png = backtest_png(&trace, &bt);
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
    assert_eq!(&png[12..16], b"IHDR");
    let w = u32::from_be_bytes(png[16..20].try_into().unwrap()) as usize;
    let h = u32::from_be_bytes(png[20..24].try_into().unwrap()) as usize;
    let idat_len = u32::from_be_bytes(png[33..37].try_into().unwrap()) as usize;
    assert_eq!(&png[37..41], b"IDAT");
    let raw = miniz_oxide::inflate::decompress_to_vec_zlib(&png[41..41 + idat_len]).unwrap();
    assert_eq!(raw.len(), (w * 3 + 1) * h);
    // Something other than white was drawn.
    assert!(raw.iter().filter(|&&b| b != 255 && b != 0).count() > 1000);
}
