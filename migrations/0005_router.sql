-- The router's tables (ADR 0004). The `router` projection maintains them from the workloads
-- and resources topics; the placement loop reads them incrementally: every row carries the id
-- of the transaction that last wrote it (`changed_xid`), and the loop re-reads the rows written
-- by transactions at or after the oldest one still running at its previous read.

CREATE FUNCTION router_touch() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.changed_xid := pg_current_xact_id();
    RETURN NEW;
END $$;

-- Workers, from worker.registered / worker.lost.
CREATE TABLE router_workers (
    worker_id     TEXT PRIMARY KEY,
    site          TEXT NOT NULL,
    backend       TEXT NOT NULL,
    -- False after worker.lost until the worker registers again.
    healthy       BOOLEAN NOT NULL,
    -- The worker's circuit breaker (hcp_domain::breaker::Breaker), advanced with event times.
    breaker       JSONB NOT NULL DEFAULT '{"state": "closed", "failures": 0}',
    registered_at TIMESTAMPTZ NOT NULL,
    updated_at    TIMESTAMPTZ NOT NULL,
    changed_xid   xid8 NOT NULL DEFAULT pg_current_xact_id()
);
CREATE INDEX router_workers_changed_idx ON router_workers (changed_xid);
CREATE TRIGGER router_workers_touch BEFORE UPDATE ON router_workers
    FOR EACH ROW EXECUTE FUNCTION router_touch();

-- GPUs, and which workload holds each (from workload.scheduled until it is released).
CREATE TABLE router_gpus (
    gpu_id      TEXT PRIMARY KEY,
    worker_id   TEXT NOT NULL REFERENCES router_workers (worker_id),
    model       TEXT NOT NULL,
    memory_mib  BIGINT NOT NULL,
    -- No longer reported by its worker; kept so that incremental readers see it go.
    removed     BOOLEAN NOT NULL DEFAULT false,
    held_by     UUID,
    changed_xid xid8 NOT NULL DEFAULT pg_current_xact_id()
);
CREATE INDEX router_gpus_worker_idx ON router_gpus (worker_id);
CREATE INDEX router_gpus_held_by_idx ON router_gpus (held_by) WHERE held_by IS NOT NULL;
CREATE INDEX router_gpus_changed_idx ON router_gpus (changed_xid);
CREATE TRIGGER router_gpus_touch BEFORE UPDATE ON router_gpus
    FOR EACH ROW EXECUTE FUNCTION router_touch();

-- GPUs per worker and class (model, memory), and the largest of each class in the fleet: what
-- the feasibility check on every submission reads (a handful of rows).
CREATE TABLE router_worker_classes (
    worker_id  TEXT NOT NULL,
    model      TEXT NOT NULL,
    memory_mib BIGINT NOT NULL,
    gpus       INTEGER NOT NULL,
    PRIMARY KEY (worker_id, model, memory_mib)
);
CREATE TABLE router_fleet_classes (
    model        TEXT NOT NULL,
    memory_mib   BIGINT NOT NULL,
    largest_gang INTEGER NOT NULL,
    worker_id    TEXT NOT NULL,
    PRIMARY KEY (model, memory_mib)
);

-- Optional per-site scoring attributes; sites without a row score neutrally.
CREATE TABLE router_sites (
    site              TEXT PRIMARY KEY,
    latency_ms        DOUBLE PRECISION,
    cost_per_gpu_hour DOUBLE PRECISION,
    profitability     DOUBLE PRECISION
);

-- Live workloads: request, classification, where they are and what placement has tried.
-- Terminal rows are kept for a while (so the loop sees them end) and then purged.
CREATE TABLE router_queue (
    workload_id     UUID PRIMARY KEY,
    tenant_id       TEXT NOT NULL,
    tier            TEXT NOT NULL,
    model           TEXT NOT NULL,
    -- Classification; NULL until workload.queued.
    kind            TEXT,
    priority        SMALLINT CHECK (priority BETWEEN 1 AND 10),
    interruptible   BOOLEAN,
    gpu_count       INTEGER NOT NULL,
    gpu_type        TEXT,
    gpu_memory_mib  BIGINT NOT NULL,
    duration_s      INTEGER NOT NULL,
    deadline        TIMESTAMPTZ,
    -- hcp_domain::WorkloadState.
    state           TEXT NOT NULL,
    -- The stream's last sequence the router knows (appends use it as the expected version).
    last_version    BIGINT NOT NULL,
    last_event_id   UUID NOT NULL,
    correlation_id  UUID NOT NULL,
    -- Rejected placements since it was last queued, and when to try again.
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at TIMESTAMPTZ,
    last_error      TEXT,
    -- The proposal waiting for the resource-manager's answer, if any (survives a restart of
    -- the placement loop, so a workload is not proposed twice).
    proposed_worker TEXT,
    proposed_gpus   TEXT[],
    proposed_at     TIMESTAMPTZ,
    worker_id       TEXT,
    gpu_ids         TEXT[] NOT NULL DEFAULT '{}',
    -- Last checkpoint (0-1) and since when work has been at risk (start or checkpoint).
    progress        DOUBLE PRECISION NOT NULL DEFAULT 0,
    progress_at     TIMESTAMPTZ,
    preempted_for   UUID,
    preempted_at    TIMESTAMPTZ,
    submitted_at    TIMESTAMPTZ NOT NULL,
    queued_at       TIMESTAMPTZ,
    updated_at      TIMESTAMPTZ NOT NULL,
    changed_xid     xid8 NOT NULL DEFAULT pg_current_xact_id()
);
CREATE INDEX router_queue_changed_idx ON router_queue (changed_xid);
CREATE INDEX router_queue_worker_idx ON router_queue (worker_id) WHERE worker_id IS NOT NULL;
CREATE INDEX router_queue_ended_idx ON router_queue (updated_at)
    WHERE state IN ('completed', 'failed', 'cancelled');
CREATE TRIGGER router_queue_touch BEFORE UPDATE ON router_queue
    FOR EACH ROW EXECUTE FUNCTION router_touch();
