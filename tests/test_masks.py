"""Tests of signin_jax.masks: exact budgets, scores against independent references, training
under a static mask, errors."""
import math

import flax.linen as nn
import jax
import jax.flatten_util
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
  def __call__(self, x):
    x = nn.relu(nn.Conv(4, (3, 3))(x))
    x = nn.relu(nn.Dense(6)(jnp.mean(x, axis=(1, 2))))
    return nn.Dense(3)(x)


def _tiny():
  """A Linen CNN, its params, loss_fn(params, batch), apply_fn(params, inputs) and a batch."""
  model = TinyNet()
  x = jax.random.normal(jax.random.PRNGKey(5), (8, 6, 6, 2))
  y = jax.random.randint(jax.random.PRNGKey(6), (8,), 0, 3)
  params = model.init(jax.random.PRNGKey(0), x)["params"]
  loss_fn = lambda p, b: optax.softmax_cross_entropy_with_integer_labels(
      model.apply({"params": p}, b[0]), b[1]).mean()
  apply_fn = lambda p, inputs: model.apply({"params": p}, inputs)
  return params, loss_fn, apply_fn, (x, y)


def _kernel_counts(tree):
  """{path: count of True} over the leaves with ndim >= 2."""
  flat, _ = jax.tree_util.tree_flatten_with_path(tree)
  return {masks.path_str(p): int(np.sum(np.asarray(x))) for p, x in flat if np.ndim(x) >= 2}


def _kernel_sizes(tree):
  flat, _ = jax.tree_util.tree_flatten_with_path(tree)
  return {masks.path_str(p): int(np.size(x)) for p, x in flat if np.ndim(x) >= 2}


# --- budgets -------------------------------------------------------------------------------

@pytest.mark.parametrize("distribution", masks.DISTRIBUTIONS)
@pytest.mark.parametrize("method", masks.METHODS)
@pytest.mark.parametrize("scope", masks.SCOPES)
@pytest.mark.parametrize("sparsity", [0.0, 0.5, 0.9, 0.98])
def test_exact_counts_for_every_distribution_method_and_scope(distribution, method, scope,
                                                              sparsity):
  params, loss_fn, apply_fn, batch = _tiny()
  m = masks.create_masks(jax.random.PRNGKey(1), params, sparsity, method=method,
                         distribution=distribution, scope=scope, loss_fn=loss_fn,
                         apply_fn=apply_fn, batch=batch, input_shape=(1, 6, 6, 2),
                         synflow_iterations=4)
  dens = masks.layer_densities(params, sparsity, distribution)
  sizes, kept = _kernel_sizes(params), _kernel_counts(m)
  assert sum(kept.values()) == round((1 - sparsity) * sum(sizes.values()))
  want = {k: round(d * sizes[k]) for k, d in _flat_by_path(dens).items() if k in sizes}
  if scope == "layer":
    assert kept == want
  else:  # layers the budget makes dense stay dense
    assert all(kept[k] == sizes[k] for k in sizes if want[k] == sizes[k])
  for x, p in zip(jax.tree.leaves(m), jax.tree.leaves(params)):
    assert x.dtype == jnp.bool_ and x.shape == p.shape
    if p.ndim < 2:
      assert bool(jnp.all(x))


def _flat_by_path(tree):
  flat, _ = jax.tree_util.tree_flatten_with_path(tree)
  return {masks.path_str(p): x for p, x in flat}


@pytest.mark.parametrize("distribution", masks.DISTRIBUTIONS)
@pytest.mark.parametrize("sparsity", [0.1, 0.3, 0.5, 0.8])
def test_dense_layers_and_overrides_are_kept_and_counted(distribution, sparsity):
  params = _params()
  dens = masks.layer_densities(params, sparsity, distribution, dense=("conv1",),
                               overrides={"dense/kernel": 0.5})
  assert dens["conv1"]["kernel"] == 1.0 and dens["dense"]["kernel"] == 0.5
  assert dens["conv2"]["bias"] == 1.0 and dens["dense"]["bias"] == 1.0
  sizes = {k: params[k]["kernel"].size for k in params}
  counts = {k: dens[k]["kernel"] * sizes[k] for k in params}
  assert all(c == round(c) for c in counts.values())  # densities are integer counts / size
  assert round(sum(counts.values())) == round((1 - sparsity) * sum(sizes.values()))
  # A callable chooses the same layer as the regex.
  by_callable = masks.layer_densities(
      params, sparsity, distribution, dense=lambda path, leaf: leaf.shape[-2] == 3,
      overrides={"dense/kernel": 0.5})
  assert by_callable == dens


def test_erk_reproduces_a_hand_computed_example_with_a_saturated_layer():
  params = {"a": jnp.zeros((3, 3, 2, 4)), "b": jnp.zeros((4, 100)), "c": jnp.zeros((100, 2)),
            "bias": jnp.zeros(100)}
  # ERK raw scores sum(shape)/prod(shape): a 12/72, b 104/400, c 102/200; N = 672.
  # Sparsity 0.2 keeps round(0.8 * 672) = round(537.6) = 538 weights.
  # eps = 538 / (12 + 104 + 102) = 2.4679; eps * 102/200 = 1.259 > 1: c becomes dense (200).
  # Re-solved for a and b: eps = (538 - 200) / (12 + 104) = 2.9138 (both now < 1):
  # a: 12 * eps = 34.966, b: 104 * eps = 303.034; floors 34 + 303 = 337, the missing weight
  # goes to the largest remainder (a, 0.966): a 35, b 303.
  dens = masks.layer_densities(params, 0.2, "erk")
  assert dens == {"a": 35 / 72, "b": 303 / 400, "c": 1.0, "bias": 1.0}
  # ER uses only the last two dims, (n_in + n_out) / (n_in * n_out): a 6/8, b 104/400,
  # c 102/200. eps = 538 / (54 + 104 + 102) = 2.0692: a (1.55) and c (1.055) saturate;
  # b gets the rest: 538 - 72 - 200 = 266 (density 0.665 < 1).
  assert masks.layer_densities(params, 0.2, "er") == {"a": 1.0, "b": 266 / 400, "c": 1.0,
                                                      "bias": 1.0}
  # erk_power_scale=0 makes every raw score 1: uniform.
  assert (masks.layer_densities(params, 0.6, "erk", erk_power_scale=0.0)
          == masks.layer_densities(params, 0.6, "uniform"))


def test_layer_counts_are_the_budget_before_and_after_rounding():
  # The hand-computed example above: a and b share 338 weights after c saturates, eps = 338/116.
  params = {"a": jnp.zeros((3, 3, 2, 4)), "b": jnp.zeros((4, 100)), "c": jnp.zeros((100, 2)),
            "bias": jnp.zeros(100)}
  counts, quotas = masks.layer_counts(params, 0.2, "erk")  # prunable leaves a, b, c
  assert counts == [35, 303, 200]
  np.testing.assert_allclose(quotas, [12 * 338 / 116, 104 * 338 / 116, 200.0], rtol=1e-12)
  # Dense and overridden layers: their counts exactly; the one free layer takes the rest.
  counts, quotas = masks.layer_counts(_params(), 0.5, "erk", dense=("conv1",),
                                      overrides={"dense/kernel": 0.5})
  assert counts == [432, round(0.5 * (432 + 4608 + 320)) - 432 - 160, 160]
  np.testing.assert_allclose(quotas, counts, rtol=1e-12)


@pytest.mark.parametrize("distribution", masks.DISTRIBUTIONS)
def test_free_layers_follow_the_formula_within_one_weight(distribution):
  params = _params()
  shapes = {k: params[k]["kernel"].shape for k in params}
  raw = {"uniform": lambda s: 1.0,
         "er": lambda s: (s[-2] + s[-1]) / (s[-2] * s[-1]),
         "erk": lambda s: sum(s) / math.prod(s)}[distribution]
  sizes = {k: math.prod(s) for k, s in shapes.items()}
  sparsity = 0.95  # no layer saturates here
  eps = round(0.05 * sum(sizes.values())) / sum(raw(s) * sizes[k] for k, s in shapes.items())
  dens = masks.layer_densities(params, sparsity, distribution)
  for k, s in shapes.items():
    assert eps * raw(s) < 1
    assert abs(dens[k]["kernel"] - eps * raw(s)) <= 1 / sizes[k] + 1e-12
  # The conv kernels: ER ignores the 3x3 window, so it gives conv1 (3, 3, 3, 16) relative to
  # conv2 (3, 3, 16, 32) the ratio ((3+16)/48) / ((16+32)/512) = 4.2; ERK the full-shape ratio
  # (25/432) / (54/4608) = 4.94.
  ratio = dens["conv1"]["kernel"] / dens["conv2"]["kernel"]
  want = {"uniform": 1.0, "er": (19 / 48) / (48 / 512), "erk": (25 / 432) / (54 / 4608)}
  rounding = sum(1 / (dens[k]["kernel"] * sizes[k]) for k in ("conv1", "conv2"))
  np.testing.assert_allclose(ratio, want[distribution], rtol=rounding)


# --- scores to masks -----------------------------------------------------------------------

@pytest.mark.parametrize("jit", [False, True])
def test_ties_keep_the_lowest_flat_indices(jit):
  scores = {"a": jnp.ones((4, 5)), "b": jnp.zeros((2, 5)).at[0, 0].set(-0.0)}
  # -0.0 and 0.0 are equal scores: b keeps its first 4 entries whatever the zero's sign.
  run = lambda fn: jax.jit(fn)(scores) if jit else fn(scores)
  m = run(lambda s: masks.masks_from_scores(s, {"a": 0.3, "b": 0.4}))
  np.testing.assert_array_equal(jnp.ravel(m["a"]), jnp.arange(20) < 6)
  np.testing.assert_array_equal(jnp.ravel(m["b"]), jnp.arange(10) < 4)
  # Global: 10 of 30 with all-equal scores go to the first leaf's first 10 entries.
  g = run(lambda s: masks.masks_from_scores(jax.tree.map(jnp.zeros_like, s), 1 / 3,
                                            scope="global"))
  np.testing.assert_array_equal(jnp.ravel(g["a"]), jnp.arange(20) < 10)
  assert not bool(jnp.any(g["b"]))


@pytest.mark.parametrize("scope", masks.SCOPES)
def test_masks_from_scores_under_jit_equal_eager(scope):
  params = _params()
  scores = masks.random_scores(jax.random.PRNGKey(7), params)
  dens = masks.layer_densities(params, 0.8, "erk", dense=("dense",))
  eager = masks.masks_from_scores(scores, dens, scope=scope)
  jitted = jax.jit(lambda s: masks.masks_from_scores(s, dens, scope=scope))(scores)
  jax.tree.map(np.testing.assert_array_equal, eager, jitted)
  assert bool(jnp.all(eager["dense"]["kernel"]))  # the dense layer stays dense in both scopes


def test_same_key_same_mask():
  params = _params()
  a = masks.create_masks(jax.random.PRNGKey(3), params, 0.9)
  b = masks.create_masks(jax.random.PRNGKey(3), params, 0.9)
  c = masks.create_masks(jax.random.PRNGKey(4), params, 0.9)
  jax.tree.map(np.testing.assert_array_equal, a, b)
  assert not np.array_equal(a["conv2"]["kernel"], c["conv2"]["kernel"])


def test_global_scope_picks_the_largest_across_layers():
  params = {"a": {"kernel": jnp.full((10, 10), 2.0)}, "b": {"kernel": jnp.full((10, 10), 1.0)},
            "c": {"kernel": jnp.full((10, 10), 0.5)}}
  m = masks.create_masks(None, params, 0.5, method="magnitude", distribution="uniform",
                         scope="global")
  assert _kernel_counts(m) == {"a/kernel": 100, "b/kernel": 50, "c/kernel": 0}
  # A dense layer keeps everything and counts: the other two share 150 - 100 = 50.
  m = masks.create_masks(None, params, 0.5, method="magnitude", distribution="uniform",
                         scope="global", dense=("c",))
  assert _kernel_counts(m) == {"a/kernel": 50, "b/kernel": 0, "c/kernel": 100}


def test_magnitude_keeps_the_largest_of_each_layer():
  params = _params()
  m = masks.create_masks(None, params, 0.8, method="magnitude", distribution="uniform")
  for k in params:
    w, keep = np.abs(np.asarray(params[k]["kernel"])), np.asarray(m[k]["kernel"])
    assert w[keep].min() >= w[~keep].max()


def test_snip_matches_a_hand_computed_linear_model():
  rng = np.random.default_rng(0)
  x, t, w = rng.normal(size=(7, 4)), rng.normal(size=(7, 3)), rng.normal(size=(4, 3))
  loss_fn = lambda p, b: 0.5 * jnp.sum((b[0] @ p["w"] - b[1]) ** 2)
  scores = masks.snip_scores(loss_fn, {"w": jnp.asarray(w, jnp.float32)},
                             (jnp.asarray(x, jnp.float32), jnp.asarray(t, jnp.float32)))
  grad = x.T @ (x @ w - t)  # dL/dW of 0.5 * ||X W - T||^2
  np.testing.assert_allclose(scores["w"], np.abs(grad * w), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("all_leaves", [False, True])
def test_grasp_matches_the_dense_hessian(all_leaves):
  params, loss_fn, _, batch = _tiny()
  where = (lambda path, leaf: True) if all_leaves else None
  scores = masks.grasp_scores(loss_fn, params, batch, where=where)
  flat, unravel = jax.flatten_util.ravel_pytree(params)
  f = lambda v: loss_fn(unravel(v), batch)
  g = jax.grad(f)(flat)
  if not all_leaves:  # g restricted to the prunable weights (kernels)
    g = g * jax.flatten_util.ravel_pytree(
        jax.tree.map(lambda p: jnp.full(p.shape, p.ndim >= 2, p.dtype), params))[0]
  hg = jax.jit(jax.hessian(f))(flat) @ g
  np.testing.assert_allclose(jax.flatten_util.ravel_pytree(scores)[0], flat * hg,
                             rtol=1e-3, atol=1e-7)


def _synflow_reference(ws, densities, iterations, scope):
  """Iterative SynFlow of the chain x -> relu(x W1) -> ... in float64 numpy: with |W| and a
  ones input every ReLU is the identity, so R = 1^T A_1 ... A_L 1 and
  dR/dA_l[i, j] = (1^T A_1 ... A_{l-1})[i] * (A_{l+1} ... A_L 1)[j]."""
  keep = [np.ones(w.shape, bool) for w in ws]
  final = [round(d * w.size) for d, w in zip(densities, ws)]
  for k in range(1, iterations + 1):
    a = [np.abs(w) * m for w, m in zip(ws, keep)]
    fwd = [np.ones(ws[0].shape[0])]
    for x in a:
      fwd.append(fwd[-1] @ x)
    bwd = [np.ones(ws[-1].shape[1])]
    for x in reversed(a):
      bwd.insert(0, x @ bwd[0])
    scores = [np.where(m, x * np.outer(u, v), -np.inf)
              for x, m, u, v in zip(a, keep, fwd[:-1], bwd[1:])]
    t = k / iterations
    if scope == "layer":
      groups = [([i], round((c / w.size) ** t * w.size)) for i, (c, w) in
                enumerate(zip(final, ws))]
    else:
      n = sum(w.size for w in ws)
      groups = [(list(range(len(ws))), round((sum(final) / n) ** t * n))]
    for members, count in groups:
      flat = np.concatenate([scores[i].ravel() for i in members])
      chosen = np.zeros(flat.size, bool)
      chosen[np.argsort(-flat, kind="stable")[:count]] = True
      offset = 0
      for i in members:
        keep[i] = chosen[offset:offset + ws[i].size].reshape(ws[i].shape)
        offset += ws[i].size
  return keep


@pytest.mark.parametrize("scope", masks.SCOPES)
@pytest.mark.parametrize("iterations", [1, 4])
def test_synflow_matches_an_iterative_numpy_reference(scope, iterations):
  rng = np.random.default_rng(1)
  ws = [rng.normal(size=s) for s in ((5, 8), (8, 6), (6, 4))]
  params = {f"l{i}": jnp.asarray(w, jnp.float32) for i, w in enumerate(ws)}
  apply_fn = lambda p, x: jax.nn.relu(jax.nn.relu(x @ p["l0"]) @ p["l1"]) @ p["l2"]
  dens = masks.layer_densities(params, 0.7, "erk")
  scores = masks.synflow_scores(apply_fn, params, (1, 5), dens, iterations=iterations,
                                scope=scope)
  got = masks.masks_from_scores(scores, dens, scope=scope)
  want = _synflow_reference(ws, [dens[f"l{i}"] for i in range(3)], iterations, scope)
  for i in range(3):
    np.testing.assert_array_equal(got[f"l{i}"], want[i])
  # The pruned weights are exactly the -inf scores.
  for i in range(3):
    np.testing.assert_array_equal(np.isfinite(np.asarray(scores[f"l{i}"])), want[i])


def test_synflow_float64_for_deep_networks_whose_flow_overflows_float32():
  rng = np.random.default_rng(2)
  ws = [rng.normal(size=(12, 12)) * 10 for _ in range(30)]  # R ~ (12 * 8)^30 ~ 1e59
  params = {f"l{i:02d}": jnp.asarray(w, jnp.float32) for i, w in enumerate(ws)}

  def apply_fn(p, x):
    for k in sorted(p):
      x = jax.nn.relu(x @ p[k])
    return x

  dens = masks.layer_densities(params, 0.9, "uniform")
  with pytest.raises(FloatingPointError, match="float64"):
    masks.synflow_scores(apply_fn, params, (1, 12), dens, iterations=3)
  scores = masks.synflow_scores(apply_fn, params, (1, 12), dens, iterations=3,
                                dtype=jnp.float64)
  assert all(s.dtype == jnp.float32 for s in jax.tree.leaves(scores))
  got = masks.masks_from_scores(scores, dens)
  want = _synflow_reference(ws, [dens[k] for k in sorted(dens)], 3, "layer")
  for k, w in zip(sorted(params), want):
    np.testing.assert_array_equal(got[k], w)


# --- training under a mask -----------------------------------------------------------------

@pytest.mark.parametrize("use_signin", [False, True])
def test_masked_entries_stay_exactly_zero_for_1000_steps(use_signin):
  params = jax.tree.map(lambda p: p + 1.0, _params())  # nonzero everywhere at the start
  mask = masks.create_masks(jax.random.PRNGKey(2), params, 0.9)
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
  if not use_signin:  # masked gradients never reached the momentum
    trace = state[1][0].trace
    for t, m in zip(jax.tree.leaves(trace), jax.tree.leaves(mask)):
      np.testing.assert_array_equal(np.asarray(t)[~np.asarray(m)], 0.0)


def test_masked_gradients_do_not_reach_global_norm_clipping():
  params = _params()
  mask = masks.create_masks(jax.random.PRNGKey(2), params, 0.5)
  tx = masks.with_static_mask(optax.chain(optax.clip_by_global_norm(1.0), optax.sgd(0.1)), mask)
  g = jax.tree.map(jnp.ones_like, params)
  huge = jax.tree.map(lambda x, m: jnp.where(m, x, 1e6), g, mask)
  state = tx.init(params)
  u_small, _ = tx.update(g, state, params)
  u_huge, _ = tx.update(huge, state, params)
  jax.tree.map(np.testing.assert_array_equal, u_small, u_huge)


def test_with_static_mask_forwards_extra_args():
  params = {"w": jnp.arange(1.0, 7.0).reshape(2, 3)}
  mask = {"w": jnp.array([[1, 0, 1], [0, 1, 1]], jnp.uint8)}  # uint8 is accepted

  def update_fn(updates, state, params=None, *, scale):
    return jax.tree.map(lambda u: scale * u, updates), state

  tx = masks.with_static_mask(
      optax.GradientTransformationExtraArgs(lambda p: optax.EmptyState(), update_fn), mask)
  u, _ = tx.update({"w": jnp.ones((2, 3))}, tx.init(params), params, scale=3.0)
  np.testing.assert_array_equal(u["w"], [[3.0, -2.0, 3.0], [-4.0, 3.0, 3.0]])
  with pytest.raises(ValueError, match="params"):
    tx.update({"w": jnp.ones((2, 3))}, tx.init(params), scale=3.0)


def test_keep_masked_zero_at_the_end_of_a_chain():
  params = _params()
  mask = masks.create_masks(jax.random.PRNGKey(2), params, 0.5)
  tx = optax.chain(optax.adam(0.1), masks.keep_masked_zero(mask))
  state = tx.init(params)
  updates, _ = tx.update(jax.tree.map(jnp.ones_like, params), state, params)
  new = optax.apply_updates(params, updates)
  for p, m, p0 in zip(jax.tree.leaves(new), jax.tree.leaves(mask), jax.tree.leaves(params)):
    p, m, p0 = np.asarray(p), np.asarray(m), np.asarray(p0)
    np.testing.assert_array_equal(p[~m], 0.0)
    np.testing.assert_allclose(p[m], p0[m] - 0.1, atol=1e-6)
  with pytest.raises(ValueError, match="params"):
    tx.update(params, state)


def test_apply_mask_zeroes_exactly_and_keeps_dtypes():
  params = {"w": jnp.full((3, 4), -1.5, jnp.bfloat16), "b": jnp.ones(4)}
  as_bool = {"w": jnp.arange(12).reshape(3, 4) % 3 == 0, "b": jnp.ones(4, bool)}
  as_uint8 = jax.tree.map(lambda m: m.astype(jnp.uint8), as_bool)
  for mask in (as_bool, as_uint8):
    out = masks.apply_mask(params, mask)
    assert out["w"].dtype == jnp.bfloat16
    np.testing.assert_array_equal(np.asarray(out["w"], np.float32),
                                  np.where(np.asarray(as_bool["w"]), -1.5, 0.0))
    np.testing.assert_array_equal(out["b"], params["b"])


def test_sparsity_aware_init_restores_the_variance():
  params = {"w": jax.random.normal(jax.random.PRNGKey(0), (400, 300)), "b": jnp.ones(300)}
  mask = masks.create_masks(jax.random.PRNGKey(1), params, 0.75, distribution="uniform")
  scaled = masks.apply_mask(masks.sparsity_aware_init(params, mask), mask)
  keep = np.asarray(mask["w"])
  np.testing.assert_allclose(np.asarray(scaled["w"])[keep],  # 1 / sqrt(0.25) = 2
                             2.0 * np.asarray(params["w"])[keep], rtol=1e-6)
  np.testing.assert_array_equal(scaled["b"], params["b"])
  x = jax.random.normal(jax.random.PRNGKey(2), (256, 400))
  np.testing.assert_allclose(float(jnp.var(x @ scaled["w"])), float(jnp.var(x @ params["w"])),
                             rtol=0.05)


# --- reporting -----------------------------------------------------------------------------

def test_summary_counts_and_flops():
  params = _params()
  mask = masks.create_masks(jax.random.PRNGKey(2), params, 0.9)
  positions = {"conv1/kernel": 64, "conv2/kernel": 16}
  rows = masks.summary(params, mask, positions=positions)
  by = {r["path"]: r for r in rows}
  assert [r["path"] for r in rows] == ["conv1/kernel", "conv2/kernel", "dense/kernel", "total"]
  nnz = _kernel_counts(mask)
  dense_flops = 2 * 432 * 64 + 2 * 4608 * 16 + 2 * 320
  for path, n_pos in [("conv1/kernel", 64), ("conv2/kernel", 16), ("dense/kernel", 1)]:
    r = by[path]
    assert r["nnz"] == nnz[path] and r["density"] == nnz[path] / r["size"]
    assert r["dense_flops"] == 2 * r["size"] * n_pos
    assert r["sparse_flops"] == 2 * nnz[path] * n_pos
    assert r["flops_share"] == r["sparse_flops"] / dense_flops
  total = by["total"]
  assert total["nnz"] == sum(nnz.values()) and total["dense_flops"] == dense_flops
  assert total["density"] == masks.density(mask)
  np.testing.assert_allclose(sum(r["flops_share"] for r in rows[:-1]), total["flops_share"])
  # The same positions as a pytree like params.
  tree = jax.tree.map(lambda _: 1, params)
  tree["conv1"]["kernel"], tree["conv2"]["kernel"] = 64, 16
  assert masks.summary(params, mask, positions=tree) == rows
  text = masks.format_summary(rows)
  assert len(text.splitlines()) == 2 + len(rows) and "conv2/kernel" in text
  with pytest.raises(ValueError, match="positions"):
    masks.summary(params, mask, positions={"conv9/kernel": 3})


def test_prunable_and_density_with_where():
  params = _params()
  assert masks.prunable(params) == {"conv1": {"kernel": True},
                                    "conv2": {"kernel": True, "bias": False},
                                    "dense": {"kernel": True, "bias": False}}
  only_convs = lambda path, leaf: masks.path_str(path).startswith("conv") and leaf.ndim == 4
  assert masks.prunable(params, only_convs)["dense"]["kernel"] is False
  # A pytree prefix: everything under 'dense' (bias included) and nothing else.
  prefix = {"conv1": False, "conv2": False, "dense": True}
  assert masks.prunable(params, prefix)["dense"] == {"kernel": True, "bias": True}
  m = masks.create_masks(jax.random.PRNGKey(0), params, 0.5, distribution="uniform",
                         where=prefix)
  assert bool(jnp.all(m["conv2"]["kernel"]))
  assert int(jnp.sum(m["dense"]["kernel"])) + int(jnp.sum(m["dense"]["bias"])) == 165
  assert masks.density(m, where=prefix) == 165 / 330
  assert masks.density(m) == (432 + 4608 + int(jnp.sum(m["dense"]["kernel"]))) / (432 + 4608 + 320)


def test_nnx_state():
  from flax import nnx
  model = nnx.Linear(20, 30, rngs=nnx.Rngs(0))
  graphdef, params = nnx.split(model, nnx.Param)
  mask = masks.create_masks(jax.random.PRNGKey(0), params, 0.8)
  assert masks.density(mask) == 120 / 600
  assert [r["path"] for r in masks.summary(params, mask)] == ["kernel/value", "total"]
  dens = masks.layer_densities(params, 0.75, overrides={"kernel": 0.25})
  assert dens["kernel"].get_value() == 0.25
  params = masks.apply_mask(params, mask)
  tx = masks.with_static_mask(signin.sign_in(optax.sgd(0.1), reset_every=2), mask)
  state = tx.init(params)
  x = jnp.ones((4, 20))

  @jax.jit
  def step(params, state):
    g = jax.grad(lambda p: jnp.sum(nnx.merge(graphdef, p)(x) ** 2))(params)
    updates, state = tx.update(g, state, params)
    return optax.apply_updates(params, updates), state

  start = np.asarray(params["kernel"][...])
  for _ in range(3):
    params, state = step(params, state)
  kernel, keep = np.asarray(params["kernel"][...]), np.asarray(mask["kernel"][...])
  np.testing.assert_array_equal(kernel[~keep], 0.0)
  assert np.abs(kernel - start)[keep].max() > 0


# --- errors --------------------------------------------------------------------------------

def test_errors_name_the_argument():
  params = _params()
  for bad in (1.0, -0.1, "0.5", True):
    with pytest.raises(ValueError, match="sparsity"):
      masks.layer_densities(params, bad)
  with pytest.raises(ValueError, match="distribution"):
    masks.layer_densities(params, 0.5, "erdos")
  with pytest.raises(ValueError, match="method"):
    masks.create_masks(None, params, 0.5, method="lottery")
  with pytest.raises(ValueError, match="scope"):
    masks.create_masks(None, params, 0.5, scope="model")
  with pytest.raises(ValueError, match="scope"):
    masks.masks_from_scores(params, 0.5, scope="model")
  with pytest.raises(ValueError, match="key"):
    masks.create_masks(None, params, 0.5, method="random")
  with pytest.raises(ValueError, match="loss_fn and batch"):
    masks.create_masks(None, params, 0.5, method="snip", loss_fn=lambda p, b: 0.0)
  with pytest.raises(ValueError, match="loss_fn and batch"):
    masks.create_masks(None, params, 0.5, method="grasp", batch=())
  with pytest.raises(ValueError, match="input_shape"):
    masks.create_masks(None, params, 0.5, method="synflow", apply_fn=lambda p, x: x)
  with pytest.raises(ValueError, match="dense"):
    masks.layer_densities(params, 0.5, dense=("conv1", "nothing_like_this"))
  with pytest.raises(ValueError, match="overrides"):
    masks.layer_densities(params, 0.5, overrides={"conv1": 1.5})
  with pytest.raises(ValueError, match="overrides"):
    masks.layer_densities(params, 0.5, overrides={"bias": 0.5})  # biases are not prunable
  with pytest.raises(ValueError, match="overrides"):
    masks.layer_densities(params, 0.5, dense=("conv1",), overrides={"conv": 0.5})
  with pytest.raises(ValueError, match="infeasible"):
    masks.layer_densities(params, 0.9, dense=("conv2",))
  with pytest.raises(ValueError, match="infeasible"):
    masks.layer_densities(params, 0.0, overrides={"conv2": 0.5})
  with pytest.raises(ValueError, match="densities"):
    masks.masks_from_scores(params, 1.5)
  with pytest.raises(ValueError, match="where"):
    masks.prunable(params, where=lambda path, leaf: "yes")
  with pytest.raises(ValueError, match="iterations"):
    masks.synflow_scores(lambda p, x: x, params, (1, 3), 0.5, iterations=0)


def test_arguments_are_checked_before_any_score_is_computed():
  params = _params()
  calls = []

  def loss_fn(p, b):
    calls.append(1)
    return sum(jnp.sum(x) for x in jax.tree.leaves(p))

  with pytest.raises(ValueError, match="distribution"):
    masks.create_masks(None, params, 0.5, method="snip", distribution="erdos",
                       loss_fn=loss_fn, batch=())
  with pytest.raises(ValueError, match="dense"):
    masks.create_masks(None, params, 0.5, method="grasp", dense=("nothing",),
                       loss_fn=loss_fn, batch=())
  # Sparsity 0 is all-True masks; no scores are needed.
  m = masks.create_masks(None, params, 0.0, method="snip", loss_fn=loss_fn, batch=())
  assert all(bool(jnp.all(x)) for x in jax.tree.leaves(m))
  assert not calls
