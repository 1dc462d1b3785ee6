-- The workload board: one row per workload with its current state, maintained by the
-- spine's projection from workload lifecycle events (and rebuildable from the log).
CREATE TABLE workload_board (
    workload_id   UUID PRIMARY KEY,
    tenant_id     TEXT NOT NULL,
    kind          TEXT NOT NULL,
    model         TEXT NOT NULL,
    gpu_count     INTEGER NOT NULL,
    state         TEXT NOT NULL,
    detail        TEXT,
    events_seen   INTEGER NOT NULL,
    last_sequence BIGINT NOT NULL,
    submitted_at  TIMESTAMPTZ NOT NULL,
    updated_at    TIMESTAMPTZ NOT NULL
);
CREATE INDEX workload_board_tenant_state_idx ON workload_board (tenant_id, state);
