#!/usr/bin/env bash
# `make bench`: release build, dev stack (sqlite-backed broker) and test broker (memory), then
# the spine benchmark on each. Prints Markdown tables.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
scripts/stack.sh up --all
cargo build --release --locked -p hcp-cli --bin hcp
eval "$(scripts/stack.sh env --profile dev)"
export HCP_TELEMETRY__LOG_FILTER="${HCP_TELEMETRY__LOG_FILTER:-warn}"
echo "## broker: nisshi, memory:// storage (tests/CI profile)"
HCP_KAFKA__BROKERS="127.0.0.1:${HCP_TEST_KAFKA_PORT:-59192}" target/release/hcp bench "$@"
echo
echo "## broker: nisshi, sqlite:// storage (dev profile)"
target/release/hcp bench "$@"
