//! Trace loading: alignment, gaps, windows, errors, and hashprice against the derived file.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};

use hcp_economics::hashprice::{block_subsidy_btc, hashprice_usd_per_ph_day};
use hcp_economics::trace::{
    build, load, parse_date, parse_timestamp, CsvText, MissingPolicy, TraceInputs, TraceOptions,
};

fn csv(name: &str, text: &str) -> CsvText {
    CsvText {
        name: name.to_owned(),
        text: text.to_owned(),
    }
}

fn market_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data/market")
}

fn check_hashprice_rows(text: &str) -> usize {
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().unwrap().split(',').collect();
    let col = |n: &str| header.iter().position(|h| *h == n).unwrap();
    let (d, btc, diff, sub, hp) = (
        col("date_utc"),
        col("btc_usd_day_avg"),
        col("difficulty"),
        col("block_subsidy_btc"),
        col("hashprice_usd_per_ph_day_excl_fees"),
    );
    let mut n = 0;
    for line in lines {
        let f: Vec<&str> = line.split(',').collect();
        let date = parse_date(f[d]).unwrap();
        let subsidy = block_subsidy_btc(date);
        assert_eq!(
            subsidy,
            f[sub].parse::<f64>().unwrap(),
            "subsidy on {}",
            f[d]
        );
        let want: f64 = f[hp].parse().unwrap();
        let got = hashprice_usd_per_ph_day(
            f[btc].parse().unwrap(),
            f[diff].parse().unwrap(),
            subsidy,
            0.0,
        );
        assert!((got / want - 1.0).abs() < 1e-9, "{}: {got} vs {want}", f[d]);
        n += 1;
    }
    n
}

#[test]
fn hashprice_and_subsidy_match_the_derived_daily_file() {
    // An excerpt kept with the tests (the 2024 halving, 2022, 2023, 2025) ...
    let excerpt = include_str!("data/hashprice_excerpt.csv");
    assert_eq!(check_hashprice_rows(excerpt), 15);
    // ... and the whole file where the shared data is checked out.
    if let Ok(full) = std::fs::read_to_string(market_dir().join("btc_hashprice_daily_derived.csv"))
    {
        assert!(check_hashprice_rows(&full) > 1400);
    }
}

const PRICES: &str = "interval_start_utc,interval_start_local,LZ_A,LZ_B
2023-03-01T00:00:00Z,x,10,1
2023-03-01T01:00:00Z,x,20,2
2023-03-01T03:00:00Z,x,40,4
2023-03-01T04:00:00Z,x,,5
2023-03-01T05:00:00Z,x,60,6
2023-03-02T00:00:00Z,x,70,7
";
const BTC: &str = "date_utc,timestamp_utc,price_usd
2023-02-28,2023-02-28T00:00:00Z,20000
2023-03-01,2023-03-01T00:00:00Z,30000
2023-03-02,2023-03-02T00:00:00Z,40000
";
const DIFF: &str = "date_utc,timestamp_utc,difficulty,source
2023-02-20,2023-02-20T00:00:00Z,4e13,x
";
const CARBON: &str = "timestamp_utc,zone_id,ci_direct_gco2eq_per_kwh
2023-02-28T23:00:00Z,z,300
2023-03-01T02:00:00Z,z,200
";

fn inputs(prices: &str) -> TraceInputs {
    TraceInputs {
        prices: csv("prices.csv", prices),
        rt_prices: None,
        btc: csv("btc.csv", BTC),
        difficulty: csv("diff.csv", DIFF),
        carbon: Some(csv("carbon.csv", CARBON)),
        load: None,
    }
}

#[test]
fn gaps_are_forward_filled_or_skipped_and_daily_series_align_to_the_hour() {
    let mut o = TraceOptions::new("LZ_A");
    o.hourly_staleness_hours = 48.0;
    let t = build(&inputs(PRICES), &o).unwrap();
    // 00:00 .. 2023-03-02T00:00 hourly = 25 intervals; 02:00 (no row), 04:00 (empty) and
    // 06:00 .. 23:00 (no rows) are filled.
    assert_eq!(t.obs.len(), 25);
    assert_eq!(t.filled, 2 + 18);
    assert_eq!(t.obs[2].price, 20.0);
    assert!(t.obs[2].filled);
    assert_eq!(t.obs[4].price, 40.0);
    assert_eq!(t.obs[24].price, 70.0);
    // The 00:00 snapshot of the day, never the next day's.
    assert_eq!(t.obs[23].btc_usd, 30_000.0);
    assert_eq!(t.obs[24].btc_usd, 40_000.0);
    // Carbon: the latest value at or before the hour.
    assert_eq!(t.obs[1].carbon_g_per_kwh, Some(300.0));
    assert_eq!(t.obs[2].carbon_g_per_kwh, Some(200.0));
    let want = hashprice_usd_per_ph_day(30_000.0, 4e13, 6.25, 0.0);
    assert!((t.obs[0].hashprice - want).abs() < 1e-9);

    o.missing = MissingPolicy::Skip;
    let t = build(&inputs(PRICES), &o).unwrap();
    assert_eq!(t.obs.len(), 5);
    assert_eq!(t.skipped, 20);
    assert!(t.obs.iter().all(|x| !x.filled));
}

#[test]
fn the_window_scores_from_its_first_day_after_a_warm_up() {
    let mut o = TraceOptions::new("LZ_B");
    o.from = parse_date("2023-03-02");
    o.to = parse_date("2023-03-02");
    o.warmup_days = 1;
    o.hourly_staleness_hours = 48.0;
    let t = build(&inputs(PRICES), &o).unwrap();
    assert_eq!(t.scored_from, 24);
    assert_eq!(t.scored().len(), 1);
    assert_eq!(t.scored()[0].price, 7.0);
    assert_eq!(
        t.scored()[0].ts,
        parse_timestamp("2023-03-02T00:00:00Z").unwrap()
    );
}

#[test]
fn bad_input_is_reported_with_file_line_and_column() {
    let o = TraceOptions::new("LZ_A");
    let bad = PRICES.replace("40,4", "4O,4");
    let err = build(&inputs(&bad), &o).unwrap_err().to_string();
    assert_eq!(err, "prices.csv, line 4, column LZ_A: `4O` is not a number");

    let err = build(&inputs(PRICES), &TraceOptions::new("LZ_WEST"))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("prices.csv: no column `LZ_WEST`; the columns are: interval_start_utc"),
        "{err}"
    );

    let bad = PRICES.replace("2023-03-01T03:00:00Z", "yesterday");
    let err = build(&inputs(&bad), &o).unwrap_err().to_string();
    assert!(
        err.starts_with(
            "prices.csv, line 4, column interval_start_utc: `yesterday` is not a timestamp"
        ),
        "{err}"
    );

    let mut short = inputs(PRICES);
    short.difficulty = csv(
        "diff.csv",
        "timestamp_utc,difficulty\n2023-03-01T12:00:00Z,4e13\n",
    );
    let err = build(&short, &o).unwrap_err().to_string();
    assert!(
        err.starts_with(
            "diff.csv: column `difficulty` has no value at or shortly before 2023-03-01T00:00:00Z"
        ),
        "{err}"
    );

    let bad = PRICES.replace("2023-03-01T05:00:00Z", "2023-03-01T04:30:00Z");
    let err = build(&inputs(&bad), &o).unwrap_err().to_string();
    assert!(err.contains("off the 3600-second grid"), "{err}");
}

#[test]
fn the_real_2023_files_load_into_a_complete_hourly_year() {
    let d = market_dir();
    let prices = d.join("ercot_dam_spp_hourly_2023.csv");
    if !prices.exists() {
        eprintln!("skipped: {} not checked out", prices.display());
        return;
    }
    let t = load(
        &prices,
        None,
        &d.join("btc_usd_daily.csv"),
        &d.join("btc_difficulty_daily.csv"),
        Some(&d.join("ercot_carbon_intensity_hourly_2023.csv")),
        Some(&d.join("ercot_native_load_hourly_2023.csv")),
        &TraceOptions::new("LZ_WEST"),
    )
    .unwrap();
    assert_eq!(t.obs.len(), 8760);
    assert_eq!((t.filled, t.skipped), (0, 0));
    assert!(t
        .obs
        .iter()
        .all(|o| o.carbon_g_per_kwh.is_some() && o.system_load_mw.is_some()));
    // 2023 hashprice excluding fees stayed between $50 and $150 per PH/day.
    assert!(t.obs.iter().all(|o| (50.0..150.0).contains(&o.hashprice)));
}
