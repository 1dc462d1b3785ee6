#!/usr/bin/env bash
# `make run`: install what is missing, start the dev stack (PostgreSQL + nisshi), build, and
# run the workload path live: hcp-gateway, hcp-router, hcp-resource-manager and a simulated
# GPU fleet (hcp-gpu-worker), fed by the workload generator over REST and Kafka, with a status
# line every few seconds. Ctrl-C stops the generator, drains every service, then stops the
# stack (HCP_KEEP_STACK=1 leaves it running).
#
# Knobs (environment): HCP_RUN_WORKERS (16 workers x 8 GPUs), HCP_RUN_RATE (submissions/s, 5),
# HCP_RUN_TIME_SCALE (simulated seconds per second, 20), HCP_RUN_SECONDS (run time, until
# Ctrl-C).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

scripts/stack.sh up --profile dev
echo "==> building HCP (first build takes a few minutes)"
cargo build --locked --workspace --bins
eval "$(scripts/stack.sh env --profile dev)"
export HCP_GATEWAY__ADMIN_KEY="${HCP_GATEWAY__ADMIN_KEY:-hcp-dev-admin-key}"
export HCP_WORKER__COUNT="${HCP_RUN_WORKERS:-16}"
export HCP_WORKER__TIME_SCALE="${HCP_RUN_TIME_SCALE:-20}"
export HCP_WORKER__WORKER_ID="${HCP_WORKER__WORKER_ID:-sim}"
logs="$root/var/log"
mkdir -p "$logs"

pids=()
cleanup() {
  echo
  echo "==> stopping services"
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  if [[ "${HCP_KEEP_STACK:-0}" != "1" ]]; then
    echo "==> stopping the stack (HCP_KEEP_STACK=1 keeps it)"
    scripts/stack.sh down --all || true
  fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

target/debug/hcp migrate
for svc in hcp-resource-manager hcp-router hcp-gpu-worker hcp-gateway; do
  target/debug/$svc >"$logs/$svc.log" 2>&1 &
  pids+=("$!")
  echo "    started $svc (pid $!, log var/log/$svc.log)"
done

gateway="http://127.0.0.1:${HCP_GATEWAY__PORT:-8080}"
for _ in $(seq 1 150); do
  curl -fs "$gateway/api/v1/openapi.json" >/dev/null 2>&1 && break
  sleep 0.2
done
curl -fs "$gateway/api/v1/openapi.json" >/dev/null || {
  echo "the gateway did not come up; see var/log/hcp-gateway.log" >&2
  exit 1
}

cat <<MSG
==> HCP workload path running
    REST       $gateway/api/v1   (OpenAPI: $gateway/api/v1/openapi.json)
    admin key  \$HCP_GATEWAY__ADMIN_KEY = $HCP_GATEWAY__ADMIN_KEY (change it outside development)
    metrics    gateway :9101  router :9102  resource-manager :9103  worker :9104  (/metrics)
    postgres   psql postgres://hcp:hcp@127.0.0.1:${HCP_PG_PORT:-55432}/hcp
    fleet      $HCP_WORKER__COUNT simulated workers x 8 H100, time x$HCP_WORKER__TIME_SCALE
    Ctrl-C stops cleanly.
MSG

# Status every 5 s: workloads by state and GPUs in use, straight from the read models.
(
  while sleep 5; do
    target/debug/hcp status 2>/dev/null | sed 's/^/    status: /' || true
  done
) &
pids+=("$!")

rate="${HCP_RUN_RATE:-5}"
gen_args=(--rate "$rate" --duration-scale 0.2 --gateway "$gateway")
[[ -n "${HCP_RUN_SECONDS:-}" ]] && gen_args+=(--seconds "$HCP_RUN_SECONDS")
# A tenth of the load arrives over Kafka, as another team's producer would send it.
target/debug/hcp-workload-gen --via kafka --tenant-prefix kafka --rate "$(awk "BEGIN{print $rate/10}")" \
  --duration-scale 0.2 --gateway "$gateway" ${HCP_RUN_SECONDS:+--seconds "$HCP_RUN_SECONDS"} \
  >"$logs/hcp-workload-gen-kafka.log" 2>&1 &
pids+=("$!")
target/debug/hcp-workload-gen --via rest "${gen_args[@]}"
