-- Device telemetry (ASIC and GPU samples), their 1-minute rollups per site, and the latest
-- power per site for the optimizer. Written by the telemetry ingest (crate hcp-tsdb).
--
-- Raw samples are time-series tables made by hcp_create_timeseries (0002): hypertables where
-- TimescaleDB is present, range-partitioned plain tables (one partition per hour) otherwise.
-- They carry no unique key: exactly-once comes from the ingest's partition offsets, stored in
-- `consumer_offsets` in the same transaction as the rows.
--
-- Rollups are plain tables on both storages, recomputed per closed minute from the raw
-- samples by hcp_rollup_telemetry(), which the ingest calls periodically for the minutes it
-- wrote into (`telemetry_rollup_pending`, filled in the ingest's own transaction, so a crash
-- never loses a minute). One function on both storages keeps the results identical; a
-- TimescaleDB continuous aggregate would have to be a different relation with different
-- refresh semantics, so it is not used.

-- How long each time-series table keeps its rows (NULL: forever). hcp_apply_retention() drops
-- whole partitions (or chunks) older than that.
ALTER TABLE timeseries_tables ADD COLUMN retention INTERVAL;

SELECT hcp_create_timeseries(
    'asic_telemetry',
    'time TIMESTAMPTZ NOT NULL, site TEXT NOT NULL, rack TEXT NOT NULL, asic_id TEXT NOT NULL,
     model TEXT NOT NULL, state TEXT NOT NULL, hashrate_ths DOUBLE PRECISION NOT NULL,
     power_w DOUBLE PRECISION NOT NULL, power_target_w DOUBLE PRECISION NOT NULL,
     temperature_c DOUBLE PRECISION NOT NULL, hw_errors INTEGER NOT NULL,
     accepted_shares INTEGER NOT NULL',
    'time',
    INTERVAL '1 hour');

SELECT hcp_create_timeseries(
    'gpu_telemetry',
    'time TIMESTAMPTZ NOT NULL, site TEXT NOT NULL, worker_id TEXT NOT NULL, gpu_id TEXT NOT NULL,
     utilization_pct DOUBLE PRECISION NOT NULL, memory_used_mib BIGINT NOT NULL,
     power_w DOUBLE PRECISION NOT NULL, temperature_c DOUBLE PRECISION NOT NULL',
    'time',
    INTERVAL '1 hour');

-- The rollup reads whole minutes. Rows arrive in time order, so a BRIN index finds a minute
-- for almost nothing at insert time. (Measured with COPY of 300k ASIC rows on the 2-core dev
-- machine: 1.5-1.9 s with BRIN, 1.6-2.1 s with no index, 3.0-3.3 s with a B-tree on
-- (site, time).) No per-device index: device history comes from the rollups or a scan of one
-- partition.
CREATE INDEX asic_telemetry_time_brin ON asic_telemetry USING brin (time);
CREATE INDEX gpu_telemetry_time_brin ON gpu_telemetry USING brin (time);

UPDATE timeseries_tables SET retention = INTERVAL '7 days'
WHERE table_name IN ('asic_telemetry', 'gpu_telemetry');

-- Drops what every registered table keeps no longer; returns partitions (chunks) dropped.
CREATE FUNCTION hcp_apply_retention(p_now TIMESTAMPTZ DEFAULT now())
RETURNS INTEGER LANGUAGE plpgsql AS $$
DECLARE
    t       RECORD;
    dropped INTEGER := 0;
BEGIN
    FOR t IN SELECT table_name, retention FROM timeseries_tables WHERE retention IS NOT NULL LOOP
        dropped := dropped + hcp_drop_partitions_before(t.table_name, p_now - t.retention);
    END LOOP;
    RETURN dropped;
END $$;

-- ASICs per site and minute. `power_mw` is the site's mean ASIC power over the minute (mean
-- device power x devices seen), `hashrate_phs` likewise; device counts by state count each
-- device once per state it reported in that minute.
CREATE TABLE asic_rollup_1m (
    bucket          TIMESTAMPTZ NOT NULL,
    site            TEXT NOT NULL,
    samples         BIGINT NOT NULL,
    devices         INTEGER NOT NULL,
    avg_power_w     DOUBLE PRECISION NOT NULL,
    power_mw        DOUBLE PRECISION NOT NULL,
    energy_mwh      DOUBLE PRECISION NOT NULL,
    hashrate_phs    DOUBLE PRECISION NOT NULL,
    hashing         INTEGER NOT NULL,
    ramping         INTEGER NOT NULL,
    curtailed       INTEGER NOT NULL,
    fault           INTEGER NOT NULL,
    offline         INTEGER NOT NULL,
    computed_at     TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (site, bucket)
);

-- GPUs per site and minute.
CREATE TABLE gpu_rollup_1m (
    bucket              TIMESTAMPTZ NOT NULL,
    site                TEXT NOT NULL,
    samples             BIGINT NOT NULL,
    gpus                INTEGER NOT NULL,
    avg_utilization_pct DOUBLE PRECISION NOT NULL,
    power_mw            DOUBLE PRECISION NOT NULL,
    computed_at         TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (site, bucket)
);

-- Minutes the ingest wrote samples into and the rollup has not recomputed since.
CREATE TABLE telemetry_rollup_pending (
    bucket TIMESTAMPTZ PRIMARY KEY
);

-- Recomputes the rollups of the pending minutes that are closed at p_now (bucket + 1 minute +
-- p_grace <= p_now), then forgets them. Idempotent; returns the minutes rolled up.
CREATE FUNCTION hcp_rollup_telemetry(p_now TIMESTAMPTZ DEFAULT now(),
                                     p_grace INTERVAL DEFAULT INTERVAL '5 seconds')
RETURNS INTEGER LANGUAGE plpgsql AS $$
DECLARE
    buckets TIMESTAMPTZ[];
BEGIN
    WITH done AS (
        DELETE FROM telemetry_rollup_pending
        WHERE bucket + INTERVAL '1 minute' + p_grace <= p_now
        RETURNING bucket)
    SELECT coalesce(array_agg(bucket), '{}') INTO buckets FROM done;
    IF cardinality(buckets) = 0 THEN
        RETURN 0;
    END IF;
    INSERT INTO asic_rollup_1m AS r (bucket, site, samples, devices, avg_power_w, power_mw,
                                     energy_mwh, hashrate_phs, hashing, ramping, curtailed,
                                     fault, offline)
    SELECT b.bucket, a.site, count(*), count(DISTINCT a.asic_id), avg(a.power_w),
           avg(a.power_w) * count(DISTINCT a.asic_id) / 1e6,
           avg(a.power_w) * count(DISTINCT a.asic_id) / 1e6 / 60.0,
           avg(a.hashrate_ths) * count(DISTINCT a.asic_id) / 1000.0,
           count(DISTINCT a.asic_id) FILTER (WHERE a.state = 'hashing'),
           count(DISTINCT a.asic_id) FILTER (WHERE a.state = 'ramping'),
           count(DISTINCT a.asic_id) FILTER (WHERE a.state = 'curtailed'),
           count(DISTINCT a.asic_id) FILTER (WHERE a.state = 'fault'),
           count(DISTINCT a.asic_id) FILTER (WHERE a.state = 'offline')
    FROM unnest(buckets) AS b(bucket)
    JOIN asic_telemetry a ON a.time >= b.bucket AND a.time < b.bucket + INTERVAL '1 minute'
    GROUP BY b.bucket, a.site
    ON CONFLICT (site, bucket) DO UPDATE SET
        samples = EXCLUDED.samples, devices = EXCLUDED.devices,
        avg_power_w = EXCLUDED.avg_power_w, power_mw = EXCLUDED.power_mw,
        energy_mwh = EXCLUDED.energy_mwh, hashrate_phs = EXCLUDED.hashrate_phs,
        hashing = EXCLUDED.hashing, ramping = EXCLUDED.ramping,
        curtailed = EXCLUDED.curtailed, fault = EXCLUDED.fault, offline = EXCLUDED.offline,
        computed_at = clock_timestamp();
    INSERT INTO gpu_rollup_1m AS r (bucket, site, samples, gpus, avg_utilization_pct, power_mw)
    SELECT b.bucket, g.site, count(*), count(DISTINCT g.gpu_id), avg(g.utilization_pct),
           avg(g.power_w) * count(DISTINCT g.gpu_id) / 1e6
    FROM unnest(buckets) AS b(bucket)
    JOIN gpu_telemetry g ON g.time >= b.bucket AND g.time < b.bucket + INTERVAL '1 minute'
    GROUP BY b.bucket, g.site
    ON CONFLICT (site, bucket) DO UPDATE SET
        samples = EXCLUDED.samples, gpus = EXCLUDED.gpus,
        avg_utilization_pct = EXCLUDED.avg_utilization_pct, power_mw = EXCLUDED.power_mw,
        computed_at = clock_timestamp();
    RETURN cardinality(buckets);
END $$;

-- Latest sample of each rack and of each worker's GPUs: the parts site_power_latest sums.
CREATE TABLE rack_power_latest (
    site       TEXT NOT NULL,
    rack       TEXT NOT NULL,
    time       TIMESTAMPTZ NOT NULL,
    power_w    DOUBLE PRECISION NOT NULL,
    hashing    INTEGER NOT NULL,
    ramping    INTEGER NOT NULL,
    curtailed  INTEGER NOT NULL,
    fault      INTEGER NOT NULL,
    offline    INTEGER NOT NULL,
    PRIMARY KEY (site, rack)
);

CREATE TABLE worker_power_latest (
    site      TEXT NOT NULL,
    worker_id TEXT NOT NULL,
    time      TIMESTAMPTZ NOT NULL,
    power_w   DOUBLE PRECISION NOT NULL,
    gpus      INTEGER NOT NULL,
    PRIMARY KEY (site, worker_id)
);

-- Current load per site (IT power, PUE not applied), upserted in every ingest transaction that
-- touched the site; `time` is the newest sample it includes.
CREATE TABLE site_power_latest (
    site           TEXT PRIMARY KEY,
    time           TIMESTAMPTZ NOT NULL,
    asic_mw        DOUBLE PRECISION NOT NULL,
    gpu_mw         DOUBLE PRECISION NOT NULL,
    asics_hashing  INTEGER NOT NULL,
    asics_ramping  INTEGER NOT NULL,
    asics_curtailed INTEGER NOT NULL,
    asics_fault    INTEGER NOT NULL,
    asics_offline  INTEGER NOT NULL,
    gpus           INTEGER NOT NULL,
    updated_at     TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp()
);

-- Recomputes site_power_latest for the given sites from the rack and worker tables.
CREATE FUNCTION hcp_refresh_site_power(p_sites TEXT[])
RETURNS VOID LANGUAGE sql AS $$
    INSERT INTO site_power_latest AS s (site, time, asic_mw, gpu_mw, asics_hashing,
        asics_ramping, asics_curtailed, asics_fault, asics_offline, gpus)
    SELECT site, max(time), sum(asic_w) / 1e6, sum(gpu_w) / 1e6, sum(hashing), sum(ramping),
           sum(curtailed), sum(fault), sum(offline), sum(gpus)
    FROM (
        SELECT site, time, power_w AS asic_w, 0.0::float8 AS gpu_w, hashing, ramping,
               curtailed, fault, offline, 0 AS gpus
        FROM rack_power_latest WHERE site = ANY (p_sites)
        UNION ALL
        SELECT site, time, 0.0, power_w, 0, 0, 0, 0, 0, gpus
        FROM worker_power_latest WHERE site = ANY (p_sites)
    ) parts
    GROUP BY site
    -- One lock order for concurrent ingest transactions.
    ORDER BY site
    ON CONFLICT (site) DO UPDATE SET
        time = EXCLUDED.time, asic_mw = EXCLUDED.asic_mw, gpu_mw = EXCLUDED.gpu_mw,
        asics_hashing = EXCLUDED.asics_hashing, asics_ramping = EXCLUDED.asics_ramping,
        asics_curtailed = EXCLUDED.asics_curtailed, asics_fault = EXCLUDED.asics_fault,
        asics_offline = EXCLUDED.asics_offline, gpus = EXCLUDED.gpus,
        updated_at = clock_timestamp()
$$;

-- Optimizer decisions and their confirmations (read model `decisions`, hcp-readmodel).
CREATE TABLE decision_board (
    decision_id                UUID PRIMARY KEY,
    site                       TEXT NOT NULL,
    policy                     TEXT NOT NULL,
    reason                     TEXT NOT NULL,
    asic_targets               JSONB NOT NULL,
    gpu_batch_allowed          BOOLEAN NOT NULL,
    target_mw                  DOUBLE PRECISION NOT NULL,
    energy_usd_per_mwh         DOUBLE PRECISION NOT NULL,
    hashprice_usd_per_th_day   DOUBLE PRECISION NOT NULL,
    expected_profit_usd_per_h  DOUBLE PRECISION NOT NULL,
    dr_id                      UUID,
    decided_at                 TIMESTAMPTZ NOT NULL,
    confirmed_at               TIMESTAMPTZ,
    measured_mw                DOUBLE PRECISION,
    confirm_after_s            DOUBLE PRECISION,
    met                        BOOLEAN
);
CREATE INDEX decision_board_site_decided ON decision_board (site, decided_at DESC);
