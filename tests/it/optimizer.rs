//! The optimizer and the resource-manager's ASIC translation against the real broker and the
//! real PostgreSQL, in-process. The tests stand in for market-sim and asic-sim: they produce
//! `market.price_observed`, `grid.demand_response_requested` and `asic.telemetry_batch`
//! envelopes to the topics directly, and read decisions, confirmations and ASIC commands from
//! the event store (and the commands from the `device-commands` topic).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::time::{Duration, Instant};

use hcp_bus::transactional::{ConsumerSettings, TransactionalConsumer};
use hcp_bus::{OutgoingMessage, Producer};
use hcp_db::sqlx;
use hcp_db::EventStore;
use hcp_db::{ExpectedVersion, Publish};
use hcp_economics::fleet::{FleetConfig, FleetModel};
use hcp_events::payload::*;
use hcp_events::{
    asic_command_stream, command_stream, site_stream, worker_stream, workload_stream, Envelope,
    Event, Topic,
};
use hcp_gpu_worker::{WorkerNode, WorkerSettings};
use hcp_optimizer::{Optimizer, OptimizerSettings};
use hcp_resource_manager::{ResourceManager, RmSettings};
use hcp_tests::fixtures::{start_relay, Running};
use hcp_tests::{init_tracing, read_topic, wait_until, TestEnv};
use time::OffsetDateTime;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

const WAIT: Duration = Duration::from_secs(60);
const POLL: Duration = Duration::from_millis(50);
const SITE: &str = "t1";
const PRICE: &str = "ercot.rt.LZ_WEST";

/// 2,000 S21 (7 MW), 2,000 S21 XP (7.29 MW), 1,000 GPUs of 1 kW of which 30% real-time.
fn fleet(min_hours: f64) -> FleetModel {
    let toml = format!(
        r#"
[[site]]
name = "{SITE}"
power_cap_mw = 30.0
pue = 1.0
[[site.asic]]
model = "S21"
count = 2000
min_on_hours = {min_hours}
min_off_hours = {min_hours}
[[site.asic]]
model = "S21 XP"
count = 2000
min_on_hours = {min_hours}
min_off_hours = {min_hours}
[site.gpu]
count = 1000
power_kw = 1.0
rental_usd_per_gpu_hour = 2.0
realtime_share = 0.3
"#
    );
    FleetConfig::from_toml("test", &toml)
        .unwrap()
        .model("test", 1.0)
        .unwrap()
}

fn settings() -> OptimizerSettings {
    OptimizerSettings {
        price_series: PRICE.into(),
        interval_minutes: 60,
        heartbeat_intervals: 0,
        sweep_interval_ms: 100,
        confirm_within_s: 60,
        ..OptimizerSettings::default()
    }
}

/// An in-process component.
struct Task {
    token: CancellationToken,
    handle: JoinHandle<()>,
}

impl Task {
    fn spawn<F>(f: impl FnOnce(CancellationToken) -> F) -> Self
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        let token = CancellationToken::new();
        let handle = tokio::spawn(f(token.clone()));
        Self { token, handle }
    }

    async fn stop(self) {
        self.token.cancel();
        let _ = self.handle.await;
    }
}

/// The optimizer's consumer of `market` + `telemetry` and its deadline sweep.
fn start_optimizer(env: &TestEnv, fleet: FleetModel) -> (Task, Task) {
    let opt = Optimizer::new(fleet, settings(), hcp_optimizer::Topics::new(&env.kafka));
    let producer = Producer::new(&env.kafka, "test-optimizer").unwrap();
    let cs = ConsumerSettings::new(
        format!("{}.optimizer", env.kafka.namespace),
        vec![env.topic(Topic::Market), env.topic(Topic::Telemetry)],
        env.topic(Topic::DeadLetters),
    );
    let consumer = TransactionalConsumer::for_projection(
        &env.kafka,
        cs,
        env.pool.clone(),
        opt.clone(),
        producer,
    )
    .unwrap();
    let consumer = Task::spawn(|t| async move { consumer.run(t).await.unwrap() });
    let pool = env.pool.clone();
    let sweep = Task::spawn(|t| async move { opt.run_sweep(pool, t).await.unwrap() });
    (consumer, sweep)
}

/// The resource-manager's consumer, of the topics it consumes in production.
fn start_rm(env: &TestEnv) -> Task {
    let producer = Producer::new(&env.kafka, "test-rm").unwrap();
    let cs = ConsumerSettings::new(
        format!("{}.resource-manager", env.kafka.namespace),
        vec![
            env.topic(Topic::Workloads),
            env.topic(Topic::WorkerReports),
            env.topic(Topic::Decisions),
        ],
        env.topic(Topic::DeadLetters),
    );
    let rm = ResourceManager::new(
        hcp_resource_manager::Topics::new(&env.kafka),
        RmSettings::default(),
    );
    let consumer =
        TransactionalConsumer::for_projection(&env.kafka, cs, env.pool.clone(), rm, producer)
            .unwrap();
    Task::spawn(|t| async move { consumer.run(t).await.unwrap() })
}

/// The test world: optimizer, resource-manager, relay, and a producer standing in for the
/// simulators.
struct World {
    env: TestEnv,
    optimizer: Option<(Task, Task)>,
    rm: Task,
    relay: Running,
    producer: Producer,
    sequences: HashMap<String, i64>,
    t0: OffsetDateTime,
}

impl World {
    async fn start(fleet: FleetModel) -> Self {
        init_tracing();
        let env = TestEnv::new().await;
        let optimizer = Some(start_optimizer(&env, fleet));
        let rm = start_rm(&env);
        let relay = start_relay(&env);
        let producer = Producer::new(&env.kafka, "test-sims").unwrap();
        Self {
            env,
            optimizer,
            rm,
            relay,
            producer,
            sequences: HashMap::new(),
            // A January interval: no 4CP month, so the policy's 4CP watch stays quiet.
            t0: time::macros::datetime!(2026-01-05 00:00 UTC),
        }
    }

    async fn stop(mut self) {
        if let Some((c, s)) = self.optimizer.take() {
            c.stop().await;
            s.stop().await;
        }
        self.rm.stop().await;
        self.relay.stop().await;
    }

    async fn send(&mut self, topic: Topic, stream: &str, event: Event) {
        let seq = self.sequences.entry(stream.to_owned()).or_insert(0);
        *seq += 1;
        let mut e = Envelope::new(stream, "test-sim", event);
        e.sequence = *seq;
        self.producer
            .send(&OutgoingMessage {
                topic: self.env.topic(topic),
                key: stream.to_owned(),
                payload: e.to_json().unwrap(),
                headers: vec![],
            })
            .await
            .unwrap();
    }

    fn hour(&self, k: i64) -> OffsetDateTime {
        self.t0 + time::Duration::hours(k)
    }

    async fn market(&mut self, series: &str, at: OffsetDateTime, value: f64, unit: &str) {
        let event = Event::MarketPriceObserved(MarketPriceObserved {
            series: series.into(),
            interval_start: at,
            value,
            unit: unit.into(),
        });
        self.send(Topic::Market, &format!("market-{series}"), event)
            .await;
    }

    /// A normal hashprice ($50/PH/day): an S21 breaks even at about $119/MWh, an S21 XP at $154.
    async fn hashprice(&mut self) {
        let at = self.hour(0);
        self.market("btc.hashprice", at, 0.05, "usd_per_th_day")
            .await;
    }

    /// Opens interval `k` at `price` and waits until the optimizer has decided it.
    async fn price(&mut self, k: i64, price: f64) {
        let at = self.hour(k);
        self.market(PRICE, at, price, "usd_per_mwh").await;
        let pool = self.env.pool.clone();
        assert!(
            wait_until(WAIT, POLL, || {
                let pool = pool.clone();
                async move {
                    sqlx::query_scalar::<_, i64>(
                        "SELECT count(*) FROM opt_observations WHERE interval_start = $1",
                    )
                    .bind(at)
                    .fetch_one(&pool)
                    .await
                    .unwrap()
                        == 1
                }
            })
            .await,
            "interval {k} was never decided"
        );
    }

    /// One rack's batch: `power_w` spread over two devices.
    async fn telemetry(&mut self, rack: &str, model: &str, power_w: f64) {
        let sample = |i: u32| AsicSample {
            asic_id: format!("{rack}-{i}"),
            model: model.into(),
            state: if power_w > 1e5 {
                AsicState::Hashing
            } else {
                AsicState::Curtailed
            },
            hashrate_ths: 0.0,
            power_w: power_w / 2.0,
            power_target_w: power_w / 2.0,
            temperature_c: 60.0,
            hw_errors: 0,
            accepted_shares: 0,
        };
        let event = Event::AsicTelemetryBatch(AsicTelemetryBatch {
            site: SITE.into(),
            rack: rack.into(),
            sampled_at: OffsetDateTime::now_utc(),
            samples: vec![sample(0), sample(1)],
        });
        self.send(Topic::Telemetry, &format!("rack-{SITE}-{rack}"), event)
            .await;
    }

    /// Telemetry of the whole site at full power: 7 MW of S21, 7.29 MW of S21 XP.
    async fn full_power_telemetry(&mut self) {
        self.telemetry("r-s21", "S21", 7.0e6).await;
        self.telemetry("r-xp", "S21 XP", 7.29e6).await;
    }

    /// The site's decisions and the ASIC commands sent for them, in log order.
    async fn site_events(&self) -> Vec<Envelope> {
        let streams = [site_stream(SITE), asic_command_stream(SITE)];
        EventStore::new(self.env.pool.clone())
            .read_all(0, 1_000_000)
            .await
            .unwrap()
            .into_iter()
            .map(|r| r.envelope)
            .filter(|e| streams.contains(&e.stream_id))
            .collect()
    }

    async fn decisions(&self) -> Vec<DecisionMade> {
        self.site_events()
            .await
            .into_iter()
            .filter_map(|e| match e.payload {
                Event::DecisionMade(d) => Some(d),
                _ => None,
            })
            .collect()
    }

    async fn confirmations(&self) -> Vec<DecisionConfirmed> {
        self.site_events()
            .await
            .into_iter()
            .filter_map(|e| match e.payload {
                Event::DecisionConfirmed(d) => Some(d),
                _ => None,
            })
            .collect()
    }

    async fn commands(&self) -> Vec<AsicCommandIssued> {
        self.site_events()
            .await
            .into_iter()
            .filter_map(|e| match e.payload {
                Event::AsicCommandIssued(c) => Some(c),
                _ => None,
            })
            .collect()
    }

    async fn wait_for<T, F, Fut>(&self, what: &str, mut f: F) -> T
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Option<T>>,
    {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(v) = f().await {
                return v;
            }
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(POLL).await;
        }
    }

    async fn decision_where(&self, what: &str, p: impl Fn(&DecisionMade) -> bool) -> DecisionMade {
        self.wait_for(what, || async {
            self.decisions().await.into_iter().rev().find(|d| p(d))
        })
        .await
    }

    async fn commands_for(&self, decision_id: Uuid, n: usize) -> Vec<AsicCommandIssued> {
        self.wait_for("ASIC commands", || async {
            let c: Vec<_> = self
                .commands()
                .await
                .into_iter()
                .filter(|c| c.decision_id == Some(decision_id))
                .collect();
            (c.len() >= n).then_some(c)
        })
        .await
    }

    async fn confirmation_of(&self, decision_id: Uuid) -> DecisionConfirmed {
        self.wait_for("a confirmation", || async {
            self.confirmations()
                .await
                .into_iter()
                .find(|c| c.decision_id == decision_id)
        })
        .await
    }
}

fn fraction(d: &DecisionMade, model: &str) -> f64 {
    d.asic_targets
        .iter()
        .find(|t| t.model == model)
        .map(|t| t.fraction)
        .unwrap_or_else(|| panic!("no target for {model} in {d:?}"))
}

fn realtime_mw(f: &FleetModel) -> f64 {
    f.sites[0].fixed_mw
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scarcity_price_curtails_the_asics_through_curtail_commands_and_a_low_price_restores_full_power(
) {
    let mut w = World::start(fleet(0.0)).await;
    w.hashprice().await;
    w.price(0, 20.0).await;
    let full = w
        .decision_where("a full-power decision", |d| d.target_mw > 15.0)
        .await;
    assert_eq!(fraction(&full, "S21"), 1.0);
    assert_eq!(fraction(&full, "S21 XP"), 1.0);
    assert!(full.gpu_batch_allowed);
    assert_eq!(full.energy_usd_per_mwh, 20.0);
    assert!((full.hashprice_usd_per_th_day - 0.05).abs() < 1e-12);
    assert!(full.expected_profit_usd_per_h > 0.0);
    assert_eq!(full.policy, "rule");

    w.price(1, 3000.0).await;
    let scarce = w
        .decision_where("a curtailing decision", |d| d.energy_usd_per_mwh == 3000.0)
        .await;
    assert_eq!(fraction(&scarce, "S21"), 0.0);
    assert_eq!(fraction(&scarce, "S21 XP"), 0.0);
    assert!(!scarce.gpu_batch_allowed, "batch pauses at $3,000/MWh");
    assert!(scarce.expected_profit_usd_per_h < full.expected_profit_usd_per_h);
    let curtails = w.commands_for(scarce.decision_id, 2).await;
    let mut models: Vec<_> = curtails
        .iter()
        .map(|c| {
            assert_eq!(c.action, AsicAction::Curtail, "{c:?}");
            match &c.target {
                AsicScope::Model { model } => model.clone(),
                other => panic!("scope {other:?}"),
            }
        })
        .collect();
    models.sort();
    assert_eq!(models, vec!["S21".to_owned(), "S21 XP".to_owned()]);

    w.price(2, 20.0).await;
    let back = w
        .decision_where("a restoring decision", |d| {
            d.energy_usd_per_mwh == 20.0 && d.decision_id != full.decision_id
        })
        .await;
    assert_eq!(fraction(&back, "S21"), 1.0);
    let resumes = w.commands_for(back.decision_id, 2).await;
    assert!(
        resumes.iter().all(|c| c.action == AsicAction::Resume),
        "after a curtail, resume first: {resumes:?}"
    );

    // The commands went out on device-commands, keyed by the site's command stream.
    let topic = w.env.topic(Topic::DeviceCommands);
    let events = hcp_tests::read_events(&w.env.kafka, &topic, 6, WAIT).await;
    assert!(events.len() >= 6, "{} command events", events.len());
    assert!(events
        .iter()
        .all(|e| e.envelope.stream_id == asic_command_stream(SITE)));

    // An unchanged decision sends no command: the same price again in a new interval.
    w.price(3, 25.0).await;
    let all = w.decisions().await;
    assert_eq!(all.len(), 3, "no decision when nothing changes: {all:?}");
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn realtime_gpu_capacity_is_never_curtailed_for_price_nor_for_demand_response() {
    let f = fleet(0.0);
    let rt = realtime_mw(&f);
    let mut w = World::start(f).await;
    w.hashprice().await;
    w.price(0, 5000.0).await;
    let d = w.decision_where("a decision", |_| true).await;
    assert!(rt > 0.0);
    assert!(
        (d.target_mw - rt).abs() < 1e-9,
        "target {} keeps the {rt} MW of real-time GPUs",
        d.target_mw
    );
    assert!(d.asic_targets.iter().all(|t| t.fraction == 0.0));

    let dr_id = Uuid::now_v7();
    w.send(
        Topic::Market,
        "grid-LZ_WEST",
        Event::DemandResponseRequested(DemandResponseRequested {
            dr_id,
            zone: "LZ_WEST".into(),
            site: None,
            curtail_mw: 1000.0,
            respond_within_s: 30,
            duration_s: 600,
            issued_at: OffsetDateTime::now_utc(),
        }),
    )
    .await;
    let dr = w
        .decision_where("the DR decision", |d| d.dr_id == Some(dr_id))
        .await;
    assert!((dr.target_mw - rt).abs() < 1e-9, "{}", dr.target_mw);
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_demand_response_is_answered_at_once_and_confirmed_when_telemetry_shows_the_drop() {
    let mut w = World::start(fleet(0.0)).await;
    w.hashprice().await;
    // $100/MWh: everything runs, and the S21 has the thinnest margin per MW.
    w.price(0, 100.0).await;
    let normal = w.decision_where("a decision", |_| true).await;
    w.full_power_telemetry().await;
    let c = w.confirmation_of(normal.decision_id).await;
    assert!(c.met, "full power was the target: {c:?}");
    assert!((c.measured_mw - 14.29).abs() < 1e-6);

    let dr_id = Uuid::now_v7();
    let sent = Instant::now();
    w.send(
        Topic::Market,
        "grid-LZ_WEST",
        Event::DemandResponseRequested(DemandResponseRequested {
            dr_id,
            zone: "LZ_WEST".into(),
            site: Some(SITE.into()),
            curtail_mw: 5.0,
            respond_within_s: 30,
            duration_s: 600,
            issued_at: OffsetDateTime::now_utc(),
        }),
    )
    .await;
    let dr = w
        .decision_where("the DR decision", |d| d.dr_id == Some(dr_id))
        .await;
    assert!(
        sent.elapsed() < Duration::from_secs(10),
        "answered in {:?}",
        sent.elapsed()
    );
    assert_eq!(fraction(&dr, "S21"), 0.0, "cheapest margin goes first");
    assert_eq!(fraction(&dr, "S21 XP"), 1.0);
    assert!(dr.gpu_batch_allowed);
    assert!(dr.target_mw <= normal.target_mw - 5.0 + 1e-9);
    let cmds = w.commands_for(dr.decision_id, 1).await;
    assert_eq!(cmds.len(), 1);
    assert_eq!(cmds[0].action, AsicAction::Curtail);

    // asic-sim would now report the S21 rack idle.
    w.telemetry("r-s21", "S21", 50_000.0).await;
    let c = w.confirmation_of(dr.decision_id).await;
    assert!(c.met, "{c:?}");
    assert!(c.after_s < 30.0, "{c:?}");
    assert!((c.measured_mw - 7.34).abs() < 1e-6, "{c:?}");
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_demand_response_telemetry_never_confirms_is_reported_unmet_after_its_deadline_and_released(
) {
    let mut w = World::start(fleet(0.0)).await;
    w.hashprice().await;
    w.price(0, 100.0).await;
    w.full_power_telemetry().await;
    let dr_id = Uuid::now_v7();
    w.send(
        Topic::Market,
        "grid-LZ_WEST",
        Event::DemandResponseRequested(DemandResponseRequested {
            dr_id,
            zone: "LZ_WEST".into(),
            site: Some(SITE.into()),
            curtail_mw: 5.0,
            respond_within_s: 2,
            duration_s: 4,
            issued_at: OffsetDateTime::now_utc(),
        }),
    )
    .await;
    let dr = w
        .decision_where("the DR decision", |d| d.dr_id == Some(dr_id))
        .await;
    // The site keeps reporting full power: no drop.
    w.full_power_telemetry().await;
    let c = w.confirmation_of(dr.decision_id).await;
    assert!(!c.met, "{c:?}");
    assert!(c.after_s >= 1.0, "{c:?}");
    assert!((c.measured_mw - 14.29).abs() < 1e-6, "{c:?}");
    // After duration_s the cap is lifted: a decision without dr_id, at full power again.
    let released = w
        .decision_where("the release", |d| {
            d.dr_id.is_none() && d.decision_id > dr.decision_id
        })
        .await;
    assert_eq!(fraction(&released, "S21"), 1.0);
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_price_flickering_around_break_even_does_not_toggle_faster_than_the_minimum_on_off_time()
{
    let f = fleet(3.0);
    let mut w = World::start(f.clone()).await;
    w.hashprice().await;
    let prices = [20.0, 300.0, 20.0, 300.0, 20.0, 300.0, 20.0, 300.0, 20.0];
    let mut on = Vec::new();
    for (k, &p) in prices.iter().enumerate() {
        if k == 4 {
            // A restart mid-way: the minimum on/off clocks come back from the tables.
            if let Some((c, s)) = w.optimizer.take() {
                c.stop().await;
                s.stop().await;
            }
            w.optimizer = Some(start_optimizer(&w.env, f.clone()));
        }
        w.price(i64::try_from(k).unwrap(), p).await;
        let last = w.decisions().await.pop().expect("a decision");
        on.push(fraction(&last, "S21") > 0.0);
    }
    // The price crosses the S21's break-even (~$119/MWh) at every interval...
    let flips = prices.windows(2).filter(|p| p[0] != p[1]).count();
    let toggles = on.windows(2).filter(|s| s[0] != s[1]).count();
    assert!(toggles < flips, "{on:?}");
    // ...but every run between two switches lasts at least the 3-interval minimum.
    let mut runs = Vec::new();
    let mut len = 1;
    for s in on.windows(2) {
        if s[0] == s[1] {
            len += 1;
        } else {
            runs.push(len);
            len = 1;
        }
    }
    for &r in runs.iter().skip(1) {
        assert!(r >= 3, "a run of {r} interval(s): {on:?}");
    }
    assert_eq!(
        on,
        vec![true, false, false, false, true, true, true, false, false]
    );
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_market_event_is_dead_lettered_and_the_optimizer_goes_on() {
    let mut w = World::start(fleet(0.0)).await;
    w.market("btc.hashprice", w.hour(0), 0.05, "btc_per_day")
        .await;
    w.hashprice().await;
    w.price(0, 20.0).await;
    let dead = read_topic(&w.env.kafka, &w.env.topic(Topic::DeadLetters), 1, WAIT).await;
    assert_eq!(dead.len(), 1);
    assert_eq!(w.decisions().await.len(), 1);
    w.stop().await;
}

/// Appends a workload event at the stream's current version (the gateway's and the router's
/// part in these tests).
async fn append_workload(env: &TestEnv, id: Uuid, events: Vec<Event>) {
    let s = workload_stream(id);
    let store = EventStore::new(env.pool.clone());
    let version = store.stream_version(&s).await.unwrap();
    let envs: Vec<Envelope> = events
        .into_iter()
        .map(|e| Envelope::new(&s, "test-router", e))
        .collect();
    store
        .append_and_commit(
            &s,
            ExpectedVersion::Exact(version),
            &envs,
            &Publish::to(env.topic(Topic::Workloads)),
        )
        .await
        .unwrap();
}

async fn workload_events(env: &TestEnv, id: Uuid) -> Vec<Event> {
    EventStore::new(env.pool.clone())
        .read_stream(&workload_stream(id))
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.envelope.payload)
        .collect()
}

async fn wait_workload(env: &TestEnv, id: Uuid, what: &str, f: impl Fn(&Event) -> bool + Copy) {
    assert!(
        wait_until(WAIT, POLL, || async {
            workload_events(env, id).await.iter().any(f)
        })
        .await,
        "workload {id} never got {what}: {:?}",
        workload_events(env, id).await
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn training_is_paused_while_batch_is_not_allowed_and_resumed_after_but_realtime_runs_on() {
    let mut w = World::start(fleet(0.0)).await;
    let node = WorkerNode::simulated(
        WorkerSettings {
            worker_id: "wg".into(),
            count: 1,
            site: SITE.into(),
            gpus_per_worker: 4,
            heartbeat_ms: 200,
            tick_ms: 20,
            time_scale: 1.0,
            checkpoint_every: 0.1,
            checkpoint_min_s: 0.0,
            ..Default::default()
        },
        w.env.kafka.clone(),
    );
    let worker = Task::spawn(|t| async move { node.run(t).await.unwrap() });
    let registered = worker_stream("wg");
    let store = EventStore::new(w.env.pool.clone());
    assert!(
        wait_until(WAIT, POLL, || async {
            store.stream_version(&registered).await.unwrap() > 0
        })
        .await,
        "worker registered"
    );
    let mut ids = Vec::new();
    for (kind, gpus) in [
        (WorkloadKind::Training, [0u32, 1]),
        (WorkloadKind::RealtimeInference, [2, 3]),
    ] {
        let id = Uuid::now_v7();
        append_workload(
            &w.env,
            id,
            vec![
                Event::WorkloadSubmitted(WorkloadSubmitted::simple(
                    id,
                    "acme",
                    kind,
                    "llama-3-8b",
                    2,
                    3_600,
                )),
                Event::WorkloadQueued(WorkloadQueued {
                    workload_id: id,
                    kind,
                    priority: 5,
                    interruptible: kind != WorkloadKind::RealtimeInference,
                    reason: "test".into(),
                }),
            ],
        )
        .await;
        append_workload(
            &w.env,
            id,
            vec![Event::WorkloadPlacementProposed(
                WorkloadPlacementProposed {
                    workload_id: id,
                    worker_id: "wg".into(),
                    gpu_ids: gpus.iter().map(|n| format!("wg/gpu-{n}")).collect(),
                    score: 1.0,
                    attempt: 1,
                },
            )],
        )
        .await;
        wait_workload(&w.env, id, "started", |e| {
            matches!(e, Event::WorkloadStarted(_))
        })
        .await;
        ids.push(id);
    }
    let (training, realtime) = (ids[0], ids[1]);

    w.hashprice().await;
    w.price(0, 3000.0).await;
    let d = w.decision_where("a decision", |_| true).await;
    assert!(!d.gpu_batch_allowed);
    wait_workload(
        &w.env,
        training,
        "paused",
        |e| matches!(e, Event::WorkloadPaused(p) if p.requested_by == "optimizer"),
    )
    .await;
    let pause_sent = || async {
        EventStore::new(w.env.pool.clone())
            .read_stream(&command_stream("wg"))
            .await
            .unwrap()
            .iter()
            .any(|e| matches!(&e.envelope.payload, Event::DeviceCommand(c) if c.workload_id == training && c.action == CommandAction::Pause))
    };
    assert!(
        wait_until(WAIT, POLL, pause_sent).await,
        "pause command sent"
    );

    w.price(1, 20.0).await;
    wait_workload(
        &w.env,
        training,
        "resumed",
        |e| matches!(e, Event::WorkloadResumed(r) if r.requested_by == "optimizer"),
    )
    .await;
    let rt = workload_events(&w.env, realtime).await;
    assert!(
        !rt.iter()
            .any(|e| matches!(e, Event::WorkloadPaused(_) | Event::WorkloadResumed(_))),
        "real-time inference is never paused: {rt:?}"
    );
    worker.stop().await;
    w.stop().await;
}
