//! Hashprice from BTC price and difficulty, the block subsidy by date, and break-even prices.
//!
//! Hashprice ($/PH/day) = subsidy x 86,400 x 1e15 / (difficulty x 2^32) x BTC/USD, divided by
//! `1 - fee_share` when fees are counted, `fee_share` being the fees' share of the whole block
//! reward (subsidy + fees). The subsidy changes by date at the halvings (blocks 210,000 x k).
//! (One PH/s tries 86,400 x 1e15 hashes a day and each finds a block with probability
//! 1 / (difficulty x 2^32). The `144` in `../shared/data/market/SOURCES.md` is blocks per day,
//! which belongs in the hashrate form of the formula, not this one; the derived CSV agrees with
//! 86,400.)

use time::{Date, Month};

/// Known halvings: the UTC date of the halving block and the subsidy from that date on.
const HALVINGS: [(i32, Month, u8, f64); 4] = [
    (2012, Month::November, 28, 25.0),
    (2016, Month::July, 9, 12.5),
    (2020, Month::May, 11, 6.25),
    (2024, Month::April, 20, 3.125),
];

/// Days between halvings assumed after the last known one: 210,000 blocks at the target 10
/// minutes is 1,458.3 days; real epochs ran slightly shorter, so later dates are approximate.
const DAYS_PER_HALVING_AFTER_KNOWN: i64 = 1458;

/// Block subsidy in BTC for blocks mined on `date` (UTC), switching at the start of the day of
/// the halving block (block 840,000 was mined at 00:09 UTC on 2024-04-20).
pub fn block_subsidy_btc(date: Date) -> f64 {
    let mut subsidy = 50.0;
    let mut last = None;
    for (y, m, d, s) in HALVINGS {
        if let Ok(h) = Date::from_calendar_date(y, m, d) {
            if date >= h {
                subsidy = s;
            }
            last = Some(h);
        }
    }
    if let Some(last) = last {
        let days = (date - last).whole_days();
        if days >= DAYS_PER_HALVING_AFTER_KNOWN {
            let extra = days / DAYS_PER_HALVING_AFTER_KNOWN;
            subsidy /= 2f64.powi(i32::try_from(extra).unwrap_or(i32::MAX).min(64));
        }
    }
    subsidy
}

/// Expected BTC per PH/s per day from the subsidy alone: 86,400 x 1e15 hashes a day, each
/// finding a block with probability 1 / (difficulty x 2^32).
pub fn btc_per_ph_day(difficulty: f64, subsidy_btc: f64) -> f64 {
    subsidy_btc * 86_400.0 * 1e15 / (difficulty * 4_294_967_296.0)
}

/// Hashprice in $/PH/day; `fee_share` in [0, 1) is the fees' share of the whole block reward.
pub fn hashprice_usd_per_ph_day(
    btc_usd: f64,
    difficulty: f64,
    subsidy_btc: f64,
    fee_share: f64,
) -> f64 {
    btc_per_ph_day(difficulty, subsidy_btc) * btc_usd / (1.0 - fee_share)
}

/// Mining break-even electricity price ($/MWh of IT energy) for a machine of `j_per_th`:
/// hashprice / (J/TH x 0.024). Divide by PUE for the price at the meter.
pub fn break_even_usd_per_mwh(hashprice_usd_per_ph_day: f64, j_per_th: f64) -> f64 {
    hashprice_usd_per_ph_day / (j_per_th * 0.024)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use time::macros::date;

    #[test]
    fn subsidy_halves_on_the_halving_dates() {
        assert_eq!(block_subsidy_btc(date!(2009 - 01 - 03)), 50.0);
        assert_eq!(block_subsidy_btc(date!(2020 - 05 - 10)), 12.5);
        assert_eq!(block_subsidy_btc(date!(2023 - 08 - 01)), 6.25);
        assert_eq!(block_subsidy_btc(date!(2024 - 04 - 19)), 6.25);
        assert_eq!(block_subsidy_btc(date!(2024 - 04 - 20)), 3.125);
        assert_eq!(block_subsidy_btc(date!(2027 - 12 - 31)), 3.125);
        assert_eq!(block_subsidy_btc(date!(2028 - 06 - 01)), 1.5625);
    }

    #[test]
    fn break_even_of_an_s21_matches_the_design_formula() {
        // $70/PH/day at 17.5 J/TH: 70 / 0.42 = $166.67/MWh.
        let be = break_even_usd_per_mwh(70.0, 17.5);
        assert!((be - 166.666_666).abs() < 1e-3);
        // Fees raise hashprice by 1 / (1 - share).
        let h0 = hashprice_usd_per_ph_day(30_000.0, 5e13, 6.25, 0.0);
        let h1 = hashprice_usd_per_ph_day(30_000.0, 5e13, 6.25, 0.2);
        assert!((h1 / h0 - 1.25).abs() < 1e-12);
    }
}
