-- Device telemetry stored one row per message: a rack's ASIC batch, or a worker heartbeat's GPU
-- samples, with each sample field as an array (element i of every array is sample i).
--
-- One row per sample cost PostgreSQL about 5 µs of CPU a sample (tuple, WAL record, partition
-- routing, text parsing): 300,000 samples a second needed 1.5 cores on its own. A rack of 100
-- ASICs in one row is one tuple and one WAL record, written by binary COPY (no parsing), and
-- TOAST compresses the arrays. Readers see no change: `asic_telemetry` and `gpu_telemetry`
-- are now views that unnest the arrays into the same columns as before, so the rollups and
-- any ad-hoc query keep working.

SELECT hcp_create_timeseries(
    'asic_telemetry_batches',
    'time TIMESTAMPTZ NOT NULL, site TEXT NOT NULL, rack TEXT NOT NULL, asic_id TEXT[] NOT NULL,
     model TEXT[] NOT NULL, state TEXT[] NOT NULL, hashrate_ths DOUBLE PRECISION[] NOT NULL,
     power_w DOUBLE PRECISION[] NOT NULL, power_target_w DOUBLE PRECISION[] NOT NULL,
     temperature_c DOUBLE PRECISION[] NOT NULL, hw_errors INTEGER[] NOT NULL,
     accepted_shares INTEGER[] NOT NULL',
    'time',
    INTERVAL '1 hour');

SELECT hcp_create_timeseries(
    'gpu_telemetry_batches',
    'time TIMESTAMPTZ NOT NULL, site TEXT NOT NULL, worker_id TEXT NOT NULL, gpu_id TEXT[] NOT NULL,
     utilization_pct DOUBLE PRECISION[] NOT NULL, memory_used_mib BIGINT[] NOT NULL,
     power_w DOUBLE PRECISION[] NOT NULL, temperature_c DOUBLE PRECISION[] NOT NULL',
    'time',
    INTERVAL '1 hour');

CREATE INDEX asic_telemetry_batches_time_brin ON asic_telemetry_batches USING brin (time);
CREATE INDEX gpu_telemetry_batches_time_brin ON gpu_telemetry_batches USING brin (time);

-- What was stored row by row moves into the packed tables (one row per rack or worker and
-- sample time), every array in the same order.
INSERT INTO asic_telemetry_batches
SELECT time, site, rack,
       array_agg(asic_id ORDER BY asic_id), array_agg(model ORDER BY asic_id),
       array_agg(state ORDER BY asic_id), array_agg(hashrate_ths ORDER BY asic_id),
       array_agg(power_w ORDER BY asic_id), array_agg(power_target_w ORDER BY asic_id),
       array_agg(temperature_c ORDER BY asic_id), array_agg(hw_errors ORDER BY asic_id),
       array_agg(accepted_shares ORDER BY asic_id)
FROM asic_telemetry
GROUP BY time, site, rack;

INSERT INTO gpu_telemetry_batches
SELECT time, site, worker_id,
       array_agg(gpu_id ORDER BY gpu_id), array_agg(utilization_pct ORDER BY gpu_id),
       array_agg(memory_used_mib ORDER BY gpu_id), array_agg(power_w ORDER BY gpu_id),
       array_agg(temperature_c ORDER BY gpu_id)
FROM gpu_telemetry
GROUP BY time, site, worker_id;

UPDATE timeseries_tables SET retention = INTERVAL '7 days'
WHERE table_name IN ('asic_telemetry_batches', 'gpu_telemetry_batches');

DELETE FROM timeseries_tables WHERE table_name IN ('asic_telemetry', 'gpu_telemetry');
DROP TABLE asic_telemetry;
DROP TABLE gpu_telemetry;

-- One row per sample, as before. The time predicate of a query on the view reaches the packed
-- table's BRIN index and partitions.
CREATE VIEW asic_telemetry AS
SELECT b.time, b.site, b.rack, s.asic_id, s.model, s.state, s.hashrate_ths, s.power_w,
       s.power_target_w, s.temperature_c, s.hw_errors, s.accepted_shares
FROM asic_telemetry_batches b
CROSS JOIN LATERAL unnest(b.asic_id, b.model, b.state, b.hashrate_ths, b.power_w,
                          b.power_target_w, b.temperature_c, b.hw_errors, b.accepted_shares)
    AS s(asic_id, model, state, hashrate_ths, power_w, power_target_w, temperature_c,
         hw_errors, accepted_shares);

CREATE VIEW gpu_telemetry AS
SELECT b.time, b.site, b.worker_id, s.gpu_id, s.utilization_pct, s.memory_used_mib, s.power_w,
       s.temperature_c
FROM gpu_telemetry_batches b
CROSS JOIN LATERAL unnest(b.gpu_id, b.utilization_pct, b.memory_used_mib, b.power_w,
                          b.temperature_c)
    AS s(gpu_id, utilization_pct, memory_used_mib, power_w, temperature_c);
