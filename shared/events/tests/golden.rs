//! Golden fixtures: one JSON envelope per event type and version under `fixtures/`. Old versions
//! must keep decoding forever; the current version must encode byte-for-byte the same JSON.
//! Set `HCP_BLESS=1` to (re)write fixtures for the current versions after a deliberate change.

use hcp_events::payload::*;
use hcp_events::{Envelope, Event, EventType};
use time::macros::datetime;
use uuid::Uuid;

fn sample(ty: EventType) -> Event {
    let workload_id = Uuid::from_u128(0x0190_0000_0000_7000_8000_0000_0000_0001);
    match ty {
        EventType::WorkloadSubmitted => Event::WorkloadSubmitted(WorkloadSubmitted {
            workload_id,
            request_id: Uuid::from_u128(0x0190_0000_0000_7000_8000_0000_0000_0002),
            tenant_id: "acme".into(),
            tier: Tier::Enterprise,
            kind: None,
            model: "all-MiniLM-L6-v2".into(),
            gpu_count: 2,
            gpu_type: Some("H100".into()),
            gpu_memory_gib: Some(40),
            duration_s: 900,
            latency_target_ms: Some(50),
            interruptible: Some(false),
            deadline: Some(datetime!(2026-11-23 13:00 UTC)),
            source: SubmissionSource::Kafka,
            input: Some(InferenceInput {
                texts: vec!["HCP places workloads.".into()],
            }),
        }),
        EventType::WorkloadQueued => Event::WorkloadQueued(WorkloadQueued {
            workload_id,
            kind: WorkloadKind::RealtimeInference,
            priority: 10,
            interruptible: false,
            reason: "inferred from latency_target_ms=50".into(),
        }),
        EventType::WorkloadPlacementProposed => {
            Event::WorkloadPlacementProposed(WorkloadPlacementProposed {
                workload_id,
                worker_id: "worker-a".into(),
                gpu_ids: vec!["worker-a/gpu-0".into(), "worker-a/gpu-1".into()],
                score: 0.75,
                attempt: 1,
            })
        }
        EventType::WorkloadPlacementRejected => {
            Event::WorkloadPlacementRejected(WorkloadPlacementRejected {
                workload_id,
                worker_id: "worker-a".into(),
                reason: "gpu_held: GPU worker-a/gpu-1 is held by another workload".into(),
                retryable: true,
                code: Some(RejectCode::GpuHeld),
            })
        }
        EventType::WorkloadCheckpointed => Event::WorkloadCheckpointed(WorkloadCheckpointed {
            workload_id,
            progress: 0.5,
        }),
        EventType::WorkloadPaused => Event::WorkloadPaused(WorkloadPaused {
            workload_id,
            requested_by: "tenant:acme".into(),
        }),
        EventType::WorkloadResumed => Event::WorkloadResumed(WorkloadResumed {
            workload_id,
            requested_by: "tenant:acme".into(),
        }),
        EventType::WorkloadPreempted => Event::WorkloadPreempted(WorkloadPreempted {
            workload_id,
            for_workload_id: Uuid::from_u128(0x0190_0000_0000_7000_8000_0000_0000_0003),
            reason: "real-time inference could not be placed".into(),
        }),
        EventType::WorkloadRequeued => Event::WorkloadRequeued(WorkloadRequeued {
            workload_id,
            resume_progress: 0.5,
            reason: "preempted".into(),
        }),
        EventType::WorkerRegistered => Event::WorkerRegistered(WorkerRegistered {
            worker_id: "worker-a".into(),
            site: "west-1".into(),
            backend: "sim".into(),
            gpus: vec![GpuSpec {
                gpu_id: "worker-a/gpu-0".into(),
                model: "H100".into(),
                memory_mib: 81_559,
            }],
        }),
        EventType::WorkerLost => Event::WorkerLost(WorkerLost {
            worker_id: "worker-a".into(),
            silent_for_s: 12.5,
        }),
        EventType::WorkerHeartbeat => Event::WorkerHeartbeat(WorkerHeartbeat {
            worker_id: "worker-a".into(),
            site: "west-1".into(),
            backend: "sim".into(),
            gpus: vec![GpuSpec {
                gpu_id: "worker-a/gpu-0".into(),
                model: "H100".into(),
                memory_mib: 81_559,
            }],
            running: vec![workload_id],
            samples: vec![GpuSample {
                gpu_id: "worker-a/gpu-0".into(),
                utilization_pct: 97.5,
                memory_used_mib: 40_000,
                power_w: 650.0,
                temperature_c: 71.0,
            }],
        }),
        EventType::RunReported => Event::RunReported(RunReported {
            workload_id,
            worker_id: "worker-a".into(),
            status: RunStatus::Started,
            progress: 0.0,
            runtime_s: 0.0,
            detail: None,
            switch: Some(ModelSwitch {
                model: "all-MiniLM-L6-v2".into(),
                resident: false,
                load_ms: 850.0,
                bind_ms: 2.5,
                first_batch_ms: 12.0,
            }),
            output: None,
        }),
        EventType::DeviceCommand => Event::DeviceCommand(DeviceCommand {
            command_id: Uuid::from_u128(0x0190_0000_0000_7000_8000_0000_0000_0004),
            worker_id: "worker-a".into(),
            workload_id,
            action: CommandAction::Start {
                model: "all-MiniLM-L6-v2".into(),
                gpu_ids: vec!["worker-a/gpu-0".into()],
                duration_s: 900,
                resume_progress: 0.5,
                input: Some(InferenceInput {
                    texts: vec!["HCP places workloads.".into()],
                }),
            },
        }),
        EventType::WorkloadScheduled => Event::WorkloadScheduled(WorkloadScheduled {
            workload_id,
            worker_id: "worker-a".into(),
            gpu_ids: vec!["gpu-0".into(), "gpu-1".into()],
        }),
        EventType::WorkloadStarted => Event::WorkloadStarted(WorkloadStarted { workload_id }),
        EventType::WorkloadCompleted => Event::WorkloadCompleted(WorkloadCompleted {
            workload_id,
            runtime_s: 901.5,
            output: Some(RunOutput::embeddings(
                "all-MiniLM-L6-v2",
                &[vec![0.25, -0.5, 1.0]],
                "cuda",
                3.5,
            )),
        }),
        EventType::WorkloadFailed => Event::WorkloadFailed(WorkloadFailed {
            workload_id,
            reason: "deadline passed before placement".into(),
        }),
        EventType::WorkloadCancelled => Event::WorkloadCancelled(WorkloadCancelled {
            workload_id,
            requested_by: "tenant:acme".into(),
        }),
        EventType::DemandResponseRequested => {
            Event::DemandResponseRequested(DemandResponseRequested {
                dr_id: Uuid::from_u128(0x0190_0000_0000_7000_8000_0000_0000_0005),
                zone: "LZ_WEST".into(),
                site: Some("west-1".into()),
                curtail_mw: 10.0,
                respond_within_s: 60,
                duration_s: 3600,
                issued_at: datetime!(2023-08-10 20:00 UTC),
            })
        }
        EventType::PeakWarningIssued => Event::PeakWarningIssued(PeakWarningIssued {
            zone: "ERCOT".into(),
            interval_start: datetime!(2023-08-10 21:00 UTC),
            probability: 0.6,
            load_mw: 85_000.0,
        }),
        EventType::AsicTelemetryBatch => Event::AsicTelemetryBatch(AsicTelemetryBatch {
            site: "west-1".into(),
            rack: "west-1/r0001".into(),
            sampled_at: datetime!(2023-08-10 20:00:01 UTC),
            samples: vec![AsicSample {
                asic_id: "west-1/r0001/a01".into(),
                model: "S21 XP".into(),
                state: AsicState::Hashing,
                hashrate_ths: 270.5,
                power_w: 3645.0,
                power_target_w: 3645.0,
                temperature_c: 68.5,
                hw_errors: 0,
                accepted_shares: 12,
            }],
        }),
        EventType::AsicCommandIssued => Event::AsicCommandIssued(AsicCommandIssued {
            command_id: Uuid::from_u128(0x0190_0000_0000_7000_8000_0000_0000_0006),
            site: "west-1".into(),
            target: AsicScope::Model {
                model: "S21".into(),
            },
            action: AsicAction::Curtail,
            decision_id: Some(Uuid::from_u128(0x0190_0000_0000_7000_8000_0000_0000_0007)),
        }),
        EventType::DecisionMade => Event::DecisionMade(DecisionMade {
            decision_id: Uuid::from_u128(0x0190_0000_0000_7000_8000_0000_0000_0007),
            site: "west-1".into(),
            policy: "rule".into(),
            reason: "price 4987.25 $/MWh above S21 break-even 61.2 $/MWh".into(),
            asic_targets: vec![
                AsicTarget {
                    model: "S21".into(),
                    fraction: 0.0,
                },
                AsicTarget {
                    model: "S21 XP".into(),
                    fraction: 0.0,
                },
            ],
            gpu_batch_allowed: false,
            target_mw: 1.3,
            energy_usd_per_mwh: 4987.25,
            hashprice_usd_per_th_day: 0.07,
            expected_profit_usd_per_h: 1530.0,
            dr_id: None,
        }),
        EventType::DecisionConfirmed => Event::DecisionConfirmed(DecisionConfirmed {
            decision_id: Uuid::from_u128(0x0190_0000_0000_7000_8000_0000_0000_0007),
            site: "west-1".into(),
            target_mw: 1.3,
            measured_mw: 1.28,
            after_s: 4.2,
            met: true,
        }),
        EventType::MarketPriceObserved => Event::MarketPriceObserved(MarketPriceObserved {
            series: "ercot.rt.LZ_WEST".into(),
            interval_start: datetime!(2023-08-10 20:00 UTC),
            value: 4987.25,
            unit: "usd_per_mwh".into(),
        }),
    }
}

fn envelope(ty: EventType) -> Envelope {
    Envelope {
        event_id: Uuid::from_u128(0x0190_0000_0000_7000_8000_0000_0000_00aa),
        schema_version: ty.current_version(),
        stream_id: "workload-01900000-0000-7000-8000-000000000001".into(),
        sequence: 3,
        occurred_at: datetime!(2026-11-23 12:00:00.123 UTC),
        correlation_id: Uuid::from_u128(0x0190_0000_0000_7000_8000_0000_0000_00bb),
        causation_id: Some(Uuid::from_u128(0x0190_0000_0000_7000_8000_0000_0000_00cc)),
        producer: "fixture".into(),
        payload: sample(ty),
    }
}

fn fixture_path(ty: EventType, version: u16) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures")
        .join(format!("{}.v{version}.json", ty.as_str()))
}

#[test]
fn every_current_version_matches_its_golden_fixture() {
    let bless = std::env::var_os("HCP_BLESS").is_some();
    for &ty in EventType::ALL {
        let path = fixture_path(ty, ty.current_version());
        let value: serde_json::Value =
            serde_json::from_slice(&envelope(ty).to_json().unwrap()).unwrap();
        let mut encoded = serde_json::to_string_pretty(&value).unwrap();
        encoded.push('\n');
        if bless {
            std::fs::write(&path, &encoded).unwrap();
        }
        let golden = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("missing fixture {} ({e})", path.display()));
        assert_eq!(encoded, golden, "{ty} no longer encodes as its fixture");
    }
}

#[test]
fn every_fixture_of_every_version_still_decodes() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures");
    let mut seen = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let bytes = std::fs::read(&path).unwrap();
        let env = Envelope::from_json(&bytes)
            .unwrap_or_else(|e| panic!("{} no longer decodes: {e}", path.display()));
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        assert!(
            name.starts_with(env.event_type().as_str()),
            "{name} decoded as {}",
            env.event_type()
        );
        seen += 1;
    }
    assert!(seen >= EventType::ALL.len());
}
