//! The `hcp` operator binary as a library, so tests can start its parts in-process or as a
//! child process they can kill.
//!
//! - [`settings`]: the typed configuration;
//! - read models (workload board, market prices) live in `hcp-readmodel`;
//! - [`generator`]: the demo load (workload lifecycles and replayed ERCOT prices);
//! - [`app`]: wiring relay, consumers and admin server into one runnable application;
//! - [`ingest_bench`]: `hcp bench-ingest`, the telemetry ingest under a simulated fleet;
//! - [`backtest`]: `hcp backtest`, policies against the hindsight optimum on a market trace;
//! - [`cli`]: the command line.

pub mod app;
pub mod backtest;
pub mod bench;
pub mod cli;
pub mod generator;
pub mod ingest_bench;
pub mod settings;
