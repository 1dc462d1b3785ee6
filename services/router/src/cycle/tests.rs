//! The cycle's unit tests: plans from memory, no I/O.

use super::*;
use hcp_db::sqlx::types::Json;
use repo::WorkerRow;
use time::macros::datetime;

const NOW: OffsetDateTime = datetime!(2026-11-23 12:00 UTC);

fn config() -> RouterConfig {
    let mut c = RouterConfig::defaults().unwrap();
    c.preemption_burst = 1;
    c.preemptions_per_minute = 1.0;
    c
}

fn worker(id: &str, gpus: usize) -> (WorkerRow, Vec<GpuRow>) {
    (
        WorkerRow {
            worker_id: id.into(),
            site: "s".into(),
            healthy: true,
            breaker: Json(Breaker::default()),
        },
        (0..gpus)
            .map(|i| GpuRow {
                gpu_id: format!("{id}/gpu-{i}"),
                worker_id: id.into(),
                model: "H100".into(),
                memory_mib: 81920,
                removed: false,
                held_by: None,
            })
            .collect(),
    )
}

fn row(n: u128, kind: WorkloadKind, priority: i16, gpus: i32) -> WorkloadRow {
    WorkloadRow {
        workload_id: Uuid::from_u128(n),
        tenant_id: "t".into(),
        kind: Some(repo::kind_str(kind).into()),
        priority: Some(priority),
        interruptible: Some(kind != WorkloadKind::RealtimeInference),
        class_reason: None,
        gpu_count: gpus,
        gpu_type: None,
        gpu_memory_mib: 0,
        deadline: None,
        state: "queued".into(),
        last_version: 2,
        last_event_id: Uuid::from_u128(1000 + n),
        correlation_id: Uuid::from_u128(2000 + n),
        attempts: 0,
        next_attempt_at: None,
        proposed_worker: None,
        proposed_gpus: None,
        proposed_at: None,
        worker_id: None,
        gpu_ids: vec![],
        progress_at: None,
        preempted_for: None,
        preempted_at: None,
        queued_at: Some(NOW - time::Duration::seconds(10)),
        submitted_at: NOW - time::Duration::seconds(10),
    }
}

fn state(workers: Vec<(WorkerRow, Vec<GpuRow>)>, workloads: Vec<WorkloadRow>) -> State {
    let mut s = State::new(&config(), NOW);
    let (workers, gpus): (Vec<_>, Vec<_>) = workers.into_iter().unzip();
    s.apply(Changes {
        next_watermark: 1,
        workers,
        gpus: gpus.into_iter().flatten().collect(),
        workloads,
    });
    s
}

/// Pretends every append of the plan went through at the next stream version.
fn all_appended(plan: &Plan) -> Appended {
    Appended {
        expired: plan.expired.iter().map(|a| Some(a.expected + 1)).collect(),
        proposed: plan
            .proposals
            .iter()
            .map(|a| Some(a.expected + 1 + i64::from(a.announce.is_some())))
            .collect(),
        announced: plan
            .announcements
            .iter()
            .map(|a| Some(a.expected + 1))
            .collect(),
        waves: plan
            .preemptions
            .iter()
            .map(|(_, w)| w.iter().map(|a| Some(a.expected + 1)).collect())
            .collect(),
    }
}

fn proposed_ids(plan: &Plan) -> Vec<Uuid> {
    plan.proposals.iter().map(|a| a.workload_id).collect()
}

#[test]
fn a_fresh_classification_is_announced_with_its_placement_or_alone_when_it_must_wait() {
    // Two classified submissions (stream version 1: nothing appended after them yet), one
    // free GPU.
    let fresh = |n| {
        let mut r = row(n, WorkloadKind::BatchInference, 5, 1);
        r.last_version = 1;
        r.class_reason = Some("stated kind".into());
        r
    };
    let mut s = state(vec![worker("w", 1)], vec![fresh(1), fresh(2)]);
    let plan = s.plan(NOW, &config());
    assert_eq!(proposed_ids(&plan), vec![Uuid::from_u128(1)]);
    let placed = &plan.proposals[0];
    assert_eq!(placed.expected, 1);
    let Some(Event::WorkloadQueued(q)) = &placed.announce else {
        panic!("the placement is not announced: {:?}", placed.announce)
    };
    assert_eq!((q.priority, q.reason.as_str()), (5, "stated kind"));
    // The one that waits is announced alone, without a second queued event inside.
    assert_eq!(plan.announcements.len(), 1);
    let waiting = &plan.announcements[0];
    assert_eq!(waiting.workload_id, Uuid::from_u128(2));
    assert!(waiting.announce.is_none());
    assert!(matches!(waiting.event, Event::WorkloadQueued(_)));
    s.record(&plan, all_appended(&plan), NOW);
    // Neither is announced again while the rows catch up: the placed one's announcement rode
    // with its proposal, the other's is on its way.
    let again = s.plan(NOW, &config());
    assert!(again.announcements.is_empty(), "{:?}", again.announcements);

    // The first one ended and freed its GPU. Until the second's row shows the
    // announcement, it is neither placed nor announced again.
    s.forget(Uuid::from_u128(1));
    let plan = s.plan(NOW, &config());
    assert!(plan.proposals.is_empty() && plan.announcements.is_empty());
    // Once it does, it is placed at version 2 with nothing to announce.
    let mut announced = fresh(2);
    announced.last_version = 2;
    s.apply_workload(announced);
    let plan = s.plan(NOW, &config());
    assert_eq!(proposed_ids(&plan), vec![Uuid::from_u128(2)]);
    assert_eq!(plan.proposals[0].expected, 2);
    assert!(plan.proposals[0].announce.is_none());
}

#[test]
fn free_gpus_are_proposed_once_and_stay_promised_until_answered() {
    let mut s = state(
        vec![worker("w", 2)],
        (1..=3)
            .map(|n| row(n, WorkloadKind::BatchInference, 5, 1))
            .collect(),
    );
    let plan = s.plan(NOW, &config());
    assert_eq!(plan.proposals.len(), 2);
    assert!(plan.proposals.iter().all(|a| a.expected == 2));
    let done = s.record(&plan, all_appended(&plan), NOW);
    assert_eq!(done.placed, 2);
    // Next pass: the same GPUs are promised and the same workloads are waiting.
    assert!(s.plan(NOW, &config()).proposals.is_empty());
    // A rejection for one of them frees its GPU for the third workload.
    let rejected = proposed_ids(&plan)[0];
    let mut r = row(rejected.as_u128(), WorkloadKind::BatchInference, 5, 1);
    r.last_version = 4;
    r.attempts = 1;
    r.next_attempt_at = Some(NOW + time::Duration::milliseconds(300));
    s.apply(Changes {
        next_watermark: 2,
        workloads: vec![r],
        ..Changes::default()
    });
    let plan = s.plan(NOW, &config());
    assert_eq!(
        proposed_ids(&plan),
        vec![Uuid::from_u128(3)],
        "backoff holds it back"
    );
    // With nothing else changing, the next pass is due when the backoff ends.
    assert_eq!(s.next_due, NOW + time::Duration::milliseconds(300));
    // And nothing sticks: an unanswered proposal is forgotten after the timeout.
    let later = NOW + time::Duration::milliseconds(config().proposal_timeout_ms as i64 + 1);
    assert_eq!(s.plan(later, &config()).proposals.len(), 2);
}

#[test]
fn a_recorded_proposal_blocks_after_a_restart() {
    let mut r = row(1, WorkloadKind::BatchInference, 5, 1);
    r.last_version = 3;
    r.proposed_worker = Some("w".into());
    r.proposed_gpus = Some(vec!["w/gpu-0".into()]);
    r.proposed_at = Some(NOW);
    let mut s = state(
        vec![worker("w", 2)],
        vec![r, row(2, WorkloadKind::BatchInference, 5, 1)],
    );
    let plan = s.plan(NOW, &config());
    assert_eq!(proposed_ids(&plan), vec![Uuid::from_u128(2)]);
    let Event::WorkloadPlacementProposed(p) = &plan.proposals[0].event else {
        panic!()
    };
    assert_eq!(p.gpu_ids, vec!["w/gpu-1"]);
}

#[test]
fn a_passed_deadline_fails_a_queued_workload_once() {
    let mut r = row(1, WorkloadKind::BatchInference, 5, 1);
    r.deadline = Some(NOW - time::Duration::seconds(1));
    let mut s = state(vec![], vec![r]);
    let plan = s.plan(NOW, &config());
    assert_eq!(plan.expired.len(), 1);
    let Event::WorkloadFailed(f) = &plan.expired[0].event else {
        panic!()
    };
    assert_eq!(
        f.reason,
        "deadline 2026-11-23T11:59:59Z passed before placement"
    );
    s.record(&plan, all_appended(&plan), NOW);
    assert!(s.plan(NOW, &config()).expired.is_empty());
}

#[test]
fn realtime_work_preempts_within_the_rate_limit_and_only_once_per_wave() {
    let (w, mut gpus) = worker("w", 2);
    let mut train = row(1, WorkloadKind::Training, 2, 2);
    train.state = "running".into();
    train.worker_id = Some("w".into());
    train.gpu_ids = gpus.iter().map(|g| g.gpu_id.clone()).collect();
    train.progress_at = Some(NOW - time::Duration::minutes(3));
    for g in &mut gpus {
        g.held_by = Some(train.workload_id);
    }
    let mut s = state(
        vec![(w, gpus)],
        vec![
            train,
            row(2, WorkloadKind::RealtimeInference, 10, 2),
            row(3, WorkloadKind::RealtimeInference, 9, 1),
        ],
    );
    let plan = s.plan(NOW, &config());
    assert!(plan.proposals.is_empty());
    // Burst of one: only the first real-time workload gets a wave.
    assert_eq!(plan.preemptions.len(), 1);
    let (rt, victims) = &plan.preemptions[0];
    assert_eq!(*rt, Uuid::from_u128(2));
    assert_eq!(victims.len(), 1);
    let Event::WorkloadPreempted(p) = &victims[0].event else {
        panic!()
    };
    assert_eq!(
        (p.workload_id, p.for_workload_id),
        (Uuid::from_u128(1), *rt)
    );
    s.record(&plan, all_appended(&plan), NOW);
    // A minute later the bucket has a token again, but the wave is still stopping and the
    // victim is taken: no second preemption.
    let later = NOW + time::Duration::minutes(1);
    assert!(s.plan(later, &config()).preemptions.is_empty());
}

#[test]
fn the_kept_free_gpu_index_gives_back_what_a_failed_append_took_and_follows_breakers_in_time() {
    let mut s = state(
        vec![worker("w", 1)],
        vec![row(1, WorkloadKind::BatchInference, 5, 1)],
    );
    let plan = s.plan(NOW, &config());
    assert_eq!(proposed_ids(&plan), vec![Uuid::from_u128(1)]);
    // The append failed (a conflict, or the database was away): nothing is promised, and the
    // next pass finds the GPU free again.
    let failed = Appended {
        proposed: vec![None],
        ..Appended::default()
    };
    s.record(&plan, failed, NOW);
    let plan = s.plan(NOW, &config());
    assert_eq!(proposed_ids(&plan), vec![Uuid::from_u128(1)]);
    s.record(
        &plan,
        Appended {
            proposed: vec![None],
            ..Appended::default()
        },
        NOW,
    );
    // The worker's breaker opens for a second: nothing goes there until it half-opens, with
    // no row changing in between.
    let (mut w, _) = worker("w", 1);
    w.breaker = Json(Breaker::Open {
        until: NOW + time::Duration::seconds(1),
        backoff_ms: 1000,
    });
    s.apply(Changes {
        next_watermark: 2,
        workers: vec![w],
        ..Changes::default()
    });
    assert!(s.plan(NOW, &config()).proposals.is_empty());
    let later = NOW + time::Duration::seconds(2);
    assert_eq!(
        proposed_ids(&s.plan(later, &config())),
        vec![Uuid::from_u128(1)],
        "the half-open breaker's probe"
    );
}

#[test]
fn a_promised_gpu_that_moved_to_another_worker_is_free_there_once_its_proposal_ends() {
    let mut s = state(
        vec![worker("a", 1), worker("b", 0)],
        vec![row(1, WorkloadKind::BatchInference, 5, 1)],
    );
    let plan = s.plan(NOW, &config());
    assert_eq!(proposed_ids(&plan), vec![Uuid::from_u128(1)]);
    s.record(&plan, all_appended(&plan), NOW);
    // The GPU re-registers under worker b while still promised to the proposal.
    let (_, mut gpus) = worker("a", 1);
    gpus[0].worker_id = "b".into();
    s.apply(Changes {
        next_watermark: 2,
        gpus,
        ..Changes::default()
    });
    assert!(
        s.plan(NOW, &config()).proposals.is_empty(),
        "still promised"
    );
    // The proposal times out: the GPU is free again, on b.
    let later = NOW + time::Duration::milliseconds(config().proposal_timeout_ms as i64 + 1);
    let plan = s.plan(later, &config());
    let Some(Event::WorkloadPlacementProposed(p)) = plan.proposals.first().map(|a| &a.event) else {
        panic!("not placed again: {:?}", plan.proposals)
    };
    assert_eq!(
        (p.worker_id.as_str(), p.gpu_ids.as_slice()),
        ("b", &["a/gpu-0".to_owned()][..])
    );
}
