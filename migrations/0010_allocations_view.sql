-- The gateway's GPU allocations are read from the workload board instead of a table of their
-- own (issue 10): the board already records where each workload runs, and keeping a second
-- table meant a second consumer group reading every `workloads` event (Kafka fetches,
-- stream-position claims and a write per placement). A workload holds its GPUs while it is
-- scheduled, running, paused or preempted (`hcp_domain::WorkloadState::holds_gpus`).
DROP TABLE IF EXISTS gateway_allocations;

CREATE INDEX workload_board_holding_idx ON workload_board (workload_id)
    WHERE state IN ('scheduled', 'running', 'paused', 'preempted');

CREATE VIEW gateway_allocations AS
    SELECT g.gpu_id, b.workload_id, b.worker_id
    FROM workload_board b, unnest(b.gpu_ids) AS g(gpu_id)
    WHERE b.state IN ('scheduled', 'running', 'paused', 'preempted')
      AND b.worker_id IS NOT NULL;
