#!/usr/bin/env bash
# The demo command: installs what is missing, then runs the lab demo (needs root: it builds network
# namespaces, and removes them again). Extra arguments go to `flannel-lb lab demo`, e.g. --no-masquerade.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
exec .venv/bin/flannel-lb lab demo "$@"
