-- `rm_gpus` is the resource-manager's GPU inventory, written when a worker registers (new,
-- back, or with a changed inventory). It also kept each GPU's latest telemetry sample,
-- rewritten by every stored heartbeat (with a 10,000-GPU fleet, 5,000 rows a second) and
-- read by nothing: GPU telemetry is stored by the ingest (`gpu_telemetry`,
-- `worker_power_latest`). The sample columns go.
ALTER TABLE rm_gpus
    DROP COLUMN utilization_pct,
    DROP COLUMN memory_used_mib,
    DROP COLUMN power_w,
    DROP COLUMN temperature_c,
    DROP COLUMN sampled_at;
