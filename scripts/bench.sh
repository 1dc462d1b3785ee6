#!/usr/bin/env bash
# `make bench`: release build, then the spine benchmark (`hcp bench`) against the test-profile
# broker (nisshi, memory:// storage). Each run uses its own database and topics and prints a
# Markdown table. Arguments go to `hcp bench` (see `hcp bench --help`).
#
# The dev broker (sqlite:// storage) is deliberately not benchmarked by default: its fetches
# stalled once its database had grown to ~45 MB (docs/adr/0001-kafka-broker.md), and a bench run
# adds ~40k messages to it. HCP_BENCH_DEV_BROKER=1 benchmarks it anyway.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
scripts/stack.sh up --profile test
cargo build --release --locked -p hcp-cli --bin hcp
eval "$(scripts/stack.sh env --profile test)"
export HCP_DATABASE__URL="${HCP_TEST_DATABASE_URL}"
export HCP_TELEMETRY__LOG_FILTER="${HCP_TELEMETRY__LOG_FILTER:-warn}"
echo "## broker: nisshi, memory:// storage"
HCP_KAFKA__BROKERS="$HCP_TEST_KAFKA_BROKERS" target/release/hcp bench "$@"
if [[ "${HCP_BENCH_DEV_BROKER:-0}" == "1" ]]; then
  scripts/stack.sh up --profile dev
  echo
  echo "## broker: nisshi, sqlite:// storage (dev profile)"
  HCP_KAFKA__BROKERS="127.0.0.1:${HCP_KAFKA_PORT:-59092}" target/release/hcp bench "$@"
fi
