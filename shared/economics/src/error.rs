//! The crate's error type: every variant says what the caller has to fix.

/// Errors from loading inputs or building a model.
#[derive(Debug, thiserror::Error)]
pub enum EconError {
    /// A file could not be read.
    #[error("failed to read {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// One cell of a CSV file is unusable; fix the file or pick another column.
    #[error("{path}, line {line}, column {column}: {message}")]
    Cell {
        /// The file.
        path: String,
        /// 1-based line number.
        line: usize,
        /// Column name (or number when the header is short).
        column: String,
        /// What is wrong.
        message: String,
    },
    /// A whole file is unusable (missing column, no rows, not covering the window).
    #[error("{path}: {message}")]
    File {
        /// The file.
        path: String,
        /// What is wrong.
        message: String,
    },
    /// The fleet description is invalid.
    #[error("fleet description {path}: {message}")]
    Fleet {
        /// The file (or a label for in-memory text).
        path: String,
        /// What is wrong.
        message: String,
    },
    /// The requested computation cannot be done as configured (e.g. a DP state space too large).
    #[error("{0}")]
    Model(String),
}
