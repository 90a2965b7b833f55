#!/usr/bin/env bash
# Installs everything flannel-lb's tests and lab need on a Debian machine (run as root):
# the Debian packages below, and a virtualenv with flannel-lb and its test tools in .venv/.
# Safe to run again: it only installs what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

PACKAGES="etcd-server etcd-client iptables nftables conntrack iproute2 iputils-ping curl openssl procps \
python3 python3-venv python3-dev gcc libc6-dev nginx-light haproxy wrk shellcheck ruby"

missing=""
for p in $PACKAGES; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing="$missing $p"
done
if [ -n "$missing" ]; then
    echo "setup: installing Debian packages:$missing"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    # shellcheck disable=SC2086  # word splitting of the package list is intended
    apt-get install -y -qq --no-install-recommends $missing >/dev/null
    # the packaged services must not hold the ports the lab and tests use
    for svc in etcd nginx haproxy; do
        if command -v systemctl >/dev/null 2>&1; then systemctl disable --now "$svc" >/dev/null 2>&1 || true; fi
        if command -v service >/dev/null 2>&1; then service "$svc" stop >/dev/null 2>&1 || true; fi
    done
fi

PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
    echo "setup: creating .venv with $("$PYTHON" --version)"
    "$PYTHON" -m venv .venv
fi
stamp=.venv/.flannel-lb-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
    echo "setup: installing flannel-lb and its test tools into .venv"
    .venv/bin/pip install -q --upgrade pip 2>/dev/null || true
    .venv/bin/pip install -q -e '.[test]'
    touch "$stamp"
fi
