"""experiments/gmp_count_replay.py: finds issue 17's count rises where they were, and none in
the published GMP runs (docs/results.md, part 2)."""
import json
import os
import subprocess
import sys

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "experiments"))
import gmp_count_replay  # pylint: disable=g-import-not-at-top

RESULTS = os.path.join(REPO, "experiments", "results", "fashion_mnist_dst")


def test_the_replay_finds_the_rises_of_the_old_table_and_none_in_the_new():
  with open(os.path.join(RESULTS, "gmp_s0.9__seed0.json")) as f:
    config = json.load(f)["config"]
  config["mask"]["distribution"] = "uniform"  # the case: uniform 0.9 over 100,000 steps
  steps, before, now = gmp_count_replay.replay(config, 100_000)
  assert len(steps) == 751 and steps[-1] == 75_000
  assert (np.diff(before, axis=0) > 0).sum() == 5  # the issue: "it happens 5 times"
  assert (np.diff(now, axis=0) <= 0).all() and (now[-1] == before[-1]).all()
  assert (now.sum(axis=1) == before.sum(axis=1)).all()


def test_no_published_gmp_run_met_the_defect():
  proc = subprocess.run([sys.executable, "experiments/gmp_count_replay.py", "--results", RESULTS],
                        cwd=REPO, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stdout + proc.stderr[-2000:]
  lines = proc.stdout.strip().splitlines()
  assert len(lines) == 18 and all("rises before the fix: none; today's table equals it" in line
                                  for line in lines), proc.stdout
