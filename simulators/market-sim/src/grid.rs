//! Grid signals: demand-response requests (from a schedule, and optionally at random during
//! price spikes) and 4CP peak warnings derived only from the system load seen so far.

use rand::Rng;
use time::OffsetDateTime;

/// A scheduled demand-response request, parsed from `TIME:MW:RESPOND:DURATION`, e.g.
/// `2023-08-10T20:00Z:10MW:60s:30m`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DrSpec {
    /// When it is issued, Unix seconds.
    pub at: i64,
    /// Megawatts to shed.
    pub curtail_mw: f64,
    /// Seconds allowed to reach the reduced load.
    pub respond_within_s: u32,
    /// How long the reduction must hold, seconds.
    pub duration_s: u32,
}

/// A flag value that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid demand-response spec `{spec}`: {reason} (expected e.g. 2023-08-10T20:00Z:10MW:60s:30m)")]
pub struct DrSpecError {
    spec: String,
    reason: String,
}

/// Parses a duration: `90`, `90s`, `30m`, `2h`.
pub fn parse_duration_s(s: &str) -> Option<u32> {
    let s = s.trim();
    let (num, mult) = if let Some(n) = s.strip_suffix('h') {
        (n, 3600.0)
    } else if let Some(n) = s.strip_suffix('m') {
        (n, 60.0)
    } else if let Some(n) = s.strip_suffix('s') {
        (n, 1.0)
    } else {
        (s, 1.0)
    };
    let v: f64 = num.trim().parse().ok()?;
    let secs = v * mult;
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    (secs.is_finite() && secs > 0.0 && secs <= f64::from(u32::MAX)).then(|| secs.round() as u32)
}

/// Parses a time: RFC 3339, or `YYYY-MM-DDTHH:MMZ`, or what
/// [`hcp_economics::trace::parse_timestamp`] accepts.
pub fn parse_time(s: &str) -> Option<i64> {
    let s = s.trim();
    if let Some(t) = hcp_economics::trace::parse_timestamp(s) {
        return Some(t);
    }
    // `2023-08-10T20:00Z`: add the seconds.
    let body = s.strip_suffix('Z')?;
    hcp_economics::trace::parse_timestamp(&format!("{body}:00Z"))
}

impl std::str::FromStr for DrSpec {
    type Err = DrSpecError;

    fn from_str(spec: &str) -> Result<Self, Self::Err> {
        let err = |reason: &str| DrSpecError {
            spec: spec.to_owned(),
            reason: reason.to_owned(),
        };
        // The time itself contains colons: split the three last fields off the right.
        let mut parts = spec.rsplitn(4, ':');
        let duration = parts.next().ok_or_else(|| err("missing duration"))?;
        let respond = parts.next().ok_or_else(|| err("missing response time"))?;
        let mw = parts.next().ok_or_else(|| err("missing megawatts"))?;
        let at = parts.next().ok_or_else(|| err("missing time"))?;
        let at = parse_time(at).ok_or_else(|| err("bad time"))?;
        let mw_s = mw.trim();
        let mw_s = mw_s
            .strip_suffix("MW")
            .or_else(|| mw_s.strip_suffix("mw"))
            .unwrap_or(mw_s);
        let curtail_mw: f64 = mw_s.trim().parse().map_err(|_| err("bad megawatts"))?;
        if !(curtail_mw.is_finite() && curtail_mw > 0.0) {
            return Err(err("megawatts must be positive"));
        }
        Ok(Self {
            at,
            curtail_mw,
            respond_within_s: parse_duration_s(respond).ok_or_else(|| err("bad response time"))?,
            duration_s: parse_duration_s(duration).ok_or_else(|| err("bad duration"))?,
        })
    }
}

/// Random demand response during price spikes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SpikeDr {
    /// A price at or above this is a spike, $/MWh.
    pub threshold_usd_per_mwh: f64,
    /// Probability of a request in a spike interval.
    pub probability: f64,
    /// The request's shape (its `at` is ignored).
    pub shape: DrSpec,
}

impl SpikeDr {
    /// Whether a request is issued for an interval at `price`.
    pub fn fires(&self, price: f64, rng: &mut impl Rng) -> bool {
        price >= self.threshold_usd_per_mwh && rng.random::<f64>() < self.probability
    }
}

/// 4CP detection from the load seen so far.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PeakParams {
    /// Warn when load is within this fraction of the month's running maximum (0.02 = 2%).
    pub within: f64,
    /// Months (1-12) in which 4CP intervals are set.
    pub months: (u8, u8),
    /// Warnings below this probability are not issued.
    pub min_probability: f64,
}

impl Default for PeakParams {
    fn default() -> Self {
        Self {
            within: 0.02,
            months: (6, 9),
            min_probability: 0.2,
        }
    }
}

/// Tracks the month's running maximum of system load and decides whether an interval is at risk
/// of being this month's coincident peak. It only ever sees loads up to the present interval.
#[derive(Debug, Clone)]
pub struct PeakDetector {
    params: PeakParams,
    month: Option<(i32, u8)>,
    running_max: f64,
}

impl PeakDetector {
    /// A detector.
    pub fn new(params: PeakParams) -> Self {
        Self {
            params,
            month: None,
            running_max: f64::NEG_INFINITY,
        }
    }

    /// Observes the load of the interval starting at `ts`; returns the probability that it is
    /// the month's peak when a warning is due.
    ///
    /// Probability = closeness x time factor, where closeness is 1 at (or above) the running
    /// maximum and falls linearly to 0 at `within` below it, and the time factor grows from 0.3
    /// on the 1st of the month to 1 at its end (an early high is likely to be beaten later).
    pub fn observe(&mut self, ts: i64, load_mw: f64) -> Option<f64> {
        let t = OffsetDateTime::from_unix_timestamp(ts).ok()?;
        let key = (t.year(), u8::from(t.month()));
        if self.month != Some(key) {
            self.month = Some(key);
            self.running_max = f64::NEG_INFINITY;
        }
        let prev_max = self.running_max;
        self.running_max = self.running_max.max(load_mw);
        let (m0, m1) = self.params.months;
        if !(m0..=m1).contains(&key.1) || !prev_max.is_finite() || prev_max <= 0.0 {
            return None;
        }
        let gap = (prev_max - load_mw) / prev_max;
        if gap > self.params.within {
            return None;
        }
        let closeness = if self.params.within > 0.0 {
            (1.0 - gap / self.params.within).clamp(0.0, 1.0)
        } else {
            1.0
        };
        let days = f64::from(t.month().length(t.year()));
        let elapsed = (f64::from(t.day()) - 1.0 + f64::from(t.hour()) / 24.0) / days;
        let p = closeness * (0.3 + 0.7 * elapsed);
        (p >= self.params.min_probability).then_some(p)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_schedule_entry_parses_with_units_and_colons_in_the_time() {
        let d: DrSpec = "2023-08-10T20:00Z:10MW:60s:30m".parse().unwrap();
        assert_eq!(d.at, parse_time("2023-08-10T20:00:00Z").unwrap());
        assert_eq!(d.curtail_mw, 10.0);
        assert_eq!(d.respond_within_s, 60);
        assert_eq!(d.duration_s, 1800);
        let d: DrSpec = "2023-08-10T20:15:00Z:2.5:600:1h".parse().unwrap();
        assert_eq!(
            (d.curtail_mw, d.respond_within_s, d.duration_s),
            (2.5, 600, 3600)
        );
        for bad in [
            "2023-08-10T20:00Z:10MW:60s",
            "yesterday:10MW:60s:30m",
            "2023-08-10T20:00Z:-1MW:60s:30m",
        ] {
            assert!(bad.parse::<DrSpec>().is_err(), "{bad}");
        }
    }

    fn ts(s: &str) -> i64 {
        parse_time(s).unwrap()
    }

    #[test]
    fn peak_warnings_come_only_in_summer_near_the_running_max_seen_so_far() {
        let mut d = PeakDetector::new(PeakParams::default());
        // May: never.
        assert_eq!(d.observe(ts("2023-05-30T20:00Z"), 70_000.0), None);
        assert_eq!(d.observe(ts("2023-05-30T21:00Z"), 80_000.0), None);
        // The first value of a month only sets the running max.
        assert_eq!(d.observe(ts("2023-08-20T20:00Z"), 80_000.0), None);
        // Far below it: nothing.
        assert_eq!(d.observe(ts("2023-08-20T21:00Z"), 70_000.0), None);
        // A new high late in the month: a warning with a high probability.
        let p = d.observe(ts("2023-08-25T21:00Z"), 81_000.0).unwrap();
        assert!(p > 0.8, "{p}");
        // 1% under the new max: a warning, less sure.
        let q = d.observe(ts("2023-08-26T21:00Z"), 80_190.0).unwrap();
        assert!(q < p && q > 0.2, "{q}");
        // A new month starts over.
        assert_eq!(d.observe(ts("2023-09-01T00:00Z"), 60_000.0), None);
    }

    #[test]
    fn a_later_value_never_changes_an_earlier_verdict() {
        // Feeding the same prefix gives the same warnings whatever comes after it.
        let loads: Vec<(i64, f64)> = (0..24 * 30)
            .map(|h| {
                (
                    ts("2023-07-01T00:00Z") + h * 3600,
                    60_000.0 + 10_000.0 * ((h % 24) as f64 / 24.0) + h as f64,
                )
            })
            .collect();
        let run = |n: usize| {
            let mut d = PeakDetector::new(PeakParams::default());
            loads[..n]
                .iter()
                .map(|&(t, l)| d.observe(t, l))
                .collect::<Vec<_>>()
        };
        let full = run(loads.len());
        let half = run(loads.len() / 2);
        assert_eq!(&full[..half.len()], &half[..]);
        assert!(full.iter().flatten().count() > 0);
    }

    #[test]
    fn spike_demand_response_fires_only_at_spike_prices() {
        use rand::SeedableRng;
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        let s = SpikeDr {
            threshold_usd_per_mwh: 1000.0,
            probability: 0.5,
            shape: "2023-01-01T00:00Z:5MW:60s:30m".parse().unwrap(),
        };
        assert!((0..1000).all(|_| !s.fires(999.0, &mut rng)));
        let fired = (0..1000).filter(|_| s.fires(4000.0, &mut rng)).count();
        assert!((400..600).contains(&fired), "{fired}");
    }
}
