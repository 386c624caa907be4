"""The sweep runner and plots end to end on the smoke grid (real Fashion-MNIST, 3 steps, width 8)."""
import csv
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from signin_jax import cpu_speed

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "experiments"))
import sweep  # pylint: disable=g-import-not-at-top

SMOKE_GRID = os.path.join(REPO, "experiments", "grids", "smoke.py")
CONFIG = "configs/fashion_mnist_quickstart.py"


def _sweep(*args):
  return subprocess.run([sys.executable, os.path.join(REPO, "experiments", "sweep.py"), *args],
                        cwd=REPO, capture_output=True, text=True, timeout=300)


def _grid_with_failing_cell(directory):
  """A grid named 'smoke' (so it shares the smoke grid's results directory) whose first cell
  fails config validation, followed by the smoke grid's cells."""
  os.makedirs(directory)
  path = os.path.join(directory, "smoke.py")
  with open(path, "w") as f:
    f.write(f"""
import importlib.util
_spec = importlib.util.spec_from_file_location("real_smoke", {SMOKE_GRID!r})
_smoke = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_smoke)

def get_grid():
  bad = {{"name": "bad_cell", "config": {CONFIG!r}, "seeds": [0],
         "overrides": {{**_smoke.COMMON, "signin.inner_state_at_reset": "bogus"}}}}
  return [bad] + _smoke.get_grid()
""")
  return path


@pytest.mark.slow
def test_sweep_end_to_end(tmp_path, fashion_mnist_dir):
  roots = [f"--results_root={tmp_path / 'results'}", f"--workdir_root={tmp_path / 'work'}",
           f"--extra_override=data_dir={fashion_mnist_dir}"]
  results_dir = tmp_path / "results" / "smoke"

  # 1. A failing cell is reported, the exit code says so, and the other runs still finish.
  first = _sweep("--grid", _grid_with_failing_cell(str(tmp_path / "grid")), "--parallel", "2",
                 *roots)
  assert first.returncode == 1, first.stdout + first.stderr
  assert "FAILED bad_cell seed 0: main.py exited with" in first.stdout
  assert "inner_state_at_reset" in first.stdout  # The log tail names the bad field.
  assert not (results_dir / "bad_cell__seed0.json").exists()
  cells = sweep.load_grid(SMOKE_GRID)
  for cell in cells:
    for seed in cell.seeds:
      assert f"done {cell.name} seed {seed}" in first.stdout, first.stdout

  # 2. Rerun of the smoke grid: everything has results, no run is started.
  second = _sweep("--grid", SMOKE_GRID, "--parallel", "2", *roots)
  assert second.returncode == 0, second.stdout + second.stderr
  assert "4 already have results, 0 to run" in second.stdout
  assert "[sweep] start" not in second.stdout

  # Each results JSON agrees with its run's own summary.json and metrics.jsonl.
  records = {}
  for cell in cells:
    for seed in cell.seeds:
      record = json.loads((results_dir / f"{cell.name}__seed{seed}.json").read_text())
      workdir = tmp_path / "work" / "smoke" / cell.name / f"seed{seed}"
      summary = json.loads((workdir / "summary.json").read_text())
      assert record["test_accuracy"] == summary["test_accuracy"]
      assert record["sparsity"] == summary["sparsity"]["total"]["sparsity"]
      assert record["sign_flips_per_layer"] == summary["sign_flips_vs_init"]
      assert record["wall_time_seconds"] == summary["wall_time_seconds"]
      assert record["overrides"] == cell.overrides and record["seed"] == seed
      assert record["extra_overrides"] == {"data_dir": fashion_mnist_dir}
      lines = [json.loads(l) for l in (workdir / "metrics.jsonl").read_text().splitlines()]
      betas = [(l["step"], l["beta/total"]) for l in lines if "beta/total" in l]
      assert [tuple(p) for p in record["beta_curves"].get("total", [])] == betas
      assert bool(betas) == cell.overrides["signin.enabled"]
      records[cell.name, seed] = record

  # 3. The tables: one row per cell, n seeds, mean and sample std of the JSONs' values.
  with open(results_dir / "results.csv") as f:
    rows = {row["cell"]: row for row in csv.DictReader(f)}
  assert list(rows) == [c.name for c in cells]
  for cell in cells:
    row = rows[cell.name]
    assert int(row["n"]) == len(cell.seeds) == 2
    for key in ("test_accuracy", "sparsity", "sign_flips", "wall_time_seconds"):
      values = np.array([records[cell.name, s][key] for s in cell.seeds])
      np.testing.assert_allclose(float(row[f"{key}_mean"]), values.mean(), rtol=1e-12)
      np.testing.assert_allclose(float(row[f"{key}_std"]), values.std(ddof=1), rtol=1e-9,
                                 atol=1e-15)
  markdown = (results_dir / "results.md").read_text()
  assert markdown.count("| 2/2 |") == 2

  # --table_only rebuilds the tables without running anything.
  os.remove(results_dir / "results.md")
  rebuilt = _sweep("--grid", SMOKE_GRID, "--table_only", *roots)
  assert rebuilt.returncode == 0 and "[sweep] start" not in rebuilt.stdout
  assert (results_dir / "results.md").read_text() == markdown

  # 4. The plots.
  out = tmp_path / "figures"
  plotted = subprocess.run([sys.executable, os.path.join(REPO, "experiments", "plot.py"),
                            f"--results={results_dir}", f"--out={out}"],
                           capture_output=True, text=True, timeout=120)
  assert plotted.returncode == 0, plotted.stderr
  for name in ("accuracy_vs_sparsity.png", "sign_flips_per_layer.png", "beta_curves.png"):
    data = (out / name).read_bytes()
    assert data.startswith(b"\x89PNG") and len(data) > 5000, name


def test_mean_std_matches_numpy():
  values = [0.81, 0.79, 0.845]
  mean, std = sweep.mean_std(values)
  assert mean == pytest.approx(np.mean(values)) and std == pytest.approx(np.std(values, ddof=1))
  assert np.isnan(sweep.mean_std([0.5])[1]) and sweep.mean_std([0.5])[0] == 0.5


@pytest.mark.parametrize("change, message", [
    ({"seeds": []}, "'seeds' must be a non-empty list"),
    ({"seeds": [0, 0]}, "'seeds' must be a non-empty list of distinct ints"),
    ({"overrides": {"seed": 3}}, "set seeds through 'seeds'"),
    ({"config": "configs/nope.py"}, "does not exist"),
    ({"name": "a/b"}, "'name' must be"),
    ({"group": "other"}, "'group' must be one of"),
    ({"colour": 1}, "unknown keys ['colour']"),
])
def test_bad_cells_are_rejected(change, message):
  raw = {"name": "c", "config": CONFIG, "overrides": {}, "seeds": [0, 1], **change}
  with pytest.raises(ValueError, match=None) as error:
    sweep.parse_cell(0, raw)
  assert message in str(error.value)


def test_duplicate_cell_names_are_rejected(tmp_path):
  grid = tmp_path / "dup.py"
  grid.write_text("def get_grid():\n  c = {'name': 'x', 'config': %r, 'seeds': [0]}\n"
                  "  return [c, dict(c)]\n" % CONFIG)
  with pytest.raises(ValueError, match=r"repeated: \['x'\]"):
    sweep.load_grid(str(grid))


def test_override_formatting_round_trips_through_the_command_line(monkeypatch):
  run = sweep.Run(sweep.Cell("c", CONFIG, {"sparsity": 0.95, "signin.enabled": False,
                                           "mask.dense_layers": ("Dense_0",), "model": "small_cnn"},
                             (0,), "m"), seed=4)
  command = sweep.run_command(run, "/w", {"data_dir": "/d"})
  assert command[2:] == [f"--config={os.path.join(REPO, CONFIG)}", "--workdir=/w",
                         "--config.sparsity=0.95", "--config.signin.enabled=False",
                         "--config.mask.dense_layers=('Dense_0',)", "--config.model=small_cnn",
                         "--config.data_dir=/d", "--config.seed=4"]
  # ml_collections parses the text back to the values the grid gave.
  from absl import flags  # pylint: disable=g-import-not-at-top
  from ml_collections import config_flags  # pylint: disable=g-import-not-at-top
  flag_values = flags.FlagValues()
  parsed = config_flags.DEFINE_config_file("config", None, "", flag_values=flag_values)
  argv = ["prog", command[2]] + command[4:-2]
  monkeypatch.setattr(sys, "argv", argv)  # config_flags reads the overrides from sys.argv.
  flag_values(argv)
  for key, value in run.cell.overrides.items():
    node = parsed.value
    for part in key.split("."):
      node = node[part]
    assert node == value and type(node) is type(value), key
  assert sweep.parse_extra_overrides(["a.b=x=y"]) == {"a.b": "x=y"}
  with pytest.raises(ValueError, match="key=value"):
    sweep.parse_extra_overrides(["seed=3"])


def test_results_made_with_other_overrides_are_reported_stale(tmp_path):
  cell = sweep.Cell("c", CONFIG, {"sparsity": 0.9, "mask.dense_layers": ("x",)}, (0,), "m")
  run = sweep.Run(cell, 0)
  path = tmp_path / "c__seed0.json"
  path.write_text(json.dumps({"overrides": {"sparsity": 0.9, "mask.dense_layers": ["x"]}}))
  assert sweep.stale_message(str(path), run) is None  # JSON lists equal the grid's tuples.
  path.write_text(json.dumps({"overrides": {"sparsity": 0.8, "mask.dense_layers": ["x"]}}))
  assert "delete it and the run's workdir to rerun" in sweep.stale_message(str(path), run)


def _record(cell, seed, accuracy, flips, *, signin, group="main", **signin_overrides):
  overrides = {"sparsity": 0.9, "mask.distribution": "erk", "signin.enabled": signin,
               **signin_overrides}
  return {"cell": cell, "seed": seed, "method": cell, "group": group, "overrides": overrides,
          "signin": {"enabled": signin}, "target_sparsity": 0.9, "test_accuracy": accuracy,
          "sign_flips": flips}


def test_paired_differences_match_the_same_seeds_runs():
  import paired  # pylint: disable=g-import-not-at-top
  records = [
      _record("pai", 0, 0.80, 0.30, signin=False), _record("pai", 1, 0.90, 0.20, signin=False),
      _record("signin", 0, 0.83, 0.40, signin=True), _record("signin", 1, 0.89, 0.25, signin=True),
      _record("noreset", 1, 0.95, 0.25, signin=True, group="ablation",
              **{"signin.reset_every_epochs": 0}),
      # Another mask: no partner, so it appears in no row.
      {**_record("pai_other", 0, 0.5, 0.1, signin=True), "overrides": {"sparsity": 0.5}},
  ]
  rows = {r["cell"]: r for r in paired.paired_rows(records)}
  assert set(rows) == {"signin", "noreset"}
  main = rows["signin"]
  assert main["reference"] == "pai" and main["n"] == 2 and main["helped"] == 1
  assert main["difference"][0] == pytest.approx(1.0)  # (+3 - 1) / 2 percentage points
  assert main["difference"][1] == pytest.approx(np.std([3.0, -1.0], ddof=1))
  assert main["flips_difference"][0] == pytest.approx(7.5)
  ablation = rows["noreset"]
  assert ablation["reference"] == "signin" and ablation["n"] == 1
  assert ablation["difference"][0] == pytest.approx(6.0)
  assert "| noreset | signin | 90 | 1 | 95.00 | 89.00 | +6.00 | 1/1 | +0.00 |" in (
      paired.markdown(paired.paired_rows(records)))


def test_transfer_runs_pair_with_their_source_and_with_their_own_group():
  import paired  # pylint: disable=g-import-not-at-top
  transfer = {"init_from.workdir": "{workdir:gmp}"}
  records = [
      _record("gmp", 0, 0.80, 0.10, signin=False), _record("gmp", 1, 0.82, 0.10, signin=False),
      _record("gmp_signin", 0, 0.70, 0.10, signin=True),
      _record("reinit", 0, 0.84, 0.20, signin=False, group="ablation", **transfer),
      _record("reinit", 1, 0.83, 0.20, signin=False, group="ablation", **transfer),
      _record("reinit_signin", 0, 0.85, 0.30, signin=True, group="ablation", **transfer),
  ]
  rows = {(r["cell"], r["reference"]): r for r in paired.paired_rows(records)}
  assert set(rows) == {("gmp_signin", "gmp"), ("reinit", "gmp"), ("reinit_signin", "gmp"),
                       ("reinit_signin", "reinit")}
  to_source = rows[("reinit", "gmp")]  # seed k against the source's seed k
  assert to_source["n"] == 2 and to_source["helped"] == 2
  assert to_source["difference"][0] == pytest.approx(2.5)  # (+4 + 1) / 2 pp
  with_signin = rows[("reinit_signin", "reinit")]  # same group, differs only in signin.*
  assert with_signin["n"] == 1 and with_signin["difference"][0] == pytest.approx(1.0)


def _dependency_grid(tmp_path, dependent_seeds=(0, 1), source="src"):
  grid = tmp_path / "deps.py"
  grid.write_text(
      "def get_grid():\n"
      f"  return [{{'name': 'use', 'config': {CONFIG!r}, 'seeds': {list(dependent_seeds)!r},\n"
      f"           'overrides': {{'init_from.workdir': '{{workdir:{source}}}'}}}},\n"
      f"          {{'name': 'src', 'config': {CONFIG!r}, 'seeds': [0, 1]}}]\n")
  return str(grid)


def test_a_cell_naming_another_runs_after_it_with_its_workdir(tmp_path, monkeypatch):
  cells = sweep.load_grid(_dependency_grid(tmp_path))
  order = []

  def fake_execute(run, *, workdir, results_dir, extra_overrides, cpus, workdir_of):
    command = sweep.run_command(run, workdir, extra_overrides, workdir_of)
    order.append((run.cell.name, run.seed, command))
    with open(sweep.results_path(results_dir, run), "w") as f:
      json.dump({"overrides": run.cell.overrides}, f)

  monkeypatch.setattr(sweep, "execute", fake_execute)
  failures = sweep.run_grid(cells, name="deps", results_root=str(tmp_path / "results"),
                            workdir_root="/w", parallel=2, extra_overrides={}, dry_run=False)
  assert not failures
  assert [(c, s) for c, s, _ in order] == [("src", 0), ("src", 1), ("use", 0), ("use", 1)]
  for cell, seed, command in order:
    if cell == "use":  # the source's workdir of the same seed
      assert f"--config.init_from.workdir=/w/deps/src/seed{seed}" in command


def test_a_failed_source_leaves_its_dependents_unrun(tmp_path, monkeypatch):
  cells = sweep.load_grid(_dependency_grid(tmp_path))
  monkeypatch.setattr(sweep, "execute", lambda run, **kw: "src failed" if run.cell.name == "src"
                      else pytest.fail("a dependent ran without its source"))
  failures = sweep.run_grid(cells, name="deps", results_root=str(tmp_path / "results"),
                            workdir_root="/w", parallel=1, extra_overrides={}, dry_run=False)
  assert failures[:2] == ["src failed", "src failed"]
  assert any("use seed 0: not run, since ['src']" in f for f in failures)


@pytest.mark.parametrize("kwargs, message", [
    (dict(source="nope"), "names {workdir:nope}, which is no cell"),
    (dict(dependent_seeds=(0, 5)), "needs cell 'src' for seeds [5]"),
])
def test_bad_dependencies_are_rejected(tmp_path, kwargs, message):
  with pytest.raises(ValueError) as error:
    sweep.load_grid(_dependency_grid(tmp_path, **kwargs))
  assert message in str(error.value)


@pytest.mark.parametrize("parallel, cpus, want", [
    (1, [0, 1], [None]),  # One run at a time: not pinned.
    (2, [1, 0], [(0,), (1,)]),
    (2, [0, 1, 2, 3, 4], [(0, 1), (2, 3, 4)]),
    (3, [3, 7, 9, 11, 12, 13, 14], [(3, 7), (9, 11), (12, 13, 14)]),
    (3, [4, 5], [(4,), (5,), (4,)]),  # More runs than CPUs: shared round robin.
])
def test_cpu_slots_split_the_available_cpus_among_the_concurrent_runs(parallel, cpus, want):
  assert sweep.cpu_slots(parallel, cpus) == want


# A stand-in for main.py: waits until both runs of the grid have started (so they run at the same
# time), then records its CPU affinity, its threads' and its environment.
_PINNED_RUN = """
import json, os, sys, threading, time
workdir = sys.argv[1]
os.makedirs(workdir, exist_ok=True)
open(os.path.join(workdir, "started"), "w").close()
root = os.path.dirname(workdir)
deadline = time.time() + 60
while sum(os.path.exists(os.path.join(root, d, "started")) for d in os.listdir(root)) < 2:
  assert time.time() < deadline
  time.sleep(0.05)
seen = {}
t = threading.Thread(target=lambda: seen.update(thread=sorted(os.sched_getaffinity(0))))
t.start(); t.join()
with open(os.path.join(workdir, "affinity.json"), "w") as f:
  json.dump({"main": sorted(os.sched_getaffinity(0)), **seen,
             "env": {k: os.environ.get(k) for k in ("XLA_FLAGS", "LD_PRELOAD", "OMP_NUM_THREADS")}}, f)
"""


def test_parallel_runs_are_pinned_to_their_own_cpus(tmp_path, monkeypatch):
  grid = tmp_path / "pinned.py"
  grid.write_text(f"def get_grid():\n  return [{{'name': 'cell', 'config': {CONFIG!r}, "
                  "'seeds': [0, 1]}]\n")
  monkeypatch.setattr(sweep, "run_command", lambda run, workdir, *args: [
      sys.executable, "-c", _PINNED_RUN, workdir])
  failures = sweep.run_grid(sweep.load_grid(str(grid)), name="pinned",
                            results_root=str(tmp_path / "results"),
                            workdir_root=str(tmp_path / "work"), parallel=2, extra_overrides={},
                            dry_run=False)
  assert len(failures) == 2 and all("without writing summary.json" in f for f in failures)
  seen = []
  for seed in (0, 1):
    with open(tmp_path / "work" / "pinned" / "cell" / f"seed{seed}" / "affinity.json") as f:
      seen.append(json.load(f))
  slots = sweep.cpu_slots(2, os.sched_getaffinity(0))
  # Both ran at once, each on its own group of CPUs, its threads too.
  assert sorted(tuple(s["main"]) for s in seen) == sorted(slots)
  assert all(s["thread"] == s["main"] for s in seen)
  expected = cpu_speed.environment(os.environ)  # The CPU settings main.py would apply.
  for s in seen:
    assert s["env"]["XLA_FLAGS"] == expected.get("XLA_FLAGS")
    assert s["env"]["LD_PRELOAD"] == expected.get("LD_PRELOAD")
    assert s["env"]["OMP_NUM_THREADS"] == str(len(s["main"]))
