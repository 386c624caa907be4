#!/usr/bin/env bash
# The test command: installs everything on a fresh machine, then runs the whole suite.
#   bash tests/run.sh [pytest args]
set -euo pipefail
cd "$(dirname "$0")/.."
bash launch/install.sh
exec python3 -m pytest -q tests "$@"
