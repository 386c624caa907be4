"""Runs a grid of training configs x seeds through `main.py`, resumably, and tabulates the results.

    python experiments/sweep.py --grid experiments/grids/fashion_mnist_study.py --parallel 2
    python experiments/sweep.py --grid experiments/grids/fashion_mnist_study.py --dry_run
    python experiments/sweep.py --grid experiments/grids/fashion_mnist_study.py --table_only

A grid file defines ``get_grid()`` returning a list of cells, each a dict::

    {"name": "pai_erk_s0.9",                     # unique; used in paths
     "config": "configs/fashion_mnist_quickstart.py",
     "overrides": {"sparsity": 0.9, "signin.enabled": False},   # --config.<key>=<value>
     "seeds": [0, 1, 2],                         # the same seeds across methods: paired masks/inits
     "method": "PaI random ERK",                 # optional: the curve this cell belongs to in plots
     "group": "main"}                            # optional: 'main' (default) or e.g. 'ablation'

An override value may name another cell's run of the same seed, ``"{workdir:<cell>}"``, e.g.
``{"init_from.workdir": "{workdir:rigl_s0.9}"}`` (a run that starts from the mask of another):
it becomes that run's workdir, and the run waits until that run has its results.

Every (cell, seed) is one run of ``python main.py --config=<config> --workdir=<workdir>
--config.seed=<seed> --config.<key>=<value> ...`` in a subprocess, with the workdir
``<workdir_root>/<grid>/<cell>/seed<k>`` (checkpoints, logs; not meant for git). When a run has
finished, its small summary goes to ``<results_root>/<grid>/<cell>__seed<k>.json`` (meant for git):

* a run whose results JSON exists is skipped, so a later invocation, on this or a fresh machine
  with the results checked out, runs only what is missing;
* a run stopped half-way resumes from its workdir's checkpoints (the trainer's own resume);
* a results JSON made with other overrides than the grid now gives is reported as stale (and
  counted as a failure) but not rerun: delete it and its workdir to rerun that (cell, seed);
* a failed run is reported (with the tail of its log) and the others go on; the exit code is 1
  if any run failed.

At the end ``results.md`` and ``results.csv`` in the same directory hold one row per cell: mean
and sample standard deviation (ddof=1; empty for a single seed) over its seeds of the test
accuracy, the final measured sparsity, the fraction of unmasked weights whose sign differs from
the initialization, and the wall time, with the number of seeds found.

Every run gets the CPU settings of ``signin_jax/cpu_speed.py`` (README: set-up; off with
``SIGNIN_JAX_CPU_SETTINGS=0``). With ``--parallel N`` (N > 1) each of the N concurrent runs is
pinned to its own share of the CPUs this sweep may use (CPU affinity, which XLA's and
tf.data's thread pools follow; TF/OpenMP thread counts set to match), so they share the cores
instead of oversubscribing them: with C CPUs, N <= C runs get disjoint groups of C // N or
more CPUs; N > C runs share them, N / C runs per CPU. Each run's log (``sweep.log``) starts with
its command, pinning included.
"""

import argparse
import concurrent.futures
import csv
import dataclasses
import importlib.util
import json
import math
import os
import queue
import re
import subprocess
import sys
import threading
import time
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from signin_jax import cpu_speed

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_RESULTS_ROOT = os.path.join(REPO_ROOT, "experiments", "results")
DEFAULT_WORKDIR_ROOT = os.path.join(REPO_ROOT, "workdirs", "sweeps")
GROUPS = ("main", "ablation")
_NAME_PATTERN = re.compile(r"^[A-Za-z0-9_.+-]+$")
_LOG_TAIL_LINES = 15
_DEPENDENCY = re.compile(r"\{workdir:([A-Za-z0-9_.+-]+)\}")

# Columns of the results table: (key in the results JSON, CSV stem, markdown header, format).
STATISTICS = (
    ("test_accuracy", "test_accuracy", "test accuracy (%)", lambda x: f"{100 * x:.2f}"),
    ("sparsity", "sparsity", "sparsity (%)", lambda x: f"{100 * x:.2f}"),
    ("sign_flips", "sign_flips", "sign flips vs init (%)", lambda x: f"{100 * x:.2f}"),
    ("wall_time_seconds", "wall_time_seconds", "wall time (s)", lambda x: f"{x:.0f}"),
)


@dataclasses.dataclass(frozen=True)
class Cell:
  """One configuration of the grid, run once per seed."""
  name: str
  config: str
  overrides: Dict[str, Any]
  seeds: Sequence[int]
  method: str
  group: str = "main"


@dataclasses.dataclass(frozen=True)
class Run:
  cell: Cell
  seed: int


def _fail(message: str):
  raise ValueError(message)


def parse_cell(index: int, raw: Any) -> Cell:
  """Checks one grid entry and returns it as a :class:`Cell` (config path made absolute)."""
  where = f"grid cell #{index}"
  if not isinstance(raw, dict):
    _fail(f"{where} must be a dict, got {type(raw).__name__}.")
  allowed = {"name", "config", "overrides", "seeds", "method", "group"}
  unknown = sorted(set(raw) - allowed)
  if unknown:
    _fail(f"{where} has unknown keys {unknown}; allowed: {sorted(allowed)}.")
  name = raw.get("name")
  if not isinstance(name, str) or not _NAME_PATTERN.match(name):
    _fail(f"{where}: 'name' must be a non-empty string of letters, digits and _.+-, got {name!r}.")
  where = f"grid cell {name!r}"
  config = raw.get("config")
  if not isinstance(config, str):
    _fail(f"{where}: 'config' must be a path to a config file, got {config!r}.")
  config_path = config if os.path.isabs(config) else os.path.join(REPO_ROOT, config)
  if not os.path.isfile(config_path):
    _fail(f"{where}: config file {config!r} does not exist (paths are relative to {REPO_ROOT}).")
  overrides = raw.get("overrides", {})
  if not isinstance(overrides, dict) or not all(isinstance(k, str) for k in overrides):
    _fail(f"{where}: 'overrides' must be a dict of config field -> value, got {overrides!r}.")
  if "seed" in overrides:
    _fail(f"{where}: set seeds through 'seeds', not overrides['seed'].")
  seeds = raw.get("seeds")
  if (not isinstance(seeds, (list, tuple)) or not seeds
      or not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds)
      or len(set(seeds)) != len(seeds)):
    _fail(f"{where}: 'seeds' must be a non-empty list of distinct ints, got {seeds!r}.")
  method = raw.get("method", name)
  if not isinstance(method, str) or not method:
    _fail(f"{where}: 'method' must be a non-empty string, got {method!r}.")
  group = raw.get("group", "main")
  if group not in GROUPS:
    _fail(f"{where}: 'group' must be one of {GROUPS}, got {group!r}.")
  return Cell(name=name, config=os.path.relpath(config_path, REPO_ROOT), overrides=dict(overrides),
              seeds=tuple(seeds), method=method, group=group)


def dependencies(cell: Cell) -> List[str]:
  """The cells whose workdirs (same seed) ``cell``'s overrides name."""
  return sorted({name for v in cell.overrides.values() if isinstance(v, str)
                 for name in _DEPENDENCY.findall(v)})


def source_cell(overrides: Dict[str, Any]) -> Optional[str]:
  """The cell a run started from: ``<cell>`` if ``init_from.workdir`` is exactly
  ``"{workdir:<cell>}"``, else None (experiments/paired.py and plot.py pair and group by it)."""
  match = _DEPENDENCY.fullmatch(str(overrides.get("init_from.workdir", "")))
  return match.group(1) if match else None


def _check_dependencies(cells: Sequence[Cell], path: str) -> None:
  by_name = {c.name: c for c in cells}
  for cell in cells:
    for name in dependencies(cell):
      if name not in by_name:
        _fail(f"--grid {path!r}: cell {cell.name!r} names {{workdir:{name}}}, which is no cell "
              "of the grid.")
      missing = sorted(set(cell.seeds) - set(by_name[name].seeds))
      if missing:
        _fail(f"--grid {path!r}: cell {cell.name!r} needs cell {name!r} for seeds {missing}, "
              "which that cell does not run.")
      if name == cell.name or cell.name in dependencies(by_name[name]):
        _fail(f"--grid {path!r}: cells {cell.name!r} and {name!r} depend on each other.")


def load_grid(path: str) -> List[Cell]:
  """Imports the grid file at ``path`` and returns its checked cells (names unique)."""
  if not os.path.isfile(path):
    _fail(f"--grid {path!r} does not exist.")
  spec = importlib.util.spec_from_file_location(f"sweep_grid_{grid_name(path)}", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  if not hasattr(module, "get_grid"):
    _fail(f"--grid {path!r} defines no get_grid().")
  cells = [parse_cell(i, raw) for i, raw in enumerate(module.get_grid())]
  if not cells:
    _fail(f"--grid {path!r}: get_grid() returned no cells.")
  names = [c.name for c in cells]
  duplicates = sorted({n for n in names if names.count(n) > 1})
  if duplicates:
    _fail(f"--grid {path!r}: cell names must be unique; repeated: {duplicates}.")
  _check_dependencies(cells, path)
  return cells


def grid_name(path: str) -> str:
  return os.path.splitext(os.path.basename(path))[0]


def parse_extra_overrides(items: Sequence[str]) -> Dict[str, str]:
  """``['data_dir=/x', 'width=8']`` -> ``{'data_dir': '/x', 'width': '8'}`` (values verbatim)."""
  out = {}
  for item in items:
    key, sep, value = item.partition("=")
    if not sep or not key or key == "seed":
      _fail(f"--extra_override must be key=value with key a config field other than seed, "
            f"got {item!r}.")
    out[key] = value
  return out


def format_override(value: Any) -> str:
  """The command-line text ml_collections parses back to ``value``."""
  if isinstance(value, str):
    return value
  if isinstance(value, bool) or isinstance(value, (int, float)):
    return repr(value)
  if isinstance(value, (tuple, list)):
    return repr(tuple(value))
  _fail(f"override value {value!r} has unsupported type {type(value).__name__}; "
        "use str, bool, int, float or tuple.")


def run_command(run: Run, workdir: str, extra_overrides: Dict[str, str],
                workdir_of: Optional[Callable[[str, int], str]] = None) -> List[str]:
  """The run's main.py command; ``workdir_of(cell, seed)`` resolves ``{workdir:<cell>}``."""
  def resolve(text):
    if workdir_of is None:
      return text
    return _DEPENDENCY.sub(lambda m: workdir_of(m.group(1), run.seed), text)

  overrides = {**{k: resolve(format_override(v)) for k, v in run.cell.overrides.items()},
               **extra_overrides, "seed": str(run.seed)}
  return ([sys.executable, os.path.join(REPO_ROOT, "main.py"),
           f"--config={os.path.join(REPO_ROOT, run.cell.config)}", f"--workdir={workdir}"]
          + [f"--config.{k}={v}" for k, v in overrides.items()])


def cpu_slots(parallel: int, cpus: Sequence[int]) -> List[Optional[Tuple[int, ...]]]:
  """The CPUs of each of ``parallel`` concurrent runs, out of the available ``cpus``.

  One run: None (not pinned: all of them). Up to one run per CPU: disjoint contiguous groups
  whose sizes differ by at most one. More runs than CPUs: one CPU each, round robin.
  """
  cpus = sorted(cpus)
  if parallel <= 1:
    return [None]
  if parallel >= len(cpus):
    return [(cpus[i % len(cpus)],) for i in range(parallel)]
  bounds = [i * len(cpus) // parallel for i in range(parallel + 1)]
  return [tuple(cpus[bounds[i]:bounds[i + 1]]) for i in range(parallel)]


def run_env(cpus: Optional[Sequence[int]]) -> Dict[str, str]:
  """The environment of a run: the CPU settings, and TF/OpenMP threads matching its CPUs."""
  env = cpu_speed.environment(os.environ)
  if cpus is not None:
    for var in ("TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS", "OMP_NUM_THREADS"):
      env[var] = str(len(cpus))
  return env


def results_path(results_dir: str, run: Run) -> str:
  return os.path.join(results_dir, f"{run.cell.name}__seed{run.seed}.json")


def beta_curves(metrics_path: str) -> Dict[str, List[List[float]]]:
  """From ``metrics.jsonl``: ``{layer or 'total': [[step, mean beta], ...]}`` sorted by step.

  The trainer logs ``beta/<layer>`` every ``log_every_steps`` steps and at every epoch end (the
  value before the epoch's re-split) and the last step. A resumed run appends
  again from its checkpoint, so a step may appear twice; the later record wins.
  """
  by_step: Dict[int, Dict[str, float]] = {}
  if os.path.isfile(metrics_path):
    with open(metrics_path, encoding="utf-8") as f:
      for line in f:
        line = line.strip()
        if not line:
          continue
        record = json.loads(line)
        if "step" not in record:
          continue
        betas = {k[len("beta/"):]: v for k, v in record.items() if k.startswith("beta/")}
        if betas:
          by_step[int(record["step"])] = betas
  curves: Dict[str, List[List[float]]] = {}
  for step in sorted(by_step):
    for layer, value in by_step[step].items():
      curves.setdefault(layer, []).append([step, value])
  return curves


def collect(run: Run, workdir: str, extra_overrides: Dict[str, str]) -> Dict[str, Any]:
  """The small per-run record kept in git, built from the workdir's summary and metrics."""
  with open(os.path.join(workdir, "summary.json"), encoding="utf-8") as f:
    summary = json.load(f)
  config = summary["config"]
  return {
      "cell": run.cell.name,
      "seed": run.seed,
      "method": run.cell.method,
      "group": run.cell.group,
      "config_file": run.cell.config,
      "overrides": run.cell.overrides,
      "extra_overrides": extra_overrides,
      "test_accuracy": summary["test_accuracy"],
      "test_loss": summary["test_loss"],
      "steps": summary["steps"],
      "sparsity": summary["sparsity"]["total"]["sparsity"],
      "sparsity_per_layer": {k: v["sparsity"] for k, v in summary["sparsity"].items()},
      "sign_flips": summary["sign_flips_vs_init"]["total"],
      "sign_flips_per_layer": summary["sign_flips_vs_init"],
      "beta_curves": beta_curves(os.path.join(workdir, "metrics.jsonl")),
      "wall_time_seconds": summary["wall_time_seconds"],
      "target_sparsity": config["sparsity"],
      "signin": config["signin"],
      "mask": {k: config["mask"][k] for k in ("method", "distribution")},
      "config": config,
  }


def _write_json_atomically(path: str, obj) -> None:
  tmp = f"{path}.tmp{os.getpid()}.{threading.get_ident()}"
  with open(tmp, "w", encoding="utf-8") as f:
    json.dump(obj, f, indent=1, sort_keys=True)
    f.write("\n")
  os.replace(tmp, path)


def _log_tail(path: str) -> str:
  try:
    with open(path, encoding="utf-8", errors="replace") as f:
      lines = f.read().splitlines()
  except OSError:
    return "(no log)"
  return "\n".join("    " + line for line in lines[-_LOG_TAIL_LINES:])


_PRINT_LOCK = threading.Lock()


def say(message: str) -> None:
  with _PRINT_LOCK:
    print(message, flush=True)


def execute(run: Run, *, workdir: str, results_dir: str, extra_overrides: Dict[str, str],
            cpus: Optional[Sequence[int]] = None,
            workdir_of: Optional[Callable[[str, int], str]] = None) -> Optional[str]:
  """Runs one (cell, seed), pinned to ``cpus`` (None: not pinned), and stores its results
  JSON; returns an error message or None."""
  label = f"{run.cell.name} seed {run.seed}"
  os.makedirs(workdir, exist_ok=True)
  log_path = os.path.join(workdir, "sweep.log")
  command = run_command(run, workdir, extra_overrides, workdir_of)
  if cpus is not None:
    command = cpu_speed.pinned_command(command, cpus)
  env = run_env(cpus)
  say(f"[sweep] start {label}: workdir {workdir}")
  started = time.time()
  with open(log_path, "a", encoding="utf-8") as log:
    log.write(f"$ {' '.join(command)}\n")
    log.flush()
    returncode = subprocess.call(command, cwd=REPO_ROOT, env=env, stdout=log,
                                 stderr=subprocess.STDOUT)
  elapsed = time.time() - started
  if returncode != 0:
    return f"{label}: main.py exited with {returncode} after {elapsed:.0f} s; log {log_path}:\n" + \
        _log_tail(log_path)
  if not os.path.isfile(os.path.join(workdir, "summary.json")):
    return (f"{label}: main.py ended without writing summary.json (stopped early?); "
            f"rerun to resume; log {log_path}:\n" + _log_tail(log_path))
  try:
    record = collect(run, workdir, extra_overrides)
  except (KeyError, ValueError) as e:
    return f"{label}: could not read the run's summary/metrics in {workdir}: {e!r}"
  _write_json_atomically(results_path(results_dir, run), record)
  say(f"[sweep] done {label} in {elapsed:.0f} s: test accuracy {record['test_accuracy']:.4f}")
  return None


def _canonical(obj) -> str:
  return json.dumps(obj, sort_keys=True)  # Tuples and lists alike, as stored in the JSON.


def stale_message(path: str, run: Run) -> Optional[str]:
  """A message if the results JSON at ``path`` was made with other overrides than the cell's.

  Extra overrides are not compared: they are meant for machine-specific fields (data_dir).
  """
  with open(path, encoding="utf-8") as f:
    made = json.load(f).get("overrides")
  if _canonical(made) == _canonical(run.cell.overrides):
    return None
  return (f"{run.cell.name} seed {run.seed}: {path} was made with overrides {made}, the grid now "
          f"gives {run.cell.overrides}; delete it and the run's workdir to rerun (kept and "
          "tabulated as it is).")


def run_grid(cells: Sequence[Cell], *, name: str, results_root: str, workdir_root: str,
             parallel: int, extra_overrides: Dict[str, str], dry_run: bool) -> List[str]:
  """Runs every (cell, seed) without a results JSON; returns the failures' messages."""
  results_dir = os.path.join(results_root, name)
  runs = [Run(cell, seed) for cell in cells for seed in cell.seeds]
  todo = [r for r in runs if not os.path.isfile(results_path(results_dir, r))]
  stale = [stale_message(results_path(results_dir, r), r)
           for r in runs if r not in todo]
  stale = [message for message in stale if message]
  for message in stale:
    say(f"[sweep] STALE {message}")
  say(f"[sweep] grid {name}: {len(runs)} runs, {len(runs) - len(todo)} already have results, "
      f"{len(todo)} to run{' (dry run)' if dry_run else ''} with --parallel {parallel}.")
  workdir_of = lambda cell, seed: os.path.join(workdir_root, name, cell, f"seed{seed}")
  workdir = lambda r: workdir_of(r.cell.name, r.seed)
  if dry_run:
    for r in todo:
      say("  " + " ".join(run_command(r, workdir(r), extra_overrides, workdir_of)))
    return stale
  os.makedirs(results_dir, exist_ok=True)
  free_cpus = queue.Queue()  # A run takes a group of CPUs and gives it back when it ends.
  for cpus in cpu_slots(parallel, os.sched_getaffinity(0)):
    free_cpus.put(cpus)

  def execute_pinned(r):
    cpus = free_cpus.get()
    try:
      return execute(r, workdir=workdir(r), results_dir=results_dir,
                     extra_overrides=extra_overrides, cpus=cpus, workdir_of=workdir_of)
    finally:
      free_cpus.put(cpus)

  failures = list(stale)
  by_name = {c.name: c for c in cells}
  done = lambda cell, seed: os.path.isfile(results_path(results_dir, Run(by_name[cell], seed)))
  # In waves: each runs what has every dependency's results (the first: all without any).
  while todo:
    ready = [r for r in todo if all(done(d, r.seed) for d in dependencies(r.cell))]
    if not ready:
      for r in todo:
        failures.append(f"{r.cell.name} seed {r.seed}: not run, since "
                        f"{[d for d in dependencies(r.cell) if not done(d, r.seed)]} (same "
                        "seed) has no results.")
        say(f"[sweep] FAILED {failures[-1]}")
      break
    todo = [r for r in todo if r not in ready]
    with concurrent.futures.ThreadPoolExecutor(max_workers=parallel) as pool:
      futures = [pool.submit(execute_pinned, r) for r in ready]
      for future in futures:
        error = future.result()
        if error is not None:
          failures.append(error)
          say(f"[sweep] FAILED {error}")
  return failures


def load_results(results_dir: str) -> List[Dict[str, Any]]:
  """Every per-run results JSON in ``results_dir``."""
  records = []
  for filename in sorted(os.listdir(results_dir)) if os.path.isdir(results_dir) else []:
    if "__seed" in filename and filename.endswith(".json"):
      with open(os.path.join(results_dir, filename), encoding="utf-8") as f:
        records.append(json.load(f))
  return records


def mean_std(values: Sequence[float]):
  """Mean and sample standard deviation (ddof=1); std is NaN for fewer than two values."""
  n = len(values)
  if n == 0:
    return math.nan, math.nan
  mean = sum(values) / n
  if n < 2:
    return mean, math.nan
  return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))


def table_rows(cells: Sequence[Cell], records: Sequence[Dict[str, Any]]) -> List[Dict[str, Any]]:
  """One row per cell (grid order) over the records of the cell's seeds."""
  rows = []
  for cell in cells:
    found = [r for r in records if r["cell"] == cell.name and r["seed"] in cell.seeds]
    row = {"cell": cell.name, "method": cell.method, "group": cell.group, "config": cell.config,
           "overrides": json.dumps(cell.overrides, sort_keys=True), "n": len(found),
           "n_planned": len(cell.seeds), "seeds": " ".join(str(r["seed"]) for r in
                                                          sorted(found, key=lambda r: r["seed"]))}
    for key, stem, _, _ in STATISTICS:
      row[f"{stem}_mean"], row[f"{stem}_std"] = mean_std([r[key] for r in found])
    rows.append(row)
  return rows


def _csv_value(x):
  return "" if isinstance(x, float) and math.isnan(x) else x


def write_tables(cells: Sequence[Cell], results_dir: str, *, title: str) -> List[Dict[str, Any]]:
  """Writes ``results.csv`` and ``results.md`` in ``results_dir``; returns the rows."""
  os.makedirs(results_dir, exist_ok=True)
  rows = table_rows(cells, load_results(results_dir))
  fields = list(rows[0])
  with open(os.path.join(results_dir, "results.csv"), "w", newline="", encoding="utf-8") as f:
    writer = csv.DictWriter(f, fieldnames=fields)
    writer.writeheader()
    for row in rows:
      writer.writerow({k: _csv_value(v) for k, v in row.items()})

  def cell_text(row, stem, fmt):
    mean, std = row[f"{stem}_mean"], row[f"{stem}_std"]
    if math.isnan(mean):
      return "–"
    return fmt(mean) if math.isnan(std) else f"{fmt(mean)} ± {fmt(std)}"

  header = ["cell", "method", "group", "n"] + [h for _, _, h, _ in STATISTICS] + ["overrides"]
  lines = [f"# {title}", "",
           "Mean ± sample standard deviation (ddof=1) over seeds; n = seeds found / planned. "
           "Sparsity is measured on the final weights; sign flips are the fraction of unmasked "
           "weights whose sign differs from the initialization; wall time is the trainer's "
           "(process start-up excluded, resumed runs summed). Rebuild with "
           "`python experiments/sweep.py --grid <grid> --table_only`.", "",
           "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  for row in rows:
    values = [row["cell"], row["method"], row["group"], f"{row['n']}/{row['n_planned']}"]
    values += [cell_text(row, stem, fmt) for _, stem, _, fmt in STATISTICS]
    values.append(f"`{row['overrides']}`")
    lines.append("| " + " | ".join(values) + " |")
  with open(os.path.join(results_dir, "results.md"), "w", encoding="utf-8") as f:
    f.write("\n".join(lines) + "\n")
  return rows


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--grid", required=True, help="Grid file defining get_grid().")
  parser.add_argument("--parallel", type=int, default=1, help="Runs at once (default 1).")
  parser.add_argument("--dry_run", action="store_true", help="Print the commands; run nothing.")
  parser.add_argument("--table_only", action="store_true",
                      help="Only rebuild results.md/results.csv from the results JSONs.")
  parser.add_argument("--extra_override", action="append", default=[], metavar="KEY=VALUE",
                      help="Config override added to every run (repeatable), e.g. "
                           "data_dir=/path; recorded in each results JSON.")
  parser.add_argument("--results_root", default=DEFAULT_RESULTS_ROOT,
                      help="Results go to <results_root>/<grid name>/ (default: %(default)s).")
  parser.add_argument("--workdir_root", default=DEFAULT_WORKDIR_ROOT,
                      help="Workdirs go to <workdir_root>/<grid name>/ (default: %(default)s).")
  args = parser.parse_args(argv)
  if args.parallel < 1:
    parser.error(f"--parallel must be >= 1, got {args.parallel}.")
  try:
    cells = load_grid(args.grid)
    extra = parse_extra_overrides(args.extra_override)
  except ValueError as e:
    parser.error(str(e))
  name = grid_name(args.grid)
  results_dir = os.path.join(os.path.abspath(args.results_root), name)
  failures = []
  if not args.table_only:
    failures = run_grid(cells, name=name, results_root=os.path.abspath(args.results_root),
                        workdir_root=os.path.abspath(args.workdir_root), parallel=args.parallel,
                        extra_overrides=extra, dry_run=args.dry_run)
    if args.dry_run:
      return 0
  write_tables(cells, results_dir, title=f"Sweep results: {name}")
  say(f"[sweep] tables: {os.path.join(results_dir, 'results.md')} and results.csv")
  if failures:
    say(f"[sweep] {len(failures)} run(s) failed:")
    for message in failures:
      say("  " + message.splitlines()[0])
    return 1
  return 0


if __name__ == "__main__":
  sys.exit(main())
