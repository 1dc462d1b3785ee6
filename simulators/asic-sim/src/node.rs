//! The process shell. Three parts, so that the CPU-bound simulation never blocks the async
//! runtime:
//! - the command consumer (async task): a plain rdkafka consumer on `device-commands` (group
//!   `<namespace>.asic-sim` unless told otherwise) that keeps only `asic.command_issued` for
//!   its sites, once per command id, dead-letters malformed and invalid ones with the reason,
//!   and passes resolved commands to the simulation;
//! - the simulation (a dedicated thread): waits for the next tick on the simulated clock,
//!   applying commands the moment they arrive, then advances the fleet, injects faults and
//!   encodes one `asic.telemetry_batch` per rack (stream `asic-<rack>`, sequence = sample time
//!   in Unix ms);
//! - the sender (async task): produces each tick's messages and waits for their
//!   acknowledgement. The channel between them holds two ticks, so a slow broker slows the
//!   simulation down (its lag is a metric) instead of filling memory.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hcp_bus::dead_letter::{dead_letter, narrow_to_item, DeadLetterKind};
use hcp_bus::{BusError, KafkaSettings, OutgoingMessage, Producer};
use hcp_events::payload::{AsicAction, AsicTelemetryBatch};
use hcp_events::{headers, pack, Envelope, Event, Topic};
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::message::{BorrowedMessage, Message};
use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;

use crate::commands::{CommandFilter, Verdict};
use crate::fleet::{Fleet, SimParams, Target, STATES};
use crate::layout::{Layout, LayoutError, SiteSpec};
use crate::metrics as m;

/// The `producer` of every envelope, and the consumer name on dead letters.
pub const PRODUCER: &str = "asic-sim";

/// How many command ids are remembered.
const DEDUP_CAPACITY: usize = 100_000;

/// Everything a run needs besides Kafka.
#[derive(Debug, Clone)]
pub struct AsicSimConfig {
    /// Sites and their machines.
    pub sites: Vec<SiteSpec>,
    /// Devices per rack (one telemetry message per rack and tick).
    pub rack_size: u32,
    /// Physics and faults.
    pub params: SimParams,
    /// Simulated seconds between ticks (and telemetry samples).
    pub tick_s: f64,
    /// Simulated seconds per real second.
    pub time_scale: f64,
    /// Tick as fast as possible (benchmarks): simulated time is then only the tick count.
    pub unpaced: bool,
    /// Stop after this many ticks.
    pub max_ticks: Option<u64>,
    /// Consumer group; default `<namespace>.asic-sim`.
    pub group: Option<String>,
    /// Print progress to stderr every few seconds.
    pub progress: bool,
    /// Telemetry as JSON envelopes instead of the compact encoding (`hcp_events::compact`).
    pub json_telemetry: bool,
}

impl Default for AsicSimConfig {
    fn default() -> Self {
        Self {
            sites: Vec::new(),
            rack_size: 100,
            params: SimParams::default(),
            tick_s: 1.0,
            time_scale: 1.0,
            unpaced: false,
            max_ticks: None,
            group: None,
            progress: false,
            json_telemetry: false,
        }
    }
}

/// Why the simulator stopped.
#[derive(Debug, thiserror::Error)]
pub enum AsicSimError {
    /// The fleet cannot be built.
    #[error(transparent)]
    Layout(#[from] LayoutError),
    /// The configuration cannot work.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// Kafka clients could not be created.
    #[error(transparent)]
    Bus(#[from] BusError),
    /// The consumer could not subscribe.
    #[error("kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    /// The simulation thread panicked (a bug).
    #[error("the simulation thread failed: {0}")]
    Thread(String),
}

/// Simulated time: Unix seconds that run `scale` times faster than the wall clock from the
/// moment the simulator was built.
#[derive(Debug, Clone, Copy)]
pub struct SimClock {
    wall0: Instant,
    sim0: f64,
    scale: f64,
}

impl SimClock {
    /// A clock starting at the current wall time.
    pub fn new(scale: f64) -> Self {
        let sim0 = OffsetDateTime::now_utc().unix_timestamp_nanos() as f64 / 1e9;
        Self {
            wall0: Instant::now(),
            sim0,
            scale,
        }
    }

    /// Simulated now, Unix seconds.
    pub fn now(&self) -> f64 {
        self.sim0 + self.wall0.elapsed().as_secs_f64() * self.scale
    }

    /// The wall instant at which simulated time `t` comes.
    pub fn wall_at(&self, t: f64) -> Instant {
        self.wall0 + Duration::from_secs_f64(((t - self.sim0) / self.scale).max(0.0))
    }
}

/// Counters of a run.
#[derive(Debug, Default)]
struct Counters {
    ticks: AtomicU64,
    messages: AtomicU64,
    samples: AtomicU64,
    commands: AtomicU64,
    busy_ns: AtomicU64,
}

/// What a run did.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct RunStats {
    /// Ticks simulated.
    pub ticks: u64,
    /// Telemetry messages acknowledged.
    pub messages: u64,
    /// Device samples in them.
    pub samples: u64,
    /// Commands obeyed.
    pub commands: u64,
    /// Wall time of the run, s.
    pub elapsed_s: f64,
    /// Wall time the simulation thread spent ticking and encoding, s.
    pub busy_s: f64,
}

/// The simulator.
#[derive(Debug)]
pub struct AsicSim {
    config: AsicSimConfig,
    layout: Arc<Layout>,
    clock: SimClock,
}

impl AsicSim {
    /// Builds the fleet.
    pub fn new(config: AsicSimConfig) -> Result<Self, AsicSimError> {
        if !(config.tick_s.is_finite() && config.tick_s > 0.0) {
            return Err(AsicSimError::Config(
                "tick must be a positive number of seconds".into(),
            ));
        }
        if !(config.time_scale.is_finite() && config.time_scale > 0.0) {
            return Err(AsicSimError::Config("time scale must be positive".into()));
        }
        let layout = Arc::new(Layout::build(&config.sites, config.rack_size)?);
        let clock = SimClock::new(config.time_scale);
        Ok(Self {
            config,
            layout,
            clock,
        })
    }

    /// The fleet's shape.
    pub fn layout(&self) -> &Arc<Layout> {
        &self.layout
    }

    /// The simulated clock.
    pub fn clock(&self) -> SimClock {
        self.clock
    }

    /// Runs until `shutdown` is cancelled or `max_ticks` ticks are done.
    pub async fn run(
        self,
        kafka: &KafkaSettings,
        shutdown: CancellationToken,
    ) -> Result<RunStats, AsicSimError> {
        let started = Instant::now();
        let producer = Producer::new(kafka, PRODUCER)?;
        let group = self
            .config
            .group
            .clone()
            .unwrap_or_else(|| format!("{}.asic-sim", kafka.namespace));
        let consumer: StreamConsumer = kafka
            .consumer_config(&group, &group)
            .create()
            .map_err(|e| BusError::Config(e.to_string()))?;
        consumer.subscribe(&[&kafka.topic(Topic::DeviceCommands)])?;
        let dlq_topic = kafka.topic(Topic::DeadLetters);
        let telemetry_topic = kafka.topic(Topic::Telemetry);
        let counters = Arc::new(Counters::default());

        let (cmd_tx, cmd_rx) = std::sync::mpsc::channel::<(Target, AsicAction)>();
        let (out_tx, mut out_rx) = tokio::sync::mpsc::channel::<(Vec<OutgoingMessage>, u64)>(2);
        let done = shutdown.child_token();

        let sim = {
            let layout = self.layout.clone();
            let config = self.config.clone();
            let clock = self.clock;
            let counters = counters.clone();
            let done = done.clone();
            std::thread::Builder::new()
                .name("asic-sim".into())
                .spawn(move || {
                    simulate(
                        layout,
                        &config,
                        clock,
                        &cmd_rx,
                        &out_tx,
                        &telemetry_topic,
                        &counters,
                        &done,
                    );
                    done.cancel();
                })
                .map_err(|e| AsicSimError::Thread(e.to_string()))?
        };

        let sender = {
            let producer = producer.clone();
            let counters = counters.clone();
            tokio::spawn(async move {
                while let Some((batch, samples)) = out_rx.recv().await {
                    match producer.send_batch(&batch).await {
                        Ok(()) => {
                            counters
                                .messages
                                .fetch_add(batch.len() as u64, Ordering::Relaxed);
                            counters.samples.fetch_add(samples, Ordering::Relaxed);
                            metrics::counter!(m::MESSAGES).increment(batch.len() as u64);
                            metrics::counter!(m::SAMPLES).increment(samples);
                        }
                        Err(e) => {
                            // Telemetry is superseded by the next sample: drop, never retry.
                            metrics::counter!(m::SEND_FAILURES).increment(1);
                            tracing::warn!(error = %e, "telemetry batch not acknowledged; dropped");
                        }
                    }
                }
            })
        };

        let mut filter = CommandFilter::new(DEDUP_CAPACITY);
        tracing::info!(devices = self.layout.len(), racks = self.layout.racks.len(), sites = ?self.layout.sites, %group, "asic-sim started");
        loop {
            tokio::select! {
                _ = done.cancelled() => break,
                msg = consumer.recv() => match msg {
                    Ok(msg) => {
                        for dl in self.on_message(&msg, &mut filter, &cmd_tx, &dlq_topic) {
                            if let Err(e) = producer.send(&dl).await {
                                tracing::error!(error = %e, offset = msg.offset(), "failed to dead-letter a command");
                            }
                        }
                        if let Err(e) = consumer.commit_message(&msg, CommitMode::Async) {
                            tracing::debug!(error = %e, "command offset commit failed");
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "command consumer error");
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                }
            }
        }
        done.cancel();
        drop(cmd_tx);
        let joined = tokio::task::spawn_blocking(move || sim.join()).await;
        match joined {
            Ok(Ok(())) => {}
            Ok(Err(_)) => return Err(AsicSimError::Thread("panicked".into())),
            Err(e) => return Err(AsicSimError::Thread(e.to_string())),
        }
        let _ = sender.await;
        let _ = producer.flush(Duration::from_secs(5));
        if let Err(e) = consumer.commit_consumer_state(CommitMode::Sync) {
            tracing::debug!(error = %e, "final command offset commit failed");
        }
        hcp_bus::close_consumer(consumer, "asic-sim", hcp_bus::close::CLOSE_TIMEOUT).await;
        let stats = RunStats {
            ticks: counters.ticks.load(Ordering::Relaxed),
            messages: counters.messages.load(Ordering::Relaxed),
            samples: counters.samples.load(Ordering::Relaxed),
            commands: counters.commands.load(Ordering::Relaxed),
            elapsed_s: started.elapsed().as_secs_f64(),
            busy_s: counters.busy_ns.load(Ordering::Relaxed) as f64 / 1e9,
        };
        tracing::info!(?stats, "asic-sim stopped");
        Ok(stats)
    }

    /// Handles one command message (one event, or several packed); returns the dead letters of
    /// what must be rejected.
    fn on_message(
        &self,
        msg: &BorrowedMessage<'_>,
        filter: &mut CommandFilter,
        cmd_tx: &std::sync::mpsc::Sender<(Target, AsicAction)>,
        dlq_topic: &str,
    ) -> Vec<OutgoingMessage> {
        let payload = msg.payload().unwrap_or_default();
        let reject = |kind: DeadLetterKind, reason: &str, item: Option<(usize, &[u8])>| {
            let mut dl = dead_letter(msg, dlq_topic, PRODUCER, kind, reason);
            if let Some((k, bytes)) = item {
                narrow_to_item(&mut dl, k, bytes);
            }
            dl
        };
        let items = match pack::items(payload) {
            Ok(items) => items,
            Err(e) => {
                metrics::counter!(m::COMMANDS, "action" => "unknown", "outcome" => "malformed")
                    .increment(1);
                tracing::warn!(error = %e, offset = msg.offset(), "dead-lettering an undecodable command");
                return vec![reject(DeadLetterKind::Malformed, &e.to_string(), None)];
            }
        };
        let packed = pack::is_packed(payload);
        let mut dead = Vec::new();
        for (k, item) in items.iter().enumerate() {
            let here = packed.then_some((k, item.envelope));
            match item.decode() {
                Ok(envelope) => {
                    if let Some((kind, reason)) = self.on_event(&envelope, filter, cmd_tx) {
                        dead.push(reject(kind, &reason, here));
                    }
                }
                Err(e) => {
                    metrics::counter!(m::COMMANDS, "action" => "unknown", "outcome" => "malformed")
                        .increment(1);
                    tracing::warn!(error = %e, offset = msg.offset(), "dead-lettering an undecodable command");
                    dead.push(reject(DeadLetterKind::Malformed, &e.to_string(), here));
                }
            }
        }
        dead
    }

    /// Handles one event of the command topic; returns why it must be dead-lettered, if so.
    fn on_event(
        &self,
        envelope: &Envelope,
        filter: &mut CommandFilter,
        cmd_tx: &std::sync::mpsc::Sender<(Target, AsicAction)>,
    ) -> Option<(DeadLetterKind, String)> {
        let Event::AsicCommandIssued(cmd) = &envelope.payload else {
            return None;
        };
        let verdict = filter.check(&self.layout, cmd);
        let action = action_name(&cmd.action);
        metrics::counter!(m::COMMANDS, "action" => action, "outcome" => verdict.as_str())
            .increment(1);
        match verdict {
            Verdict::Obey(target) => {
                tracing::info!(command_id = %cmd.command_id, site = %cmd.site, action, "obeying an ASIC command");
                if cmd_tx.send((target, cmd.action.clone())).is_err() {
                    tracing::warn!("the simulation has stopped; command not applied");
                }
                None
            }
            Verdict::Invalid(reason) => {
                tracing::warn!(command_id = %cmd.command_id, %reason, "dead-lettering an ASIC command");
                Some((DeadLetterKind::Poison, reason))
            }
            Verdict::OtherSite | Verdict::Duplicate => None,
        }
    }
}

fn action_name(a: &AsicAction) -> &'static str {
    match a {
        AsicAction::PowerTarget { .. } => "power_target",
        AsicAction::Curtail => "curtail",
        AsicAction::Resume => "resume",
    }
}

/// The simulation thread's loop.
#[allow(clippy::too_many_arguments)]
fn simulate(
    layout: Arc<Layout>,
    config: &AsicSimConfig,
    clock: SimClock,
    commands: &Receiver<(Target, AsicAction)>,
    out: &tokio::sync::mpsc::Sender<(Vec<OutgoingMessage>, u64)>,
    topic: &str,
    counters: &Counters,
    done: &CancellationToken,
) {
    let tick_s = config.tick_s;
    let start = clock.now();
    let mut fleet = Fleet::new(layout.clone(), config.params.clone(), start);
    let mut next_tick = start + tick_s;
    let mut ticks: u64 = 0;
    let mut commands_obeyed: u64 = 0;
    let mut last_report = Instant::now();
    let mut last_report_ticks = 0;
    let nameplate = layout.site_nameplate_w();
    loop {
        if done.is_cancelled() || config.max_ticks.is_some_and(|n| ticks >= n) {
            break;
        }
        // Until the tick is due, apply commands the moment they arrive.
        loop {
            let wait = if config.unpaced {
                Duration::ZERO
            } else {
                clock
                    .wall_at(next_tick)
                    .saturating_duration_since(Instant::now())
            };
            let received = if wait.is_zero() {
                match commands.try_recv() {
                    Ok(c) => Some(c),
                    Err(_) => break,
                }
            } else {
                match commands.recv_timeout(wait.min(Duration::from_millis(100))) {
                    Ok(c) => Some(c),
                    Err(RecvTimeoutError::Timeout) => None,
                    Err(RecvTimeoutError::Disconnected) => {
                        if done.is_cancelled() {
                            return;
                        }
                        std::thread::sleep(wait.min(Duration::from_millis(100)));
                        None
                    }
                }
            };
            if done.is_cancelled() {
                return;
            }
            if let Some((target, action)) = received {
                let at = if config.unpaced {
                    fleet.time()
                } else {
                    clock.now().clamp(fleet.time(), next_tick)
                };
                fleet.apply(at, &target, &action);
                commands_obeyed += 1;
                counters.commands.store(commands_obeyed, Ordering::Relaxed);
            }
        }
        let busy = Instant::now();
        let t = next_tick;
        fleet.advance(t);
        let struck = fleet.inject_faults(tick_s);
        for (n, kind) in struck.iter().zip(["overheat", "hash_board", "offline"]) {
            if *n > 0 {
                metrics::counter!(m::FAULTS, "kind" => kind).increment(u64::from(*n));
            }
        }
        let (batch, samples) = encode_tick(&mut fleet, topic, t, config.json_telemetry);
        let summary = fleet.summary();
        for (s, site) in summary.iter().zip(&layout.sites) {
            for (k, state) in STATES.iter().enumerate() {
                let label = state_label(*state);
                metrics::gauge!(m::SITE_POWER_MW, "site" => site.clone(), "state" => label)
                    .set(s.power_w_by_state[k] / 1e6);
                metrics::gauge!(m::SITE_DEVICES, "site" => site.clone(), "state" => label)
                    .set(f64::from(s.devices_by_state[k]));
            }
            metrics::gauge!(m::SITE_HASHRATE_PHS, "site" => site.clone())
                .set(s.hashrate_ths / 1000.0);
        }
        let spent = busy.elapsed();
        counters.busy_ns.fetch_add(
            u64::try_from(spent.as_nanos()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
        metrics::histogram!(m::TICK_DURATION).record(spent.as_secs_f64());
        if out.blocking_send((batch, samples)).is_err() {
            break;
        }
        ticks += 1;
        counters.ticks.store(ticks, Ordering::Relaxed);
        metrics::counter!(m::TICKS).increment(1);
        if !config.unpaced {
            metrics::gauge!(m::LAG).set((clock.now() - t).max(0.0));
        }
        next_tick += tick_s;
        if config.progress && last_report.elapsed() >= Duration::from_secs(5) {
            let secs = last_report.elapsed().as_secs_f64();
            let power: f64 = summary.iter().map(|s| s.power_w()).sum::<f64>() / 1e6;
            let full: f64 = nameplate.iter().sum::<f64>() / 1e6;
            eprintln!(
                "asic-sim: sim {} ticks {ticks} ({:.1}/s) acked msgs {} samples {} power {power:.2}/{full:.2} MW",
                hcp_economics::trace::fmt_ts(t as i64),
                (ticks - last_report_ticks) as f64 / secs,
                counters.messages.load(Ordering::Relaxed),
                counters.samples.load(Ordering::Relaxed),
            );
            last_report = Instant::now();
            last_report_ticks = ticks;
        }
    }
}

fn state_label(s: hcp_events::payload::AsicState) -> &'static str {
    use hcp_events::payload::AsicState;
    match s {
        AsicState::Hashing => "hashing",
        AsicState::Ramping => "ramping",
        AsicState::Curtailed => "curtailed",
        AsicState::Fault => "fault",
        AsicState::Offline => "offline",
    }
}

/// One message per rack at simulated time `t` (compact, or JSON with `json`); returns them and
/// the number of samples.
fn encode_tick(fleet: &mut Fleet, topic: &str, t: f64, json: bool) -> (Vec<OutgoingMessage>, u64) {
    let layout = fleet.layout().clone();
    // The sample time is whole milliseconds and the stream sequence is that same number, so a
    // consumer can rely on `sequence == sampled_at in ms` whatever rounding `t` carries.
    let sequence = (t * 1000.0).round() as i64;
    let sampled_at = OffsetDateTime::from_unix_timestamp_nanos(i128::from(sequence) * 1_000_000)
        .unwrap_or(OffsetDateTime::UNIX_EPOCH);
    let mut out = Vec::with_capacity(layout.racks.len());
    let mut samples = 0u64;
    for (ri, rack) in layout.racks.iter().enumerate() {
        let s = fleet.rack_samples(ri);
        if s.is_empty() {
            continue;
        }
        samples += s.len() as u64;
        let mut env = Envelope::new(
            format!("asic-{}", rack.id),
            PRODUCER,
            Event::AsicTelemetryBatch(AsicTelemetryBatch {
                site: layout
                    .sites
                    .get(usize::from(rack.site))
                    .cloned()
                    .unwrap_or_default(),
                rack: rack.id.clone(),
                sampled_at,
                samples: s,
            }),
        );
        env.sequence = sequence;
        let encoded = if json {
            env.to_json()
        } else {
            hcp_events::compact::encode(&env)
        };
        let payload = match encoded {
            Ok(p) => p,
            Err(e) => {
                tracing::error!(error = %e, rack = %rack.id, "cannot encode telemetry; dropping it");
                continue;
            }
        };
        out.push(OutgoingMessage {
            topic: topic.to_owned(),
            key: env.stream_id,
            payload,
            headers: vec![
                (
                    headers::EVENT_TYPE.to_owned(),
                    b"asic.telemetry_batch".to_vec(),
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
        });
    }
    fleet.mark_sampled();
    (out, samples)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::layout::sites_from_counts;

    #[test]
    fn every_batch_sequence_is_its_sample_time_in_milliseconds_even_for_fractional_times() {
        let layout = Arc::new(Layout::build(&sites_from_counts(1, 300), 100).unwrap());
        // Times that do not survive `t * 1e9` exactly: truncating them loses a millisecond.
        for t in [1_795_459_306.777, 1_700_000_000.1, 1_700_000_000.3] {
            let mut fleet = Fleet::new(layout.clone(), SimParams::default().without_faults(), t);
            fleet.advance(t);
            let (batch, samples) = encode_tick(&mut fleet, "telemetry", t, t > 1_700_000_000.2);
            assert_eq!(batch.len(), 3);
            assert_eq!(samples, 300);
            for m in batch {
                let e = Envelope::decode(&m.payload).unwrap();
                let Event::AsicTelemetryBatch(b) = e.payload else {
                    panic!("not a telemetry batch: {:?}", e.payload);
                };
                assert_eq!(
                    e.sequence,
                    i64::try_from(b.sampled_at.unix_timestamp_nanos() / 1_000_000).unwrap(),
                    "t = {t}"
                );
                assert_eq!(e.sequence, (t * 1000.0).round() as i64);
            }
        }
    }
}
