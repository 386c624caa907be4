#!/usr/bin/env bash
# The test command: installs everything on a fresh machine, then runs the whole suite, on as
# many pytest-xdist workers as there are cores (at most 4; tests that share a module fixture
# stay on one worker: --dist loadgroup).
#   bash tests/run.sh [pytest args]          e.g. -m "not slow" for the quick loop
set -euo pipefail
cd "$(dirname "$0")/.."
bash launch/install.sh
workers=$(python3 -c "import os; print(max(1, min(4, os.cpu_count() or 1)))")
exec python3 -m pytest -q -n "$workers" --dist loadgroup tests "$@"
