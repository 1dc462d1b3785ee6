//! Turns market rows into the time-ordered events the simulator publishes: one
//! `market.price_observed` per series and interval (daily series once a day), demand-response
//! requests from the schedule and at random during spikes, and 4CP peak warnings.

use hcp_events::payload::{DemandResponseRequested, MarketPriceObserved, PeakWarningIssued};
use hcp_events::{grid_stream, Event};
use rand::rngs::StdRng;
use rand::SeedableRng;
use time::OffsetDateTime;
use uuid::Uuid;

use crate::grid::{DrSpec, PeakDetector, PeakParams, SpikeDr};
use crate::series::{self, unit, Row};

/// One event due at a trace time.
#[derive(Debug, Clone, PartialEq)]
pub struct MarketEvent {
    /// Trace time it is due at (pacing), Unix seconds.
    pub at: i64,
    /// Stream id (the Kafka key).
    pub stream_id: String,
    /// Per-stream sequence: the interval start (or issue time) in Unix seconds.
    pub sequence: i64,
    /// The payload.
    pub payload: Event,
}

/// What to derive besides prices.
#[derive(Debug, Clone)]
pub struct GridOptions {
    /// Load zone of the demand-response requests, e.g. `LZ_WEST`.
    pub dr_zone: String,
    /// Scheduled requests.
    pub dr_schedule: Vec<DrSpec>,
    /// Random requests during spikes.
    pub spike_dr: Option<SpikeDr>,
    /// 4CP warnings (None: off).
    pub peaks: Option<PeakParams>,
    /// Zone named in peak warnings (the system, e.g. `ERCOT`).
    pub peak_zone: String,
    /// Seed of the random choices.
    pub seed: u64,
}

impl Default for GridOptions {
    fn default() -> Self {
        Self {
            dr_zone: "LZ_WEST".into(),
            dr_schedule: Vec::new(),
            spike_dr: None,
            peaks: Some(PeakParams::default()),
            peak_zone: "ERCOT".into(),
            seed: 1,
        }
    }
}

fn time(ts: i64) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp(ts).unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

fn price(at: i64, interval_start: i64, series: &str, value: f64, unit: &str) -> MarketEvent {
    MarketEvent {
        at,
        stream_id: series::market_stream(series),
        sequence: interval_start,
        payload: Event::MarketPriceObserved(MarketPriceObserved {
            series: series.to_owned(),
            interval_start: time(interval_start),
            value,
            unit: unit.to_owned(),
        }),
    }
}

/// Per-stream monotonic sequences for grid streams: the event time, bumped past the last one.
#[derive(Debug, Default)]
struct Sequences(std::collections::HashMap<String, i64>);

impl Sequences {
    fn next(&mut self, stream: &str, t: i64) -> i64 {
        let last = self.0.entry(stream.to_owned()).or_insert(0);
        *last = t.max(*last + 1);
        *last
    }
}

/// Builds the events for `rows` (time-ordered), with `price_series` as the electricity series
/// name and `gpu_model` naming the GPU spot series.
pub fn build(
    rows: &[Row],
    price_series: &str,
    gpu_model: &str,
    grid: &GridOptions,
) -> Vec<MarketEvent> {
    let mut out = Vec::with_capacity(rows.len() * 8);
    let mut rng = StdRng::seed_from_u64(grid.seed ^ 0x6772_6964);
    let mut peaks = grid.peaks.map(PeakDetector::new);
    let mut seqs = Sequences::default();
    let gpu_series = series::gpu_spot(gpu_model);
    let dr_stream = grid_stream(&grid.dr_zone);
    let peak_stream = grid_stream(&grid.peak_zone);
    let mut schedule = grid.dr_schedule.clone();
    schedule.sort_by_key(|d| d.at);
    let mut schedule = schedule.into_iter().peekable();
    let mut last_day = None;
    let dr = |seqs: &mut Sequences, at: i64, spec: &DrSpec| MarketEvent {
        at,
        stream_id: dr_stream.clone(),
        sequence: seqs.next(&dr_stream, at),
        payload: Event::DemandResponseRequested(DemandResponseRequested {
            dr_id: Uuid::new_v4(),
            zone: grid.dr_zone.clone(),
            site: None,
            curtail_mw: spec.curtail_mw,
            respond_within_s: spec.respond_within_s,
            duration_s: spec.duration_s,
            issued_at: time(at),
        }),
    };
    let end = rows.last().map_or(i64::MIN, |r| r.ts + 3600);
    for r in rows {
        // Scheduled requests due before the next interval starts are issued at their own time.
        while let Some(spec) = schedule.next_if(|d| d.at < r.ts) {
            if rows.first().is_some_and(|f| spec.at >= f.ts) {
                out.push(dr(&mut seqs, spec.at, &spec));
            }
        }
        let day = r.ts.div_euclid(86_400);
        if last_day != Some(day) {
            last_day = Some(day);
            let midnight = day * 86_400;
            out.push(price(
                r.ts,
                midnight,
                series::BTC_PRICE,
                r.btc_usd,
                unit::USD,
            ));
            out.push(price(
                r.ts,
                midnight,
                series::BTC_DIFFICULTY,
                r.difficulty,
                unit::DIFFICULTY,
            ));
            out.push(price(
                r.ts,
                midnight,
                series::BTC_HASHPRICE,
                r.hashprice_th,
                unit::USD_PER_TH_DAY,
            ));
        }
        out.push(price(r.ts, r.ts, price_series, r.price, unit::USD_PER_MWH));
        if let Some(c) = r.carbon {
            out.push(price(
                r.ts,
                r.ts,
                series::GRID_CARBON,
                c,
                unit::GCO2_PER_KWH,
            ));
        }
        if let Some(l) = r.load_mw {
            out.push(price(r.ts, r.ts, series::GRID_LOAD, l, unit::MW));
            if let Some(p) = peaks.as_mut().and_then(|d| d.observe(r.ts, l)) {
                out.push(MarketEvent {
                    at: r.ts,
                    stream_id: peak_stream.clone(),
                    sequence: seqs.next(&peak_stream, r.ts),
                    payload: Event::PeakWarningIssued(PeakWarningIssued {
                        zone: grid.peak_zone.clone(),
                        interval_start: time(r.ts),
                        probability: p,
                        load_mw: l,
                    }),
                });
            }
        }
        out.push(price(
            r.ts,
            r.ts,
            &gpu_series,
            r.gpu_usd_h,
            unit::USD_PER_GPU_HOUR,
        ));
        if let Some(s) = &grid.spike_dr {
            if s.fires(r.price, &mut rng) {
                out.push(dr(&mut seqs, r.ts, &s.shape));
            }
        }
    }
    for spec in schedule.filter(|d| d.at < end) {
        out.push(dr(&mut seqs, spec.at, &spec));
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::grid::parse_time;
    use crate::synthetic::{generate, SyntheticParams};
    use hcp_events::EventType;

    #[test]
    fn every_stream_is_in_time_order_with_strictly_increasing_sequences() {
        let from = parse_time("2023-07-01T00:00Z").unwrap();
        let rows = generate(&SyntheticParams::default(), from, from + 60 * 86_400);
        let grid = GridOptions {
            dr_schedule: vec![
                "2023-07-10T20:00Z:10MW:60s:30m".parse().unwrap(),
                "2023-07-10T20:00Z:5MW:60s:30m".parse().unwrap(),
            ],
            spike_dr: Some(SpikeDr {
                threshold_usd_per_mwh: 1000.0,
                probability: 1.0,
                shape: "2023-01-01T00:00Z:5MW:60s:30m".parse().unwrap(),
            }),
            ..Default::default()
        };
        let events = build(&rows, "ercot.dam.LZ_WEST", "H100", &grid);
        assert!(
            events.windows(2).all(|w| w[0].at <= w[1].at),
            "due times are ordered"
        );
        let mut last: std::collections::HashMap<&str, i64> = Default::default();
        for e in &events {
            let prev = last.insert(&e.stream_id, e.sequence);
            assert!(
                prev.is_none_or(|p| p < e.sequence),
                "{} went back",
                e.stream_id
            );
        }
        let count = |t: EventType| {
            events
                .iter()
                .filter(|e| e.payload.event_type() == t)
                .count()
        };
        let spikes = rows.iter().filter(|r| r.price >= 1000.0).count();
        assert_eq!(count(EventType::DemandResponseRequested), 2 + spikes);
        assert!(count(EventType::PeakWarningIssued) > 0);
        // Daily series once a day; hourly ones every hour.
        let n = |s: &str| {
            events
                .iter()
                .filter(|e| e.stream_id == series::market_stream(s))
                .count()
        };
        assert_eq!(n(series::BTC_PRICE), 60);
        assert_eq!(n("ercot.dam.LZ_WEST"), 60 * 24);
        assert_eq!(n("gpu.spot.H100"), 60 * 24);
    }
}
