"""experiments/plot.py on small synthetic sweeps: the bar figures' numbers, several --results
directories, the --cells filter, and skipping figures without the cells they need."""
import csv
import json
import os
import sys

import matplotlib.collections
from matplotlib.container import BarContainer
import matplotlib.pyplot as plt
import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "experiments"))
import plot  # pylint: disable=g-import-not-at-top

FIGURES = ("accuracy_vs_sparsity.png", "sign_flips_per_layer.png", "beta_curves.png",
           "method_pairs.png", "signs_sufficient.png")


def _runs(cell, method, sparsity, accuracies, group="main", overrides=None):
  """One record per accuracy (seeds 0, 1, ...) with every field the figures read."""
  return [{"cell": cell, "method": method, "group": group, "target_sparsity": sparsity,
           "test_accuracy": acc, "seed": seed, "overrides": overrides or {},
           "signin": {"enabled": method.endswith(plot.SIGNIN_SUFFIX)},
           "sign_flips_per_layer": {"dense1/kernel": 0.1, "total": 0.1},
           "beta_curves": {"total": [[0, 1.0], [10, 0.9]]}}
          for seed, acc in enumerate(accuracies)]


def _pairs_records():
  # Hand-computed: [0.80, 0.82, 0.84] -> 82 ± 2 %; [0.85, 0.87] -> 86 ± sqrt(2) % (ddof=1:
  # ddof=0 would give 1); [0.90, 0.90, 0.93] -> 91 ± sqrt(3) %.
  return (_runs("dense", "Dense", 0.0, [0.90, 0.90, 0.93])
          + _runs("a_s0.9", "A", 0.9, [0.80, 0.82, 0.84])
          + _runs("a_signin_s0.9", "A + Sign-In", 0.9, [0.85, 0.87])
          + _runs("b_s0.9", "B", 0.9, [0.70, 0.72, 0.74])
          + _runs("a_s0.95", "A", 0.95, [0.60, 0.62, 0.64])
          + _runs("a_signin_s0.95", "A + Sign-In", 0.95, [0.61, 0.63, 0.65]))


def _signs_records():
  """Source cells g_s and r_s; ablation cells on their masks ("signs" only from g_s)."""
  def on(source):
    return {"init_from.workdir": f"{{workdir:{source}}}"}
  return (_runs("g_s", "G", 0.9, [0.80, 0.82, 0.84])
          + _runs("r_s", "R", 0.9, [0.70, 0.71, 0.72])
          + _runs("g_mask_signs", "G mask, signs", 0.9, [0.85, 0.87], "ablation", on("g_s"))
          + _runs("g_mask_fresh", "G mask, fresh", 0.9, [0.78, 0.80, 0.82], "ablation",
                  on("g_s"))
          + _runs("r_mask_fresh", "R mask, fresh", 0.9, [0.74, 0.75, 0.76], "ablation",
                  on("r_s"))
          # Not drawn: an ablation without a source run, a main cell with a plain workdir.
          + _runs("noreset", "G, no resets", 0.9, [0.5, 0.5], "ablation")
          + _runs("other", "O", 0.9, [0.5, 0.5], "main", {"init_from.workdir": "/tmp/x"}))


def _check(bar, cell, n, mean, std):
  assert (bar.cell, bar.n) == (cell, n)
  assert bar.mean == pytest.approx(mean) and bar.std == pytest.approx(std)


def test_method_pairs_table():
  panels, dense = plot.method_pairs_table(_pairs_records())
  assert list(panels) == [0.9, 0.95]
  assert [row[0] for row in panels[0.9]] == ["A", "B"]
  (_, a, a_signin), (_, b, b_signin) = panels[0.9]
  _check(a, "a_s0.9", 3, 82, 2)
  _check(a_signin, "a_signin_s0.9", 2, 86, np.sqrt(2))
  assert a_signin.values == pytest.approx((85, 87))
  _check(b, "b_s0.9", 3, 72, 2)
  assert b_signin is None  # A method with one of the pair.
  [(_, a95, a95_signin)] = panels[0.95]
  _check(a95, "a_s0.95", 3, 62, 2)
  _check(a95_signin, "a_signin_s0.95", 3, 63, 2)
  [d] = dense
  _check(d, "dense", 3, 91, np.sqrt(3))


def _bar_data(ax):
  """(x, height, error bar low, error bar high) of every bar, by x."""
  bars = []
  for container in (c for c in ax.containers if isinstance(c, BarContainer)):
    segments = container.errorbar.lines[2][0].get_segments()
    for patch, seg in zip(container.patches, segments):
      bars.append((patch.get_x() + patch.get_width() / 2, patch.get_height(), seg[0][1],
                   seg[1][1]))
  return sorted(bars)


def _dots(ax):
  return sorted(float(y) for c in ax.collections
                if isinstance(c, matplotlib.collections.PathCollection)
                for y in c.get_offsets()[:, 1])


def test_method_pairs_figure_draws_the_table():
  fig = plot.method_pairs_figure(_pairs_records())
  try:
    ax90, ax95 = fig.axes
    # Bars by x: A without, A with, B without.
    heights = [(h, lo, hi) for _, h, lo, hi in _bar_data(ax90)]
    expected = [(82, 80, 84), (86, 86 - np.sqrt(2), 86 + np.sqrt(2)), (72, 70, 74)]
    assert np.allclose(heights, expected)
    assert _dots(ax90) == pytest.approx(sorted([80, 82, 84, 85, 87, 70, 72, 74]))
    assert [t.get_text() for t in ax90.texts] == ["n=2"]  # Only the cell with fewer seeds.
    assert not ax95.texts
    [dense] = [line for line in ax90.get_lines() if line.get_linestyle() == "--"]
    assert dense.get_ydata()[0] == pytest.approx(91)
    low, high = ax90.get_ylim()
    assert 60 < low < 70 and 91 < high < 100  # Zoomed to the data, dense line included.
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    assert sorted(legend) == ["Dense", "with Sign-In", "without Sign-In"]
  finally:
    plt.close(fig)


def test_signs_sufficient_table():
  variants, groups = plot.signs_sufficient_table(_signs_records())
  assert variants == [plot.SOURCE_BAR, "signs", "fresh"]
  assert [method for method, _ in groups] == ["G", "R"]
  g, r = (bars for _, bars in groups)
  assert list(g) == [plot.SOURCE_BAR, "signs", "fresh"] and list(r) == [plot.SOURCE_BAR, "fresh"]
  _check(g[plot.SOURCE_BAR], "g_s", 3, 82, 2)
  _check(g["signs"], "g_mask_signs", 2, 86, np.sqrt(2))
  _check(g["fresh"], "g_mask_fresh", 3, 80, 2)
  _check(r[plot.SOURCE_BAR], "r_s", 3, 71, 1)
  _check(r["fresh"], "r_mask_fresh", 3, 75, 1)


def test_signs_sufficient_figure_keeps_order_and_colour_across_groups():
  fig = plot.signs_sufficient_figure(_signs_records())
  try:
    [ax] = fig.axes
    heights = [(round(x, 6), h, lo, hi) for x, h, lo, hi in _bar_data(ax)]
    # Group G at x 0 (three bars), group R at x 1 (source, then a gap where "signs" would be).
    width = 0.8 / 3
    expected = [(-width, 82, 80, 84), (0, 86, 86 - np.sqrt(2), 86 + np.sqrt(2)),
                (width, 80, 78, 82), (1 - width, 71, 70, 72), (1 + width, 75, 74, 76)]
    assert np.allclose(heights, expected)
    colour = {c.get_label(): {tuple(p.get_facecolor()) for p in c.patches}
              for c in ax.containers if isinstance(c, BarContainer)}
    assert list(colour) == [plot.SOURCE_BAR, "signs", "fresh"]
    assert len(colour["fresh"]) == 1 and len(set().union(*colour.values())) == 3
    assert _dots(ax) == pytest.approx(sorted([80, 82, 84, 85, 87, 78, 80, 82, 70, 71, 72,
                                              74, 75, 76]))
    assert [t.get_text() for t in ax.texts] == ["n=2"]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["G", "R"]
  finally:
    plt.close(fig)


def test_figures_without_their_cells_are_skipped(tmp_path):
  dense_only = _runs("dense", "Dense", 0.0, [0.9, 0.91])
  path = str(tmp_path / "x.png")
  assert not plot.plot_method_pairs(dense_only, path)
  assert not plot.plot_signs_sufficient(_pairs_records(), path)
  assert not os.path.exists(path)


def test_two_cells_for_one_bar_are_refused():
  twice = _pairs_records() + _runs("a_again_s0.9", "A", 0.9, [0.5, 0.5])
  with pytest.raises(ValueError, match="'a_s0.9' and 'a_again_s0.9' would draw the same bar"):
    plot.method_pairs_table(twice)


def _write(directory, records, grid_order=()):
  """Per-run JSONs as experiments/sweep.py names them, and a results.csv in grid order."""
  os.makedirs(directory, exist_ok=True)
  for r in records:
    with open(os.path.join(directory, f"{r['cell']}__seed{r['seed']}.json"), "w") as f:
      json.dump(r, f)
  if grid_order:
    with open(os.path.join(directory, "results.csv"), "w", newline="") as f:
      writer = csv.DictWriter(f, fieldnames=["cell", "method"])
      writer.writeheader()
      writer.writerows({"cell": c, "method": "?"} for c in grid_order)
  return str(directory)


def test_load_records_concatenates_orders_and_filters(tmp_path):
  first = _write(tmp_path / "one", _pairs_records(),
                 grid_order=["dense", "b_s0.9", "a_s0.9"])  # Others: by file name, after.
  second = _write(tmp_path / "two", _signs_records())
  records = plot.load_records([first, second])
  assert len(records) == len(_pairs_records()) + len(_signs_records())
  cells = list(plot._by_cell(records))  # pylint: disable=protected-access
  assert cells[:5] == ["dense", "b_s0.9", "a_s0.9", "a_s0.95", "a_signin_s0.95"]
  assert cells[6:8] == ["g_mask_fresh", "g_mask_signs"]  # The second directory follows.
  # The filter matches whole names: "a_s0.9" does not keep a_s0.95.
  kept = plot.load_records([first, second], cells=r"dense|a_s0\.9|g_.*")
  assert list(plot._by_cell(kept)) == [  # pylint: disable=protected-access
      "dense", "a_s0.9", "g_mask_fresh", "g_mask_signs", "g_s"]
  with pytest.raises(ValueError, match="matches no cell"):
    plot.load_records([first], cells="nothing")
  with pytest.raises(ValueError, match="'dense' seed 0 is in more than one"):
    plot.load_records([first, first])
  with pytest.raises(ValueError, match="holds no per-run results JSONs"):
    plot.load_records([first, str(tmp_path / "empty")])


def test_main_draws_every_figure_from_several_directories(tmp_path, capsys):
  first = _write(tmp_path / "one", _pairs_records())
  second = _write(tmp_path / "two", _signs_records())
  out = tmp_path / "figures"
  assert plot.main(["--results", first, "--results", second, "--out", str(out),
                    "--cells", "(?!b_).*"]) == 0
  printed = capsys.readouterr().out
  for name in FIGURES:
    assert (out / name).read_bytes().startswith(b"\x89PNG"), name
    assert f"wrote {out / name}" in printed
  assert "| a_signin_s0.9 | A + Sign-In | 2 | 86.00 | 1.41 |" in printed  # First directory.
  assert "| g_mask_signs | G mask, signs | 2 | 86.00 | 1.41 |" in printed  # Second one.
  assert "b_s0.9" not in printed  # Filtered out.

  # The comma form is the same list; without the second directory there is nothing to draw
  # for signs_sufficient.png (and the old single-directory usage works).
  comma = tmp_path / "comma"
  assert plot.main(["--results", f"{first},{second}", "--out", str(comma)]) == 0
  assert sorted(os.listdir(comma)) == sorted(FIGURES)
  single = tmp_path / "single"
  assert plot.main(["--results", first, "--out", str(single)]) == 0
  assert "nothing to draw for signs_sufficient.png" in capsys.readouterr().out
  assert sorted(os.listdir(single)) == sorted(set(FIGURES) - {"signs_sufficient.png"})


@pytest.mark.parametrize("args, message", [
    (["--cells", "("], "missing ), unterminated subpattern"),
    (["--cells", "zzz"], "matches no cell"),
])
def test_main_reports_bad_selections(tmp_path, capsys, args, message):
  results = _write(tmp_path / "one", _pairs_records())
  with pytest.raises(SystemExit):
    plot.main(["--results", results, "--out", str(tmp_path / "out"), *args])
  assert message in capsys.readouterr().err
