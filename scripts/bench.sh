#!/usr/bin/env bash
# `make bench`: release build, then every benchmark against the real stack (PostgreSQL 15 and
# nisshi with memory:// storage), each in its own database and topics, printing tables:
#   spine      `hcp bench`: append latency, outbox and consumer throughput, append→projection
#   workloads  scripts/bench-workloads.sh: placements/s over REST (1,000 simulated GPUs) and
#              over Kafka (10,000), submit→scheduled p50/p99, REST submit/get p50/p99, CPU s
#              per 1,000 placements per process, and a lone submission's latency
#   ingest     `hcp bench-ingest`: telemetry samples/s and Kafka→DB p50/p99
#   domain     criterion (`cargo bench -p hcp-domain`): queue at 1M, placement pass 300k x 10k
# HCP_BENCH_ONLY=spine,workloads,ingest,domain picks some. Arguments go to `hcp bench`.
#
# The dev broker (sqlite:// storage) is deliberately not benchmarked by default: its fetches
# stalled once its database had grown to ~45 MB (docs/adr/0001-kafka-broker.md).
# HCP_BENCH_DEV_BROKER=1 runs the spine rows against it too.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
only="${HCP_BENCH_ONLY:-spine,workloads,ingest,domain}"
want() { [[ ",$only," == *",$1,"* ]]; }

scripts/stack.sh up --profile test
cargo build --release --locked --workspace --bins
eval "$(scripts/stack.sh env --profile test)"
export HCP_DATABASE__URL="${HCP_TEST_DATABASE_URL}"
export HCP_TELEMETRY__LOG_FILTER="${HCP_TELEMETRY__LOG_FILTER:-warn}"

if want spine; then
  echo "## spine (broker: nisshi, memory:// storage)"
  HCP_KAFKA__BROKERS="$HCP_TEST_KAFKA_BROKERS" target/release/hcp bench "$@"
  if [[ "${HCP_BENCH_DEV_BROKER:-0}" == "1" ]]; then
    scripts/stack.sh up --profile dev
    echo
    echo "## spine (broker: nisshi, sqlite:// storage, dev profile)"
    HCP_KAFKA__BROKERS="127.0.0.1:${HCP_KAFKA_PORT:-59092}" target/release/hcp bench "$@"
  fi
fi
if want workloads; then
  # Issue 10's targets, on this 2-core machine: >= 5,000 placements/s over Kafka and >= 2,000/s
  # over REST with >= 10,000 GPUs; submit->scheduled p99 < 50 ms at 1,000/s offered; a lone
  # submission p50 < 10 ms / p99 < 25 ms. Each table prints what was reached.
  # nisshi's memory:// storage keeps every topic of every earlier run and its fetch slows as it
  # grows, so each row starts on a freshly restarted test broker (PostgreSQL stays up).
  fresh_broker() {
    scripts/stack.sh down --profile test >/dev/null
    scripts/stack.sh up --profile test >/dev/null
  }
  echo
  echo "# targets: Kafka >= 5,000/s, REST >= 2,000/s (10,000 GPUs); lone submission p50 < 10 ms, p99 < 25 ms"
  # 10,000 GPUs for every row: with 1,000 GPUs and 2 s jobs, a GPU is free again about 2.5 s
  # after it was placed, so the fleet itself caps placements near 400/s.
  fresh_broker
  HCP_BENCH_VIA=rest HCP_BENCH_WORKERS="${HCP_BENCH_BIG_WORKERS:-1250}" \
    HCP_BENCH_RATE="${HCP_BENCH_REST_RATE:-1000}" scripts/bench-workloads.sh
  echo
  fresh_broker
  HCP_BENCH_VIA=kafka HCP_BENCH_WORKERS="${HCP_BENCH_BIG_WORKERS:-1250}" \
    HCP_BENCH_RATE="${HCP_BENCH_KAFKA_RATE:-1000}" scripts/bench-workloads.sh
  echo
  echo "(a lone submission at a time: 2/s offered on an idle system of 10,000 GPUs)"
  fresh_broker
  HCP_BENCH_VIA=rest HCP_BENCH_RATE=2 HCP_BENCH_SECONDS=30 \
    HCP_BENCH_WORKERS="${HCP_BENCH_BIG_WORKERS:-1250}" scripts/bench-workloads.sh
fi
if want ingest; then
  echo
  echo "## telemetry ingest (hcp bench-ingest, 2 ingest consumers)"
  for asics in 100000 250000; do
    HCP_KAFKA__BROKERS="$HCP_TEST_KAFKA_BROKERS" target/release/hcp bench-ingest \
      --asics "$asics" --gpus "$((asics / 5))" --seconds 20 --consumers 2
  done
fi
if want domain; then
  echo
  echo "## scheduling domain (criterion)"
  cargo bench --locked -p hcp-domain --bench scheduling -- --noplot 2>&1 |
    grep -E '^[a-z_/ 0-9]+|time:' | grep -v '^Benchmarking' || true
fi
