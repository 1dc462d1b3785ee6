-- The gateway (docs/adr/0004-workload-path.md): tenants, API keys (hashes only), idempotency
-- records, a wider workload board, and the gateway's view of the fleet.

CREATE TABLE tenants (
    tenant_id  TEXT PRIMARY KEY CHECK (length(tenant_id) BETWEEN 1 AND 64),
    name       TEXT NOT NULL,
    tier       TEXT NOT NULL CHECK (tier IN ('enterprise', 'pro', 'free')),
    created_at TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp()
);

-- Only the SHA-256 of a key is stored; the key itself is shown once, when it is created.
CREATE TABLE api_keys (
    key_hash   BYTEA PRIMARY KEY CHECK (length(key_hash) = 32),
    -- The first characters, so that an operator can tell keys apart.
    key_prefix TEXT NOT NULL,
    tenant_id  TEXT NOT NULL REFERENCES tenants (tenant_id),
    created_at TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp(),
    revoked_at TIMESTAMPTZ
);
CREATE INDEX api_keys_tenant_idx ON api_keys (tenant_id);

-- (tenant, idempotency key) -> workload, written in the transaction that appends
-- workload.submitted. The key is the REST Idempotency-Key header, or the request id (REST body
-- or Kafka request). The request hash tells a replay from a reused key.
CREATE TABLE gateway_idempotency (
    tenant_id       TEXT NOT NULL,
    idempotency_key TEXT NOT NULL,
    workload_id     UUID NOT NULL,
    request_hash    BYTEA NOT NULL,
    source          TEXT NOT NULL,
    created_at      TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (tenant_id, idempotency_key)
);

-- The board learns what each workload asked for and where it runs. Expand only: rows written
-- before this migration keep NULLs.
ALTER TABLE workload_board
    ADD COLUMN request_id        UUID,
    ADD COLUMN tier              TEXT,
    ADD COLUMN priority          SMALLINT,
    ADD COLUMN interruptible     BOOLEAN,
    ADD COLUMN gpu_type          TEXT,
    ADD COLUMN gpu_memory_gib    INTEGER,
    ADD COLUMN duration_s        INTEGER,
    ADD COLUMN latency_target_ms INTEGER,
    ADD COLUMN deadline          TIMESTAMPTZ,
    ADD COLUMN source            TEXT,
    ADD COLUMN worker_id         TEXT,
    ADD COLUMN gpu_ids           TEXT[],
    ADD COLUMN progress          DOUBLE PRECISION NOT NULL DEFAULT 0,
    ADD COLUMN progress_at       TIMESTAMPTZ,
    ADD COLUMN reason            TEXT,
    ADD COLUMN started_at        TIMESTAMPTZ;
-- Listing newest first per tenant (keyset pagination), and the shared queue's order.
CREATE INDEX workload_board_tenant_submitted_idx
    ON workload_board (tenant_id, submitted_at DESC, workload_id DESC);
CREATE INDEX workload_board_submitted_idx ON workload_board (submitted_at DESC, workload_id DESC);
CREATE INDEX workload_board_queue_idx
    ON workload_board (priority DESC, submitted_at, workload_id) WHERE state = 'queued';

-- The fleet as the gateway shows it (projection `gateway-resources`).
CREATE TABLE gateway_workers (
    worker_id     TEXT PRIMARY KEY,
    site          TEXT NOT NULL,
    backend       TEXT NOT NULL,
    state         TEXT NOT NULL CHECK (state IN ('healthy', 'lost')),
    registered_at TIMESTAMPTZ NOT NULL,
    updated_at    TIMESTAMPTZ NOT NULL
);

CREATE TABLE gateway_gpus (
    gpu_id     TEXT PRIMARY KEY,
    worker_id  TEXT NOT NULL,
    model      TEXT NOT NULL,
    memory_mib BIGINT NOT NULL
);
CREATE INDEX gateway_gpus_worker_idx ON gateway_gpus (worker_id);

-- Kept apart from the inventory so that the resources and workloads topics may arrive in any
-- order.
CREATE TABLE gateway_allocations (
    gpu_id       TEXT PRIMARY KEY,
    workload_id  UUID NOT NULL,
    worker_id    TEXT NOT NULL,
    allocated_at TIMESTAMPTZ NOT NULL
);
CREATE INDEX gateway_allocations_workload_idx ON gateway_allocations (workload_id);
