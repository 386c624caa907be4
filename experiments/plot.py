r"""Figures of sweeps' results (PNG, matplotlib): accuracy, sign flips, beta, Sign-In pairs, signs.

    python experiments/plot.py --results experiments/results/fashion_mnist_study \
        --out docs/figures/fashion_mnist_study \
        --layer_order dense1/kernel,dense2/kernel,classifier/kernel

    python experiments/plot.py --results experiments/results/fashion_mnist_study \
        --results experiments/results/fashion_mnist_dst \
        --cells 'dense|pai_erk_(signin_)?s0\.(9|95|98)|(gmp|acdc|rigl|set)_.*' \
        --out docs/figures/fashion_mnist_dst \
        --layer_order dense1/kernel,dense2/kernel,classifier/kernel

Reads the per-run JSONs written by `experiments/sweep.py` in one or more ``--results``
directories (repeat the flag or separate with commas; the runs are drawn together, each
directory's in its grid's order when its ``results.csv`` is there, else by file name; a
(cell, seed) found twice is an error). ``--cells`` keeps only the cells whose whole name matches
a regular expression: above, part 1's dense and ERK-mask PaI cells at part 2's sparsities next
to every cell of part 2. Draws, in ``--out``:

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
* ``method_pairs.png``: each method without and with Sign-In (part 2's dense-to-sparse
  methods, part 4's N:M masks). One panel per target sparsity of the 'main' cells; in each, per base method (the method label without " + Sign-In", in the order
  first seen) two bars, without and with Sign-In (a method with one of the two draws one):
  test accuracy, mean over seeds with sample-std error bars and each seed's value as a dot;
  the dense cells (sparsity 0) as a dashed line. Each panel's y axis is zoomed to its data.
  Each bar averages its own cell's seeds, unpaired: where a run is missing, the pair's gap is not
  the paired difference (``experiments/paired.py``).
* ``signs_sufficient.png``: "signs are sufficient". The 'ablation' cells that start from
  another cell's runs (overrides ``init_from.workdir = "{workdir:<source cell>}"``), one group
  per source cell: first the source cell's own runs ("the method itself"), then one bar per
  ablation cell on that source, labeled by its method label after "mask, " (same order and
  colour in every group); mean +- std with seed dots, zoomed y axis.

In both bar figures a bar whose seed count differs from the most common one says "n=<count>"
(e.g. a cell with a diverged run); their bars are also printed as tables. A figure with nothing
to draw is skipped with a message.
"""

import argparse
import collections
import csv
import os
import re
import sys
from typing import Any, Dict, List, NamedTuple, Optional, Sequence, Tuple

import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import sweep  # pylint: disable=g-import-not-at-top

SIGNIN_SUFFIX = " + Sign-In"
SOURCE_BAR = "the method itself"  # signs_sufficient.png's bar of the source cell's own runs


def _grid_order(results_dir: str) -> Dict[str, int]:
  """Cell name -> position in its grid, from the sweep's results.csv (written in grid order)."""
  path = os.path.join(results_dir, "results.csv")
  if not os.path.isfile(path):
    return {}
  with open(path, newline="", encoding="utf-8") as f:
    return {row["cell"]: i for i, row in enumerate(csv.DictReader(f))}


def load_records(results_dirs: Sequence[str], cells: str = "") -> List[Dict[str, Any]]:
  """The per-run records of every directory, concatenated, filtered by a cell-name regex.

  Each directory's records come in its grid's order (so figures list methods as the grid does)
  when it has a results.csv, else by file name. ``cells``, if given, keeps the records whose cell
  name matches it as a whole. Raises ValueError for a directory without per-run JSONs, a
  (cell, seed) found twice (two directories' runs would be averaged as one cell), or a filter
  that keeps nothing.
  """
  records = []
  for results_dir in results_dirs:
    found = sweep.load_results(results_dir)
    if not found:
      raise ValueError(f"--results {results_dir!r} holds no per-run results JSONs.")
    order = _grid_order(results_dir)
    records += sorted(found, key=lambda r: order.get(r["cell"], len(order)))  # stable
  seen = set()
  for r in records:
    if (r["cell"], r["seed"]) in seen:
      raise ValueError(f"cell {r['cell']!r} seed {r['seed']} is in more than one --results "
                       "directory; keep one with --cells.")
    seen.add((r["cell"], r["seed"]))
  if cells:
    pattern = re.compile(cells)
    records = [r for r in records if pattern.fullmatch(r["cell"])]
    if not records:
      raise ValueError(f"--cells {cells!r} matches no cell of the results.")
  return records


def _by_cell(records) -> Dict[str, List[Dict[str, Any]]]:
  """The runs of each cell by seed, cells in the order first seen."""
  cells = collections.OrderedDict()
  for r in records:
    cells.setdefault(r["cell"], []).append(r)
  for runs in cells.values():
    runs.sort(key=lambda r: r["seed"])
  return cells


def _mean_std(values):
  mean, std = sweep.mean_std(list(values))
  return mean, (0.0 if np.isnan(std) else std)


def _finish(fig, path: str) -> bool:
  # bbox "tight" keeps legends placed outside the axes in the file.
  fig.savefig(path, dpi=120, bbox_inches="tight")
  plt.close(fig)
  return True


def _save(fig, ax, path: str, grid_axis: str = "both") -> bool:
  ax.grid(axis=grid_axis, alpha=0.3)
  # Laid out before the legend: one beside the axes then widens the file instead of the axes
  # shrinking to make room for it.
  fig.tight_layout()
  # Many entries would cover the data: put them beside the axes.
  outside = len(ax.get_legend_handles_labels()[1]) > 6
  ax.legend(fontsize=8, **({"loc": "upper left", "bbox_to_anchor": (1.01, 1)} if outside else {}))
  return _finish(fig, path)


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


class Bar(NamedTuple):
  """One bar of the bar figures: a cell's test accuracy (%) over its seeds."""
  label: str
  cell: str
  n: int
  mean: float
  std: float  # Sample std (ddof=1); 0 for a single seed.
  values: Tuple[float, ...]  # Each seed's, by seed.


def _accuracy_bar(label: str, runs) -> Bar:
  values = tuple(100 * r["test_accuracy"] for r in runs)
  return Bar(label, runs[0]["cell"], len(values), *_mean_std(values), values)


def _put(table: Dict[Any, Bar], key, bar: Bar):
  """table[key] = bar, refusing a second cell for the same bar rather than hiding one."""
  if key in table:
    raise ValueError(f"cells {table[key].cell!r} and {bar.cell!r} would draw the same bar "
                     f"({bar.label}); keep one with --cells.")
  table[key] = bar


def method_pairs_table(records) -> Tuple[Dict[float, List[Tuple[str, Optional[Bar],
                                                                 Optional[Bar]]]], List[Bar]]:
  """The bars of method_pairs.png, from the 'main' cells.

  Returns ``(panels, dense)``: ``panels`` maps each sparsity > 0 (ascending) to a list of
  ``(base method, bar without Sign-In, bar with Sign-In)`` (None where that cell is absent), base
  methods in the order first seen; ``dense`` holds the bars of the cells at sparsity 0.
  """
  pairs = collections.OrderedDict()  # base method -> sparsity -> {with Sign-In: Bar}
  dense = []
  for runs in _by_cell(r for r in records if r["group"] == "main").values():
    method, sparsity = runs[0]["method"], runs[0]["target_sparsity"]
    bar = _accuracy_bar(method, runs)
    if sparsity == 0:
      dense.append(bar)
      continue
    signin = method.endswith(SIGNIN_SUFFIX)
    base = method[:-len(SIGNIN_SUFFIX)] if signin else method
    _put(pairs.setdefault(base, {}).setdefault(sparsity, {}), signin, bar)
  sparsities = sorted({s for by_sparsity in pairs.values() for s in by_sparsity})
  panels = collections.OrderedDict(
      (s, [(base, by_sparsity[s].get(False), by_sparsity[s].get(True))
           for base, by_sparsity in pairs.items() if s in by_sparsity]) for s in sparsities)
  return panels, dense


def signs_sufficient_table(records) -> Tuple[List[str], List[Tuple[str, Dict[str, Bar]]]]:
  """The bars of signs_sufficient.png: 'ablation' cells that start from another cell's runs.

  Returns ``(variants, groups)``: ``variants`` are the bar labels in drawing order, SOURCE_BAR
  first, then each ablation cell's method label after "mask, " in the order first seen;
  ``groups`` holds ``(source cell's method, {variant: Bar})`` per source cell (first seen), its
  SOURCE_BAR entry from the source cell's own runs (absent if those are not in ``records``).
  """
  cells = _by_cell(records)
  variants = [SOURCE_BAR]
  by_source = collections.OrderedDict()  # source cell -> {variant: Bar}
  for runs in cells.values():
    first = runs[0]
    source = sweep.source_cell(first["overrides"])
    if first["group"] != "ablation" or source is None:
      continue
    variant = first["method"].split("mask, ", 1)[-1]
    if variant not in variants:
      variants.append(variant)
    _put(by_source.setdefault(source, {}), variant, _accuracy_bar(first["method"], runs))
  groups = []
  for source, bars in by_source.items():
    if source not in cells:
      groups.append((source, bars))
      continue
    method = cells[source][0]["method"]
    groups.append((method, {SOURCE_BAR: _accuracy_bar(method, cells[source]), **bars}))
  return variants, groups


def _usual_n(bars: Sequence[Bar]) -> int:
  return collections.Counter(b.n for b in bars).most_common(1)[0][0]


def _print_bars(title: str, bars: Sequence[Bar]):
  print(f"{title} (test accuracy %, mean ± std over seeds):\n| cell | method | n | mean | std |\n"
        "|---|---|---|---|---|")
  for b in bars:
    print(f"| {b.cell} | {b.label} | {b.n} | {b.mean:.2f} | {b.std:.2f} |")


def _draw_bars(ax, x: Sequence[float], bars: Sequence[Bar], width: float, n_usual: int,
               **style):
  """Bars of the means with std error bars, each seed as a dot, and "n=.." where n is unusual."""
  ax.bar(x, [b.mean for b in bars], width, yerr=[b.std for b in bars], capsize=3,
         error_kw={"elinewidth": 1}, **style)
  for xi, b in zip(x, bars):
    # Seeds spread across the bar, so equal values stay distinguishable.
    offsets = np.linspace(-width / 4, width / 4, b.n) if b.n > 1 else np.zeros(1)
    ax.scatter(xi + offsets, b.values, s=9, color="black", zorder=3)
    if b.n != n_usual:
      ax.annotate(f"n={b.n}", (xi, max(b.mean + b.std, *b.values)), xytext=(0, 3),
                  textcoords="offset points", ha="center", va="bottom", fontsize=7)


def _zoom_y(ax, bars: Sequence[Bar], lines: Sequence[float] = ()):
  """Y axis around the error bars, dots and lines: bars from 0 would hide 0.1 pp differences."""
  lo = min([min(b.mean - b.std, *b.values) for b in bars] + list(lines))
  hi = max([max(b.mean + b.std, *b.values) for b in bars] + list(lines))
  pad = 0.1 * (hi - lo) or 0.5
  ax.set_ylim(lo - pad, hi + 2 * pad)  # Room above for the "n=" notes.


def _figure_legend(fig, axes, ncol: int):
  """One legend for all panels, below them, so it covers no bar."""
  handles = {}
  for ax in axes:
    handles.update(zip(*reversed(ax.get_legend_handles_labels())))
  fig.legend(handles.values(), handles.keys(), loc="outside lower center", ncol=ncol, fontsize=8)


def method_pairs_figure(records):
  """method_pairs.png's figure (see the module docstring), or None without sparse 'main' cells."""
  panels, dense = method_pairs_table(records)
  if not panels:
    return None
  bars = [b for rows in panels.values() for row in rows for b in row[1:] if b] + dense
  n_usual = _usual_n(bars)
  _print_bars("Each method without and with Sign-In", bars)
  width = max(len(rows) for rows in panels.values())
  fig, axes = plt.subplots(1, len(panels), figsize=(0.9 * width * len(panels) + 1.5, 4.2),
                           layout="constrained", squeeze=False)
  for ax, (sparsity, rows) in zip(axes[0], panels.items()):
    for side, label in ((0, "without Sign-In"), (1, "with Sign-In")):
      drawn = [(i + (side - 0.5) * 0.4, row[1 + side]) for i, row in enumerate(rows)
               if row[1 + side]]
      if drawn:
        _draw_bars(ax, *zip(*drawn), 0.4, n_usual, color=f"C{side}", label=label)
    for b in dense:
      ax.axhline(b.mean, linestyle="--", color="gray",
                 label=b.label + (f" (n={b.n})" if b.n != n_usual else ""))
    _zoom_y(ax, [b for row in rows for b in row[1:] if b], [b.mean for b in dense])
    ax.set_xticks(range(len(rows)), [row[0] for row in rows], rotation=30, fontsize=8)
    ax.set_title(f"{100 * sparsity:g} % target sparsity", fontsize=10)
    ax.grid(axis="y", alpha=0.3)
  axes[0][0].set_ylabel("test accuracy (%)")
  fig.suptitle("Each method without and with Sign-In (mean ± std over seeds; dots: seeds)",
               fontsize=11)
  _figure_legend(fig, axes[0], ncol=3)
  return fig


def signs_sufficient_figure(records):
  """signs_sufficient.png's figure (see the module docstring), or None without such cells."""
  variants, groups = signs_sufficient_table(records)
  if not groups:
    return None
  bars = [b for _, by_variant in groups for b in by_variant.values()]
  n_usual = _usual_n(bars)
  _print_bars("Signs are sufficient?", bars)
  width = 0.8 / len(variants)
  fig, ax = plt.subplots(figsize=(max(6.5, 0.45 * len(bars) + 1.5), 4.5), layout="constrained")
  for i, variant in enumerate(variants):
    drawn = [(g + (i - (len(variants) - 1) / 2) * width, by_variant[variant])
             for g, (_, by_variant) in enumerate(groups) if variant in by_variant]
    if drawn:
      _draw_bars(ax, *zip(*drawn), width, n_usual, color=f"C{i}", label=variant)
  _zoom_y(ax, bars)
  ax.set_xticks(range(len(groups)), [method for method, _ in groups])
  ax.set_xlabel("static mask learned by")
  ax.set_ylabel("test accuracy (%)")
  sparsities = sorted({100 * r["target_sparsity"] for b in bars for r in records
                       if r["cell"] == b.cell})
  ax.set_title("Signs are sufficient? Retraining on a learned mask at "
               f"{', '.join(f'{s:g}' for s in sparsities)} % sparsity\n"
               "(mean ± std over seeds; dots: seeds)", fontsize=10)
  ax.grid(axis="y", alpha=0.3)
  _figure_legend(fig, [ax], ncol=2)
  return fig


def plot_method_pairs(records, path: str) -> bool:
  fig = method_pairs_figure(records)
  return fig is not None and _finish(fig, path)


def plot_signs_sufficient(records, path: str) -> bool:
  fig = signs_sufficient_figure(records)
  return fig is not None and _finish(fig, path)


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--results", required=True, action="append",
                      help="A sweep's results directory; several (repeat the flag or separate "
                           "with commas) are drawn together.")
  parser.add_argument("--cells", default="",
                      help="Regular expression: draw only the cells whose whole name matches "
                           "(default: all).")
  parser.add_argument("--out", required=True, help="Directory for the PNGs.")
  parser.add_argument("--flip_sparsity", type=float, default=0.9,
                      help="Sparsity of the sign-flip and beta figures (default %(default)s).")
  parser.add_argument("--layer_order", default="",
                      help="Comma-separated layer names, e.g. input to output, for the sign-flip "
                           "figure (the summaries list layers alphabetically); others follow.")
  args = parser.parse_args(argv)
  layer_order = [name for name in args.layer_order.split(",") if name]
  try:
    records = load_records([d for value in args.results for d in value.split(",") if d],
                           args.cells)
  except (ValueError, re.error) as e:
    parser.error(str(e))
  os.makedirs(args.out, exist_ok=True)
  figures = {
      "accuracy_vs_sparsity.png": lambda p: plot_accuracy_vs_sparsity(records, p),
      "sign_flips_per_layer.png": lambda p: plot_sign_flips(records, p, args.flip_sparsity,
                                                            layer_order),
      "beta_curves.png": lambda p: plot_beta_curves(records, p, args.flip_sparsity),
      "method_pairs.png": lambda p: plot_method_pairs(records, p),
      "signs_sufficient.png": lambda p: plot_signs_sufficient(records, p),
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
