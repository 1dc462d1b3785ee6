//! Dead letters: a rejected message is re-produced, byte for byte with its key and headers, to
//! the dead-letter topic, with headers saying why, where it came from and who rejected it.

use rdkafka::message::{Headers, Message};

use crate::message::OutgoingMessage;
use hcp_events::headers;

/// The class of rejection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeadLetterKind {
    /// Not a valid envelope (bad JSON, unknown type, invalid payload).
    Malformed,
    /// Valid, but the projection can never apply it.
    Poison,
}

impl DeadLetterKind {
    /// Header value.
    pub const fn as_str(self) -> &'static str {
        match self {
            DeadLetterKind::Malformed => "malformed",
            DeadLetterKind::Poison => "poison",
        }
    }
}

/// Builds the dead-letter message for `original`.
pub fn dead_letter<M: Message>(
    original: &M,
    dead_letter_topic: &str,
    consumer: &str,
    kind: DeadLetterKind,
    reason: &str,
) -> OutgoingMessage {
    let mut hs: Vec<(String, Vec<u8>)> = Vec::new();
    if let Some(h) = original.headers() {
        for header in h.iter() {
            hs.push((
                header.key.to_owned(),
                header.value.map(<[u8]>::to_vec).unwrap_or_default(),
            ));
        }
    }
    hs.push((headers::DLQ_REASON.into(), reason.as_bytes().to_vec()));
    hs.push((headers::DLQ_KIND.into(), kind.as_str().as_bytes().to_vec()));
    hs.push((
        headers::DLQ_SOURCE_TOPIC.into(),
        original.topic().as_bytes().to_vec(),
    ));
    hs.push((
        headers::DLQ_SOURCE_PARTITION.into(),
        original.partition().to_string().into_bytes(),
    ));
    hs.push((
        headers::DLQ_SOURCE_OFFSET.into(),
        original.offset().to_string().into_bytes(),
    ));
    hs.push((headers::DLQ_CONSUMER.into(), consumer.as_bytes().to_vec()));
    OutgoingMessage {
        topic: dead_letter_topic.to_owned(),
        key: original
            .key()
            .map(|k| String::from_utf8_lossy(k).into_owned())
            .unwrap_or_default(),
        payload: original.payload().map(<[u8]>::to_vec).unwrap_or_default(),
        headers: hs,
    }
}

/// Narrows a dead letter built by [`dead_letter`] from a packed message
/// ([`hcp_events::pack`]) to the one event refused: its own bytes, and its index in the
/// message as `hcp-dlq-packed-index` (its neighbours were handled).
pub fn narrow_to_item(dead: &mut OutgoingMessage, index: usize, event: &[u8]) {
    dead.payload = event.to_vec();
    // The message's key is its first event's stream; the refused event's own, when it reads.
    if let Ok(e) = hcp_events::Envelope::decode(event) {
        dead.key = e.stream_id;
    }
    dead.headers.retain(|(k, _)| k != headers::PACKED);
    dead.headers.push((
        headers::DLQ_PACKED_INDEX.into(),
        index.to_string().into_bytes(),
    ));
}
