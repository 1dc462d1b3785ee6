//! The gateway's pure rules: no I/O, unit-tested without a runtime.

pub mod cursor;
pub mod eta;
pub mod key_cache;
pub mod keys;
pub mod rate_limit;
