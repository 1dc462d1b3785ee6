#!/usr/bin/env bash
# Local dev/test stack without Docker: PostgreSQL 15 + the nisshi Kafka-protocol broker.
#
#   scripts/stack.sh up     [--profile dev|test | --all]   start (reuses what already runs)
#   scripts/stack.sh down   [--profile dev|test | --all]   --profile: stop only that broker;
#                                                          no flag / --all: stop everything
#   scripts/stack.sh status [--profile dev|test | --all]   one line per component; exits 1 if a
#                                                          component of the profile is down
#   scripts/stack.sh env    [--profile dev|test]           print export lines for the services
#   scripts/stack.sh wait   [--profile dev|test | --all]   wait until the profile is ready
#
# Default profile: dev. Postgres is shared by both profiles. Everything listens on 127.0.0.1;
# data lives under <project>/var (git-ignored).
#
# Environment: HCP_PG_PORT (55432), HCP_KAFKA_PORT (59092), HCP_TEST_KAFKA_PORT (59192),
#              HCP_CACHE_DIR (~/.cache/hcp), HCP_STACK_TIMEOUT (60, seconds).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
readonly ROOT
readonly VAR="$ROOT/var"
readonly PG_BIN=/usr/lib/postgresql/15/bin
readonly PG_PORT="${HCP_PG_PORT:-55432}"
readonly PG_USER=hcp
readonly PG_PASSWORD=hcp
readonly PG_DB=hcp
readonly NISSHI_VERSION=0.7.0-pre.2
readonly NISSHI_BIN="${HCP_CACHE_DIR:-$HOME/.cache/hcp}/nisshi-$NISSHI_VERSION/bin/nisshi"
readonly TIMEOUT="${HCP_STACK_TIMEOUT:-60}"

# Set by resolve_pg_home: physical paths (the server must never go through a symlink that
# lives under a directory the postgres OS user cannot traverse).
PG_HOME=""
PG_DATA=""
PG_RUN=""
PG_LOG=""

log() { printf '==> %s\n' "$*"; }
warn() { printf 'warning: %s\n' "$*" >&2; }
die() {
    printf 'error: %s\n' "$*" >&2
    exit 1
}

# Print the last lines of a log file to stderr, then fail.
die_with_log() {
    local msg="$1" file="$2"
    printf 'error: %s\n       log: %s\n' "$msg" "$file" >&2
    if [[ -f "$file" ]]; then
        printf -- '----- last lines of %s -----\n' "$file" >&2
        tail -n 25 -- "$file" >&2 || true
        printf -- '-----\n' >&2
    fi
    exit 1
}

# Close every inherited fd above 2 (our lock fd, pipes of whoever called us) so a
# long-running server started from this (sub)shell never holds them open.
close_inherited_fds() {
    local fd
    for fd in /proc/"$BASHPID"/fd/*; do
        fd="${fd##*/}"
        if ((fd > 2)); then
            eval "exec ${fd}>&-" 2>/dev/null || true
        fi
    done
}

port_open() {
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

# ---------------------------------------------------------------- postgres

# Postgres refuses to run as root: as root, run its tools as the postgres OS user
# (from /, since our working directory may not be readable by that user).
as_pg() {
    if ((EUID == 0)); then
        (cd / && runuser -u postgres -- "$@")
    else
        "$@"
    fi
}

pg_owner_chown() {
    if ((EUID == 0)); then
        chown postgres:postgres -- "$@"
    fi
}

# Decide where the cluster lives: var/pg, or (when root and the postgres user cannot
# traverse the project path) /var/tmp/hcp-pg-<hash> with var/pg a symlink to it.
resolve_pg_home() {
    mkdir -p -- "$VAR"
    local link="$VAR/pg"
    if [[ -L "$link" ]]; then
        local target
        target="$(readlink -- "$link")"
        if [[ ! -d "$target" ]]; then # e.g. /var/tmp was cleaned
            mkdir -p -- "$target"
            chmod 700 -- "$target"
            pg_owner_chown "$target"
        fi
    elif [[ ! -e "$link" ]]; then
        if ((EUID == 0)) && ! runuser -u postgres -- test -x "$VAR"; then
            local hash target
            hash="$(printf '%s' "$ROOT" | sha256sum | cut -c1-12)"
            target="/var/tmp/hcp-pg-$hash"
            log "postgres user cannot traverse $VAR; cluster goes to $target (var/pg is a symlink)"
            mkdir -p -- "$target"
            chmod 700 -- "$target"
            pg_owner_chown "$target"
            ln -s -- "$target" "$link"
        else
            mkdir -p -- "$link"
        fi
    fi
    PG_HOME="$(cd -P -- "$link" && pwd)"
    PG_DATA="$PG_HOME/data"
    PG_RUN="$PG_HOME/run"
    PG_LOG="$PG_HOME/log/postgres.log"
    pg_owner_chown "$PG_HOME" # the cluster home belongs to the postgres user
    if ((EUID == 0)) && ! runuser -u postgres -- test -x "$PG_HOME"; then
        die "postgres user cannot reach $PG_HOME; remove $link (a symlink under /var/tmp will be used)"
    fi
}

pg_prepare_dirs() {
    mkdir -p -- "$PG_RUN" "$(dirname "$PG_LOG")"
    pg_owner_chown "$PG_HOME" "$PG_RUN" "$(dirname "$PG_LOG")"
    chmod 700 -- "$PG_HOME"
    local sock="$PG_RUN/.s.PGSQL.$PG_PORT"
    ((${#sock} <= 107)) || die "unix socket path too long (${#sock} > 107 bytes): $sock"
}

pg_initialized() { [[ -f "$PG_DATA/PG_VERSION" ]]; }

pg_running() {
    pg_initialized && as_pg "$PG_BIN/pg_ctl" -D "$PG_DATA" status >/dev/null 2>&1
}

pg_pid() { head -n 1 -- "$PG_DATA/postmaster.pid" 2>/dev/null || true; }

pg_init() {
    pg_initialized && return 0
    log "initdb: new cluster in $PG_DATA (superuser $PG_USER)"
    local tmp="$PG_HOME/data.init" pwfile="$PG_HOME/.pwfile"
    rm -rf -- "$tmp"
    printf '%s\n' "$PG_PASSWORD" >"$pwfile"
    chmod 600 -- "$pwfile"
    pg_owner_chown "$pwfile"
    if ! as_pg "$PG_BIN/initdb" -D "$tmp" -U "$PG_USER" --pwfile="$pwfile" \
        --auth-host=scram-sha-256 --auth-local=trust -E UTF8 --locale=C.UTF-8 \
        >"$PG_HOME/log/initdb.log" 2>&1; then
        rm -f -- "$pwfile"
        die_with_log "initdb failed" "$PG_HOME/log/initdb.log"
    fi
    rm -f -- "$pwfile"
    # initdb went to a temp dir so an interrupted run never leaves a half cluster behind.
    mv -T -- "$tmp" "$PG_DATA"
    printf "\n# HCP local stack settings (rewritten by scripts/stack.sh up)\ninclude_if_exists = 'hcp.conf'\n" \
        >>"$PG_DATA/postgresql.conf"
}

# Settings owned by this script; rewritten on every `up`, applied at the next start.
pg_write_conf() {
    local conf="$PG_DATA/hcp.conf"
    cat >"$conf" <<EOF
# Written by scripts/stack.sh; local edits are overwritten.
listen_addresses = '127.0.0.1'
port = $PG_PORT
unix_socket_directories = '$PG_RUN'
max_connections = 300
shared_buffers = 256MB
fsync = on
synchronous_commit = on
full_page_writes = on
# Per-statement counts and times (pg_stat_statements, in Debian's postgresql-15): where the
# database time goes, for profiling the benches.
shared_preload_libraries = 'pg_stat_statements'
pg_stat_statements.track = all
# The outbox, the stream positions and the projections rewrite the same rows many times a
# second; autovacuum's default one-minute nap let 40k dead row versions pile up under load.
autovacuum_naptime = 5s
EOF
    pg_owner_chown "$conf"
}

pg_start() {
    if pg_running; then
        log "postgres already running (pid $(pg_pid), port $PG_PORT)"
        return 0
    fi
    if port_open "$PG_PORT"; then
        die "port $PG_PORT is taken by another process; set HCP_PG_PORT to a free port"
    fi
    log "starting postgres on 127.0.0.1:$PG_PORT (log: $PG_LOG)"
    if ! (close_inherited_fds && as_pg "$PG_BIN/pg_ctl" -D "$PG_DATA" -l "$PG_LOG" -w -t "$TIMEOUT" start >/dev/null); then
        die_with_log "postgres failed to start (waited up to ${TIMEOUT}s)" "$PG_LOG"
    fi
}

psql_admin() {
    "$PG_BIN/psql" -X -q -v ON_ERROR_STOP=1 -h "$PG_RUN" -p "$PG_PORT" -U "$PG_USER" -d postgres "$@"
}

pg_wait_ready() {
    local deadline=$((SECONDS + TIMEOUT))
    until "$PG_BIN/pg_isready" -q -h 127.0.0.1 -p "$PG_PORT" -d postgres; do
        ((SECONDS < deadline)) || die_with_log "postgres not ready on 127.0.0.1:$PG_PORT after ${TIMEOUT}s" "$PG_LOG"
        sleep 0.5
    done
}

pg_create_db() {
    if [[ "$(psql_admin -Atc "select 1 from pg_database where datname = '$PG_DB'")" == 1 ]]; then
        return 0
    fi
    log "creating database $PG_DB"
    psql_admin -c "create database $PG_DB owner $PG_USER encoding 'UTF8'"
}

pg_up() {
    resolve_pg_home
    pg_prepare_dirs
    pg_init
    pg_write_conf
    pg_start
    pg_wait_ready
    pg_create_db
}

pg_down() {
    resolve_pg_home
    if ! pg_running; then
        log "postgres not running"
        return 0
    fi
    log "stopping postgres (pid $(pg_pid))"
    as_pg "$PG_BIN/pg_ctl" -D "$PG_DATA" -m fast -w -t "$TIMEOUT" stop >/dev/null ||
        die_with_log "postgres did not stop" "$PG_LOG"
}

pg_status() {
    resolve_pg_home
    if pg_running; then
        local version
        version="$(PGPASSWORD="$PG_PASSWORD" "$PG_BIN/psql" -X -Atc 'select version()' \
            "postgres://$PG_USER@127.0.0.1:$PG_PORT/$PG_DB" 2>/dev/null || echo 'unreachable')"
        printf '%-12s running  pid=%-8s port=%-6s data=%s  version=%s\n' \
            postgres "$(pg_pid)" "$PG_PORT" "$PG_DATA" "$version"
    else
        printf '%-12s stopped  pid=%-8s port=%-6s data=%s\n' postgres - "$PG_PORT" "$PG_DATA"
        return 1
    fi
}

# ---------------------------------------------------------------- broker

broker_port() {
    case "$1" in
    dev) echo "${HCP_KAFKA_PORT:-59092}" ;;
    test) echo "${HCP_TEST_KAFKA_PORT:-59192}" ;;
    esac
}

broker_storage() {
    case "$1" in
    # Relative to the broker's working dir: absolute sqlite:/// paths get mangled.
    dev) echo "sqlite://nisshi.db" ;;
    test) echo "memory://nisshi/" ;;
    esac
}

broker_dir() { echo "$VAR/broker-$1"; }

# Pid of the running broker of a profile, or nothing.
broker_pid() {
    local pidfile pid
    pidfile="$(broker_dir "$1")/nisshi.pid"
    [[ -f "$pidfile" ]] || return 0
    pid="$(<"$pidfile")"
    [[ "$pid" =~ ^[0-9]+$ ]] || return 0
    # Guard against a reused pid: it must still be a nisshi process.
    if kill -0 "$pid" 2>/dev/null && tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q nisshi; then
        echo "$pid"
    fi
}

broker_wait_ready() {
    local profile="$1" port dir deadline
    port="$(broker_port "$profile")"
    dir="$(broker_dir "$profile")"
    deadline=$((SECONDS + TIMEOUT))
    until port_open "$port" && grep -q 'ready' "$dir/nisshi.log" 2>/dev/null; do
        [[ -n "$(broker_pid "$profile")" ]] || die_with_log "broker-$profile exited during startup" "$dir/nisshi.log"
        ((SECONDS < deadline)) || die_with_log "broker-$profile not ready on 127.0.0.1:$port after ${TIMEOUT}s" "$dir/nisshi.log"
        sleep 0.2
    done
}

broker_up() {
    local profile="$1" port dir storage pid
    port="$(broker_port "$profile")"
    dir="$(broker_dir "$profile")"
    storage="$(broker_storage "$profile")"
    pid="$(broker_pid "$profile")"
    if [[ -n "$pid" ]]; then
        log "broker-$profile already running (pid $pid, port $port)"
        broker_wait_ready "$profile"
        return 0
    fi
    [[ -x "$NISSHI_BIN" ]] || die "nisshi not found at $NISSHI_BIN; run scripts/install-deps.sh"
    if port_open "$port"; then
        die "port $port is taken by another process; set $([[ $profile == dev ]] && echo HCP_KAFKA_PORT || echo HCP_TEST_KAFKA_PORT) to a free port"
    fi
    mkdir -p -- "$dir"
    # Keep one previous log; readiness is judged on a fresh log.
    if [[ -f "$dir/nisshi.log" ]]; then
        mv -f -- "$dir/nisshi.log" "$dir/nisshi.log.1"
    fi
    log "starting broker-$profile on 127.0.0.1:$port (storage $storage, log: $dir/nisshi.log)"
    # The inner shell writes its own pid, then execs nisshi: the pid file holds the broker's
    # pid even if setsid has to fork. setsid + nohup: the broker outlives this shell.
    (
        cd "$dir"
        close_inherited_fds
        # shellcheck disable=SC2016 # $$ and $@ are for the inner shell
        setsid nohup bash -c 'echo $$ >nisshi.pid; exec "$@"' nisshi-launcher \
            "$NISSHI_BIN" broker \
            --listener-url "tcp://127.0.0.1:$port" \
            --advertised-listener-url "tcp://127.0.0.1:$port" \
            --storage-engine "$storage" \
            </dev/null >>nisshi.log 2>&1 &
    )
    local deadline=$((SECONDS + 5))
    until [[ -n "$(broker_pid "$profile")" ]]; do
        ((SECONDS < deadline)) || die_with_log "broker-$profile exited at once (or never started)" "$dir/nisshi.log"
        sleep 0.1
    done
    broker_wait_ready "$profile"
    log "broker-$profile ready (pid $(broker_pid "$profile"))"
}

broker_down() {
    local profile="$1" pid dir
    dir="$(broker_dir "$profile")"
    pid="$(broker_pid "$profile")"
    if [[ -z "$pid" ]]; then
        log "broker-$profile not running"
        rm -f -- "$dir/nisshi.pid"
        return 0
    fi
    log "stopping broker-$profile (pid $pid)"
    kill -TERM "$pid" 2>/dev/null || true
    local deadline=$((SECONDS + 10))
    while kill -0 "$pid" 2>/dev/null; do
        if ((SECONDS >= deadline)); then
            warn "broker-$profile ignored SIGTERM for 10s; sending SIGKILL"
            kill -KILL "$pid" 2>/dev/null || true
            break
        fi
        sleep 0.2
    done
    rm -f -- "$dir/nisshi.pid"
}

broker_status() {
    local profile="$1" pid port dir
    pid="$(broker_pid "$profile")"
    port="$(broker_port "$profile")"
    dir="$(broker_dir "$profile")"
    if [[ -n "$pid" ]] && port_open "$port"; then
        printf '%-12s running  pid=%-8s port=%-6s data=%s  storage=%s\n' \
            "broker-$profile" "$pid" "$port" "$dir" "$(broker_storage "$profile")"
    else
        printf '%-12s stopped  pid=%-8s port=%-6s data=%s\n' "broker-$profile" "${pid:--}" "$port" "$dir"
        return 1
    fi
}

# ---------------------------------------------------------------- commands

# Profiles a command acts on: the one named, both for --all.
profiles_of() {
    case "$1" in
    all) echo dev test ;;
    *) echo "$1" ;;
    esac
}

lock_stack() {
    mkdir -p -- "$VAR"
    exec 8>"$VAR/.stack.lock"
    flock -w "$((TIMEOUT * 2))" 8 || die "another scripts/stack.sh holds $VAR/.stack.lock"
}

cmd_up() {
    local profile="$1" p
    lock_stack
    "$ROOT/scripts/install-deps.sh"
    pg_up
    for p in $(profiles_of "$profile"); do
        broker_up "$p"
    done
    log "stack up (profile $profile); for the environment: eval \"\$(scripts/stack.sh env --profile ${profile/all/dev})\""
}

cmd_down() {
    local profile="$1" p
    lock_stack
    for p in $(profiles_of "$profile"); do
        broker_down "$p"
    done
    # Postgres is shared: only a full `down` (no profile, or --all) stops it.
    if [[ "$profile" == all ]]; then
        pg_down
    else
        log "postgres is shared by both profiles; left running (stop everything: $0 down)"
    fi
}

cmd_status() {
    local profile="$1" rc=0
    # Always show every component; the exit status covers the profile's components only.
    pg_status || rc=1
    local p
    for p in dev test; do
        if broker_status "$p"; then
            :
        elif [[ " $(profiles_of "$profile") " == *" $p "* ]]; then
            rc=1
        fi
    done
    return "$rc"
}

cmd_env() {
    local profile="$1"
    [[ "$profile" != all ]] || die "env needs one profile: --profile dev or --profile test"
    echo "export HCP_DATABASE__URL=postgres://$PG_USER:$PG_PASSWORD@127.0.0.1:$PG_PORT/$PG_DB"
    echo "export HCP_KAFKA__BROKERS=127.0.0.1:$(broker_port "$profile")"
    if [[ "$profile" == test ]]; then
        echo "export HCP_TEST_DATABASE_URL=postgres://$PG_USER:$PG_PASSWORD@127.0.0.1:$PG_PORT/postgres"
        echo "export HCP_TEST_KAFKA_BROKERS=127.0.0.1:$(broker_port test)"
    fi
}

cmd_wait() {
    local profile="$1" p
    resolve_pg_home
    log "waiting for postgres on 127.0.0.1:$PG_PORT"
    pg_wait_ready
    for p in $(profiles_of "$profile"); do
        log "waiting for broker-$p on 127.0.0.1:$(broker_port "$p")"
        broker_wait_ready "$p"
    done
    log "ready"
}

usage() {
    sed -n '2,16p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2
    exit 2
}

main() {
    (($# >= 1)) || usage
    local cmd="$1" profile=""
    shift
    while (($#)); do
        case "$1" in
        --profile)
            (($# >= 2)) || usage
            profile="$2"
            shift 2
            ;;
        --profile=*)
            profile="${1#--profile=}"
            shift
            ;;
        --all)
            profile=all
            shift
            ;;
        -h | --help) usage ;;
        *) usage ;;
        esac
    done
    case "$profile" in
    "" | dev | test | all) ;;
    *) die "unknown profile '$profile' (dev or test)" ;;
    esac
    case "$cmd" in
    up) cmd_up "${profile:-dev}" ;;
    down) cmd_down "${profile:-all}" ;;
    status) cmd_status "${profile:-dev}" ;;
    env) cmd_env "${profile:-dev}" ;;
    wait) cmd_wait "${profile:-dev}" ;;
    -h | --help | help) usage ;;
    *) usage ;;
    esac
}

main "$@"
