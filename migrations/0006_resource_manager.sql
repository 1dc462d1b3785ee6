-- The resource-manager's tables (ADR 0004): worker inventory and health from heartbeats, the
-- latest GPU samples, GPU allocations (the resource-manager is their only writer) and what it
-- knows of each run it placed.

CREATE TABLE rm_workers (
    worker_id      TEXT PRIMARY KEY,
    -- The pool: every allocation change in a site runs under one advisory lock on it.
    site           TEXT NOT NULL,
    -- `sim` or `cuda`.
    backend        TEXT NOT NULL,
    state          TEXT NOT NULL CHECK (state IN ('healthy', 'lost')),
    -- The GPU specs last registered, to tell a changed inventory from a repeated one.
    gpus           JSONB NOT NULL,
    -- Receipt time of the last heartbeat (the resource-manager's clock, not the worker's).
    last_seen      TIMESTAMPTZ NOT NULL,
    -- The last heartbeat's event id: the cause of a `worker.lost`.
    last_report_id UUID,
    registered_at  TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp(),
    lost_at        TIMESTAMPTZ
);
CREATE INDEX rm_workers_healthy_idx ON rm_workers (last_seen) WHERE state = 'healthy';

CREATE TABLE rm_gpus (
    gpu_id          TEXT PRIMARY KEY,
    worker_id       TEXT NOT NULL REFERENCES rm_workers (worker_id),
    model           TEXT NOT NULL,
    memory_mib      BIGINT NOT NULL,
    -- Latest telemetry sample (NULL until the first one).
    utilization_pct DOUBLE PRECISION,
    memory_used_mib BIGINT,
    power_w         DOUBLE PRECISION,
    temperature_c   DOUBLE PRECISION,
    sampled_at      TIMESTAMPTZ
);
CREATE INDEX rm_gpus_worker_idx ON rm_gpus (worker_id);

CREATE TABLE rm_allocations (
    allocation_id  BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    workload_id    UUID NOT NULL,
    worker_id      TEXT NOT NULL,
    gpu_id         TEXT NOT NULL,
    allocated_at   TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp(),
    released_at    TIMESTAMPTZ,
    release_reason TEXT
);
-- The backstop: whatever the code does, a GPU has at most one live allocation.
CREATE UNIQUE INDEX rm_allocations_one_holder_idx ON rm_allocations (gpu_id)
    WHERE released_at IS NULL;
CREATE INDEX rm_allocations_live_workload_idx ON rm_allocations (workload_id)
    WHERE released_at IS NULL;
CREATE INDEX rm_allocations_live_worker_idx ON rm_allocations (worker_id)
    WHERE released_at IS NULL;

CREATE TABLE rm_runs (
    workload_id         UUID PRIMARY KEY,
    -- The worker of the current (or last) placement.
    worker_id           TEXT NOT NULL,
    model               TEXT NOT NULL,
    duration_s          INTEGER NOT NULL,
    -- Progress of the last checkpoint, 0-1: where a requeued run resumes.
    checkpoint_progress DOUBLE PRECISION NOT NULL DEFAULT 0,
    -- The workload's state as the resource-manager last wrote or read it.
    state               TEXT NOT NULL,
    -- The workload stream's version after the resource-manager's last append.
    stream_version      BIGINT NOT NULL,
    -- Sequence of the `workload.scheduled` event of the current placement: workload events
    -- older than it concern an earlier placement and never touch this one.
    scheduled_version   BIGINT NOT NULL,
    -- Since when the worker's heartbeats omit this run (a restarted worker); NULL if listed.
    missing_since       TIMESTAMPTZ,
    updated_at          TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp()
);
