r"""A run's report figure (PNG): how it trained, and what happened to each layer's mask and signs.

    python -m signin_jax.report WORKDIR                      # -> WORKDIR/report.png
    python -m signin_jax.report RUN_A RUN_B --out pair.png   # several runs overlaid

The trainer draws it at the end of every run (:func:`write_run_report`); the command draws the
same for finished runs. Only files in a workdir are read:

* ``metrics.jsonl``: per logged step ``train_loss``, ``train_accuracy``, ``learning_rate`` (and,
  with Sign-In, ``beta/<layer>``); per epoch end ``test_loss``, ``test_accuracy``,
  ``sign_flips_vs_init/<layer>``, ``sign_flips_vs_prev_epoch/<layer>``, with Sign-In
  ``beta/<layer>`` (before the epoch's re-split), and with a mask schedule other than 'static'
  ``mask_density/``, ``mask_dropped/``, ``mask_grown/<layer>``. A resumed run writes the steps
  after its last checkpoint again: per step and key the later record wins.
* ``config.json`` (the title; which fields differ between overlaid runs) and ``summary.json``
  (or the summary passed in): the final per-layer density measured on the weights, the sign
  flips against initialization and each layer's size.

The figure: train (and test) loss, train and test accuracy and the learning rate over steps;
per layer, over steps, the density, the sign flips against initialization and against the
previous epoch, Sign-In's mean beta ``m**2 - w**2``, and the fraction of the layer's weights
dropped and grown since the previous epoch; the final per-layer density and sign-flip bars.
Up to :data:`MAX_LINE_LAYERS` layers are drawn as lines, more (a ResNet) as heatmaps, layer by
time. Overlaid runs share the time panels as one line per run (the weighted total of all
layers) and the final bars per layer; the legend names each run by the config fields that
differ between them (e.g. ``signin.enabled=True``). A panel whose data no run has (no mask in a
dense run, no beta without Sign-In, nothing dropped or grown under a static mask) is left out,
and the figure's heading says why.
"""

import argparse
import functools
import io
import json
import os
import re
import sys
from typing import Any, Callable, Dict, List, NamedTuple, Optional, Sequence, Tuple

from absl import logging
from etils import epath
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure  # No pyplot: no global backend, safe inside a run.
from matplotlib.lines import Line2D
import numpy as np

from signin_jax.metrics import TOTAL

REPORT_FILE = "report.png"
MAX_LINE_LAYERS = 8  # Up to this many layers: one line each; more: heatmaps.
MAX_LABEL_FIELDS = 4  # Config fields named in an overlay legend, these first:
LABEL_FIRST = ("model", "dataset", "sparsity", "schedule.method", "signin.enabled",
               "mask.method", "mask.distribution", "init_from.workdir", "seed")
MARKERS = "osD^v<>p"  # One per layer line, so that lines drawn on top of each other still show.


class ReportError(ValueError):
  """A workdir's files are missing or unreadable."""


class Run(NamedTuple):
  workdir: str
  records: Dict[int, Dict[str, float]]  # step -> {key: value}, merged, later records winning.
  config: Dict[str, Any]  # config.json flattened to dotted keys ({} when absent).
  summary: Optional[Dict[str, Any]]


class Quantity(NamedTuple):
  prefix: str  # metrics.jsonl key prefix, '<prefix>/<layer>'.
  title: str
  cmap: str
  per_size: bool = False  # Counts, drawn as a fraction of the layer's entries when known.


QUANTITIES = (
    Quantity("mask_density", "mask density (fraction kept)", "viridis"),
    Quantity("sign_flips_vs_init", "sign flips vs initialization", "magma"),
    Quantity("sign_flips_vs_prev_epoch", "sign flips vs previous epoch", "magma"),
    Quantity("beta", "Sign-In mean beta = m² − w²", "cividis"),
    Quantity("mask_dropped", "dropped since previous epoch", "Reds", per_size=True),
    Quantity("mask_grown", "grown since previous epoch", "Greens", per_size=True),
)


# --------------------------------------------------------------------------------------------
# Reading.

def read_metrics(path: str) -> Dict[int, Dict[str, float]]:
  """``{step: {key: value}}`` from a metrics.jsonl; for a step written again, the later wins.

  A line that is not JSON is skipped with a warning; a run killed mid-write leaves a partial
  line, to which its resumed run appends its next record: that complete record at the end of the
  line is kept. A file without any step record raises :class:`ReportError`.
  """
  path = epath.Path(path)
  if not path.exists():
    raise ReportError(f"{path} not found: not the workdir of a signin_jax run (train_and_evaluate "
                      "writes metrics.jsonl there at its first logged step).")
  try:
    lines = path.read_text().splitlines()
  except UnicodeDecodeError as e:
    raise ReportError(f"{path} is not a text file of JSON lines ({e}).") from e
  records: Dict[int, Dict[str, float]] = {}
  skipped = []  # Lines read in part or not at all.
  for number, line in enumerate(lines, 1):
    record, start = _parse_line(line) if line.strip() else ({}, 0)
    if start:
      skipped.append(number)
    if record and "step" in record:  # The other kind: {"hparams": {...}}, at the start.
      step = int(record.pop("step"))
      record.pop("time", None)
      records.setdefault(step, {}).update(record)
  if not records:
    raise ReportError(f"{path} holds no step record ({len(lines)} lines, {len(skipped)} of them "
                      "not JSON): nothing was logged yet, or it is not a metrics.jsonl.")
  if skipped:
    logging.warning("%s: skipped what is not a JSON record in %d line(s) (lines %s).", path,
                    len(skipped), ", ".join(map(str, skipped[:10])))
  return dict(sorted(records.items()))


def _parse_line(line: str) -> Tuple[Optional[Dict[str, Any]], int]:
  """(the record, where it starts): 0 if the whole line is one; (None, -1) if none is."""
  for start in [0] + [m.start() for m in re.finditer(r"\{", line)][1:]:
    try:
      record = json.loads(line[start:])
    except json.JSONDecodeError:
      continue
    if isinstance(record, dict) and (start == 0 or "step" in record):
      return record, start
  return None, -1


def _read_json(path: epath.Path) -> Optional[Dict[str, Any]]:
  if not path.exists():
    return None
  try:
    return json.loads(path.read_text())
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise ReportError(f"{path} is not valid JSON ({e}).") from e


def flatten(tree: Dict[str, Any], prefix: str = "") -> Dict[str, Any]:
  """``{'signin': {'enabled': True}}`` -> ``{'signin.enabled': True}``."""
  flat = {}
  for key, value in tree.items():
    if isinstance(value, dict):
      flat.update(flatten(value, f"{prefix}{key}."))
    else:
      flat[f"{prefix}{key}"] = tuple(value) if isinstance(value, list) else value
  return flat


def load_run(workdir: str, summary: Optional[Dict[str, Any]] = None) -> Run:
  """A workdir's metrics, config and summary (``summary`` given, else summary.json if there)."""
  directory = epath.Path(workdir)
  records = read_metrics(str(directory / "metrics.jsonl"))
  config = _read_json(directory / "config.json") or {}
  if summary is None:
    summary = _read_json(directory / "summary.json")
  return Run(str(workdir), records, flatten(config), summary)


# --------------------------------------------------------------------------------------------
# What a run holds.

def series(run: Run, key: str) -> Tuple[np.ndarray, np.ndarray]:
  """(steps, values) of one key, over the steps that logged it."""
  steps = [s for s, r in run.records.items() if key in r]
  return np.asarray(steps), np.asarray([run.records[s][key] for s in steps], float)


def _layer_order(name: str):
  # Input to output for this project's models: the stem first, the classifier last, numbered
  # names in numeric order (stage2_block10 after stage2_block9).
  rank = 0 if name.startswith("stem") else 2 if name.startswith("classifier") else 1
  return rank, [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


def layers(runs: Sequence[Run], prefix: str) -> List[str]:
  """The layers logged under ``prefix/`` by any of ``runs`` (without the total), input first."""
  found = {k[len(prefix) + 1:] for run in runs for r in run.records.values() for k in r
           if k.startswith(prefix + "/")}
  return sorted(found - {TOTAL}, key=_layer_order)


def _layer_sizes(run: Run) -> Dict[str, int]:
  sparsity = (run.summary or {}).get("sparsity", {})
  return {name: row["size"] for name, row in sparsity.items() if row.get("size")}


def final_per_layer(run: Run, what: str) -> Tuple[Dict[str, float], str]:
  """The run's final per-layer 'density' or 'sign_flips_vs_init' (with the total), and where
  it comes from: the summary (the density there is the nonzero fraction measured on the final
  weights: a kept weight that is exactly 0 does not count) when there, else the last record in
  metrics.jsonl (the mask's density; none for a static mask, whose density is not logged)."""
  if run.summary:
    if what == "density":
      return ({k: 1.0 - v["sparsity"] for k, v in run.summary["sparsity"].items()},
              "nonzero fraction of the final weights")
    return dict(run.summary[what]), "summary.json"
  prefix = "mask_density" if what == "density" else what
  last = [r for r in run.records.values() if f"{prefix}/{TOTAL}" in r]
  values = {k[len(prefix) + 1:]: v for k, v in last[-1].items()
            if k.startswith(prefix + "/")} if last else {}
  return values, "mask density at the last epoch" if what == "density" else "last epoch"


def is_sparse(run: Run) -> bool:
  if "sparsity" in run.config:
    return run.config["sparsity"] > 0
  return bool(layers([run], "mask_density"))


def missing_notes(run: Run) -> List[str]:
  """Why panels are absent for this run."""
  notes = []
  if not is_sparse(run):
    notes.append("dense run: no mask (no density, dropped or grown)")
  elif not layers([run], "mask_density"):
    notes.append("static mask: density constant (final bars), nothing dropped or grown")
  if not layers([run], "beta"):
    notes.append("Sign-In off: no beta")
  return notes


def run_labels(runs: Sequence[Run]) -> List[str]:
  """Each run named by the config fields whose values differ between the runs."""
  keys = sorted({k for run in runs for k in run.config})
  missing = object()
  differ = [k for k in keys if len({repr(run.config.get(k, missing)) for run in runs}) > 1]
  differ.sort(key=lambda k: LABEL_FIRST.index(k) if k in LABEL_FIRST else len(LABEL_FIRST))
  names = [os.path.basename(os.path.normpath(run.workdir)) for run in runs]
  if not differ:
    return names if len(set(names)) == len(names) else [run.workdir for run in runs]
  shown = differ[:MAX_LABEL_FIELDS]
  more = f" (+{len(differ) - len(shown)} more)" if len(differ) > len(shown) else ""
  labels = [", ".join(f"{k}={run.config.get(k)}" for k in shown) + more for run in runs]
  if len(set(labels)) < len(labels):
    labels = [f"{name}: {label}" for name, label in zip(names, labels)]
  return labels if len(set(labels)) == len(labels) else [run.workdir for run in runs]


def describe(run: Run) -> str:
  """One line: model, data, sparsity, schedule, Sign-In and the final test accuracy."""
  c = run.config
  parts = [f"{c.get('model', '?')} on {c.get('dataset', '?')}"]
  if is_sparse(run):
    parts.append(f"sparsity {c.get('sparsity', '?')}, mask {c.get('mask.method', '?')}/"
                 f"{c.get('mask.distribution', '?')}, schedule {c.get('schedule.method', '?')}")
  else:
    parts.append("dense")
  parts.append("Sign-In" if c.get("signin.enabled", bool(layers([run], "beta"))) else
               "no Sign-In")
  steps, acc = series(run, "test_accuracy")
  accuracy = (run.summary or {}).get("test_accuracy", acc[-1] if len(acc) else None)
  if accuracy is not None:
    parts.append(f"test accuracy {accuracy:.4f}")
  return ", ".join(parts)


# --------------------------------------------------------------------------------------------
# Drawing.

Panel = Callable[[Any], None]  # Draws into one Axes.


def _short(name: str) -> str:
  return name[:-len("/kernel")] if name.endswith("/kernel") else name


def _time_axes(ax, last_step: int, title: str, ylabel: str = "") -> None:
  ax.set_title(title, fontsize=10)
  ax.set_xlabel("step", fontsize=8)
  if ylabel:
    ax.set_ylabel(ylabel, fontsize=8)
  ax.set_xlim(0, last_step)
  ax.tick_params(labelsize=7)
  ax.grid(alpha=0.3)


def _run_width(k: int, count: int) -> float:
  """Run k's line width: the first run's widest, so that runs with the same data all show."""
  return 1.2 + 1.2 * (count - 1 - k)


def _training_panels(runs: Sequence[Run], colors: Sequence[str], last_step: int) -> List[Panel]:
  several = len(runs) > 1

  def draw(ax, train_key, test_key, title):
    for k, (run, color) in enumerate(zip(runs, colors)):
      for key, style, name in ((train_key, "-", "train"), (test_key, "--o", "test")):
        steps, values = series(run, key) if key else ([], [])
        if len(steps):
          own = color if several else ("C0" if name == "train" else "C1")
          ax.plot(steps, values, style, color=own, lw=_run_width(k, len(runs)), ms=3,
                  label=name)
    _time_axes(ax, last_step, title)
    if test_key and ax.lines:
      if several:  # The colours are the runs (the figure's legend): say which style is which.
        ax.legend([Line2D([], [], color="k", ls="-"), Line2D([], [], color="k", ls="--",
                                                              marker="o", ms=3)],
                  ["train", "test"], fontsize=7)
      else:
        ax.legend(fontsize=7)

  return [lambda ax: draw(ax, "train_loss", "test_loss", "loss"),
          lambda ax: draw(ax, "train_accuracy", "test_accuracy", "accuracy"),
          lambda ax: draw(ax, "learning_rate", None, "learning rate")]


def _values(run: Run, q: Quantity, layer: str) -> Tuple[np.ndarray, np.ndarray]:
  steps, values = series(run, f"{q.prefix}/{layer}")
  size = _layer_sizes(run).get(layer)
  return steps, values / size if q.per_size and size else values


def _unit(runs: Sequence[Run], q: Quantity) -> str:
  if not q.per_size:
    return ""
  known = all(_layer_sizes(run) for run in runs)
  return "fraction of the layer's weights" if known else "weights"


def _lines_panel(ax, runs, colors, q: Quantity, names: List[str], last_step: int,
                 legend: bool) -> None:
  """Few layers: a line per layer and the total (one run); the total per run (several)."""
  if len(runs) > 1:
    for k, (run, color) in enumerate(zip(runs, colors)):
      steps, values = _values(run, q, TOTAL)
      ax.plot(steps, values, "-o", color=color, lw=_run_width(k, len(runs)),
              ms=3 if len(steps) < 40 else 0)
    title = f"{q.title}, all layers"
  else:
    (run,) = runs
    for i, name in enumerate(names):
      steps, values = _values(run, q, name)
      if len(steps):
        ax.plot(steps, values, "-", marker=MARKERS[i % len(MARKERS)], color=f"C{i}", lw=1.2,
                ms=4 if len(steps) < 40 else 0, label=_short(name))
    steps, values = _values(run, q, TOTAL)
    ax.plot(steps, values, "--", color="k", lw=1.5, label="all layers")
    title = q.title
    if legend:
      ax.legend(fontsize=7, loc="best")
  _time_axes(ax, last_step, title, _unit(runs, q))


def _layer_axis(ax, names: List[str], labels: bool) -> None:
  """Layers down the y axis (the input side on top), the total last, below a white line."""
  ax.set_yticks(np.arange(len(names) + 1) + 0.5,
                [_short(n) for n in names] + ["all layers"] if labels else [], fontsize=7)
  ax.set_ylim(len(names) + 1, 0)
  ax.axhline(len(names), color="w" if ax.collections else "k", lw=2 if ax.collections else 0.5)


def _heatmap_panel(ax, run: Run, q: Quantity, names: List[str], last_step: int,
                   labels: bool) -> None:
  """Many layers: layer x step, each cell the value logged at its right edge's step."""
  rows = names + [TOTAL]
  steps = sorted({s for s, r in run.records.items() if any(f"{q.prefix}/{n}" in r for n in rows)})
  column = {s: j for j, s in enumerate(steps)}
  matrix = np.full((len(rows), len(steps)), np.nan)
  for i, name in enumerate(rows):
    s, v = _values(run, q, name)
    matrix[i, [column[x] for x in s]] = v
  limits = dict(vmin=0.0, vmax=1.0) if q.prefix == "mask_density" else (
      dict(vmin=0.0) if q.prefix != "beta" else {})
  mesh = ax.pcolormesh(np.concatenate([[0], steps]), np.arange(len(rows) + 1),
                       np.ma.masked_invalid(matrix), cmap=q.cmap, **limits)
  _time_axes(ax, last_step, q.title)
  _layer_axis(ax, names, labels)
  ax.grid(False)
  colorbar = ax.figure.colorbar(mesh, ax=ax, pad=0.01, fraction=0.05)
  colorbar.ax.tick_params(labelsize=7)
  if _unit([run], q):
    colorbar.set_label(_unit([run], q), fontsize=7)


def _bars_panel(ax, runs, colors, what: str, names: List[str], labels: bool = True) -> None:
  """Final value per layer, a bar per run; horizontal (layers down) beside the heatmaps."""
  finals, sources = zip(*[final_per_layer(run, what) for run in runs])
  rows = names + [TOTAL]
  horizontal = len(names) > MAX_LINE_LAYERS
  width = 0.8 / len(runs)
  for k, (values, color) in enumerate(zip(finals, colors)):
    at = np.arange(len(rows)) + (k - (len(runs) - 1) / 2) * width
    heights = [values.get(n, np.nan) for n in rows]
    fill = color if len(runs) > 1 else ["C0"] * len(names) + ["k"]
    if horizontal:
      bars = ax.barh(at + 0.5, heights, width, color=fill)
    else:
      bars = ax.bar(at, heights, width, color=fill)
    if len(rows) * len(runs) <= 3 * MAX_LINE_LAYERS:
      ax.bar_label(bars, fmt="%.3f", fontsize=7, padding=1)
  if horizontal:
    _layer_axis(ax, names, labels)
    ax.margins(x=0.12)
    ax.grid(axis="x", alpha=0.3)
  else:
    ax.set_xticks(np.arange(len(rows)), [_short(n) for n in names] + ["all layers"], fontsize=8)
    ax.set_xlim(-0.6, len(rows) - 0.4)
    ax.margins(y=0.12)
    ax.grid(axis="y", alpha=0.3)
  title = ("final sign flips vs initialization" if what == "sign_flips_vs_init" else
           f"final density ({' / '.join(sorted(set(sources)))})")
  ax.set_title(title, fontsize=10)
  ax.tick_params(labelsize=7)


def _legend_panel(ax, entries: List[str]) -> None:
  """The overlay's legend, in a row of its own: a colour per run."""
  ax.axis("off")
  ax.legend([Line2D([], [], color=f"C{k % 10}", lw=3) for k in range(len(entries))], entries,
            loc="center", fontsize=9, frameon=False)


class Row(NamedTuple):
  height: float  # Inches.
  columns: int
  panels: List[Tuple[str, Panel]]  # (what it shows, draws it into an Axes).


def layout(runs: Sequence[Run]) -> List[Row]:
  """The figure's rows of panels; a panel whose data no run has is not among them."""
  several = len(runs) > 1
  colors = [f"C{i % 10}" for i in range(len(runs))]
  last_step = max(max(run.records) for run in runs)
  names = sorted({n for q in QUANTITIES for n in layers(runs, q.prefix)}, key=_layer_order)
  many = len(names) > MAX_LINE_LAYERS
  heatmaps = many and not several
  training = _training_panels(runs, colors, last_step)
  rows = [Row(3.0, 3, list(zip(("loss", "accuracy", "learning rate"), training)))]
  panels = []
  for q in (q for q in QUANTITIES if layers(runs, q.prefix)):
    kwargs = dict(q=q, names=names, last_step=last_step)
    if heatmaps:  # Layer names on the first panel of each row only.
      panel = functools.partial(_heatmap_panel, run=runs[0], labels=len(panels) % 3 == 0, **kwargs)
    else:  # The layers' legend on the first panel only.
      panel = functools.partial(_lines_panel, runs=runs, colors=colors, legend=not panels, **kwargs)
    panels.append((q.prefix, panel))
  height = 0.14 * (len(names) + 1) + 1.0 if heatmaps else 3.0
  rows += [Row(height, 3, panels[i:i + 3]) for i in range(0, len(panels), 3)]
  finals = ["sign_flips_vs_init"]
  if any(is_sparse(run) and final_per_layer(run, "density")[0] for run in runs):
    finals.insert(0, "density")
  bars = [(f"final {what}", functools.partial(_bars_panel, runs=runs, colors=colors, what=what,
                                              names=names, labels=j == 0))
          for j, what in enumerate(finals)]
  if many:  # Horizontal bars, layers down as in the heatmaps.
    height = (0.14 if not several else 0.06 + 0.08 * len(runs)) * (len(names) + 1) + 1.0
    rows.append(Row(height, 2 if several else 3, bars))
  else:
    rows.append(Row(3.0, 2, bars))
  return rows


def draw(runs: Sequence[Run], out: str) -> str:
  """Draws ``runs`` (one, or several overlaid) into the PNG ``out``; returns ``out``."""
  several = len(runs) > 1
  rows = layout(runs)
  labels = run_labels(runs)
  if several:
    heading = f"{len(runs)} runs; over time, each line is a run's total over all layers"
    notes = [", ".join(missing_notes(run)) for run in runs]
    entries = [f"{label}   ({note})" if note else label for label, note in zip(labels, notes)]
    rows.insert(0, Row(0.25 * len(runs) + 0.2, 1, [("legend", functools.partial(
        _legend_panel, entries=entries))]))
  else:
    notes = missing_notes(runs[0])
    heading = (f"{os.path.basename(os.path.normpath(runs[0].workdir))}: {describe(runs[0])}"
               + (f"\n({'; '.join(notes)})" if notes else ""))
  fig = Figure(figsize=(15, sum(r.height for r in rows) + 0.8), dpi=100, layout="constrained")
  fig.suptitle(heading, fontsize=11)
  grid = fig.add_gridspec(len(rows), 1, height_ratios=[r.height for r in rows])
  for i, row in enumerate(rows):
    cells = grid[i].subgridspec(1, row.columns)
    for j, (_, panel) in enumerate(row.panels):
      panel(fig.add_subplot(cells[0, j]))
  buffer = io.BytesIO()
  FigureCanvasAgg(fig).print_png(buffer)
  out_path = epath.Path(out)
  out_path.parent.mkdir(parents=True, exist_ok=True)
  tmp = epath.Path(str(out) + ".tmp")  # Complete or absent, like the trainer's other files.
  tmp.write_bytes(buffer.getvalue())
  tmp.replace(out_path)
  return str(out)


def write_run_report(workdir: str, summary: Optional[Dict[str, Any]] = None) -> str:
  """Draws ``workdir/report.png`` for the run in ``workdir``; returns its path.

  The trainer calls it at the end of a run (process 0), with the summary it is about to write
  as summary.json; otherwise summary.json is read if there.
  """
  return draw([load_run(workdir, summary)], str(epath.Path(workdir) / REPORT_FILE))


def main(argv: Optional[Sequence[str]] = None) -> int:
  parser = argparse.ArgumentParser(
      prog="python -m signin_jax.report",
      description="Draws a run's report figure; several runs are overlaid in one figure.")
  parser.add_argument("workdirs", nargs="+", metavar="WORKDIR",
                      help="workdirs of train_and_evaluate runs (metrics.jsonl, config.json)")
  parser.add_argument("--out", help=f"the PNG to write (default: WORKDIR/{REPORT_FILE} for one "
                      f"run, ./{REPORT_FILE} for several)")
  args = parser.parse_args(argv)
  try:
    runs = [load_run(w) for w in args.workdirs]
  except ReportError as e:
    parser.exit(2, f"{parser.prog}: error: {e}\n")
  out = args.out or (str(epath.Path(args.workdirs[0]) / REPORT_FILE) if len(runs) == 1
                     else REPORT_FILE)
  print(draw(runs, out))
  return 0


if __name__ == "__main__":
  sys.exit(main())
