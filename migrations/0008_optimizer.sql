-- The optimizer's tables (services/optimizer) and the resource-manager's record of what it last
-- commanded each ASIC model of a site to do. Every optimizer decision is derived from these
-- tables (never from memory alone), so a restarted optimizer decides exactly as before.

-- The latest value of every market series seen (prices, hashprice, carbon, load).
CREATE TABLE opt_market_latest (
    series         TEXT PRIMARY KEY,
    interval_start TIMESTAMPTZ NOT NULL,
    value          DOUBLE PRECISION NOT NULL,
    unit           TEXT NOT NULL,
    updated_at     TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp()
);

-- The observations the policy decided on, one per price interval: the policy's past. Only
-- what was known when the interval opened is stored (no look-ahead).
CREATE TABLE opt_observations (
    interval_start    TIMESTAMPTZ PRIMARY KEY,
    dt_h              DOUBLE PRECISION NOT NULL,
    price_usd_per_mwh DOUBLE PRECISION NOT NULL,
    hashprice_usd_per_ph_day DOUBLE PRECISION NOT NULL,
    carbon_g_per_kwh  DOUBLE PRECISION,
    system_load_mw    DOUBLE PRECISION,
    recorded_at       TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp()
);

-- Per site: unit commitment states before and after the current interval (minimum on/off
-- times and switching costs need them across restarts), what was last emitted (to emit only
-- changes, plus a heartbeat) and the current target.
CREATE TABLE opt_sites (
    site                 TEXT PRIMARY KEY,
    interval_start       TIMESTAMPTZ NOT NULL,
    states_before        JSONB NOT NULL,
    states_after         JSONB NOT NULL,
    emitted_levels       JSONB,
    emitted_dr_id        UUID,
    intervals_since_emit INTEGER NOT NULL DEFAULT 0,
    target_mw            DOUBLE PRECISION NOT NULL,
    asic_target_mw       DOUBLE PRECISION NOT NULL,
    last_decision_id     UUID,
    updated_at           TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp()
);

-- 4CP warnings by the interval they warn of.
CREATE TABLE opt_peak_warnings (
    zone           TEXT NOT NULL,
    interval_start TIMESTAMPTZ NOT NULL,
    probability    DOUBLE PRECISION NOT NULL,
    load_mw        DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (zone, interval_start)
);

-- Demand-response events per site: the cap they impose until released.
CREATE TABLE opt_dr_events (
    dr_id       UUID NOT NULL,
    site        TEXT NOT NULL,
    curtail_mw  DOUBLE PRECISION NOT NULL,
    -- Site power (meter) allowed while the event holds: target before it minus curtail_mw.
    cap_mw      DOUBLE PRECISION NOT NULL,
    issued_at   TIMESTAMPTZ NOT NULL,
    respond_by  TIMESTAMPTZ NOT NULL,
    release_at  TIMESTAMPTZ NOT NULL,
    released_at TIMESTAMPTZ,
    PRIMARY KEY (dr_id, site)
);
CREATE INDEX opt_dr_events_active_idx ON opt_dr_events (site) WHERE released_at IS NULL;

-- Latest ASIC power per rack (from asic.telemetry_batch), summed per site to measure it.
CREATE TABLE opt_rack_power (
    site       TEXT NOT NULL,
    rack       TEXT NOT NULL,
    sampled_at TIMESTAMPTZ NOT NULL,
    power_w    DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (site, rack)
);

-- Decisions waiting for telemetry to confirm them (or for their deadline to pass).
CREATE TABLE opt_decisions (
    decision_id    UUID PRIMARY KEY,
    site           TEXT NOT NULL,
    made_at        TIMESTAMPTZ NOT NULL,
    target_mw      DOUBLE PRECISION NOT NULL,
    asic_target_mw DOUBLE PRECISION NOT NULL,
    -- Demand response: the event, the measured site power before it and the MW to shed.
    dr_id          UUID,
    baseline_mw    DOUBLE PRECISION,
    curtail_mw     DOUBLE PRECISION,
    deadline       TIMESTAMPTZ NOT NULL,
    correlation_id UUID NOT NULL,
    -- NULL while pending; then `met`, `missed`, `superseded` or `unmeasured`.
    outcome        TEXT CHECK (outcome IN ('met', 'missed', 'superseded', 'unmeasured')),
    closed_at      TIMESTAMPTZ
);
CREATE INDEX opt_decisions_pending_idx ON opt_decisions (site) WHERE closed_at IS NULL;

-- Resource-manager: the last state commanded to each ASIC model of a site, so unchanged
-- targets send no command.
CREATE TABLE rm_asic_commanded (
    site        TEXT NOT NULL,
    model       TEXT NOT NULL,
    curtailed   BOOLEAN NOT NULL,
    -- The last power target commanded (kept while curtailed: Resume returns to it).
    fraction    DOUBLE PRECISION NOT NULL,
    decision_id UUID,
    updated_at  TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (site, model)
);
