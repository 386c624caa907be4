"""config.init_from: a run starts from another run's mask and, as asked, its signs or magnitudes."""

import json
import os
import shutil

import numpy as np
import pytest

from configs import fashion_mnist_quickstart
from signin_jax import metrics
from signin_jax import run_start
from signin_jax import train
from tests import tfds_mock

# One pytest-xdist worker runs this module: its tests share a module-scoped fixture.
pytestmark = pytest.mark.xdist_group("transfer")

MOCK_EXAMPLES = 64  # 8 steps per epoch at batch 8.


def tiny_config():
  config = fashion_mnist_quickstart.get_config()
  config.model, config.width, config.batch_size = "lenet300_100", 8, 8
  config.num_train_steps, config.log_every_steps, config.checkpoint_every_steps = 16, 8, 16
  config.data_dir = None
  return config


@pytest.fixture(scope="module")
def source(tmp_path_factory):
  """A RigL run that exported its weights at initialization and after epoch 1 (of 2)."""
  workdir = str(tmp_path_factory.mktemp("source"))
  config = tiny_config()
  config.schedule.method, config.schedule.update_every_steps = "rigl", 4
  config.export_epochs = (0, 1)
  with tfds_mock.mock_data(num_examples=MOCK_EXAMPLES):
    train.train_and_evaluate(config, workdir)
  load = lambda name: dict(np.load(os.path.join(workdir, name)))
  return {"workdir": workdir, "final": load("final_weights.npz"),
          "epoch0": load("weights/epoch_0.npz"), "epoch1": load("weights/epoch_1.npz")}


def initial_layers(source, **init_from):
  config = tiny_config()
  config.seed = 7  # Another init than the source's.
  config.init_from.workdir = source["workdir"]
  for k, v in init_from.items():
    config.init_from[k] = v
  with tfds_mock.mock_data(num_examples=MOCK_EXAMPLES):
    run = run_start.create_run_start(config)
  fresh = tiny_config()
  fresh.seed, fresh.sparsity = 7, 0.0  # This run's own (dense) initialization.
  with tfds_mock.mock_data(num_examples=MOCK_EXAMPLES):
    own = run_start.create_run_start(fresh)
  layers = lambda tree: {k: np.asarray(v) for k, v in metrics.by_layer(tree).items()}
  return layers(run.state.params), layers(own.state.params)


KERNELS = ("dense1/kernel", "dense2/kernel", "classifier/kernel")


def test_the_source_exported_its_epochs_and_masks_changed(source):
  for name in KERNELS:
    assert f"masks/{name}" in source["epoch0"] and f"masks/{name}" in source["final"]
  assert any(not np.array_equal(source["epoch0"][f"masks/{k}"], source["final"][f"masks/{k}"])
             for k in KERNELS)  # RigL moved the mask: the final one is not the initial one


def test_mask_and_signs_learned_with_random_magnitudes(source):
  params, own = initial_layers(source, signs="learned", signs_epoch=1, magnitudes="random")
  for name in KERNELS:
    mask = source["final"][f"masks/{name}"]
    theta = params[name]
    assert np.all(theta[~mask] == 0.0) and np.all(theta[mask] != 0.0)  # exactly its mask
    learned = np.sign(source["epoch1"][f"params/{name}"])
    # The source's signs at epoch 1 where it had a sign; this run's own where it had none.
    want = np.where(learned != 0, learned, np.sign(own[name]))
    np.testing.assert_array_equal(np.sign(theta)[mask], want[mask])
    assert not np.allclose(np.abs(theta[mask]), np.abs(own[name][mask]))  # not its own init
    assert not np.allclose(np.abs(theta[mask]),
                           np.abs(source["epoch1"][f"params/{name}"][mask]))
  for name in ("dense1/bias", "classifier/bias"):  # non-prunable: this run's own init
    np.testing.assert_array_equal(params[name], own[name])


def test_learned_magnitudes_with_random_signs(source):
  params, own = initial_layers(source, magnitudes="learned", signs="random")
  flipped, counted = 0, 0
  for name in KERNELS:
    mask = source["final"][f"masks/{name}"]
    learned = np.abs(source["final"][f"params/{name}"])
    want = np.where(learned != 0, learned, np.abs(own[name]))
    np.testing.assert_array_equal(np.abs(params[name])[mask], want[mask])
    assert np.all(params[name][~mask] == 0.0)
    flipped += int(np.sum(np.sign(params[name][mask]) != np.sign(
        source["final"][f"params/{name}"][mask])))
    counted += int(mask.sum())
  assert 0.4 < flipped / counted < 0.6  # fair random signs


def test_mask_only_is_this_runs_init_under_the_sources_mask(source):
  params, own = initial_layers(source, mask_epoch=0)
  for name in KERNELS:
    mask = source["epoch0"][f"masks/{name}"]
    np.testing.assert_array_equal(params[name], np.where(mask, own[name], 0.0))


def test_a_transferred_run_trains_end_to_end(source, tmp_path):
  config = tiny_config()
  config.init_from.workdir = source["workdir"]
  config.init_from.signs, config.init_from.signs_epoch = "learned", 1
  config.init_from.magnitudes = "random"
  with tfds_mock.mock_data(num_examples=MOCK_EXAMPLES):
    summary = train.train_and_evaluate(config, str(tmp_path / "run"))
  final = np.load(tmp_path / "run" / "final_weights.npz")
  for name in KERNELS:  # static schedule: the transferred mask all along
    np.testing.assert_array_equal(final[f"masks/{name}"], source["final"][f"masks/{name}"])
    assert np.all(final[f"params/{name}"][~final[f"masks/{name}"]] == 0.0)
  kept = sum(int(source["final"][f"masks/{k}"].sum()) for k in KERNELS)
  assert summary["sparsity"][metrics.TOTAL]["nonzero"] <= kept


@pytest.mark.parametrize("change, message", [
    (dict(workdir="/nonexistent/run"), r"config.init_from.workdir='/nonexistent/run' is invalid: "
                                       "it does not exist"),
    (dict(signs="learned", signs_epoch=5), r"config.init_from.signs_epoch=5 is invalid: .*"
                                           r"has the epochs \[-1, 0, 1\]"),
    (dict(mask_epoch=3), r"config.init_from.mask_epoch=3 is invalid"),
])
def test_missing_sources_name_the_field(source, change, message):
  config = tiny_config()
  config.init_from.workdir = source["workdir"]
  for k, v in change.items():
    config.init_from[k] = v
  with tfds_mock.mock_data(num_examples=MOCK_EXAMPLES):
    with pytest.raises(ValueError, match=message):
      train.train_and_evaluate(config, "/tmp/unused_transfer_run")
  assert not os.path.exists("/tmp/unused_transfer_run")  # refused before anything was written


def test_another_model_or_sparsity_is_refused(source):
  config = tiny_config()
  config.init_from.workdir = source["workdir"]
  config.width = 4
  with tfds_mock.mock_data(num_examples=MOCK_EXAMPLES):
    with pytest.raises(ValueError, match="is of another model"):
      run_start.create_run_start(config)
  config.width, config.sparsity = 8, 0.8
  with tfds_mock.mock_data(num_examples=MOCK_EXAMPLES):
    with pytest.raises(ValueError, match=r"config.sparsity=0.8 is invalid with "
                                         "config.init_from.workdir"):
      run_start.create_run_start(config)


@pytest.mark.parametrize("damage", ["truncated", "flipped byte"])
def test_a_damaged_source_file_names_the_field_and_the_file(source, tmp_path, damage):
  workdir = str(tmp_path / "source")
  shutil.copytree(source["workdir"], workdir)
  path = os.path.join(workdir, "final_weights.npz")
  with open(path, "rb") as f:
    data = bytearray(f.read())
  if damage == "truncated":  # A copy cut short.
    data = data[:len(data) // 2]
  else:  # Inside an array's bytes: the zip's CRC-32 no longer matches.
    data[len(data) // 2] ^= 0xFF
  with open(path, "wb") as f:
    f.write(bytes(data))
  config = tiny_config()
  config.init_from.workdir = workdir
  run = str(tmp_path / "run")
  with tfds_mock.mock_data(num_examples=MOCK_EXAMPLES):
    with pytest.raises(ValueError, match=rf"config.init_from.workdir='{workdir}' is invalid: "
                                         rf"{path} cannot be read \("):
      train.train_and_evaluate(config, run)
  assert not os.path.exists(run)


def test_a_resumed_run_whose_source_moved_away_resumes_from_its_checkpoint(source, tmp_path):
  """Its checkpoint holds the masks and the state: the source is not needed any more."""
  workdir = str(tmp_path / "source")
  shutil.copytree(source["workdir"], workdir)
  config = tiny_config()
  config.init_from.workdir = workdir
  config.init_from.signs, config.init_from.signs_epoch = "learned", 1
  config.checkpoint_every_steps = 8  # Checkpoints at steps 8 and 16.
  uninterrupted, resumed = str(tmp_path / "uninterrupted"), str(tmp_path / "resumed")
  with tfds_mock.mock_data(num_examples=MOCK_EXAMPLES):
    train.train_and_evaluate(config, uninterrupted)
  shutil.copytree(os.path.join(uninterrupted, "checkpoints", "8"),
                  os.path.join(resumed, "checkpoints", "8"))
  shutil.move(workdir, workdir + "_moved")
  with tfds_mock.mock_data(num_examples=MOCK_EXAMPLES):
    train.train_and_evaluate(config, resumed)
  want, got = (dict(np.load(os.path.join(w, "final_weights.npz"))) for w in (uninterrupted,
                                                                              resumed))
  assert sorted(got) == sorted(want)
  for k in want:
    assert got[k].dtype == want[k].dtype and np.array_equal(got[k], want[k]), k
  with open(os.path.join(resumed, "metrics.jsonl")) as f:
    assert min(r["step"] for r in map(json.loads, f) if "step" in r) > 8  # It resumed.
