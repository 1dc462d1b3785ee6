//! The compact telemetry encoding, version 1: an `asic.telemetry_batch` envelope as a
//! little-endian, column-per-field binary message, about a quarter of its JSON size (a rack of
//! 100 ASICs: ~6 KB instead of ~25 KB). The broker moves, and the ingest parses, bytes; at
//! 250,000 ASICs a second that is the difference between keeping up and not.
//!
//! A message is compact when it starts with [`MAGIC`]; everything else is a JSON envelope.
//! [`crate::Envelope::decode`] reads both, so producers may switch one at a time. The layout
//! is published in `schemas/compact/asic-telemetry-batch.v1.ksy` (Kaitai Struct) with a
//! fixture pair (`.bin` and its `.json`) that a test decodes.
//!
//! ```text
//! magic        4 bytes  "HCPB"
//! format       u1       1
//! kind         u1       1 = asic.telemetry_batch
//! schema       u2       payload schema version (1)
//! event_id     16 bytes UUID
//! correlation  16 bytes UUID
//! causation    u1 flag, then 16 bytes UUID when 1
//! occurred_at  s8       Unix time, nanoseconds
//! sequence     s8
//! stream_id    str      (u2 length + UTF-8; likewise every str)
//! producer     str
//! site         str
//! rack         str
//! sampled_at   s8       Unix time, nanoseconds
//! n            u4       samples
//! models       u2 count, then that many str (a dictionary)
//! asic_id      n × str
//! model        n × u2   index into models
//! state        n × u1   0 hashing, 1 ramping, 2 curtailed, 3 fault, 4 offline
//! hashrate_ths n × f8
//! power_w      n × f8
//! power_target_w n × f8
//! temperature_c  n × f8
//! hw_errors      n × u4
//! accepted_shares n × u4
//! ```
//!
//! Decoding checks every length against the bytes left, so truncated or corrupt input is an
//! error, never a panic or an unbounded allocation.

use time::OffsetDateTime;
use uuid::Uuid;

use crate::envelope::{Envelope, EnvelopeError};
use crate::payload::{AsicSample, AsicState, AsicTelemetryBatch, Event};

/// The first four bytes of every compact message.
pub const MAGIC: &[u8; 4] = b"HCPB";
/// The layout version this module writes and reads.
pub const FORMAT_VERSION: u8 = 1;
/// `kind`: an `asic.telemetry_batch`.
pub const KIND_ASIC_TELEMETRY_BATCH: u8 = 1;

/// The fields in the order they are written, as `schemas/compact/asic-telemetry-batch.v1.ksy`
/// names them (a test holds the two together).
pub const LAYOUT: &[&str] = &[
    "magic",
    "format",
    "kind",
    "schema",
    "event_id",
    "correlation_id",
    "has_causation",
    "causation_id",
    "occurred_at",
    "sequence",
    "stream_id",
    "producer",
    "site",
    "rack",
    "sampled_at",
    "n",
    "model_count",
    "models",
    "asic_id",
    "model",
    "state",
    "hashrate_ths",
    "power_w",
    "power_target_w",
    "temperature_c",
    "hw_errors",
    "accepted_shares",
];

impl Envelope {
    /// Parses and validates a message in either wire form: the compact binary encoding (this
    /// module; telemetry batches) or JSON ([`Envelope::from_json`]).
    pub fn decode(bytes: &[u8]) -> Result<Self, EnvelopeError> {
        if is_compact(bytes) {
            decode(bytes)
        } else {
            Self::from_json(bytes)
        }
    }
}

/// Whether `bytes` is a compact message (rather than JSON).
pub fn is_compact(bytes: &[u8]) -> bool {
    bytes.starts_with(MAGIC)
}

/// Encodes an `asic.telemetry_batch` envelope. Other events have no compact form.
pub fn encode(e: &Envelope) -> Result<Vec<u8>, EnvelopeError> {
    let Event::AsicTelemetryBatch(b) = &e.payload else {
        return Err(EnvelopeError::Encode(format!(
            "{} has no compact encoding",
            e.event_type().as_str()
        )));
    };
    let n = b.samples.len();
    let mut w = Writer(Vec::with_capacity(128 + n * 64));
    w.0.extend_from_slice(MAGIC);
    w.0.push(FORMAT_VERSION);
    w.0.push(KIND_ASIC_TELEMETRY_BATCH);
    w.0.extend_from_slice(&e.schema_version.to_le_bytes());
    w.0.extend_from_slice(e.event_id.as_bytes());
    w.0.extend_from_slice(e.correlation_id.as_bytes());
    match e.causation_id {
        Some(c) => {
            w.0.push(1);
            w.0.extend_from_slice(c.as_bytes());
        }
        None => w.0.push(0),
    }
    w.time(e.occurred_at)?;
    w.0.extend_from_slice(&e.sequence.to_le_bytes());
    w.str(&e.stream_id)?;
    w.str(&e.producer)?;
    w.str(&b.site)?;
    w.str(&b.rack)?;
    w.time(b.sampled_at)?;
    let count = u32::try_from(n).map_err(|_| EnvelopeError::Encode("too many samples".into()))?;
    w.0.extend_from_slice(&count.to_le_bytes());
    let mut models: Vec<&str> = Vec::new();
    let mut model_of = Vec::with_capacity(n);
    for s in &b.samples {
        let i = match models.iter().position(|m| *m == s.model) {
            Some(i) => i,
            None => {
                models.push(&s.model);
                models.len() - 1
            }
        };
        model_of
            .push(u16::try_from(i).map_err(|_| EnvelopeError::Encode("too many models".into()))?);
    }
    w.0.extend_from_slice(&(models.len() as u16).to_le_bytes());
    for m in &models {
        w.str(m)?;
    }
    for s in &b.samples {
        w.str(&s.asic_id)?;
    }
    for i in model_of {
        w.0.extend_from_slice(&i.to_le_bytes());
    }
    for s in &b.samples {
        w.0.push(s.state.index() as u8);
    }
    for f in [
        |s: &AsicSample| s.hashrate_ths,
        |s: &AsicSample| s.power_w,
        |s: &AsicSample| s.power_target_w,
        |s: &AsicSample| s.temperature_c,
    ] {
        for s in &b.samples {
            w.0.extend_from_slice(&f(s).to_le_bytes());
        }
    }
    for s in &b.samples {
        w.0.extend_from_slice(&s.hw_errors.to_le_bytes());
    }
    for s in &b.samples {
        w.0.extend_from_slice(&s.accepted_shares.to_le_bytes());
    }
    Ok(w.0)
}

/// Decodes a compact message into the envelope it encodes, with the same checks as JSON
/// (non-empty stream and producer, sequence ≥ 1, a known payload version).
pub fn decode(bytes: &[u8]) -> Result<Envelope, EnvelopeError> {
    let mut r = Reader(bytes);
    if r.take(4)? != MAGIC {
        return Err(malformed("not a compact message (magic)"));
    }
    let format = r.u8()?;
    if format != FORMAT_VERSION {
        return Err(malformed(&format!(
            "unknown compact format version {format}"
        )));
    }
    let kind = r.u8()?;
    if kind != KIND_ASIC_TELEMETRY_BATCH {
        return Err(malformed(&format!("unknown compact kind {kind}")));
    }
    let schema_version = r.u16()?;
    if schema_version != 1 {
        return Err(EnvelopeError::UnsupportedVersion {
            event_type: "asic.telemetry_batch".into(),
            version: schema_version,
        });
    }
    let event_id = r.uuid()?;
    let correlation_id = r.uuid()?;
    let causation_id = match r.u8()? {
        0 => None,
        1 => Some(r.uuid()?),
        f => return Err(malformed(&format!("causation flag {f}"))),
    };
    let occurred_at = r.time()?;
    let sequence = r.i64()?;
    let stream_id = r.str()?;
    let producer = r.str()?;
    let site = r.str()?;
    let rack = r.str()?;
    let sampled_at = r.time()?;
    let n = r.u32()? as usize;
    // Each sample takes at least 2 + 2 + 1 + 32 + 8 bytes: a count the bytes cannot hold is
    // refused before anything is allocated for it.
    if n.saturating_mul(45) > r.0.len() {
        return Err(malformed("sample count exceeds the message"));
    }
    let model_count = r.u16()? as usize;
    let mut models = Vec::with_capacity(model_count.min(r.0.len() / 2));
    for _ in 0..model_count {
        models.push(r.str()?);
    }
    let mut ids = Vec::with_capacity(n);
    for _ in 0..n {
        ids.push(r.str()?);
    }
    let mut model_of = Vec::with_capacity(n);
    for _ in 0..n {
        let i = r.u16()? as usize;
        model_of.push(
            models
                .get(i)
                .ok_or_else(|| malformed(&format!("model index {i} out of range")))?,
        );
    }
    let mut states = Vec::with_capacity(n);
    for _ in 0..n {
        states.push(state_of(r.u8()?)?);
    }
    let mut floats = [
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
    ];
    for column in &mut floats {
        for _ in 0..n {
            column.push(r.f64()?);
        }
    }
    let mut ints = [Vec::with_capacity(n), Vec::with_capacity(n)];
    for column in &mut ints {
        for _ in 0..n {
            column.push(r.u32()?);
        }
    }
    if !r.0.is_empty() {
        return Err(malformed(&format!("{} trailing bytes", r.0.len())));
    }
    let [hashrate, power, target, temperature] = floats;
    let [hw_errors, shares] = ints;
    let samples = ids
        .into_iter()
        .enumerate()
        .map(|(i, asic_id)| AsicSample {
            asic_id,
            model: model_of[i].clone(),
            state: states[i],
            hashrate_ths: hashrate[i],
            power_w: power[i],
            power_target_w: target[i],
            temperature_c: temperature[i],
            hw_errors: hw_errors[i],
            accepted_shares: shares[i],
        })
        .collect();
    if stream_id.is_empty() {
        return Err(EnvelopeError::Invalid("stream_id must not be empty".into()));
    }
    if sequence < 1 {
        return Err(EnvelopeError::Invalid(format!(
            "sequence must be >= 1, got {sequence}"
        )));
    }
    if producer.is_empty() {
        return Err(EnvelopeError::Invalid("producer must not be empty".into()));
    }
    Ok(Envelope {
        event_id,
        schema_version,
        stream_id,
        sequence,
        occurred_at,
        correlation_id,
        causation_id,
        producer,
        payload: Event::AsicTelemetryBatch(AsicTelemetryBatch {
            site,
            rack,
            sampled_at,
            samples,
        }),
    })
}

fn malformed(what: &str) -> EnvelopeError {
    EnvelopeError::Malformed(format!("compact message: {what}"))
}

fn state_of(code: u8) -> Result<AsicState, EnvelopeError> {
    AsicState::ALL
        .get(usize::from(code))
        .copied()
        .ok_or_else(|| malformed(&format!("unknown state {code}")))
}

struct Writer(Vec<u8>);

impl Writer {
    fn str(&mut self, s: &str) -> Result<(), EnvelopeError> {
        let len = u16::try_from(s.len())
            .map_err(|_| EnvelopeError::Encode(format!("string of {} bytes", s.len())))?;
        self.0.extend_from_slice(&len.to_le_bytes());
        self.0.extend_from_slice(s.as_bytes());
        Ok(())
    }

    fn time(&mut self, t: OffsetDateTime) -> Result<(), EnvelopeError> {
        let nanos = i64::try_from(t.unix_timestamp_nanos())
            .map_err(|_| EnvelopeError::Encode(format!("time {t} out of range")))?;
        self.0.extend_from_slice(&nanos.to_le_bytes());
        Ok(())
    }
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], EnvelopeError> {
        if self.0.len() < n {
            return Err(malformed("truncated"));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], EnvelopeError> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }

    fn u8(&mut self) -> Result<u8, EnvelopeError> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> Result<u16, EnvelopeError> {
        Ok(u16::from_le_bytes(self.array()?))
    }

    fn u32(&mut self) -> Result<u32, EnvelopeError> {
        Ok(u32::from_le_bytes(self.array()?))
    }

    fn i64(&mut self) -> Result<i64, EnvelopeError> {
        Ok(i64::from_le_bytes(self.array()?))
    }

    fn f64(&mut self) -> Result<f64, EnvelopeError> {
        Ok(f64::from_le_bytes(self.array()?))
    }

    fn uuid(&mut self) -> Result<Uuid, EnvelopeError> {
        Ok(Uuid::from_bytes(self.array()?))
    }

    fn time(&mut self) -> Result<OffsetDateTime, EnvelopeError> {
        OffsetDateTime::from_unix_timestamp_nanos(i128::from(self.i64()?))
            .map_err(|e| malformed(&format!("time: {e}")))
    }

    fn str(&mut self) -> Result<String, EnvelopeError> {
        let len = self.u16()? as usize;
        let bytes = self.take(len)?;
        String::from_utf8(bytes.to_vec()).map_err(|_| malformed("string is not UTF-8"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(n: usize) -> Envelope {
        let samples = (0..n)
            .map(|i| AsicSample {
                asic_id: format!("tx1-r3-a{i}"),
                model: if i % 3 == 0 { "S19 XP" } else { "S21 XP" }.into(),
                state: [
                    AsicState::Hashing,
                    AsicState::Ramping,
                    AsicState::Curtailed,
                    AsicState::Fault,
                    AsicState::Offline,
                ][i % 5],
                hashrate_ths: 270.0 + i as f64 * 0.1,
                power_w: 3600.5 - i as f64,
                power_target_w: 3645.0,
                temperature_c: 58.25,
                hw_errors: i as u32,
                accepted_shares: 3 * i as u32,
            })
            .collect();
        let mut e = Envelope::new(
            "site-tx1",
            "asic-sim",
            Event::AsicTelemetryBatch(AsicTelemetryBatch {
                site: "tx1".into(),
                rack: "r3".into(),
                sampled_at: OffsetDateTime::from_unix_timestamp_nanos(1_765_000_000_123_456_789)
                    .unwrap_or(OffsetDateTime::UNIX_EPOCH),
                samples,
            }),
        );
        e.sequence = 7;
        e.causation_id = Some(Uuid::now_v7());
        e
    }

    #[test]
    fn a_batch_round_trips_exactly_and_is_a_quarter_of_its_json() {
        let e = batch(100);
        let bytes = encode(&e).unwrap_or_default();
        assert!(is_compact(&bytes));
        let back = decode(&bytes).unwrap_or_else(|err| panic!("{err}"));
        assert_eq!(back, e);
        let json = e.to_json().unwrap_or_default();
        assert!(
            bytes.len() * 3 < json.len(),
            "compact {} bytes, JSON {}",
            bytes.len(),
            json.len()
        );
        // Envelope::decode takes either form.
        assert_eq!(Envelope::decode(&bytes).ok(), Some(e.clone()));
        assert_eq!(Envelope::decode(&json).ok(), Some(e));
    }

    #[test]
    fn truncated_or_corrupt_bytes_are_errors_never_panics() {
        let bytes = encode(&batch(20)).unwrap_or_default();
        for cut in 0..bytes.len() {
            assert!(decode(&bytes[..cut]).is_err(), "cut at {cut} decoded");
        }
        let mut extra = bytes.clone();
        extra.push(0);
        assert!(decode(&extra).unwrap_err().to_string().contains("trailing"));
        // A huge sample count is refused before allocating.
        let mut huge = encode(&batch(0)).unwrap_or_default();
        let at = huge.len() - 6;
        huge[at..at + 4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(decode(&huge).unwrap_err().to_string().contains("exceeds"));
        let mut bad_state = bytes.clone();
        let first_state = bad_state.len() - 20 * (1 + 32 + 8);
        bad_state[first_state] = 9;
        assert!(decode(&bad_state)
            .unwrap_err()
            .to_string()
            .contains("state"));
    }

    /// The published example: three ASICs of two models.
    fn example() -> Envelope {
        let mut e = batch(3);
        e.event_id = Uuid::from_u128(0x0193_0000_0000_7000_8000_0000_0000_0001);
        e.correlation_id = e.event_id;
        e.causation_id = None;
        e.occurred_at = OffsetDateTime::from_unix_timestamp(1_765_000_001)
            .unwrap_or(OffsetDateTime::UNIX_EPOCH);
        e
    }

    fn schemas() -> std::path::PathBuf {
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../schemas/compact")
    }

    #[test]
    fn the_published_example_decodes_to_its_json_and_encodes_back_byte_for_byte() {
        let dir = schemas();
        let bin = std::fs::read(dir.join("asic-telemetry-batch.v1.example.bin"))
            .unwrap_or_else(|e| panic!("example .bin: {e}"));
        let json = std::fs::read(dir.join("asic-telemetry-batch.v1.example.json"))
            .unwrap_or_else(|e| panic!("example .json: {e}"));
        let from_bin = decode(&bin).unwrap_or_else(|e| panic!("{e}"));
        let from_json = Envelope::from_json(&json).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(from_bin, from_json);
        assert_eq!(from_bin, example());
        assert_eq!(encode(&from_json).unwrap_or_default(), bin);
    }

    #[test]
    fn the_published_layout_lists_the_fields_in_the_order_they_are_written() {
        let ksy = std::fs::read_to_string(schemas().join("asic-telemetry-batch.v1.ksy"))
            .unwrap_or_else(|e| panic!("ksy: {e}"));
        // The top-level `seq` ends where `types:` begins.
        let seq = ksy.split("\nseq:\n").nth(1).unwrap_or_default();
        let seq = seq.split("\ntypes:").next().unwrap_or_default();
        let ids: Vec<&str> = seq
            .lines()
            .filter_map(|l| l.strip_prefix("  - id: "))
            .collect();
        assert_eq!(ids, LAYOUT);
    }

    #[test]
    fn other_events_have_no_compact_form() {
        let e = Envelope::new(
            "worker-w1",
            "w",
            Event::WorkerLost(crate::payload::WorkerLost {
                worker_id: "w1".into(),
                silent_for_s: 5.0,
            }),
        );
        assert!(encode(&e).is_err());
    }
}
