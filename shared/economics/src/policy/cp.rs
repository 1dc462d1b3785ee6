//! 4CP peak prediction from the system load seen so far.
//!
//! ERCOT sets a year's transmission charges from a site's load in the single highest system-load
//! interval of each of June, July, August and September. The month's peak is, when it happens,
//! the highest load of the month so far, so an alert on "a new monthly high that is also near
//! the recent maximum" catches every peak of hourly data and raises few false alarms. Both
//! conditions use only the past and present. The parameters are physical/tariff knobs, not
//! values fitted to a particular year.

use time::Month;

use crate::trace::Observation;

/// Parameters of the 4CP alert.
#[derive(Debug, Clone, Copy)]
pub struct CpParams {
    /// Alert only if the load is at least this fraction of the highest load of the lookback.
    pub near_max_fraction: f64,
    /// Lookback for that maximum, days.
    pub lookback_days: f64,
}

impl Default for CpParams {
    fn default() -> Self {
        // A false alarm costs one interval of margin (tens of $/MW for ASICs), a missed peak costs
        // a quarter of the yearly charge (thousands of $/MW): alert generously.
        Self {
            near_max_fraction: 0.95,
            lookback_days: 30.0,
        }
    }
}

/// Whether `obs` falls in a 4CP month (June to September, UTC month).
pub fn is_cp_month(obs: &Observation) -> bool {
    matches!(
        obs.time().month(),
        Month::June | Month::July | Month::August | Month::September
    )
}

/// Incremental alert flags for every observation seen so far, and an estimate of the chance
/// that an alert is the month's peak.
#[derive(Debug, Clone, Default)]
pub struct CpWatch {
    params: CpParams,
    flags: Vec<bool>,
    month_key: Option<(i32, u8)>,
    month_max: f64,
    month_alerts: u32,
    month_is_cp: bool,
    month_len: u32,
    past_alerts: u32,
    past_peaks: u32,
    interval_h: f64,
}

impl CpWatch {
    /// A watch with `params`.
    pub fn new(params: CpParams) -> Self {
        Self {
            params,
            flags: Vec::new(),
            month_key: None,
            month_max: f64::NEG_INFINITY,
            month_alerts: 0,
            month_is_cp: false,
            month_len: 0,
            past_alerts: 0,
            past_peaks: 0,
            interval_h: 1.0,
        }
    }

    /// Probability that an alert interval is the month's peak: realised peaks over alerts in
    /// the completed 4CP months seen so far, with a prior of one peak per `H_N` alerts, `H_N`
    /// being the expected number of running maxima ("records") among the N intervals of a month
    /// of exchangeable loads (about 7 for hourly data). Learned from the past only.
    pub fn peak_probability(&self) -> f64 {
        #[allow(clippy::cast_precision_loss)]
        let n = (30.0 * 24.0 / self.interval_h.max(1e-6)).max(2.0);
        let records = n.ln() + 0.577_215_664_9;
        (f64::from(self.past_peaks) + 1.0) / (f64::from(self.past_alerts) + records)
    }

    /// Extends the flags to cover `past` (which only ever grows) and returns them.
    pub fn update(&mut self, past: &[Observation]) -> &[bool] {
        if past.len() < self.flags.len() {
            *self = Self::new(self.params);
        }
        for k in self.flags.len()..past.len() {
            let o = &past[k];
            let t = o.time();
            let key = (t.year(), u8::from(t.month()));
            self.interval_h = o.dt_h;
            if self.month_key != Some(key) {
                // Close the month: every completed 4CP month with load data had exactly one peak,
                // and the alerts always include it (the peak is a new monthly high).
                if self.month_is_cp && self.month_max.is_finite() && self.month_len > 0 {
                    self.past_peaks += 1;
                    self.past_alerts += self.month_alerts.max(1);
                }
                self.month_key = Some(key);
                self.month_max = f64::NEG_INFINITY;
                self.month_alerts = 0;
                self.month_len = 0;
                self.month_is_cp = is_cp_month(o);
            }
            self.month_len += 1;
            let flag = match o.system_load_mw {
                Some(load) if is_cp_month(o) => {
                    let new_high = load >= self.month_max;
                    #[allow(clippy::cast_precision_loss)]
                    let horizon = o.ts - (self.params.lookback_days * 86_400.0) as i64;
                    let recent_max = past[..k]
                        .iter()
                        .rev()
                        .take_while(|p| p.ts >= horizon)
                        .filter_map(|p| p.system_load_mw)
                        .fold(f64::NEG_INFINITY, f64::max);
                    new_high && load >= self.params.near_max_fraction * recent_max
                }
                _ => false,
            };
            if let Some(load) = o.system_load_mw {
                self.month_max = self.month_max.max(load);
            }
            self.month_alerts += u32::from(flag);
            self.flags.push(flag);
        }
        &self.flags
    }
}

/// Realised 4CP peaks in `obs`: the highest-load interval of each June..September month that is
/// complete in `obs` (a later month has started), or of every such month if `include_open`.
pub fn realised_peaks(obs: &[Observation], include_open: bool) -> Vec<bool> {
    let mut flags = vec![false; obs.len()];
    let mut start = 0;
    while start < obs.len() {
        let t0 = obs[start].time();
        let key = (t0.year(), t0.month());
        let mut end = start;
        while end < obs.len() {
            let t = obs[end].time();
            if (t.year(), t.month()) != key {
                break;
            }
            end += 1;
        }
        let complete = end < obs.len();
        if (complete || include_open) && is_cp_month(&obs[start]) {
            let peak = (start..end)
                .filter_map(|i| obs[i].system_load_mw.map(|l| (i, l)))
                .max_by(|a, b| a.1.total_cmp(&b.1));
            if let Some((i, _)) = peak {
                flags[i] = true;
            }
        }
        start = end;
    }
    flags
}
