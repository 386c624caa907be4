"""The README's training-loop snippets (Linen, NNX, and with a mask schedule) run as printed.

The snippets are taken from README.md itself and executed with the names they leave to the user
(a Flax model, a key, an input, a loss and batches) bound to a small MLP; their training steps
run 20 times (four re-splits), and the result must be a trained, exactly sparse model.
"""
import os
import re

import flax.linen as nn
from flax import nnx
import jax
import numpy as np
import optax

from signin_jax import masks as masks_lib
from signin_jax import signin

README = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "README.md")


def readme_snippets():
  """The section's python blocks: [Linen, NNX]."""
  with open(README, encoding="utf-8") as f:
    text = f.read()
  section = text.split("## Sign-In in your own training loop", 1)[1].split("\n## ", 1)[0]
  return re.findall(r"```python\n(.*?)```", section, re.S)


class MLP(nn.Module):

  @nn.compact
  def __call__(self, x):
    x = nn.relu(nn.Dense(64)(x.reshape((x.shape[0], -1))))
    return nn.Dense(10)(x)


def test_readme_training_loop_snippet_trains_a_sparse_model():
  snippet = readme_snippets()[0]
  setup, step = snippet.split("\ngrads = ", 1)
  step = "grads = " + step
  model = MLP()
  x = jax.random.normal(jax.random.PRNGKey(1), (32, 8, 8, 1))
  labels = jax.random.randint(jax.random.PRNGKey(2), (32,), 0, 10)

  def loss_fn(params, batch):
    logits = model.apply({"params": params}, batch[0])
    return optax.softmax_cross_entropy_with_integer_labels(logits, batch[1]).mean()

  scope = {"model": model, "key": jax.random.PRNGKey(0), "x": x, "loss_fn": loss_fn,
           "batch": (x, labels), "steps_per_epoch": 5}
  exec(setup, scope)  # pylint: disable=exec-used
  initial_loss = float(loss_fn(scope["params"], scope["batch"]))
  for _ in range(20):  # four epochs, each ending with a re-split
    exec(step, scope)  # pylint: disable=exec-used

  params, mask = scope["params"], scope["mask"]
  assert float(loss_fn(params, scope["batch"])) < initial_loss  # it trains
  assert_exactly_sparse(params, mask)
  assert int(signin.find_signin_state(scope["opt_state"]).count) == 20


def assert_exactly_sparse(params, mask):
  for p, m in zip(jax.tree.leaves(params), jax.tree.leaves(mask)):
    m = np.asarray(m, bool)
    assert np.all(np.asarray(p)[~m] == 0.0)
  kernels = [m for m in jax.tree.leaves(mask) if m.ndim >= 2]
  kept = sum(int(np.sum(np.asarray(m, bool))) for m in kernels)
  assert kept == round(0.1 * sum(m.size for m in kernels))


class NnxMLP(nnx.Module):

  def __init__(self, rngs):
    self.hidden = nnx.Linear(64, 64, rngs=rngs)
    self.out = nnx.Linear(64, 10, rngs=rngs)

  def __call__(self, x):
    return self.out(nnx.relu(self.hidden(x.reshape((x.shape[0], -1)))))


def test_readme_nnx_snippet_trains_a_sparse_model():
  snippet = readme_snippets()[1]
  assert "nnx.Optimizer(" in snippet
  model = NnxMLP(nnx.Rngs(0))
  x = jax.random.normal(jax.random.PRNGKey(1), (32, 8, 8, 1))
  labels = jax.random.randint(jax.random.PRNGKey(2), (32,), 0, 10)

  def loss_fn(model, batch):
    logits = model(batch[0])
    return optax.softmax_cross_entropy_with_integer_labels(logits, batch[1]).mean()

  scope = {"model": model, "key": jax.random.PRNGKey(0), "loss_fn": loss_fn,
           "batches": [(x, labels)] * 20, "steps_per_epoch": 5}
  initial_loss = float(loss_fn(model, (x, labels)))
  exec(snippet, scope)  # pylint: disable=exec-used
  assert float(loss_fn(model, (x, labels))) < initial_loss  # it trains
  params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
  assert_exactly_sparse(params, nnx.to_pure_dict(scope["mask"]))
  assert int(scope["optimizer"].step[...]) == 20
  sign_in_state = signin.find_signin_state(nnx.as_pure(scope["optimizer"].opt_state))
  assert int(sign_in_state.count) == 20


def test_readme_schedule_snippet_trains_with_rigl_and_changes_the_mask():
  with open(README, encoding="utf-8") as f:
    section = f.read().split("## Masks that change during training", 1)[1].split("\n## ", 1)[0]
  (snippet,) = re.findall(r"```python\n(.*?)```", section, re.S)
  model = MLP()
  x = jax.random.normal(jax.random.PRNGKey(1), (32, 8, 8, 1))
  labels = jax.random.randint(jax.random.PRNGKey(2), (32,), 0, 10)

  def loss_fn(params, batch):
    logits = model.apply({"params": params}, batch[0])
    return optax.softmax_cross_entropy_with_integer_labels(logits, batch[1]).mean()

  # 400 steps: RigL's default period (100) updates the mask at steps 100, 200 and 300.
  scope = {"model": model, "key": jax.random.PRNGKey(0), "x": x, "loss_fn": loss_fn,
           "batches": [(x, labels)] * 400, "num_steps": 400, "steps_per_epoch": 50}
  initial_params = model.init(jax.random.PRNGKey(0), x)["params"]
  initial_loss = float(loss_fn(initial_params, (x, labels)))
  exec(snippet, scope)  # pylint: disable=exec-used
  params, mask = scope["params"], scope["mask"]
  assert float(loss_fn(params, (x, labels))) < initial_loss  # it trains
  assert_exactly_sparse(params, mask)  # the mask now in use, with the budget's exact count
  assert scope["train_step"]._cache_size() == 1  # mask updates did not recompile the step
  initial_mask = masks_lib.create_masks(jax.random.PRNGKey(0), initial_params, sparsity=0.9,
                                        method="random", distribution="erk")
  assert any(not np.array_equal(a, b) for a, b in
             zip(jax.tree.leaves(mask), jax.tree.leaves(initial_mask)))  # RigL changed it


def test_readme_sparse_inference_snippet_runs(tmp_path, monkeypatch):
  """The sparse-inference example runs as printed (one timing round per candidate instead of
  seven, to keep the suite fast) and its logits are the masked dense model's."""
  from signin_jax import sparse_inference

  with open(README, encoding="utf-8") as f:
    section = f.read().split("## Sparse inference and the compact export", 1)[1]
  (snippet,) = re.findall(r"```python\n(.*?)```", section.split("\n## ", 1)[0], re.S)
  quick = sparse_inference.measure_median
  monkeypatch.setattr(sparse_inference, "measure_median",
                      lambda n, b, fns: quick(n, b, fns, rounds=1, min_round_seconds=0.0))
  monkeypatch.chdir(tmp_path)
  images = jax.random.normal(jax.random.PRNGKey(3), (3, 28, 28, 1))
  scope = {"images": images}
  exec(snippet, scope)  # pylint: disable=exec-used
  model, variables, mask = scope["model"], scope["variables"], scope["mask"]
  params = jax.tree.map(lambda p, m: p * m, variables["params"], mask)
  expected = np.asarray(model.apply({"params": params}, images, train=False))
  got = np.asarray(scope["logits"])
  assert np.all(np.abs(got - expected) <= 1e-5 * np.maximum(1.0, np.abs(expected)))
  np.testing.assert_array_equal(np.asarray(scope["sparse"](images)), got)
  assert os.path.exists(tmp_path / "lenet_95.sjx")
  assert set(scope["sparse"].plan["layers"]) == {"dense1", "dense2", "classifier"}
