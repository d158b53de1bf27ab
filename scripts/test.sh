#!/usr/bin/env bash
# Run the test suite, setting up whatever is missing first. Extra arguments go to pytest
# (e.g. scripts/test.sh -m "unit or server").
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
"$root/scripts/setup-system.sh"
"$root/scripts/setup.sh" test
venv=${LIVESTYLE_VENV:-$root/.venv}
cd "$root"
"$venv/bin/ruff" check .
"$venv/bin/ruff" format --check --quiet .
"$venv/bin/mypy"
# The slowest tests are listed at the end: where CI time goes on a loaded machine.
exec "$venv/bin/python" -m pytest --durations=20 "$@"
