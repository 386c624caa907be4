"""Structured sparsity through the trainer (issue 21): config validation, 2:4 + STE resumed
across mask updates bitwise, 8 emulated devices equal one device, main.py."""
import json
import os
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from configs import fashion_mnist_quickstart
from signin_jax import config_validation
from tests import tfds_mock
from tests.test_checkpoint_resume import assert_bitwise_equal, final_weights, tiny_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def nm_ok(mask, n=2, m=4):
  moved = np.moveaxis(np.asarray(mask, bool), -2, -1)
  return moved.shape[-1] % m == 0 and np.all(moved.reshape(-1, m).sum(-1) == n)


def two_four(config):
  config.mask.structure, config.mask.n, config.mask.m = "n:m", 2, 4
  config.sparsity, config.mask.method = 0.5, "magnitude"
  return config


@pytest.mark.parametrize("edit,field", [
    (lambda c: setattr(c.mask, "structure", "2:4"), "config.mask.structure"),
    (lambda c: setattr(c, "sparsity", 0.9), "config.sparsity"),
    (lambda c: setattr(c.mask, "n", 4), "config.mask.n"),
    (lambda c: setattr(c.schedule, "method", "gmp"), "config.schedule.method"),
    (lambda c: setattr(c.mask, "scope", "global"), "config.mask.scope"),
    (lambda c: (setattr(c.schedule, "method", "sr_ste"),
                setattr(c.schedule, "sr_ste_lambda", -1.0)), "config.schedule.sr_ste_lambda"),
    (lambda c: (setattr(c.mask, "structure", "block"), setattr(c, "sparsity", 0.9),
                setattr(c.mask, "block_shape", (4,))), "config.mask.block_shape"),
])
def test_structure_fields_are_validated_before_anything_compiles(edit, field):
  config = two_four(fashion_mnist_quickstart.get_config())
  config_validation.validate_config(config)  # the 2:4 config itself is valid
  edit(config)
  with pytest.raises(ValueError, match=field.replace(".", r"\.")):
    config_validation.validate_config(config)


def _run(workdir, config):
  from signin_jax import train  # pylint: disable=import-outside-toplevel
  with tfds_mock.mock_data(num_examples=64):
    return train.train_and_evaluate(config, str(workdir))


@pytest.mark.slow
@pytest.mark.parametrize("method", ["ste", "sr_ste"])
def test_two_four_straight_through_resumes_bitwise_and_keeps_the_pattern(method, tmp_path):
  """The mask changes at every step (STE): resumed at step 10 of 20, bitwise equal."""
  config = two_four(tiny_config())
  config.num_train_steps = 20
  config.schedule.method = method
  config.keep_checkpoints = 4
  uninterrupted = str(tmp_path / "uninterrupted")
  _run(uninterrupted, config)
  resumed = str(tmp_path / "resumed")
  shutil.copytree(os.path.join(uninterrupted, "checkpoints", "10"),
                  os.path.join(resumed, "checkpoints", "10"))
  _run(resumed, config)
  want, got = final_weights(uninterrupted), final_weights(resumed)
  assert_bitwise_equal(got, want)
  masks = {k[len("masks/"):]: want[k] for k in want if k.startswith("masks/")}
  for name, m in masks.items():
    if m.ndim >= 2:  # 2:4, or kept dense where the input size is no multiple of 4
      assert nm_ok(m) if m.shape[-2] % 4 == 0 else m.all(), name
    assert np.all(want[f"params/{name}"][~m.astype(bool)] == 0.0), name


_DEVICES_SCRIPT = textwrap.dedent("""
    import json, sys
    sys.path.insert(0, {repo!r})
    import jax, numpy as np
    from tests import tfds_mock
    from tests.test_checkpoint_resume import tiny_config
    from tests.test_structured_train import two_four
    from signin_jax import train
    out = {{}}
    for mode in sys.argv[2:]:
      config = two_four(tiny_config())
      config.num_train_steps, config.schedule.method = 6, "sr_ste"
      config.parallelism = mode
      with tfds_mock.mock_data(num_examples=64):
        train.train_and_evaluate(config, sys.argv[1] + "/" + mode)
      with np.load(sys.argv[1] + "/" + mode + "/final_weights.npz") as f:
        np.savez(sys.argv[1] + "/" + mode + ".npz", **{{k: f[k] for k in f.files}})
    print("DEVICES", jax.device_count())
""")


@pytest.mark.slow
def test_two_four_sr_ste_on_8_devices_equals_one_device(tmp_path):
  script = _DEVICES_SCRIPT.format(repo=REPO)
  runs = {}
  for devices, modes in ((1, ["jit"]), (8, ["jit", "pmap"])):
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=REPO,
               XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
    out = tmp_path / str(devices)
    proc = subprocess.run([sys.executable, "-c", script, str(out)] + modes, cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"DEVICES {devices}" in proc.stdout
    for mode in modes:
      with np.load(out / f"{mode}.npz") as f:
        runs[(devices, mode)] = {k: f[k] for k in f.files}
  single = runs[(1, "jit")]
  for key in ((8, "jit"), (8, "pmap")):
    got = runs[key]
    for k in single:
      if k.startswith("masks/"):
        np.testing.assert_array_equal(got[k], single[k], err_msg=f"{key} {k}")
      elif k.startswith("params/"):
        np.testing.assert_allclose(got[k], single[k], rtol=0, atol=2e-5, err_msg=f"{key} {k}")


@pytest.mark.slow
@pytest.mark.parametrize("flags", [
    ["--config.mask.structure=n:m", "--config.sparsity=0.5", "--config.schedule.method=sr_ste"],
    ["--config.mask.structure=channel", "--config.sparsity=0.5",
     "--config.schedule.method=rigl", "--config.schedule.update_every_steps=2",
     # One update in 4 steps drops floor(f * k) of k <= 10 kept channels: f must reach 0.1
     # after the cosine anneal, or the run is refused as a schedule that never acts.
     "--config.schedule.drop_fraction=0.5"],
])
def test_main_runs_structured_configs(flags, tmp_path):
  env = dict(os.environ, PYTHONPATH=REPO, JAX_PLATFORMS="cpu")
  code = textwrap.dedent(f"""
      import sys
      sys.path.insert(0, {REPO!r})
      from tests import tfds_mock
      import main
      from absl import app
      from signin_jax import prepare_data
      prepare_data.ensure_prepared = lambda *args, **kwargs: None  # mock data, nothing to prepare
      sys.argv = ["main.py", "--config=configs/fashion_mnist_quickstart.py",
                  "--workdir={tmp_path}/run", "--config.model=lenet300_100",
                  "--config.width=8", "--config.batch_size=8", "--config.num_train_steps=4",
                  "--config.checkpoint_every_steps=4"] + {flags!r}
      with tfds_mock.mock_data(num_examples=32):
        try:
          app.run(main.main)
        except SystemExit as e:
          assert not e.code, e.code
  """)
  proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True,
                        text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "structure" in proc.stderr  # the density table's column
  with open(tmp_path / "run" / "summary.json") as f:
    assert json.load(f)["steps"] == 4
