//! Read models shared by the gateway and the operator CLI. Each is a [`Projection`]: applied live
//! by the transactional consumer and rebuilt offline by replaying the log, with identical
//! results. Their queries live next to them, so that readers never spell a table twice.
//!
//! - [`board`]: one row per workload ([`WorkloadBoard`], table `workload_board`);
//! - [`resources`]: workers, GPUs and allocations ([`ResourceBoard`], tables `gateway_*`, the
//!   allocations a view over the board);
//! - [`market`]: observed prices ([`MarketPrices`], table `market_prices`);
//! - [`decisions`]: optimizer decisions and confirmations ([`DecisionBoard`], table
//!   `decision_board`).
//!
//! [`Projection`]: hcp_db::Projection

pub mod board;
pub mod decisions;
pub mod market;
pub mod resources;

pub use board::{WorkloadBoard, WorkloadRecord};
pub use decisions::DecisionBoard;
pub use market::MarketPrices;
pub use resources::ResourceBoard;
