//! HCP's scheduling domain, free of I/O so that every rule is unit-tested and benchmarked
//! without a broker or a database. Services are thin shells around these types.

pub mod state;

pub use state::{transition, InvalidTransition, WorkloadState};
