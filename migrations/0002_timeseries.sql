-- Time-series support that works on plain PostgreSQL and on TimescaleDB from one migration.
-- Where the timescaledb extension is available it is enabled and time-series tables become
-- hypertables; otherwise they are range-partitioned by time with one partition per chunk.

DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_available_extensions WHERE name = 'timescaledb') THEN
        CREATE EXTENSION IF NOT EXISTS timescaledb;
    END IF;
END $$;

CREATE FUNCTION hcp_timescale_enabled() RETURNS boolean LANGUAGE sql STABLE AS $$
    SELECT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'timescaledb')
$$;

-- Registry of time-series tables and how they are stored.
CREATE TABLE timeseries_tables (
    table_name  TEXT PRIMARY KEY,
    time_column TEXT NOT NULL,
    chunk       INTERVAL NOT NULL,
    storage     TEXT NOT NULL CHECK (storage IN ('hypertable', 'partitioned'))
);

-- Creates the partitions of a partitioned time-series table covering [p_from, p_to).
-- Idempotent; returns how many partitions it created. A no-op for hypertables.
CREATE FUNCTION hcp_ensure_partitions(p_table TEXT, p_from TIMESTAMPTZ, p_to TIMESTAMPTZ)
RETURNS INTEGER LANGUAGE plpgsql AS $$
DECLARE
    t       timeseries_tables%ROWTYPE;
    lo      TIMESTAMPTZ;
    part    TEXT;
    created INTEGER := 0;
BEGIN
    SELECT * INTO t FROM timeseries_tables WHERE table_name = p_table;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'unknown time-series table %', p_table;
    END IF;
    IF t.storage = 'hypertable' THEN
        RETURN 0;
    END IF;
    lo := date_bin(t.chunk, p_from, TIMESTAMPTZ '2000-01-01 00:00:00+00');
    WHILE lo < p_to LOOP
        part := format('%s_p%s', p_table, to_char(lo AT TIME ZONE 'UTC', 'YYYYMMDD_HH24MI'));
        IF to_regclass(part) IS NULL THEN
            EXECUTE format('CREATE TABLE %I PARTITION OF %I FOR VALUES FROM (%L) TO (%L)',
                           part, p_table, lo, lo + t.chunk);
            created := created + 1;
        END IF;
        lo := lo + t.chunk;
    END LOOP;
    RETURN created;
END $$;

-- Drops whole partitions (or hypertable chunks) entirely older than p_before. Returns the
-- number dropped.
CREATE FUNCTION hcp_drop_partitions_before(p_table TEXT, p_before TIMESTAMPTZ)
RETURNS INTEGER LANGUAGE plpgsql AS $$
DECLARE
    t       timeseries_tables%ROWTYPE;
    r       RECORD;
    dropped INTEGER := 0;
BEGIN
    SELECT * INTO t FROM timeseries_tables WHERE table_name = p_table;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'unknown time-series table %', p_table;
    END IF;
    IF t.storage = 'hypertable' THEN
        EXECUTE format('SELECT count(*) FROM drop_chunks(%L, older_than => %L::timestamptz)',
                       p_table, p_before) INTO dropped;
        RETURN dropped;
    END IF;
    FOR r IN
        SELECT c.relname,
               (regexp_match(pg_get_expr(c.relpartbound, c.oid), 'TO \(''([^'']+)''\)'))[1]
                   AS upper_bound
        FROM pg_inherits i
        JOIN pg_class c ON c.oid = i.inhrelid
        WHERE i.inhparent = p_table::regclass
    LOOP
        IF r.upper_bound IS NOT NULL AND r.upper_bound::timestamptz <= p_before THEN
            EXECUTE format('DROP TABLE %I', r.relname);
            dropped := dropped + 1;
        END IF;
    END LOOP;
    RETURN dropped;
END $$;

-- Creates a time-series table from a column list. Hypertable on TimescaleDB; otherwise a
-- range-partitioned table with a default partition (so no row is ever refused) and
-- partitions from a day ago to a week ahead.
CREATE FUNCTION hcp_create_timeseries(p_table TEXT, p_columns TEXT, p_time_column TEXT,
                                      p_chunk INTERVAL)
RETURNS TEXT LANGUAGE plpgsql AS $$
BEGIN
    IF hcp_timescale_enabled() THEN
        EXECUTE format('CREATE TABLE %I (%s)', p_table, p_columns);
        EXECUTE format('SELECT create_hypertable(%L, %L, chunk_time_interval => %L::interval)',
                       p_table, p_time_column, p_chunk);
        INSERT INTO timeseries_tables VALUES (p_table, p_time_column, p_chunk, 'hypertable');
        RETURN 'hypertable';
    END IF;
    EXECUTE format('CREATE TABLE %I (%s) PARTITION BY RANGE (%I)',
                   p_table, p_columns, p_time_column);
    EXECUTE format('CREATE TABLE %I PARTITION OF %I DEFAULT', p_table || '_default', p_table);
    INSERT INTO timeseries_tables VALUES (p_table, p_time_column, p_chunk, 'partitioned');
    PERFORM hcp_ensure_partitions(p_table, now() - p_chunk, now() + 7 * p_chunk);
    RETURN 'partitioned';
END $$;

-- Observed market values (electricity, hashprice, carbon, GPU rates), one row per series and
-- interval. Written by the market projection.
SELECT hcp_create_timeseries(
    'market_prices',
    'series TEXT NOT NULL, interval_start TIMESTAMPTZ NOT NULL, value DOUBLE PRECISION NOT NULL,
     unit TEXT NOT NULL, recorded_at TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp(),
     PRIMARY KEY (series, interval_start)',
    'interval_start',
    INTERVAL '1 day');
