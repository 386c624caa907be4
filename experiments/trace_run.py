"""Step-by-step trace of a training run, to see how (and where) it diverges.

    python experiments/trace_run.py --config=configs/fashion_mnist_quickstart.py \
        --config.sparsity=0.98 --config.schedule.method=acdc --steps=1980 --every=50

Builds the run exactly as `main.py` would (`run_start.create_run_start`: same model, masks,
optimizer, initial state and data order for the config's seed), then runs `train_steps.train_step`
on one device without a workdir, and prints every ``--every`` steps (and at the first
non-finite loss, where it stops): the step's loss, the largest |theta| of each layer and, with
Sign-In, each reparameterized layer's smallest |m|. Under Sign-In a weight moves at
``sqrt(beta**2 + 4 theta**2)`` times the learning rate (gradient flow, signin.py), so the
largest |theta| says how far its effective step has grown.
"""

import functools
import os
import sys
from typing import Any, Dict, List

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import numpy as np
from ml_collections import config_flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from signin_jax import config_validation  # pylint: disable=g-import-not-at-top
from signin_jax import input_pipeline
from signin_jax import masks as masks_lib
from signin_jax import prepare_data
from signin_jax import run_start
from signin_jax import signin
from signin_jax import train_steps

_CONFIG = config_flags.DEFINE_config_file("config", None, "Training config (configs/*.py).",
                                          lock_config=True)
_STEPS = flags.DEFINE_integer("steps", 1000, "Number of steps to trace.")
_EVERY = flags.DEFINE_integer("every", 50, "Print every this many steps.")
flags.mark_flags_as_required(["config"])


def layer_extremes(params, opt_state):
  """Per layer: max |theta|, and with Sign-In the smallest |m| of each reparameterized layer."""
  max_theta = {masks_lib.path_str(p): float(jnp.max(jnp.abs(v)))
               for p, v in jax.tree_util.tree_flatten_with_path(params)[0]}
  state = signin.find_signin_state(opt_state)
  min_m = {} if state is None else {
      masks_lib.path_str(p): float(jnp.min(jnp.abs(m)))
      for p, m in jax.tree_util.tree_flatten_with_path(state.m)[0]}
  return max_theta, min_m


def trace(config, *, steps: int, every: int) -> List[Dict[str, Any]]:
  """Rows ``{step, loss, max_theta, min_m}`` every ``every`` steps, and at the first non-finite
  loss (the last row then)."""
  run = run_start.create_run_start(config)
  step_fn = jax.jit(functools.partial(
      train_steps.train_step, apply_fn=run.model.apply, tx=run.tx,
      num_classes=run.dataset.num_classes, label_smoothing=config.label_smoothing))
  batches = input_pipeline.train_iterator(
      config.dataset, global_batch_size=config.batch_size, seed=config.seed, **run.data_kwargs)
  state, rows = run.state, []
  for step in range(1, steps + 1):
    state, metrics = step_fn(state, next(batches))
    loss = float(metrics["loss"])
    if step % every == 0 or not np.isfinite(loss):
      max_theta, min_m = layer_extremes(state.params, state.opt_state)
      rows.append({"step": step, "loss": loss, "max_theta": max_theta, "min_m": min_m})
    if not np.isfinite(loss):
      break
  return rows


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  config = _CONFIG.value
  config_validation.validate_config(config)
  if _STEPS.value < 1 or _EVERY.value < 1:
    raise app.UsageError("--steps and --every must be positive integers.")
  prepare_data.ensure_prepared(config.dataset, config.data_dir)
  rows = trace(config, steps=_STEPS.value, every=_EVERY.value)
  for row in rows:
    theta = " ".join(f"{k}={v:.3g}" for k, v in row["max_theta"].items())
    m = " ".join(f"{k}={v:.3g}" for k, v in row["min_m"].items())
    print(f"step {row['step']} | loss {row['loss']:.4f} | max|theta| {theta}"
          + (f" | min|m| {m}" if m else ""), flush=True)
  if rows and not np.isfinite(rows[-1]["loss"]):
    print(f"non-finite loss at step {rows[-1]['step']}; stopped.")
    return 1
  return 0


if __name__ == "__main__":
  app.run(main)
