//! The Prometheus recorder. Histograms get explicit buckets: every metric whose name ends in
//! `_seconds` uses [`LATENCY_BUCKETS_SECONDS`] (100 µs to 30 s), so p50/p99 can be read at
//! millisecond resolution where the spine operates.

use std::sync::OnceLock;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// Buckets for latency histograms, in seconds.
pub const LATENCY_BUCKETS_SECONDS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.0075, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.5, 5.0, 10.0, 30.0,
];

/// Buckets for size histograms (batch sizes, counts).
pub const SIZE_BUCKETS: &[f64] = &[1.0, 2.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0];

static HANDLE: OnceLock<Result<PrometheusHandle, String>> = OnceLock::new();

/// Installs the global Prometheus recorder once per process and returns its render handle.
/// Later calls return the same handle (tests start several components in one process); a
/// call made while another thread installs it waits for that install, so it cannot find the
/// global recorder set and its handle not yet stored.
pub fn install_metrics() -> Result<PrometheusHandle, String> {
    HANDLE
        .get_or_init(|| {
            PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS_SECONDS)
                .and_then(|b| {
                    b.set_buckets_for_metric(Matcher::Suffix("_size".into()), SIZE_BUCKETS)
                })
                .map_err(|e| e.to_string())?
                .install_recorder()
                .map_err(|e| e.to_string())
        })
        .clone()
}

#[cfg(test)]
mod tests {
    use super::install_metrics;

    #[test]
    fn concurrent_installs_all_get_the_one_recorder() {
        let threads: Vec<_> = (0..8)
            .map(|_| std::thread::spawn(install_metrics))
            .collect();
        for t in threads {
            assert!(t.join().is_ok_and(|r| r.is_ok()), "an install failed");
        }
        assert!(install_metrics().is_ok());
    }
}
