"""Trains and evaluates one config.

    python main.py --config=configs/fashion_mnist_quickstart.py --workdir=workdirs/quickstart
    python main.py --config=configs/cifar10_r20.py --workdir=workdirs/c10 --config.sparsity=0.95

Rerunning with the same --workdir resumes from its latest intact checkpoint (under the same
config: docs/runs.md says which fields may change). Exit codes: 0 finished (summary.json
written), 143 stopped by SIGTERM after saving a checkpoint (rerun the same command to resume),
1 an error (its message names the field or file).

Multi-process (README: Scale-out): the same command on every process, plus
--config.distributed=True; on a Cloud TPU pod or under SLURM that is all (JAX detects the job),
elsewhere also --config.distributed_coordinator=HOST0:PORT --config.num_processes=N
--config.process_id=I (launch/ has the TPU pod and SLURM launchers).

On a CPU it first applies signin_jax/cpu_speed.py's settings (re-executing itself once;
SIGNIN_JAX_CPU_SETTINGS=0 turns them off): they must be in place before JAX starts.
"""

from signin_jax import cpu_speed

cpu_speed.reexec_with_cpu_settings()

# pylint: disable=g-import-not-at-top,wrong-import-position
from absl import app
from absl import flags
import jax
from jax.experimental import multihost_utils
from ml_collections import config_flags

from signin_jax import config_validation
from signin_jax import parallel
from signin_jax import prepare_data
from signin_jax import train

_CONFIG = config_flags.DEFINE_config_file("config", None, "Training config (configs/*.py).",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and results.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  config = _CONFIG.value
  config_validation.validate_config(config)  # Bad values fail before any data is prepared.
  parallel.initialize_distributed(config)
  # Process 0 prepares the dataset first: with a data_dir shared by all hosts (a bucket) the
  # others then find it prepared instead of all building it at once; with per-host data_dirs
  # each prepares its own.
  if jax.process_index() == 0:
    prepare_data.ensure_prepared(config.dataset, config.data_dir)
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices("dataset prepared by process 0")
  if jax.process_index() != 0:
    prepare_data.ensure_prepared(config.dataset, config.data_dir)
  result = train.train_and_evaluate(config, _WORKDIR.value)
  if result.get("preempted"):  # Stopped with a checkpoint: not finished (docs/runs.md).
    return parallel.EXIT_CODE_PREEMPTED
  return 0


if __name__ == "__main__":
  app.run(main)
