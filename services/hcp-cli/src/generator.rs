//! Demo load for the spine: workloads walking their lifecycle, and real ERCOT prices replayed
//! from CSV. Every event goes through the event store and the outbox, exactly like a service's.

use std::collections::VecDeque;
use std::time::Duration;

use hcp_db::{EventStore, ExpectedVersion, Publish, StoreError};
use hcp_events::payload::*;
use hcp_events::{Envelope, Event};
use rand::Rng;
use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use uuid::Uuid;

/// The producer name on generated events.
pub const PRODUCER: &str = "hcp-spine-demo";

/// Appends one event to `stream_id` in its own transaction, publishing to `topic` with the
/// current trace context. Returns the new stream version.
pub async fn append_one(
    store: &EventStore,
    topic: &str,
    stream_id: &str,
    expected: ExpectedVersion,
    event: Event,
) -> Result<i64, StoreError> {
    let (traceparent, tracestate) = hcp_bus::trace::current_trace_headers();
    let publish = Publish::to(topic).with_trace(traceparent, tracestate);
    let envelope = Envelope::new(stream_id, PRODUCER, event);
    Ok(store
        .append_and_commit(stream_id, expected, &[envelope], &publish)
        .await?
        .new_version)
}

/// The four-event happy path of one workload (submitted, scheduled, started, completed),
/// with sequences unassigned. Used by the bench and the tests.
pub fn happy_path(id: Uuid, tenant: &str, producer: &str) -> Vec<Envelope> {
    let stream = format!("workload-{id}");
    [
        Event::WorkloadSubmitted(WorkloadSubmitted::simple(
            id,
            tenant,
            WorkloadKind::Training,
            "llama-3-8b",
            2,
            60,
        )),
        Event::WorkloadScheduled(WorkloadScheduled {
            workload_id: id,
            worker_id: "w1".into(),
            gpu_ids: vec!["gpu-0".into(), "gpu-1".into()],
        }),
        Event::WorkloadStarted(WorkloadStarted { workload_id: id }),
        Event::WorkloadCompleted(WorkloadCompleted {
            workload_id: id,
            runtime_s: 60.0,
            output: None,
        }),
    ]
    .into_iter()
    .map(|e| Envelope::new(stream.clone(), producer, e))
    .collect()
}

/// The next step of a workload in flight.
#[derive(Debug)]
struct InFlight {
    id: Uuid,
    stream: String,
    version: i64,
    step: u8,
    due: tokio::time::Instant,
}

/// Generates workload lifecycles at `per_second` until cancelled; returns workloads started.
pub async fn run_workloads(
    store: EventStore,
    topic: String,
    per_second: f64,
    shutdown: CancellationToken,
) -> u64 {
    if per_second <= 0.0 {
        return 0;
    }
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / per_second));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut flying: VecDeque<InFlight> = VecDeque::new();
    let mut started = 0u64;
    let tenants = ["acme", "globex", "initech"];
    let models = ["all-MiniLM-L6-v2", "llama-3-8b", "mistral-7b", "sdxl"];
    while !shutdown.is_cancelled() {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tick.tick() => {}
        }
        let (tenant, model, kind, gpus, duration) = {
            let mut rng = rand::rng();
            (
                tenants[rng.random_range(0..tenants.len())],
                models[rng.random_range(0..models.len())],
                match rng.random_range(0..3) {
                    0 => WorkloadKind::RealtimeInference,
                    1 => WorkloadKind::BatchInference,
                    _ => WorkloadKind::Training,
                },
                [1, 1, 2, 4, 8][rng.random_range(0..5)],
                rng.random_range(1..5),
            )
        };
        let id = Uuid::now_v7();
        let stream = format!("workload-{id}");
        let span = tracing::info_span!("submit_workload", workload_id = %id);
        let submitted = Event::WorkloadSubmitted(WorkloadSubmitted::simple(
            id, tenant, kind, model, gpus, duration,
        ));
        match append_one(
            &store,
            &topic,
            &stream,
            ExpectedVersion::NoStream,
            submitted,
        )
        .instrument(span)
        .await
        {
            Ok(version) => {
                started += 1;
                flying.push_back(InFlight {
                    id,
                    stream,
                    version,
                    step: 1,
                    due: tokio::time::Instant::now() + Duration::from_millis(50),
                });
            }
            Err(e) => tracing::warn!(error = %e, "demo submit failed"),
        }
        advance_due(&store, &topic, &mut flying).await;
    }
    started
}

async fn advance_due(store: &EventStore, topic: &str, flying: &mut VecDeque<InFlight>) {
    let now = tokio::time::Instant::now();
    let mut keep = VecDeque::with_capacity(flying.len());
    while let Some(mut w) = flying.pop_front() {
        if w.due > now {
            keep.push_back(w);
            continue;
        }
        let roll: u32 = rand::rng().random_range(0..100);
        let (event, last, wait_ms) = match w.step {
            1 if roll < 3 => (
                Event::WorkloadCancelled(WorkloadCancelled {
                    workload_id: w.id,
                    requested_by: "tenant".into(),
                }),
                true,
                0,
            ),
            1 => (
                Event::WorkloadScheduled(WorkloadScheduled {
                    workload_id: w.id,
                    worker_id: format!("sim-worker-{}", roll % 4),
                    gpu_ids: vec![format!("gpu-{}", roll % 8)],
                }),
                false,
                50,
            ),
            2 => (
                Event::WorkloadStarted(WorkloadStarted { workload_id: w.id }),
                false,
                1000,
            ),
            _ if roll < 5 => (
                Event::WorkloadFailed(WorkloadFailed {
                    workload_id: w.id,
                    reason: "simulated GPU fault".into(),
                }),
                true,
                0,
            ),
            _ => (
                Event::WorkloadCompleted(WorkloadCompleted {
                    workload_id: w.id,
                    runtime_s: 1.0,
                    output: None,
                }),
                true,
                0,
            ),
        };
        let span = tracing::info_span!("advance_workload", workload_id = %w.id, step = w.step);
        match append_one(
            store,
            topic,
            &w.stream,
            ExpectedVersion::Exact(w.version),
            event,
        )
        .instrument(span)
        .await
        {
            Ok(v) if !last => {
                w.version = v;
                w.step += 1;
                w.due = now + Duration::from_millis(wait_ms);
                keep.push_back(w);
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, workload_id = %w.id, "demo transition failed"),
        }
    }
    *flying = keep;
}

/// One row of a market CSV: interval start and value.
pub fn parse_market_csv(text: &str, column: &str) -> Result<Vec<(OffsetDateTime, f64)>, String> {
    let mut lines = text.lines();
    let header = lines.next().ok_or("empty CSV")?;
    let cols: Vec<&str> = header.split(',').collect();
    let idx = cols
        .iter()
        .position(|c| c.trim() == column)
        .ok_or_else(|| format!("column {column} not in header: {header}"))?;
    let mut out = Vec::new();
    for (n, line) in lines.enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let fields: Vec<&str> = line.split(',').collect();
        let ts = fields
            .first()
            .and_then(|t| {
                OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339).ok()
            })
            .ok_or_else(|| format!("line {}: bad timestamp", n + 2))?;
        let value: f64 = fields
            .get(idx)
            .and_then(|v| v.trim().parse().ok())
            .ok_or_else(|| format!("line {}: bad value in {column}", n + 2))?;
        out.push((ts, value));
    }
    Ok(out)
}

/// Replays `rows` as `market.price_observed` events at `per_second` until done or cancelled.
pub async fn run_market_replay(
    store: EventStore,
    topic: String,
    series: String,
    rows: Vec<(OffsetDateTime, f64)>,
    per_second: f64,
    shutdown: CancellationToken,
) -> u64 {
    if per_second <= 0.0 {
        return 0;
    }
    let stream = format!("market-{series}");
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / per_second));
    let mut sent = 0;
    for (interval_start, value) in rows {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tick.tick() => {}
        }
        let event = Event::MarketPriceObserved(MarketPriceObserved {
            series: series.clone(),
            interval_start,
            value,
            unit: "usd_per_mwh".into(),
        });
        match append_one(&store, &topic, &stream, ExpectedVersion::Any, event).await {
            Ok(_) => sent += 1,
            Err(e) => tracing::warn!(error = %e, "market replay append failed"),
        }
    }
    sent
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_market_csv_column_is_read_with_its_timestamps() {
        let csv = "interval_start_utc,interval_start_local,LZ_WEST\n\
                   2023-01-01T06:00:00Z,2023-01-01T00:00:00-06:00,20.48\n\
                   2023-01-01T07:00:00Z,2023-01-01T01:00:00-06:00,-1.5\n";
        let rows = parse_market_csv(csv, "LZ_WEST").unwrap();
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[1].1, -1.5);
        assert_eq!(rows[0].0.hour(), 6);
    }

    #[test]
    fn a_missing_column_is_named_in_the_error() {
        let err = parse_market_csv("a,b\n", "LZ_WEST").unwrap_err();
        assert!(err.contains("LZ_WEST"), "{err}");
    }
}
