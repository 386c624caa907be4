"""Trains and evaluates one config.

    python main.py --config=configs/fashion_mnist_quickstart.py --workdir=workdirs/quickstart
    python main.py --config=configs/cifar10_r20.py --workdir=workdirs/c10 --config.sparsity=0.95

Rerunning with the same --workdir resumes from its latest intact checkpoint.
"""

from absl import app
from absl import flags
from ml_collections import config_flags

from signin_jax import config_validation
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
  prepare_data.ensure_prepared(config.dataset, config.data_dir)
  train.train_and_evaluate(config, _WORKDIR.value)


if __name__ == "__main__":
  app.run(main)
