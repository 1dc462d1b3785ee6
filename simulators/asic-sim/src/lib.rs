//! hcp-asic-sim: a fleet of Bitcoin ASICs (Antminer S21 200 TH/s at 17.5 J/TH, S21 Pro
//! 234 TH/s at 15 J/TH, S21 XP 270 TH/s at 13.5 J/TH) across several sites, with power,
//! hashrate, temperature, hardware errors, accepted shares, faults and ramp dynamics. It
//! obeys `asic.command_issued` from `device-commands` and publishes per-rack
//! `asic.telemetry_batch` envelopes to `telemetry`. No database.
//!
//! - [`layout`]: sites, models, racks and device ids (from a fleet TOML or counts);
//! - [`fleet`]: the per-device state as flat arrays and the physics (pure);
//! - [`commands`]: site filtering, command-id dedup and scope resolution (pure);
//! - [`node`]: the consumer, the simulation thread and the sender ([`AsicSim`]).

pub mod commands;
pub mod fleet;
pub mod layout;
pub mod metrics;
pub mod node;

pub use node::{AsicSim, AsicSimConfig, AsicSimError, RunStats, SimClock};
