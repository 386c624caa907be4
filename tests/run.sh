#!/usr/bin/env bash
# The test command: installs everything on a fresh machine, then runs the whole suite, on as
# many pytest-xdist workers as there are cores (at most 4; tests that share a module fixture
# stay on one worker: --dist loadgroup).
#   bash tests/run.sh [pytest args]          e.g. -m "not slow" for the quick loop
set -euo pipefail
cd "$(dirname "$0")/.."
bash launch/install.sh
workers=$(python3 -c "import os; print(max(1, min(4, os.cpu_count() or 1)))")
# One JAX compilation cache for the whole run, fresh each time: the suite's many processes
# (xdist workers, main.py and multi-process launches, resumed runs) compile the same small
# programs again and again; with the cache each is compiled once. Same executables, so no
# test's arithmetic changes; it saves about a sixth of the suite's CPU time (README: Tests).
cache_dir=$(mktemp -d)
trap 'rm -rf "$cache_dir"' EXIT
export JAX_COMPILATION_CACHE_DIR="$cache_dir" JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS=0
# The CPU settings main.py applies (signin_jax/cpu_speed.py), for every process of the suite:
# the tests run what users run (SIGNIN_JAX_CPU_SETTINGS=0 bash tests/run.sh: without them).
eval "$(python3 -m signin_jax.cpu_speed --exports)"
python3 -m pytest -q -n "$workers" --dist loadgroup tests "$@"
