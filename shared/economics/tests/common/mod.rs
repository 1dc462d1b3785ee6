//! Helpers shared by the integration tests: a seeded generator, synthetic traces and fleets.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use hcp_economics::fleet::{FleetConfig, FleetModel};
use hcp_economics::trace::{parse_timestamp, Observation, Trace};

/// SplitMix64.
pub struct Rng(pub u64);

impl Rng {
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    pub fn f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
    pub fn range(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * self.f64()
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
}

/// A synthetic hourly trace starting at `start` (RFC 3339): prices with a daily shape, random
/// spikes and negative hours, hashprice around $55/PH/day, carbon and a load with daily peaks.
pub fn synthetic_trace(start: &str, hours: usize, seed: u64) -> Trace {
    let mut r = Rng(seed);
    let t0 = parse_timestamp(start).unwrap();
    let obs = (0..hours)
        .map(|h| {
            let hod = (h % 24) as f64;
            let base = 35.0 + 40.0 * ((hod - 6.0) / 24.0 * std::f64::consts::TAU).sin().max(0.0);
            let spike = if r.f64() < 0.06 {
                r.range(100.0, 2500.0)
            } else {
                0.0
            };
            let neg = if r.f64() < 0.03 {
                -r.range(5.0, 40.0)
            } else {
                0.0
            };
            let day = (h / 24) as f64;
            Observation {
                ts: t0 + 3600 * h as i64,
                dt_h: 1.0,
                price: base + spike + neg + r.range(-10.0, 10.0),
                hashprice: 55.0 + 3.0 * (day / 5.0).sin(),
                btc_usd: 30_000.0,
                difficulty: 5e13,
                carbon_g_per_kwh: Some(250.0 + 150.0 * (hod / 24.0 * std::f64::consts::TAU).cos()),
                system_load_mw: Some(
                    50_000.0
                        + 15_000.0 * ((hod - 9.0) / 24.0 * std::f64::consts::TAU).sin()
                        + 400.0 * day
                        + r.range(-500.0, 500.0),
                ),
                filled: false,
            }
        })
        .collect();
    Trace {
        zone: "SYNTH".to_owned(),
        obs,
        scored_from: 0,
        dt_h: 1.0,
        filled: 0,
        skipped: 0,
        rt_intervals: 0,
    }
}

/// A fleet from TOML, compiled for hourly intervals.
pub fn fleet(toml: &str) -> FleetModel {
    FleetConfig::from_toml("test", toml)
        .unwrap()
        .model("test", 1.0)
        .unwrap()
}

/// A two-site fleet whose first site's cap binds, with switching costs and minimum times.
pub const FLEET: &str = r#"
[[site]]
name = "a"
power_cap_mw = 5.0
pue = 1.1
four_cp_usd_per_mw_year = 50000
[[site.asic]]
model = "S21"
count = 1000
switch_cost_usd = 0.2
min_on_hours = 2
min_off_hours = 1
min_power_fraction = 0.5
[[site.asic]]
model = "S21 XP"
count = 400
switch_cost_usd = 0.2
min_on_hours = 1
min_off_hours = 2
[site.gpu]
count = 200
power_kw = 1.2
rental_usd_per_gpu_hour = 2.0
realtime_share = 0.3
switch_cost_usd = 1.0
min_on_hours = 2
min_off_hours = 1

[[site]]
name = "b"
power_cap_mw = 3.0
pue = 1.05
[[site.asic]]
model = "S21 Pro"
count = 600
switch_cost_usd = 0.1
min_off_hours = 2
"#;
