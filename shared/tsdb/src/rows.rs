//! The pure part of the ingest: Kafka payloads (JSON or compact) to binary `COPY` rows (one
//! buffer per table, one row per message with a sample per array element; migration 0011)
//! and the latest power of each rack and worker. No I/O, so it runs on a blocking thread and
//! is unit-tested without a runtime.

use std::collections::{BTreeSet, HashMap};

use hcp_events::payload::{AsicState, AsicTelemetryBatch, WorkerHeartbeat};
use hcp_events::{Envelope, EnvelopeError, Event};
use time::{OffsetDateTime, UtcOffset};

use crate::pgcopy;

/// The `COPY` statement [`Decoded::asic_copy`] is written for.
pub const ASIC_COPY: &str = "COPY asic_telemetry_batches (time, site, rack, asic_id, model, \
    state, hashrate_ths, power_w, power_target_w, temperature_c, hw_errors, accepted_shares) \
    FROM STDIN (FORMAT binary)";
/// The `COPY` statement [`Decoded::gpu_copy`] is written for.
pub const GPU_COPY: &str = "COPY gpu_telemetry_batches (time, site, worker_id, gpu_id, \
    utilization_pct, memory_used_mib, power_w, temperature_c) FROM STDIN (FORMAT binary)";

/// Which topic a message came from: it decides what the message may carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// `telemetry`: ASIC batches.
    Telemetry,
    /// `worker-reports`: heartbeats (GPU samples) and run reports (ignored).
    WorkerReports,
}

/// Why a message is refused (it goes to dead letters; nothing of it is written).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    /// `true`: not a valid envelope; `false`: valid but its values cannot be stored.
    pub malformed: bool,
    /// Metric label.
    pub reason: &'static str,
    /// The `hcp-dlq-reason` header.
    pub message: String,
}

impl Rejection {
    fn poison(reason: &'static str, message: String) -> Self {
        Self {
            malformed: false,
            reason,
            message,
        }
    }
}

impl From<EnvelopeError> for Rejection {
    fn from(e: EnvelopeError) -> Self {
        let reason = match e {
            EnvelopeError::UnknownType(_) => "unknown_type",
            EnvelopeError::UnsupportedVersion { .. } => "unsupported_version",
            EnvelopeError::InvalidPayload(_) => "invalid_payload",
            _ => "malformed",
        };
        Self {
            malformed: true,
            reason,
            message: e.to_string(),
        }
    }
}

/// What one message contributed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Added {
    /// Samples were appended (ASIC, GPU).
    Rows(u64, u64),
    /// A valid message this ingest does not store (run reports, other types).
    Ignored,
}

/// The latest summary of one rack.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RackPower {
    /// Sample time.
    pub time: OffsetDateTime,
    /// Sum of the rack's ASIC wall power, W.
    pub power_w: f64,
    /// ASICs by state: hashing, ramping, curtailed, fault, offline.
    pub states: [i32; 5],
}

/// The latest summary of one worker's GPUs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct WorkerPower {
    /// Heartbeat time.
    pub time: OffsetDateTime,
    /// Sum of its GPUs' board power, W.
    pub power_w: f64,
    /// GPUs sampled.
    pub gpus: i32,
}

/// Everything a batch of messages will write.
#[derive(Debug, Default)]
pub struct Decoded {
    /// Binary `COPY` rows for `asic_telemetry_batches` ([`ASIC_COPY`]), without the header
    /// and trailer ([`crate::pgcopy`]).
    pub asic_copy: Vec<u8>,
    /// Binary `COPY` rows for `gpu_telemetry_batches` ([`GPU_COPY`]), likewise.
    pub gpu_copy: Vec<u8>,
    /// ASIC samples in `asic_copy`.
    pub asic_samples: u64,
    /// GPU samples in `gpu_copy`.
    pub gpu_samples: u64,
    /// Latest per `(site, rack)`.
    pub racks: HashMap<(String, String), RackPower>,
    /// Latest per `(site, worker)`.
    pub workers: HashMap<(String, String), WorkerPower>,
    /// Minutes (UTC, truncated) that received samples: their rollups must be recomputed.
    pub minutes: BTreeSet<OffsetDateTime>,
    /// `occurred_at` of every message written, for the Kafka→DB latency.
    pub occurred: Vec<OffsetDateTime>,
}

impl Decoded {
    /// Decodes one message and appends its rows. On a rejection nothing is appended.
    pub fn add(&mut self, source: Source, payload: &[u8]) -> Result<Added, Rejection> {
        if payload.is_empty() {
            return Err(Rejection {
                malformed: true,
                reason: "empty",
                message: "empty message: expected an event envelope".into(),
            });
        }
        let env = Envelope::decode(payload)?;
        let added = match (source, &env.payload) {
            (Source::Telemetry, Event::AsicTelemetryBatch(b)) => {
                check_batch(b)?;
                self.add_asic(b)
            }
            (Source::WorkerReports, Event::WorkerHeartbeat(h)) => {
                check_heartbeat(h)?;
                self.add_gpu(h, env.occurred_at)
            }
            _ => return Ok(Added::Ignored),
        };
        self.occurred.push(env.occurred_at);
        Ok(added)
    }

    fn add_asic(&mut self, b: &AsicTelemetryBatch) -> Added {
        let t = b.sampled_at.to_offset(UtcOffset::UTC);
        let mut power = 0.0;
        let mut states = [0i32; 5];
        for s in &b.samples {
            power += s.power_w;
            states[s.state.index()] += 1;
        }
        if !b.samples.is_empty() {
            asic_row(&mut self.asic_copy, t, b);
        }
        self.asic_samples += b.samples.len() as u64;
        let summary = RackPower {
            time: t,
            power_w: power,
            states,
        };
        keep_latest(
            &mut self.racks,
            (b.site.clone(), b.rack.clone()),
            summary,
            |r| r.time,
        );
        self.minutes.insert(minute(t));
        Added::Rows(b.samples.len() as u64, 0)
    }

    fn add_gpu(&mut self, h: &WorkerHeartbeat, at: OffsetDateTime) -> Added {
        let t = at.to_offset(UtcOffset::UTC);
        let power: f64 = h.samples.iter().map(|s| s.power_w).sum();
        if !h.samples.is_empty() {
            gpu_row(&mut self.gpu_copy, t, h);
        }
        self.gpu_samples += h.samples.len() as u64;
        let summary = WorkerPower {
            time: t,
            power_w: power,
            gpus: i32::try_from(h.samples.len()).unwrap_or(i32::MAX),
        };
        keep_latest(
            &mut self.workers,
            (h.site.clone(), h.worker_id.clone()),
            summary,
            |w| w.time,
        );
        if !h.samples.is_empty() {
            self.minutes.insert(minute(t));
        }
        Added::Rows(0, h.samples.len() as u64)
    }
}

fn keep_latest<V: Copy>(
    map: &mut HashMap<(String, String), V>,
    key: (String, String),
    v: V,
    time: impl Fn(&V) -> OffsetDateTime,
) {
    match map.get_mut(&key) {
        Some(old) if time(old) > time(&v) => {}
        Some(old) => *old = v,
        None => {
            map.insert(key, v);
        }
    }
}

/// The start of `t`'s minute (UTC).
pub fn minute(t: OffsetDateTime) -> OffsetDateTime {
    let t = t.to_offset(UtcOffset::UTC);
    t.replace_nanosecond(0)
        .and_then(|t| t.replace_second(0))
        .unwrap_or(t)
}

fn state_name(s: AsicState) -> &'static str {
    match s {
        AsicState::Hashing => "hashing",
        AsicState::Ramping => "ramping",
        AsicState::Curtailed => "curtailed",
        AsicState::Fault => "fault",
        AsicState::Offline => "offline",
    }
}

fn check_text(field: &str, s: &str) -> Result<(), Rejection> {
    if s.contains('\0') {
        return Err(Rejection::poison(
            "nul_byte",
            format!("{field}: contains a NUL character"),
        ));
    }
    Ok(())
}

fn check_finite(field: &str, v: f64) -> Result<(), Rejection> {
    if !v.is_finite() {
        return Err(Rejection::poison(
            "non_finite",
            format!("{field}: {v} is not a finite number"),
        ));
    }
    Ok(())
}

fn check_time(t: OffsetDateTime) -> Result<(), Rejection> {
    let year = t.to_offset(UtcOffset::UTC).year();
    if !(1971..=9998).contains(&year) {
        return Err(Rejection::poison(
            "bad_time",
            format!("sample time {t} is out of range"),
        ));
    }
    Ok(())
}

fn check_batch(b: &AsicTelemetryBatch) -> Result<(), Rejection> {
    check_time(b.sampled_at)?;
    check_text("site", &b.site)?;
    check_text("rack", &b.rack)?;
    for (i, s) in b.samples.iter().enumerate() {
        check_text("asic_id", &s.asic_id)?;
        check_text("model", &s.model)?;
        for (name, v) in [
            ("hashrate_ths", s.hashrate_ths),
            ("power_w", s.power_w),
            ("power_target_w", s.power_target_w),
            ("temperature_c", s.temperature_c),
        ] {
            check_finite(&format!("samples[{i}].{name}"), v)?;
        }
        if i32::try_from(s.hw_errors).is_err() || i32::try_from(s.accepted_shares).is_err() {
            return Err(Rejection::poison(
                "out_of_range",
                format!("samples[{i}]: counters above 2^31"),
            ));
        }
    }
    Ok(())
}

fn check_heartbeat(h: &WorkerHeartbeat) -> Result<(), Rejection> {
    check_text("site", &h.site)?;
    check_text("worker_id", &h.worker_id)?;
    for (i, s) in h.samples.iter().enumerate() {
        check_text("gpu_id", &s.gpu_id)?;
        for (name, v) in [
            ("utilization_pct", s.utilization_pct),
            ("power_w", s.power_w),
            ("temperature_c", s.temperature_c),
        ] {
            check_finite(&format!("samples[{i}].{name}"), v)?;
        }
        if i64::try_from(s.memory_used_mib).is_err() {
            return Err(Rejection::poison(
                "out_of_range",
                format!("samples[{i}].memory_used_mib above 2^63"),
            ));
        }
    }
    Ok(())
}

/// One `asic_telemetry_batches` row: the rack's samples as arrays.
fn asic_row(out: &mut Vec<u8>, t: OffsetDateTime, b: &AsicTelemetryBatch) {
    let s = &b.samples;
    pgcopy::row(out, 12);
    pgcopy::timestamptz(out, t);
    pgcopy::text(out, &b.site);
    pgcopy::text(out, &b.rack);
    pgcopy::text_array(out, s.iter().map(|s| s.asic_id.as_str()));
    pgcopy::text_array(out, s.iter().map(|s| s.model.as_str()));
    pgcopy::text_array(out, s.iter().map(|s| state_name(s.state)));
    pgcopy::f64_array(out, s.iter().map(|s| s.hashrate_ths));
    pgcopy::f64_array(out, s.iter().map(|s| s.power_w));
    pgcopy::f64_array(out, s.iter().map(|s| s.power_target_w));
    pgcopy::f64_array(out, s.iter().map(|s| s.temperature_c));
    // Checked to fit by `check_batch`.
    pgcopy::i32_array(out, s.iter().map(|s| s.hw_errors as i32));
    pgcopy::i32_array(out, s.iter().map(|s| s.accepted_shares as i32));
}

/// One `gpu_telemetry_batches` row: the heartbeat's GPU samples as arrays.
fn gpu_row(out: &mut Vec<u8>, t: OffsetDateTime, h: &WorkerHeartbeat) {
    let s = &h.samples;
    pgcopy::row(out, 8);
    pgcopy::timestamptz(out, t);
    pgcopy::text(out, &h.site);
    pgcopy::text(out, &h.worker_id);
    pgcopy::text_array(out, s.iter().map(|s| s.gpu_id.as_str()));
    pgcopy::f64_array(out, s.iter().map(|s| s.utilization_pct));
    // Checked to fit by `check_heartbeat`.
    pgcopy::i64_array(out, s.iter().map(|s| s.memory_used_mib as i64));
    pgcopy::f64_array(out, s.iter().map(|s| s.power_w));
    pgcopy::f64_array(out, s.iter().map(|s| s.temperature_c));
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use hcp_events::payload::AsicSample;
    use hcp_events::site_stream;
    use time::macros::datetime;

    fn sample(id: &str, state: AsicState, power_w: f64) -> AsicSample {
        AsicSample {
            asic_id: id.into(),
            model: "S21 XP".into(),
            state,
            hashrate_ths: 270.0,
            power_w,
            power_target_w: 3645.0,
            temperature_c: 61.5,
            hw_errors: 0,
            accepted_shares: 12,
        }
    }

    fn batch(rack: &str, at: OffsetDateTime, samples: Vec<AsicSample>) -> Vec<u8> {
        let mut e = Envelope::new(
            site_stream("w1"),
            "test",
            Event::AsicTelemetryBatch(AsicTelemetryBatch {
                site: "w1".into(),
                rack: rack.into(),
                sampled_at: at,
                samples,
            }),
        );
        e.sequence = 1;
        e.to_json().unwrap()
    }

    #[test]
    fn an_asic_batch_becomes_one_copy_row_and_a_rack_summary() {
        let mut d = Decoded::default();
        let at = datetime!(2026-03-01 12:34:56.5 UTC);
        let added = d
            .add(
                Source::Telemetry,
                &batch(
                    "r\t1",
                    at,
                    vec![
                        sample("a1", AsicState::Hashing, 3600.0),
                        sample("a2", AsicState::Curtailed, 25.5),
                    ],
                ),
            )
            .unwrap();
        assert_eq!(added, Added::Rows(2, 0));
        // One row of twelve fields; binary COPY needs no escaping of the tab in the rack.
        let mut expected = Vec::new();
        pgcopy::row(&mut expected, 12);
        pgcopy::timestamptz(&mut expected, at);
        pgcopy::text(&mut expected, "w1");
        pgcopy::text(&mut expected, "r\t1");
        pgcopy::text_array(&mut expected, ["a1", "a2"].into_iter());
        assert!(d.asic_copy.starts_with(&expected));
        let rack = d.racks[&("w1".to_owned(), "r\t1".to_owned())];
        assert_eq!(rack.power_w, 3625.5);
        assert_eq!(rack.states, [1, 0, 1, 0, 0]);
        assert_eq!(
            d.minutes.iter().next().copied(),
            Some(datetime!(2026-03-01 12:34 UTC))
        );
    }

    #[test]
    fn an_older_batch_does_not_replace_a_racks_latest_summary() {
        let mut d = Decoded::default();
        let late = datetime!(2026-03-01 12:00:10 UTC);
        let early = datetime!(2026-03-01 12:00:09 UTC);
        d.add(
            Source::Telemetry,
            &batch("r1", late, vec![sample("a", AsicState::Hashing, 100.0)]),
        )
        .unwrap();
        d.add(
            Source::Telemetry,
            &batch("r1", early, vec![sample("a", AsicState::Hashing, 999.0)]),
        )
        .unwrap();
        assert_eq!(d.racks.len(), 1);
        assert_eq!(d.racks.values().next().unwrap().power_w, 100.0);
        assert_eq!(d.asic_samples, 2);
    }

    #[test]
    fn garbage_and_non_finite_values_are_rejected_with_a_reason() {
        let mut d = Decoded::default();
        let r = d.add(Source::Telemetry, b"{not json").unwrap_err();
        assert!(r.malformed);
        let r = d.add(Source::Telemetry, b"").unwrap_err();
        assert_eq!(r.reason, "empty");
        let mut bad = sample("a", AsicState::Hashing, 1.0);
        bad.temperature_c = f64::NAN;
        let json = batch("r1", datetime!(2026-03-01 12:00 UTC), vec![bad]);
        // NaN cannot be JSON; serde writes null, which fails the payload schema.
        let r = d.add(Source::Telemetry, &json).unwrap_err();
        assert!(r.malformed, "{r:?}");
        assert!(d.asic_copy.is_empty());
        assert!(d.occurred.is_empty());
    }

    #[test]
    fn messages_a_topic_does_not_store_are_ignored() {
        let mut d = Decoded::default();
        let json = batch("r1", datetime!(2026-03-01 12:00 UTC), vec![]);
        assert_eq!(d.add(Source::WorkerReports, &json).unwrap(), Added::Ignored);
        assert!(d.asic_copy.is_empty());
    }
}
