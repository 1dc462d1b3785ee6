#!/usr/bin/env bash
# Validate the docker-compose deployment without a Docker engine.
#
#   1. docker-compose -f docker-compose.yml config -q   (Debian 12's compose 1.29)
#   2. compose policy: every service has a healthcheck, every published port
#      is bound to 127.0.0.1
#   3. Grafana dashboards parse as JSON
#   4. promtool check config deploy/prometheus/prometheus.yml
#
# Missing tools (docker-compose, promtool) are installed with apt. `apt-get
# update` runs only if a package cannot be installed from the current lists.
# Installing Debian's `prometheus` package must not leave a prometheus (or
# node-exporter) service running: service starts are blocked with a
# policy-rc.d for the duration of the install and the units are disabled.
#
# Exits non-zero with a clear message on the first failure.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

COMPOSE_FILE="docker-compose.yml"
PROM_CONFIG="deploy/prometheus/prometheus.yml"
DASHBOARD_DIR="deploy/grafana/dashboards"

log()  { printf '==> %s\n' "$*"; }
fail() { printf 'check-compose: FAIL: %s\n' "$*" >&2; exit 1; }

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then
        SUDO="sudo"
    fi
fi

APT_UPDATED=0
POLICY_RC_CREATED=0
POLICY_RC=/usr/sbin/policy-rc.d

cleanup() {
    if [ "$POLICY_RC_CREATED" -eq 1 ]; then
        $SUDO rm -f "$POLICY_RC" || true
    fi
}
trap cleanup EXIT

need_apt() {
    command -v apt-get >/dev/null 2>&1 || fail "$1 is missing and apt-get is not available to install it"
    if [ "$(id -u)" -ne 0 ] && [ -z "$SUDO" ]; then
        fail "$1 is missing; run as root (or install sudo) so it can be installed with apt-get"
    fi
}

# apt_install PKG...: install without touching the package lists if possible;
# run `apt-get update` once, and only when the packages are not installable.
apt_install() {
    local env=(env DEBIAN_FRONTEND=noninteractive)
    if [ "$APT_UPDATED" -eq 0 ] && apt-cache show "$@" >/dev/null 2>&1; then
        if $SUDO "${env[@]}" apt-get install -y -q --no-install-recommends "$@"; then
            return 0
        fi
    fi
    if [ "$APT_UPDATED" -eq 0 ]; then
        log "apt-get update"
        $SUDO apt-get update -q || fail "apt-get update failed"
        APT_UPDATED=1
    fi
    $SUDO "${env[@]}" apt-get install -y -q --no-install-recommends "$@" \
        || fail "apt-get install $* failed"
}

# Stop and disable a system service that a package install may have enabled.
quiesce_service() {
    local svc="$1"
    if [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; then
        if systemctl is-active --quiet "$svc" 2>/dev/null; then
            log "stopping system service $svc"
            $SUDO systemctl stop "$svc" || fail "could not stop $svc"
        fi
        $SUDO systemctl disable --quiet "$svc" >/dev/null 2>&1 || true
    elif [ -x "/etc/init.d/$svc" ]; then
        if $SUDO "/etc/init.d/$svc" status >/dev/null 2>&1; then
            log "stopping system service $svc"
            $SUDO "/etc/init.d/$svc" stop >/dev/null 2>&1 || fail "could not stop $svc"
        fi
    fi
    if command -v update-rc.d >/dev/null 2>&1 && [ -e "/etc/init.d/$svc" ]; then
        $SUDO update-rc.d "$svc" disable >/dev/null 2>&1 || true
    fi
}

install_promtool() {
    need_apt promtool
    log "installing Debian package 'prometheus' (for promtool), services blocked"
    # Block service starts during the install, unless a policy-rc.d already
    # exists (e.g. in Docker-derived images it already denies starts); never
    # overwrite or remove one we did not create.
    if [ ! -e "$POLICY_RC" ]; then
        printf '#!/bin/sh\n# temporary: scripts/check-compose.sh\nexit 101\n' \
            | $SUDO tee "$POLICY_RC" >/dev/null
        $SUDO chmod 0755 "$POLICY_RC"
        POLICY_RC_CREATED=1
    fi
    apt_install prometheus
    cleanup
    POLICY_RC_CREATED=0
    quiesce_service prometheus
    quiesce_service prometheus-node-exporter
    command -v promtool >/dev/null 2>&1 || fail "promtool still not found after installing 'prometheus'"
}

# --------------------------------------------------------------------------
# Tools
# --------------------------------------------------------------------------
[ -f "$COMPOSE_FILE" ] || fail "$COMPOSE_FILE not found in $ROOT"
[ -f "$PROM_CONFIG" ] || fail "$PROM_CONFIG not found"
[ -d "$DASHBOARD_DIR" ] || fail "$DASHBOARD_DIR not found"
command -v python3 >/dev/null 2>&1 || fail "python3 is required"

if ! command -v docker-compose >/dev/null 2>&1; then
    need_apt docker-compose
    log "installing docker-compose"
    apt_install docker-compose
    command -v docker-compose >/dev/null 2>&1 || fail "docker-compose still not found after install"
fi

if ! command -v promtool >/dev/null 2>&1; then
    install_promtool
fi

# --------------------------------------------------------------------------
# 1. compose syntax / schema
# --------------------------------------------------------------------------
log "docker-compose $(docker-compose version --short 2>/dev/null || echo '?'): config -q"
docker-compose -f "$COMPOSE_FILE" config -q \
    || fail "docker-compose -f $COMPOSE_FILE config -q rejected the file"

# --------------------------------------------------------------------------
# 2. compose policy (on the fully resolved config: anchors/merges applied)
# --------------------------------------------------------------------------
log "compose policy: healthchecks and 127.0.0.1-only ports"
docker-compose -f "$COMPOSE_FILE" config | python3 -c '
import sys
import yaml  # python3-yaml is a dependency of docker-compose

cfg = yaml.safe_load(sys.stdin)
errors = []
for name, svc in sorted((cfg.get("services") or {}).items()):
    hc = svc.get("healthcheck")
    if not hc or hc.get("disable") or not hc.get("test"):
        errors.append("service %s has no healthcheck" % name)
    for port in svc.get("ports") or []:
        if isinstance(port, dict):
            host_ip = port.get("host_ip")
            spec = port
        else:
            spec = str(port)
            parts = spec.split(":")
            host_ip = parts[0] if len(parts) == 3 else None
        if host_ip != "127.0.0.1":
            errors.append("service %s publishes %s not bound to 127.0.0.1" % (name, spec))
for e in errors:
    print("  " + e, file=sys.stderr)
sys.exit(1 if errors else 0)
' || fail "compose policy violated (see above)"

# --------------------------------------------------------------------------
# 3. Grafana dashboards
# --------------------------------------------------------------------------
shopt -s nullglob
dashboards=("$DASHBOARD_DIR"/*.json)
[ "${#dashboards[@]}" -gt 0 ] || fail "no dashboards found in $DASHBOARD_DIR"
for f in "${dashboards[@]}"; do
    log "json: $f"
    python3 -m json.tool "$f" >/dev/null || fail "$f is not valid JSON"
done

# --------------------------------------------------------------------------
# 4. Prometheus config (syntax only: paths differ between host and container)
# --------------------------------------------------------------------------
log "promtool check config $PROM_CONFIG"
promtool check config "$PROM_CONFIG" || fail "promtool rejected $PROM_CONFIG"

log "OK: compose stack configuration is valid"
