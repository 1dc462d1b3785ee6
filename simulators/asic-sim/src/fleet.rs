//! The fleet's state as flat arrays (one entry per device), so that a tick over 250,000
//! machines is a few tight passes. Pure: time is passed in (simulated Unix seconds), the RNG is
//! seeded, nothing here does I/O.
//!
//! Physics, kept simple and stated:
//! - target power = fraction x nameplate while running, 25 W (idle) when curtailed or
//!   overheated, 2/3 of that with a failed hash board (one of three), 0 W when offline;
//! - power ramps to the target, linearly over the configured ramp time for the whole span, or
//!   first order with time constant ramp / 5 (snapping within 1% of the span): either way a
//!   full curtail takes `curtail_ramp_s` and a full resume `resume_ramp_s`;
//! - hashrate = TH/s x (power - idle) / (nameplate - idle), so it scales with power;
//! - temperature relaxes (first order) toward ambient + (full-load rise x power / nameplate);
//! - accepted shares follow hashrate at the pool's share difficulty; hardware errors are a
//!   small share of them (20x with a failed board);
//! - faults (overheat, hash board failure, offline) strike at per-device hourly rates and heal
//!   after fixed times.

use std::sync::Arc;

use hcp_events::payload::{AsicAction, AsicSample, AsicState};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::layout::Layout;

/// How power moves toward its target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RampKind {
    /// Constant rate: the whole span in the ramp time.
    #[default]
    Linear,
    /// Exponential approach with time constant ramp / 5.
    FirstOrder,
}

/// Physics and fault parameters.
#[derive(Debug, Clone, PartialEq)]
pub struct SimParams {
    /// Ramp shape.
    pub ramp: RampKind,
    /// Full power to idle, seconds (the design asks for under 5).
    pub curtail_ramp_s: f64,
    /// Idle to full power, seconds (the design asks for under 10).
    pub resume_ramp_s: f64,
    /// Curtailed (idle) power, W.
    pub idle_w: f64,
    /// Ambient (intake) temperature, C.
    pub ambient_c: f64,
    /// Temperature rise at full power, C.
    pub full_load_rise_c: f64,
    /// Thermal time constant, s.
    pub thermal_tau_s: f64,
    /// Overheats per device-hour.
    pub overheat_per_hour: f64,
    /// Hash board failures per device-hour.
    pub board_failure_per_hour: f64,
    /// Drop-outs per device-hour.
    pub offline_per_hour: f64,
    /// Cool-down after an overheat, s.
    pub overheat_recovery_s: f64,
    /// Time to repair a hash board, s.
    pub board_repair_s: f64,
    /// Time a dropped-out device stays offline, s.
    pub offline_s: f64,
    /// Pool share difficulty.
    pub share_difficulty: f64,
    /// Hardware errors per share.
    pub hw_errors_per_share: f64,
    /// RNG seed.
    pub seed: u64,
}

impl Default for SimParams {
    fn default() -> Self {
        Self {
            ramp: RampKind::Linear,
            curtail_ramp_s: 3.0,
            resume_ramp_s: 8.0,
            idle_w: 25.0,
            ambient_c: 30.0,
            full_load_rise_c: 45.0,
            thermal_tau_s: 60.0,
            overheat_per_hour: 1e-4,
            board_failure_per_hour: 2e-5,
            offline_per_hour: 5e-5,
            overheat_recovery_s: 600.0,
            board_repair_s: 4.0 * 3600.0,
            offline_s: 900.0,
            share_difficulty: 65_536.0,
            hw_errors_per_share: 0.002,
            seed: 1,
        }
    }
}

impl SimParams {
    /// No faults at all (tests of ramps and commands).
    pub fn without_faults(mut self) -> Self {
        self.overheat_per_hour = 0.0;
        self.board_failure_per_hour = 0.0;
        self.offline_per_hour = 0.0;
        self
    }
}

/// A device's fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Fault {
    /// Healthy.
    None = 0,
    /// Thermal protection: idles until cool.
    Overheat = 1,
    /// One of three hash boards failed.
    HashBoard = 2,
    /// Not reporting.
    Offline = 3,
}

impl Fault {
    fn from_u8(v: u8) -> Self {
        match v {
            1 => Fault::Overheat,
            2 => Fault::HashBoard,
            3 => Fault::Offline,
            _ => Fault::None,
        }
    }

    /// Metric label.
    pub const fn as_str(self) -> &'static str {
        match self {
            Fault::None => "none",
            Fault::Overheat => "overheat",
            Fault::HashBoard => "hash_board",
            Fault::Offline => "offline",
        }
    }
}

/// Which devices a command addresses, resolved against the layout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// Every device of a site.
    Site(u16),
    /// Every device of one model at a site.
    Model(u16, u8),
    /// These racks.
    Racks(Vec<u32>),
    /// These devices.
    Devices(Vec<u32>),
}

/// The state labels in [`AsicState`] order, for per-state sums.
pub const STATES: [AsicState; 5] = AsicState::ALL;

/// Index of a state in [`STATES`].
pub const fn state_index(s: AsicState) -> usize {
    s.index()
}

/// Per-site totals of one tick.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct SiteSummary {
    /// Power by state ([`STATES`] order), W.
    pub power_w_by_state: [f64; 5],
    /// Devices by state.
    pub devices_by_state: [u32; 5],
    /// Hashrate, TH/s.
    pub hashrate_ths: f64,
}

impl SiteSummary {
    /// Total power, W.
    pub fn power_w(&self) -> f64 {
        self.power_w_by_state.iter().sum()
    }
}

/// The fleet's mutable state.
#[derive(Debug)]
pub struct Fleet {
    layout: Arc<Layout>,
    params: SimParams,
    rng: StdRng,
    /// Simulated time of the last advance, Unix seconds.
    t: f64,
    /// Time of the last sample (shares and errors accumulate over it).
    last_sample_t: f64,
    fraction: Vec<f32>,
    curtailed: Vec<bool>,
    power: Vec<f32>,
    temp: Vec<f32>,
    fault: Vec<u8>,
    fault_until: Vec<f64>,
    nameplate: Vec<f32>,
}

impl Fleet {
    /// Every device hashing at full power and steady temperature at time `t`.
    pub fn new(layout: Arc<Layout>, params: SimParams, t: f64) -> Self {
        let n = layout.len();
        let per_model: Vec<f32> = layout
            .models
            .iter()
            .map(|m| m.nameplate_w() as f32)
            .collect();
        let nameplate: Vec<f32> = layout
            .model_of
            .iter()
            .map(|&m| per_model.get(usize::from(m)).copied().unwrap_or(0.0))
            .collect();
        let full_temp = (params.ambient_c + params.full_load_rise_c) as f32;
        Self {
            rng: StdRng::seed_from_u64(params.seed),
            t,
            last_sample_t: t,
            fraction: vec![1.0; n],
            curtailed: vec![false; n],
            power: nameplate.clone(),
            temp: vec![full_temp; n],
            fault: vec![0; n],
            fault_until: vec![0.0; n],
            nameplate,
            layout,
            params,
        }
    }

    /// The layout.
    pub fn layout(&self) -> &Arc<Layout> {
        &self.layout
    }

    /// Simulated time of the last advance.
    pub fn time(&self) -> f64 {
        self.t
    }

    /// Device indices a target covers.
    fn indices(&self, target: &Target) -> Vec<usize> {
        let l = &self.layout;
        match target {
            Target::Site(s) => (0..l.len()).filter(|&i| l.site_of[i] == *s).collect(),
            Target::Model(s, m) => (0..l.len())
                .filter(|&i| l.site_of[i] == *s && l.model_of[i] == *m)
                .collect(),
            Target::Racks(rs) => rs
                .iter()
                .filter_map(|&r| l.racks.get(r as usize))
                .flat_map(|r| (r.start as usize)..(r.start + r.len) as usize)
                .collect(),
            Target::Devices(ds) => ds
                .iter()
                .map(|&d| d as usize)
                .filter(|&d| d < l.len())
                .collect(),
        }
    }

    /// Applies a command at time `t` (the fleet is first advanced to `t`). Returns how many
    /// devices it addressed.
    pub fn apply(&mut self, t: f64, target: &Target, action: &AsicAction) -> usize {
        self.advance(t);
        let idx = self.indices(target);
        for &i in &idx {
            match action {
                AsicAction::PowerTarget { fraction } => {
                    // An explicit power target means "run at this level", curtailed or not.
                    self.fraction[i] = fraction.clamp(0.0, 1.0) as f32;
                    self.curtailed[i] = false;
                }
                AsicAction::Curtail => self.curtailed[i] = true,
                AsicAction::Resume => self.curtailed[i] = false,
            }
        }
        idx.len()
    }

    fn target_w(&self, i: usize) -> f32 {
        let idle = self.params.idle_w as f32;
        match Fault::from_u8(self.fault[i]) {
            Fault::Offline => 0.0,
            Fault::Overheat => idle,
            f => {
                if self.curtailed[i] {
                    idle
                } else {
                    let full = (self.nameplate[i] * self.fraction[i]).max(idle);
                    if f == Fault::HashBoard {
                        (full * 2.0 / 3.0).max(idle)
                    } else {
                        full
                    }
                }
            }
        }
    }

    /// Advances power and temperature to time `t` and heals faults whose time is up.
    pub fn advance(&mut self, t: f64) {
        let dt = t - self.t;
        if dt <= 0.0 {
            return;
        }
        self.t = t;
        let p = &self.params;
        let idle = p.idle_w as f32;
        let thermal = (1.0 - (-dt / p.thermal_tau_s.max(1e-3)).exp()) as f32;
        let ambient = p.ambient_c as f32;
        let rise = p.full_load_rise_c as f32;
        let (down_s, up_s) = (p.curtail_ramp_s.max(1e-3), p.resume_ramp_s.max(1e-3));
        let kind = p.ramp;
        let (k_down, k_up) = (
            (1.0 - (-dt * 5.0 / down_s).exp()) as f32,
            (1.0 - (-dt * 5.0 / up_s).exp()) as f32,
        );
        let dtf = dt as f32;
        for i in 0..self.power.len() {
            if self.fault[i] != 0 && self.fault_until[i] <= t {
                if self.fault[i] == Fault::Offline as u8 {
                    // Back from a drop-out: it boots to idle and ramps from there.
                    self.power[i] = idle;
                }
                self.fault[i] = 0;
            }
            let target = self.target_w(i);
            let span = (self.nameplate[i] - idle).max(1.0);
            let cur = self.power[i];
            let diff = target - cur;
            let next = if self.fault[i] == Fault::Offline as u8 {
                0.0
            } else {
                match kind {
                    RampKind::Linear => {
                        let rate = if diff < 0.0 {
                            span / down_s as f32
                        } else {
                            span / up_s as f32
                        };
                        let step = rate * dtf;
                        if diff.abs() <= step {
                            target
                        } else {
                            cur + step.copysign(diff)
                        }
                    }
                    RampKind::FirstOrder => {
                        let k = if diff < 0.0 { k_down } else { k_up };
                        let v = cur + diff * k;
                        if (target - v).abs() <= 0.01 * span {
                            target
                        } else {
                            v
                        }
                    }
                }
            };
            self.power[i] = next;
            let eq = ambient + rise * next / self.nameplate[i].max(1.0);
            self.temp[i] += (eq - self.temp[i]) * thermal;
        }
    }

    /// Draws new faults for the `dt` seconds before the current time. Returns how many of each
    /// kind struck (overheat, hash board, offline).
    pub fn inject_faults(&mut self, dt: f64) -> [u32; 3] {
        let n = self.power.len();
        let mut struck = [0; 3];
        let kinds = [
            (
                Fault::Overheat,
                self.params.overheat_per_hour,
                self.params.overheat_recovery_s,
            ),
            (
                Fault::HashBoard,
                self.params.board_failure_per_hour,
                self.params.board_repair_s,
            ),
            (
                Fault::Offline,
                self.params.offline_per_hour,
                self.params.offline_s,
            ),
        ];
        for (k, (fault, per_hour, heal_s)) in kinds.into_iter().enumerate() {
            #[allow(clippy::cast_precision_loss)]
            let lambda = n as f64 * per_hour * dt / 3600.0;
            for _ in 0..poisson(&mut self.rng, lambda) {
                let i = self.rng.random_range(0..n);
                if self.fault[i] != 0 {
                    continue;
                }
                self.fault[i] = fault as u8;
                self.fault_until[i] = self.t + heal_s;
                match fault {
                    Fault::Overheat => self.temp[i] = (self.params.ambient_c + 65.0) as f32,
                    Fault::Offline => self.power[i] = 0.0,
                    _ => {}
                }
                struck[k] += 1;
            }
        }
        struck
    }

    /// A device's state now.
    pub fn state(&self, i: usize) -> AsicState {
        match Fault::from_u8(self.fault[i]) {
            Fault::Offline => AsicState::Offline,
            Fault::Overheat | Fault::HashBoard => AsicState::Fault,
            Fault::None => {
                let target = self.target_w(i);
                if (self.power[i] - target).abs() > 0.5 {
                    AsicState::Ramping
                } else if self.curtailed[i] {
                    AsicState::Curtailed
                } else {
                    AsicState::Hashing
                }
            }
        }
    }

    /// A device's hashrate now, TH/s.
    pub fn hashrate_ths(&self, i: usize) -> f64 {
        let idle = self.params.idle_w as f32;
        let span = (self.nameplate[i] - idle).max(1.0);
        let share = ((self.power[i] - idle) / span).clamp(0.0, 1.0);
        let ths = self
            .layout
            .models
            .get(usize::from(self.layout.model_of[i]))
            .map_or(0.0, |m| m.ths);
        ths * f64::from(share)
    }

    /// A device's power now, W.
    pub fn power_w(&self, i: usize) -> f64 {
        f64::from(self.power[i])
    }

    /// A device's fault.
    pub fn fault(&self, i: usize) -> Fault {
        Fault::from_u8(self.fault[i])
    }

    /// Totals per site, now.
    pub fn summary(&self) -> Vec<SiteSummary> {
        let mut out = vec![SiteSummary::default(); self.layout.sites.len()];
        for i in 0..self.power.len() {
            if let Some(s) = out.get_mut(usize::from(self.layout.site_of[i])) {
                let k = state_index(self.state(i));
                s.power_w_by_state[k] += f64::from(self.power[i]);
                s.devices_by_state[k] += 1;
                s.hashrate_ths += self.hashrate_ths(i);
            }
        }
        out
    }

    /// One rack's samples now (offline devices do not report), with shares and hardware errors
    /// since the last sample. Call [`Fleet::mark_sampled`] after the last rack.
    pub fn rack_samples(&mut self, rack: usize) -> Vec<AsicSample> {
        let Some(r) = self.layout.racks.get(rack).cloned() else {
            return Vec::new();
        };
        let dt = (self.t - self.last_sample_t).max(0.0);
        let per_th = 1e12 * dt / (self.params.share_difficulty * 4_294_967_296.0);
        let model = self
            .layout
            .models
            .get(usize::from(r.model))
            .map(|m| m.name.clone())
            .unwrap_or_default();
        let mut out = Vec::with_capacity(r.len as usize);
        for i in (r.start as usize)..((r.start + r.len) as usize) {
            let state = self.state(i);
            if state == AsicState::Offline {
                continue;
            }
            let hashrate = self.hashrate_ths(i);
            let shares_expected = hashrate * per_th;
            let err_factor = if self.fault[i] == Fault::HashBoard as u8 {
                20.0
            } else {
                1.0
            };
            let hw_expected = shares_expected * self.params.hw_errors_per_share * err_factor;
            let u1: f64 = self.rng.random();
            let u2: f64 = self.rng.random();
            #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
            out.push(AsicSample {
                asic_id: self.layout.ids[i].clone(),
                model: model.clone(),
                state,
                hashrate_ths: round2(hashrate),
                power_w: round2(f64::from(self.power[i])),
                power_target_w: round2(f64::from(self.target_w(i))),
                temperature_c: round2(f64::from(self.temp[i])),
                hw_errors: (hw_expected + u1).floor() as u32,
                accepted_shares: (shares_expected + u2).floor() as u32,
            });
        }
        out
    }

    /// Starts the next accumulation period of shares and errors.
    pub fn mark_sampled(&mut self) {
        self.last_sample_t = self.t;
    }
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

/// A Poisson draw (Knuth for small means, a rounded normal for large ones).
fn poisson(rng: &mut impl Rng, lambda: f64) -> u32 {
    if lambda.is_nan() || lambda <= 0.0 {
        return 0;
    }
    if lambda > 30.0 {
        let u1: f64 = rng.random::<f64>().max(f64::MIN_POSITIVE);
        let u2: f64 = rng.random();
        let z = (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos();
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        return (lambda + z * lambda.sqrt()).round().max(0.0) as u32;
    }
    let l = (-lambda).exp();
    let mut k = 0;
    let mut p = 1.0;
    loop {
        p *= rng.random::<f64>();
        if p <= l {
            return k;
        }
        k += 1;
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::cast_precision_loss)]
    use super::*;
    use crate::layout::{sites_from_counts, Layout};

    const T0: f64 = 1_700_000_000.0;

    fn fleet(n: u32, params: SimParams) -> Fleet {
        let l = Arc::new(Layout::build(&sites_from_counts(1, n), 100).unwrap());
        Fleet::new(l, params, T0)
    }

    fn site_power(f: &Fleet) -> f64 {
        f.summary()[0].power_w()
    }

    fn nameplate(f: &Fleet) -> f64 {
        f.layout().site_nameplate_w()[0]
    }

    /// Ticks at 1 s from `from` and returns the first time (seconds after `from`) at which
    /// `done` holds.
    fn seconds_until(f: &mut Fleet, from: f64, done: impl Fn(&Fleet) -> bool) -> Option<u32> {
        (1..=60).find(|&s| {
            f.advance(from + f64::from(s));
            done(f)
        })
    }

    #[test]
    fn each_model_draws_its_nameplate_power_and_hashes_at_its_rating() {
        let f = fleet(3, SimParams::default().without_faults());
        let expect = [
            ("S21", 200.0, 3500.0),
            ("S21 Pro", 234.0, 3510.0),
            ("S21 XP", 270.0, 3645.0),
        ];
        for (i, (name, ths, w)) in expect.iter().enumerate() {
            assert_eq!(
                f.layout().models[f.layout().model_of[i] as usize].name,
                *name
            );
            assert!((f.power_w(i) - w).abs() < 0.01, "{name} {}", f.power_w(i));
            assert!((f.hashrate_ths(i) - ths).abs() < 1e-9, "{name}");
            assert_eq!(f.state(i), AsicState::Hashing);
        }
    }

    #[test]
    fn a_curtail_reaches_idle_within_five_seconds_and_a_resume_full_power_within_ten() {
        for ramp in [RampKind::Linear, RampKind::FirstOrder] {
            let mut f = fleet(
                300,
                SimParams {
                    ramp,
                    ..SimParams::default().without_faults()
                },
            );
            let n = f.layout().len() as f64;
            let full = nameplate(&f);
            assert!((site_power(&f) - full).abs() < 1.0);
            f.apply(T0 + 0.3, &Target::Site(0), &AsicAction::Curtail);
            f.advance(T0 + 1.3);
            assert!(
                site_power(&f) < full && site_power(&f) > 25.0 * n,
                "{ramp:?} ramps, not jumps"
            );
            let s = seconds_until(&mut f, T0 + 0.3, |f| site_power(f) <= 25.0 * n + 1e-6).unwrap();
            assert!(s <= 5, "{ramp:?}: curtailed after {s} s");
            assert!(f.summary()[0].hashrate_ths < 1e-9);
            assert_eq!(
                f.summary()[0].devices_by_state[state_index(AsicState::Curtailed)],
                300
            );
            let t1 = f.time();
            f.apply(t1, &Target::Site(0), &AsicAction::Resume);
            let s = seconds_until(&mut f, t1, |f| site_power(f) >= full - 1e-3).unwrap();
            assert!((5..=10).contains(&s), "{ramp:?}: full after {s} s");
        }
    }

    #[test]
    fn a_power_target_scales_power_and_hashrate_and_curtail_then_resume_returns_to_it() {
        let mut f = fleet(3, SimParams::default().without_faults());
        f.apply(
            T0,
            &Target::Site(0),
            &AsicAction::PowerTarget { fraction: 0.5 },
        );
        f.advance(T0 + 20.0);
        let xp = 2; // S21 XP
        assert!((f.power_w(xp) - 1822.5).abs() < 0.01);
        let expect = 270.0 * (1822.5 - 25.0) / (3645.0 - 25.0);
        assert!((f.hashrate_ths(xp) - expect).abs() < 1e-3);
        f.apply(T0 + 21.0, &Target::Site(0), &AsicAction::Curtail);
        f.advance(T0 + 40.0);
        assert!((f.power_w(xp) - 25.0).abs() < 1e-3);
        f.apply(T0 + 41.0, &Target::Site(0), &AsicAction::Resume);
        f.advance(T0 + 60.0);
        assert!(
            (f.power_w(xp) - 1822.5).abs() < 0.01,
            "back to the last target, not full"
        );
    }

    #[test]
    fn scopes_reach_only_their_racks_models_and_devices() {
        let mut f = fleet(900, SimParams::default().without_faults());
        let l = f.layout().clone();
        let xp = l.model_index("S21 XP").unwrap();
        assert_eq!(
            f.apply(T0, &Target::Model(0, xp), &AsicAction::Curtail),
            300
        );
        assert_eq!(
            f.apply(T0, &Target::Racks(vec![0]), &AsicAction::Curtail),
            100
        );
        assert_eq!(
            f.apply(T0, &Target::Devices(vec![150, 151]), &AsicAction::Curtail),
            2
        );
        f.advance(T0 + 30.0);
        for i in 0..l.len() {
            let expect = l.model_of[i] == xp || l.rack_of[i] == 0 || i == 150 || i == 151;
            assert_eq!(f.state(i) == AsicState::Curtailed, expect, "device {i}");
        }
    }

    #[test]
    fn faults_strike_at_the_configured_rate_reproducibly_and_heal() {
        let params = SimParams {
            overheat_per_hour: 0.5,
            board_failure_per_hour: 0.2,
            offline_per_hour: 0.1,
            overheat_recovery_s: 60.0,
            board_repair_s: 60.0,
            offline_s: 60.0,
            ..SimParams::default()
        };
        let run = || {
            let mut f = fleet(2000, params.clone());
            let mut struck = [0; 3];
            for s in 1..=10 {
                f.advance(T0 + f64::from(s));
                let k = f.inject_faults(1.0);
                for j in 0..3 {
                    struck[j] += k[j];
                }
            }
            (f, struck)
        };
        let (mut f, struck) = run();
        let (_, again) = run();
        assert_eq!(struck, again, "same seed, same faults");
        // 2000 devices x 10 s: expected 2.8 overheats, 1.1 board failures, 0.6 drop-outs,
        // so sum over many seeds instead of one: here check the total is plausible and faults
        // show in the states.
        let faulted = (0..2000).filter(|&i| f.fault(i) != Fault::None).count() as u32;
        assert_eq!(faulted, struck.iter().sum::<u32>());
        let mut hits = [0u32; 3];
        for seed in 0..200 {
            let mut g = fleet(
                2000,
                SimParams {
                    seed,
                    ..params.clone()
                },
            );
            g.advance(T0 + 10.0);
            let k = g.inject_faults(10.0);
            for j in 0..3 {
                hits[j] += k[j];
            }
        }
        let expected = [0.5, 0.2, 0.1].map(|r| 200.0 * 2000.0 * r * 10.0 / 3600.0);
        for j in 0..3 {
            let h = f64::from(hits[j]);
            assert!(
                (h - expected[j]).abs() < 4.0 * expected[j].sqrt() + 2.0,
                "kind {j}: {h} vs {}",
                expected[j]
            );
        }
        // A minute later everything has healed and ramped back.
        f.advance(T0 + 80.0);
        f.advance(T0 + 100.0);
        assert!((0..2000).all(|i| f.fault(i) == Fault::None));
        assert!((site_power(&f) - nameplate(&f)).abs() < 1.0);
    }

    #[test]
    fn samples_report_shares_in_proportion_to_hashrate_and_skip_offline_devices() {
        let mut f = fleet(300, SimParams::default().without_faults());
        f.advance(T0 + 60.0);
        let samples = f.rack_samples(0);
        f.mark_sampled();
        assert_eq!(samples.len(), 100);
        let shares: u32 = samples.iter().map(|s| s.accepted_shares).sum();
        let expected: f64 = samples
            .iter()
            .map(|s| s.hashrate_ths * 1e12 * 60.0 / (65_536.0 * 4_294_967_296.0))
            .sum();
        assert!(
            (f64::from(shares) - expected).abs() < 0.02 * expected + 50.0,
            "{shares} vs {expected}"
        );
        f.fault[5] = Fault::Offline as u8;
        f.fault_until[5] = T0 + 1e6;
        assert_eq!(f.rack_samples(0).len(), 99);
    }
}
