"""Did a published GMP run meet issue 17's defect (a layer's kept count rising, a pruned weight
coming back)? Replays each GMP run's per-layer count table from its results JSON.

    python experiments/gmp_count_replay.py --results experiments/results/fashion_mnist_dst

For every results JSON whose config has ``schedule.method == 'gmp'`` it rebuilds the schedule
as the trainer does (``sparsity.create_schedule`` with the run's model, config and number of
steps) and prints, per run: the number of mask updates, every rise of a layer's count in the
table of the code before the fix (each update's budget rounded on its own:
``masks.layer_counts`` at that update's cubic sparsity, what ``gmp`` used until commit
861dd02), and whether today's table (never rising) equals it. Equal tables mean the run's masks
are exactly those of today's code: GMP's masks depend on the table only (and on a kept NaN
weight, which a finished run does not have). Exit code 1 if any run's table had a rise.
"""

import argparse
import glob
import json
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from signin_jax import input_pipeline  # pylint: disable=g-import-not-at-top
from signin_jax import masks as masks_lib
from signin_jax import models
from signin_jax import sparsity


def replay(config, num_steps: int):
  """(update steps, the table before the fix, today's table) of a GMP run's config."""
  dataset = input_pipeline.DATASETS[config["dataset"]]
  model = models.get_model(config["model"], num_classes=dataset.num_classes,
                           width=config["width"])
  shapes = jax.eval_shape(lambda: model.init(
      {"params": jax.random.PRNGKey(0)}, jnp.zeros((1,) + tuple(dataset.image_shape)),
      train=False))["params"]
  params = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
  s, mask = config["schedule"], config["mask"]
  schedule = sparsity.create_schedule(
      "gmp", params, sparsity=config["sparsity"], num_steps=num_steps,
      update_every=s["update_every_steps"], start=s["start"], end=s["end"],
      initial_sparsity=s["initial_sparsity"], distribution=mask["distribution"],
      scope=mask["scope"], dense=tuple(mask["dense_layers"]))
  start, end = round(s["start"] * num_steps), round(s["end"] * num_steps)
  s_i, s_f = s["initial_sparsity"], config["sparsity"]
  before = np.asarray([masks_lib.layer_counts(
      params, s_f + (s_i - s_f) * (1 - (t - start) / (end - start)) ** 3,
      mask["distribution"], dense=tuple(mask["dense_layers"]))[0]
                       for t in schedule.update_steps])
  return schedule.update_steps, before, np.asarray(schedule.target_counts)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--results", required=True, help="a results directory of sweep.py")
  args = parser.parse_args()
  any_rise = False
  for path in sorted(glob.glob(os.path.join(args.results, "*.json"))):
    with open(path) as f:
      record = json.load(f)
    config = record.get("config", {})
    if config.get("schedule", {}).get("method") != "gmp":
      continue
    steps, before, now = replay(config, record["steps"])
    rises = [(steps[u - 1], steps[u], layer, int(before[u - 1, layer]), int(before[u, layer]))
             for u in range(1, len(steps)) for layer in range(before.shape[1])
             if before[u, layer] > before[u - 1, layer]]
    any_rise |= bool(rises)
    print(f"{os.path.basename(path)}: {len(steps)} updates (steps {steps[0]}..{steps[-1]}), "
          f"rises before the fix: {rises or 'none'}; today's table "
          f"{'equals it' if np.array_equal(before, now) else 'differs'}")
  sys.exit(1 if any_rise else 0)


if __name__ == "__main__":
  main()
