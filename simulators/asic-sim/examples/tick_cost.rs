//! Where one tick's CPU goes at 250,000 ASICs, without Kafka:
//! `cargo run --release -p hcp-asic-sim --example tick_cost [ASICS] [TICKS]`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use hcp_asic_sim::fleet::{Fleet, SimParams};
use hcp_asic_sim::layout::{sites_from_counts, Layout};
use hcp_events::payload::AsicTelemetryBatch;
use hcp_events::{Envelope, Event};

fn main() {
    let mut args = std::env::args().skip(1);
    let asics: u32 = args.next().and_then(|a| a.parse().ok()).unwrap_or(250_000);
    let ticks: u32 = args.next().and_then(|a| a.parse().ok()).unwrap_or(10);
    let layout = Arc::new(Layout::build(&sites_from_counts(3, asics), 100).unwrap());
    let t0 = 1_700_000_000.0;
    let mut fleet = Fleet::new(layout.clone(), SimParams::default(), t0);
    let (mut advance, mut faults, mut summary, mut samples, mut encode) = (
        Duration::ZERO,
        Duration::ZERO,
        Duration::ZERO,
        Duration::ZERO,
        Duration::ZERO,
    );
    let mut bytes = 0usize;
    for k in 1..=ticks {
        let t = t0 + f64::from(k);
        let s = Instant::now();
        fleet.advance(t);
        advance += s.elapsed();
        let s = Instant::now();
        fleet.inject_faults(1.0);
        faults += s.elapsed();
        let s = Instant::now();
        let _ = fleet.summary();
        summary += s.elapsed();
        for (ri, rack) in layout.racks.iter().enumerate() {
            let s = Instant::now();
            let batch = fleet.rack_samples(ri);
            samples += s.elapsed();
            let s = Instant::now();
            let mut e = Envelope::new(
                format!("asic-{}", rack.id),
                "bench",
                Event::AsicTelemetryBatch(AsicTelemetryBatch {
                    site: "s".into(),
                    rack: rack.id.clone(),
                    sampled_at: time::OffsetDateTime::now_utc(),
                    samples: batch,
                }),
            );
            e.sequence = 1;
            bytes += e.to_json().unwrap().len();
            encode += s.elapsed();
        }
        fleet.mark_sampled();
    }
    let per = |d: Duration| d.as_secs_f64() * 1000.0 / f64::from(ticks);
    println!(
        "{asics} ASICs, per tick: advance {:.1} ms, faults {:.2} ms, summary {:.1} ms, samples {:.1} ms, JSON {:.1} ms; {:.1} MB of JSON per tick",
        per(advance),
        per(faults),
        per(summary),
        per(samples),
        per(encode),
        bytes as f64 / 1e6 / f64::from(ticks)
    );
}
