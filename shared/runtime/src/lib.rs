//! Process plumbing shared by every HCP binary: layered typed configuration ([`config`]) and
//! graceful shutdown ([`shutdown`]).

pub mod config;
pub mod shutdown;

pub use config::{load, load_layered, ConfigError};
pub use shutdown::{Shutdown, ShutdownGuard};
