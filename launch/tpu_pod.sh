#!/usr/bin/env bash
# Train on a Cloud TPU VM pod slice: create it, copy this checkout to every worker and install
# it there, run main.py on all workers with the same config and workdir, stream the log, tear
# the slice down.
#
# Prerequisites: the gcloud CLI, authenticated (`gcloud auth login`), a project with TPU quota,
# and a Cloud Storage bucket in the slice's region that every host can reach: the workdir
# (checkpoints, written by all hosts together; logs, summary and final weights, by process 0)
# and the TFDS data_dir live there. ImageNet: put ILSVRC2012_img_{train,val}.tar in
# gs://$BUCKET/tensorflow_datasets/downloads/manual/ (process 0 prepares the dataset on the first
# run while the other hosts wait; that takes hours, so better run
#   python -m signin_jax.prepare_data imagenet2012 --data_dir=gs://$BUCKET/tensorflow_datasets
# once on any machine beforehand). The TPU image's python3 may be older than the pinned
# packages need (>= 3.11): `install` makes a Python 3.11 environment with uv on every worker.
#
# Variables (environment; defaults in brackets):
#   BUCKET             gs:// bucket name, without gs:// (required)
#   PROJECT            GCP project                                  [gcloud's default]
#   ZONE               TPU zone                                     [us-central2-b]
#   TPU_NAME           name of the slice                            [signin-pod]
#   ACCELERATOR_TYPE   slice type, e.g. v4-32 (4 hosts), v5p-64     [v4-32]
#   RUNTIME_VERSION    TPU VM image (v4: tpu-ubuntu2204-base, v5p: v2-alpha-tpuv5,
#                      v5e: v2-alpha-tpuv5-lite, v6e: v2-alpha-tpuv6e) [tpu-ubuntu2204-base]
#   CONFIG             config file                                  [configs/imagenet_r50.py]
#   RUN_NAME           run directory: gs://$BUCKET/runs/$RUN_NAME   [imagenet_r50]
#   EXTRA_FLAGS        more main.py flags, e.g. "--config.sparsity=0.95"
#
# The exact command (every step; deletes the slice only once the run has written its summary):
#   BUCKET=my-bucket bash launch/tpu_pod.sh all
# or step by step: create | install | train | logs | stop | delete.
#   train   starts main.py on every worker (--worker=all) with --config.distributed=True; JAX
#           detects the pod by itself. nohup: the run survives a dropped ssh session.
#   logs    streams worker 0's log (process 0 writes the progress lines) until main.py ends.
#   stop    SIGTERM on every worker: the processes agree on a step, save it and exit.
# Rerunning `train` with the same RUN_NAME resumes from the last checkpoint in the bucket.
set -euo pipefail
cd "$(dirname "$0")/.."

ZONE=${ZONE:-us-central2-b}
TPU_NAME=${TPU_NAME:-signin-pod}
ACCELERATOR_TYPE=${ACCELERATOR_TYPE:-v4-32}
RUNTIME_VERSION=${RUNTIME_VERSION:-tpu-ubuntu2204-base}
CONFIG=${CONFIG:-configs/imagenet_r50.py}
RUN_NAME=${RUN_NAME:-imagenet_r50}
EXTRA_FLAGS=${EXTRA_FLAGS:-}
: "${BUCKET:?set BUCKET to a gs:// bucket name every host can reach}"
WORKDIR="gs://${BUCKET}/runs/${RUN_NAME}"
DATA_DIR="gs://${BUCKET}/tensorflow_datasets"
REMOTE_DIR='~/signin_jax'
VENV='~/signin_venv'
project_flag=(); [ -n "${PROJECT:-}" ] && project_flag=(--project="$PROJECT")

tpu() { gcloud compute tpus tpu-vm "$@" --zone="$ZONE" "${project_flag[@]}"; }
on_all_workers() { tpu ssh "$TPU_NAME" --worker=all --command="$1"; }

create() {
  tpu create "$TPU_NAME" --accelerator-type="$ACCELERATOR_TYPE" --version="$RUNTIME_VERSION"
}

install() {
  # Copy the committed HEAD of this checkout (not a fresh clone: what runs is what you tested;
  # commit local changes first), then on every worker: a Python 3.11 environment, the pinned
  # packages, the TPU runtime of the same jax version, and this package.
  local archive; archive=$(mktemp -d)/signin_jax.tar.gz
  git archive --format=tar.gz -o "$archive" HEAD
  tpu scp "$archive" "$TPU_NAME":signin_jax.tar.gz --worker=all
  local jax_version; jax_version=$(sed -n 's/^jax==//p' requirements.txt)
  on_all_workers "set -e; rm -rf $REMOTE_DIR && mkdir -p $REMOTE_DIR && \
    tar -xzf signin_jax.tar.gz -C $REMOTE_DIR && cd $REMOTE_DIR && \
    python3 -m pip install -q --user uv && python3 -m uv venv -q --python 3.11 $VENV && \
    python3 -m uv pip install -q --python $VENV/bin/python -r requirements.txt \
      'jax[tpu]==${jax_version}' && \
    python3 -m uv pip install -q --python $VENV/bin/python --no-deps -e ."
}

train() {
  on_all_workers "cd $REMOTE_DIR && nohup $VENV/bin/python main.py --config=$CONFIG \
    --workdir=$WORKDIR --config.data_dir=$DATA_DIR --config.distributed=True $EXTRA_FLAGS \
    > train.log 2>&1 & echo \$! > train.pid"
  echo "started on all workers; logs: bash launch/tpu_pod.sh logs; outputs: $WORKDIR"
}

logs() {
  tpu ssh "$TPU_NAME" --worker=0 --command="cd $REMOTE_DIR && \
    tail -n +1 --pid=\$(cat train.pid) -f train.log"
}

stop() { on_all_workers "cd $REMOTE_DIR && kill -TERM \$(cat train.pid) 2>/dev/null || true"; }

delete() { tpu delete "$TPU_NAME" --quiet; }

all() {
  create; install; train; logs
  if gcloud storage ls "$WORKDIR/summary.json" >/dev/null 2>&1; then
    delete
  else  # The log stream ended early (dropped ssh, failure): keep the slice for a look.
    echo "no $WORKDIR/summary.json yet: the slice is kept (logs / train / stop / delete)." >&2
    exit 1
  fi
}

case "${1:-}" in
  create|install|train|logs|stop|delete|all) "$1" ;;
  *) echo "usage: BUCKET=... bash launch/tpu_pod.sh {create|install|train|logs|stop|delete|all}" >&2
     exit 2 ;;
esac
