//! Read models shared by the gateway and the operator CLI. Each is a [`Projection`]: applied live
//! by the transactional consumer and rebuilt offline by replaying the log, with identical
//! results. Their queries live next to them, so that readers never spell a table twice.
//!
//! - [`board`]: one row per workload ([`WorkloadBoard`], table `workload_board`);
//! - [`resources`]: workers, GPUs and allocations ([`ResourceBoard`], tables `gateway_*`);
//! - [`market`]: observed prices ([`MarketPrices`], table `market_prices`).
//!
//! [`Projection`]: hcp_db::Projection

pub mod board;
pub mod market;
pub mod resources;

pub use board::{WorkloadBoard, WorkloadRecord};
pub use market::MarketPrices;
pub use resources::ResourceBoard;
