//! HCP fleet economics, pure: no Kafka, no database, no clock.
//!
//! The same decision code serves the backtest (`hcp backtest`) and, later, the live optimizer
//! service: a [`policy::Policy`] sees a [`policy::Past`] (every observation up to and including
//! the present interval, nothing after it) and returns per-unit power levels.
//!
//! - [`trace`]: loading market traces (ERCOT-style wide price CSVs, daily BTC price and
//!   difficulty, optional carbon intensity and system load) onto one interval grid;
//! - [`hashprice`]: block subsidy by date, hashprice and break-even prices;
//! - [`fleet`]: the fleet and site description (TOML) and its compiled model;
//! - [`econ`]: per-interval revenue, energy, carbon and 4CP cost, i.e. profit;
//! - [`dispatch`] and [`lp`]: the power split under a site cap (greedy and a dense simplex);
//! - [`optimum`]: the exact hindsight optimum (threshold, dynamic programming, LP dispatch);
//! - [`policy`]: always-on, fixed break-even strike, the rule-based policy and Q-learning;
//! - [`backtest`]: the runner that scores policies, baselines and the optimum over a trace;
//! - [`plot`]: a dependency-light PNG chart of price, allocation and cumulative profit.

pub mod backtest;
pub mod dispatch;
pub mod econ;
mod error;
pub mod fleet;
pub mod hashprice;
pub mod lp;
pub mod optimum;
pub mod plot;
pub mod policy;
mod table;
pub mod trace;

pub use error::EconError;
