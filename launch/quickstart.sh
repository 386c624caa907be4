#!/usr/bin/env bash
# The quickstart: Sign-In on Fashion-MNIST at 90 % sparsity on this CPU, set-up included.
#   bash launch/quickstart.sh [--config.num_epochs=2 ...]   (extra flags go to main.py)
set -euo pipefail
cd "$(dirname "$0")/.."
bash launch/install.sh
exec python3 main.py --config=configs/fashion_mnist_quickstart.py \
  --workdir="${WORKDIR:-workdirs/quickstart}" "$@"
