#!/usr/bin/env bash
# Installs signin_jax and everything it needs on a fresh machine (idempotent, quick when done).
#   bash launch/install.sh
# - Python packages at the exact versions in requirements.txt, then this package (editable).
# - Debian's dataset-fashion-mnist (the offline source of the quickstart's data) when running
#   as root on a Debian-like machine; elsewhere TFDS downloads Fashion-MNIST itself.
set -euo pipefail
cd "$(dirname "$0")/.."

python3 -m pip install --quiet --disable-pip-version-check -r requirements.txt
python3 -m pip install --quiet --disable-pip-version-check --no-deps -e .

if [ ! -d /usr/share/datasets/fashion-mnist ] && command -v apt-get >/dev/null \
    && [ "$(id -u)" = 0 ]; then
  apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist >/dev/null
fi
