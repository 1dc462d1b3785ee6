#!/usr/bin/env bash
# The workload-path rows of `make bench`: every service as its own release process against the
# test stack (PostgreSQL 15, nisshi memory://), a simulated fleet of 1,000 GPUs (125 workers x
# 8), and the workload generator submitting 1-GPU jobs over REST at a fixed rate. Figures:
#   - placements/s sustained (workload.scheduled events per second over the run),
#   - submit→scheduled latency p50/p99 (from the event log's recorded_at),
#   - REST submit and GET p50/p99 (client side, from the generator).
#   - CPU seconds per 1,000 placements, per process (gateway, router, resource-manager, the
#     simulated workers, every PostgreSQL backend together, the broker), from /proc over the
#     window from the first submission until the queue has drained.
# Knobs: HCP_BENCH_RATE (500), HCP_BENCH_SECONDS (30), HCP_BENCH_WORKERS (125 workers x 8 GPUs),
# HCP_BENCH_VIA (rest | kafka: requests produced to workload-requests by the generator),
# HCP_BENCH_BIN (target/release: another build's binaries, to compare two trees on one stack).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
rate="${HCP_BENCH_RATE:-500}"
seconds="${HCP_BENCH_SECONDS:-30}"
workers="${HCP_BENCH_WORKERS:-125}"
via="${HCP_BENCH_VIA:-rest}"
bin="${HCP_BENCH_BIN:-target/release}"

scripts/stack.sh up --profile test >/dev/null
if [[ "$bin" == "target/release" ]]; then cargo build --release --locked --workspace --bins; fi
eval "$(scripts/stack.sh env --profile test)"
stamp="$(date +%s)"
db="hcp_bench_$stamp"
psql "$HCP_TEST_DATABASE_URL" -qc "CREATE DATABASE $db" >/dev/null
export HCP_DATABASE__URL="${HCP_TEST_DATABASE_URL%/*}/$db"
export HCP_KAFKA__BROKERS="$HCP_TEST_KAFKA_BROKERS"
export HCP_KAFKA__NAMESPACE="bench$stamp"
export HCP_TELEMETRY__LOG_FILTER="${HCP_TELEMETRY__LOG_FILTER:-warn}"
export HCP_GATEWAY__ADMIN_KEY="bench-admin-key"
export HCP_GATEWAY__PORT="${HCP_BENCH_GATEWAY_PORT:-18080}"
export HCP_ADMIN__PORT=0
export HCP_WORKER__COUNT="$workers" HCP_WORKER__WORKER_ID="bench" HCP_WORKER__TIME_SCALE=1
# Generous rate limits: this measures the path, not the limiter.
for tier in ENTERPRISE PRO FREE; do
  export "HCP_GATEWAY__RATE_LIMITS__${tier}__PER_SECOND=100000"
  export "HCP_GATEWAY__RATE_LIMITS__${tier}__BURST=100000"
done
logs="$(mktemp -d)"
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  psql "$HCP_TEST_DATABASE_URL" -qc "DROP DATABASE IF EXISTS $db" >/dev/null 2>&1 || true
}
trap cleanup EXIT

$bin/hcp migrate >/dev/null
declare -A group
for svc in hcp-resource-manager hcp-router hcp-gpu-worker hcp-gateway; do
  # (the optimizer and the simulators are not part of this path)
  "$bin/$svc" >"$logs/$svc.log" 2>&1 &
  pids+=("$!")
  group[${svc#hcp-}]="$!"
done
group[gpu-workers]="${group[gpu-worker]}"
gateway="http://127.0.0.1:$HCP_GATEWAY__PORT"
for _ in $(seq 1 300); do
  curl -fs "$gateway/api/v1/openapi.json" >/dev/null 2>&1 && break
  sleep 0.2
done
# Wait for the fleet to register.
for _ in $(seq 1 300); do
  n="$(psql "$HCP_DATABASE__URL" -Atc "SELECT count(*) FROM events WHERE event_type = 'worker.registered'" 2>/dev/null || echo 0)"
  [[ "$n" -ge "$workers" ]] && break
  sleep 0.2
done
echo "fleet: $n workers registered ($((n * 8)) GPUs); offering $rate/s for ${seconds}s" >&2

# CPU ticks (user + system) of a set of processes, from /proc.
ticks() {
  local t=0 pid f
  for pid in "$@"; do
    [[ -r /proc/$pid/stat ]] || continue
    f="$(sed 's/^.*) //' "/proc/$pid/stat")"
    t=$((t + $(awk '{print $12 + $13}' <<<"$f")))
  done
  echo "$t"
}
cpu_groups=(gateway router resource-manager gpu-workers postgres broker)
snapshot() {
  group[postgres]="$(pgrep -x postgres | tr '\n' ' ')"
  group[broker]="$(pgrep -f 'nisshi broker' | tr '\n' ' ')"
  local g
  for g in "${cpu_groups[@]}"; do
    # shellcheck disable=SC2086
    echo "$g $(ticks ${group[$g]})"
  done
}
declare -A cpu_before
while read -r g t; do cpu_before[$g]="$t"; done < <(snapshot)
extra=()
if [[ "$via" == "kafka" ]]; then
  extra=(--brokers "$HCP_KAFKA__BROKERS" --namespace "$HCP_KAFKA__NAMESPACE")
else
  extra=(--measure-gets)
fi
summary="$("$bin/hcp-workload-gen" --via "$via" --shape small --small-duration-s 2 \
  --rate "$rate" --seconds "$seconds" --tenant-prefix bench --json "${extra[@]}" \
  --gateway "$gateway" --admin-key "$HCP_GATEWAY__ADMIN_KEY" --concurrency 128)"
# Let the queue drain (placements continue after the last submission).
for _ in $(seq 1 120); do
  q="$(psql "$HCP_DATABASE__URL" -Atc "SELECT count(*) FROM workload_board WHERE state = 'queued'")"
  [[ "$q" == "0" ]] && break
  sleep 1
done

declare -A cpu_after
while read -r g t; do cpu_after[$g]="$t"; done < <(snapshot)
hz="$(getconf CLK_TCK)"

read -r placements window p50 p99 < <(psql "$HCP_DATABASE__URL" -AtF ' ' -c "
  WITH s AS (
    SELECT stream_id, min(recorded_at) AS at FROM events
    WHERE event_type = 'workload.submitted' GROUP BY stream_id),
  d AS (
    SELECT stream_id, min(recorded_at) AS at FROM events
    WHERE event_type = 'workload.scheduled' GROUP BY stream_id)
  SELECT count(*),
         round(extract(epoch FROM max(d.at) - min(d.at))::numeric, 2),
         round((percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM d.at - s.at)) * 1000)::numeric, 1),
         round((percentile_cont(0.99) WITHIN GROUP (ORDER BY extract(epoch FROM d.at - s.at)) * 1000)::numeric, 1)
  FROM s JOIN d USING (stream_id)")
json_get() { python3 -c "import json,sys; v=json.loads(sys.argv[1]); print(eval('v'+sys.argv[2]))" "$summary" "$1"; }
accepted="$(json_get "['accepted']")"
echo
echo "## workload path (release, $((workers * 8)) simulated GPUs, $via at $rate/s offered for ${seconds}s)"
echo
echo "| metric | value |"
echo "|---|---|"
echo "| accepted submissions | $accepted ($(json_get "['accepted_per_s']" | xargs printf '%.0f')/s; throttled $(json_get "['throttled']"), errors $(json_get "['errors']")) |"
echo "| placements (submit → workload.scheduled) | $placements in ${window}s = $(awk "BEGIN{ if ($window > 0) printf \"%.0f\", $placements/$window; else print \"n/a\"}")/s |"
echo "| submit → scheduled p50 / p99 | $p50 / $p99 ms |"
if [[ "$via" == "rest" ]]; then
  echo "| REST submit p50 / p99 | $(json_get "['submit_ms']['p50']") / $(json_get "['submit_ms']['p99']") ms |"
  echo "| REST get p50 / p99 | $(json_get "['get_ms']['p50']") / $(json_get "['get_ms']['p99']") ms |"
fi
cpu_row=""
cpu_total=0
for g in "${cpu_groups[@]}"; do
  d=$((cpu_after[$g] - cpu_before[$g]))
  cpu_total=$((cpu_total + d))
  cpu_row+="$g $(awk "BEGIN{ if ($placements > 0) printf \"%.2f\", $d / $hz / $placements * 1000; else print \"n/a\"}"), "
done
echo "| CPU s per 1,000 placements (total $(awk "BEGIN{ if ($placements > 0) printf \"%.2f\", $cpu_total / $hz / $placements * 1000; else print \"n/a\"}")) | ${cpu_row%, } |"
