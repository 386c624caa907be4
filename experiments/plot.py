"""Figures of a sweep's results (PNG, matplotlib): accuracy vs sparsity, sign flips, mean beta.

    python experiments/plot.py --results experiments/results/fashion_mnist_study \
        --out docs/figures/fashion_mnist_study

Reads the per-run JSONs written by `experiments/sweep.py` and draws, in ``--out``:

* ``accuracy_vs_sparsity.png``: test accuracy against target sparsity, one line per method of the
  'main' cells, mean over seeds with sample-std error bars; dense cells (sparsity 0) as a
  horizontal line with a +-std band.
* ``sign_flips_per_layer.png``: per layer, the fraction of unmasked weights whose sign differs
  from the initialization (mean +- std over seeds; also printed as a table), for every 'main'
  method at ``--flip_sparsity`` (PaI vs PaI + Sign-In); layers alphabetically unless
  ``--layer_order`` (e.g. ``dense1/kernel,dense2/kernel,classifier/kernel`` for
  LeNet-300-100, input to output).
* ``beta_curves.png``: mean beta = m**2 - w**2 over all Sign-In layers against the training
  step, averaged over seeds, for every Sign-In cell at ``--flip_sparsity`` (the ablations
  included), so the decay between resets and the jump back at each reset show. The trainer logs
  beta every ``log_every_steps`` steps and, at each epoch end, the value before that epoch's
  re-split.

A figure with nothing to draw is skipped with a message.
"""

import argparse
import collections
import os
import sys
from typing import Any, Dict, List, Sequence

import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import sweep  # pylint: disable=g-import-not-at-top


def _by_cell(records: Sequence[Dict[str, Any]]) -> Dict[str, List[Dict[str, Any]]]:
  cells = collections.OrderedDict()
  for r in sorted(records, key=lambda r: (r["cell"], r["seed"])):
    cells.setdefault(r["cell"], []).append(r)
  return cells


def _mean_std(values):
  mean, std = sweep.mean_std(list(values))
  return mean, (0.0 if np.isnan(std) else std)


def _save(fig, ax, path: str, grid_axis: str = "both") -> bool:
  ax.grid(axis=grid_axis, alpha=0.3)
  ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)
  return True


def plot_accuracy_vs_sparsity(records, path: str) -> bool:
  main = [r for r in records if r["group"] == "main"]
  if not main:
    return False
  fig, ax = plt.subplots(figsize=(6.5, 4.5))
  methods = collections.OrderedDict()
  for runs in _by_cell(main).values():
    methods.setdefault(runs[0]["method"], []).append(runs)
  sparse_methods = [m for m, cells in methods.items()
                    if any(runs[0]["target_sparsity"] > 0 for runs in cells)]
  ticks = set()
  for method, cells in methods.items():
    points = sorted((runs[0]["target_sparsity"], *_mean_std(r["test_accuracy"] for r in runs))
                    for runs in cells)
    sparse = [p for p in points if p[0] > 0]
    for s, mean, std in (p for p in points if p[0] == 0):
      line = ax.axhline(100 * mean, linestyle="--", color="gray", label=f"{method}")
      ax.axhspan(100 * (mean - std), 100 * (mean + std), color=line.get_color(), alpha=0.2)
    if sparse:
      x, mean, std = (np.array(v) for v in zip(*sparse))
      ticks.update(100 * x)
      # Methods side by side around each sparsity, so equal means keep both error bars visible.
      shift = 0.12 * (sparse_methods.index(method) - (len(sparse_methods) - 1) / 2)
      ax.errorbar(100 * x + shift, 100 * mean, yerr=100 * std, marker="o", capsize=3, label=method)
  ax.set_xticks(sorted(ticks))
  ax.set_xlabel("sparsity (%)")
  ax.set_ylabel("test accuracy (%)")
  ax.set_title("Test accuracy vs sparsity (mean ± std over seeds)")
  return _save(fig, ax, path)


def _at_sparsity(records, sparsity: float):
  return [r for r in records if abs(r["target_sparsity"] - sparsity) < 1e-9]


def plot_sign_flips(records, path: str, sparsity: float,
                    layer_order: Sequence[str] = ()) -> bool:
  cells = _by_cell(r for r in _at_sparsity(records, sparsity) if r["group"] == "main")
  if not cells:
    return False
  names = [k for k in next(iter(cells.values()))[0]["sign_flips_per_layer"] if k != "total"]
  unknown = sorted(set(layer_order) - set(names))
  if unknown:
    raise ValueError(f"--layer_order names layers {unknown} that the results do not have; "
                     f"they have {names}.")
  layers = list(layer_order) + [k for k in names if k not in layer_order] + ["total"]
  width = 0.8 / len(cells)
  fig, ax = plt.subplots(figsize=(max(6.5, 1.6 * len(layers)), 4.5))
  print(f"Sign flips vs init (%, mean ± std over seeds) at {100 * sparsity:g} % sparsity:\n"
        f"| method | {' | '.join(layers)} |\n|---{'|---' * len(layers)}|")
  for i, runs in enumerate(cells.values()):
    stats = [_mean_std(r["sign_flips_per_layer"][layer] for r in runs) for layer in layers]
    mean, std = (np.array(v) for v in zip(*stats))
    print(f"| {runs[0]['method']} | "
          + " | ".join(f"{100 * m:.2f} ± {100 * s:.2f}" for m, s in zip(mean, std)) + " |")
    ax.bar(np.arange(len(layers)) + (i - (len(cells) - 1) / 2) * width, 100 * mean, width,
           yerr=100 * std, capsize=3, label=runs[0]["method"])
  ax.set_xticks(np.arange(len(layers)), layers, rotation=20, fontsize=8)
  ax.set_ylabel("sign flips vs init (% of unmasked weights)")
  ax.set_title(f"Sign flips per layer at {100 * sparsity:g} % sparsity")
  return _save(fig, ax, path, grid_axis="y")


def plot_beta_curves(records, path: str, sparsity: float) -> bool:
  cells = _by_cell(r for r in _at_sparsity(records, sparsity)
                   if r["signin"]["enabled"] and r["beta_curves"].get("total"))
  if not cells:
    return False
  fig, ax = plt.subplots(figsize=(6.5, 4.5))
  for runs in cells.values():
    per_step = collections.defaultdict(list)
    for r in runs:
      for step, beta in r["beta_curves"]["total"]:
        per_step[step].append(beta)
    steps = sorted(per_step)
    ax.plot(steps, [np.mean(per_step[s]) for s in steps], marker=".",
            label=f"{runs[0]['method']} (n={len(runs)})")
  ax.set_xlabel("training step")
  ax.set_ylabel("mean beta = m² − w² (unmasked weights)")
  ax.set_title(f"Mean beta over training at {100 * sparsity:g} % sparsity")
  return _save(fig, ax, path)


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--results", required=True, help="A sweep's results directory.")
  parser.add_argument("--out", required=True, help="Directory for the PNGs.")
  parser.add_argument("--flip_sparsity", type=float, default=0.9,
                      help="Sparsity of the sign-flip and beta figures (default %(default)s).")
  parser.add_argument("--layer_order", default="",
                      help="Comma-separated layer names, e.g. input to output, for the sign-flip "
                           "figure (the summaries list layers alphabetically); others follow.")
  args = parser.parse_args(argv)
  layer_order = [name for name in args.layer_order.split(",") if name]
  records = sweep.load_results(args.results)
  if not records:
    parser.error(f"--results {args.results!r} holds no per-run results JSONs.")
  os.makedirs(args.out, exist_ok=True)
  figures = {
      "accuracy_vs_sparsity.png": lambda p: plot_accuracy_vs_sparsity(records, p),
      "sign_flips_per_layer.png": lambda p: plot_sign_flips(records, p, args.flip_sparsity,
                                                            layer_order),
      "beta_curves.png": lambda p: plot_beta_curves(records, p, args.flip_sparsity),
  }
  for filename, draw in figures.items():
    path = os.path.join(args.out, filename)
    try:
      drawn = draw(path)
    except ValueError as e:
      parser.error(str(e))
    print(f"[plot] {'wrote ' + path if drawn else 'nothing to draw for ' + filename}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
