"""The trainer: optimizer composition, the pure steps, data parallelism, metrics, end-to-end runs."""

import errno
import functools
import glob
import importlib
import json
import logging
import math
import os
import subprocess
import sys
import textwrap

from etils import epath
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from signin_jax import checkpointing
from signin_jax import masks as masks_lib
from signin_jax import metrics
from signin_jax import models
from signin_jax import report
from signin_jax import run_files
from signin_jax import run_start
from signin_jax import signin
from signin_jax import sparse_export
from signin_jax import train_steps
from signin_jax import train
from signin_jax import transfer as transfer_lib
from tests import tfds_mock

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load(name):
  return importlib.import_module(f"configs.{name}").get_config()


# --- Learning-rate schedules --------------------------------------------------------------------

def test_cosine_schedule_with_linear_warmup():
  config = load("default")
  config.learning_rate, config.warmup_epochs, config.lr_schedule = 0.4, 1.0, "cosine"
  lr = train_steps.learning_rate_schedule(config, steps_per_epoch=10, num_steps=50)
  np.testing.assert_allclose(
      [lr(0), lr(5), lr(10), lr(30), lr(50)],
      [0.0, 0.2, 0.4, 0.4 * (1 + math.cos(math.pi * 20 / 40)) / 2, 0.0], atol=1e-7)


def test_step_schedule_counts_epochs_from_the_start_of_training():
  config = load("default")
  config.learning_rate, config.warmup_epochs, config.lr_schedule = 0.1, 1.0, "step"
  config.lr_step_epochs, config.lr_step_factor = (2, 4), 0.1
  lr = train_steps.learning_rate_schedule(config, steps_per_epoch=10, num_steps=60)
  np.testing.assert_allclose([lr(5), lr(10), lr(19), lr(20), lr(39), lr(40), lr(59)],
                             [0.05, 0.1, 0.1, 0.01, 0.01, 0.001, 0.001], rtol=1e-6)


# --- One optimizer code path for dense, PaI and Sign-In ----------------------------------------

def _tiny_params():
  keys = jax.random.split(jax.random.PRNGKey(0), 2)
  return {"dense": {"kernel": jax.random.normal(keys[0], (6, 4)), "bias": jnp.ones(4)},
          "out": {"kernel": jax.random.normal(keys[1], (4, 3)), "bias": jnp.zeros(3)}}


def _run_updates(tx, params, grads_seq):
  state = tx.init(params)
  for grads in grads_seq:
    updates, state = tx.update(grads, state, params)
    params = optax.apply_updates(params, updates)
  return params, state


def _grads_seq(params, n=3):
  return [jax.tree.map(lambda p, i=i: jnp.cos(p * (i + 1)) + 0.1 * i, params) for i in range(n)]


def test_dense_optimizer_is_weight_decay_then_nesterov_sgd():
  config = load("default")
  config.sparsity, config.signin.enabled = 0.0, False
  config.learning_rate, config.weight_decay, config.warmup_epochs = 0.05, 0.01, 0.0
  tx = train_steps.create_optimizer(config, steps_per_epoch=10, num_steps=100)
  params = _tiny_params()
  got, state = _run_updates(tx, params, _grads_seq(params))
  schedule = train_steps.learning_rate_schedule(config, steps_per_epoch=10, num_steps=100)
  reference = optax.chain(
      optax.add_decayed_weights(0.01, mask=jax.tree.map(lambda p: p.ndim > 1, params)),
      optax.sgd(schedule, momentum=0.9, nesterov=True))
  want, _ = _run_updates(reference, params, _grads_seq(params))
  chex_close = functools.partial(np.testing.assert_allclose, rtol=1e-6, atol=1e-7)
  jax.tree.map(chex_close, got, want)
  assert signin.find_signin_state(state) is None
  np.testing.assert_allclose(train_steps.current_learning_rate(state), schedule(2), rtol=1e-6)


def test_pai_and_signin_wrap_the_same_inner_optimizer():
  config = load("default")
  config.sparsity, config.weight_decay = 0.5, 0.0
  params = _tiny_params()
  masks = jax.tree.map(lambda p: (jnp.arange(p.size).reshape(p.shape) % 2 == 0)
                       if p.ndim > 1 else jnp.ones(p.shape, bool), params)
  params = masks_lib.apply_mask(params, masks)

  config.signin.enabled = False
  pai, pai_state = _run_updates(
      train_steps.create_optimizer(config, steps_per_epoch=10, num_steps=100, masks=masks), params,
      _grads_seq(params))
  config.signin.enabled = True
  sgn, sgn_state = _run_updates(
      train_steps.create_optimizer(config, steps_per_epoch=10, num_steps=100, masks=masks), params,
      _grads_seq(params))
  for run in (pai, sgn):  # Masked entries stay exactly zero, kept entries move.
    for name in ("dense", "out"):
      kept = np.asarray(masks[name]["kernel"])
      assert np.all(np.asarray(run[name]["kernel"])[~kept] == 0)
      assert np.all(np.asarray(run[name]["kernel"])[kept] != np.asarray(params[name]["kernel"])[kept])
  assert signin.find_signin_state(pai_state) is None
  assert signin.find_signin_state(sgn_state) is not None
  # Sign-In changes the kernels' trajectory (theta' = -(m^2 + w^2) g) but not the biases'.
  assert not np.allclose(pai["dense"]["kernel"], sgn["dense"]["kernel"])
  np.testing.assert_allclose(pai["dense"]["bias"], sgn["dense"]["bias"], rtol=1e-6)


def test_signin_reset_period_is_in_epochs():
  config = load("default")
  config.sparsity, config.signin.reset_every_epochs = 0.0, 2
  params = _tiny_params()
  tx = train_steps.create_optimizer(config, steps_per_epoch=3, num_steps=100)
  state = tx.init(params)
  grads = _grads_seq(params, 1)[0]
  betas = []
  for _ in range(6):
    updates, state = tx.update(grads, state, params)
    params = optax.apply_updates(params, updates)
    beta = signin.factor_betas(params, signin.find_signin_state(state))["dense"]["kernel"]
    betas.append(float(jnp.mean(beta)))
  # Reset (beta back to exactly 1) after update 6 = 2 epochs of 3 steps, not before.
  assert all(abs(b - 1.0) > 1e-6 for b in betas[:5])
  np.testing.assert_allclose(betas[5], 1.0, rtol=1e-5)


# --- The pure steps ------------------------------------------------------------------------------

def test_cross_entropy_with_label_smoothing_matches_the_formula():
  logits = jnp.array([[2.0, 0.5, -1.0], [0.0, 0.0, 3.0]])
  labels = jnp.array([0, 1])
  got = train_steps.cross_entropy(logits, labels, num_classes=3, label_smoothing=0.3)
  logp = jax.nn.log_softmax(logits)
  targets = np.full((2, 3), 0.1) + 0.7 * np.eye(3)[[0, 1]]
  np.testing.assert_allclose(got, -(targets * logp).sum(-1), rtol=1e-6)


def _lenet(**kw):
  return models.get_model("lenet300_100", num_classes=10, width=4, **kw)


def _batch(n, seed=0, shape=(28, 28, 1)):
  rng = np.random.RandomState(seed)
  return {"image": rng.randn(n, *shape).astype(np.float32),
          "label": rng.randint(0, 10, size=n).astype(np.int32)}


def _state(model, tx, shape=(28, 28, 1)):
  variables = model.init({"params": jax.random.PRNGKey(1)}, jnp.zeros((1,) + shape), train=False)
  return train_steps.TrainState(step=jnp.zeros([], jnp.int32), params=variables["params"],
                          batch_stats=variables.get("batch_stats", {}),
                          opt_state=tx.init(variables["params"]), rng=jax.random.PRNGKey(2))


def test_train_step_is_one_sgd_step_on_the_mean_loss():
  model, tx = _lenet(), optax.inject_hyperparams(optax.sgd)(learning_rate=0.3)
  state, batch = _state(model, tx), _batch(16)
  new_state, step_metrics = train_steps.train_step(state, batch, apply_fn=model.apply, tx=tx,
                                             num_classes=10, label_smoothing=0.0)

  def loss(params):
    logits = model.apply({"params": params}, batch["image"], train=True)
    return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), batch["label"][:, None], 1))

  grads = jax.grad(loss)(state.params)
  want = jax.tree.map(lambda p, g: p - 0.3 * g, state.params, grads)
  jax.tree.map(functools.partial(np.testing.assert_allclose, rtol=1e-5, atol=1e-6),
               new_state.params, want)
  np.testing.assert_allclose(step_metrics["loss"], loss(state.params), rtol=1e-6)
  np.testing.assert_allclose(step_metrics["learning_rate"], 0.3)
  assert int(new_state.step) == 1


def test_eval_step_counts_only_real_examples():
  model, tx = _lenet(), optax.sgd(0.1)
  state, batch = _state(model, tx), _batch(12, seed=3)
  padded = {k: np.concatenate([v, v[:4] * 0]) for k, v in batch.items()}
  padded["mask"] = np.array([1] * 12 + [0] * 4)
  sums = train_steps.eval_step(state, padded, apply_fn=model.apply, num_classes=10)
  logits = model.apply({"params": state.params}, batch["image"], train=False)
  assert float(sums["count"]) == 12
  np.testing.assert_allclose(
      sums["correct"], np.sum(np.argmax(logits, -1) == batch["label"]), rtol=1e-6)
  np.testing.assert_allclose(
      sums["loss"], np.sum(train_steps.cross_entropy(logits, batch["label"], num_classes=10)),
      rtol=1e-5)


# --- Metrics -------------------------------------------------------------------------------------

def test_sign_flips_count_unmasked_weights_only():
  init = {"a": np.array([1.0, -1.0, 2.0, -3.0]), "b": np.array([[0.5, 0.5]])}
  now = {"a": np.array([-1.0, -1.0, 0.0, 3.0]), "b": np.array([[0.5, -0.1]])}
  masks = {"a": np.array([True, True, True, False])}  # a[3] is masked: its flip is not counted.
  flips = metrics.sign_flip_fractions(now, metrics.signs(init), masks)
  assert flips["a"] == pytest.approx(2 / 3)  # a[0] flipped, a[2] reached 0.
  assert flips["b"] == pytest.approx(1 / 2)
  assert flips[metrics.TOTAL] == pytest.approx(3 / 5)


def test_measured_sparsity_and_mean_betas():
  weights = {"a": np.array([0.0, 1.0, 0.0, 0.0]), "b": np.ones((2, 3))}
  rows = metrics.measured_sparsity(weights)
  assert rows["a"]["sparsity"] == 0.75 and rows["b"]["sparsity"] == 0.0
  assert rows[metrics.TOTAL]["sparsity"] == pytest.approx(3 / 10)
  betas = metrics.mean_betas({"a": np.array([1.0, 3.0, 100.0, 100.0])},
                             {"a": np.array([True, True, False, False])})
  assert betas["a"] == 2.0 and betas[metrics.TOTAL] == 2.0


@pytest.mark.parametrize("method", masks_lib.METHODS)
def test_trainer_builds_exact_masks_with_every_scoring_method(method):
  config = load("default")
  config.update(model="small_cnn", width=4, sparsity=0.9)
  config.mask.method = method
  model = run_start.create_model(config, num_classes=10)
  input_shape = (2, 28, 28, 1)
  variables = model.init(jax.random.PRNGKey(0), jnp.zeros(input_shape), train=False)
  params = variables["params"]
  rng = np.random.RandomState(0)
  batch = {"image": jnp.asarray(rng.randn(*input_shape), jnp.float32),
           "label": jnp.asarray([3, 7])}
  got = run_start.create_masks(config, jax.random.PRNGKey(1), params, apply_fn=model.apply,
                           batch_stats=variables.get("batch_stats"), input_shape=input_shape,
                           sample_batch=lambda: batch)
  want = masks_lib.layer_densities(params, 0.9, config.mask.distribution)
  kept = jax.tree.map(lambda m: int(np.sum(m)), got)
  expected = jax.tree.map(lambda p, d: p.size if d is None else round(float(d) * p.size),
                          params, want, is_leaf=lambda x: x is None)
  assert kept == expected
  prunable = [k for k, p in zip(jax.tree.leaves(kept), jax.tree.leaves(params)) if p.ndim > 1]
  total = sum(p.size for p in jax.tree.leaves(params) if p.ndim > 1)
  assert sum(prunable) == round(0.1 * total)


def test_beta_at_weight_scale_is_the_mean_square_of_each_layers_kept_initial_weights():
  config = load("default")
  config.signin.beta, config.signin.beta_scale = 0.5, "weight_scale"
  params = _tiny_params()
  masks = jax.tree.map(lambda p: (jnp.arange(p.size).reshape(p.shape) % 3 == 0)
                       if p.ndim > 1 else jnp.ones(p.shape, bool), params)
  params = masks_lib.apply_mask(params, masks)
  tx = train_steps.create_optimizer(config, steps_per_epoch=10, num_steps=100, masks=masks)
  betas = signin.find_signin_state(tx.init(params)).beta
  for name in ("dense", "out"):
    kernel = np.asarray(params[name]["kernel"], np.float64)
    kept = np.asarray(masks[name]["kernel"])
    assert float(betas[name]["kernel"]) == pytest.approx(0.5 * np.mean(kernel[kept] ** 2),
                                                          rel=1e-6)


# --- Data parallelism: pmap and jit on 8 devices equal one device -------------------------------

_EQUIVALENCE_SCRIPT = textwrap.dedent("""
    import functools, json, sys
    import jax, jax.numpy as jnp, numpy as np, optax
    from signin_jax import models, parallel, signin, train_steps
    assert jax.device_count() == 8
    tx = signin.sign_in(optax.inject_hyperparams(optax.sgd)(learning_rate=0.05, momentum=0.9),
                        reset_every=2)
    rng = np.random.RandomState(0)
    batches = [{"image": rng.randn(16, 8, 8, 3).astype(np.float32),
                "label": rng.randint(0, 10, 16).astype(np.int32)} for _ in range(4)]

    def run(mode):
      model = models.get_model("small_cnn", num_classes=10, width=4,
                               bn_axis_name=parallel.PMAP_AXIS if mode == "pmap" else None)
      variables = model.init({"params": jax.random.PRNGKey(0)}, jnp.zeros((1, 8, 8, 3)),
                             train=False)
      state = train_steps.TrainState(step=jnp.zeros([], jnp.int32), params=variables["params"],
                               batch_stats=variables["batch_stats"],
                               opt_state=tx.init(variables["params"]),
                               rng=jax.random.PRNGKey(1))
      step = functools.partial(train_steps.train_step, apply_fn=model.apply, tx=tx, num_classes=10,
                               label_smoothing=0.1)
      if mode == "single":
        step = jax.jit(step)
        for b in batches:
          state, m = step(state, b)
        return jax.device_get((state.params, state.batch_stats, m["loss"]))
      eval_fn = functools.partial(train_steps.eval_step, apply_fn=model.apply, num_classes=10)
      par = parallel.make_parallelism(mode, train_fn=step, eval_fn=eval_fn)
      state = par.put_state(parallel.replicate_from_host(jax.device_get(state), par.replicated))
      for b in batches:
        state, m = par.train_step(state, par.put_batch(b))
      canonical = par.canonical(state)  # The checkpoint layout round-trips too.
      assert all(x.is_fully_replicated for x in jax.tree.leaves(canonical))
      return par.local((state.params, state.batch_stats, m["loss"]))

    single = run("single")
    out = {}
    for mode in ("pmap", "jit"):
      got = run(mode)
      out[mode] = max(jax.tree.leaves(jax.tree.map(
          lambda a, b: float(np.max(np.abs(np.asarray(a) - np.asarray(b)))), got, single)))
    init = models.get_model("small_cnn", num_classes=10, width=4).init(
        {"params": jax.random.PRNGKey(0)}, jnp.zeros((1, 8, 8, 3)), train=False)["params"]
    out["moved"] = max(jax.tree.leaves(jax.tree.map(
        lambda a, b: float(np.max(np.abs(np.asarray(a) - np.asarray(b)))), single[0], init)))
    print("RESULT", json.dumps(out))
""")


@pytest.mark.slow
def test_pmap_and_jit_on_8_devices_match_one_device():
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8",
             JAX_PLATFORMS="cpu")
  proc = subprocess.run([sys.executable, "-c", _EQUIVALENCE_SCRIPT], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=240)
  assert proc.returncode == 0, proc.stderr[-3000:]
  result = json.loads(proc.stdout.split("RESULT", 1)[1])
  assert result["moved"] > 1e-2, result  # Training moved the parameters noticeably ...
  assert result["pmap"] < 2e-5 and result["jit"] < 2e-5, result  # ... and identically.


# --- End to end: every shipped config, 2 steps on mock data ------------------------------------

# Every config users run; configs/default.py only holds the shared defaults every one of these
# starts from (it names no experiment), so it runs through them.
RUNNABLE_CONFIGS = sorted(
    os.path.basename(p)[:-3] for p in glob.glob(os.path.join(REPO, "configs", "*.py"))
    if os.path.basename(p) not in ("__init__.py", "default.py"))


# The ResNets' runs (ImageNet's 224 x 224 ResNet-50 above all) take most of the time.
@pytest.mark.parametrize("name", [
    pytest.param(n, marks=pytest.mark.slow) if n != "fashion_mnist_quickstart" else n
    for n in RUNNABLE_CONFIGS])
def test_every_shipped_config_trains_end_to_end_on_mock_data(name, tmp_path, monkeypatch):
  written = _record_final_writes(monkeypatch)
  config = load(name)
  config.width = 2
  config.batch_size = 8
  config.num_train_steps = 2
  config.log_every_steps = 1
  config.checkpoint_every_steps = 1
  config.data_dir = None
  workdir = str(tmp_path / name)
  with tfds_mock.mock_data(num_examples=12):
    summary = train.train_and_evaluate(config, workdir)
  assert summary["steps"] == 2
  assert summary["test_examples"] == 12  # Every mock test example exactly once.
  assert 0.0 <= summary["test_accuracy"] <= 1.0
  with open(os.path.join(workdir, "summary.json")) as f:
    assert json.load(f)["config"]["model"] == config.model
  measured = summary["sparsity"][metrics.TOTAL]["sparsity"]
  assert measured == pytest.approx(config.sparsity, abs=0.02)
  weights = np.load(os.path.join(workdir, "final_weights.npz"))
  assert any(k.startswith("params/") for k in weights.files)
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["1", "2"]
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    records = [json.loads(line) for line in f]
  logged = {k for r in records for k in r}
  assert {"train_loss", "learning_rate", "images_per_sec", "test_accuracy"} <= logged
  assert any(k.startswith("sign_flips_vs_init/") for k in logged)
  assert config.signin.enabled == any(k.startswith("beta/") for k in logged)
  assert glob.glob(os.path.join(workdir, "events.out.tfevents.*"))
  # The end of a run: the weights, their compact export, the report, then the summary last.
  assert written[-4:] == [transfer_lib.weights_file(workdir, transfer_lib.FINAL),
                          os.path.join(workdir, train.EXPORT_FILE),
                          os.path.join(workdir, report.REPORT_FILE),
                          os.path.join(workdir, "summary.json")]
  with open(os.path.join(workdir, report.REPORT_FILE), "rb") as f:
    assert f.read(8) == b"\x89PNG\r\n\x1a\n"
  _assert_export_equals_final_weights(workdir, summary)


# --- Mask schedules end to end: each method, with and without Sign-In --------------------------

# Each method with Sign-In, and RigL and AC/DC without it too (the rest of the pairs run in
# the published study and the quickstart's docstring).
@pytest.mark.slow
@pytest.mark.parametrize("method, signin_enabled", [
    ("gmp", True), ("acdc", True), ("acdc", False), ("rigl", True), ("rigl", False),
    ("set", True)])
def test_every_mask_schedule_trains_to_its_target_and_logs_mask_changes(method, signin_enabled,
                                                                        tmp_path):
  config = load("fashion_mnist_quickstart")
  config.model, config.width, config.batch_size = "lenet300_100", 8, 8
  config.num_train_steps, config.log_every_steps, config.checkpoint_every_steps = 24, 8, 24
  config.data_dir = None
  config.signin.enabled = signin_enabled
  config.schedule.method = method
  config.schedule.update_every_steps = 4
  config.schedule.phase = 0.125  # AC/DC: 3-step phases in 24 steps.
  workdir = str(tmp_path / method)
  with tfds_mock.mock_data(num_examples=64):  # 8 steps per epoch
    summary = train.train_and_evaluate(config, workdir)
  measured = summary["sparsity"][metrics.TOTAL]
  # Every schedule ends at its target: the exact count of the budget, and masked weights 0.0.
  weights = np.load(os.path.join(workdir, "final_weights.npz"))
  masks = {k[len("masks/"):]: weights[k] for k in weights.files if k.startswith("masks/")}
  assert sum(int(m.sum()) for m in masks.values()) == round(
      (1 - config.sparsity) * measured["size"])
  for name, m in masks.items():
    assert np.all(weights[f"params/{name}"][~m] == 0.0), name
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    epochs = [r for r in map(json.loads, f) if "mask_density/total" in r]
  assert [r["step"] for r in epochs] == [8, 16, 24]
  changed = sum(r["mask_dropped/total"] + r["mask_grown/total"] for r in epochs)
  assert changed > 0
  if method in ("rigl", "set"):  # same counts: as many grown as dropped, density constant
    assert all(r["mask_dropped/total"] == r["mask_grown/total"] for r in epochs)
    assert all(r["mask_density/total"] == pytest.approx(1 - config.sparsity, abs=1e-3)
               for r in epochs)
  if method == "gmp":  # only pruning, the density falls to the target at 75 % (step 18)
    assert all(r["mask_grown/total"] == 0 for r in epochs)
    densities = [r["mask_density/total"] for r in epochs]
    assert densities[0] > densities[1] >= densities[2]
  assert signin_enabled == any("beta/total" in r for r in epochs)


# --- config.augment ------------------------------------------------------------------------------

def test_config_augment_reaches_the_training_batches():
  """None keeps Fashion-MNIST's default (no augmentation); True gives CIFAR's crop and flip."""
  from signin_jax import input_pipeline  # pylint: disable=g-import-not-at-top

  def first_batch(augment):
    config = load("fashion_mnist_quickstart")
    config.model, config.width, config.batch_size, config.augment = "lenet300_100", 8, 8, augment
    run = run_start.create_run_start(config)
    assert run.data_kwargs["augment"] is augment
    return next(input_pipeline.train_iterator(config.dataset, global_batch_size=8, seed=0,
                                              **run.data_kwargs))

  with tfds_mock.mock_data(num_examples=16):
    plain, off, augmented = first_batch(None), first_batch(False), first_batch(True)
  np.testing.assert_array_equal(plain["label"], augmented["label"])  # Same examples, same order.
  np.testing.assert_array_equal(plain["image"], off["image"])
  assert not np.array_equal(plain["image"], augmented["image"])


# --- The end of a run: the artifacts first, summary.json last --------------------------------

def _record_final_writes(monkeypatch):
  """The paths of the workdir's atomic writes and of report.png, in the order written."""
  written = []
  real_write, real_report = run_files.write_atomically, report.write_run_report

  def write_atomically(path, data):
    real_write(path, data)
    written.append(str(path))

  def write_run_report(workdir, summary=None):
    path = real_report(workdir, summary)
    written.append(str(path))
    return path

  monkeypatch.setattr(run_files, "write_atomically", write_atomically)
  monkeypatch.setattr(report, "write_run_report", write_run_report)
  return written


def _assert_export_equals_final_weights(workdir, summary):
  exported = sparse_export.load(os.path.join(workdir, train.EXPORT_FILE))
  got = {}
  for collection, tree in (("params", exported.params), ("masks", exported.masks),
                           ("batch_stats", exported.batch_stats or {})):
    got.update({f"{collection}/{k}": v for k, v in metrics.by_layer(tree).items()})
  with np.load(os.path.join(workdir, "final_weights.npz")) as f:
    want = {k: f[k] for k in f.files}
  assert sorted(got) == sorted(want)
  for k in want:  # Bitwise: same dtype, shape and bytes.
    assert (got[k].dtype, got[k].shape, got[k].tobytes()) == (
        want[k].dtype, want[k].shape, want[k].tobytes()), k
  assert exported.metadata["model"] == summary["config"]["model"]
  assert exported.metadata["config"] == json.loads(json.dumps(summary["config"]))
  export = summary["export"]
  assert export["file"] == train.EXPORT_FILE
  assert export["file_bytes"] == os.path.getsize(os.path.join(workdir, train.EXPORT_FILE))
  assert export["dense_bytes"] == sum(v.nbytes for k, v in want.items()
                                      if not k.startswith("masks/"))
  kept = sum(int(v.sum()) for k, v in want.items() if k.startswith("masks/"))
  assert export["prunable_dense_bytes"] == sum(
      want[f"params/{k[len('masks/'):]}"].nbytes for k in want if k.startswith("masks/"))
  # The kept float32 values at least, the dense bytes at most (dense is one of the encodings).
  assert 4 * kept <= export["prunable_bytes"] <= export["prunable_dense_bytes"]
  assert export["prunable_bytes"] == exported.stats.masked_bytes
  assert export["prunable_share"] == exported.stats.masked_share


def _quick_config():
  config = load("fashion_mnist_quickstart")
  config.width, config.batch_size, config.num_train_steps = 2, 8, 2
  config.log_every_steps = config.checkpoint_every_steps = 1
  config.data_dir = None
  return config


def _run(config, workdir):
  with tfds_mock.mock_data(num_examples=12):
    return train.train_and_evaluate(config, str(workdir))


def test_a_report_that_fails_to_draw_is_logged_and_the_run_finishes(tmp_path, monkeypatch,
                                                                    caplog):
  def broken(workdir, summary=None):
    raise RuntimeError("no fonts on this machine")

  monkeypatch.setattr(report, "write_run_report", broken)
  with caplog.at_level(logging.INFO):
    summary = _run(_quick_config(), tmp_path / "run")
  assert "no fonts on this machine" in caplog.text
  assert os.path.isfile(tmp_path / "run" / "summary.json") and summary["steps"] == 2
  assert not os.path.exists(tmp_path / "run" / report.REPORT_FILE)


def _full_disk_for(monkeypatch, suffix):
  """Writes to a path ending in ``suffix`` fail as on a full disk: the file is created, then
  the write raises ENOSPC."""
  path_class = type(epath.Path("/"))
  real_write_bytes = path_class.write_bytes

  def write_bytes(self, data):
    if str(self).endswith(suffix):
      open(str(self), "wb").close()
      raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    return real_write_bytes(self, data)

  monkeypatch.setattr(path_class, "write_bytes", write_bytes)


def test_a_full_disk_at_the_end_leaves_no_summary_and_names_the_file(tmp_path, monkeypatch):
  _full_disk_for(monkeypatch, "final_weights.npz.tmp")
  workdir = tmp_path / "run"
  with pytest.raises(OSError, match=str(workdir / "final_weights.npz")) as info:
    _run(_quick_config(), workdir)
  assert info.value.errno == errno.ENOSPC
  left = os.listdir(workdir)
  assert "summary.json" not in left  # A summary means done: the run is not.
  assert not [name for name in left if name.endswith(".tmp")]


def test_a_full_disk_at_the_start_leaves_no_partial_config(tmp_path, monkeypatch):
  _full_disk_for(monkeypatch, "config.json.tmp")
  workdir = tmp_path / "run"
  with pytest.raises(OSError, match=f"No space left on device: {workdir / 'config.json'}"):
    _run(_quick_config(), workdir)
  assert not os.path.exists(workdir / "config.json.tmp")
  assert not os.path.exists(workdir / "config.json")


def test_a_full_disk_under_a_checkpoint_names_the_workdir(tmp_path, monkeypatch):
  def save(*args, **kwargs):  # Orbax's own errors need not name a path.
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

  monkeypatch.setattr(checkpointing, "save", save)
  workdir = tmp_path / "run"
  with pytest.raises(OSError, match=f"No space left on device.*{workdir}") as info:
    _run(_quick_config(), workdir)
  assert info.value.errno == errno.ENOSPC


def test_a_full_disk_under_metrics_jsonl_names_it():
  writer = metrics.JsonLinesWriter("/dev/full")  # Every write to /dev/full fails: ENOSPC.
  writer.write_scalars(1, {"loss": 1.0})
  with pytest.raises(OSError, match="No space left on device: /dev/full") as info:
    writer.flush()
  assert info.value.errno == errno.ENOSPC
