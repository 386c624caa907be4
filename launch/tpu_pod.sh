#!/usr/bin/env bash
# Train on a Cloud TPU VM pod slice: create it, install on every worker, run main.py on all
# workers with the same config and workdir, stream logs, tear down.
#
# Prerequisites: the gcloud CLI, authenticated (`gcloud auth login`), a project with TPU quota,
# and a Cloud Storage bucket that every host can reach (checkpoints, summaries, TFDS data).
# ImageNet must already be prepared by TFDS under $DATA_DIR (build it once with
#   python -c "import tensorflow_datasets as tfds; tfds.builder('imagenet2012',
#     data_dir='gs://BUCKET/tensorflow_datasets').download_and_prepare()"
# after putting ILSVRC2012_img_{train,val}.tar in <data_dir>/downloads/manual).
#
# Variables (environment; defaults in brackets):
#   PROJECT            GCP project                                  [gcloud's default]
#   ZONE               TPU zone                                     [us-central2-b]
#   TPU_NAME           name of the slice                            [signin-pod]
#   ACCELERATOR_TYPE   slice type, e.g. v4-32 (4 hosts), v5p-64     [v4-32]
#   RUNTIME_VERSION    TPU VM image                                 [tpu-ubuntu2204-base]
#   BUCKET             gs:// bucket (required)
#   CONFIG             config file                                  [configs/imagenet_r50.py]
#   RUN_NAME           run directory under gs://$BUCKET/runs        [imagenet_r50]
#   EXTRA_FLAGS        more main.py flags, e.g. "--config.sparsity=0.95"
#
# The exact command (all steps):
#   BUCKET=my-bucket bash launch/tpu_pod.sh all
# or step by step: create | install | train | logs | delete.
#
# `train` runs main.py on every worker (`--worker=all`) with --config.distributed=True;
# jax.distributed.initialize() detects the pod by itself. The run is started with nohup so it
# survives a dropped ssh session; `logs` streams process 0's log. Restarting `train` with the
# same RUN_NAME resumes from the last checkpoint in the bucket.
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
project_flag=(); [ -n "${PROJECT:-}" ] && project_flag=(--project="$PROJECT")

tpu() { gcloud compute tpus tpu-vm "$@" --zone="$ZONE" "${project_flag[@]}"; }
on_all_workers() { tpu ssh "$TPU_NAME" --worker=all --command="$1"; }

create() {
  tpu create "$TPU_NAME" --accelerator-type="$ACCELERATOR_TYPE" --version="$RUNTIME_VERSION"
}

install() {
  # Copy this checkout (not a clone: what you run is what you tested), then install the pinned
  # packages plus the TPU runtime of the same jax version on every worker.
  local archive; archive=$(mktemp -d)/signin_jax.tar.gz
  git archive --format=tar.gz -o "$archive" HEAD
  tpu scp "$archive" "$TPU_NAME":signin_jax.tar.gz --worker=all
  local jax_version; jax_version=$(sed -n 's/^jax==//p' requirements.txt)
  on_all_workers "mkdir -p $REMOTE_DIR && tar -xzf signin_jax.tar.gz -C $REMOTE_DIR && \
    cd $REMOTE_DIR && python3 -m pip install -q -r requirements.txt && \
    python3 -m pip install -q 'jax[tpu]==${jax_version}' && python3 -m pip install -q --no-deps -e ."
}

train() {
  on_all_workers "cd $REMOTE_DIR && nohup python3 main.py --config=$CONFIG \
    --workdir=$WORKDIR --config.data_dir=$DATA_DIR --config.distributed=True $EXTRA_FLAGS \
    > train.log 2>&1 &"
  echo "started on all workers; logs: bash launch/tpu_pod.sh logs; outputs: $WORKDIR"
}

logs() { tpu ssh "$TPU_NAME" --worker=0 --command="tail -n +1 -f $REMOTE_DIR/train.log"; }

delete() { tpu delete "$TPU_NAME" --quiet; }

case "${1:-}" in
  create|install|train|logs|delete) "$1" ;;
  all) create; install; train; logs ;;
  *) echo "usage: BUCKET=... bash launch/tpu_pod.sh {create|install|train|logs|delete|all}" >&2
     exit 2 ;;
esac
