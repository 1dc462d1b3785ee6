//! HCP's scheduling domain, free of I/O so that every rule is unit-tested and benchmarked
//! without a broker or a database. Services are thin shells around these types.
//!
//! - [`state`]: the workload state machine;
//! - [`classify`]: kind, interruptibility and priority of a submission;
//! - [`queue`]: the 10-level weighted-fair priority queue with per-tenant round-robin;
//! - [`placement`]: gang placement scoring, the free-GPU index and feasibility;
//! - [`breaker`]: per-worker circuit breakers;
//! - [`preempt`]: which running work to stop for real-time work;
//! - [`bucket`]: token buckets (preemption rate limit).

pub mod breaker;
pub mod bucket;
pub mod classify;
pub mod placement;
pub mod preempt;
pub mod queue;
pub mod state;

pub use state::{transition, InvalidTransition, WorkloadState};
