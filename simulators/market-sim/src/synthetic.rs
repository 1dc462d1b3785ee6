//! Seeded synthetic markets: geometric Brownian motion for BTC, time-of-day electricity with
//! scarcity spikes up to the cap and some negative hours, GPU spot rates with demand bursts,
//! difficulty stepping every ~2 weeks, and system load with a daily shape. Same seed, same
//! series.

use hcp_economics::hashprice::{block_subsidy_btc, hashprice_usd_per_ph_day};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use time::OffsetDateTime;

use crate::series::Row;

/// Parameters of the synthetic markets.
#[derive(Debug, Clone, PartialEq)]
pub struct SyntheticParams {
    /// RNG seed.
    pub seed: u64,
    /// Interval length, seconds.
    pub step_s: i64,
    /// BTC price at the start, USD.
    pub btc_start: f64,
    /// GBM drift, per year.
    pub btc_drift: f64,
    /// GBM volatility, per sqrt(year).
    pub btc_vol: f64,
    /// Difficulty at the start.
    pub difficulty_start: f64,
    /// Mean log change of difficulty per adjustment.
    pub difficulty_step_mean: f64,
    /// Mean electricity price, $/MWh.
    pub price_mean: f64,
    /// Price cap, $/MWh.
    pub price_cap: f64,
    /// Probability that an afternoon/evening interval is a scarcity spike.
    pub spike_probability: f64,
    /// Probability that a night interval is negative.
    pub negative_probability: f64,
    /// Mean GPU spot rate, $/GPU-hour.
    pub gpu_mean: f64,
    /// Probability that a demand burst starts in an interval.
    pub gpu_burst_probability: f64,
    /// Mean system load, MW.
    pub load_mean_mw: f64,
    /// Hours to add to UTC for local time (ERCOT: -6).
    pub utc_offset_h: i64,
}

impl Default for SyntheticParams {
    fn default() -> Self {
        Self {
            seed: 1,
            step_s: 3600,
            btc_start: 30_000.0,
            btc_drift: 0.3,
            btc_vol: 0.6,
            difficulty_start: 5.0e13,
            difficulty_step_mean: 0.02,
            price_mean: 45.0,
            price_cap: 5000.0,
            spike_probability: 0.01,
            negative_probability: 0.05,
            gpu_mean: 2.0,
            gpu_burst_probability: 0.01,
            load_mean_mw: 50_000.0,
            utc_offset_h: -6,
        }
    }
}

/// A standard normal draw (Box-Muller).
pub fn normal(rng: &mut impl Rng) -> f64 {
    let u1: f64 = rng.random::<f64>().max(f64::MIN_POSITIVE);
    let u2: f64 = rng.random::<f64>();
    (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
}

const SECONDS_PER_YEAR: f64 = 365.25 * 86_400.0;

/// A GBM path of `n` steps of `dt_years` from `s0`.
pub fn gbm_path(
    rng: &mut impl Rng,
    s0: f64,
    mu: f64,
    sigma: f64,
    dt_years: f64,
    n: usize,
) -> Vec<f64> {
    let mut s = s0;
    let drift = (mu - sigma * sigma / 2.0) * dt_years;
    let vol = sigma * dt_years.sqrt();
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        out.push(s);
        s *= (drift + vol * normal(rng)).exp();
    }
    out
}

/// The electricity price of one interval at local hour `hour`.
fn price_at(rng: &mut impl Rng, p: &SyntheticParams, hour: i64, summer: bool) -> f64 {
    // Evening peak around 18:00 local, trough around 04:00.
    #[allow(clippy::cast_precision_loss)]
    let phase = (hour as f64 - 18.0) / 24.0 * std::f64::consts::TAU;
    let shape = 1.0 + 0.45 * phase.cos();
    let base = p.price_mean * shape * (1.0 + 0.15 * normal(rng)).max(0.2);
    let evening = (14..=21).contains(&hour);
    let spike_p = if evening {
        p.spike_probability * if summer { 3.0 } else { 1.0 }
    } else {
        p.spike_probability / 10.0
    };
    if rng.random::<f64>() < spike_p {
        // Scarcity pricing: a few hundred dollars up to the cap, a fifth of spikes at the cap.
        let v = if rng.random::<f64>() < 0.2 {
            p.price_cap
        } else {
            300.0 + (p.price_cap - 300.0) * rng.random::<f64>().powi(2)
        };
        return v.min(p.price_cap);
    }
    let night = !(6..22).contains(&hour);
    if night && rng.random::<f64>() < p.negative_probability * 2.0 {
        // Windy nights: negative prices, rarely below -$50.
        return -(1.0 + 40.0 * rng.random::<f64>());
    }
    base.min(p.price_cap)
}

/// Synthesises `[from, to)` at `p.step_s`.
pub fn generate(p: &SyntheticParams, from: i64, to: i64) -> Vec<Row> {
    let mut rng = StdRng::seed_from_u64(p.seed);
    let step = p.step_s.max(1);
    #[allow(clippy::cast_sign_loss, clippy::cast_possible_truncation)]
    let n = ((to - from).max(0) / step) as usize;
    #[allow(clippy::cast_precision_loss)]
    let dt_years = step as f64 / SECONDS_PER_YEAR;
    // BTC has its own random stream so that the GBM is exactly the tested `gbm_path`.
    let mut btc_rng = StdRng::seed_from_u64(p.seed ^ 0x6274_6300);
    let btc_path = gbm_path(
        &mut btc_rng,
        p.btc_start,
        p.btc_drift,
        p.btc_vol,
        dt_years,
        n,
    );
    let mut difficulty = p.difficulty_start;
    // The first adjustment comes 10-18 days in, then every ~14 days (2016 blocks) with jitter.
    let mut next_adjust = from + rng.random_range(10 * 86_400..18 * 86_400);
    let mut gpu = p.gpu_mean;
    let mut burst_left = 0_i64;
    let mut burst_factor = 1.0;
    let mut out = Vec::with_capacity(n);
    let mut day_btc = p.btc_start;
    let mut day = i64::MIN;
    for i in 0..n {
        #[allow(clippy::cast_possible_wrap, clippy::cast_possible_truncation)]
        let ts = from + i as i64 * step;
        let local = ts + p.utc_offset_h * 3600;
        let hour = local.rem_euclid(86_400) / 3600;
        let date = OffsetDateTime::from_unix_timestamp(ts)
            .unwrap_or(OffsetDateTime::UNIX_EPOCH)
            .date();
        let summer = (6..=9).contains(&u8::from(date.month()));
        // BTC is observed daily (like the real file's 00:00 UTC snapshot).
        if ts.div_euclid(86_400) != day {
            day = ts.div_euclid(86_400);
            day_btc = btc_path.get(i).copied().unwrap_or(day_btc);
        }
        if ts >= next_adjust {
            difficulty *= (p.difficulty_step_mean + 0.03 * normal(&mut rng)).exp();
            next_adjust = ts + rng.random_range(12 * 86_400..16 * 86_400);
        }
        let price = price_at(&mut rng, p, hour, summer);
        // GPU spot: mean-reverting with occasional demand bursts lasting 2-12 hours.
        gpu += 0.1 * (p.gpu_mean - gpu) + 0.02 * p.gpu_mean * normal(&mut rng);
        gpu = gpu.max(0.3 * p.gpu_mean);
        if burst_left > 0 {
            burst_left -= step;
        } else if rng.random::<f64>() < p.gpu_burst_probability {
            burst_left = rng.random_range(2..=12) * 3600;
            burst_factor = 1.4 + rng.random::<f64>();
        } else {
            burst_factor = 1.0;
        }
        #[allow(clippy::cast_precision_loss)]
        let load_phase = (hour as f64 - 17.0) / 24.0 * std::f64::consts::TAU;
        let seasonal = if summer { 1.25 } else { 1.0 };
        let load = p.load_mean_mw * seasonal * (1.0 + 0.18 * load_phase.cos())
            + 0.01 * p.load_mean_mw * normal(&mut rng);
        let hashprice =
            hashprice_usd_per_ph_day(day_btc, difficulty, block_subsidy_btc(date), 0.0) / 1000.0;
        out.push(Row {
            ts,
            price,
            btc_usd: day_btc,
            difficulty,
            hashprice_th: hashprice,
            carbon: Some((420.0 - 0.002 * (load - p.load_mean_mw)).clamp(150.0, 600.0)),
            load_mw: Some(load),
            gpu_usd_h: gpu * burst_factor,
        });
    }
    out
}

/// GPU spot rates beside a replay: the synthetic GPU process alone, on the replay's times.
pub fn gpu_rates(p: &SyntheticParams, times: &[i64]) -> Vec<f64> {
    let mut rng = StdRng::seed_from_u64(p.seed ^ 0x6770_7573);
    let mut gpu = p.gpu_mean;
    let mut burst_left = 0_i64;
    let mut burst_factor = 1.0;
    let mut prev = times.first().copied().unwrap_or(0);
    times
        .iter()
        .map(|&ts| {
            let step = (ts - prev).max(0);
            prev = ts;
            gpu += 0.1 * (p.gpu_mean - gpu) + 0.02 * p.gpu_mean * normal(&mut rng);
            gpu = gpu.max(0.3 * p.gpu_mean);
            if burst_left > 0 {
                burst_left -= step.max(1);
            } else if rng.random::<f64>() < p.gpu_burst_probability {
                burst_left = rng.random_range(2..=12) * 3600;
                burst_factor = 1.4 + rng.random::<f64>();
            } else {
                burst_factor = 1.0;
            }
            gpu * burst_factor
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::cast_precision_loss)]
    use super::*;

    const YEAR_2023: i64 = 1_672_531_200;

    fn year() -> Vec<Row> {
        generate(
            &SyntheticParams::default(),
            YEAR_2023,
            YEAR_2023 + 365 * 86_400,
        )
    }

    #[test]
    fn the_same_seed_gives_the_same_series_and_another_seed_does_not() {
        let p = SyntheticParams::default();
        let a = generate(&p, YEAR_2023, YEAR_2023 + 7 * 86_400);
        let b = generate(&p, YEAR_2023, YEAR_2023 + 7 * 86_400);
        assert_eq!(a, b);
        let c = generate(
            &SyntheticParams { seed: 2, ..p },
            YEAR_2023,
            YEAR_2023 + 7 * 86_400,
        );
        assert_ne!(a, c);
        assert_eq!(a.len(), 7 * 24);
    }

    #[test]
    fn prices_respect_the_cap_spike_at_the_configured_rate_and_go_negative_some_nights() {
        let rows = year();
        let p = SyntheticParams::default();
        assert!(rows.iter().all(|r| r.price <= p.price_cap));
        let spikes = rows.iter().filter(|r| r.price >= 300.0).count() as f64;
        let at_cap = rows.iter().filter(|r| r.price >= p.price_cap).count();
        let negative = rows.iter().filter(|r| r.price < 0.0).count() as f64;
        let n = rows.len() as f64;
        // Expected spike share: 8 evening hours at 1% (3% in summer's third of the year), the
        // other 16 at 0.1%: about 0.5% of intervals.
        let expected = (8.0 * (0.01 * 2.0 / 3.0 + 0.03 / 3.0) + 16.0 * 0.001) / 24.0;
        let share = spikes / n;
        assert!(
            share > expected * 0.6 && share < expected * 1.5,
            "spike share {share} vs expected {expected}"
        );
        assert!(at_cap > 0, "some spikes reach the cap");
        // 8 night hours at 10%: about 3.3% of intervals.
        let neg_share = negative / n;
        assert!(
            neg_share > 0.02 && neg_share < 0.05,
            "negative share {neg_share}"
        );
        // The daily shape: evenings cost more than early mornings on average.
        let mean_at = |h: i64| {
            let v: Vec<f64> = rows
                .iter()
                .filter(|r| {
                    (r.ts - 6 * 3600).rem_euclid(86_400) / 3600 == h
                        && r.price < 300.0
                        && r.price > 0.0
                })
                .map(|r| r.price)
                .collect();
            v.iter().sum::<f64>() / v.len() as f64
        };
        assert!(mean_at(18) > 1.5 * mean_at(4));
    }

    #[test]
    fn gbm_drift_and_volatility_come_out_as_configured() {
        let mut rng = StdRng::seed_from_u64(7);
        let (mu, sigma) = (0.3, 0.6);
        let dt = 1.0 / (365.25 * 24.0);
        // 200 years of hourly steps, so the drift estimate is tight enough to test.
        let n = 200 * 8766;
        let path = gbm_path(&mut rng, 30_000.0, mu, sigma, dt, n);
        let r: Vec<f64> = path.windows(2).map(|w| (w[1] / w[0]).ln()).collect();
        let m = r.iter().sum::<f64>() / r.len() as f64;
        let var = r.iter().map(|x| (x - m).powi(2)).sum::<f64>() / (r.len() - 1) as f64;
        let sigma_hat = (var / dt).sqrt();
        let mu_hat = m / dt + sigma_hat * sigma_hat / 2.0;
        assert!((sigma_hat - sigma).abs() < 0.01, "sigma {sigma_hat}");
        // Standard error of the drift over 200 years is sigma / sqrt(200) = 0.042.
        assert!((mu_hat - mu).abs() < 0.13, "mu {mu_hat}");
    }

    #[test]
    fn difficulty_steps_about_every_two_weeks_and_hashprice_follows_it() {
        let rows = year();
        let steps = rows
            .windows(2)
            .filter(|w| w[0].difficulty != w[1].difficulty)
            .count();
        assert!((22..=30).contains(&steps), "{steps} adjustments in a year");
        for r in &rows {
            let expect = hashprice_usd_per_ph_day(r.btc_usd, r.difficulty, 6.25, 0.0) / 1000.0;
            assert!((r.hashprice_th - expect).abs() < 1e-12);
        }
    }

    #[test]
    fn gpu_rates_burst_and_load_has_a_daily_shape() {
        let rows = year();
        let p = SyntheticParams::default();
        let bursts = rows
            .iter()
            .filter(|r| r.gpu_usd_h > 1.3 * p.gpu_mean)
            .count();
        assert!(bursts > 100, "{bursts} burst hours");
        assert!(rows.iter().all(|r| r.gpu_usd_h > 0.0));
        let at = |h: i64| {
            let v: Vec<f64> = rows
                .iter()
                .filter(|r| (r.ts - 6 * 3600).rem_euclid(86_400) / 3600 == h)
                .filter_map(|r| r.load_mw)
                .collect();
            v.iter().sum::<f64>() / v.len() as f64
        };
        assert!(
            at(17) > 1.2 * at(5),
            "afternoon {} vs early morning {}",
            at(17),
            at(5)
        );
    }
}
