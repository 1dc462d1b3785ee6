//! hcp-allocation: the allocation ledger. Which workload holds which GPU is decided and written
//! only under the advisory lock of the GPU's pool (its worker's site), from the holders read
//! under that lock, with the partial unique index on live allocations as the backstop: that is
//! what "never double-book" rests on, whichever process places.
//!
//! Two callers place through [`place()`], set-based:
//! - the router's placement cycle, directly: the placement and the allocation are one step
//!   (`workload.scheduled` and the start command in the cycle's transaction, no proposal hop);
//! - the resource-manager, for `workload.placement_proposed` events (the handshake of ADR 0004,
//!   kept for any proposer).
//!
//! - [`check`]: whether a placement can be allocated, pure;
//! - [`view`]: a workload stream folded into what a decision needs;
//! - [`ledger`]: the SQL of the ledger's tables;
//! - [`mod@place`]: the decision and its writes.

pub mod check;
pub mod ledger;
pub mod place;
pub mod view;

pub use check::{check_placement, gpu_fits, Holder, RejectReason, Rejection, WorkerInfo};
pub use place::{place, Cause, Outcome, PlaceError, Request, RequestKind, Sink, Skip};
pub use view::WorkloadView;
