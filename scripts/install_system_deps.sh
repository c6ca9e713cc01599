#!/usr/bin/env bash
# System tools the tests drive for real: Prometheus' promtool and server, Alertmanager's amtool,
# docker-compose (validates docker-compose.yml without an engine), Chromium for the dashboard's
# browser tests. Installed from Debian's packages when missing (needs root).
set -euo pipefail
missing=()
command -v promtool >/dev/null 2>&1 || missing+=(prometheus)
command -v amtool >/dev/null 2>&1 || missing+=(prometheus-alertmanager)
command -v docker-compose >/dev/null 2>&1 || missing+=(docker-compose)
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
if [[ ${#missing[@]} -eq 0 ]]; then
    exit 0
fi
if [[ $(id -u) -ne 0 ]]; then
    echo "missing system packages: ${missing[*]} (run: sudo apt-get install -y ${missing[*]})" >&2
    exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
# Debian's prometheus package starts a server on :9090 where systemd runs; tests start their own.
if command -v systemctl >/dev/null 2>&1; then systemctl stop prometheus 2>/dev/null || true; fi
pkill -x prometheus 2>/dev/null || true
pkill -x prometheus-alertmanager 2>/dev/null || true
echo "installed: ${missing[*]}"
