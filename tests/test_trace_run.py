"""experiments/trace_run.py: the traced run is the trainer's run, and it stops at a NaN."""

import os
import sys

import numpy as np
import pytest

from tests import tfds_mock
from tests.test_checkpoint_resume import run_in_process
from tests.test_checkpoint_resume import tiny_config

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(__file__)), "experiments"))
import trace_run  # pylint: disable=g-import-not-at-top,wrong-import-position


def _config(**overrides):
  config = tiny_config()
  config.num_train_steps = 6
  for key, value in overrides.items():
    config[key] = value
  return config


def test_trace_follows_the_trainers_run(tmp_path):
  with tfds_mock.mock_data(num_examples=64):
    rows = trace_run.trace(_config(), steps=6, every=3)
  run_in_process(tmp_path, _config())
  final = np.load(tmp_path / "final_weights.npz")
  assert [r["step"] for r in rows] == [3, 6]
  for layer, value in rows[-1]["max_theta"].items():
    assert value == pytest.approx(np.abs(final[f"params/{layer}"]).max(), rel=1e-5), layer
  # Sign-In's first split gives m >= sqrt(beta) = 1; six small steps move it little.
  assert rows[-1]["min_m"] and all(0.5 < m <= 1.5 for m in rows[-1]["min_m"].values())


def test_trace_stops_at_the_first_non_finite_loss():
  with tfds_mock.mock_data(num_examples=64):
    rows = trace_run.trace(_config(learning_rate=1e30), steps=50, every=100)
  assert len(rows) == 1 and rows[0]["step"] < 50 and not np.isfinite(rows[0]["loss"])
