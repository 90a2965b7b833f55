#!/usr/bin/env bash
# Installs everything flannel-lb's tests and lab need on a Debian machine (needs root; run as a normal
# user, it asks sudo): the Debian packages below, a virtualenv with flannel-lb and its test tools in
# .venv/, and the link /usr/local/bin/flannel-lb -> .venv/bin/flannel-lb if nothing else is there.
# Safe to run again: it only installs what is missing. Quiet: apt's and pip's output goes to a log
# that is shown (and kept) only if a step fails; -v shows it as it happens.
set -euo pipefail
# shellcheck disable=SC1091  # as-root.sh is checked on its own
. "$(dirname "$0")/as-root.sh"
as_root "$0" "$@"
cd "$(dirname "$0")/.."

verbose=0
case "${1:-}" in
    -v | --verbose) verbose=1 ;;
    "") ;;
    *) echo "usage: scripts/setup.sh [-v]" >&2; exit 2 ;;
esac

log="$(mktemp -t flannel-lb-setup.XXXXXX.log)"
trap 'rm -f "$log"' EXIT

# quietly WHAT CMD...: run CMD, its output in the log (or on the terminal with -v); on failure show it.
quietly() {
    local what="$1"
    shift
    if [ "$verbose" = 1 ]; then
        "$@" && return 0
        echo "setup: $what failed" >&2
        exit 1
    fi
    if "$@" >>"$log" 2>&1; then
        return 0
    fi
    echo "setup: $what failed; the last lines of its output:" >&2
    tail -n 40 "$log" >&2
    trap - EXIT
    echo "setup: the whole log is $log (scripts/setup.sh -v shows it as it happens)" >&2
    exit 1
}

PACKAGES="etcd-server etcd-client iptables nftables conntrack iproute2 iputils-ping curl openssl procps \
python3 python3-venv python3-dev gcc libc6-dev nginx-light haproxy wrk shellcheck ruby \
keepalived conntrackd bird2"

missing=""
for p in $PACKAGES; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing="$missing $p"
done
if [ -n "$missing" ]; then
    echo "setup: installing Debian packages:$missing"
    export DEBIAN_FRONTEND=noninteractive
    quietly "apt-get update" apt-get update -qq
    # shellcheck disable=SC2086  # word splitting of the package list is intended
    quietly "apt-get install" apt-get install -y -qq --no-install-recommends $missing
    # the packaged services must not hold the ports the lab and tests use; keepalived and conntrackd
    # must never run in the root namespace, nor BIRD (bird2's service is "bird"): the HA and BGP tests
    # start their own, inside namespaces
    for svc in etcd nginx haproxy keepalived conntrackd bird; do
        if command -v systemctl >/dev/null 2>&1; then systemctl disable --now "$svc" >/dev/null 2>&1 || true; fi
        if command -v service >/dev/null 2>&1; then service "$svc" stop >/dev/null 2>&1 || true; fi
    done
fi

PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
    echo "setup: creating .venv with $("$PYTHON" --version)"
    quietly "creating .venv" "$PYTHON" -m venv .venv
fi
stamp=.venv/.flannel-lb-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
    echo "setup: installing flannel-lb and its test tools into .venv"
    .venv/bin/pip install -q --upgrade pip >>"$log" 2>&1 || true  # an old pip still installs
    quietly "pip install" .venv/bin/pip install --disable-pip-version-check -e '.[test]'
    touch "$stamp"
fi

# `flannel-lb` on PATH, as the README's examples call it; never over someone else's file
bindir="${FLANNEL_LB_BIN_DIR:-/usr/local/bin}"
target="$PWD/.venv/bin/flannel-lb"
link="$bindir/flannel-lb"
if [ "$(readlink "$link" 2>/dev/null || true)" = "$target" ]; then
    :
elif [ ! -e "$link" ] && [ -d "$bindir" ]; then  # absent, or a dangling link (a removed checkout)
    ln -sfn "$target" "$link"
    echo "setup: linked $link -> $target"
else
    echo "setup: $link is something else, left alone; this checkout's is $target"
fi
