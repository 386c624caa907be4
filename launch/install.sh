#!/usr/bin/env bash
# Installs signin_jax and everything it needs on a fresh machine (idempotent, quick when done).
#   bash launch/install.sh
# - Python packages at the exact versions in requirements.txt, then this package (editable).
# - As root on a Debian-like machine: Debian's dataset-fashion-mnist (the offline source of the
#   quickstart's data; elsewhere TFDS downloads Fashion-MNIST itself) and libtcmalloc-minimal4
#   (tcmalloc, which signin_jax/cpu_speed.py preloads for faster CPU training; optional: a
#   failed install only warns).
set -euo pipefail
cd "$(dirname "$0")/.."

python3 -m pip install --quiet --disable-pip-version-check -r requirements.txt
python3 -m pip install --quiet --disable-pip-version-check --no-deps -e .

if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
  updated=
  apt_install() {  # Quiet; apt's output is shown only when it fails.
    local out
    [ -n "$updated" ] || out=$(apt-get update -qq 2>&1) || { echo "$out" >&2; return 1; }
    updated=1
    out=$(DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" 2>&1) \
      || { echo "$out" >&2; return 1; }
  }
  if [ ! -d /usr/share/datasets/fashion-mnist ]; then
    apt_install dataset-fashion-mnist
  fi
  # Found where cpu_speed looks for it (not by package name: Ubuntu 24.04 calls it ...t64).
  if ! python3 -c "import sys; from signin_jax import cpu_speed
sys.exit(0 if cpu_speed.find_tcmalloc() else 1)"; then
    apt_install libtcmalloc-minimal4 || echo "install.sh: libtcmalloc-minimal4 not installed;" \
      "CPU training runs without tcmalloc (slower)." >&2
  fi
fi
