//! Errors of the event store, named for what the caller must do.

/// An event store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Another writer appended to the stream first: reload the stream and retry the command.
    #[error(
        "concurrency conflict on stream `{stream_id}`: expected version {expected}, found {actual}"
    )]
    ConcurrencyConflict {
        /// The stream.
        stream_id: String,
        /// What the caller expected.
        expected: String,
        /// What the store holds (0 = no stream).
        actual: i64,
    },
    /// The events given to append are unusable (a caller bug or bad input).
    #[error("invalid append: {0}")]
    InvalidAppend(String),
    /// A stored event can no longer be decoded (an upcast is missing).
    #[error("stored event at position {position} cannot be decoded: {reason}")]
    Corrupt {
        /// Global position.
        position: i64,
        /// Why.
        reason: String,
    },
    /// The database failed; usually transient (back off and retry).
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
}

impl StoreError {
    /// Whether retrying the same operation later may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            StoreError::Database(_) | StoreError::ConcurrencyConflict { .. }
        )
    }
}
