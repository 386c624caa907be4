"""Tests of signin_jax.masks: exact budgets, scores against independent references, training
under a static mask, errors."""
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from signin_jax import masks
from signin_jax import signin


def _params(key=0):
  ks = jax.random.split(jax.random.PRNGKey(key), 4)
  return {"conv1": {"kernel": jax.random.normal(ks[0], (3, 3, 3, 16))},
          "conv2": {"kernel": jax.random.normal(ks[1], (3, 3, 16, 32)), "bias": jnp.zeros(32)},
          "dense": {"kernel": jax.random.normal(ks[2], (32, 10)),
                    "bias": jax.random.normal(ks[3], (10,))}}


class TinyNet(nn.Module):

  @nn.compact
  def __call__(self, x, train=False):
    x = nn.relu(nn.Conv(4, (3, 3))(x))
    x = jnp.mean(x, axis=(1, 2))
    return nn.Dense(3)(x)


def _tiny():
  model = TinyNet()
  x = jax.random.normal(jax.random.PRNGKey(5), (8, 6, 6, 2))
  y = jax.random.randint(jax.random.PRNGKey(6), (8,), 0, 3)
  params = model.init(jax.random.PRNGKey(0), x)["params"]
  loss_fn = lambda p, b: optax.softmax_cross_entropy_with_integer_labels(
      model.apply({"params": p}, b[0]), b[1]).mean()
  apply_fn = lambda p, inputs: model.apply({"params": p}, inputs)
  return params, loss_fn, apply_fn, (x, y)


def _kept(mask_tree):
  return {k: int(jnp.sum(v["kernel"])) for k, v in mask_tree.items()}


@pytest.mark.parametrize("distribution", masks.DISTRIBUTIONS)
@pytest.mark.parametrize("method", masks.METHODS)
@pytest.mark.parametrize("scope", masks.SCOPES)
@pytest.mark.parametrize("sparsity", [0.0, 0.5, 0.9, 0.98])
def test_exact_total_and_layer_counts(distribution, method, scope, sparsity):
  params, loss_fn, apply_fn, batch = _tiny()
  m = masks.create_masks(jax.random.PRNGKey(1), params, sparsity, method=method,
                         distribution=distribution, scope=scope, loss_fn=loss_fn,
                         apply_fn=apply_fn, batch=batch, input_shape=(1, 6, 6, 2),
                         synflow_iterations=5)
  dens = masks.layer_densities(params, sparsity, distribution)
  sizes = [p.size for p in jax.tree.leaves(params) if p.ndim >= 2]
  kept = [int(jnp.sum(x)) for x, p in zip(jax.tree.leaves(m), jax.tree.leaves(params))
          if p.ndim >= 2]
  assert sum(kept) == round((1 - sparsity) * sum(sizes))
  if scope == "layer":
    want = [round(d * p.size) for d, p in zip(jax.tree.leaves(dens), jax.tree.leaves(params))
            if p.ndim >= 2]
    assert kept == want
  for x, p in zip(jax.tree.leaves(m), jax.tree.leaves(params)):
    assert x.dtype == jnp.bool_ and x.shape == p.shape
    if p.ndim < 2:
      assert bool(jnp.all(x))


@pytest.mark.parametrize("distribution", masks.DISTRIBUTIONS)
@pytest.mark.parametrize("sparsity", [0.3, 0.5, 0.8])
def test_budget_totals_with_dense_layers_and_overrides(distribution, sparsity):
  params = _params()
  dens = masks.layer_densities(params, sparsity, distribution, dense=("conv1",),
                               overrides={"dense": 0.5})
  assert dens["conv1"]["kernel"] == 1.0 and dens["dense"]["kernel"] == 0.5
  assert dens["conv2"]["bias"] == 1.0
  sizes = {k: params[k]["kernel"].size for k in params}
  kept = sum(dens[k]["kernel"] * sizes[k] for k in params)
  assert round(kept) == round((1 - sparsity) * sum(sizes.values()))


def test_erk_hand_computed_example_with_a_saturated_layer():
  params = {"a": jnp.zeros((3, 3, 2, 4)), "b": jnp.zeros((4, 100)), "c": jnp.zeros((100, 2))}
  # raw scores sum(shape)/prod(shape): a 12/72, b 104/400, c 102/200; N = 672.
  # sparsity 0.2 -> keep round(0.8 * 672) = 538. eps = 538 / (12 + 104 + 102) = 2.468, and
  # eps * 102/200 = 1.259 > 1: c becomes dense (200). Again for a and b: eps = 338 / 116,
  # a: 72 * eps / 6 = 34.97, b: 400 * eps * 0.26 = 303.03; floors 34 + 303 = 337, one more
  # weight by largest remainder goes to a: 35.
  dens = masks.layer_densities(params, 0.2, "erk")
  assert dens["c"] == 1.0
  assert dens["a"] == 35 / 72 and dens["b"] == 303 / 400
  # ER uses only the last two dims: a's raw score is (2 + 4) / 8, far larger than ERK's.
  er = masks.layer_densities(params, 0.2, "er")
  assert er["a"] == 1.0


def test_uniform_shares_one_density_and_er_differs_from_erk_on_convs():
  params = _params()
  uni = masks.layer_densities(params, 0.9, "uniform")
  d = [uni[k]["kernel"] for k in params]
  assert max(d) - min(d) < 2 / min(p["kernel"].size for p in params.values())
  er, erk = (masks.layer_densities(params, 0.9, x) for x in ("er", "erk"))
  ratio = lambda t: t["conv1"]["kernel"] / t["conv2"]["kernel"]
  # conv1 (3,3,3,16) vs conv2 (3,3,16,32): ER compares (3+16)/48 with (16+32)/512; ERK the
  # full-shape ratios 25/432 and 54/4608.
  np.testing.assert_allclose(ratio(er), ((3 + 16) / 48) / ((16 + 32) / 512), rtol=2e-2)
  np.testing.assert_allclose(ratio(erk), (25 / 432) / (54 / 4608), rtol=2e-2)


def test_tie_breaking_and_determinism():
  scores = {"w": jnp.ones((4, 5))}
  m = masks.masks_from_scores(scores, {"w": 0.3})
  np.testing.assert_array_equal(jnp.ravel(m["w"]), jnp.arange(20) < 6)
  params = _params()
  a = masks.create_masks(jax.random.PRNGKey(3), params, 0.9)
  b = masks.create_masks(jax.random.PRNGKey(3), params, 0.9)
  c = masks.create_masks(jax.random.PRNGKey(4), params, 0.9)
  jax.tree.map(np.testing.assert_array_equal, a, b)
  assert not np.array_equal(a["conv2"]["kernel"], c["conv2"]["kernel"])


def test_global_scope_picks_largest_across_layers():
  params = {"a": {"kernel": jnp.full((10, 10), 2.0)}, "b": {"kernel": jnp.full((10, 10), 1.0)}}
  m = masks.create_masks(None, params, 0.5, method="magnitude", distribution="uniform",
                         scope="global")
  assert _kept(m) == {"a": 100, "b": 0}


def test_magnitude_keeps_the_largest():
  params = _params()
  m = masks.create_masks(None, params, 0.8, method="magnitude", distribution="uniform")
  for k in params:
    w, keep = np.abs(np.asarray(params[k]["kernel"])), np.asarray(m[k]["kernel"])
    assert w[keep].min() >= w[~keep].max()


def test_snip_matches_hand_computed_linear_model():
  rng = np.random.default_rng(0)
  x, t, w = rng.normal(size=(7, 4)), rng.normal(size=(7, 3)), rng.normal(size=(4, 3))
  loss_fn = lambda p, b: 0.5 * jnp.sum((b[0] @ p["w"] - b[1]) ** 2)
  scores = masks.snip_scores(loss_fn, {"w": jnp.asarray(w, jnp.float32)},
                             (jnp.asarray(x, jnp.float32), jnp.asarray(t, jnp.float32)))
  grad = x.T @ (x @ w - t)
  np.testing.assert_allclose(scores["w"], np.abs(grad * w), rtol=1e-4, atol=1e-5)


def test_grasp_matches_dense_hessian():
  params, loss_fn, _, batch = _tiny()
  scores = masks.grasp_scores(loss_fn, params, batch)
  flat, unravel = jax.flatten_util.ravel_pytree(params)
  f = lambda v: loss_fn(unravel(v), batch)
  g = jax.grad(f)(flat)
  hg = jax.hessian(f)(flat) @ g
  np.testing.assert_allclose(jax.flatten_util.ravel_pytree(scores)[0], flat * hg,
                             rtol=1e-3, atol=1e-6)


def test_synflow_single_round_matches_closed_form():
  # Two linear layers, no biases: R = 1^T |W1| |W2| 1, so dR/dW1_ij = sum_k |W2|_jk and
  # dR/dW2_jk = sum_i |W1|_ij; score = |theta * dR/dtheta|.
  rng = np.random.default_rng(1)
  w1, w2 = rng.normal(size=(5, 6)), rng.normal(size=(6, 4))
  params = {"l1": jnp.asarray(w1, jnp.float32), "l2": jnp.asarray(w2, jnp.float32)}
  apply_fn = lambda p, x: x @ p["l1"] @ p["l2"]
  dens = masks.layer_densities(params, 0.5, "uniform")
  scores = masks.synflow_scores(apply_fn, params, (1, 5), dens, iterations=1)
  s1 = np.abs(w1) * np.abs(w2).sum(1)[None, :]
  s2 = np.abs(w2) * np.abs(w1).sum(0)[:, None]
  for got, want in ((scores["l1"], s1), (scores["l2"], s2)):
    kept = np.isfinite(np.asarray(got))
    assert kept.sum() == want.size // 2
    assert want[kept].min() >= want[~kept].max()
    np.testing.assert_allclose(np.asarray(got)[kept], want[kept], rtol=1e-5)


@pytest.mark.parametrize("use_signin", [False, True])
def test_masked_entries_stay_exactly_zero_for_1000_steps(use_signin):
  params = _params()
  mask = masks.create_masks(jax.random.PRNGKey(2), params, 0.9)
  params = masks.apply_mask(params, mask)
  inner = optax.chain(optax.add_decayed_weights(1e-2), optax.sgd(0.05, momentum=0.9))
  tx = masks.with_static_mask(signin.sign_in(inner, reset_every=7) if use_signin else inner, mask)
  target = _params(9)

  def step(_, carry):
    params, state = carry
    g = jax.grad(lambda p: sum(jnp.sum((a - b) ** 2) for a, b in
                               zip(jax.tree.leaves(p), jax.tree.leaves(target))))(params)
    updates, state = tx.update(g, state, params)
    return optax.apply_updates(params, updates), state

  final, state = jax.jit(lambda c: jax.lax.fori_loop(0, 1000, step, c))((params, tx.init(params)))
  for p, m, p0 in zip(jax.tree.leaves(final), jax.tree.leaves(mask), jax.tree.leaves(params)):
    np.testing.assert_array_equal(np.asarray(p)[~np.asarray(m)], 0.0)
    if p.ndim >= 2:
      assert np.abs(np.asarray(p - p0)[np.asarray(m)]).max() > 1e-2  # the rest did train
  # Masked gradients never reached the momentum of the plain optimizer.
  if not use_signin:
    trace = state[1][0].trace
    for t, m in zip(jax.tree.leaves(trace), jax.tree.leaves(mask)):
      np.testing.assert_array_equal(np.asarray(t)[~np.asarray(m)], 0.0)


def test_keep_masked_zero_at_end_of_chain():
  params = _params()
  mask = masks.create_masks(jax.random.PRNGKey(2), params, 0.5)
  tx = optax.chain(optax.sgd(0.1), masks.keep_masked_zero(mask))
  state = tx.init(params)
  updates, _ = tx.update(jax.tree.map(jnp.ones_like, params), state, params)
  new = optax.apply_updates(params, updates)
  for p, m in zip(jax.tree.leaves(new), jax.tree.leaves(mask)):
    np.testing.assert_array_equal(np.asarray(p)[~np.asarray(m)], 0.0)
  with pytest.raises(ValueError, match="params"):
    tx.update(params, state)


def test_sparsity_aware_init_restores_variance():
  params = {"w": jax.random.normal(jax.random.PRNGKey(0), (400, 300))}
  mask = masks.create_masks(jax.random.PRNGKey(1), params, 0.75, distribution="uniform")
  scaled = masks.apply_mask(masks.sparsity_aware_init(params, mask), mask)
  x = jax.random.normal(jax.random.PRNGKey(2), (256, 400))
  dense_var = float(jnp.var(x @ params["w"]))
  np.testing.assert_allclose(float(jnp.var(x @ scaled["w"])), dense_var, rtol=0.05)
  np.testing.assert_allclose(np.asarray(scaled["w"])[np.asarray(mask["w"])],
                             2.0 * np.asarray(params["w"])[np.asarray(mask["w"])], rtol=1e-6)


def test_summary_counts_and_flops():
  params = _params()
  mask = masks.create_masks(jax.random.PRNGKey(2), params, 0.9)
  sparse = masks.apply_mask(params, mask)
  rows = masks.summary(sparse, mask, positions={"conv1/kernel": 64, "conv2/kernel": 16})
  by = {r["path"]: r for r in rows}
  assert by["conv1/kernel"]["nnz"] == int(jnp.sum(mask["conv1"]["kernel"]))
  assert by["conv1/kernel"]["dense_flops"] == 2 * 432 * 64
  assert by["dense/kernel"]["dense_flops"] == 2 * 320
  total = by["total"]
  assert total["nnz"] == sum(r["nnz"] for r in rows[:-1])
  np.testing.assert_allclose(total["density"], masks.density(mask), rtol=1e-9)
  np.testing.assert_allclose(sum(r["flops_share"] for r in rows[:-1]), total["flops_share"])
  text = masks.format_summary(rows)
  assert "conv2/kernel" in text and "total" in text


def test_nnx_state():
  from flax import nnx
  model = nnx.Linear(20, 30, rngs=nnx.Rngs(0))
  graphdef, params = nnx.split(model, nnx.Param)
  mask = masks.create_masks(jax.random.PRNGKey(0), params, 0.8)
  assert masks.density(mask) == pytest.approx(0.2, abs=1 / 600)
  params = masks.apply_mask(params, mask)
  tx = masks.with_static_mask(signin.sign_in(optax.sgd(0.1), reset_every=2), mask)
  state = tx.init(params)
  x = jnp.ones((4, 20))
  for _ in range(3):
    g = jax.grad(lambda p: jnp.sum(nnx.merge(graphdef, p)(x) ** 2))(params)
    updates, state = tx.update(g, state, params)
    params = optax.apply_updates(params, updates)
  kernel, keep = np.asarray(params["kernel"].get_value()), np.asarray(mask["kernel"].get_value())
  np.testing.assert_array_equal(kernel[~keep], 0.0)


def test_errors_name_the_argument():
  params = _params()
  with pytest.raises(ValueError, match="sparsity"):
    masks.layer_densities(params, 1.0)
  with pytest.raises(ValueError, match="distribution"):
    masks.layer_densities(params, 0.5, "erdos")
  with pytest.raises(ValueError, match="method"):
    masks.create_masks(None, params, 0.5, method="lottery")
  with pytest.raises(ValueError, match="scope"):
    masks.create_masks(None, params, 0.5, scope="model")
  with pytest.raises(ValueError, match="loss_fn"):
    masks.create_masks(None, params, 0.5, method="snip")
  with pytest.raises(ValueError, match="input_shape"):
    masks.create_masks(None, params, 0.5, method="synflow")
  with pytest.raises(ValueError, match="dense"):
    masks.layer_densities(params, 0.5, dense=("nothing_like_this",))
  with pytest.raises(ValueError, match="overrides"):
    masks.layer_densities(params, 0.5, overrides={"conv1": 1.5})
  with pytest.raises(ValueError, match="infeasible"):
    masks.layer_densities(params, 0.9, dense=("conv2",))
