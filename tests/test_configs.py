"""Configs and their validation: every shipped config is valid, every bad value is refused early."""

import glob
import importlib
import os
import re
import subprocess
import sys

import pytest

from signin_jax import config_validation
from signin_jax import run_start
from signin_jax import train

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG_FILES = sorted(
    os.path.basename(p)[:-3] for p in glob.glob(os.path.join(REPO, "configs", "*.py"))
    if not p.endswith("__init__.py"))


def load(name):
  return importlib.import_module(f"configs.{name}").get_config()


def test_the_expected_configs_ship():
  assert {"default", "cifar10_r20", "cifar100_r18", "imagenet_r50",
          "fashion_mnist_quickstart"} <= set(CONFIG_FILES)


@pytest.mark.parametrize("name", CONFIG_FILES)
def test_shipped_config_is_valid_and_documents_its_command(name):
  config = load(name)
  config_validation.validate_config(config)
  doc = importlib.import_module(f"configs.{name}").__doc__
  runnable = "configs/default.py" if name == "default" else f"configs/{name}.py"
  assert "python main.py --config=" in doc
  assert name == "default" or runnable in doc


@pytest.mark.parametrize("name", ["cifar10_r20", "cifar100_r18", "imagenet_r50"])
def test_paper_configs_state_provenance(name):
  doc = importlib.import_module(f"configs.{name}").__doc__
  assert "From the paper" in doc and "Our choice" in doc
  assert "Not run on this machine" in doc


def test_quickstart_is_signin_at_90_percent_with_random_erk_mask():
  config = load("fashion_mnist_quickstart")
  assert config.dataset == "fashion_mnist"
  assert config.signin.enabled and config.sparsity == 0.9
  assert (config.mask.method, config.mask.distribution) == ("random", "erk")
  doc = importlib.import_module("configs.fashion_mnist_quickstart").__doc__
  assert "Measured" in doc


def test_main_applies_command_line_overrides_and_validates_them():
  # --config.signin.beta reaches the nested field (else the run would start and fail later).
  proc = subprocess.run(
      [sys.executable, "main.py", "--config=configs/cifar10_r20.py", "--workdir=/nonexistent",
       "--config.sparsity=0.95", "--config.signin.beta=-2.0"],
      cwd=REPO, capture_output=True, text=True, timeout=120)
  assert proc.returncode != 0
  assert "config.signin.beta=-2.0 is invalid: must be a number >= 0" in proc.stderr
  assert not os.path.exists("/nonexistent")


BAD_VALUES = [
    ("sparsity", 1.0, "sparsity"),
    ("sparsity", -0.1, "sparsity"),
    ("signin.beta", -1.0, "signin.beta"),
    ("model", "resnet1000", "model"),
    ("dataset", "mnist_in_colour", "dataset"),
    ("mask.method", "lottery", "mask.method"),
    ("mask.distribution", "zipf", "mask.distribution"),
    ("parallelism", "pjit", "parallelism"),
    ("dtype", "float16", "dtype"),
    ("lr_schedule", "linear", "lr_schedule"),
    ("num_train_steps", 0, "num_train_steps"),
    ("signin.inner_state_at_reset", "zero", "signin.inner_state_at_reset"),
    ("signin.beta_scale", "relative", "signin.beta_scale"),
    ("train_split", "train[:50000", "train_split"),
    ("train_split", "train+", "train_split"),
    ("eval_split", "train 50000:", "eval_split"),
    ("label_smoothing", 1.0, "label_smoothing"),
    ("batch_size", 0, "batch_size"),
    ("mask.dense_layers", ("conv[",), "mask.dense_layers"),
    ("distributed_coordinator", "localhost", "distributed_coordinator"),  # No port.
    ("num_processes", 0, "num_processes"),
    ("process_id", -1, "process_id"),
    ("num_processes", 2, "num_processes"),  # Without config.distributed=True.
    ("seed", -1, "seed"),  # jax.random.PRNGKey would take it; the data pipeline would not.
    ("seed", 2**31, "seed"),
    ("schedule.method", "lottery", "schedule.method"),
    ("export_epochs", (-1,), "export_epochs"),
]


@pytest.mark.parametrize("method, changes, named", [
    ("rigl", dict(drop_fraction=0.0), "schedule.drop_fraction"),
    ("set", dict(drop_fraction_anneal="linear"), "schedule.drop_fraction_anneal"),
    ("rigl", dict(update_every_steps=0), "schedule.update_every_steps"),
    ("gmp", dict(start=0.5, end=0.5), "schedule.end"),
    ("gmp", dict(initial_sparsity=0.95), "schedule.initial_sparsity"),
    ("acdc", dict(warmup=0.6, final=0.5), "schedule.final"),
    ("acdc", dict(phase=0.0), "schedule.phase"),
])
def test_invalid_schedule_fields_name_the_field(method, changes, named):
  config = load("default")
  config.schedule.method = method
  for k, v in changes.items():
    config.schedule[k] = v
  with pytest.raises(ValueError, match=f"config.{named}="):
    config_validation.validate_config(config)


def test_schedules_that_cannot_apply_are_refused():
  config = load("default")
  config.schedule.method, config.mask.scope = "rigl", "global"
  with pytest.raises(ValueError, match="config.mask.scope='global' is invalid: must be 'layer'"):
    config_validation.validate_config(config)
  config.mask.scope, config.sparsity = "layer", 0.0
  with pytest.raises(ValueError, match="config.schedule.method='rigl' is invalid: needs "
                                       "config.sparsity > 0"):
    config_validation.validate_config(config)
  config.sparsity, config.schedule.method = 0.9, "gmp"
  config.init_from.workdir = "/some/run"
  with pytest.raises(ValueError, match="config.schedule.method='gmp' is invalid: must be "
                                       "'static', 'rigl' or 'set' with config.init_from"):
    config_validation.validate_config(config)
  config.schedule.method, config.init_from.signs = "static", "flipped"
  with pytest.raises(ValueError, match="config.init_from.signs='flipped'"):
    config_validation.validate_config(config)


@pytest.mark.parametrize("split", ["train", "train[:50000]", "train[90%:]", "test[-100:]",
                                   "train[:10%]+test", "train+validation[5:20]"])
def test_tfds_split_expressions_are_accepted(split):
  config = load("default")
  config.train_split = config.eval_split = split
  config_validation.validate_config(config)


@pytest.mark.parametrize("field,value,named", BAD_VALUES)
def test_invalid_values_name_the_field_and_what_is_allowed(field, value, named):
  config = load("default")
  with config.unlocked():
    node = config
    *parents, leaf = field.split(".")
    for p in parents:
      node = node[p]
    node[leaf] = value
  with pytest.raises(ValueError, match=f"config.{named}=") as info:
    config_validation.validate_config(config)
  message = str(info.value)
  assert "must be" in message or "allowed" in message
  if field in ("model", "dataset", "mask.method", "parallelism", "dtype"):
    assert "one of" in message  # The allowed names are listed.


def test_unknown_names_list_the_allowed_ones():
  config = load("default")
  config.parallelism = "pjit"
  with pytest.raises(ValueError, match="'jit', 'pmap'"):
    config_validation.validate_config(config)


def test_explicit_distributed_settings():
  config = load("default")
  config.distributed, config.num_processes, config.process_id = True, 2, 2
  with pytest.raises(ValueError, match=r"config.process_id=2 .* < config.num_processes=2"):
    config_validation.validate_config(config)
  config.distributed_coordinator, config.process_id = "127.0.0.1:1234", 1
  config_validation.validate_config(config)


def test_batch_size_must_divide_over_devices():
  config = load("default")
  config.batch_size = 10
  with pytest.raises(ValueError, match=r"config.batch_size=10 .*divisible by the number of "
                                       r"devices \(4\)"):
    config_validation.validate_environment(config, device_count=4)


def test_missing_dataset_is_reported(tmp_path):
  config = load("default")
  config.data_dir = str(tmp_path)  # An empty TFDS data_dir: cifar10 is not prepared there.
  with pytest.raises(ValueError, match="config.dataset='cifar10'"):
    config_validation.validate_environment(config, device_count=1)


def test_train_and_evaluate_validates_before_building_anything(tmp_path, monkeypatch):
  def must_not_run(*args, **kwargs):
    raise AssertionError("the model was built before the config was validated")

  monkeypatch.setattr(run_start, "create_model", must_not_run)
  config = load("default")
  config.sparsity = 1.5
  with pytest.raises(ValueError, match="config.sparsity=1.5"):
    train.train_and_evaluate(config, str(tmp_path / "run"))
  config = load("default")
  config.data_dir = str(tmp_path / "empty")
  with pytest.raises(ValueError, match="config.dataset="):
    train.train_and_evaluate(config, str(tmp_path / "run"))
  assert not os.path.exists(tmp_path / "run")


@pytest.mark.parametrize("field", ["train_split", "eval_split"])
def test_an_empty_split_is_refused_before_anything_is_built(fashion_mnist_dir, tmp_path,
                                                             monkeypatch, field):
  # Real data: TFDS's mock data ignores slices, so an empty split exists only in a real build.
  def must_not_run(*args, **kwargs):
    raise AssertionError("the model was built before the splits were checked")

  monkeypatch.setattr(run_start, "create_model", must_not_run)
  config = load("fashion_mnist_quickstart")
  config.data_dir = fashion_mnist_dir
  config[field] = "test[:0]"
  with pytest.raises(ValueError, match=rf"config.{field}='test\[:0\]' is invalid: selects no "
                                       "examples"):
    train.train_and_evaluate(config, str(tmp_path / "run"))
  config[field] = "test[:200]"  # Non-empty: passes this check (and reaches the model).
  with pytest.raises(AssertionError, match="model was built"):
    train.train_and_evaluate(config, str(tmp_path / "run"))


# --- Checks that need the run's length (the dataset's size), still before anything compiles ----

def _mock_run_config(**schedule):
  """LeNet-300-100 at width 8 on the 64-example mock: 8 steps per epoch at batch 8."""
  config = load("fashion_mnist_quickstart")
  config.model, config.width, config.batch_size, config.data_dir = "lenet300_100", 8, 8, None
  config.num_train_steps = 50
  for k, v in schedule.items():
    config.schedule[k] = v
  return config


def _refused_before_building(config, workdir, monkeypatch):
  """Runs train_and_evaluate, which must raise before the model, masks or steps are built (and
  before the workdir is touched); returns the ValueError's message."""
  from tests import tfds_mock

  def must_not_run(*args, **kwargs):
    raise AssertionError("the run was built (and compiled) before the config was refused")

  monkeypatch.setattr(run_start, "create_run_start", must_not_run)
  with tfds_mock.mock_data(num_examples=64):
    with pytest.raises(ValueError) as info:
      train.train_and_evaluate(config, str(workdir))
  assert not os.path.exists(workdir)  # Nothing written, not even the directory.
  return str(info.value)


@pytest.mark.parametrize("schedule, named", [
    # 50 steps; RigL updates every 1000 steps until step 38 (0.75 of 50): never.
    (dict(method="rigl", update_every_steps=1000), r"config.schedule.update_every_steps=1000 "
     r"is invalid: .*never changes.*step 38 \(config.schedule.end=0.75 of the run's 50 steps\)"),
    (dict(method="set", update_every_steps=40), r"config.schedule.update_every_steps=40"),
    (dict(method="rigl", start=0.9, end=0.95, update_every_steps=10),
     r"config.schedule.update_every_steps=10 .*config.schedule.start=0.9"),
    # Every update drops floor(f(t) * kept) = 0 weights in each layer (614 kept at most).
    (dict(method="set", update_every_steps=5, drop_fraction=0.001),
     r"config.schedule.drop_fraction=0.001 is invalid: .*drops no weight.* 614"),
    # One update, at step 38 = config.schedule.end, where the cosine-annealed fraction is 0.
    (dict(method="rigl", update_every_steps=38), r"config.schedule.drop_fraction=0.3 is "
     r"invalid: .*drops no weight"),
    # GMP from step 25 to step round(25.5) = 26 ... and to step 25 on 50 steps: no span.
    (dict(method="gmp", start=0.5, end=0.505), r"config.schedule.end=0.505 is invalid: .*"
     r"step 25 .*config.schedule.start=0.5"),
    # AC/DC: one phase as long as the run: a sparse phase and never a dense one after it.
    (dict(method="acdc", phase=1.0), r"config.schedule.phase=1.0 is invalid: .*no dense phase"),
    (dict(method="acdc", warmup=0.0, final=1.0), r"config.schedule.final=1.0 is invalid: "
     r".*no dense phase"),
    # Warm-up round(0.995 * 50) = 50 steps, final phase max(round(0.25), 1) = 1 step: they
    # overlap (the library's own error would name its arguments, not the config's fields).
    (dict(method="acdc", warmup=0.995, final=0.005),
     r"config.schedule.warmup=0.995 .*config.schedule.final=0.005"),
])
def test_a_schedule_that_never_changes_the_mask_is_refused(schedule, named, tmp_path,
                                                            monkeypatch):
  message = _refused_before_building(_mock_run_config(**schedule), tmp_path / "run", monkeypatch)
  assert re.search(named, message), message
  assert "_step" not in message.replace("update_every_steps", "")  # No library argument names.


@pytest.mark.parametrize("schedule", [
    dict(method="rigl", update_every_steps=19),  # Updates at steps 19 and 38.
    dict(method="set", update_every_steps=5, drop_fraction=0.002),  # 614 * f(5) >= 1 once.
    dict(method="gmp", start=0.5, end=0.52),
    dict(method="acdc", phase=0.3),
])
def test_a_schedule_that_changes_the_mask_once_passes_these_checks(schedule, tmp_path,
                                                                    monkeypatch):
  with pytest.raises(AssertionError, match="was built"):  # It got past the checks.
    _refused_before_building(_mock_run_config(**schedule), tmp_path / "run", monkeypatch)


def test_export_epochs_beyond_the_run_are_refused(tmp_path, monkeypatch):
  config = _mock_run_config()
  config.export_epochs = (2, 99)  # 50 steps of 8 per epoch: epochs 1 to 6 end in the run.
  message = _refused_before_building(config, tmp_path / "run", monkeypatch)
  assert re.search(r"config.export_epochs=\(2, 99\) is invalid: epoch 99 never ends: .*50 "
                   r"steps.*8 per epoch.*epochs 0 to 6", message), message
  config.export_epochs = (0, 6)  # The last epoch that ends in the run: passes this check.
  with pytest.raises(AssertionError, match="was built"):
    _refused_before_building(config, tmp_path / "run", monkeypatch)
