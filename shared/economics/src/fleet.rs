//! The fleet and site description (TOML) and the compiled model the economics work on.
//!
//! A site has a power cap at the meter (MW, PUE included), a PUE, ASIC groups (model and count)
//! and a GPU pool. Each ASIC group, and the batch/training part of the GPU pool, is one
//! switchable *unit*: it is committed (on) or curtailed (off), with a switching cost per
//! machine and minimum on/off times, and when on it runs at a power target between its
//! `min_power_fraction` and full. The real-time-inference share of the GPUs is never curtailed
//! for price: it is a fixed load that comes off the cap first.
//!
//! Assumptions kept deliberately simple (and stated): hashrate and GPU revenue scale linearly
//! with the power target; a curtailed ASIC's ~25 W standby draw is ignored; PUE is constant.

use std::path::Path;

use serde::Deserialize;

use crate::EconError;

/// The whole description: one or more `[[site]]` tables.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FleetConfig {
    /// Sites; each has its own cap and is scheduled on its own.
    pub site: Vec<SiteConfig>,
}

/// One site behind one power connection.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SiteConfig {
    /// Name for reports.
    pub name: String,
    /// Power available at the meter, MW (facility power, i.e. IT x PUE).
    pub power_cap_mw: f64,
    /// Power usage effectiveness (facility / IT energy), >= 1.
    pub pue: f64,
    /// Transmission charge set by 4CP, $ per MW-year of average load in the four coincident
    /// peaks (June to September); 0 disables 4CP.
    #[serde(default)]
    pub four_cp_usd_per_mw_year: f64,
    /// ASIC groups.
    #[serde(default)]
    pub asic: Vec<AsicConfig>,
    /// The GPU pool.
    #[serde(default)]
    pub gpu: Option<GpuConfig>,
}

/// A group of identical ASICs switched together.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AsicConfig {
    /// Model: `S21`, `S21 Pro`, `S21 XP`, or any name when `ths` and `j_per_th` are given.
    pub model: String,
    /// Machines.
    pub count: u32,
    /// Hashrate per machine, TH/s (overrides the model's).
    #[serde(default)]
    pub ths: Option<f64>,
    /// Efficiency, J/TH (overrides the model's).
    #[serde(default)]
    pub j_per_th: Option<f64>,
    /// Cost of one curtail or restart, $ per machine (wear, lost shares while ramping).
    #[serde(default)]
    pub switch_cost_usd: f64,
    /// Minimum hours on after a restart.
    #[serde(default)]
    pub min_on_hours: f64,
    /// Minimum hours off after a curtailment.
    #[serde(default)]
    pub min_off_hours: f64,
    /// Lowest power target while on, as a fraction of full power (1 = on/off only).
    #[serde(default = "one")]
    pub min_power_fraction: f64,
}

/// The GPU pool of a site.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GpuConfig {
    /// GPUs.
    pub count: u32,
    /// IT power per GPU with its share of the host, kW (PUE comes on top).
    pub power_kw: f64,
    /// Rental price, $ per GPU-hour.
    pub rental_usd_per_gpu_hour: f64,
    /// Share of GPU-hours actually sold.
    #[serde(default = "one")]
    pub utilisation: f64,
    /// Share of GPUs serving real-time inference: never curtailed for price.
    pub realtime_share: f64,
    /// Cost of pausing or resuming one batch/training GPU, $ (lost progress since the last
    /// checkpoint, reload time).
    #[serde(default)]
    pub switch_cost_usd: f64,
    /// Minimum hours running after a resume.
    #[serde(default)]
    pub min_on_hours: f64,
    /// Minimum hours paused after a pause.
    #[serde(default)]
    pub min_off_hours: f64,
    /// Lowest throttle while running, as a fraction of full power (1 = pause/run only).
    #[serde(default = "one")]
    pub min_power_fraction: f64,
}

/// True for zero, negative and NaN.
fn not_positive(x: f64) -> bool {
    x.is_nan() || x <= 0.0
}

fn one() -> f64 {
    1.0
}

/// Hashrate (TH/s) and efficiency (J/TH) of the known models.
pub fn asic_model(name: &str) -> Option<(f64, f64)> {
    let key: String = name
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .map(|c| c.to_ascii_lowercase())
        .collect();
    match key.as_str() {
        "s21" | "antminers21" => Some((200.0, 17.5)),
        "s21pro" | "antminers21pro" => Some((234.0, 15.0)),
        "s21xp" | "antminers21xp" => Some((270.0, 13.5)),
        _ => None,
    }
}

/// What a unit sells.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum UnitKind {
    /// Mining: revenue = hashprice x hashrate.
    Asic {
        /// Total hashrate at full power, TH/s.
        ths: f64,
        /// Efficiency, J/TH.
        j_per_th: f64,
    },
    /// Batch/training GPUs: revenue = sold GPU-hours x rental price.
    GpuBatch {
        /// Revenue at full power, $ per hour (GPUs x rate x utilisation).
        usd_per_hour: f64,
    },
}

/// One switchable unit of a site (an ASIC group, or the batch/training GPUs).
#[derive(Debug, Clone, PartialEq)]
pub struct Unit {
    /// Name for reports, e.g. `west-1/S21`.
    pub name: String,
    /// What it sells.
    pub kind: UnitKind,
    /// Facility power at full power target, MW (IT x PUE).
    pub mw: f64,
    /// Cost of one commitment change (on->off or off->on) of the whole unit, $.
    pub switch_cost_usd: f64,
    /// Minimum intervals on after switching on (>= 1).
    pub min_on: u32,
    /// Minimum intervals off after switching off (>= 1).
    pub min_off: u32,
    /// Lowest power target while on, fraction of full.
    pub min_level: f64,
}

impl Unit {
    /// Revenue per hour at full power for hashprice `hashprice` ($/PH/day).
    pub fn revenue_usd_per_h(&self, hashprice: f64) -> f64 {
        match self.kind {
            UnitKind::Asic { ths, .. } => hashprice / 1000.0 * ths / 24.0,
            UnitKind::GpuBatch { usd_per_hour } => usd_per_hour,
        }
    }

    /// Whether this unit mines.
    pub fn is_asic(&self) -> bool {
        matches!(self.kind, UnitKind::Asic { .. })
    }
}

/// A site as the economics see it.
#[derive(Debug, Clone, PartialEq)]
pub struct SiteModel {
    /// Name.
    pub name: String,
    /// Cap at the meter, MW.
    pub cap_mw: f64,
    /// PUE.
    pub pue: f64,
    /// 4CP charge, $ per MW-year of average load in the four peaks.
    pub cp_usd_per_mw_year: f64,
    /// Switchable units.
    pub units: Vec<Unit>,
    /// Facility MW that is never curtailed (real-time inference GPUs).
    pub fixed_mw: f64,
    /// Revenue of the fixed load, $ per hour.
    pub fixed_usd_per_h: f64,
}

impl SiteModel {
    /// MW left for the switchable units under the cap.
    pub fn available_mw(&self) -> f64 {
        self.cap_mw - self.fixed_mw
    }

    /// 4CP charge for each MW drawn during one coincident-peak interval, $.
    pub fn cp_usd_per_mw_at_peak(&self) -> f64 {
        self.cp_usd_per_mw_year / 4.0
    }
}

/// The compiled fleet.
#[derive(Debug, Clone, PartialEq)]
pub struct FleetModel {
    /// Sites.
    pub sites: Vec<SiteModel>,
    /// Interval length the minimum times were converted with, hours.
    pub dt_h: f64,
}

impl FleetConfig {
    /// Parses TOML; `name` labels errors.
    pub fn from_toml(name: &str, text: &str) -> Result<Self, EconError> {
        let cfg: Self = toml::from_str(text).map_err(|e| EconError::Fleet {
            path: name.to_owned(),
            message: e.to_string(),
        })?;
        Ok(cfg)
    }

    /// Reads and parses a TOML file.
    pub fn load(path: &Path) -> Result<Self, EconError> {
        let text = std::fs::read_to_string(path).map_err(|source| EconError::Io {
            path: path.display().to_string(),
            source,
        })?;
        Self::from_toml(&path.display().to_string(), &text)
    }

    /// Validates and compiles for intervals of `dt_h` hours; `name` labels errors.
    pub fn model(&self, name: &str, dt_h: f64) -> Result<FleetModel, EconError> {
        let bad = |message: String| EconError::Fleet {
            path: name.to_owned(),
            message,
        };
        if self.site.is_empty() {
            return Err(bad("no [[site]]".to_owned()));
        }
        if not_positive(dt_h) {
            return Err(bad(format!("interval length {dt_h} h")));
        }
        let intervals = |h: f64, what: &str, site: &str| -> Result<u32, EconError> {
            if !(0.0..=24.0 * 31.0).contains(&h) {
                return Err(bad(format!(
                    "site {site}: {what} = {h} must be between 0 and 744 hours"
                )));
            }
            // At least one interval: a decision holds for the interval it is made for.
            #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
            let n = (h / dt_h - 1e-9).ceil().max(1.0) as u32;
            Ok(n)
        };
        let mut sites = Vec::new();
        for s in &self.site {
            let sn = s.name.as_str();
            if !(1.0..3.0).contains(&s.pue) {
                return Err(bad(format!("site {sn}: pue {} must be in [1, 3)", s.pue)));
            }
            if not_positive(s.power_cap_mw) {
                return Err(bad(format!("site {sn}: power_cap_mw must be > 0")));
            }
            if !(0.0..f64::INFINITY).contains(&s.four_cp_usd_per_mw_year) {
                return Err(bad(format!(
                    "site {sn}: four_cp_usd_per_mw_year must be >= 0"
                )));
            }
            let mut units = Vec::new();
            for a in &s.asic {
                let (ths, jth) = match (a.ths, a.j_per_th, asic_model(&a.model)) {
                    (Some(t), Some(j), _) => (t, j),
                    (t, j, Some((mt, mj))) => (t.unwrap_or(mt), j.unwrap_or(mj)),
                    _ => {
                        return Err(bad(format!(
                            "site {sn}: unknown ASIC model `{}`; give ths and j_per_th, or use S21, S21 Pro, S21 XP",
                            a.model
                        )))
                    }
                };
                if not_positive(ths) || not_positive(jth) {
                    return Err(bad(format!(
                        "site {sn}: {} ths and j_per_th must be > 0",
                        a.model
                    )));
                }
                check_level(a.min_power_fraction, sn, &a.model).map_err(bad)?;
                check_cost(a.switch_cost_usd, sn, &a.model).map_err(bad)?;
                let n = f64::from(a.count);
                let it_mw = n * ths * jth / 1e6;
                units.push(Unit {
                    name: format!("{sn}/{}", a.model),
                    kind: UnitKind::Asic {
                        ths: n * ths,
                        j_per_th: jth,
                    },
                    mw: it_mw * s.pue,
                    switch_cost_usd: a.switch_cost_usd * n,
                    min_on: intervals(a.min_on_hours, "min_on_hours", sn)?,
                    min_off: intervals(a.min_off_hours, "min_off_hours", sn)?,
                    min_level: a.min_power_fraction,
                });
            }
            let (mut fixed_mw, mut fixed_usd_per_h) = (0.0, 0.0);
            if let Some(g) = &s.gpu {
                if !(0.0..=1.0).contains(&g.realtime_share) || !(0.0..=1.0).contains(&g.utilisation)
                {
                    return Err(bad(format!(
                        "site {sn}: gpu realtime_share and utilisation must be in [0, 1]"
                    )));
                }
                if not_positive(g.power_kw)
                    || !(0.0..f64::INFINITY).contains(&g.rental_usd_per_gpu_hour)
                {
                    return Err(bad(format!(
                        "site {sn}: gpu power_kw must be > 0 and rental >= 0"
                    )));
                }
                check_level(g.min_power_fraction, sn, "gpu").map_err(bad)?;
                check_cost(g.switch_cost_usd, sn, "gpu").map_err(bad)?;
                let n = f64::from(g.count);
                let rt = n * g.realtime_share;
                let batch = n - rt;
                let per_gpu_usd_h = g.rental_usd_per_gpu_hour * g.utilisation;
                fixed_mw = rt * g.power_kw / 1000.0 * s.pue;
                fixed_usd_per_h = rt * per_gpu_usd_h;
                if batch > 0.0 {
                    units.push(Unit {
                        name: format!("{sn}/gpu-batch"),
                        kind: UnitKind::GpuBatch {
                            usd_per_hour: batch * per_gpu_usd_h,
                        },
                        mw: batch * g.power_kw / 1000.0 * s.pue,
                        switch_cost_usd: g.switch_cost_usd * batch,
                        min_on: intervals(g.min_on_hours, "gpu min_on_hours", sn)?,
                        min_off: intervals(g.min_off_hours, "gpu min_off_hours", sn)?,
                        min_level: g.min_power_fraction,
                    });
                }
            }
            if fixed_mw > s.power_cap_mw {
                return Err(bad(format!(
                    "site {sn}: real-time GPUs alone need {fixed_mw:.3} MW, above the {} MW cap",
                    s.power_cap_mw
                )));
            }
            sites.push(SiteModel {
                name: s.name.clone(),
                cap_mw: s.power_cap_mw,
                pue: s.pue,
                cp_usd_per_mw_year: s.four_cp_usd_per_mw_year,
                units,
                fixed_mw,
                fixed_usd_per_h,
            });
        }
        Ok(FleetModel { sites, dt_h })
    }
}

fn check_level(f: f64, site: &str, what: &str) -> Result<(), String> {
    if f > 0.0 && f <= 1.0 {
        Ok(())
    } else {
        Err(format!(
            "site {site}: {what} min_power_fraction {f} must be in (0, 1]"
        ))
    }
}

fn check_cost(c: f64, site: &str, what: &str) -> Result<(), String> {
    if c >= 0.0 && c.is_finite() {
        Ok(())
    } else {
        Err(format!(
            "site {site}: {what} switch_cost_usd {c} must be >= 0"
        ))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    const TWO_SITES: &str = r#"
[[site]]
name = "a"
power_cap_mw = 10.0
pue = 1.1
[[site.asic]]
model = "S21 XP"
count = 1000
switch_cost_usd = 0.1
min_on_hours = 2
min_off_hours = 0.5
[site.gpu]
count = 100
power_kw = 1.0
rental_usd_per_gpu_hour = 2.0
utilisation = 0.5
realtime_share = 0.25

[[site]]
name = "b"
power_cap_mw = 5.0
pue = 1.0
[[site.asic]]
model = "custom"
count = 10
ths = 100
j_per_th = 20
"#;

    #[test]
    fn a_fleet_description_compiles_to_units_with_facility_power() {
        let m = FleetConfig::from_toml("t", TWO_SITES)
            .unwrap()
            .model("t", 1.0)
            .unwrap();
        let a = &m.sites[0];
        // 1000 x 270 TH/s x 13.5 J/TH = 3.645 MW IT, x 1.1 PUE.
        assert!((a.units[0].mw - 3.645 * 1.1).abs() < 1e-9);
        assert_eq!(a.units[0].switch_cost_usd, 100.0);
        assert_eq!((a.units[0].min_on, a.units[0].min_off), (2, 1));
        // 25 real-time GPUs are fixed load, 75 batch GPUs are a unit.
        assert!((a.fixed_mw - 0.025 * 1.1).abs() < 1e-12);
        assert!((a.fixed_usd_per_h - 25.0).abs() < 1e-12);
        assert_eq!(a.units[1].kind, UnitKind::GpuBatch { usd_per_hour: 75.0 });
        assert!((m.sites[1].units[0].mw - 0.02).abs() < 1e-12);
    }

    #[test]
    fn unknown_models_and_fields_are_rejected_with_the_reason() {
        let err = FleetConfig::from_toml(
            "t",
            "[[site]]\nname='x'\npower_cap_mw=1\npue=1\n[[site.asic]]\nmodel='S9'\ncount=1\n",
        )
        .unwrap()
        .model("t", 1.0)
        .unwrap_err()
        .to_string();
        assert!(err.contains("unknown ASIC model `S9`"), "{err}");
        let err = FleetConfig::from_toml("t", "[[site]]\nname='x'\npower_cap_mw=1\npue=1\ncap=2\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown field `cap`"), "{err}");
    }
}
