#!/usr/bin/env bash
# `make run`: install what is missing, start the dev stack, build, migrate and run the spine
# demo in the foreground. Ctrl-C drains the spine, then stops the stack (HCP_KEEP_STACK=1
# leaves it running).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

scripts/stack.sh up --profile dev
echo "==> building hcp"
cargo build --locked -p hcp-cli --bin hcp
eval "$(scripts/stack.sh env --profile dev)"
export HCP_SPINE__MARKET_CSV="${HCP_SPINE__MARKET_CSV:-$root/../shared/data/market/ercot_dam_spp_hourly_2023.csv}"

stop_stack() {
  if [[ "${HCP_KEEP_STACK:-0}" != "1" ]]; then
    echo "==> stopping the stack (HCP_KEEP_STACK=1 keeps it)"
    scripts/stack.sh down --all || true
  fi
}
trap stop_stack EXIT

cat <<MSG
==> HCP spine starting
    metrics   http://127.0.0.1:${HCP_ADMIN__PORT:-9100}/metrics   (/health, /ready)
    postgres  psql postgres://hcp:hcp@127.0.0.1:${HCP_PG_PORT:-55432}/hcp
    status    target/debug/hcp status      (another terminal, after: eval "\$(scripts/stack.sh env)")
    Ctrl-C stops cleanly.
MSG
target/debug/hcp migrate
# Not exec: the trap must run after the spine drains.
target/debug/hcp spine "$@"
