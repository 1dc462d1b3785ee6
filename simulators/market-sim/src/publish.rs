//! Pacing and producing: events are due at `start + (trace time - first trace time) / speed`;
//! everything due is produced in one batch and acknowledged before the next.

use std::time::{Duration, Instant};

use hcp_bus::{BusError, KafkaSettings, OutgoingMessage, Producer};
use hcp_economics::EconError;
use hcp_events::{headers, Envelope, Topic};
use tokio_util::sync::CancellationToken;

use crate::grid::parse_time;
use crate::metrics as m;
use crate::replay::{self, ReplayInputs};
use crate::synthetic::{self, SyntheticParams};
use crate::timeline::{self, GridOptions, MarketEvent};

/// The `producer` of every envelope.
pub const PRODUCER: &str = "market-sim";

/// Where the market comes from.
#[derive(Debug, Clone)]
pub enum Source {
    /// Real traces.
    Replay(ReplayInputs),
    /// Generated from a seed over `[from, to)` (Unix seconds).
    Synthetic {
        /// Start.
        from: i64,
        /// End (exclusive).
        to: i64,
    },
}

/// Everything a run needs besides Kafka.
#[derive(Debug, Clone)]
pub struct MarketSimConfig {
    /// Rows from a replay or the synthesiser.
    pub source: Source,
    /// Simulated seconds per real second (3600 = an hour a second).
    pub speed: f64,
    /// Synthetic parameters (the whole market in synthetic mode, the GPU rate in replay mode).
    pub synthetic: SyntheticParams,
    /// GPU model naming the spot series.
    pub gpu_model: String,
    /// Grid signals.
    pub grid: GridOptions,
    /// Print progress to stderr every second.
    pub progress: bool,
}

/// What a run published.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Summary {
    /// Intervals (rows) published.
    pub rows: u64,
    /// Events published.
    pub events: u64,
    /// Whether the run stopped before the end of the trace.
    pub cancelled: bool,
}

/// Why a run failed.
#[derive(Debug, thiserror::Error)]
pub enum MarketSimError {
    /// A trace file is missing or unusable (fix the file or the flags).
    #[error(transparent)]
    Trace(#[from] EconError),
    /// The configuration cannot work.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// Kafka could not be used.
    #[error(transparent)]
    Bus(#[from] BusError),
}

/// The events of a configuration, in due order, and the number of rows behind them.
pub fn events(config: &MarketSimConfig) -> Result<(Vec<MarketEvent>, usize), MarketSimError> {
    if !(config.speed.is_finite() && config.speed > 0.0) {
        return Err(MarketSimError::Config(format!(
            "speed must be a positive number, got {}",
            config.speed
        )));
    }
    let (rows, series) = match &config.source {
        Source::Replay(inputs) => (
            replay::load(inputs, &config.synthetic)?,
            inputs.price_series(),
        ),
        Source::Synthetic { from, to } => {
            if to <= from {
                return Err(MarketSimError::Config("--to must be after --from".into()));
            }
            (
                synthetic::generate(&config.synthetic, *from, *to),
                crate::series::ercot_rt(&config.grid.dr_zone),
            )
        }
    };
    let events = timeline::build(&rows, &series, &config.gpu_model, &config.grid);
    Ok((events, rows.len()))
}

/// Envelope + headers of one event.
fn message(topic: &str, e: &MarketEvent) -> Result<OutgoingMessage, MarketSimError> {
    let mut env = Envelope::new(e.stream_id.clone(), PRODUCER, e.payload.clone());
    env.sequence = e.sequence;
    let payload = env
        .to_json()
        .map_err(|err| MarketSimError::Config(format!("cannot encode an event: {err}")))?;
    Ok(OutgoingMessage {
        topic: topic.to_owned(),
        key: env.stream_id.clone(),
        payload,
        headers: vec![
            (
                headers::EVENT_TYPE.to_owned(),
                env.event_type().as_str().as_bytes().to_vec(),
            ),
            (
                headers::SCHEMA_VERSION.to_owned(),
                env.schema_version.to_string().into_bytes(),
            ),
            (
                headers::EVENT_ID.to_owned(),
                env.event_id.to_string().into_bytes(),
            ),
        ],
    })
}

/// Publishes the configured market to `kafka`'s `market` topic until the trace ends or
/// `shutdown` is cancelled.
pub async fn run(
    config: MarketSimConfig,
    kafka: &KafkaSettings,
    shutdown: CancellationToken,
) -> Result<Summary, MarketSimError> {
    let (events, total_rows) = events(&config)?;
    let producer = Producer::new(kafka, PRODUCER)?;
    let topic = kafka.topic(Topic::Market);
    let first_at = events.first().map_or(0, |e| e.at);
    let start = Instant::now();
    let due = |at: i64| {
        #[allow(clippy::cast_precision_loss)]
        let offset = (at - first_at) as f64 / config.speed;
        start + Duration::from_secs_f64(offset.max(0.0))
    };
    let mut summary = Summary::default();
    let mut next = 0;
    let mut last_row_at = None;
    let mut last_report = Instant::now();
    let mut reported_events = 0;
    while next < events.len() {
        let at = events[next].at;
        tokio::select! {
            _ = shutdown.cancelled() => { summary.cancelled = true; break; }
            _ = tokio::time::sleep_until(due(at).into()) => {}
        }
        // Everything due by now goes in one batch.
        let now = Instant::now();
        let end = events[next..]
            .iter()
            .position(|e| due(e.at) > now)
            .map_or(events.len(), |p| next + p);
        let batch: Vec<OutgoingMessage> = events[next..end]
            .iter()
            .map(|e| message(&topic, e))
            .collect::<Result<_, _>>()?;
        loop {
            match producer.send_batch(&batch).await {
                Ok(()) => break,
                Err(e) => {
                    metrics::counter!(m::SEND_FAILURES).increment(1);
                    tracing::warn!(error = %e, "market batch not acknowledged; retrying");
                    tokio::select! {
                        _ = shutdown.cancelled() => { summary.cancelled = true; return Ok(summary); }
                        _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                    }
                }
            }
        }
        for e in &events[next..end] {
            metrics::counter!(m::EVENTS, "type" => e.payload.event_type().as_str()).increment(1);
            if last_row_at != Some(e.at) && e.stream_id.starts_with("market-") {
                last_row_at = Some(e.at);
                summary.rows += 1;
                metrics::counter!(m::ROWS).increment(1);
            }
        }
        summary.events += (end - next) as u64;
        #[allow(clippy::cast_precision_loss)]
        metrics::gauge!(m::SIM_TIME).set(events[end - 1].at as f64);
        next = end;
        if config.progress && last_report.elapsed() >= Duration::from_secs(1) {
            let secs = last_report.elapsed().as_secs_f64();
            #[allow(clippy::cast_precision_loss)]
            let rate = (summary.events - reported_events) as f64 / secs;
            eprintln!(
                "market-sim: sim {} rows {}/{} events {} ({rate:.0}/s)",
                hcp_economics::trace::fmt_ts(events[end - 1].at),
                summary.rows,
                total_rows,
                summary.events
            );
            last_report = Instant::now();
            reported_events = summary.events;
        }
    }
    let _ = producer.flush(Duration::from_secs(5));
    if config.progress {
        eprintln!(
            "market-sim: done: {} rows, {} events in {:.1} s",
            summary.rows,
            summary.events,
            start.elapsed().as_secs_f64()
        );
    }
    Ok(summary)
}

/// Parses a `--from`/`--to` value: a date (`2023-08-10`) or a time.
pub fn parse_bound(s: &str) -> Option<i64> {
    parse_time(s)
}
