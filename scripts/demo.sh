#!/usr/bin/env bash
# The demo command: installs what is missing, then runs the lab demo (needs root: it builds network
# namespaces, and removes them again; run as a normal user, it asks sudo). Extra arguments go to
# `flannel-lb lab demo`, e.g. --no-masquerade.
set -euo pipefail
# shellcheck disable=SC1091  # as-root.sh is checked on its own
. "$(dirname "$0")/as-root.sh"
as_root "$0" "$@"
cd "$(dirname "$0")/.."
scripts/setup.sh
exec .venv/bin/flannel-lb lab demo "$@"
