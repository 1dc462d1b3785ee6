//! Several envelopes in one Kafka message ("packed", format 1).
//!
//! The broker and every client pay per message far more than per byte, so a producer that
//! sends many events at once (the outbox relay, a worker's reports) puts the events bound for
//! one partition into one message. A message holding one envelope is unchanged: a JSON object
//! (or the compact telemetry encoding). A packed message is a JSON array of items, in the order
//! the events were produced:
//!
//! ```json
//! [{"event": {…envelope…}, "traceparent": "00-…", "tracestate": "…"}, {"event": {…}}]
//! ```
//!
//! Each item carries the envelope's own bytes and the W3C trace context that would otherwise be
//! the message's headers, so a consumer decodes, applies, skips or dead-letters every event on
//! its own. Every event of a stream goes to the partition of its key, so per-stream order is
//! kept. The schema is published as `schemas/packed-message.v1.schema.json`.

use std::borrow::Cow;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::envelope::{Envelope, EnvelopeError, RawEnvelope};

/// One event of a message: its envelope bytes and, in a packed message, its trace context.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Item<'a> {
    /// One envelope (JSON, or the compact encoding for an unpacked message).
    pub envelope: &'a [u8],
    /// W3C `traceparent` of the appending span (packed items only; an unpacked message carries
    /// it in its headers).
    pub traceparent: Option<Cow<'a, str>>,
    /// W3C `tracestate`, likewise.
    pub tracestate: Option<Cow<'a, str>>,
}

impl Item<'_> {
    /// Parses and validates the item's envelope.
    pub fn decode(&self) -> Result<Envelope, EnvelopeError> {
        Envelope::decode(self.envelope)
    }
}

/// The wire shape of one packed item; also the published schema.
#[derive(Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PackedItem<'a> {
    /// The envelope, exactly as it would travel alone.
    #[serde(borrow)]
    #[schemars(with = "RawEnvelope")]
    pub event: &'a RawValue,
    /// W3C trace context of the appending span.
    #[serde(default, borrow, skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<Cow<'a, str>>,
    /// W3C trace state.
    #[serde(default, borrow, skip_serializing_if = "Option::is_none")]
    pub tracestate: Option<Cow<'a, str>>,
}

/// Whether `bytes` is a packed message: its first non-blank byte opens a JSON array.
pub fn is_packed(bytes: &[u8]) -> bool {
    bytes
        .iter()
        .find(|b| !b.is_ascii_whitespace())
        .is_some_and(|b| *b == b'[')
}

/// The events of a message: the items of a packed one, or the message itself as one item
/// (with no trace context: that is in the message's headers). An error means the message as a
/// whole cannot be read (dead-letter it); an item's envelope is only checked by
/// [`Item::decode`], so one bad event does not take its neighbours with it.
pub fn items(bytes: &[u8]) -> Result<Vec<Item<'_>>, EnvelopeError> {
    if !is_packed(bytes) {
        return Ok(vec![Item {
            envelope: bytes,
            traceparent: None,
            tracestate: None,
        }]);
    }
    let packed: Vec<PackedItem<'_>> = serde_json::from_slice(bytes)
        .map_err(|e| EnvelopeError::Malformed(format!("packed message: {e}")))?;
    if packed.is_empty() {
        return Err(EnvelopeError::Malformed(
            "packed message: no events".to_owned(),
        ));
    }
    Ok(packed
        .into_iter()
        .map(|p| Item {
            envelope: p.event.get().as_bytes(),
            traceparent: p.traceparent,
            tracestate: p.tracestate,
        })
        .collect())
}

/// Whether an envelope can be packed: JSON (the compact encoding travels alone).
pub fn packable(envelope: &[u8]) -> bool {
    envelope.first() == Some(&b'{')
}

/// Packs JSON envelopes (see [`packable`]) into one message, in order.
pub fn pack<'a>(items: impl IntoIterator<Item = Item<'a>>) -> Vec<u8> {
    let mut out = Vec::with_capacity(1024);
    out.push(b'[');
    for (i, item) in items.into_iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(b"{\"event\":");
        out.extend_from_slice(item.envelope);
        for (name, value) in [
            ("traceparent", &item.traceparent),
            ("tracestate", &item.tracestate),
        ] {
            if let Some(v) = value {
                out.extend_from_slice(b",\"");
                out.extend_from_slice(name.as_bytes());
                out.extend_from_slice(b"\":");
                // A string always serialises.
                out.extend_from_slice(&serde_json::to_vec(v.as_ref()).unwrap_or_default());
            }
        }
        out.push(b'}');
    }
    out.push(b']');
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::payload::{Event, WorkerLost};

    fn envelope(seq: i64) -> Vec<u8> {
        let mut e = Envelope::new(
            "worker-w1",
            "test",
            Event::WorkerLost(WorkerLost {
                worker_id: "w1".into(),
                silent_for_s: 1.0,
            }),
        );
        e.sequence = seq;
        e.to_json().unwrap()
    }

    #[test]
    fn a_packed_message_gives_back_every_envelope_in_order_with_its_trace() {
        let (a, b) = (envelope(1), envelope(2));
        let bytes = pack([
            Item {
                envelope: &a,
                traceparent: Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into()),
                tracestate: Some("k=\"v\"".into()),
            },
            Item {
                envelope: &b,
                traceparent: None,
                tracestate: None,
            },
        ]);
        assert!(is_packed(&bytes));
        let items = items(&bytes).unwrap();
        assert_eq!(items.len(), 2);
        assert_eq!(items[0].envelope, a.as_slice());
        assert_eq!(items[1].envelope, b.as_slice());
        assert_eq!(
            items[0].traceparent.as_deref(),
            Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
        );
        assert_eq!(items[0].tracestate.as_deref(), Some("k=\"v\""));
        assert_eq!(items[1].traceparent, None);
        assert_eq!(items[0].decode().unwrap().sequence, 1);
        assert_eq!(items[1].decode().unwrap().sequence, 2);
    }

    #[test]
    fn an_unpacked_message_is_one_item() {
        let a = envelope(1);
        assert!(!is_packed(&a));
        let items = items(&a).unwrap();
        assert_eq!(items.len(), 1);
        assert_eq!(items[0].envelope, a.as_slice());
    }

    #[test]
    fn a_bad_item_fails_alone_and_a_bad_pack_fails_whole() {
        let a = envelope(1);
        let bad = br#"{"not": "an envelope"}"#;
        let bytes = pack([
            Item {
                envelope: bad,
                traceparent: None,
                tracestate: None,
            },
            Item {
                envelope: &a,
                traceparent: None,
                tracestate: None,
            },
        ]);
        let items = items(&bytes).unwrap();
        assert!(items[0].decode().is_err());
        assert_eq!(items[1].decode().unwrap().sequence, 1);
        for broken in [&b"[]"[..], b"[{\"event\": 1", b"[{\"evt\": {}}]", b" [1]"] {
            assert!(
                matches!(super::items(broken), Err(EnvelopeError::Malformed(_))),
                "{}",
                String::from_utf8_lossy(broken)
            );
        }
    }

    #[test]
    fn the_compact_encoding_is_not_packable() {
        assert!(!packable(b"HCPB\x01"));
        assert!(packable(&envelope(1)));
    }
}
