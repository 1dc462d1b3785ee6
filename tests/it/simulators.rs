//! The simulators against the real broker: market-sim replays a day of the real 2023 traces
//! and asic-sim obeys curtail and resume commands within the design's response times.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::time::Duration;

use hcp_asic_sim::fleet::SimParams;
use hcp_asic_sim::layout::{AsicModel, GroupSpec, SiteSpec};
use hcp_asic_sim::{AsicSim, AsicSimConfig};
use hcp_bus::{KafkaSettings, OutgoingMessage, Producer};
use hcp_events::payload::{AsicAction, AsicCommandIssued, AsicScope};
use hcp_events::{headers, site_stream, Envelope, Event, Topic};
use hcp_market_sim::publish::Source;
use hcp_market_sim::replay::{PriceKind, ReplayInputs};
use hcp_market_sim::timeline::GridOptions;
use hcp_market_sim::MarketSimConfig;
use hcp_tests::{key_of, read_topic, TestEnv};
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Headers;
use rdkafka::{Message, Offset, TopicPartitionList};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

fn data_dir() -> PathBuf {
    PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../shared/data/market"
    ))
}

/// `column` of a CSV keyed by the value of `key_column`, read independently of the simulator.
fn csv_column(file: &str, key_column: &str, column: &str) -> HashMap<String, f64> {
    let text = std::fs::read_to_string(data_dir().join(file)).unwrap();
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().unwrap().split(',').collect();
    let k = header.iter().position(|h| *h == key_column).unwrap();
    let v = header.iter().position(|h| *h == column).unwrap();
    lines
        .filter_map(|l| {
            let cells: Vec<&str> = l.split(',').collect();
            Some((cells.get(k)?.to_string(), cells.get(v)?.parse().ok()?))
        })
        .collect()
}

fn rfc3339(t: time::OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn market_sim_replays_a_day_of_2023_with_the_right_series_values_and_order() {
    let env = TestEnv::new().await;
    let day = time::macros::date!(2023 - 08 - 10);
    let dr_at = "2023-08-10T20:00Z:10MW:60s:30m".parse().unwrap();
    let config = MarketSimConfig {
        source: Source::Replay(ReplayInputs {
            kind: PriceKind::Dam,
            prices: data_dir().join("ercot_dam_spp_hourly_2023.csv"),
            zone: "LZ_WEST".into(),
            btc: data_dir().join("btc_usd_daily.csv"),
            difficulty: data_dir().join("btc_difficulty_daily.csv"),
            carbon: Some(data_dir().join("ercot_carbon_intensity_hourly_2023.csv")),
            load: Some(data_dir().join("ercot_native_load_hourly_2023.csv")),
            from: Some(day),
            to: Some(day),
        }),
        // A day in under a second.
        speed: 100_000.0,
        synthetic: Default::default(),
        gpu_model: "H100".into(),
        grid: GridOptions {
            dr_zone: "LZ_WEST".into(),
            dr_schedule: vec![dr_at],
            ..Default::default()
        },
        progress: false,
    };
    let summary = hcp_market_sim::run(config, &env.kafka, CancellationToken::new())
        .await
        .unwrap();
    assert_eq!(summary.rows, 24);
    let msgs = read_topic(
        &env.kafka,
        &env.topic(Topic::Market),
        summary.events as usize,
        Duration::from_secs(30),
    )
    .await;
    assert_eq!(msgs.len() as u64, summary.events);

    let dam = csv_column(
        "ercot_dam_spp_hourly_2023.csv",
        "interval_start_utc",
        "LZ_WEST",
    );
    let load = csv_column(
        "ercot_native_load_hourly_2023.csv",
        "interval_start_utc",
        "ERCOT_MW",
    );
    let btc = csv_column("btc_usd_daily.csv", "date_utc", "price_usd");
    let diff = csv_column("btc_difficulty_daily.csv", "date_utc", "difficulty");
    let btc_per_ph_day = csv_column(
        "btc_hashprice_daily_derived.csv",
        "date_utc",
        "expected_btc_per_ph_day_excl_fees",
    );

    let mut by_series: BTreeMap<String, Vec<(i64, f64)>> = BTreeMap::new();
    let mut last_seq: HashMap<String, i64> = HashMap::new();
    let mut demand_responses = Vec::new();
    for m in &msgs {
        let e = Envelope::decode(m.payload().unwrap()).unwrap();
        assert_eq!(key_of(m), e.stream_id, "key = stream id");
        let prev = last_seq.insert(e.stream_id.clone(), e.sequence);
        assert!(
            prev.is_none_or(|p| p < e.sequence),
            "{} out of order",
            e.stream_id
        );
        match e.payload {
            Event::MarketPriceObserved(p) => {
                assert_eq!(e.stream_id, format!("market-{}", p.series));
                assert_eq!(e.sequence, p.interval_start.unix_timestamp());
                assert_eq!(p.interval_start.date(), day, "trace time, not wall time");
                by_series
                    .entry(p.series)
                    .or_default()
                    .push((p.interval_start.unix_timestamp(), p.value));
            }
            Event::DemandResponseRequested(d) => {
                assert_eq!(e.stream_id, "grid-LZ_WEST");
                demand_responses.push(d);
            }
            Event::PeakWarningIssued(w) => {
                assert_eq!(e.stream_id, "grid-ERCOT");
                let seen = load[&rfc3339(w.interval_start)];
                assert_eq!(w.load_mw, seen);
                assert!(w.probability > 0.0 && w.probability <= 1.0);
            }
            other => panic!("unexpected event {other:?}"),
        }
    }
    let series: HashSet<&str> = by_series.keys().map(String::as_str).collect();
    let expected: HashSet<&str> = [
        "ercot.dam.LZ_WEST",
        "btc.price",
        "btc.difficulty",
        "btc.hashprice",
        "grid.carbon",
        "grid.load",
        "gpu.spot.H100",
    ]
    .into();
    assert_eq!(series, expected);
    for (s, points) in &by_series {
        let hourly = !s.starts_with("btc.");
        assert_eq!(points.len(), if hourly { 24 } else { 1 }, "{s}");
    }
    for (ts, v) in &by_series["ercot.dam.LZ_WEST"] {
        let t = time::OffsetDateTime::from_unix_timestamp(*ts).unwrap();
        assert_eq!(*v, dam[&rfc3339(t)], "price at {t}");
    }
    for (ts, v) in &by_series["grid.load"] {
        let t = time::OffsetDateTime::from_unix_timestamp(*ts).unwrap();
        assert_eq!(*v, load[&rfc3339(t)], "load at {t}");
    }
    let price = by_series["btc.price"][0].1;
    assert_eq!(price, btc["2023-08-10"]);
    assert_eq!(by_series["btc.difficulty"][0].1, diff["2023-08-10"]);
    // Hashprice per TH/day = the derived file's BTC yield per PH/day x price / 1000.
    let expect = btc_per_ph_day["2023-08-10"] * price / 1000.0;
    let hashprice = by_series["btc.hashprice"][0].1;
    assert!(
        (hashprice - expect).abs() < 1e-9 * expect,
        "{hashprice} vs {expect}"
    );
    assert_eq!(demand_responses.len(), 1);
    assert_eq!(demand_responses[0].curtail_mw, 10.0);
    assert_eq!(
        demand_responses[0].issued_at.unix_timestamp(),
        time::macros::datetime!(2023-08-10 20:00 UTC).unix_timestamp()
    );
}

/// A reader of `topic` from the beginning of every partition.
fn reader(kafka: &KafkaSettings, topic: &str) -> StreamConsumer {
    let group = format!("reader-{}", Uuid::new_v4().simple());
    let consumer: StreamConsumer = kafka.consumer_config(&group, &group).create().unwrap();
    let meta = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    for p in meta.topics().iter().flat_map(|t| t.partitions()) {
        tpl.add_partition_offset(topic, p.id(), Offset::Beginning)
            .unwrap();
    }
    consumer.assign(&tpl).unwrap();
    consumer
}

/// Site power per sample time, from rack telemetry; a sample time counts once every rack has
/// reported it.
struct SitePower {
    consumer: StreamConsumer,
    racks: usize,
    partial: HashMap<i64, (usize, f64)>,
}

impl SitePower {
    /// The next complete sample whose power satisfies `pred`, as (simulated seconds, W).
    async fn until(&mut self, timeout: Duration, pred: impl Fn(f64) -> bool) -> (f64, f64) {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let m = tokio::time::timeout_at(deadline, self.consumer.recv())
                .await
                .expect("telemetry in time")
                .unwrap();
            let e = Envelope::decode(m.payload().unwrap()).unwrap();
            let Event::AsicTelemetryBatch(b) = e.payload else {
                continue;
            };
            assert_eq!(e.stream_id, format!("asic-{}", b.rack));
            assert_eq!(
                e.sequence,
                (b.sampled_at.unix_timestamp_nanos() / 1_000_000) as i64
            );
            let entry = self.partial.entry(e.sequence).or_insert((0, 0.0));
            entry.0 += 1;
            entry.1 += b.samples.iter().map(|s| s.power_w).sum::<f64>();
            if entry.0 == self.racks {
                let (_, w) = self.partial.remove(&e.sequence).unwrap();
                if pred(w) {
                    return (e.sequence as f64 / 1000.0, w);
                }
            }
        }
    }
}

fn command(site: &str, action: AsicAction) -> OutgoingMessage {
    let mut e = Envelope::new(
        site_stream(site),
        "test",
        Event::AsicCommandIssued(AsicCommandIssued {
            command_id: Uuid::now_v7(),
            site: site.into(),
            target: AsicScope::Site,
            action,
            decision_id: None,
        }),
    );
    e.sequence = 1;
    OutgoingMessage {
        topic: String::new(),
        key: e.stream_id.clone(),
        payload: e.to_json().unwrap(),
        headers: vec![(
            headers::EVENT_TYPE.to_owned(),
            b"asic.command_issued".to_vec(),
        )],
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn asic_sim_curtails_within_five_seconds_and_resumes_within_ten_on_command() {
    let env = TestEnv::new().await;
    let site = "it-site";
    let model = AsicModel::known("S21 XP").unwrap();
    let n = 300.0;
    let full = n * model.nameplate_w();
    let sim = AsicSim::new(AsicSimConfig {
        sites: vec![SiteSpec {
            name: site.into(),
            groups: vec![GroupSpec { model, count: 300 }],
        }],
        rack_size: 100,
        params: SimParams::default().without_faults(),
        tick_s: 1.0,
        // Two simulated seconds per real second keeps the test short and the consumer's
        // latency small in simulated time.
        time_scale: 2.0,
        ..Default::default()
    })
    .unwrap();
    let clock = sim.clock();
    let shutdown = CancellationToken::new();
    let kafka = env.kafka.clone();
    let token = shutdown.clone();
    let task = tokio::spawn(async move { sim.run(&kafka, token).await });

    let mut power = SitePower {
        consumer: reader(&env.kafka, &env.topic(Topic::Telemetry)),
        racks: 3,
        partial: HashMap::new(),
    };
    power
        .until(Duration::from_secs(30), |w| (w - full).abs() < 1.0)
        .await;

    // An impossible command is dead-lettered with its reason; its arrival also shows that the
    // simulator's consumer is live before the timed commands go out.
    let producer = Producer::new(&env.kafka, "test").unwrap();
    let commands = env.topic(Topic::DeviceCommands);
    let send = |action| {
        let mut m = command(site, action);
        m.topic = commands.clone();
        m
    };
    producer
        .send(&send(AsicAction::PowerTarget { fraction: 1.5 }))
        .await
        .unwrap();
    let dl = read_topic(
        &env.kafka,
        &env.topic(Topic::DeadLetters),
        1,
        Duration::from_secs(30),
    )
    .await;
    let reason = dl
        .first()
        .and_then(|m| m.headers())
        .and_then(|h| h.iter().find(|x| x.key == headers::DLQ_REASON))
        .and_then(|x| x.value)
        .map(|v| String::from_utf8_lossy(v).into_owned())
        .expect("a dead letter with a reason");
    assert!(reason.contains("1.5"), "{reason}");

    let sent_at = clock.now();
    producer.send(&send(AsicAction::Curtail)).await.unwrap();
    let (ramping_at, _) = power
        .until(Duration::from_secs(30), |w| w < full - 1.0 && w > 25.0 * n)
        .await;
    let (idle_at, w) = power
        .until(Duration::from_secs(30), |w| w <= 25.0 * n + 1e-6)
        .await;
    assert!(ramping_at < idle_at, "power ramps down, it does not jump");
    assert!(
        idle_at - sent_at <= 5.0,
        "site at {w} W only {:.2} s after the curtail",
        idle_at - sent_at
    );

    let sent_at = clock.now();
    producer.send(&send(AsicAction::Resume)).await.unwrap();
    let (full_at, _) = power
        .until(Duration::from_secs(30), |w| w >= full - 1.0)
        .await;
    assert!(
        full_at - sent_at <= 10.0,
        "full power only {:.2} s after the resume",
        full_at - sent_at
    );

    shutdown.cancel();
    let stats = task.await.unwrap().unwrap();
    assert_eq!(
        stats.commands, 2,
        "curtail and resume obeyed; the invalid one not"
    );
    assert!(stats.ticks > 0 && stats.messages >= 3 * stats.ticks - 6);
}
