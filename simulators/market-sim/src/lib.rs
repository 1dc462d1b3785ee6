//! hcp-market-sim: publishes market events to the `market` topic, without a database.
//!
//! Replay mode reads the real traces (ERCOT day-ahead or real-time prices for one zone, daily
//! BTC price and difficulty, hashprice derived from them, hourly carbon intensity and system
//! load) through `hcp_economics::trace`; synthetic mode generates them from a seed
//! ([`synthetic`]). Either way a GPU spot rate is synthesised beside them, and grid signals are
//! derived ([`grid`]): demand-response requests from a schedule and optionally at random during
//! price spikes, and 4CP warnings from the load seen so far.
//!
//! Every event is an envelope on stream `market-<series>` (grid events: `grid-<zone>`) with
//! sequence = interval start in Unix seconds, key = stream id. `interval_start` is the trace
//! time; the envelope's `occurred_at` is the wall clock. Events are paced at `speed` simulated
//! seconds per real second.
//!
//! - [`series`]: names, units and the row type;
//! - [`replay`], [`synthetic`]: where rows come from;
//! - [`grid`], [`timeline`]: rows into time-ordered events;
//! - [`publish`]: pacing and producing.

pub mod grid;
pub mod metrics;
pub mod publish;
pub mod replay;
pub mod series;
pub mod synthetic;
pub mod timeline;

pub use publish::{run, MarketSimConfig, Summary};
