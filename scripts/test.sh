#!/usr/bin/env bash
# The test command: installs what is missing, then lints, type-checks and runs the whole suite.
# Needs root on Debian (kernel tests build their own network namespaces; nothing touches the host's);
# run as a normal user, it asks sudo. Extra arguments go to pytest, e.g. `scripts/test.sh -k plan`.
set -euo pipefail
# shellcheck disable=SC1091  # as-root.sh is checked on its own
. "$(dirname "$0")/as-root.sh"
as_root "$0" "$@"
cd "$(dirname "$0")/.."
scripts/setup.sh
echo "== ruff"
.venv/bin/ruff check flannel_lb tests bench
.venv/bin/ruff format --check flannel_lb tests bench
echo "== mypy"
.venv/bin/mypy
echo "== pytest"
exec .venv/bin/pytest -q "$@"
