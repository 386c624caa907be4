"""The benchmark scripts run (their numbers are measured by hand: README, Performance).

Only the quick ones run here. pipeline_throughput.py, on the real Fashion-MNIST with a tiny
model and two timed steps: it builds its run with the trainer's own create_run_start, so a change
there that breaks it shows up in the suite instead of on a user's machine. cpu_settings.py, one
round of the quickstart CNN with and without tcmalloc: its check that tcmalloc changes no bit of
the trained parameters must hold.
"""
import os
import re
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
def test_pipeline_throughput_prints_both_rates_and_their_ratio(fashion_mnist_dir):
  proc = subprocess.run(
      [sys.executable, "benchmarks/pipeline_throughput.py",
       f"--config.data_dir={fashion_mnist_dir}", "--config.model=small_cnn", "--config.width=4",
       "--steps=2", "--block=1"],
      cwd=REPO, capture_output=True, text=True, timeout=600,
      env=dict(os.environ, PYTHONPATH=REPO))
  assert proc.returncode == 0, proc.stderr[-3000:]
  rates = {kind: float(value.replace(",", "")) for kind, value in re.findall(
      r"(real input pipeline|device-resident batch)\s+([\d,]+) images/s", proc.stdout)}
  assert set(rates) == {"real input pipeline", "device-resident batch"}, proc.stdout
  assert all(r > 0 for r in rates.values())
  ratio = float(re.search(r"ratio\s+([\d.]+)", proc.stdout).group(1))
  # The printed ratio is the ratio of the printed rates, up to their rounding (rates to
  # integers, the ratio to 3 decimals).
  expected = rates["real input pipeline"] / rates["device-resident batch"]
  rounding = expected * sum(0.5 / r for r in rates.values()) + 5e-4
  assert abs(ratio - expected) <= rounding * (1 + 1e-9)


@pytest.mark.slow
def test_cpu_settings_benchmark_runs_and_tcmalloc_changes_no_bit():
  from signin_jax import cpu_speed  # pylint: disable=g-import-not-at-top
  if cpu_speed.find_tcmalloc() is None:
    pytest.skip("tcmalloc is not installed (bash launch/install.sh as root installs it)")
  proc = subprocess.run(
      [sys.executable, "benchmarks/cpu_settings.py", "--rounds=1", "--steps=2",
       "--models=small_cnn", "--variants=without,tcmalloc"],
      cwd=REPO, capture_output=True, text=True, timeout=600,
      env=dict(os.environ, PYTHONPATH=REPO))
  assert proc.returncode == 0, proc.stderr[-3000:]
  rates = re.findall(r"small_cnn (without|tcmalloc)\s+([\d,]+) images/s", proc.stdout)
  assert [kind for kind, _ in rates] == ["without", "tcmalloc"], proc.stdout
  assert "small_cnn parameters after 4 steps, tcmalloc vs without: bitwise identical" in (
      proc.stdout)


@pytest.mark.slow
def test_sparse_inference_benchmark_prints_plans_ratios_and_goals():
  proc = subprocess.run(
      [sys.executable, "benchmarks/sparse_inference.py", "--quick", "--models=lenet300_100",
       "--clock=cpu"],
      cwd=REPO, capture_output=True, text=True, timeout=900,
      env=dict(os.environ, PYTHONPATH=REPO))
  assert proc.returncode == 0, proc.stderr[-3000:]
  out = proc.stdout
  assert "== lenet300_100, erk masks, 95%" in out and "Summary" in out
  ratios = re.findall(r"end to end @(1|8): dense [\d.]+ us, sparse [\d.]+ us: ([\d.]+)x", out)
  assert [b for b, _ in ratios] == ["1", "8"] and all(float(r) > 0 for _, r in ratios)
  assert re.search(r"masked tensors [\d,]+ bytes = [\d.]+% of their dense float32 bytes", out)
  assert "the 784x300 layer: runs" in out
