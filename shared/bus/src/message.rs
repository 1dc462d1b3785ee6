//! What a producer sends.

/// A message to produce.
#[derive(Debug, Clone)]
pub struct OutgoingMessage {
    /// Topic.
    pub topic: String,
    /// Key (the stream id).
    pub key: String,
    /// Value bytes.
    pub payload: Vec<u8>,
    /// Headers, in order.
    pub headers: Vec<(String, Vec<u8>)>,
}
